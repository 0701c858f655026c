//! Revocation: the list of revoked serials and the CRL the intermediate signs from it.

use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_cert::crl::CertificateList;
use x509_cert::der::DecodePem;

use crate::certs::CertificateInfo;
use crate::PkiError;

/// RFC 5280 reason codes we offer (snake_case in options and state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

impl Reason {
    fn rcgen(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }
}

/// One revoked certificate, as kept in the revocation state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Lower-case hex, as in issuance records and module results.
    pub serial: String,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub reason: Reason,
    /// Unix seconds.
    pub revoked_at: i64,
}

fn serial_bytes(hex: &str) -> Result<Vec<u8>, PkiError> {
    let bad = || PkiError::Build(format!("serial {hex:?} is not hexadecimal"));
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// The canonical hex of a serial: its unsigned value in the fewest octets (at least one), so
/// `80ab`, `00:80:AB` (how `openssl x509 -text` prints it) and `0x80AB` are one serial.
fn canonical(bytes: &[u8]) -> String {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    crate::hex(&bytes[first..])
}

/// Normalises a serial given by a user (`0A:1B`, `0x0a1b`, upper case, leading zeros).
pub fn normalize_serial(text: &str) -> Result<String, PkiError> {
    let hex: String = text
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    let bytes = serial_bytes(&hex).map_err(|_| PkiError::InvalidSerial(text.to_string()))?;
    Ok(canonical(&bytes))
}

pub(crate) fn sign(
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
    info: &CertificateInfo,
    revoked: &[Revocation],
    number: u64,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<String, PkiError> {
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let revoked_certs = revoked
        .iter()
        .map(|r| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_bytes(&r.serial)?),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at)
                    .map_err(|e| PkiError::Build(e.to_string()))?,
                reason_code: Some(r.reason.rcgen()),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    let params = CertificateRevocationListParams {
        this_update: now - crate::CLOCK_SKEW_ALLOWANCE,
        next_update: now + lifetime,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        // The AKI must be the issuer's own SKI, or `openssl verify -crl_check` finds no CRL for
        // an openssl-made intermediate (whose SKI is a SHA-1, not rcgen's default SHA-256).
        key_identifier_method: match &info.subject_key_id {
            Some(ski) => KeyIdMethod::PreSpecified(ski.clone()),
            None => KeyIdMethod::Sha256,
        },
    };
    let crl = params
        .signed_by(issuer)
        .map_err(crate::remote::remote_or_build)?;
    crl.pem().map_err(|e| PkiError::Build(e.to_string()))
}

/// What we read back from a CRL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    pub next_update: Option<OffsetDateTime>,
    pub serials: Vec<String>,
}

/// What `--diff` shows of a CRL: its number and the serials it revokes (sorted).
pub fn crl_diff_fields(crl_number: u64, serials: &[String]) -> serde_json::Value {
    let mut serials = serials.to_vec();
    serials.sort();
    serde_json::json!({ "crl_number": crl_number, "revoked_serials": serials })
}

/// Parses a PEM CRL; serials come back in canonical form (see `normalize_serial`).
pub fn parse_crl(pem: &str) -> Result<CrlInfo, PkiError> {
    let bad = |e: x509_cert::der::Error| PkiError::CertificateParse {
        what: "CRL".into(),
        detail: e.to_string(),
    };
    let list: CertificateList = CertificateList::from_pem(pem.trim().as_bytes()).map_err(bad)?;
    let tbs = list.tbs_cert_list;
    let next_update = tbs
        .next_update
        .map(|t| OffsetDateTime::from_unix_timestamp(t.to_unix_duration().as_secs() as i64))
        .transpose()
        .map_err(|e| PkiError::Build(e.to_string()))?;
    let mut serials: Vec<String> = tbs
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .map(|r| canonical(r.serial_number.as_bytes()))
        .collect();
    serials.sort();
    Ok(CrlInfo {
        next_update,
        serials,
    })
}

/// The CRL file nodes and TLS servers read: the intermediate's CRL, then the root's. nginx
/// (`ssl_crl`), HAProxy (`crl-file`) and `openssl verify -crl_check_all` want a CRL for every CA
/// of the chain and refuse every client without one.
pub fn bundle(intermediate_crl_pem: &str, root_crl_pem: &str) -> String {
    format!(
        "{}\n{}\n",
        intermediate_crl_pem.trim_end(),
        root_crl_pem.trim_end()
    )
}

/// A CRL file split into its first CRL (the intermediate's, in a bundle) and the PEM of the
/// CRLs after it (normalised, so two spellings of one file compare equal); `None` when the file
/// holds no PEM block.
pub fn split_bundle(text: &str) -> Result<Option<(String, String)>, PkiError> {
    let blocks = pem::parse_many(text.as_bytes()).map_err(|e| PkiError::CertificateParse {
        what: "CRL file".into(),
        detail: e.to_string(),
    })?;
    let mut blocks = blocks.into_iter();
    let Some(first) = blocks.next() else {
        return Ok(None);
    };
    let rest: String = blocks.map(|b| pem::encode(&b)).collect();
    Ok(Some((pem::encode(&first), rest)))
}

/// The root CRL as a bundle holds it (normalised like [`split_bundle`]'s rest).
pub fn normalise_pem(text: &str) -> Result<String, PkiError> {
    let blocks = pem::parse_many(text.as_bytes()).map_err(|e| PkiError::CertificateParse {
        what: "CRL file".into(),
        detail: e.to_string(),
    })?;
    Ok(blocks.iter().map(pem::encode).collect())
}

/// Why a CRL must be issued now, if it must: it is missing, its list differs from `listed`
/// (sorted hex serials), or its nextUpdate is less than `renew_before` away. Run on a schedule
/// shorter than `renew_before`, this keeps nextUpdate ahead of the clock at all times.
pub fn reissue_reason(
    current: Option<&CrlInfo>,
    listed: &[String],
    now: OffsetDateTime,
    renew_before: Duration,
) -> Option<&'static str> {
    match current {
        None => Some("no CRL yet"),
        Some(crl) if crl.serials != listed => Some("the revocation list changed"),
        Some(crl) => match crl.next_update {
            Some(next) if next - now > renew_before => None,
            _ => Some("the CRL's nextUpdate is near"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_is_reissued_when_missing_changed_or_due() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let day = Duration::from_secs(86_400);
        let crl = CrlInfo {
            next_update: Some(now + 7 * day),
            serials: vec!["0a".into()],
        };
        let listed = vec!["0a".to_string()];
        assert_eq!(
            reissue_reason(None, &listed, now, 2 * day),
            Some("no CRL yet")
        );
        assert_eq!(reissue_reason(Some(&crl), &listed, now, 2 * day), None);
        assert_eq!(
            reissue_reason(Some(&crl), &["0a".into(), "0b".into()], now, 2 * day),
            Some("the revocation list changed")
        );
        // Five days on, nextUpdate is two days away: due, and still ahead of the clock.
        let later = now + 5 * day;
        assert_eq!(
            reissue_reason(Some(&crl), &listed, later, 2 * day),
            Some("the CRL's nextUpdate is near")
        );
        assert!(crl.next_update.unwrap() > later);
        assert_eq!(
            reissue_reason(Some(&crl), &listed, later - Duration::from_secs(1), 2 * day),
            None
        );
    }

    #[test]
    fn serials_normalise() {
        assert_eq!(normalize_serial("0A:1B").unwrap(), "0a1b");
        assert_eq!(normalize_serial("0xabc").unwrap(), "0abc");
        assert_eq!(normalize_serial("00:80:AB").unwrap(), "80ab");
        assert_eq!(normalize_serial("0x80AB").unwrap(), "80ab");
        assert_eq!(normalize_serial("0001").unwrap(), "01");
        assert_eq!(normalize_serial("00").unwrap(), "00");
        let err = normalize_serial("0xyz").unwrap_err().to_string();
        assert!(err.contains("0xyz") && err.contains("serials"), "{err}");
    }
}
