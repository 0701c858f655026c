//! The node's decision about a message on its reply queue (`fleetpki_core::node`), without SQS:
//! every outcome, and every reason a certificate is refused, from a literal table.

use std::time::{Duration, SystemTime};

use fleetpki_core::ca::{create_intermediate, CaSubject};
use fleetpki_core::certs::{load_certificates, Expectation};
use fleetpki_core::csr::{build_csr, parse_and_verify_csr};
use fleetpki_core::keys::{public_key_spki, KeySpec};
use fleetpki_core::names::{parse_names, SubjectAltName};
use fleetpki_core::node::{judge_reply, Pending, Reply, ReplyDecision};
use fleetpki_core::sign::CaSigner;
use fleetpki_core::wire::{CertificateMessage, Profile, RejectionMessage, ReplyMessage, ReplyMode};
use rcgen::KeyPair;
use time::OffsetDateTime;

mod util;
use util::{make_ca, TestCa, ID};

const REQUEST: &str = "req-pending";
const SANS: [&str; 2] = ["DNS:node1.fleet.internal", "IP:127.0.0.1"];

/// A node with a pending request: its key, names, and the CA it pins.
struct Node {
    key: KeyPair,
    names: Vec<SubjectAltName>,
    spki: Vec<u8>,
    ca: TestCa,
    anchors: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl Node {
    fn new(name: &str) -> Node {
        let key = KeySpec::EcP256.generate().unwrap();
        let ca = make_ca(name, KeySpec::EcP256);
        Node {
            spki: public_key_spki(&key),
            names: parse_names(&SANS).unwrap(),
            anchors: load_certificates(&ca.root_pem),
            key,
            ca,
        }
    }

    /// `signer` signs a CSR of `key` for `instance_id` with `names` and `profile`.
    fn certificate(
        &self,
        signer: &CaSigner,
        key: &KeyPair,
        instance_id: &str,
        names: &[&str],
        profile: Profile,
    ) -> String {
        certificate_at(
            signer,
            key,
            instance_id,
            names,
            profile,
            OffsetDateTime::now_utc(),
        )
    }
}

/// `signer`, its clock at `at`, signs a CSR of `key` for `instance_id`, valid for a day.
fn certificate_at(
    signer: &CaSigner,
    key: &KeyPair,
    instance_id: &str,
    names: &[&str],
    profile: Profile,
    at: OffsetDateTime,
) -> String {
    let csr =
        parse_and_verify_csr(&build_csr(key, instance_id, &parse_names(names).unwrap()).unwrap())
            .unwrap();
    signer
        .sign(&csr, instance_id, profile, Duration::from_secs(86_400), at)
        .unwrap()
        .certificate_pem
}

impl Node {
    fn good_certificate(&self) -> String {
        self.certificate(&self.ca.signer, &self.key, ID, &SANS, Profile::Mtls)
    }

    /// The body of a certificate answer to `request_id`.
    fn answer(&self, certificate_pem: String, request_id: Option<&str>) -> String {
        ReplyMessage::Certificate(CertificateMessage {
            instance_id: ID.into(),
            certificate_pem,
            ca_chain_pem: self.ca.signer.chain_pem().to_string(),
            version: Some(1),
            request_id: request_id.map(str::to_string),
            serial: None,
            not_after: None,
        })
        .to_json()
    }

    /// What the seed's sign script sends: untagged, no version, no request id.
    fn seed_answer(&self, certificate_pem: String) -> String {
        serde_json::json!({
            "instance_id": ID,
            "certificate_pem": certificate_pem,
            "ca_chain_pem": self.ca.signer.chain_pem(),
        })
        .to_string()
    }

    fn judge(&self, mode: ReplyMode, body: &str, attribute: Option<&str>) -> ReplyDecision {
        let expect = Expectation {
            instance_id: ID,
            spki_der: &self.spki,
            names: &self.names,
            profile: Profile::Mtls,
        };
        let pending = Pending {
            instance_id: ID,
            request_id: REQUEST,
            reply_mode: mode,
            expect: &expect,
            anchors: &self.anchors,
        };
        let reply = Reply {
            message_id: "m-1",
            body,
            instance_id_attribute: attribute,
        };
        judge_reply(&pending, &reply, SystemTime::now())
    }
}

fn rejection(instance_id: &str, request_id: &str) -> String {
    ReplyMessage::Rejection(RejectionMessage {
        instance_id: instance_id.into(),
        request_id: request_id.into(),
        reason_code: "san_not_allowed".into(),
        message: "DNS:node1.fleet.internal is not allowed for this instance".into(),
    })
    .to_json()
}

/// What a decision is, in one word plus what the test checks of it.
fn outcome(decision: &ReplyDecision) -> String {
    match decision {
        ReplyDecision::HandBack => "hand_back".into(),
        ReplyDecision::Discard { warning } => {
            // Each refusal names its code in parentheses; the other discards say why in words.
            let code = warning
                .split(['(', ')'])
                .nth(1)
                .filter(|c| c.starts_with("certificate_"))
                .unwrap_or("-");
            format!("discard:{code}")
        }
        ReplyDecision::Refused { reason_code, .. } => format!("refused:{reason_code}"),
        ReplyDecision::NotYetValid { .. } => "keep:certificate_not_yet_valid".into(),
        ReplyDecision::Install { .. } => "install".into(),
    }
}

#[test]
fn each_reply_gets_its_decision() {
    let node = Node::new("node-table");
    let foreign = make_ca("node-foreign", KeySpec::EcP256);
    let other_key = KeySpec::EcP256.generate().unwrap();
    let root_key = KeyPair::from_pem(&node.ca.root_key_pem).unwrap();
    let ca_for_our_key = create_intermediate(
        &node.key,
        &CaSubject {
            common_name: ID.into(),
            organization: None,
            lifetime_days: 30,
        },
        &node.ca.root_pem,
        root_key,
        OffsetDateTime::now_utc(),
    )
    .unwrap();

    use ReplyMode::{PerNode, Shared};
    let rows: Vec<(&str, ReplyMode, String, Option<&str>, &str)> = vec![
        (
            "our certificate",
            PerNode,
            node.answer(node.good_certificate(), Some(REQUEST)),
            Some(ID),
            "install",
        ),
        (
            "our certificate, no InstanceId attribute",
            PerNode,
            node.answer(node.good_certificate(), Some(REQUEST)),
            None,
            "install",
        ),
        (
            "a seed worker's answer on the shared queue",
            Shared,
            node.seed_answer(node.good_certificate()),
            Some(ID),
            "install",
        ),
        (
            "a versioned answer without a request id on the shared queue",
            Shared,
            node.answer(node.good_certificate(), None),
            Some(ID),
            "discard:-",
        ),
        (
            "another node's answer on the shared queue",
            Shared,
            node.answer(node.good_certificate(), None),
            Some("i-0bbbbbbbbbbbbbbbb"),
            "hand_back",
        ),
        (
            "an unreadable message",
            PerNode,
            "this is not JSON".into(),
            Some(ID),
            "discard:-",
        ),
        (
            "an answer to an older request",
            PerNode,
            node.answer(node.good_certificate(), Some("req-older")),
            Some(ID),
            "discard:-",
        ),
        (
            "an answer without a request id on the node's queue",
            PerNode,
            node.answer(node.good_certificate(), None),
            Some(ID),
            "discard:-",
        ),
        (
            "the CA's refusal",
            PerNode,
            rejection(ID, REQUEST),
            Some(ID),
            "refused:san_not_allowed",
        ),
        (
            "a refusal addressed to another instance",
            PerNode,
            rejection("i-0bbbbbbbbbbbbbbbb", REQUEST),
            Some(ID),
            "discard:-",
        ),
        (
            "not a certificate",
            PerNode,
            node.answer("garbage".into(), Some(REQUEST)),
            Some(ID),
            "discard:certificate_malformed",
        ),
        (
            "a certificate for another key",
            PerNode,
            node.answer(
                node.certificate(&node.ca.signer, &other_key, ID, &SANS, Profile::Mtls),
                Some(REQUEST),
            ),
            Some(ID),
            "discard:certificate_key_mismatch",
        ),
        (
            "a certificate from another CA",
            PerNode,
            node.answer(
                node.certificate(&foreign.signer, &node.key, ID, &SANS, Profile::Mtls),
                Some(REQUEST),
            ),
            Some(ID),
            "discard:certificate_untrusted",
        ),
        (
            "a certificate with other names",
            PerNode,
            node.answer(
                node.certificate(
                    &node.ca.signer,
                    &node.key,
                    ID,
                    &["DNS:node1.fleet.internal"],
                    Profile::Mtls,
                ),
                Some(REQUEST),
            ),
            Some(ID),
            "discard:certificate_names_mismatch",
        ),
        (
            "a certificate for another instance",
            PerNode,
            node.answer(
                node.certificate(
                    &node.ca.signer,
                    &node.key,
                    "i-0bbbbbbbbbbbbbbbb",
                    &SANS,
                    Profile::Mtls,
                ),
                Some(REQUEST),
            ),
            Some(ID),
            "discard:certificate_subject_mismatch",
        ),
        (
            "a server-only certificate for an mTLS request",
            PerNode,
            node.answer(
                node.certificate(&node.ca.signer, &node.key, ID, &SANS, Profile::Server),
                Some(REQUEST),
            ),
            Some(ID),
            "discard:certificate_usage_missing",
        ),
        (
            "a certificate that expired yesterday",
            PerNode,
            node.answer(
                certificate_at(
                    &node.ca.signer,
                    &node.key,
                    ID,
                    &SANS,
                    Profile::Mtls,
                    OffsetDateTime::now_utc() - time::Duration::days(2),
                ),
                Some(REQUEST),
            ),
            Some(ID),
            "discard:certificate_expired",
        ),
        (
            "a certificate valid from an hour ahead of the node's clock",
            PerNode,
            node.answer(
                certificate_at(
                    &node.ca.signer,
                    &node.key,
                    ID,
                    &SANS,
                    Profile::Mtls,
                    OffsetDateTime::now_utc() + time::Duration::hours(1),
                ),
                Some(REQUEST),
            ),
            Some(ID),
            "keep:certificate_not_yet_valid",
        ),
        (
            // Not kept: it fails at its own notBefore too, so a forgery cannot park itself.
            "another CA's certificate valid from an hour ahead",
            PerNode,
            node.answer(
                certificate_at(
                    &foreign.signer,
                    &node.key,
                    ID,
                    &SANS,
                    Profile::Mtls,
                    OffsetDateTime::now_utc() + time::Duration::hours(1),
                ),
                Some(REQUEST),
            ),
            Some(ID),
            "discard:certificate_not_yet_valid",
        ),
        (
            "a CA certificate for the node's key",
            PerNode,
            node.answer(ca_for_our_key, Some(REQUEST)),
            Some(ID),
            "discard:certificate_is_ca",
        ),
    ];
    for (case, mode, body, attribute, expected) in rows {
        let decision = node.judge(mode, &body, attribute);
        assert_eq!(outcome(&decision), expected, "{case}: {decision:?}");
        if let ReplyDecision::Discard { warning }
        | ReplyDecision::Refused { msg: warning, .. }
        | ReplyDecision::NotYetValid { msg: warning, .. } = &decision
        {
            for debug in ["Some(", "None", "UnixTime(", "KeyPurposeId("] {
                assert!(
                    !warning.contains(debug),
                    "{case}: Rust debug text in {warning:?}"
                );
            }
        }
    }
}

#[test]
fn an_installed_answer_carries_the_chain_it_came_with() {
    let node = Node::new("node-install");
    let decision = node.judge(
        ReplyMode::PerNode,
        &node.answer(node.good_certificate(), Some(REQUEST)),
        Some(ID),
    );
    let ReplyDecision::Install { info, chain_pem } = decision else {
        panic!("not installed: {decision:?}");
    };
    assert_eq!(chain_pem, node.ca.signer.chain_pem());
    assert_eq!(info.spki_der, node.spki);
}

#[test]
fn the_refusal_message_names_the_request_and_the_code() {
    let node = Node::new("node-refused");
    let ReplyDecision::Refused { msg, reason_code } =
        node.judge(ReplyMode::PerNode, &rejection(ID, REQUEST), Some(ID))
    else {
        panic!("not refused");
    };
    assert_eq!(reason_code, "san_not_allowed");
    assert!(
        msg.contains(REQUEST) && msg.contains("san_not_allowed"),
        "{msg}"
    );
}
