//! Private keys: generation on the node, loading in any of the PEM forms openssl writes.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::PkiError;

/// A key type a node can generate (community.crypto's `type`/`curve`/`size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    EcP256,
    EcP384,
    Rsa(u32),
}

/// The RSA key sizes the modules make and the `size` option offers.
pub const RSA_SIZES: [u32; 3] = [2048, 3072, 4096];

/// The `type` option of the modules that make keys (community.crypto's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum KeyType {
    #[serde(rename = "ECC")]
    Ecc,
    #[serde(rename = "RSA")]
    Rsa,
}

impl KeyType {
    pub const ALL: [KeyType; 2] = [KeyType::Ecc, KeyType::Rsa];

    pub const fn as_str(self) -> &'static str {
        match self {
            KeyType::Ecc => "ECC",
            KeyType::Rsa => "RSA",
        }
    }
}

/// The `curve` option (with `type: ECC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    Secp256r1,
    Secp384r1,
}

impl Curve {
    pub const ALL: [Curve; 2] = [Curve::Secp256r1, Curve::Secp384r1];

    pub const fn as_str(self) -> &'static str {
        match self {
            Curve::Secp256r1 => "secp256r1",
            Curve::Secp384r1 => "secp384r1",
        }
    }
}

impl KeySpec {
    /// From community.crypto-style options; `curve` only matters for ECC, `size` for RSA.
    pub fn from_options(kind: KeyType, curve: Curve, size: u32) -> Result<Self, PkiError> {
        match (kind, curve) {
            (KeyType::Ecc, Curve::Secp256r1) => Ok(KeySpec::EcP256),
            (KeyType::Ecc, Curve::Secp384r1) => Ok(KeySpec::EcP384),
            (KeyType::Rsa, _) if RSA_SIZES.contains(&size) => Ok(KeySpec::Rsa(size)),
            (KeyType::Rsa, _) => Err(PkiError::KeyGeneration {
                what: kind.as_str().to_string(),
                detail: format!("unsupported RSA size {size}: use 2048, 3072 or 4096"),
            }),
        }
    }

    pub fn generate(self) -> Result<KeyPair, PkiError> {
        let result = match self {
            KeySpec::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeySpec::EcP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeySpec::Rsa(bits) => {
                let size = match bits {
                    2048 => rcgen::RsaKeySize::_2048,
                    3072 => rcgen::RsaKeySize::_3072,
                    _ => rcgen::RsaKeySize::_4096,
                };
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
            }
        };
        result.map_err(|e| PkiError::KeyGeneration {
            what: self.to_string(),
            detail: e.to_string(),
        })
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::EcP256 => f.write_str("ECDSA P-256"),
            KeySpec::EcP384 => f.write_str("ECDSA P-384"),
            KeySpec::Rsa(bits) => write!(f, "RSA-{bits}"),
        }
    }
}

/// Loads a PEM private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`, the seed's
/// openssl CA) or SEC1 (`EC PRIVATE KEY`, openssl's `ecparam -genkey`). `what` names the key in
/// errors (a path); the key material never appears in an error.
pub fn load_private_key(pem: &str, what: &str) -> Result<KeyPair, PkiError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::KeyParse {
        what: what.to_string(),
        detail: format!("no PEM private key found ({e:?})"),
    })?;
    KeyPair::try_from(&der).map_err(|e| PkiError::KeyParse {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// The DER SubjectPublicKeyInfo of a key: what a certificate for this key must carry.
pub fn public_key_spki(key: &KeyPair) -> Vec<u8> {
    key.subject_public_key_info()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_reload_from_their_pem() {
        for spec in [KeySpec::EcP256, KeySpec::EcP384] {
            let key = spec.generate().unwrap();
            let pem = key.serialize_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let back = load_private_key(&pem, "test").unwrap();
            assert_eq!(public_key_spki(&back), public_key_spki(&key));
        }
    }

    #[test]
    fn options_map_to_specs_and_bad_ones_are_named() {
        assert_eq!(
            KeySpec::from_options(KeyType::Ecc, Curve::Secp384r1, 0).unwrap(),
            KeySpec::EcP384
        );
        assert_eq!(
            KeySpec::from_options(KeyType::Rsa, Curve::Secp256r1, 3072).unwrap(),
            KeySpec::Rsa(3072)
        );
        let err = KeySpec::from_options(KeyType::Rsa, Curve::Secp256r1, 1024)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1024"), "{err}");
        // The option values read back as the variants they name.
        for kind in KeyType::ALL {
            let read: KeyType = serde_json::from_value(serde_json::json!(kind.as_str())).unwrap();
            assert_eq!(read, kind);
        }
        for curve in Curve::ALL {
            let read: Curve = serde_json::from_value(serde_json::json!(curve.as_str())).unwrap();
            assert_eq!(read, curve);
        }
    }

    #[test]
    fn garbage_is_a_clear_error_without_the_input() {
        let err = load_private_key(
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
            "/k.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/k.pem"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
