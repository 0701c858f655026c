//! The issuance record's format, without I/O: one JSON line per decision, each carrying
//! `prev_sha256`, the SHA-256 of the line before it (of [`GENESIS`] for the first line), so a
//! line removed from or altered in the middle of the record breaks the chain where it was. The
//! worker writes a certificate's line before its answer is sent (`Action::Record` is a barrier),
//! so every certificate that ever left the worker is in the record.
//!
//! The caller reads and writes the file; here: how a line is chained, how a record is verified,
//! and which certificates it holds.

use std::fmt;

use serde_json::Value;

/// The `prev_sha256` of a record's first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The field every line carries.
pub const PREV_FIELD: &str = "prev_sha256";

/// A line of the record, `fields` (a JSON object) chained after the line whose hash is `prev`.
/// Returns the line (no newline) and its hash, the `prev` of the next line.
pub fn chain_line(mut fields: Value, prev: &str) -> (String, String) {
    if let Some(object) = fields.as_object_mut() {
        object.insert(PREV_FIELD.into(), prev.into());
    }
    let line = fields.to_string();
    let hash = crate::sha256_hex(line.as_bytes());
    (line, hash)
}

/// The hash the next line must chain to, given the end of the record (its last bytes, at least
/// the whole last line): [`GENESIS`] for an empty record.
pub fn next_prev(tail: &[u8]) -> String {
    let trimmed = tail.strip_suffix(b"\n").unwrap_or(tail);
    if trimmed.is_empty() {
        return GENESIS.to_string();
    }
    let last = match trimmed.iter().rposition(|&b| b == b'\n') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    };
    crate::sha256_hex(last)
}

/// What is wrong with a record, by line number (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordProblem {
    /// The first line does not start a record: lines before it were removed (or it was edited).
    FirstLineNotFirst,
    /// Line `line` does not chain to the line before it: a line between them was removed, or the
    /// line before it was altered.
    Broken { line: usize },
    /// Line `line` is not a JSON object with `prev_sha256` (altered, or cut short by a crash in
    /// the middle of a write).
    Unreadable { line: usize },
}

impl fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordProblem::FirstLineNotFirst => write!(
                f,
                "line 1 does not start the record: lines before it were removed, or it was altered"
            ),
            RecordProblem::Broken { line } => write!(
                f,
                "line {line} does not follow line {}: a line between them was removed, or line {} was altered",
                line - 1,
                line - 1
            ),
            RecordProblem::Unreadable { line } => write!(
                f,
                "line {line} is not a record line (altered, or cut short by a crash while it was written)"
            ),
        }
    }
}

/// Every break in the chain of `text` (a whole record). Lines written before records were
/// chained (no `prev_sha256` on any line up to the first chained one) are accepted as they are.
pub fn verify(text: &str) -> Vec<RecordProblem> {
    let mut problems = Vec::new();
    let mut prev: Option<String> = None;
    let mut chained = false;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let claimed = serde_json::from_str::<Value>(line).ok().and_then(|v| {
            v.get(PREV_FIELD)
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        match claimed {
            Some(claimed) => {
                let expected = prev.as_deref().unwrap_or(GENESIS);
                if claimed != expected {
                    problems.push(if number == 1 {
                        RecordProblem::FirstLineNotFirst
                    } else {
                        RecordProblem::Broken { line: number }
                    });
                }
                chained = true;
            }
            // A legacy line before the chain starts is accepted; after it, not.
            None if !chained && serde_json::from_str::<Value>(line).is_ok() => {}
            None => problems.push(RecordProblem::Unreadable { line: number }),
        }
        prev = Some(crate::sha256_hex(line.as_bytes()));
    }
    problems
}

/// A certificate the record says exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCertificate {
    pub serial: String,
    pub instance_id: String,
    /// Unix seconds; `i64::MAX` when the line does not say.
    pub not_after: i64,
}

/// Every certificate in `text`: each line with a serial and an instance id (signed, issued, or
/// signed and not delivered — all exist and must be revocable).
pub fn certificates(text: &str) -> Vec<RecordedCertificate> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|value| {
            let serial = value.get("serial")?.as_str()?.to_string();
            let instance_id = value.get("instance_id")?.as_str()?.to_string();
            let not_after = value
                .get("not_after")
                .and_then(Value::as_str)
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map_or(i64::MAX, |t| t.unix_timestamp());
            Some(RecordedCertificate {
                serial,
                instance_id,
                not_after,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(n: usize) -> String {
        let mut prev = GENESIS.to_string();
        let mut text = String::new();
        for i in 0..n {
            let (line, hash) = chain_line(
                json!({"decision": "signed", "serial": format!("{i:02x}"), "instance_id": format!("i-{i}")}),
                &prev,
            );
            text.push_str(&line);
            text.push('\n');
            prev = hash;
        }
        text
    }

    #[test]
    fn a_whole_record_verifies_and_chains_on() {
        let text = record(5);
        assert_eq!(verify(&text), []);
        assert_eq!(verify(""), []);
        // The next line chains to the last one, whether or not the tail holds more than it.
        let prev = next_prev(text.as_bytes());
        let (line, _) = chain_line(json!({"decision": "issued"}), &prev);
        assert_eq!(verify(&format!("{text}{line}\n")), []);
        let last_line_only = text.lines().last().unwrap().to_string() + "\n";
        assert_eq!(next_prev(last_line_only.as_bytes()), prev);
        assert_eq!(next_prev(b""), GENESIS);
    }

    #[test]
    fn a_removed_line_is_reported_where_it_was() {
        let text = record(5);
        let lines: Vec<&str> = text.lines().collect();
        let without_third = [lines[0], lines[1], lines[3], lines[4]].join("\n");
        assert_eq!(verify(&without_third), [RecordProblem::Broken { line: 3 }]);
        let without_first = lines[1..].join("\n");
        assert_eq!(verify(&without_first), [RecordProblem::FirstLineNotFirst]);
    }

    #[test]
    fn an_altered_line_is_reported_by_the_next() {
        let text = record(4).replacen("\"serial\":\"01\"", "\"serial\":\"ff\"", 1);
        assert_eq!(verify(&text), [RecordProblem::Broken { line: 3 }]);
        let text = record(3).replacen(
            "{\"decision\":\"signed\",\"instance_id\":\"i-2\"",
            "{garbage",
            1,
        );
        assert_eq!(verify(&text), [RecordProblem::Unreadable { line: 3 }]);
    }

    #[test]
    fn legacy_lines_before_the_chain_are_accepted() {
        let legacy = "{\"decision\":\"issued\",\"serial\":\"aa\",\"instance_id\":\"i-old\"}\n";
        let prev = next_prev(legacy.as_bytes());
        let (line, _) = chain_line(json!({"decision": "signed"}), &prev);
        let text = format!("{legacy}{line}\n");
        assert_eq!(verify(&text), []);
        assert_eq!(certificates(&text).len(), 1);
    }

    #[test]
    fn every_line_with_a_serial_is_a_certificate() {
        let certs = certificates(&record(3));
        assert_eq!(
            certs
                .iter()
                .map(|c| c.instance_id.as_str())
                .collect::<Vec<_>>(),
            ["i-0", "i-1", "i-2"]
        );
        assert!(certs.iter().all(|c| c.not_after == i64::MAX));
    }
}
