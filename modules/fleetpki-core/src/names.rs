//! Subject alternative names in community.crypto's `DNS:name` / `IP:address` notation.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::PkiError;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubjectAltName {
    Dns(String),
    Ip(IpAddr),
}

impl FromStr for SubjectAltName {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        let bad = |why: &str| PkiError::InvalidName {
            name: s.to_string(),
            why: why.to_string(),
        };
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| bad("write it as DNS:name or IP:address"))?;
        match kind.trim().to_ascii_uppercase().as_str() {
            "DNS" => {
                let name = value.trim().to_ascii_lowercase();
                if !is_dns_name(&name) {
                    return Err(bad("not a valid DNS name (letters, digits, '-', '.', an optional leading '*.')"));
                }
                Ok(SubjectAltName::Dns(name))
            }
            "IP" => value
                .trim()
                .parse()
                .map(SubjectAltName::Ip)
                .map_err(|_| bad("not an IPv4 or IPv6 address")),
            _ => Err(bad("only DNS: and IP: names are supported")),
        }
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectAltName::Dns(name) => write!(f, "DNS:{name}"),
            SubjectAltName::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// A hostname (RFC 1123 labels), optionally with one leading wildcard label.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Parses, de-duplicates and sorts a list of names, so that two requests for the same set of
/// names compare equal whatever their order.
pub fn parse_names<S: AsRef<str>>(names: &[S]) -> Result<Vec<SubjectAltName>, PkiError> {
    let mut parsed = names
        .iter()
        .map(|n| n.as_ref().parse())
        .collect::<Result<Vec<SubjectAltName>, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dns_and_ip() {
        assert_eq!(
            "DNS:Node1.Example".parse::<SubjectAltName>().unwrap(),
            SubjectAltName::Dns("node1.example".into())
        );
        assert_eq!(
            "IP:127.0.0.1"
                .parse::<SubjectAltName>()
                .unwrap()
                .to_string(),
            "IP:127.0.0.1"
        );
        assert_eq!(
            "ip:::1".parse::<SubjectAltName>().unwrap().to_string(),
            "IP:::1"
        );
    }

    #[test]
    fn refuses_what_is_not_a_name() {
        for bad in [
            "node1",
            "DNS:",
            "DNS:-bad.example",
            "DNS:a..b",
            "IP:300.1.1.1",
            "URI:http://x",
            "DNS:a b",
        ] {
            assert!(bad.parse::<SubjectAltName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_are_sorted_and_deduplicated() {
        let names = parse_names(&[
            "IP:10.0.0.1",
            "DNS:b.example",
            "DNS:a.example",
            "DNS:b.example",
        ])
        .unwrap();
        let shown: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["DNS:a.example", "DNS:b.example", "IP:10.0.0.1"]);
    }
}
