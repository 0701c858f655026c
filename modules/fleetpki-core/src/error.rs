use std::path::PathBuf;

/// Errors of the PKI core; each says what is wrong and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid subject alternative name '{name}': {why}")]
    InvalidName { name: String, why: String },
    #[error("cannot generate a {what} key: {detail}")]
    KeyGeneration { what: String, detail: String },
    #[error("cannot read the private key {what}: {detail}. Expected a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of type ECDSA P-256/P-384, RSA or Ed25519")]
    KeyParse { what: String, detail: String },
    #[error("cannot parse the certificate {what}: {detail}")]
    CertificateParse { what: String, detail: String },
    #[error("cannot build the certificate or request: {0}")]
    Build(String),
    #[error("option serials: {0:?} is not a hexadecimal serial number (write it as 0a1b..., 0A:1B:... or 0x0a1b...)")]
    InvalidSerial(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no certificate (expected PEM '-----BEGIN CERTIFICATE-----' blocks)")]
    NoCertificate { path: PathBuf },
    #[error("the CA key {key} does not belong to the CA certificate {cert}: point both options at the same CA")]
    CaKeyMismatch { key: PathBuf, cert: PathBuf },
    #[error(
        "{path} is not a CA certificate (no basicConstraints CA:TRUE): it cannot sign certificates"
    )]
    NotACa { path: PathBuf },
    #[error("the CA's remote key could not sign: {0}")]
    RemoteSign(crate::remote::RemoteSignError),
    #[error("the install layout at {path} is damaged: {detail}")]
    Layout { path: PathBuf, detail: String },
}

impl PkiError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io {
            path: path.into(),
            source,
        }
    }
}
