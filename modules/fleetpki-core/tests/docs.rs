//! `docs/reason-codes.md` has one row for every code a refusal can carry, worker and node, and
//! none for a code that does not exist.

use std::collections::BTreeSet;

use fleetpki_core::certs::CertRejection;
use fleetpki_core::reason::ReasonCode;

const REFERENCE: &str = include_str!("../../../docs/reason-codes.md");

/// The codes of the table rows (`| \`code\` | ...`) under the heading `## <section>`.
fn table_codes(section: &str) -> Vec<String> {
    let start = REFERENCE
        .find(&format!("## {section}\n"))
        .unwrap_or_else(|| panic!("no section {section}"));
    let rest = &REFERENCE[start + 3..];
    let body = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    body.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|line| line[..line.find('`').unwrap()].to_string())
        .collect()
}

fn assert_same(section: &str, expected: &[&str]) {
    let rows = table_codes(section);
    let unique: BTreeSet<&str> = rows.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), rows.len(), "{section}: a code has two rows");
    assert_eq!(
        unique,
        expected.iter().copied().collect::<BTreeSet<_>>(),
        "{section}"
    );
}

#[test]
fn every_worker_code_has_one_row() {
    let all: Vec<&str> = ReasonCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_same("Worker codes", &all);
}

#[test]
fn every_node_code_has_one_row() {
    assert_same("Node codes", &CertRejection::REASON_CODES);
}

/// The worked example of docs/interfaces.md, "Enrollment HMAC": the request and secret it gives
/// produce the canonical input and the hmac it shows.
#[test]
fn the_documented_enrollment_hmac_example_is_what_a_node_sends() {
    const DOC: &str = include_str!("../../../docs/interfaces.md");
    let section = &DOC[DOC
        .find("## Enrollment HMAC")
        .expect("no Enrollment HMAC section")..];
    let block = |fence: &str| {
        let start = section.find(fence).expect(fence) + fence.len();
        section[start..][..section[start..].find("\n```").unwrap()].trim()
    };
    let request: fleetpki_core::wire::CsrMessage =
        serde_json::from_str(block("```json\n")).unwrap();
    let canonical = block("```text\n");
    let secret = section
        .split("Secret `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap();
    let hmac = section
        .split("hmac: `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap();
    assert_eq!(
        fleetpki_core::policy::enrollment_mac_input_v2(&request),
        canonical
    );
    assert_eq!(
        fleetpki_core::policy::enrollment_proof_v2(secret, &request),
        hmac
    );
}
