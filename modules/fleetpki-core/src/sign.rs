//! The CA side: an intermediate that signs leaves from freshly built parameters.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm, SigningKey,
};
use time::OffsetDateTime;

use crate::certs::{parse_certificate, CertificateInfo};
use crate::csr::{to_rcgen_san, KeyKind, ParsedCsr};
use crate::keys::load_private_key;
use crate::remote::{RemoteKey, RemoteSigningKey};
use crate::wire::Profile;
use crate::{random_bytes, sha256_hex, PkiError};

pub use crate::CLOCK_SKEW_ALLOWANCE;

/// The intermediate's private key: a file on this host, or a remote key (AWS KMS).
pub enum CaKey {
    File(KeyPair),
    Remote(RemoteSigningKey),
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(k) => k.der_bytes(),
            CaKey::Remote(k) => k.der_bytes(),
        }
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            CaKey::File(k) => PublicKeyData::algorithm(k),
            CaKey::Remote(k) => k.algorithm(),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
            CaKey::Remote(k) => k.sign(msg),
        }
    }
}

/// An online intermediate CA able to sign leaves.
pub struct CaSigner {
    issuer: Issuer<'static, CaKey>,
    info: CertificateInfo,
    chain_pem: String,
    /// The remote key's reference (KMS key ARN), for the audit log; None for a key file.
    key_ref: Option<String>,
}

/// A freshly issued leaf.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub serial_hex: String,
    pub not_after: OffsetDateTime,
    pub sha256: String,
}

impl CaSigner {
    /// Loads the intermediate certificate and key (PKCS#8, PKCS#1 or SEC1) and the chain that is
    /// published to nodes. Refuses a key that does not match the certificate, or a non-CA.
    pub fn load(cert_path: &Path, key_path: &Path, chain_path: &Path) -> Result<Self, PkiError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| PkiError::io(p, e));
        let cert_pem = read(cert_path)?;
        let key = load_private_key(&read(key_path)?, &key_path.display().to_string())?;
        let chain_pem = read(chain_path)?;
        let info = parse_certificate(&cert_pem, &cert_path.display().to_string())?;
        if info.spki_der != crate::keys::public_key_spki(&key) {
            return Err(PkiError::CaKeyMismatch {
                key: key_path.into(),
                cert: cert_path.into(),
            });
        }
        Self::from_parts(cert_path, cert_pem, info, CaKey::File(key), chain_pem)
    }

    /// Loads the intermediate certificate and the chain, with its key held remotely. Refuses a
    /// remote key whose public key is not the certificate's (`public_spki_der`, as the backend
    /// reports it), or a non-CA. No private key is read from disk.
    pub fn with_remote_key(
        cert_path: &Path,
        chain_path: &Path,
        key: Arc<dyn RemoteKey>,
        public_spki_der: &[u8],
    ) -> Result<Self, PkiError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| PkiError::io(p, e));
        let cert_pem = read(cert_path)?;
        let chain_pem = read(chain_path)?;
        let info = parse_certificate(&cert_pem, &cert_path.display().to_string())?;
        if info.spki_der != public_spki_der {
            return Err(PkiError::CaKeyMismatch {
                key: key.key_ref().into(),
                cert: cert_path.into(),
            });
        }
        let remote = RemoteSigningKey::new(key, &info.spki_der)?;
        Self::from_parts(cert_path, cert_pem, info, CaKey::Remote(remote), chain_pem)
    }

    fn from_parts(
        cert_path: &Path,
        cert_pem: String,
        info: CertificateInfo,
        key: CaKey,
        chain_pem: String,
    ) -> Result<Self, PkiError> {
        if !info.is_ca {
            return Err(PkiError::NotACa {
                path: cert_path.into(),
            });
        }
        let key_ref = match &key {
            CaKey::File(_) => None,
            CaKey::Remote(k) => Some(k.key_ref().to_string()),
        };
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| PkiError::CertificateParse {
                what: cert_path.display().to_string(),
                detail: e.to_string(),
            })?;
        Ok(CaSigner {
            issuer,
            info,
            chain_pem,
            key_ref,
        })
    }

    /// The remote key's reference (KMS key ARN), or None for a key file.
    pub fn key_ref(&self) -> Option<&str> {
        self.key_ref.as_deref()
    }

    /// Signs a CRL listing `revoked`, valid from `now` (backdated like leaves) for `lifetime`.
    pub fn sign_crl(
        &self,
        revoked: &[crate::crl::Revocation],
        number: u64,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        crate::crl::sign(&self.issuer, &self.info, revoked, number, now, lifetime)
    }

    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    pub fn certificate(&self) -> &CertificateInfo {
        &self.info
    }

    /// Signs a leaf for a CSR the policy accepted. Only the CSR's public key and its (already
    /// checked) names are taken from it: flags, key usages and other extensions it asked for are
    /// never copied. The lifetime is capped at the intermediate's own notAfter.
    pub fn sign(
        &self,
        csr: &ParsedCsr,
        instance_id: &str,
        profile: Profile,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, instance_id);
        params.distinguished_name = dn;
        params.subject_alt_names = csr
            .names
            .iter()
            .map(to_rcgen_san)
            .collect::<Result<_, _>>()?;
        // Certificates hold whole seconds: drop the rest, so what we report is what was signed.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = (now + lifetime).min(self.info.not_after);
        let serial = serial_number()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = match csr.key {
            KeyKind::Rsa { .. } => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
            _ => vec![KeyUsagePurpose::DigitalSignature],
        };
        if profile.server_auth() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if profile.client_auth() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)
            .map_err(|e| PkiError::Build(e.to_string()))?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(crate::remote::remote_or_build)?;
        Ok(IssuedCertificate {
            certificate_pem: cert.pem(),
            serial_hex: crate::hex(&serial),
            not_after: params.not_after,
            sha256: sha256_hex(cert.der()),
        })
    }
}

/// A serial of 16 octets, 126 of its bits random (the top bit clear keeps it positive, the next
/// one set keeps it 16 octets long): unique across workers signing in parallel without a shared
/// serial file (RFC 5280 wants at most 20 octets; CA/B asks for 64 bits of entropy).
fn serial_number() -> Result<Vec<u8>, PkiError> {
    let mut serial = random_bytes::<16>()?.to_vec();
    serial[0] &= 0x7f;
    serial[0] |= 0x40; // never a leading zero octet, so the encoding keeps 16 octets
    Ok(serial)
}
