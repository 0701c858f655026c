//! Reading certificates, and the node's acceptance check of a certificate it received.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName as SanExtension};
use x509_cert::Certificate;

use crate::csr::{general_name, oid};
use crate::names::SubjectAltName;
use crate::wire::Profile;
use crate::{hex, sha256_hex, PkiError};

/// What we read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub der: Vec<u8>,
    pub common_name: Option<String>,
    /// How many attributes the subject holds.
    pub subject_attributes: usize,
    pub names: Vec<SubjectAltName>,
    pub spki_der: Vec<u8>,
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    pub server_auth: bool,
    pub client_auth: bool,
    pub subject_key_id: Option<Vec<u8>>,
    pub sha256: String,
}

impl CertificateInfo {
    pub fn pem(&self) -> String {
        to_pem(&self.der)
    }

    /// What `--diff` shows of a certificate: the fields a person compares before and after, as
    /// community.crypto's x509_certificate shows them (not the PEM).
    pub fn diff_fields(&self) -> serde_json::Value {
        let fingerprint = sha256_hex(&self.spki_der)
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        serde_json::json!({
            "serial_number": self.serial_hex,
            "subject_alt_name": self.names.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "not_after": crate::rfc3339(self.not_after),
            "public_key_fingerprint_sha256": fingerprint,
        })
    }
}

pub fn to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// Every certificate of a PEM bundle, in order.
pub fn load_certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// Parses the first certificate of a PEM text.
pub fn parse_certificate(pem: &str, what: &str) -> Result<CertificateInfo, PkiError> {
    let der =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::CertificateParse {
            what: what.to_string(),
            detail: format!("no PEM certificate ({e:?})"),
        })?;
    parse_certificate_der(&der, what)
}

pub fn parse_certificate_der(der: &[u8], what: &str) -> Result<CertificateInfo, PkiError> {
    let bad = |detail: String| PkiError::CertificateParse {
        what: what.to_string(),
        detail,
    };
    let cert = Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    let tbs = cert.tbs_certificate();
    let mut names = Vec::new();
    let mut is_ca = false;
    let (mut server_auth, mut client_auth) = (false, false);
    let mut subject_key_id = None;
    if let Some(extensions) = tbs.extensions() {
        for ext in extensions.iter() {
            let bytes = ext.extn_value.as_bytes();
            match ext.extn_id {
                oid::SUBJECT_ALT_NAME => {
                    let san = SanExtension::from_der(bytes).map_err(|e| bad(e.to_string()))?;
                    names.extend(san.0.iter().filter_map(general_name));
                }
                oid::SUBJECT_KEY_ID => {
                    let ski = x509_cert::ext::pkix::SubjectKeyIdentifier::from_der(bytes)
                        .map_err(|e| bad(e.to_string()))?;
                    subject_key_id = Some(ski.0.as_bytes().to_vec());
                }
                oid::BASIC_CONSTRAINTS => {
                    is_ca = BasicConstraints::from_der(bytes)
                        .map_err(|e| bad(e.to_string()))?
                        .ca
                }
                oid::EXT_KEY_USAGE => {
                    let eku = ExtendedKeyUsage::from_der(bytes).map_err(|e| bad(e.to_string()))?;
                    server_auth = eku.0.contains(&oid::SERVER_AUTH);
                    client_auth = eku.0.contains(&oid::CLIENT_AUTH);
                }
                _ => {}
            }
        }
    }
    names.sort();
    names.dedup();
    let time = |t: &x509_cert::time::Time| {
        let secs = t.to_unix_duration().as_secs();
        OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|e| bad(e.to_string()))
    };
    Ok(CertificateInfo {
        der: der.to_vec(),
        common_name: tbs
            .subject()
            .common_name()
            .ok()
            .flatten()
            .map(|cn| cn.value().into_owned()),
        subject_attributes: tbs.subject().iter().count(),
        names,
        spki_der: tbs
            .subject_public_key_info()
            .to_der()
            .map_err(|e| bad(e.to_string()))?,
        serial_hex: hex(tbs.serial_number().as_bytes()),
        not_before: time(&tbs.validity().not_before)?,
        not_after: time(&tbs.validity().not_after)?,
        is_ca,
        server_auth,
        client_auth,
        subject_key_id,
        sha256: sha256_hex(der),
    })
}

/// What the node asked for: the certificate must be for exactly this.
#[derive(Debug, Clone)]
pub struct Expectation<'a> {
    pub instance_id: &'a str,
    pub spki_der: &'a [u8],
    pub names: &'a [SubjectAltName],
    pub profile: Profile,
}

/// Why a node refuses a certificate. Each has a reason code for warnings and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRejection {
    #[error("the certificate is not a readable PEM certificate: {0}")]
    Malformed(String),
    #[error("the certificate is for another key than this node's pending key")]
    KeyMismatch,
    #[error("the certificate does not validate against the pinned CA: {0}")]
    Untrusted(String),
    #[error("the certificate names {found} differ from the requested {expected}")]
    NamesMismatch { expected: String, found: String },
    #[error(
        "the certificate's subject CN {} is not this node's instance id {expected}",
        .found.as_deref().unwrap_or("(none)")
    )]
    SubjectMismatch {
        expected: String,
        found: Option<String>,
    },
    #[error(
        "the certificate lacks the extended key usages of profile {0} (serverAuth/clientAuth)"
    )]
    MissingUsage(&'static str),
    #[error("the certificate is a CA certificate; a node only installs leaves")]
    IsCa,
    #[error("the certificate expired at {not_after}")]
    Expired { not_after: String },
    #[error("the certificate is valid only from {not_before}, {ahead_seconds} s after this node's clock: is the node's clock behind?")]
    NotYetValid {
        not_before: String,
        ahead_seconds: u64,
    },
}

impl CertRejection {
    /// Every code [`CertRejection::reason_code`] returns, for docs and tests.
    pub const REASON_CODES: [&'static str; 9] = [
        "certificate_malformed",
        "certificate_key_mismatch",
        "certificate_untrusted",
        "certificate_names_mismatch",
        "certificate_subject_mismatch",
        "certificate_usage_missing",
        "certificate_is_ca",
        "certificate_expired",
        "certificate_not_yet_valid",
    ];

    pub fn reason_code(&self) -> &'static str {
        match self {
            CertRejection::Malformed(_) => "certificate_malformed",
            CertRejection::KeyMismatch => "certificate_key_mismatch",
            CertRejection::Untrusted(_) => "certificate_untrusted",
            CertRejection::NamesMismatch { .. } => "certificate_names_mismatch",
            CertRejection::SubjectMismatch { .. } => "certificate_subject_mismatch",
            CertRejection::MissingUsage(_) => "certificate_usage_missing",
            CertRejection::IsCa => "certificate_is_ca",
            CertRejection::Expired { .. } => "certificate_expired",
            CertRejection::NotYetValid { .. } => "certificate_not_yet_valid",
        }
    }
}

/// webpki's reason for refusing the path, in words (its own Display is its Debug output).
fn path_refusal(error: webpki::Error, profile: Profile) -> CertRejection {
    use webpki::Error as E;
    let at = |t: UnixTime| {
        time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64)
            .map(crate::rfc3339)
            .unwrap_or_else(|_| format!("{} s after 1970", t.as_secs()))
    };
    let untrusted = |why: &str| CertRejection::Untrusted(why.to_string());
    match error {
        E::CertExpired { not_after, .. } => CertRejection::Expired {
            not_after: at(not_after),
        },
        E::CertNotValidYet { time, not_before } => CertRejection::NotYetValid {
            not_before: at(not_before),
            ahead_seconds: not_before.as_secs().saturating_sub(time.as_secs()),
        },
        E::RequiredEkuNotFoundContext(_) => CertRejection::MissingUsage(profile.as_str()),
        E::UnknownIssuer => {
            untrusted("it is not issued by the pinned CA, through the chain it came with")
        }
        E::InvalidSignatureForPublicKey => untrusted("a signature in its chain does not verify"),
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            untrusted("its chain uses a signature algorithm this node does not accept")
        }
        E::CaUsedAsEndEntity => untrusted("a CA certificate is used as the end entity"),
        E::EndEntityUsedAsCa => untrusted("a leaf certificate is used as a CA in its chain"),
        E::PathLenConstraintViolated => untrusted("its chain breaks a CA's path length limit"),
        E::NameConstraintViolation => untrusted("its names break a CA's name constraints"),
        E::CertRevoked => untrusted("a certificate in its chain is revoked"),
        E::CertDistrusted => untrusted("a certificate in its chain is distrusted"),
        E::UnsupportedCriticalExtension => {
            untrusted("it has a critical extension this node does not know")
        }
        E::MaximumPathDepthExceeded
        | E::MaximumPathBuildCallsExceeded
        | E::MaximumSignatureChecksExceeded
        | E::MaximumNameConstraintComparisonsExceeded => {
            untrusted("its chain is too long or complex to validate")
        }
        _ => untrusted("its chain is malformed or uses a feature this node does not accept"),
    }
}

pub fn join_names(names: &[SubjectAltName]) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The node's acceptance check: the leaf is for our key, names and profile, and validates (a
/// real path validation: signatures, validity, CA constraints, pathlen, EKU) against the pinned
/// anchors alone. The chain from the message only supplies intermediates, never anchors.
pub fn check_issued_certificate(
    certificate_pem: &str,
    chain_pem: &str,
    pinned_anchors: &[CertificateDer<'_>],
    expect: &Expectation<'_>,
    now: SystemTime,
) -> Result<CertificateInfo, CertRejection> {
    let info = parse_certificate(certificate_pem, "received certificate")
        .map_err(|e| CertRejection::Malformed(e.to_string()))?;
    if info.spki_der != expect.spki_der {
        return Err(CertRejection::KeyMismatch);
    }
    if info.is_ca {
        return Err(CertRejection::IsCa);
    }
    let anchors = pinned_anchors
        .iter()
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .collect::<Vec<_>>();
    if anchors.is_empty() {
        return Err(CertRejection::Untrusted(
            "the pinned CA file holds no usable certificate".into(),
        ));
    }
    let intermediates = load_certificates(chain_pem);
    let leaf_der = CertificateDer::from(info.der.clone());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| CertRejection::Malformed(format!("{e:?}")))?;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let time = UnixTime::since_unix_epoch(since_epoch);
    let algorithms = webpki::ALL_VERIFICATION_ALGS;
    let mut usages = Vec::new();
    if expect.profile.server_auth() {
        usages.push(webpki::KeyUsage::server_auth());
    }
    if expect.profile.client_auth() {
        usages.push(webpki::KeyUsage::client_auth());
    }
    for usage in usages {
        leaf.verify_for_usage(
            algorithms,
            &anchors,
            &intermediates,
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| path_refusal(e, expect.profile))?;
    }
    // webpki accepts a leaf without an EKU extension; we require the profile's usages.
    if (expect.profile.server_auth() && !info.server_auth)
        || (expect.profile.client_auth() && !info.client_auth)
    {
        return Err(CertRejection::MissingUsage(expect.profile.as_str()));
    }
    if info.names != expect.names {
        return Err(CertRejection::NamesMismatch {
            expected: join_names(expect.names),
            found: join_names(&info.names),
        });
    }
    if info.common_name.as_deref() != Some(expect.instance_id) {
        return Err(CertRejection::SubjectMismatch {
            expected: expect.instance_id.to_string(),
            found: info.common_name,
        });
    }
    Ok(info)
}

#[cfg(test)]
mod reason_code_tests {
    use super::CertRejection;

    #[test]
    fn reason_codes_lists_every_variant_once() {
        let each = [
            CertRejection::Malformed(String::new()),
            CertRejection::KeyMismatch,
            CertRejection::Untrusted(String::new()),
            CertRejection::NamesMismatch {
                expected: String::new(),
                found: String::new(),
            },
            CertRejection::SubjectMismatch {
                expected: String::new(),
                found: None,
            },
            CertRejection::MissingUsage("mtls"),
            CertRejection::IsCa,
            CertRejection::Expired {
                not_after: String::new(),
            },
            CertRejection::NotYetValid {
                not_before: String::new(),
                ahead_seconds: 0,
            },
        ];
        let codes: Vec<&str> = each.iter().map(CertRejection::reason_code).collect();
        assert_eq!(codes, CertRejection::REASON_CODES);
    }
}
