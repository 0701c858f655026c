//! Whether a node should submit a new request: pure, with the clock passed in.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::certs::{parse_certificate, CertificateInfo};
use crate::keys::{load_private_key, public_key_spki};
use crate::layout::{InstalledPair, PendingRequest};
use crate::names::SubjectAltName;
use crate::wire::Profile;

/// `renew_before`: a duration before notAfter, or a share of the certificate's lifetime.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RenewBefore {
    Duration(Duration),
    /// 0 < fraction < 1.
    FractionOfLifetime(f64),
}

impl RenewBefore {
    /// Parses `30d`, `12h`, `90m`, `3600s` or `33%`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || format!("renew_before {text:?} is not a duration (30d, 12h, 90m, 3600s) or a percentage of the lifetime (33%)");
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent.trim().parse().map_err(|_| bad())?;
            if !(value > 0.0 && value < 100.0) {
                return Err(bad());
            }
            return Ok(RenewBefore::FractionOfLifetime(value / 100.0));
        }
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "d" => number * 86_400,
            "h" => number * 3_600,
            "m" => number * 60,
            "s" | "" => number,
            _ => return Err(bad()),
        };
        Ok(RenewBefore::Duration(Duration::from_secs(seconds)))
    }

    /// The moment from which the certificate is renewed.
    pub fn renewal_time(self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
        match self {
            RenewBefore::Duration(d) => not_after - d,
            RenewBefore::FractionOfLifetime(f) => {
                let lifetime = (not_after - not_before).as_seconds_f64();
                not_after - time::Duration::seconds_f64(lifetime * f)
            }
        }
    }
}

/// Why a node does or does not submit; returned as the module's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitReason {
    NoCertificate,
    CertificateUnreadable,
    KeyMismatch,
    NamesChanged,
    ProfileChanged,
    Expired,
    RenewalWindow,
    Forced,
    RequestPending,
    Valid,
}

impl SubmitReason {
    pub fn submits(self) -> bool {
        !matches!(self, SubmitReason::RequestPending | SubmitReason::Valid)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SubmitReason::NoCertificate => "no_certificate",
            SubmitReason::CertificateUnreadable => "certificate_unreadable",
            SubmitReason::KeyMismatch => "key_changed",
            SubmitReason::NamesChanged => "names_changed",
            SubmitReason::ProfileChanged => "profile_changed",
            SubmitReason::Expired => "expired",
            SubmitReason::RenewalWindow => "inside_renewal_window",
            SubmitReason::Forced => "forced",
            SubmitReason::RequestPending => "request_pending",
            SubmitReason::Valid => "valid",
        }
    }
}

impl fmt::Display for SubmitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the node wants now.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    pub instance_id: &'a str,
    pub names: &'a [SubjectAltName],
    pub profile: Profile,
    pub renew_before: RenewBefore,
    pub force: bool,
}

/// The decision and, when a certificate is installed, what it is.
#[derive(Debug, Clone)]
pub struct Decision {
    pub reason: SubmitReason,
    pub current: Option<CertificateInfo>,
}

/// Decides whether to submit a new request.
pub fn decide(wanted: &Wanted<'_>, installed: Option<&InstalledPair>, pending: Option<&PendingRequest>, now: OffsetDateTime) -> Decision {
    let current = installed.and_then(|pair| parse_certificate(&pair.cert_pem, "installed certificate").ok());
    let wanted_names: Vec<String> = wanted.names.iter().map(ToString::to_string).collect();
    let reason = if wanted.force {
        SubmitReason::Forced
    } else if pending.is_some_and(|p| p.names == wanted_names && p.profile == wanted.profile && p.instance_id == wanted.instance_id) {
        SubmitReason::RequestPending
    } else {
        match (installed, &current) {
            (None, _) => SubmitReason::NoCertificate,
            (Some(_), None) => SubmitReason::CertificateUnreadable,
            (Some(pair), Some(cert)) => {
                let key_matches = load_private_key(&pair.key_pem, "installed key")
                    .map(|k| public_key_spki(&k) == cert.spki_der)
                    .unwrap_or(false);
                let profile_matches = cert.server_auth == wanted.profile.server_auth() && cert.client_auth == wanted.profile.client_auth();
                if !key_matches {
                    SubmitReason::KeyMismatch
                } else if cert.names != wanted.names || cert.common_name.as_deref() != Some(wanted.instance_id) {
                    SubmitReason::NamesChanged
                } else if !profile_matches {
                    SubmitReason::ProfileChanged
                } else if now >= cert.not_after {
                    SubmitReason::Expired
                } else if now >= wanted.renew_before.renewal_time(cert.not_before, cert.not_after) {
                    SubmitReason::RenewalWindow
                } else {
                    SubmitReason::Valid
                }
            }
        }
    };
    Decision { reason, current }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_before_parses_durations_and_percentages() {
        assert_eq!(RenewBefore::parse("30d").unwrap(), RenewBefore::Duration(Duration::from_secs(30 * 86400)));
        assert_eq!(RenewBefore::parse("12h").unwrap(), RenewBefore::Duration(Duration::from_secs(12 * 3600)));
        assert_eq!(RenewBefore::parse("3600").unwrap(), RenewBefore::Duration(Duration::from_secs(3600)));
        assert_eq!(RenewBefore::parse("25%").unwrap(), RenewBefore::FractionOfLifetime(0.25));
        for bad in ["", "x", "10w", "0%", "100%", "-5d"] {
            assert!(RenewBefore::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renewal_time_of_a_fraction_is_measured_from_not_after() {
        let start = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let end = start + time::Duration::days(30);
        assert_eq!(RenewBefore::FractionOfLifetime(0.5).renewal_time(start, end), start + time::Duration::days(15));
        assert_eq!(RenewBefore::Duration(Duration::from_secs(86400)).renewal_time(start, end), start + time::Duration::days(29));
    }
}
