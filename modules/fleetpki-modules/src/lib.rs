//! The modules of fleetpki.mtls: each one's argument spec and its task, read top to bottom.
//! The binaries in `src/bin/` only hand these to the Ansible protocol layer.

pub mod ca_init;
pub mod ca_revoke;
pub mod ca_service;
pub mod ca_sign;
pub mod cert_fetch;
pub mod cert_info;
pub mod common;
pub mod csr_submit;
pub mod issuance_record;
pub mod metrics;
pub mod reply_queues;
pub mod signer;
