//! Fixtures shared by the core's integration tests (rcgen's `tests/util.rs` is the model).
#![allow(dead_code)] // each test file uses its own part

use fleetpki_core::ca::{create_intermediate, create_root, CaSubject};
use fleetpki_core::keys::KeySpec;
use fleetpki_core::sign::CaSigner;
use time::OffsetDateTime;

/// The instance id most tests request certificates for.
pub const ID: &str = "i-0123456789abcdef0";

pub struct TestCa {
    pub dir: std::path::PathBuf,
    pub root_pem: String,
    /// The root's key (PEM), for tests that make certificates of their own under it.
    pub root_key_pem: String,
    pub signer: CaSigner,
}

/// A root and an intermediate of `spec` keys in a fresh temporary directory, and a signer.
pub fn make_ca(name: &str, spec: KeySpec) -> TestCa {
    let dir = std::env::temp_dir().join(format!("fleetpki-pki-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let now = OffsetDateTime::now_utc();
    let subject = |cn: &str| CaSubject {
        common_name: cn.into(),
        organization: Some("fleetpki test".into()),
        lifetime_days: 365,
    };
    let root_key = spec.generate().unwrap();
    let root_pem = create_root(&root_key, &subject("fleetpki Root CA"), now).unwrap();
    let root_key_pem = root_key.serialize_pem();
    let int_key = spec.generate().unwrap();
    let int_pem = create_intermediate(
        &int_key,
        &subject("fleetpki Intermediate CA"),
        &root_pem,
        root_key,
        now,
    )
    .unwrap();
    std::fs::write(dir.join("int.pem"), &int_pem).unwrap();
    std::fs::write(dir.join("int.key"), int_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("chain.pem"), format!("{int_pem}{root_pem}")).unwrap();
    let signer = CaSigner::load(
        &dir.join("int.pem"),
        &dir.join("int.key"),
        &dir.join("chain.pem"),
    )
    .unwrap();
    TestCa {
        dir,
        root_pem,
        root_key_pem,
        signer,
    }
}
