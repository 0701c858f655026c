//! A CA key that lives outside this process (an AWS KMS key): rcgen builds the certificate and
//! asks the remote key for the signature over its TBS bytes. Every signature that comes back is
//! verified here against the CA certificate's public key before anything is published, so a
//! key id that points at the wrong key fails loudly instead of issuing broken certificates.
//!
//! This module knows nothing of KMS: the backend implements [`RemoteKey`].

use std::cell::RefCell;
use std::sync::Arc;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use x509_cert::der::Decode;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use crate::csr::{key_kind, KeyKind};
use crate::PkiError;

/// The signature a [`RemoteKey`] must produce for a key type (X.509 DER encodings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAlgorithm {
    /// ECDSA P-256 with SHA-256 (KMS `ECDSA_SHA_256` on an `ECC_NIST_P256` key).
    EcdsaP256Sha256,
    /// ECDSA P-384 with SHA-384 (KMS `ECDSA_SHA_384` on an `ECC_NIST_P384` key).
    EcdsaP384Sha384,
    /// RSA PKCS#1 v1.5 with SHA-256 (KMS `RSASSA_PKCS1_V1_5_SHA_256`).
    RsaPkcs1Sha256,
}

impl RemoteAlgorithm {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            RemoteAlgorithm::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            RemoteAlgorithm::EcdsaP384Sha384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            RemoteAlgorithm::RsaPkcs1Sha256 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    fn verification(self) -> &'static dyn VerificationAlgorithm {
        match self {
            RemoteAlgorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
            RemoteAlgorithm::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_ASN1,
            RemoteAlgorithm::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }
}

/// Why a remote signature could not be had. `code` is the backend's error name
/// (`DisabledException`, `AccessDeniedException`, ...), for the audit log and the task result.
/// Whether it is about the signer or about one request is decided where the error is made (the
/// signer backends classify their service's answers), never from the code afterwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteSignError {
    pub code: String,
    pub message: String,
    pub scope: RemoteErrorScope,
}

/// What a remote signer's error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteErrorScope {
    /// The signer cannot sign now (disabled or missing key, access denied, throttling past the
    /// retries, a CA not ACTIVE, no connection): the request waits in the queue.
    Signer,
    /// This one request cannot be signed: answered to the node (`signer_refused`), never
    /// retried — a retry would fail the same way until the queue dead-letters it unanswered.
    Request,
}

impl RemoteSignError {
    /// An outage of the signer.
    pub fn outage(code: impl Into<String>, message: impl Into<String>) -> Self {
        RemoteSignError {
            code: code.into(),
            message: message.into(),
            scope: RemoteErrorScope::Signer,
        }
    }

    /// A refusal of this one request.
    pub fn refused(code: impl Into<String>, message: impl Into<String>) -> Self {
        RemoteSignError {
            code: code.into(),
            message: message.into(),
            scope: RemoteErrorScope::Request,
        }
    }

    /// Whether the request waits for the signer (an outage) rather than being answered.
    pub fn is_outage(&self) -> bool {
        self.scope == RemoteErrorScope::Signer
    }
}

/// A signing key held elsewhere. `sign` gets the bytes to be signed (not a digest) and returns
/// the DER signature of `algorithm`. It may block (a network call); it runs on worker threads.
pub trait RemoteKey: Send + Sync {
    /// What the audit log names the key by (the KMS key ARN).
    fn key_ref(&self) -> &str;
    fn algorithm(&self) -> RemoteAlgorithm;
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, RemoteSignError>;
}

thread_local! {
    /// rcgen's signing callback can only say "remote key error": the real reason waits here,
    /// on the thread that signed, for the caller to pick up right after.
    static LAST_ERROR: RefCell<Option<RemoteSignError>> = const { RefCell::new(None) };
}

/// A [`RemoteKey`] as rcgen's signing key, with its public key (from the CA certificate).
#[derive(Clone)]
pub struct RemoteSigningKey {
    key: Arc<dyn RemoteKey>,
    /// The subjectPublicKey bits (EC point or RSAPublicKey), as rcgen and aws-lc take them.
    public_key: Vec<u8>,
    algorithm: RemoteAlgorithm,
}

impl std::fmt::Debug for RemoteSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSigningKey")
            .field("key", &self.key.key_ref())
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// The algorithm a remote key of this SubjectPublicKeyInfo signs with.
pub fn algorithm_for_spki(spki_der: &[u8]) -> Result<RemoteAlgorithm, PkiError> {
    let spki =
        SubjectPublicKeyInfoOwned::from_der(spki_der).map_err(|e| PkiError::CertificateParse {
            what: "public key".into(),
            detail: e.to_string(),
        })?;
    match key_kind(&spki) {
        Ok(KeyKind::EcP256) => Ok(RemoteAlgorithm::EcdsaP256Sha256),
        Ok(KeyKind::EcP384) => Ok(RemoteAlgorithm::EcdsaP384Sha384),
        Ok(KeyKind::Rsa { .. }) => Ok(RemoteAlgorithm::RsaPkcs1Sha256),
        Ok(other) => Err(PkiError::Build(format!(
            "a remote {other} key is not supported: use ECC_NIST_P256, ECC_NIST_P384 or RSA"
        ))),
        Err(e) => Err(PkiError::Build(e.to_string())),
    }
}

impl RemoteSigningKey {
    /// `spki_der` is the public key the remote key must match (the CA certificate's, or the
    /// one the backend reported when the CA is being created).
    pub fn new(key: Arc<dyn RemoteKey>, spki_der: &[u8]) -> Result<Self, PkiError> {
        let algorithm = algorithm_for_spki(spki_der)?;
        if algorithm != key.algorithm() {
            return Err(PkiError::Build(format!(
                "the remote key {} signs with {:?}, but the CA certificate's key needs {algorithm:?}",
                key.key_ref(),
                key.algorithm()
            )));
        }
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der).map_err(|e| {
            PkiError::CertificateParse {
                what: "public key".into(),
                detail: e.to_string(),
            }
        })?;
        let public_key = spki.subject_public_key.raw_bytes().to_vec();
        Ok(RemoteSigningKey {
            key,
            public_key,
            algorithm,
        })
    }

    pub fn key_ref(&self) -> &str {
        self.key.key_ref()
    }

    /// The reason of the last failed remote signature on this thread, if any.
    pub fn take_error() -> Option<RemoteSignError> {
        LAST_ERROR.with(|e| e.borrow_mut().take())
    }

    /// Signs `message` remotely and checks the signature against the public key.
    pub fn sign_checked(&self, message: &[u8]) -> Result<Vec<u8>, RemoteSignError> {
        let signature = self.key.sign(message)?;
        UnparsedPublicKey::new(self.algorithm.verification(), &self.public_key)
            .verify(message, &signature)
            .map_err(|_| {
                RemoteSignError::outage(
                    "SignatureMismatch",
                    format!(
                        "the signature of {} does not verify with the CA certificate's public key: the key id points at another key",
                        self.key.key_ref()
                    ),
                )
            })?;
        Ok(signature)
    }
}

impl PublicKeyData for RemoteSigningKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm.rcgen()
    }
}

impl SigningKey for RemoteSigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.sign_checked(msg).map_err(|e| {
            LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(e));
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A remote key's failure keeps its reason (KMS error code); anything else is a build error.
pub(crate) fn remote_or_build(e: rcgen::Error) -> PkiError {
    match (&e, RemoteSigningKey::take_error()) {
        (rcgen::Error::RemoteKeyError, Some(remote)) => PkiError::RemoteSign(remote),
        _ => PkiError::Build(e.to_string()),
    }
}
