//! Creating the CA hierarchy: a root (kept offline) and the online intermediate (pathlen 0).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SigningKey,
};
use time::{Duration, OffsetDateTime};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::request::CertReq;

use crate::csr::CsrError;
use crate::{random_bytes, PkiError};

/// Subject and lifetime of a CA certificate to create.
#[derive(Debug, Clone)]
pub struct CaSubject {
    pub common_name: String,
    pub organization: Option<String>,
    pub lifetime_days: u32,
}

fn ca_params(
    subject: &CaSubject,
    path_len: Option<u8>,
    now: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
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
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(subject.lifetime_days));
    let mut serial = random_bytes::<16>()?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

/// A self-signed root CA certificate for `key`.
pub fn create_root(
    key: &KeyPair,
    subject: &CaSubject,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let params = ca_params(subject, None, now)?;
    let cert = params
        .self_signed(key)
        .map_err(|e| PkiError::Build(e.to_string()))?;
    Ok(cert.pem())
}

/// An intermediate CA certificate (pathlen 0: it signs leaves only) for `key`, signed by the root.
/// `key` may be a remote key's public half (AWS KMS): only its public key is used.
pub fn create_intermediate(
    key: &impl PublicKeyData,
    subject: &CaSubject,
    root_cert_pem: &str,
    root_key: KeyPair,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let issuer = Issuer::from_ca_cert_pem(root_cert_pem, root_key).map_err(|e| {
        PkiError::CertificateParse {
            what: "root certificate".into(),
            detail: e.to_string(),
        }
    })?;
    let mut params = ca_params(subject, Some(0), now)?;
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(key, &issuer)
        .map_err(|e| PkiError::Build(e.to_string()))?;
    Ok(cert.pem())
}

/// The intermediate's CSR, signed by its own (possibly remote) key: proof that the key signs,
/// and what an offline root would be handed.
pub fn intermediate_csr(key: &impl SigningKey, subject: &CaSubject) -> Result<String, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(org) = &subject.organization {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    dn.push(DnType::CommonName, subject.common_name.as_str());
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(key)
        .map_err(crate::remote::remote_or_build)?;
    csr.pem().map_err(|e| PkiError::Build(e.to_string()))
}

/// Has the root certify an intermediate from its CSR (a KMS-held key's, or an AWS Private CA's
/// waiting for its certificate). The CSR's self-signature is verified first. Its subject is
/// copied attribute by attribute with the same string types, because path building compares
/// names byte for byte; the subject key identifier is RFC 5280's method 1 (SHA-1 of the key),
/// the one AWS Private CA puts in the authority key identifier of what it issues.
pub fn certify_intermediate_csr(
    csr_pem: &str,
    lifetime_days: u32,
    root_cert_pem: &str,
    root_key: KeyPair,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let bad = |detail: String| PkiError::CertificateParse {
        what: "intermediate CSR".into(),
        detail,
    };
    let csr =
        crate::csr::parse_and_verify_csr(csr_pem).map_err(|e: CsrError| bad(e.to_string()))?;
    let der = pem::parse(csr_pem.trim()).map_err(|e| bad(e.to_string()))?;
    let request = CertReq::from_der(der.contents()).map_err(|e| bad(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(root_cert_pem, root_key).map_err(|e| {
        PkiError::CertificateParse {
            what: "root certificate".into(),
            detail: e.to_string(),
        }
    })?;
    let subject = CaSubject {
        common_name: String::new(),
        organization: None,
        lifetime_days,
    };
    let mut params = ca_params(&subject, Some(0), now)?;
    params.distinguished_name = distinguished_name(&request.info.subject).map_err(bad)?;
    params.use_authority_key_identifier_extension = true;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)
        .map_err(|e| PkiError::Build(e.to_string()))?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(sha1(public_key.der_bytes()));
    let cert = params
        .signed_by(&public_key, &issuer)
        .map_err(|e| PkiError::Build(e.to_string()))?;
    Ok(cert.pem())
}

fn sha1(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

/// An x509-cert name as rcgen's, keeping each value's string type.
fn distinguished_name(name: &x509_cert::name::Name) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for attribute in name.iter() {
        let value = &attribute.value;
        let text = std::str::from_utf8(value.value())
            .map_err(|_| format!("attribute {} is not text", attribute.oid))?;
        let value = match value.tag() {
            Tag::PrintableString => DnValue::PrintableString(
                text.try_into()
                    .map_err(|_| format!("bad PrintableString {text:?}"))?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            Tag::Ia5String => DnValue::Ia5String(
                text.try_into()
                    .map_err(|_| format!("bad IA5String {text:?}"))?,
            ),
            other => {
                return Err(format!(
                    "attribute {} has string type {other:?}, which is not supported",
                    attribute.oid
                ))
            }
        };
        dn.push(dn_type(attribute.oid), value);
    }
    Ok(dn)
}

fn dn_type(oid: ObjectIdentifier) -> DnType {
    match oid.to_string().as_str() {
        "2.5.4.3" => DnType::CommonName,
        "2.5.4.6" => DnType::CountryName,
        "2.5.4.7" => DnType::LocalityName,
        "2.5.4.8" => DnType::StateOrProvinceName,
        "2.5.4.10" => DnType::OrganizationName,
        "2.5.4.11" => DnType::OrganizationalUnitName,
        _ => DnType::CustomDnType(oid.arcs().map(u64::from).collect()),
    }
}

/// Whether `cert_pem` is signed by the key of `issuer_pem` (and names it as its issuer): the
/// check that an adopted intermediate (an AWS Private CA's) really hangs under our root.
pub fn is_signed_by(cert_pem: &str, issuer_pem: &str) -> Result<bool, PkiError> {
    use x509_cert::der::Encode;
    let parse = |text: &str, what: &str| -> Result<x509_cert::Certificate, PkiError> {
        let bad = |detail: String| PkiError::CertificateParse {
            what: what.into(),
            detail,
        };
        let der = pem::parse(text.trim()).map_err(|e| bad(e.to_string()))?;
        x509_cert::Certificate::from_der(der.contents()).map_err(|e| bad(e.to_string()))
    };
    let cert = parse(cert_pem, "certificate")?;
    let issuer = parse(issuer_pem, "issuer certificate")?;
    if cert.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
        return Ok(false);
    }
    let spki = issuer.tbs_certificate().subject_public_key_info();
    let Ok(kind) = crate::csr::key_kind(spki) else {
        return Ok(false);
    };
    let Ok(algorithm) = crate::csr::verification_algorithm(kind, cert.signature_algorithm().oid)
    else {
        return Ok(false);
    };
    let tbs = cert
        .tbs_certificate()
        .to_der()
        .map_err(|e| PkiError::Build(e.to_string()))?;
    let Some(signature) = cert.signature().as_bytes() else {
        return Ok(false);
    };
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        algorithm,
        spki.subject_public_key.raw_bytes(),
    );
    Ok(key.verify(&tbs, signature).is_ok())
}
