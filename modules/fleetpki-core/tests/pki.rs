//! The PKI core end to end, without network: CA creation, CSR, policy, signing, node checks.

use std::time::SystemTime;

use fleetpki_core::certs::{
    check_issued_certificate, load_certificates, parse_certificate, CertRejection, Expectation,
};
use fleetpki_core::csr::{build_csr, parse_and_verify_csr};
use fleetpki_core::keys::{public_key_spki, KeySpec};
use fleetpki_core::names::parse_names;
use fleetpki_core::policy::{
    enrollment_mac, enrollment_mac_input, Policy, ReasonCode, SigningRequest,
};
use fleetpki_core::sign::CaSigner;
use fleetpki_core::wire::{CsrMessage, IdentityProof, Profile, ReplyMode, WIRE_VERSION};
use time::OffsetDateTime;

mod util;
use util::{make_ca, ID};

fn policy() -> Policy {
    Policy::from_json(
        r#"{"identity_proof": "none", "instances": [
            {"instance_id": "i-0123456789abcdef0", "dns_names": ["node1.example"], "ip_addresses": ["127.0.0.1"]},
            {"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["10.0.0.0/8"]}]}"#,
    )
    .unwrap()
}

fn message(csr_pem: &str) -> CsrMessage {
    CsrMessage {
        instance_id: ID.into(),
        csr_pem: csr_pem.into(),
        version: Some(WIRE_VERSION),
        request_id: Some("req-1".into()),
        timestamp: Some(OffsetDateTime::now_utc().unix_timestamp()),
        profile: Some(Profile::Mtls),
        lifetime_days: None,
        reply_mode: Some(ReplyMode::PerNode),
        identity_proof: None,
    }
}

fn evaluate(policy: &Policy, msg: &CsrMessage, sender: Option<&str>) -> Result<(), ReasonCode> {
    let csr = parse_and_verify_csr(&msg.csr_pem).unwrap();
    let req = SigningRequest {
        message: msg,
        attribute_instance_id: Some(&msg.instance_id),
        sender_id: sender,
        csr: &csr,
    };
    policy
        .evaluate(&req, OffsetDateTime::now_utc().unix_timestamp())
        .map(|_| ())
        .map_err(|r| r.code)
}

#[test]
fn issued_leaf_is_accepted_by_the_node_for_every_key_type() {
    for (i, ca_spec) in [KeySpec::EcP256, KeySpec::EcP384, KeySpec::Rsa(2048)]
        .into_iter()
        .enumerate()
    {
        let ca = make_ca(&format!("ok{i}"), ca_spec);
        for node_spec in [KeySpec::EcP256, KeySpec::Rsa(2048)] {
            let key = node_spec.generate().unwrap();
            let names = parse_names(&["DNS:node1.example", "IP:127.0.0.1"]).unwrap();
            let csr = parse_and_verify_csr(&build_csr(&key, ID, &names).unwrap()).unwrap();
            let issued = ca
                .signer
                .sign(
                    &csr,
                    ID,
                    Profile::Mtls,
                    std::time::Duration::from_secs(86400),
                    OffsetDateTime::now_utc(),
                )
                .unwrap();
            let spki = public_key_spki(&key);
            let expect = Expectation {
                instance_id: ID,
                spki_der: &spki,
                names: &names,
                profile: Profile::Mtls,
            };
            let anchors = load_certificates(&ca.root_pem);
            let info = check_issued_certificate(
                &issued.certificate_pem,
                ca.signer.chain_pem(),
                &anchors,
                &expect,
                SystemTime::now(),
            )
            .unwrap();
            assert!(info.server_auth && info.client_auth && !info.is_ca);
            assert_eq!(info.serial_hex, issued.serial_hex);
            assert_eq!(issued.serial_hex.len(), 32, "128-bit serial");
            assert!(
                info.not_before < OffsetDateTime::now_utc() - time::Duration::minutes(4),
                "backdated notBefore"
            );
        }
        std::fs::remove_dir_all(&ca.dir).unwrap();
    }
}

#[test]
fn serials_are_distinct() {
    let ca = make_ca("serials", KeySpec::EcP256);
    let key = KeySpec::EcP256.generate().unwrap();
    let csr = parse_and_verify_csr(&build_csr(&key, ID, &[]).unwrap()).unwrap();
    let mut serials = std::collections::HashSet::new();
    for _ in 0..200 {
        let issued = ca
            .signer
            .sign(
                &csr,
                ID,
                Profile::Mtls,
                std::time::Duration::from_secs(60),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert!(serials.insert(issued.serial_hex));
    }
}

#[test]
fn node_refuses_foreign_ca_other_key_wrong_names_and_profile() {
    let ca = make_ca("ours", KeySpec::EcP256);
    let foreign = make_ca("foreign", KeySpec::EcP256); // same DNs as ours
    let key = KeySpec::EcP256.generate().unwrap();
    let names = parse_names(&["DNS:node1.example"]).unwrap();
    let csr = parse_and_verify_csr(&build_csr(&key, ID, &names).unwrap()).unwrap();
    let spki = public_key_spki(&key);
    let anchors = load_certificates(&ca.root_pem);
    let expect = Expectation {
        instance_id: ID,
        spki_der: &spki,
        names: &names,
        profile: Profile::Mtls,
    };
    let day = std::time::Duration::from_secs(86400);
    let now = OffsetDateTime::now_utc();
    let check = |pem: &str, chain: &str, expect: &Expectation<'_>| {
        check_issued_certificate(pem, chain, &anchors, expect, SystemTime::now()).unwrap_err()
    };

    let forged = foreign
        .signer
        .sign(&csr, ID, Profile::Mtls, day, now)
        .unwrap();
    assert!(matches!(
        check(&forged.certificate_pem, foreign.signer.chain_pem(), &expect),
        CertRejection::Untrusted(_)
    ));
    // Even with our own chain attached, the foreign leaf does not chain to our anchor.
    assert!(matches!(
        check(&forged.certificate_pem, ca.signer.chain_pem(), &expect),
        CertRejection::Untrusted(_)
    ));

    let other_key = KeySpec::EcP256.generate().unwrap();
    let other_csr = parse_and_verify_csr(&build_csr(&other_key, ID, &names).unwrap()).unwrap();
    let other = ca
        .signer
        .sign(&other_csr, ID, Profile::Mtls, day, now)
        .unwrap();
    assert_eq!(
        check(&other.certificate_pem, ca.signer.chain_pem(), &expect),
        CertRejection::KeyMismatch
    );

    let more_names = parse_names(&["DNS:node1.example", "DNS:extra.example"]).unwrap();
    let wide_csr = parse_and_verify_csr(&build_csr(&key, ID, &more_names).unwrap()).unwrap();
    let wide = ca
        .signer
        .sign(&wide_csr, ID, Profile::Mtls, day, now)
        .unwrap();
    assert!(matches!(
        check(&wide.certificate_pem, ca.signer.chain_pem(), &expect),
        CertRejection::NamesMismatch { .. }
    ));

    let server_only = ca.signer.sign(&csr, ID, Profile::Server, day, now).unwrap();
    assert!(matches!(
        check(&server_only.certificate_pem, ca.signer.chain_pem(), &expect),
        CertRejection::MissingUsage(_)
    ));

    let expired = ca
        .signer
        .sign(&csr, ID, Profile::Mtls, day, now - time::Duration::days(3))
        .unwrap();
    assert!(matches!(
        check(&expired.certificate_pem, ca.signer.chain_pem(), &expect),
        CertRejection::Expired { .. }
    ));
    // Signed for a node whose clock is an hour behind the CA's (notBefore is 5 minutes back).
    let early = ca
        .signer
        .sign(&csr, ID, Profile::Mtls, day, now + time::Duration::hours(1))
        .unwrap();
    let rejection = check(&early.certificate_pem, ca.signer.chain_pem(), &expect);
    let CertRejection::NotYetValid { ahead_seconds, .. } = &rejection else {
        panic!("{rejection:?}");
    };
    assert!((3000..=3300).contains(ahead_seconds), "{ahead_seconds}");
    assert!(rejection.to_string().contains("clock"), "{rejection}");

    assert!(matches!(
        check("garbage", ca.signer.chain_pem(), &expect),
        CertRejection::Malformed(_)
    ));
    // The CA's own certificate is not a leaf for us even if it were somehow for our key.
    let int_pem = std::fs::read_to_string(ca.dir.join("int.pem")).unwrap();
    assert!(check(&int_pem, "", &expect)
        .reason_code()
        .starts_with("certificate_"));
}

#[test]
fn signer_refuses_a_key_that_is_not_the_certificates() {
    let a = make_ca("mismatch-a", KeySpec::EcP256);
    let b = make_ca("mismatch-b", KeySpec::EcP256);
    let err = CaSigner::load(
        &a.dir.join("int.pem"),
        &b.dir.join("int.key"),
        &a.dir.join("chain.pem"),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn signed_leaf_ignores_requested_ca_flags() {
    let ca = make_ca("caflags", KeySpec::EcP256);
    let key = KeySpec::EcP256.generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["node1.example".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let csr = parse_and_verify_csr(&pem).unwrap();
    assert!(csr.requests_ca);
    let issued = ca
        .signer
        .sign(
            &csr,
            ID,
            Profile::Mtls,
            std::time::Duration::from_secs(60),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    assert!(
        !parse_certificate(&issued.certificate_pem, "leaf")
            .unwrap()
            .is_ca
    );
}

#[test]
fn policy_accepts_listed_names_and_refuses_each_violation_with_its_code() {
    let policy = policy();
    let csr_with = |names: &[&str]| {
        build_csr(
            &KeySpec::EcP256.generate().unwrap(),
            ID,
            &parse_names(names).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        evaluate(
            &policy,
            &message(&csr_with(&["DNS:node1.example", "IP:127.0.0.1"])),
            None
        ),
        Ok(())
    );

    assert_eq!(
        evaluate(&policy, &message(&csr_with(&["DNS:evil.example"])), None),
        Err(ReasonCode::SanNotAllowed)
    );
    assert_eq!(
        evaluate(&policy, &message(&csr_with(&["IP:192.168.1.1"])), None),
        Err(ReasonCode::SanNotAllowed)
    );

    let other_id = "x-1";
    let mut msg = message(&build_csr(&KeySpec::EcP256.generate().unwrap(), other_id, &[]).unwrap());
    msg.instance_id = other_id.into();
    assert_eq!(
        evaluate(&policy, &msg, None),
        Err(ReasonCode::InstanceNotAllowed)
    );

    let mut msg = message(&csr_with(&[]));
    msg.instance_id = "i-ffff".into(); // CN says otherwise
    assert_eq!(
        evaluate(&policy, &msg, None),
        Err(ReasonCode::SubjectMismatch)
    );

    let mut msg = message(&csr_with(&[]));
    msg.lifetime_days = Some(365);
    assert_eq!(
        evaluate(&policy, &msg, None),
        Err(ReasonCode::LifetimeNotAllowed)
    );

    let mut msg = message(&csr_with(&[]));
    msg.timestamp = Some(OffsetDateTime::now_utc().unix_timestamp() - 200_000);
    assert_eq!(
        evaluate(&policy, &msg, None),
        Err(ReasonCode::RequestExpired)
    );

    let restrictive = Policy::from_json(r#"{"identity_proof": "none", "profiles": ["server"], "ec_curves": ["secp384r1"], "instances": [{"instance_id_pattern": "i-*"}]}"#).unwrap();
    assert_eq!(
        evaluate(&restrictive, &message(&csr_with(&[])), None),
        Err(ReasonCode::KeyTypeNotAllowed)
    );
}

#[test]
fn policy_checks_the_sender_id_like_aws_sets_it() {
    let policy = Policy::from_json(
        r#"{"identity_proof": "sqs_sender_id", "sender_role_ids": ["AROAEXAMPLEROLEID"], "instances": [{"instance_id_pattern": "i-*"}]}"#,
    )
    .unwrap();
    let msg = message(&build_csr(&KeySpec::EcP256.generate().unwrap(), ID, &[]).unwrap());
    assert_eq!(
        evaluate(&policy, &msg, Some(&format!("AROAEXAMPLEROLEID:{ID}"))),
        Ok(())
    );
    assert_eq!(
        evaluate(&policy, &msg, Some("AROAEXAMPLEROLEID:i-0aaaaaaaaaaaaaaaa")),
        Err(ReasonCode::SenderMismatch)
    );
    assert_eq!(
        evaluate(&policy, &msg, Some(&format!("AROAOTHERROLE:{ID}"))),
        Err(ReasonCode::SenderMismatch)
    );
    assert_eq!(
        evaluate(&policy, &msg, Some("AIDAIT2UOQQY3AUEKVGXU")),
        Err(ReasonCode::SenderMismatch)
    );
    assert_eq!(
        evaluate(&policy, &msg, None),
        Err(ReasonCode::IdentityProofMissing)
    );
}

#[test]
fn policy_checks_the_enrollment_hmac() {
    let policy = Policy::from_json(
        r#"{"identity_proof": "enrollment_secret", "enrollment_secrets": {"i-0123456789abcdef0": "s3cret"}, "instances": [{"instance_id_pattern": "i-*"}]}"#,
    )
    .unwrap();
    assert!(!format!("{policy:?}").contains("s3cret"));
    let mut msg = message(&build_csr(&KeySpec::EcP256.generate().unwrap(), ID, &[]).unwrap());
    assert_eq!(
        evaluate(&policy, &msg, None),
        Err(ReasonCode::IdentityProofMissing)
    );
    let sign = |msg: &CsrMessage, secret: &str| {
        let input = enrollment_mac_input(
            msg.request_id.as_deref().unwrap(),
            msg.timestamp.unwrap(),
            ID,
            Profile::Mtls,
            &msg.csr_pem,
        );
        Some(IdentityProof {
            kind: "enrollment_secret".into(),
            hmac: Some(enrollment_mac(secret, &input)),
        })
    };
    msg.identity_proof = sign(&msg, "s3cret");
    assert_eq!(evaluate(&policy, &msg, None), Ok(()));
    msg.identity_proof = sign(&msg, "wrong");
    assert_eq!(
        evaluate(&policy, &msg, None),
        Err(ReasonCode::IdentityProofInvalid)
    );
    // A valid HMAC replayed after the window.
    msg.timestamp = Some(OffsetDateTime::now_utc().unix_timestamp() - 100_000);
    msg.identity_proof = sign(&msg, "s3cret");
    assert_eq!(
        evaluate(&policy, &msg, None),
        Err(ReasonCode::RequestExpired)
    );
}

#[test]
fn unusable_policies_are_refused_with_a_reason() {
    for (text, needle) in [
        (r#"{"instances": []}"#, "identity_proof"),
        (
            r#"{"identity_proof": "none", "rsa_min_bits": 1024}"#,
            "2048",
        ),
        (r#"{"identity_proof": "sqs_sender_id"}"#, "sender_role_ids"),
        (
            r#"{"identity_proof": "none", "instances": [{"dns_names": []}]}"#,
            "exactly one",
        ),
        (r#"{"identity_proof": "none", "bogus": 1}"#, "bogus"),
    ] {
        let err = Policy::from_json(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn diff_shows_a_certificates_fields_and_a_crls_sorted_serials() {
    let ca = make_ca("diff", KeySpec::EcP256);
    let key = KeySpec::EcP256.generate().unwrap();
    let names = parse_names(&["DNS:node1.example", "IP:127.0.0.1"]).unwrap();
    let csr = parse_and_verify_csr(&build_csr(&key, ID, &names).unwrap()).unwrap();
    let issued = ca
        .signer
        .sign(
            &csr,
            ID,
            Profile::Mtls,
            std::time::Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let info = parse_certificate(&issued.certificate_pem, "leaf").unwrap();
    let fields = info.diff_fields();
    assert_eq!(fields["serial_number"], info.serial_hex.as_str());
    assert_eq!(
        fields["subject_alt_name"],
        serde_json::json!(["DNS:node1.example", "IP:127.0.0.1"])
    );
    assert_eq!(
        fields["not_after"],
        fleetpki_core::rfc3339(info.not_after).as_str()
    );
    // The SHA-256 of the public key the certificate is for: the key, not the certificate.
    let fingerprint = fields["public_key_fingerprint_sha256"].as_str().unwrap();
    assert_eq!(
        fingerprint.replace(':', ""),
        fleetpki_core::sha256_hex(&info.spki_der)
    );
    assert_eq!(fingerprint.len(), 32 * 3 - 1);

    let crl = fleetpki_core::crl::crl_diff_fields(7, &["0b".into(), "0a".into()]);
    assert_eq!(
        crl,
        serde_json::json!({"crl_number": 7, "revoked_serials": ["0a", "0b"]})
    );
}
