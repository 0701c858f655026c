//! Property tests over the parsers that read untrusted input: whatever the bytes, they return an
//! error or a value, never panic; and what we write, we read back.

use fleetpki_core::csr::{build_csr, parse_and_verify_csr};
use fleetpki_core::keys::KeySpec;
use fleetpki_core::names::SubjectAltName;
use fleetpki_core::wire::{CertificateMessage, CsrMessage, RejectionMessage, ReplyMessage};
use proptest::prelude::*;

fn csr_pem() -> &'static str {
    use std::sync::OnceLock;
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        let key = KeySpec::EcP256.generate().unwrap();
        let names = vec![
            SubjectAltName::Dns("node.example".into()),
            "IP:10.1.2.3".parse().unwrap(),
        ];
        build_csr(&key, "i-0123456789abcdef0", &names).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn csr_parser_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let _ = parse_and_verify_csr(&text);
    }

    #[test]
    fn csr_parser_refuses_every_single_byte_change_of_the_der(index in 0usize..4096, bit in 0u8..8) {
        let block = pem::parse(csr_pem()).unwrap();
        let mut der = block.contents().to_vec();
        let i = index % der.len();
        der[i] ^= 1 << bit;
        let mutated = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        // A changed byte either breaks the structure or the signature: never a valid CSR.
        prop_assert!(parse_and_verify_csr(&mutated).is_err());
    }

    #[test]
    fn message_parsers_never_panic(body in ".{0,300}") {
        let _ = serde_json::from_str::<CsrMessage>(&body);
        let _ = ReplyMessage::from_json(&body);
    }

    #[test]
    fn replies_round_trip(instance in "[a-z0-9-]{1,20}", request in "[a-f0-9-]{1,36}", text in ".{0,100}") {
        let certificate = ReplyMessage::Certificate(CertificateMessage {
            instance_id: instance.clone(),
            certificate_pem: text.clone(),
            ca_chain_pem: text.clone(),
            version: Some(1),
            request_id: Some(request.clone()),
            serial: Some("01".into()),
            not_after: None,
        });
        prop_assert_eq!(ReplyMessage::from_json(&certificate.to_json()).unwrap(), certificate);
        let rejection = ReplyMessage::Rejection(RejectionMessage { instance_id: instance, request_id: request, reason_code: "x".into(), message: text });
        prop_assert_eq!(ReplyMessage::from_json(&rejection.to_json()).unwrap(), rejection);
    }

    #[test]
    fn names_parse_or_refuse_without_panicking(text in ".{0,80}") {
        if let Ok(name) = text.parse::<SubjectAltName>() {
            // What parses prints in a form that parses to the same name.
            prop_assert_eq!(name.to_string().parse::<SubjectAltName>().unwrap(), name);
        }
    }
}
