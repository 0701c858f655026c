//! A node's status as the metrics and the report show it (`fleetpki_core::status`): the renewal
//! time follows the recorded renew_before, and a refusal's code is the last result's only while
//! the last result is that refusal.

use std::time::Duration;

use fleetpki_core::csr::{build_csr, parse_and_verify_csr};
use fleetpki_core::keys::KeySpec;
use fleetpki_core::layout::{NodeState, RecordedRefusal};
use fleetpki_core::names::parse_names;
use fleetpki_core::renewal::renewal_jitter;
use fleetpki_core::status::NodeStatus;
use fleetpki_core::wire::Profile;
use time::OffsetDateTime;

mod util;
use util::{make_ca, ID};

/// A 30-day certificate for `ID`, issued now by a CA of its own (`name`: one per test, as tests
/// run in parallel).
fn certificate(name: &str) -> String {
    let ca = make_ca(name, KeySpec::EcP256);
    let key = KeySpec::EcP256.generate().unwrap();
    let names = parse_names(&["DNS:node1.fleet.internal"]).unwrap();
    let csr = parse_and_verify_csr(&build_csr(&key, ID, &names).unwrap()).unwrap();
    ca.signer
        .sign(
            &csr,
            ID,
            Profile::Mtls,
            Duration::from_secs(30 * 86_400),
            OffsetDateTime::now_utc(),
        )
        .unwrap()
        .certificate_pem
}

fn refusal() -> RecordedRefusal {
    RecordedRefusal {
        request_id: "req-1".into(),
        reason_code: "san_not_allowed".into(),
        message: "refused".into(),
        at: 1_700_000_000,
    }
}

#[test]
fn the_renewal_time_is_renew_before_ahead_of_not_after_less_the_hosts_jitter() {
    let pem = certificate("status-renewal");
    let state = NodeState {
        renew_before: Some("10d".into()),
        ..NodeState::default()
    };
    let status = NodeStatus::new(ID, Some(&pem), None, state);
    let cert = status
        .certificate
        .as_ref()
        .expect("the certificate is read");
    let lifetime = (cert.not_after - cert.not_before).as_seconds_f64();
    let expected = cert.not_after
        - time::Duration::days(10)
        - time::Duration::seconds_f64(lifetime * renewal_jitter(ID));
    assert_eq!(
        status.renewal_due,
        Some(expected.replace_nanosecond(0).unwrap())
    );
    assert!(!status.renewal_overdue(OffsetDateTime::now_utc()));
    assert!(status.renewal_overdue(expected));
    assert!(!status.renewal_overdue(expected - time::Duration::seconds(1)));

    // A share of the lifetime works the same way; no recorded renew_before means unknown.
    let share = NodeStatus::new(
        ID,
        Some(&pem),
        None,
        NodeState {
            renew_before: Some("50%".into()),
            ..NodeState::default()
        },
    );
    assert!(share.renewal_due.unwrap() < expected);
    let unknown = NodeStatus::new(ID, Some(&pem), None, NodeState::default());
    assert_eq!(unknown.renewal_due, None);
    assert!(!unknown.renewal_overdue(cert.not_after));
}

#[test]
fn a_refusal_code_is_the_last_results_only_while_the_refusal_is_the_last_result() {
    let refused = NodeStatus::new(
        ID,
        None,
        None,
        NodeState {
            last_result: Some("refused".into()),
            last_refusal: Some(refusal()),
            ..NodeState::default()
        },
    );
    assert_eq!(refused.last_reason_code(), Some("san_not_allowed"));
    let installed_since = NodeStatus::new(
        ID,
        Some(&certificate("status-refusal")),
        None,
        NodeState {
            last_result: Some("installed".into()),
            last_refusal: Some(refusal()),
            ..NodeState::default()
        },
    );
    assert_eq!(installed_since.last_reason_code(), None);
    assert!(
        installed_since.last_refusal.is_some(),
        "the refusal itself is kept"
    );
}

#[test]
fn an_unreadable_certificate_is_no_certificate() {
    let status = NodeStatus::new(ID, Some("not a certificate"), None, NodeState::default());
    assert!(status.certificate.is_none());
    assert!(status.renewal_due.is_none());
}

#[test]
fn the_facts_say_days_left_expiry_and_overdue_at_the_time_asked() {
    let pem = certificate("status-facts");
    let state = NodeState {
        renew_before: Some("10d".into()),
        last_result: Some("refused".into()),
        last_refusal: Some(refusal()),
        ..NodeState::default()
    };
    let status = NodeStatus::new(ID, Some(&pem), None, state);
    let cert = status.certificate.clone().unwrap();
    let now = cert.not_before + time::Duration::days(1);
    let facts = status.facts(now);
    let c = &facts["certificate"];
    assert_eq!(c["expired"], false);
    assert_eq!(c["renewal_overdue"], false);
    assert_eq!(c["days_left"], (cert.not_after - now).whole_days());
    assert_eq!(c["public_key_type"], "ECDSA secp256r1");
    assert_eq!(c["serial_number"], cert.serial_hex);
    assert_eq!(facts["pending_request"], serde_json::Value::Null);
    assert_eq!(facts["last_refusal"]["reason_code"], "san_not_allowed");

    let late = status.facts(cert.not_after + time::Duration::seconds(1));
    assert_eq!(late["certificate"]["expired"], true);
    assert_eq!(late["certificate"]["renewal_overdue"], true);
    assert_eq!(late["certificate"]["days_left"], 0);
}
