//! Creating the CA hierarchy: a root (kept offline) and the online intermediate (pathlen 0).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::{random_bytes, PkiError};

/// Subject and lifetime of a CA certificate to create.
#[derive(Debug, Clone)]
pub struct CaSubject {
    pub common_name: String,
    pub organization: Option<String>,
    pub lifetime_days: u32,
}

fn ca_params(subject: &CaSubject, path_len: Option<u8>, now: OffsetDateTime) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(org) = &subject.organization {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    dn.push(DnType::CommonName, subject.common_name.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(subject.lifetime_days));
    let mut serial = random_bytes::<16>()?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

/// A self-signed root CA certificate for `key`.
pub fn create_root(key: &KeyPair, subject: &CaSubject, now: OffsetDateTime) -> Result<String, PkiError> {
    let params = ca_params(subject, None, now)?;
    let cert = params.self_signed(key).map_err(|e| PkiError::Build(e.to_string()))?;
    Ok(cert.pem())
}

/// An intermediate CA certificate (pathlen 0: it signs leaves only) for `key`, signed by the root.
pub fn create_intermediate(
    key: &KeyPair,
    subject: &CaSubject,
    root_cert_pem: &str,
    root_key: KeyPair,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let issuer = Issuer::from_ca_cert_pem(root_cert_pem, root_key)
        .map_err(|e| PkiError::CertificateParse { what: "root certificate".into(), detail: e.to_string() })?;
    let mut params = ca_params(subject, Some(0), now)?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(key, &issuer).map_err(|e| PkiError::Build(e.to_string()))?;
    Ok(cert.pem())
}
