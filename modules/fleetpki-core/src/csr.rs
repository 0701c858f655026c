//! Certificate signing requests: built on the node, parsed and verified on the CA.
//!
//! Parsing uses x509-cert and verification aws-lc-rs directly rather than rcgen's CSR parser,
//! which refuses harmless extensions (a subject key identifier from openssl) and copies
//! requested CA flags into its parameters. Here a CSR is only read: what gets signed is built
//! afresh by the signer from what the policy allows.

use std::net::IpAddr;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::{DirectoryString, GeneralName};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, SubjectAltName as SanExtension};
use x509_cert::request::{CertReq, ExtensionReq};

use crate::names::SubjectAltName;
use crate::reason::ReasonCode;
use crate::{sha256_hex, PkiError};

pub(crate) mod oid {
    use super::ObjectIdentifier;
    pub const EXTENSION_REQUEST: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");
    pub const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
    pub const SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
    pub const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
    pub const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
    pub const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
    pub const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
    pub const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
    pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    pub const RSA_ENCRYPTION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    pub const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
    pub const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    pub const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    pub const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
    pub const RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
    pub const RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
    pub const RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
    pub const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
}

/// The key type found in a CSR or certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    EcP384,
    Ed25519,
    Rsa { bits: usize },
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::EcP256 => f.write_str("ECDSA secp256r1"),
            KeyKind::EcP384 => f.write_str("ECDSA secp384r1"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// Why a CSR could not be read at all. Each has a reason code for the audit log and the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is not PEM or not DER inside: {0}")]
    Malformed(String),
    #[error("the CSR's key type is not supported: {0}")]
    UnsupportedKey(String),
    #[error("the CSR's signature algorithm {0} is not supported (use ECDSA with SHA-256/384 or RSA PKCS#1 v1.5 with SHA-256/384/512)")]
    UnsupportedSignature(String),
    #[error("the CSR's self-signature does not verify: it was altered or not signed by the key it carries")]
    BadSignature,
    #[error("the CSR's RSA key has {0} bits; at least 2048 are required")]
    KeyTooSmall(usize),
}

impl CsrError {
    /// The refusal's reason code: decided here, where the error is made, never from its text.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            CsrError::Malformed(_) => ReasonCode::CsrMalformed,
            CsrError::UnsupportedKey(_) => ReasonCode::KeyTypeNotAllowed,
            CsrError::UnsupportedSignature(_) => ReasonCode::CsrSignatureAlgorithm,
            CsrError::BadSignature => ReasonCode::CsrSignatureInvalid,
            CsrError::KeyTooSmall(_) => ReasonCode::KeyTooSmall,
        }
    }
}

/// What a verified CSR asks for. Nothing here is signed as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCsr {
    /// Every CN of the subject, in order (our nodes send exactly one: the instance id).
    pub common_names: Vec<String>,
    /// How many attributes the subject holds (1 for our nodes' `CN=<instance id>`).
    pub subject_attributes: usize,
    /// DNS and IP names, sorted and de-duplicated.
    pub names: Vec<SubjectAltName>,
    /// SAN entries of other kinds (email, URI, ...), which we never sign.
    pub unsupported_names: Vec<String>,
    pub spki_der: Vec<u8>,
    pub key: KeyKind,
    pub requests_ca: bool,
    pub requests_cert_sign: bool,
    /// OIDs of critical extensions we do not understand.
    pub unknown_critical: Vec<String>,
    /// SHA-256 of the CSR's DER, for the audit log.
    pub sha256: String,
}

/// Builds the node's CSR: CN = instance id, the given DNS/IP names as SANs.
pub fn build_csr(
    key: &KeyPair,
    instance_id: &str,
    names: &[SubjectAltName],
) -> Result<String, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, instance_id);
    params.distinguished_name = dn;
    params.subject_alt_names = names.iter().map(to_rcgen_san).collect::<Result<_, _>>()?;
    let csr = params
        .serialize_request(key)
        .map_err(|e| PkiError::Build(e.to_string()))?;
    csr.pem().map_err(|e| PkiError::Build(e.to_string()))
}

pub(crate) fn to_rcgen_san(name: &SubjectAltName) -> Result<SanType, PkiError> {
    Ok(match name {
        SubjectAltName::Dns(dns) => SanType::DnsName(
            dns.as_str()
                .try_into()
                .map_err(|e: rcgen::Error| PkiError::Build(e.to_string()))?,
        ),
        SubjectAltName::Ip(ip) => SanType::IpAddress(*ip),
    })
}

/// Parses a PEM CSR and verifies its self-signature (proof that the requester holds the key).
pub fn parse_and_verify_csr(pem: &str) -> Result<ParsedCsr, CsrError> {
    let block = ::pem::parse(pem.trim()).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::Malformed(format!(
            "a PEM '{}' block is not a CERTIFICATE REQUEST",
            block.tag()
        )));
    }
    let der = block.contents();
    let req = CertReq::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    // The der crate tolerates some non-canonical lengths; only canonical DER is accepted, so the
    // bytes whose signature is verified below are exactly the bytes received.
    if req
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?
        != der
    {
        return Err(CsrError::Malformed("not canonical DER".into()));
    }
    let spki_der = req
        .info
        .public_key
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let key = key_kind(&req.info.public_key)?;
    if let KeyKind::Rsa { bits } = key {
        // Below 2048 bits the signature cannot even be checked (and is never acceptable).
        if bits < 2048 {
            return Err(CsrError::KeyTooSmall(bits));
        }
    }

    // The der crate accepts DER only, so re-encoding the request info gives the signed bytes.
    let tbs = req
        .info
        .to_der()
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let algorithm = verification_algorithm(key, req.algorithm.oid)?;
    let key_bits = req.info.public_key.subject_public_key.raw_bytes();
    // `raw_bytes` ignores the BIT STRING's unused-bits count: insist on a whole-octet signature.
    let signature = req.signature.as_bytes().ok_or_else(|| {
        CsrError::Malformed("the signature is not a whole number of octets".into())
    })?;
    UnparsedPublicKey::new(algorithm, key_bits)
        .verify(&tbs, signature)
        .map_err(|_| CsrError::BadSignature)?;

    let common_names = req
        .info
        .subject
        .iter()
        .filter(|attribute| attribute.oid == oid::COMMON_NAME)
        .map(|attribute| {
            DirectoryString::try_from(&attribute.value)
                .map(|cn| cn.value().into_owned())
                .map_err(|e| CsrError::Malformed(format!("a CN of the subject: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut parsed = ParsedCsr {
        common_names,
        subject_attributes: req.info.subject.iter().count(),
        names: Vec::new(),
        unsupported_names: Vec::new(),
        spki_der,
        key,
        requests_ca: false,
        requests_cert_sign: false,
        unknown_critical: Vec::new(),
        sha256: sha256_hex(der),
    };
    for attribute in req
        .info
        .attributes
        .iter()
        .filter(|a| a.oid == oid::EXTENSION_REQUEST)
    {
        for value in attribute.values.iter() {
            let extensions: ExtensionReq = value
                .decode_as()
                .map_err(|e: x509_cert::der::Error| CsrError::Malformed(e.to_string()))?;
            for ext in extensions.0 {
                let bytes = ext.extn_value.as_bytes();
                let malformed = |e: x509_cert::der::Error| {
                    CsrError::Malformed(format!("extension {}: {e}", ext.extn_id))
                };
                match ext.extn_id {
                    oid::SUBJECT_ALT_NAME => {
                        let san = SanExtension::from_der(bytes).map_err(malformed)?;
                        for name in san.0 {
                            match general_name(&name) {
                                Some(n) => parsed.names.push(n),
                                None => parsed.unsupported_names.push(format!("{name:?}")),
                            }
                        }
                    }
                    oid::BASIC_CONSTRAINTS => {
                        parsed.requests_ca |=
                            BasicConstraints::from_der(bytes).map_err(malformed)?.ca;
                    }
                    oid::KEY_USAGE => {
                        let usage = KeyUsage::from_der(bytes).map_err(malformed)?;
                        parsed.requests_cert_sign |= usage.key_cert_sign() || usage.crl_sign();
                    }
                    // Harmless when not critical (EKU, SKI, ...): ignored, never copied.
                    oid::EXT_KEY_USAGE => {}
                    other if ext.critical => parsed.unknown_critical.push(other.to_string()),
                    _ => {}
                }
            }
        }
    }
    parsed.names.sort();
    parsed.names.dedup();
    Ok(parsed)
}

/// SHA-256 of a PEM CSR's DER (as `openssl req -outform DER | sha256sum` gives), for the audit
/// log; of the text itself when it holds no PEM block, so garbage is fingerprinted too.
pub fn csr_der_sha256(pem_text: &str) -> String {
    match ::pem::parse(pem_text.trim()) {
        Ok(block) => sha256_hex(block.contents()),
        Err(_) => sha256_hex(pem_text.as_bytes()),
    }
}

pub(crate) fn general_name(name: &GeneralName) -> Option<SubjectAltName> {
    match name {
        GeneralName::DnsName(dns) => Some(SubjectAltName::Dns(dns.as_str().to_ascii_lowercase())),
        GeneralName::IpAddress(octets) => {
            let bytes = octets.as_bytes();
            match bytes.len() {
                4 => Some(SubjectAltName::Ip(IpAddr::from(
                    <[u8; 4]>::try_from(bytes).ok()?,
                ))),
                16 => Some(SubjectAltName::Ip(IpAddr::from(
                    <[u8; 16]>::try_from(bytes).ok()?,
                ))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The key type of a DER SubjectPublicKeyInfo, in words (`ECDSA secp256r1`, `RSA-2048`).
pub fn public_key_type(spki_der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki_der).ok()?;
    key_kind(&spki).ok().map(|kind| kind.to_string())
}

/// The key type of a SubjectPublicKeyInfo.
pub(crate) fn key_kind(
    spki: &x509_cert::spki::SubjectPublicKeyInfoOwned,
) -> Result<KeyKind, CsrError> {
    match spki.algorithm.oid {
        oid::EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
            match curve {
                oid::P256 => Ok(KeyKind::EcP256),
                oid::P384 => Ok(KeyKind::EcP384),
                other => Err(CsrError::UnsupportedKey(format!("EC curve {other}"))),
            }
        }
        oid::RSA_ENCRYPTION => {
            // Read the modulus ourselves: aws-lc refuses keys under 2048 bits while parsing,
            // and a small key must be reported as too small, not as unreadable.
            use x509_cert::der::asn1::UintRef;
            // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
            let fields = Vec::<UintRef<'_>>::from_der(spki.subject_public_key.raw_bytes())
                .map_err(|e| CsrError::Malformed(format!("RSA public key: {e}")))?;
            if fields.len() != 2 {
                return Err(CsrError::Malformed(
                    "RSA public key is not (modulus, exponent)".into(),
                ));
            }
            let modulus = fields[0].as_bytes();
            let bits = match modulus.first() {
                Some(first) => modulus.len() * 8 - first.leading_zeros() as usize,
                None => 0,
            };
            Ok(KeyKind::Rsa { bits })
        }
        oid::ED25519 => Ok(KeyKind::Ed25519),
        other => Err(CsrError::UnsupportedKey(format!("algorithm {other}"))),
    }
}

pub(crate) fn verification_algorithm(
    key: KeyKind,
    sig: ObjectIdentifier,
) -> Result<&'static dyn VerificationAlgorithm, CsrError> {
    Ok(match (key, sig) {
        (KeyKind::EcP256, oid::ECDSA_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
        (KeyKind::EcP256, oid::ECDSA_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
        (KeyKind::EcP384, oid::ECDSA_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
        (KeyKind::EcP384, oid::ECDSA_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
        (KeyKind::Rsa { .. }, oid::RSA_SHA256) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (KeyKind::Rsa { .. }, oid::RSA_SHA384) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (KeyKind::Rsa { .. }, oid::RSA_SHA512) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (KeyKind::Ed25519, oid::ED25519) => &signature::ED25519,
        (_, other) => return Err(CsrError::UnsupportedSignature(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySpec;
    use crate::names::parse_names;

    fn csr_for(spec: KeySpec, names: &[&str]) -> (KeyPair, String) {
        let key = spec.generate().unwrap();
        let pem = build_csr(&key, "i-0123456789abcdef0", &parse_names(names).unwrap()).unwrap();
        (key, pem)
    }

    #[test]
    fn built_csr_parses_with_its_names_and_key() {
        for spec in [KeySpec::EcP256, KeySpec::EcP384, KeySpec::Rsa(2048)] {
            let (key, pem) = csr_for(spec, &["DNS:b.example", "IP:10.0.0.1", "DNS:a.example"]);
            let csr = parse_and_verify_csr(&pem).unwrap();
            assert_eq!(csr.common_names, ["i-0123456789abcdef0"]);
            let shown: Vec<String> = csr.names.iter().map(ToString::to_string).collect();
            assert_eq!(shown, ["DNS:a.example", "DNS:b.example", "IP:10.0.0.1"]);
            assert_eq!(csr.spki_der, crate::keys::public_key_spki(&key));
            assert!(!csr.requests_ca && !csr.requests_cert_sign && csr.unknown_critical.is_empty());
        }
    }

    #[test]
    fn rsa_size_is_read() {
        let (_, pem) = csr_for(KeySpec::Rsa(3072), &[]);
        assert_eq!(
            parse_and_verify_csr(&pem).unwrap().key,
            KeyKind::Rsa { bits: 3072 }
        );
    }

    #[test]
    fn a_flipped_signature_bit_is_refused() {
        let (_, pem) = csr_for(KeySpec::EcP256, &["DNS:a.example"]);
        let tampered = crate::test_support::flip_last_signature_byte(&pem);
        assert_eq!(
            parse_and_verify_csr(&tampered).unwrap_err(),
            CsrError::BadSignature
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let err = parse_and_verify_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        )
        .unwrap_err();
        assert_eq!(err.reason_code(), ReasonCode::CsrMalformed);
        assert_eq!(
            parse_and_verify_csr("hello").unwrap_err().reason_code(),
            ReasonCode::CsrMalformed
        );
    }

    #[test]
    fn requested_ca_flags_are_seen() {
        let key = KeySpec::EcP256.generate().unwrap();
        let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let csr = parse_and_verify_csr(&pem).unwrap();
        assert!(csr.requests_ca);
        assert!(csr.requests_cert_sign);
    }
}
