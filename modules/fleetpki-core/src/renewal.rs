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
        let bad = || {
            format!("renew_before {text:?} is not a duration (30d, 12h, 90m, 3600s) or a percentage of the lifetime (33%)")
        };
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent.trim().parse().map_err(|_| bad())?;
            if !(value > 0.0 && value < 100.0) {
                return Err(bad());
            }
            return Ok(RenewBefore::FractionOfLifetime(value / 100.0));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
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
    pub fn renewal_time(
        self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> OffsetDateTime {
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
    /// A rotation forced by an earlier run that never reached the CA.
    ForcedRetry,
    /// The pending request's reply queue no longer exists (the queue server lost its state):
    /// no answer can come, so a new request is sent at once.
    ReplyQueueMissing,
    RequestPending,
    /// A pending request unanswered for longer than `resubmit_after`.
    RequestStale,
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
            SubmitReason::ForcedRetry => "forced_retry",
            SubmitReason::ReplyQueueMissing => "reply_queue_missing",
            SubmitReason::RequestPending => "request_pending",
            SubmitReason::RequestStale => "request_unanswered",
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
    /// An earlier forced rotation has not reached the CA yet.
    pub retry_forced: bool,
    /// A pending request older than this is sent again.
    pub resubmit_after: Duration,
}

/// The share of a certificate's lifetime by which this host renews early, in [0, 10 %):
/// fixed per host (derived from its instance id), so a fleet issued at once does not renew at
/// once, and a host's own decision does not change from run to run.
pub fn renewal_jitter(instance_id: &str) -> f64 {
    let digest = crate::sha256_hex(instance_id.as_bytes());
    let value = u32::from_str_radix(&digest[..8], 16).unwrap_or(0);
    f64::from(value) / f64::from(u32::MAX) * 0.10
}

/// The decision and, when a certificate is installed, what it is.
#[derive(Debug, Clone)]
pub struct Decision {
    pub reason: SubmitReason,
    pub current: Option<CertificateInfo>,
}

/// Decides whether to submit a new request.
pub fn decide(
    wanted: &Wanted<'_>,
    installed: Option<&InstalledPair>,
    pending: Option<&PendingRequest>,
    now: OffsetDateTime,
) -> Decision {
    let current =
        installed.and_then(|pair| parse_certificate(&pair.cert_pem, "installed certificate").ok());
    let wanted_names: Vec<String> = wanted.names.iter().map(ToString::to_string).collect();
    let reason = if wanted.force {
        SubmitReason::Forced
    } else if wanted.retry_forced {
        SubmitReason::ForcedRetry
    } else if let Some(p) = pending.filter(|p| {
        p.names == wanted_names
            && p.profile == wanted.profile
            && p.instance_id == wanted.instance_id
    }) {
        let age = now.unix_timestamp() - p.submitted_at;
        if age > wanted.resubmit_after.as_secs() as i64 {
            SubmitReason::RequestStale
        } else {
            SubmitReason::RequestPending
        }
    } else {
        match (installed, &current) {
            (None, _) => SubmitReason::NoCertificate,
            (Some(_), None) => SubmitReason::CertificateUnreadable,
            (Some(pair), Some(cert)) => {
                let key_matches = load_private_key(&pair.key_pem, "installed key")
                    .map(|k| public_key_spki(&k) == cert.spki_der)
                    .unwrap_or(false);
                let profile_matches = cert.server_auth == wanted.profile.server_auth()
                    && cert.client_auth == wanted.profile.client_auth();
                if !key_matches {
                    SubmitReason::KeyMismatch
                } else if cert.names != wanted.names
                    || cert.common_name.as_deref() != Some(wanted.instance_id)
                {
                    SubmitReason::NamesChanged
                } else if !profile_matches {
                    SubmitReason::ProfileChanged
                } else if now >= cert.not_after {
                    SubmitReason::Expired
                } else if now >= renewal_due(wanted.renew_before, wanted.instance_id, cert) {
                    SubmitReason::RenewalWindow
                } else {
                    SubmitReason::Valid
                }
            }
        }
    };
    Decision { reason, current }
}

/// How long after its request `mtls_cert_fetch`, in the same run as the submit, does not take a
/// missing reply queue as lost: SQS may answer "does not exist" for a queue created a moment ago
/// (AWS asks for one second after CreateQueue; ten leave room for a slow region). A later
/// `mtls_csr_submit` needs no grace: the queue existed when its request was sent.
pub const REPLY_QUEUE_GRACE_SECONDS: i64 = 10;

/// Whether a pending request (submitted at `submitted_at`, unix seconds) whose reply queue
/// was not found can never be answered: the queue is gone, and not merely too new to be seen.
pub fn reply_queue_lost(submitted_at: i64, now: OffsetDateTime, reply_queue_exists: bool) -> bool {
    !reply_queue_exists && now.unix_timestamp() - submitted_at > REPLY_QUEUE_GRACE_SECONDS
}

/// The decision once the pending request's reply queue was looked up (per-node mode only, and
/// never in check mode): a request whose queue is gone (`queue_lost`) can never be answered.
pub fn recheck_pending(reason: SubmitReason, queue_lost: bool) -> SubmitReason {
    match reason {
        SubmitReason::RequestPending if queue_lost => SubmitReason::ReplyQueueMissing,
        other => other,
    }
}

/// When this host renews `cert`: `renew_before` before its notAfter, earlier by the host's
/// fixed jitter.
pub fn renewal_due(
    renew_before: RenewBefore,
    instance_id: &str,
    cert: &CertificateInfo,
) -> OffsetDateTime {
    renew_before.renewal_time(cert.not_before, cert.not_after) - jitter(instance_id, cert)
}

fn jitter(instance_id: &str, cert: &CertificateInfo) -> time::Duration {
    let lifetime = (cert.not_after - cert.not_before).as_seconds_f64();
    time::Duration::seconds_f64(lifetime * renewal_jitter(instance_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_before_parses_durations_and_percentages() {
        assert_eq!(
            RenewBefore::parse("30d").unwrap(),
            RenewBefore::Duration(Duration::from_secs(30 * 86400))
        );
        assert_eq!(
            RenewBefore::parse("12h").unwrap(),
            RenewBefore::Duration(Duration::from_secs(12 * 3600))
        );
        assert_eq!(
            RenewBefore::parse("3600").unwrap(),
            RenewBefore::Duration(Duration::from_secs(3600))
        );
        assert_eq!(
            RenewBefore::parse("25%").unwrap(),
            RenewBefore::FractionOfLifetime(0.25)
        );
        for bad in ["", "x", "10w", "0%", "100%", "-5d"] {
            assert!(RenewBefore::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renewal_time_of_a_fraction_is_measured_from_not_after() {
        let start = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let end = start + time::Duration::days(30);
        assert_eq!(
            RenewBefore::FractionOfLifetime(0.5).renewal_time(start, end),
            start + time::Duration::days(15)
        );
        assert_eq!(
            RenewBefore::Duration(Duration::from_secs(86400)).renewal_time(start, end),
            start + time::Duration::days(29)
        );
    }
}

#[cfg(test)]
mod decision_tests {
    //! The renewal decision against a real certificate, with the clock passed in (no sleeping).
    use super::*;
    use crate::ca::{create_intermediate, create_root, CaSubject};
    use crate::csr::{build_csr, parse_and_verify_csr};
    use crate::keys::KeySpec;
    use crate::names::parse_names;
    use crate::sign::CaSigner;
    use crate::wire::ReplyMode;

    const ID: &str = "i-0fedcba9876543210";

    /// A pair issued at `issued` for 30 days.
    fn pair(issued: OffsetDateTime, names: &[&str]) -> InstalledPair {
        let dir = std::env::temp_dir().join(format!(
            "fleetpki-renewal-{}-{}",
            std::process::id(),
            issued.unix_timestamp()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let subject = |cn: &str| CaSubject {
            common_name: cn.into(),
            organization: None,
            lifetime_days: 3650,
        };
        let root_key = KeySpec::EcP256.generate().unwrap();
        let now = issued - time::Duration::days(1);
        let root = create_root(&root_key, &subject("r"), now).unwrap();
        let int_key = KeySpec::EcP256.generate().unwrap();
        let int = create_intermediate(&int_key, &subject("i"), &root, root_key, now).unwrap();
        std::fs::write(dir.join("i.pem"), &int).unwrap();
        std::fs::write(dir.join("i.key"), int_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("c.pem"), &int).unwrap();
        let signer =
            CaSigner::load(&dir.join("i.pem"), &dir.join("i.key"), &dir.join("c.pem")).unwrap();
        let key = KeySpec::EcP256.generate().unwrap();
        let csr = parse_and_verify_csr(&build_csr(&key, ID, &parse_names(names).unwrap()).unwrap())
            .unwrap();
        let cert = signer
            .sign(
                &csr,
                ID,
                Profile::Mtls,
                Duration::from_secs(30 * 86400),
                issued,
            )
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        InstalledPair {
            key_pem: key.serialize_pem(),
            cert_pem: cert.certificate_pem,
        }
    }

    fn wanted<'a>(names: &'a [SubjectAltName]) -> Wanted<'a> {
        Wanted {
            instance_id: ID,
            names,
            profile: Profile::Mtls,
            renew_before: RenewBefore::parse("33%").unwrap(),
            force: false,
            retry_forced: false,
            resubmit_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_forced_rotation_that_never_reached_the_ca_is_retried() {
        let issued = OffsetDateTime::now_utc();
        let installed = pair(issued, &["DNS:a.example"]);
        let names = parse_names(&["DNS:a.example"]).unwrap();
        let plain = wanted(&names);
        assert_eq!(
            decide(&plain, Some(&installed), None, issued).reason,
            SubmitReason::Valid
        );
        let retry = Wanted {
            retry_forced: true,
            ..wanted(&names)
        };
        let decision = decide(&retry, Some(&installed), None, issued);
        assert_eq!(decision.reason, SubmitReason::ForcedRetry);
        assert!(decision.reason.submits());
    }

    #[test]
    fn a_pending_request_whose_reply_queue_is_gone_is_sent_again_at_once() {
        assert_eq!(
            recheck_pending(SubmitReason::RequestPending, true),
            SubmitReason::ReplyQueueMissing
        );
        assert!(SubmitReason::ReplyQueueMissing.submits());
        assert_eq!(
            recheck_pending(SubmitReason::RequestPending, false),
            SubmitReason::RequestPending
        );
        assert_eq!(
            recheck_pending(SubmitReason::Valid, true),
            SubmitReason::Valid
        );
    }

    #[test]
    fn a_reply_queue_just_created_is_not_taken_as_lost() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let submitted = now.unix_timestamp();
        assert!(
            !reply_queue_lost(submitted - 5, now, false),
            "5 s old: SQS may not show it yet"
        );
        assert!(!reply_queue_lost(
            submitted - REPLY_QUEUE_GRACE_SECONDS,
            now,
            false
        ));
        assert!(reply_queue_lost(
            submitted - REPLY_QUEUE_GRACE_SECONDS - 1,
            now,
            false
        ));
        assert!(!reply_queue_lost(submitted - 3600, now, true));
    }

    #[test]
    fn renews_inside_the_window_and_not_outside() {
        let issued = OffsetDateTime::now_utc();
        let installed = pair(issued, &["DNS:a.example"]);
        let names = parse_names(&["DNS:a.example"]).unwrap();
        let w = wanted(&names);
        let at = |days: i64| {
            decide(
                &w,
                Some(&installed),
                None,
                issued + time::Duration::days(days),
            )
            .reason
        };
        assert_eq!(at(1), SubmitReason::Valid);
        // 33 % of 30 days before notAfter is day ~20; the jitter moves it earlier by < 3 days.
        assert_eq!(at(16), SubmitReason::Valid);
        assert_eq!(at(21), SubmitReason::RenewalWindow);
        assert_eq!(at(31), SubmitReason::Expired);
    }

    #[test]
    fn names_key_and_force_trigger_a_request() {
        let issued = OffsetDateTime::now_utc();
        let installed = pair(issued, &["DNS:a.example"]);
        let other = parse_names(&["DNS:b.example"]).unwrap();
        assert_eq!(
            decide(&wanted(&other), Some(&installed), None, issued).reason,
            SubmitReason::NamesChanged
        );
        let names = parse_names(&["DNS:a.example"]).unwrap();
        let mut swapped = installed.clone();
        swapped.key_pem = KeySpec::EcP256.generate().unwrap().serialize_pem();
        assert_eq!(
            decide(&wanted(&names), Some(&swapped), None, issued).reason,
            SubmitReason::KeyMismatch
        );
        let mut forced = wanted(&names);
        forced.force = true;
        assert_eq!(
            decide(&forced, Some(&installed), None, issued).reason,
            SubmitReason::Forced
        );
        assert_eq!(
            decide(&wanted(&names), None, None, issued).reason,
            SubmitReason::NoCertificate
        );
    }

    #[test]
    fn a_pending_request_waits_then_is_resubmitted() {
        let names = parse_names(&["DNS:a.example"]).unwrap();
        let now = OffsetDateTime::now_utc();
        let pending = PendingRequest {
            request_id: "r".into(),
            instance_id: ID.into(),
            names: vec!["DNS:a.example".into()],
            profile: Profile::Mtls,
            reply_mode: ReplyMode::PerNode,
            reply_queue_url: None,
            submitted_at: now.unix_timestamp(),
        };
        assert_eq!(
            decide(&wanted(&names), None, Some(&pending), now).reason,
            SubmitReason::RequestPending
        );
        let later = now + time::Duration::hours(2);
        assert_eq!(
            decide(&wanted(&names), None, Some(&pending), later).reason,
            SubmitReason::RequestStale
        );
        let other = parse_names(&["DNS:b.example"]).unwrap();
        assert_eq!(
            decide(&wanted(&other), None, Some(&pending), now).reason,
            SubmitReason::NoCertificate
        );
    }

    #[test]
    fn jitter_is_fixed_per_host_and_spread_across_hosts() {
        assert_eq!(renewal_jitter("i-1"), renewal_jitter("i-1"));
        let values: Vec<f64> = (0..200)
            .map(|i| renewal_jitter(&format!("i-{i:017x}")))
            .collect();
        assert!(values.iter().all(|v| (0.0..0.10).contains(v)));
        let distinct: std::collections::BTreeSet<u64> =
            values.iter().map(|v| (v * 1000.0) as u64).collect();
        assert!(
            distinct.len() > 50,
            "jitter should spread hosts: {}",
            distinct.len()
        );
    }
}
