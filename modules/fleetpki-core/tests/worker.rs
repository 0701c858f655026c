//! The CA worker's decisions (`fleetpki_core::worker`), without SQS: for every reason code a
//! request that earns it, and the actions that must follow, in order. The table is written out
//! by hand (not generated from `ReasonCode::ALL`), and a code without a row fails
//! `every_reason_code_has_a_row`.

use std::time::Duration;

use fleetpki_core::csr::build_csr;
use fleetpki_core::keys::KeySpec;
use fleetpki_core::names::parse_names;
use fleetpki_core::policy::{
    enrollment_mac, enrollment_mac_input, enrollment_proof_v2, Policy, ReasonCode,
};
use fleetpki_core::remote::RemoteSignError;
use fleetpki_core::wire::{CsrMessage, IdentityProof, Profile, ReplyMessage, ReplyMode};
use fleetpki_core::worker::{
    accept_pca_certificate, check, plan_pca_issuance, remote_failure, sign_locally, Accepted,
    Action, Disposition, Fate, Inbound, Routes, Sent, Verdict,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, KeyPair,
    SanType,
};
use time::OffsetDateTime;

mod util;
use util::{make_ca, TestCa, ID};

const CSR_QUEUE: &str = "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr";
const REPLY_QUEUE: &str =
    "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-reply-i-0123456789abcdef0";
const SHARED_QUEUE: &str = "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-certs-shared";
const DLQ: &str = "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr-dlq";
const SECRET: &str = "an enrollment secret of 32 bytes!";
const ROLE: &str = "AROAEXAMPLEROLEID";

fn routes(ca: &TestCa) -> Routes {
    Routes {
        csr_queue_url: CSR_QUEUE.into(),
        reply_queue_prefix: "fleetpki-reply-".into(),
        shared_cert_queue_url: None,
        dead_letter_queue_url: Some(DLQ.into()),
        chain_pem: ca.signer.chain_pem().to_string(),
        signer: "aws_kms",
        signer_ref: Some(KEY_ARN.into()),
    }
}

/// The routes `check` reads (only where a request would be answered): no chain needed.
fn check_routes() -> Routes {
    Routes {
        csr_queue_url: CSR_QUEUE.into(),
        reply_queue_prefix: "fleetpki-reply-".into(),
        shared_cert_queue_url: None,
        dead_letter_queue_url: Some(DLQ.into()),
        chain_pem: String::new(),
        signer: "file",
        signer_ref: None,
    }
}

const KEY_ARN: &str = "arn:aws:kms:eu-west-1:123456789012:key/worker-test";

fn policy(extra: &str) -> Policy {
    Policy::from_json(&format!(
        r#"{{"identity_proof": "none", "instances": [
            {{"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["127.0.0.0/8"]}}]{extra}}}"#
    ))
    .unwrap()
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// A CSR like a node's (CN = `cn`, the node's names), from `params` tweaked by `tweak`.
fn csr_with(
    key: &KeyPair,
    cn: &str,
    sans: &[&str],
    tweak: impl FnOnce(&mut CertificateParams),
) -> String {
    let names = parse_names(sans).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n {
            fleetpki_core::names::SubjectAltName::Dns(d) => {
                SanType::DnsName(d.as_str().try_into().unwrap())
            }
            fleetpki_core::names::SubjectAltName::Ip(ip) => SanType::IpAddress(*ip),
        })
        .collect();
    tweak(&mut params);
    params.serialize_request(key).unwrap().pem().unwrap()
}

const NODE_SANS: [&str; 2] = ["DNS:node1.fleet.internal", "IP:127.0.0.1"];

fn node_csr() -> String {
    let key = KeySpec::EcP256.generate().unwrap();
    build_csr(&key, ID, &parse_names(&NODE_SANS).unwrap()).unwrap()
}

fn tweaked_csr(tweak: impl FnOnce(&mut CertificateParams)) -> String {
    csr_with(&KeySpec::EcP256.generate().unwrap(), ID, &NODE_SANS, tweak)
}

fn message(csr_pem: String) -> CsrMessage {
    CsrMessage {
        instance_id: ID.into(),
        csr_pem,
        version: Some(1),
        request_id: Some("req-1".into()),
        timestamp: Some(now()),
        profile: Some(Profile::Mtls),
        lifetime_days: None,
        reply_mode: Some(ReplyMode::PerNode),
        identity_proof: None,
    }
}

/// A version 1 request of this node with `csr_pem`, changed by `edit`.
fn body(csr_pem: String, edit: impl FnOnce(&mut CsrMessage)) -> String {
    let mut m = message(csr_pem);
    edit(&mut m);
    serde_json::to_string(&m).unwrap()
}

fn with_proof(m: &mut CsrMessage, hmac: String) {
    m.identity_proof = Some(IdentityProof {
        kind: "enrollment_secret".into(),
        hmac: Some(hmac),
    });
}

/// A received request: its body, its `InstanceId` attribute and `SenderId`, under a policy.
struct Request {
    body: String,
    attribute: Option<String>,
    sender: Option<String>,
    policy: Policy,
    /// The worker's shared certificate queue, if it has one.
    shared_queue: Option<&'static str>,
}

fn request(body: String) -> Request {
    Request {
        body,
        attribute: Some(ID.into()),
        sender: None,
        policy: policy(""),
        shared_queue: None,
    }
}

fn flip_last_signature_byte(pem_text: &str) -> String {
    let block = pem::parse(pem_text).unwrap();
    let mut der = block.contents().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    pem::encode(&pem::Pem::new(block.tag(), der))
}

/// Where a refusal goes when every send succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Answered on the node's reply queue, then deleted.
    Node,
    /// Dead-lettered (the node cannot be told), then deleted.
    DeadLetter,
    /// Answered to the node and dead-lettered (an integrity failure of a request the node can
    /// read an answer to), then deleted.
    NodeAndDeadLetter,
}

/// How a row's verdict is reached: a request through `check`, or a remote signer's answer.
// A few dozen rows, each built once: boxing would only add noise to the table.
#[allow(clippy::large_enum_variant)]
enum Input {
    Request(Request),
    SignerSays(RemoteSignError),
}

/// The table: one row per reason code at least, written out.
fn rows() -> Vec<(&'static str, ReasonCode, Route, Input)> {
    use ReasonCode::*;
    use Route::*;
    vec![
        ("body over 64 KiB", MessageTooLarge, DeadLetter, Input::Request(request("x".repeat(65 * 1024)))),
        ("body not JSON", MessageMalformed, DeadLetter, Input::Request(request("this is { not json".into()))),
        (
            "version 1 without a timestamp",
            MessageMalformed,
            NodeAndDeadLetter,
            Input::Request(request(body(node_csr(), |m| m.timestamp = None))),
        ),
        (
            "a request id of 200 characters with spaces",
            MessageMalformed,
            DeadLetter,
            Input::Request(request(body(node_csr(), |m| m.request_id = Some("a b".repeat(67))))),
        ),
        ("wire version 2", UnsupportedVersion, NodeAndDeadLetter, Input::Request(request(body(node_csr(), |m| m.version = Some(2))))),
        ("CSR PEM over 16 KiB", CsrTooLarge, NodeAndDeadLetter, Input::Request(request(body("A".repeat(17 * 1024), |_| {})))),
        ("CSR not PEM", CsrMalformed, NodeAndDeadLetter, Input::Request(request(body("hello, I am a CSR".into(), |_| {})))),
        (
            "ECDSA P-256 signed with SHA-512",
            CsrSignatureAlgorithm,
            NodeAndDeadLetter,
            Input::Request(request(body(include_str!("data/ecdsa-p256-sha512.csr.pem").into(), |_| {}))),
        ),
        (
            "self-signature altered",
            CsrSignatureInvalid,
            NodeAndDeadLetter,
            Input::Request(request(body(flip_last_signature_byte(&node_csr()), |_| {}))),
        ),
        (
            "instance id with path characters",
            InstanceIdInvalid,
            DeadLetter,
            Input::Request(Request {
                attribute: Some("i-../../evil queue".into()),
                ..request(body(
                    csr_with(&KeySpec::EcP256.generate().unwrap(), "i-../../evil queue", &NODE_SANS, |_| {}),
                    |m| m.instance_id = "i-../../evil queue".into(),
                ))
            }),
        ),
        (
            "InstanceId attribute of another node",
            InstanceIdMismatch,
            Node,
            Input::Request(Request {
                attribute: Some("i-0bbbbbbbbbbbbbbbb".into()),
                ..request(body(node_csr(), |_| {}))
            }),
        ),
        (
            "a second CN naming another node",
            SubjectMismatch,
            Node,
            Input::Request(request(body(
                tweaked_csr(|p| {
                    p.distinguished_name
                        .push(DnType::CustomDnType(vec![2, 5, 4, 3]), "i-0bbbbbbbbbbbbbbbb")
                }),
                |_| {},
            ))),
        ),
        (
            "CN of another node",
            SubjectMismatch,
            Node,
            Input::Request(request(body(
                csr_with(&KeySpec::EcP256.generate().unwrap(), "i-0bbbbbbbbbbbbbbbb", &NODE_SANS, |_| {}),
                |_| {},
            ))),
        ),
        (
            "no CN at all",
            SubjectMismatch,
            Node,
            Input::Request(request(body(tweaked_csr(|p| p.distinguished_name = DistinguishedName::new()), |_| {}))),
        ),
        (
            "shared reply mode on a worker without a shared queue",
            ReplyModeNotAllowed,
            DeadLetter,
            Input::Request(request(body(node_csr(), |m| m.reply_mode = Some(ReplyMode::Shared)))),
        ),
        (
            "per-node reply mode the policy does not allow",
            ReplyModeNotAllowed,
            Node,
            Input::Request(Request {
                policy: policy(r#", "reply_modes": ["shared"]"#),
                shared_queue: Some(SHARED_QUEUE),
                ..request(body(node_csr(), |_| {}))
            }),
        ),
        (
            "shared reply mode the policy does not allow",
            ReplyModeNotAllowed,
            DeadLetter,
            Input::Request(Request {
                policy: policy(r#", "reply_modes": ["per_node"]"#),
                shared_queue: Some(SHARED_QUEUE),
                ..request(body(node_csr(), |m| m.reply_mode = Some(ReplyMode::Shared)))
            }),
        ),
        (
            "instance outside the policy",
            InstanceNotAllowed,
            Node,
            Input::Request(Request {
                policy: Policy::from_json(r#"{"identity_proof": "none", "instances": [{"instance_id": "i-0aaaaaaaaaaaaaaaa"}]}"#).unwrap(),
                ..request(body(node_csr(), |_| {}))
            }),
        ),
        (
            "DNS name outside the node's suffixes",
            SanNotAllowed,
            Node,
            Input::Request(request(body(
                csr_with(&KeySpec::EcP256.generate().unwrap(), ID, &["DNS:evil.example", "IP:127.0.0.1"], |_| {}),
                |_| {},
            ))),
        ),
        (
            "e-mail SAN",
            SanUnsupported,
            Node,
            Input::Request(request(body(
                tweaked_csr(|p| p.subject_alt_names.push(SanType::Rfc822Name("root@node1.fleet.internal".try_into().unwrap()))),
                |_| {},
            ))),
        ),
        (
            "Ed25519 key",
            KeyTypeNotAllowed,
            Node,
            Input::Request(request(body(
                csr_with(&KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(), ID, &NODE_SANS, |_| {}),
                |_| {},
            ))),
        ),
        (
            "RSA key of 1024 bits",
            KeyTooSmall,
            Node,
            Input::Request(request(body(include_str!("data/rsa-1024.csr.pem").into(), |_| {}))),
        ),
        (
            "CA:TRUE requested",
            CaRequested,
            Node,
            Input::Request(request(body(tweaked_csr(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)), |_| {}))),
        ),
        (
            "unknown critical extension",
            CriticalExtension,
            Node,
            Input::Request(request(body(
                tweaked_csr(|p| {
                    let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
                    ext.set_criticality(true);
                    p.custom_extensions.push(ext);
                }),
                |_| {},
            ))),
        ),
        (
            "lifetime over the maximum",
            LifetimeNotAllowed,
            Node,
            Input::Request(request(body(node_csr(), |m| m.lifetime_days = Some(365)))),
        ),
        (
            "profile the policy does not allow",
            ProfileNotAllowed,
            Node,
            Input::Request(Request {
                policy: policy(r#", "profiles": ["server"]"#),
                ..request(body(node_csr(), |_| {}))
            }),
        ),
        (
            "no enrollment proof",
            IdentityProofMissing,
            Node,
            Input::Request(Request {
                policy: enrollment_policy(),
                ..request(body(node_csr(), |_| {}))
            }),
        ),
        (
            "enrollment proof of another secret",
            IdentityProofInvalid,
            Node,
            Input::Request(Request {
                policy: enrollment_policy(),
                ..request(body(node_csr(), |m| with_proof(m, "00".repeat(32))))
            }),
        ),
        (
            "SenderId of another instance",
            SenderMismatch,
            Node,
            Input::Request(Request {
                policy: Policy::from_json(&format!(
                    r#"{{"identity_proof": "sqs_sender_id", "sender_role_ids": ["{ROLE}"], "instances": [{{"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["127.0.0.0/8"]}}]}}"#
                ))
                .unwrap(),
                sender: Some(format!("{ROLE}:i-0bbbbbbbbbbbbbbbb")),
                ..request(body(node_csr(), |_| {}))
            }),
        ),
        (
            "timestamp older than the maximum age",
            RequestExpired,
            Node,
            Input::Request(request(body(node_csr(), |m| m.timestamp = Some(now() - 86_400 - 600)))),
        ),
        (
            "the remote signer refuses this CSR",
            SignerRefused,
            Node,
            Input::SignerSays(RemoteSignError::refused("MalformedCSRException", "Private CA cannot read the CSR")),
        ),
    ]
}

/// The enrollment-secret policy of the proof rows.
fn enrollment_policy() -> Policy {
    enrollment_policy_with("")
}

/// The enrollment-secret policy with `extra` keys (`, "key": value`).
fn enrollment_policy_with(extra: &str) -> Policy {
    Policy::from_json(&format!(
        r#"{{"identity_proof": "enrollment_secret", "enrollment_secrets": {{"{ID}": "{SECRET}"}}, "instances": [{{"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["127.0.0.0/8"]}}]{extra}}}"#
    ))
    .unwrap()
}

fn verdict(ca: &TestCa, input: Input) -> Verdict {
    match input {
        Input::Request(r) => {
            let inbound = Inbound {
                message_id: "m-1",
                body: &r.body,
                instance_id_attribute: r.attribute.as_deref(),
                sender_id: r.sender.as_deref(),
            };
            let routes = Routes {
                shared_cert_queue_url: r.shared_queue.map(str::to_string),
                ..routes(ca)
            };
            match check(&r.policy, &routes, &inbound, now()) {
                Ok(accepted) => sign_locally(&ca.signer, accepted, OffsetDateTime::now_utc()),
                Err(refusal) => refusal,
            }
        }
        Input::SignerSays(error) => remote_failure(message(node_csr()), error),
    }
}

/// What a `Disposition` asks for when every send gets `answer`: the actions, in order.
fn drive(d: &mut Disposition, answer: impl Fn(&Action) -> Sent) -> Vec<Action> {
    let mut actions = Vec::new();
    while let Some(action) = d.next_action() {
        if matches!(action, Action::Publish { .. } | Action::DeadLetter { .. }) {
            d.sent(answer(&action));
        }
        actions.push(action);
        assert!(
            actions.len() < 10,
            "the disposition does not end: {actions:?}"
        );
    }
    actions
}

fn settle(
    routes: &Routes,
    verdict: Verdict,
    answer: impl Fn(&Action) -> Sent,
) -> (Vec<Action>, Disposition) {
    let inbound = Inbound {
        message_id: "m-1",
        body: "{}",
        instance_id_attribute: Some(ID),
        sender_id: None,
    };
    let mut d = Disposition::new(verdict, routes, &inbound);
    (drive(&mut d, answer), d)
}

fn delivered(_: &Action) -> Sent {
    Sent::Delivered
}

/// "publish", "dead_letter", "record:<decision>:<reason_code>", "delete", "hand_back".
fn shape(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Publish { .. } => "publish".to_string(),
            Action::DeadLetter { .. } => "dead_letter".to_string(),
            Action::Record(r) => format!("record:{}:{}", r.decision, r.reason_code.unwrap_or("-")),
            Action::Delete => "delete".to_string(),
            Action::HandBack => "hand_back".to_string(),
        })
        .collect()
}

#[test]
fn every_reason_code_has_a_row() {
    let mut covered: Vec<ReasonCode> = rows().into_iter().map(|(_, code, _, _)| code).collect();
    covered.sort_by_key(|c| c.as_str());
    covered.dedup();
    let mut all = ReasonCode::ALL.to_vec();
    all.sort_by_key(|c| c.as_str());
    assert_eq!(covered, all, "a reason code without a row in rows()");
}

#[test]
fn each_refusal_gets_its_reason_code_and_route() {
    let ca = make_ca("worker-table", KeySpec::EcP256);
    let routes = routes(&ca);
    for (case, code, route, input) in rows() {
        let verdict = verdict(&ca, input);
        let Verdict::Refuse { rejection, .. } = &verdict else {
            panic!("{case}: not refused: {verdict:?}");
        };
        assert_eq!(rejection.code, code, "{case}: {rejection}");
        assert!(
            !rejection.message.is_empty(),
            "{case}: a refusal without words"
        );
        let (actions, d) = settle(&routes, verdict, delivered);
        let decision = if code.is_integrity_failure() || route == Route::DeadLetter {
            "dead_lettered"
        } else {
            "rejected"
        };
        let record = format!("record:{decision}:{}", code.as_str());
        let expected: Vec<String> = match route {
            Route::Node => vec!["publish".into(), record, "delete".into()],
            Route::DeadLetter => vec!["dead_letter".into(), record, "delete".into()],
            Route::NodeAndDeadLetter => vec![
                "publish".into(),
                "dead_letter".into(),
                record,
                "delete".into(),
            ],
        };
        assert_eq!(shape(&actions), expected, "{case}");
        for action in &actions {
            match action {
                Action::Publish {
                    queue,
                    body,
                    instance_id,
                } => {
                    assert_eq!(
                        (queue.as_str(), instance_id.as_str()),
                        (REPLY_QUEUE, ID),
                        "{case}"
                    );
                    let ReplyMessage::Rejection(answer) = ReplyMessage::from_json(body).unwrap()
                    else {
                        panic!("{case}: the node was sent something else than a rejection: {body}");
                    };
                    assert_eq!(
                        (answer.reason_code.as_str(), answer.request_id.as_str()),
                        (code.as_str(), "req-1"),
                        "{case}"
                    );
                }
                Action::DeadLetter { queue, reason } => {
                    assert_eq!(queue, DLQ, "{case}");
                    assert!(
                        reason.starts_with(&format!("{}: ", code.as_str())),
                        "{case}: {reason}"
                    );
                }
                Action::Record(line) => {
                    assert_eq!(line.serial, None, "{case}: a refusal with a serial")
                }
                _ => {}
            }
        }
        assert!(
            matches!(d.fate(), Some(Fate::Rejected(_) | Fate::DeadLettered(_))),
            "{case}"
        );
    }
}

fn signed(ca: &TestCa) -> Verdict {
    verdict(ca, Input::Request(request(body(node_csr(), |_| {}))))
}

#[test]
fn a_valid_request_is_signed_answered_recorded_then_deleted() {
    let ca = make_ca("worker-sign", KeySpec::EcP256);
    let (actions, d) = settle(&routes(&ca), signed(&ca), delivered);
    // Recorded before it can leave the worker, then its delivery.
    assert_eq!(
        shape(&actions),
        ["record:signed:-", "publish", "record:issued:-", "delete"]
    );
    let Action::Publish { queue, body, .. } = &actions[1] else {
        unreachable!()
    };
    assert_eq!(queue, REPLY_QUEUE);
    let ReplyMessage::Certificate(cert) = ReplyMessage::from_json(body).unwrap() else {
        panic!("not a certificate: {body}");
    };
    for i in [0, 2] {
        let Action::Record(line) = &actions[i] else {
            unreachable!()
        };
        assert_eq!(cert.serial.as_deref(), line.serial.as_deref());
        assert_eq!(line.request_id.as_deref(), Some("req-1"));
        assert_eq!(line.instance_id.as_deref(), Some(ID));
        assert!(line.not_after.is_some() && line.certificate_sha256.is_some());
    }
    assert_eq!(cert.request_id.as_deref(), Some("req-1"));
    assert_eq!(cert.ca_chain_pem, ca.signer.chain_pem());
    assert!(matches!(d.fate(), Some(Fate::Issued(_))));
}

#[test]
fn the_accepted_grant_follows_the_policy() {
    let r = request(body(node_csr(), |m| m.lifetime_days = Some(7)));
    let inbound = Inbound {
        message_id: "m",
        body: &r.body,
        instance_id_attribute: Some(ID),
        sender_id: None,
    };
    let accepted = check(&r.policy, &check_routes(), &inbound, now())
        .unwrap_or_else(|v| panic!("refused: {v:?}"));
    assert_eq!(accepted.grant.lifetime, Duration::from_secs(7 * 86_400));
    assert_eq!(accepted.grant.profile, Profile::Mtls);
}

#[test]
fn a_valid_enrollment_proof_is_accepted() {
    let csr = node_csr();
    let ts = now();
    let mac = enrollment_mac(
        SECRET,
        &enrollment_mac_input("req-1", ts, ID, Profile::Mtls, &csr),
    );
    let r = Request {
        policy: enrollment_policy(),
        ..request(body(csr, |m| {
            m.timestamp = Some(ts);
            with_proof(m, mac);
        }))
    };
    let inbound = Inbound {
        message_id: "m",
        body: &r.body,
        instance_id_attribute: Some(ID),
        sender_id: None,
    };
    let accepted = check(&r.policy, &check_routes(), &inbound, now())
        .unwrap_or_else(|v| panic!("refused: {v:?}"));
    // v1 still passes while the policy allows it, with a word for the operator.
    assert_eq!(accepted.grant.warnings.len(), 1);
    assert!(accepted.grant.warnings[0].contains("v1 enrollment HMAC"));
}

/// A request of this node signed with the v2 HMAC over every field, then changed by `edit`.
fn v2_request(policy: Policy, edit: impl FnOnce(&mut CsrMessage)) -> Request {
    let mut m = message(node_csr());
    m.lifetime_days = Some(7);
    m.identity_proof = Some(IdentityProof {
        kind: "enrollment_secret".into(),
        hmac: Some(enrollment_proof_v2(SECRET, &m)),
    });
    edit(&mut m);
    Request {
        policy,
        ..request(serde_json::to_string(&m).unwrap())
    }
}

/// `check` of a request, as the module calls it (its refusal is not boxed there either).
#[allow(clippy::result_large_err)]
fn checked(r: &Request) -> Result<Accepted, Verdict> {
    let inbound = Inbound {
        message_id: "m",
        body: &r.body,
        instance_id_attribute: Some(ID),
        sender_id: None,
    };
    check(&r.policy, &check_routes(), &inbound, now())
}

fn refusal_code(result: Result<Accepted, Verdict>) -> Option<ReasonCode> {
    match result {
        Err(Verdict::Refuse { rejection, .. }) => Some(rejection.code),
        _ => None,
    }
}

#[test]
fn the_v2_enrollment_hmac_covers_every_field() {
    let accepted = checked(&v2_request(enrollment_policy(), |_| {}))
        .unwrap_or_else(|v| panic!("refused: {v:?}"));
    assert!(accepted.grant.warnings.is_empty());
    // Each field changed after signing breaks it, the ones v1 left out included.
    type Edit = fn(&mut CsrMessage);
    let edits: [(&str, Edit); 5] = [
        ("lifetime_days", |m| m.lifetime_days = Some(30)),
        ("reply_mode", |m| m.reply_mode = Some(ReplyMode::Shared)),
        ("profile", |m| m.profile = Some(Profile::Client)),
        ("request_id", |m| m.request_id = Some("req-2".into())),
        ("timestamp", |m| m.timestamp = m.timestamp.map(|t| t - 1)),
    ];
    for (field, edit) in edits {
        let r = v2_request(enrollment_policy(), edit);
        assert_eq!(
            refusal_code(checked(&r)),
            Some(ReasonCode::IdentityProofInvalid),
            "{field} changed after signing"
        );
    }
}

#[test]
fn a_v1_enrollment_hmac_is_refused_once_the_policy_says_v2_only() {
    let csr = node_csr();
    let ts = now();
    let mac = enrollment_mac(
        SECRET,
        &enrollment_mac_input("req-1", ts, ID, Profile::Mtls, &csr),
    );
    let r = Request {
        policy: enrollment_policy_with(r#", "enrollment_hmac_versions": [2]"#),
        ..request(body(csr, |m| {
            m.timestamp = Some(ts);
            with_proof(m, mac);
        }))
    };
    assert_eq!(
        refusal_code(checked(&r)),
        Some(ReasonCode::IdentityProofInvalid)
    );
}

#[test]
fn a_missing_reply_queue_dead_letters_the_signed_request_and_records_its_serial() {
    let ca = make_ca("worker-noqueue", KeySpec::EcP256);
    let answer = |a: &Action| match a {
        Action::Publish { .. } => Sent::QueueMissing,
        _ => Sent::Delivered,
    };
    let (actions, d) = settle(&routes(&ca), signed(&ca), answer);
    assert_eq!(
        shape(&actions),
        [
            "record:signed:-",
            "publish",
            "dead_letter",
            "record:dead_lettered:message_malformed",
            "delete"
        ]
    );
    let Action::Record(line) = &actions[3] else {
        unreachable!()
    };
    assert!(
        line.serial.is_some(),
        "a certificate was signed: its serial belongs in the record"
    );
    assert!(matches!(d.fate(), Some(Fate::DeadLettered(_))));
}

#[test]
fn a_certificate_that_could_not_be_sent_stays_queued_and_is_recorded() {
    let ca = make_ca("worker-sendfail", KeySpec::EcP256);
    let answer = |_: &Action| Sent::Failed("connection refused".into());
    let (actions, d) = settle(&routes(&ca), signed(&ca), answer);
    assert_eq!(
        shape(&actions),
        ["record:signed:-", "publish", "record:retry:not_delivered"]
    );
    let Action::Record(line) = &actions[2] else {
        unreachable!()
    };
    assert!(line.serial.is_some());
    assert!(matches!(d.fate(), Some(Fate::Retry(why)) if why.contains("connection refused")));
}

#[test]
fn a_refusal_the_node_cannot_be_told_is_dead_lettered() {
    let ca = make_ca("worker-refusefail", KeySpec::EcP256);
    let refusal = verdict(
        &ca,
        Input::Request(request(body(node_csr(), |m| m.lifetime_days = Some(365)))),
    );
    let answer = |a: &Action| match a {
        Action::Publish { .. } => Sent::Failed("throttled".into()),
        _ => Sent::Delivered,
    };
    let (actions, _) = settle(&routes(&ca), refusal, answer);
    assert_eq!(
        shape(&actions),
        [
            "publish",
            "dead_letter",
            "record:dead_lettered:lifetime_not_allowed",
            "delete"
        ]
    );
}

#[test]
fn without_a_dead_letter_queue_an_unreadable_request_stays_queued() {
    let ca = make_ca("worker-nodlq", KeySpec::EcP256);
    let routes = Routes {
        dead_letter_queue_url: None,
        ..routes(&ca)
    };
    let refusal = verdict(&ca, Input::Request(request("not json".into())));
    let (actions, d) = settle(&routes, refusal, delivered);
    assert_eq!(shape(&actions), ["record:retry:not_delivered"]);
    assert!(matches!(d.fate(), Some(Fate::Retry(why)) if why.contains("no dead-letter queue")));
}

#[test]
fn a_failed_dead_lettering_leaves_the_request_queued() {
    let ca = make_ca("worker-dlqfail", KeySpec::EcP256);
    let refusal = verdict(&ca, Input::Request(request("not json".into())));
    let (actions, _) = settle(&routes(&ca), refusal, |_| {
        Sent::Failed("access denied".into())
    });
    assert_eq!(
        shape(&actions),
        ["dead_letter", "record:retry:not_delivered"]
    );
}

#[test]
fn a_signer_outage_records_and_hands_the_request_back() {
    let ca = make_ca("worker-outage", KeySpec::EcP256);
    let outage = remote_failure(
        message(node_csr()),
        RemoteSignError::outage("DisabledException", "the key is disabled"),
    );
    assert!(matches!(outage, Verdict::Unavailable { .. }));
    let (actions, d) = settle(&routes(&ca), outage, delivered);
    assert_eq!(
        shape(&actions),
        ["record:retry:signer_unavailable", "hand_back"]
    );
    assert!(matches!(d.fate(), Some(Fate::SignerUnavailable(_))));
}

#[test]
fn a_seed_request_is_answered_on_the_shared_queue_in_the_seed_format() {
    let ca = make_ca("worker-seed", KeySpec::EcP256);
    let routes = Routes {
        shared_cert_queue_url: Some(SHARED_QUEUE.into()),
        ..routes(&ca)
    };
    let seed_body = serde_json::json!({"instance_id": ID, "csr_pem": node_csr()}).to_string();
    let v = verdict(
        &ca,
        Input::Request(Request {
            shared_queue: Some(SHARED_QUEUE),
            ..request(seed_body.clone())
        }),
    );
    let (actions, _) = settle(&routes, v, delivered);
    assert_eq!(
        shape(&actions),
        ["record:signed:-", "publish", "record:issued:-", "delete"]
    );
    let Action::Publish { queue, body, .. } = &actions[1] else {
        unreachable!()
    };
    assert_eq!(queue, SHARED_QUEUE);
    let fields: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(
        fields.get("kind").is_none(),
        "the seed's retrieve_cert.py reads untagged messages: {body}"
    );
    assert!(fields["certificate_pem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));

    // Without a shared queue there is nowhere to answer it: refused before anything is signed.
    let v = verdict(&ca, Input::Request(request(seed_body)));
    let Verdict::Refuse { rejection, .. } = &v else {
        panic!("a request that cannot be answered was not refused: {v:?}");
    };
    assert_eq!(rejection.code, ReasonCode::ReplyModeNotAllowed);
    assert!(
        rejection.message.contains("shared_cert_queue_url"),
        "{rejection}"
    );
    let (actions, d) = settle(
        &Routes {
            shared_cert_queue_url: None,
            ..routes
        },
        v,
        delivered,
    );
    assert_eq!(
        shape(&actions),
        [
            "dead_letter",
            "record:dead_lettered:reply_mode_not_allowed",
            "delete"
        ]
    );
    assert!(d.issued().is_none(), "a certificate was signed");
}

#[test]
fn a_refusal_on_the_shared_queue_is_dead_lettered_not_answered() {
    let ca = make_ca("worker-sharedrefuse", KeySpec::EcP256);
    let routes = Routes {
        shared_cert_queue_url: Some(SHARED_QUEUE.into()),
        ..routes(&ca)
    };
    let v = verdict(
        &ca,
        Input::Request(Request {
            shared_queue: Some(SHARED_QUEUE),
            ..request(body(node_csr(), |m| {
                m.reply_mode = Some(ReplyMode::Shared);
                m.lifetime_days = Some(365);
            }))
        }),
    );
    let (actions, _) = settle(&routes, v, delivered);
    assert_eq!(
        shape(&actions),
        [
            "dead_letter",
            "record:dead_lettered:lifetime_not_allowed",
            "delete"
        ]
    );
}

#[test]
fn the_reply_queue_is_derived_from_the_verified_instance_id() {
    let ca = make_ca("worker-route", KeySpec::EcP256);
    let routes = Routes {
        csr_queue_url: format!("{CSR_QUEUE}/"),
        ..routes(&ca)
    };
    let (actions, _) = settle(&routes, signed(&ca), delivered);
    let Action::Publish { queue, .. } = &actions[1] else {
        unreachable!()
    };
    assert_eq!(queue, REPLY_QUEUE);
}

/// A request of this node with `csr`, accepted by the default policy.
fn accepted(csr: String) -> Accepted {
    let r = request(body(csr, |_| {}));
    let inbound = Inbound {
        message_id: "m",
        body: &r.body,
        instance_id_attribute: Some(ID),
        sender_id: None,
    };
    check(&r.policy, &check_routes(), &inbound, now()).unwrap_or_else(|v| panic!("refused: {v:?}"))
}

#[test]
fn private_ca_is_asked_only_for_a_subject_of_exactly_the_instance_id() {
    let far = OffsetDateTime::now_utc() + time::Duration::days(365);
    let with_org = accepted(tweaked_csr(|p| {
        p.distinguished_name
            .push(DnType::OrganizationName, "someone else");
    }));
    let refused = plan_pca_issuance(&with_org, far, OffsetDateTime::now_utc()).unwrap_err();
    assert_eq!(refused.code, ReasonCode::SubjectMismatch, "{refused}");
    assert!(!refused.message.contains("Some("), "{refused}");

    // The token is bound to the request id and the CSR: the same request id with another key
    // asks for another certificate.
    let now = OffsetDateTime::now_utc();
    let a = plan_pca_issuance(&accepted(node_csr()), far, now).unwrap();
    let b = plan_pca_issuance(&accepted(node_csr()), far, now).unwrap();
    assert_ne!(a.idempotency_token, b.idempotency_token);
    assert_eq!(a.idempotency_token.len(), 36);
    // Never beyond the CA's own end.
    let soon = now + time::Duration::hours(1);
    assert_eq!(
        plan_pca_issuance(&accepted(node_csr()), soon, now)
            .unwrap()
            .not_after_unix,
        soon.unix_timestamp()
    );
}

#[test]
fn what_private_ca_issued_is_published_only_if_the_node_would_accept_it() {
    let ca = make_ca("worker-pca", KeySpec::EcP256);
    let now = OffsetDateTime::now_utc();
    let far = now + time::Duration::days(365);
    let sign = |request: &Accepted, key_csr: &str, lifetime: Duration| {
        let csr = fleetpki_core::csr::parse_and_verify_csr(key_csr).unwrap();
        ca.signer
            .sign(&csr, ID, request.grant.profile, lifetime, now)
            .unwrap()
            .certificate_pem
    };
    let arn = "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/x/certificate/y";

    let request = accepted(node_csr());
    let issuance = plan_pca_issuance(&request, far, now).unwrap();
    let pem = sign(
        &request,
        &request.message.csr_pem.clone(),
        request.grant.lifetime,
    );
    let verdict = accept_pca_certificate(
        request,
        &issuance,
        arn.into(),
        pem,
        ca.signer.chain_pem(),
        std::time::SystemTime::now(),
    );
    assert!(
        matches!(&verdict, Verdict::Sign { signer_ref: Some(r), .. } if r == arn),
        "{verdict:?}"
    );

    // A certificate for another key than the CSR's: refused, never published.
    let request = accepted(node_csr());
    let issuance = plan_pca_issuance(&request, far, now).unwrap();
    let pem = sign(&request, &node_csr(), request.grant.lifetime);
    let verdict = accept_pca_certificate(
        request,
        &issuance,
        arn.into(),
        pem,
        ca.signer.chain_pem(),
        std::time::SystemTime::now(),
    );
    let Verdict::Refuse { rejection, .. } = &verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(rejection.code, ReasonCode::SignerRefused);
    assert!(
        rejection.message.contains("UnexpectedCertificate")
            || rejection.message.contains("not published"),
        "{rejection}"
    );

    // Valid for longer than granted: refused.
    let request = accepted(node_csr());
    let issuance = plan_pca_issuance(&request, now + time::Duration::hours(1), now).unwrap();
    let pem = sign(
        &request,
        &request.message.csr_pem.clone(),
        Duration::from_secs(30 * 86_400),
    );
    let verdict = accept_pca_certificate(
        request,
        &issuance,
        arn.into(),
        pem,
        ca.signer.chain_pem(),
        std::time::SystemTime::now(),
    );
    let Verdict::Refuse { rejection, .. } = &verdict else {
        panic!("{verdict:?}")
    };
    assert!(rejection.message.contains("beyond"), "{rejection}");
}

#[test]
fn the_audit_line_keeps_its_keys_in_alphabetical_order_and_names_the_signer() {
    let ca = make_ca("worker-audit", KeySpec::EcP256);
    let (actions, _) = settle(&routes(&ca), signed(&ca), delivered);
    let Action::Record(signed_line) = &actions[2] else {
        unreachable!()
    };
    let line = signed_line.to_json_line("2026-12-03T16:00:00Z");
    let keys: Vec<String> = line
        .trim_matches(|c| c == '{' || c == '}')
        .split(",\"")
        .map(|kv| {
            kv.trim_start_matches('"')
                .split('"')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "{line}");
    assert_eq!(
        sorted,
        [
            "certificate_sha256",
            "csr_sha256",
            "decision",
            "instance_id",
            "message_id",
            "not_after",
            "reason",
            "reason_code",
            "request_id",
            "sender_id",
            "serial",
            "signer",
            "signer_ref",
            "time",
        ]
    );
    let fields: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(fields["time"], "2026-12-03T16:00:00Z");
    assert_eq!(fields["signer"], "aws_kms");
    // A file signer's verdict names no key: the signed line says so rather than the default.
    assert_eq!(fields["signer_ref"], serde_json::Value::Null);

    // Nothing signed: the line names the worker's signer.
    let refusal = verdict(&ca, Input::Request(request("not json".into())));
    let (actions, _) = settle(&routes(&ca), refusal, delivered);
    let Action::Record(refused) = &actions[1] else {
        unreachable!()
    };
    let fields: serde_json::Value = serde_json::from_str(&refused.to_json_line("t")).unwrap();
    assert_eq!(fields["signer_ref"], KEY_ARN);
    assert_eq!(fields["serial"], serde_json::Value::Null);
}
