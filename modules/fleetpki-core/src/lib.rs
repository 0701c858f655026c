//! The pure PKI logic of fleetpki.mtls: keys, CSRs, the signing policy, signing, the node's
//! certificate checks, the wire format and the install layout on disk. It does no network I/O
//! and knows nothing of SQS or Ansible.

pub mod ca;
pub mod certs;
pub mod crl;
pub mod csr;
pub mod drain;
mod error;
pub mod keys;
pub mod layout;
pub mod names;
pub mod node;
pub mod policy;
pub mod reason;
pub mod record;
pub mod remote;
pub mod renewal;
pub mod reply_queues;
pub mod sign;
pub mod status;
pub mod wire;
pub mod worker;

pub use error::PkiError;

/// How far notBefore and a CRL's thisUpdate are backdated, for clocks a little behind the CA's.
pub const CLOCK_SKEW_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data` in lower-case hex (audit log fingerprints).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// Random bytes from aws-lc's generator, seeded from the kernel's (docs/interfaces.md,
/// "Randomness").
pub fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut out = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| {
            PkiError::Build("the operating system's random number generator failed".into())
        })?;
    Ok(out)
}

/// A fresh request id (UUID v4).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A time as RFC 3339 (`2026-12-03T16:22:27Z`), as every result and audit line writes it.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod test_support {
    /// Flips the last byte of a PEM object's DER: for a CSR or certificate, that is inside the
    /// signature, so the structure still parses but the signature no longer verifies.
    pub fn flip_last_signature_byte(pem_text: &str) -> String {
        let mut block = pem::parse(pem_text).unwrap();
        let mut der = block.contents().to_vec();
        *der.last_mut().unwrap() ^= 0x01;
        block = pem::Pem::new(block.tag().to_string(), der);
        pem::encode(&block)
    }
}
