//! A CA key held elsewhere (as with AWS KMS), without network: a fake remote key that signs
//! with a local key pair, or fails the way KMS does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetpki_core::ca::{
    certify_intermediate_csr, create_root, intermediate_csr, is_signed_by, CaSubject,
};
use fleetpki_core::certs::{
    check_issued_certificate, load_certificates, parse_certificate, Expectation,
};
use fleetpki_core::crl::{parse_crl, Reason, Revocation};
use fleetpki_core::csr::{build_csr, parse_and_verify_csr};
use fleetpki_core::keys::{public_key_spki, KeySpec};
use fleetpki_core::names::parse_names;
use fleetpki_core::remote::{
    algorithm_for_spki, RemoteAlgorithm, RemoteKey, RemoteSignError, RemoteSigningKey,
};
use fleetpki_core::sign::CaSigner;
use fleetpki_core::wire::Profile;
use fleetpki_core::PkiError;
use rcgen::{KeyPair, SigningKey};
use time::OffsetDateTime;

/// Signs with a local key pair, like KMS would with its own; can be "disabled".
struct FakeKms {
    key: KeyPair,
    algorithm: RemoteAlgorithm,
    disabled: AtomicBool,
    calls: AtomicUsize,
}

impl FakeKms {
    fn new(spec: KeySpec) -> Arc<Self> {
        let key = spec.generate().unwrap();
        let algorithm = algorithm_for_spki(&public_key_spki(&key)).unwrap();
        Arc::new(FakeKms {
            key,
            algorithm,
            disabled: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
        })
    }
}

impl RemoteKey for FakeKms {
    fn key_ref(&self) -> &str {
        "arn:aws:kms:eu-west-1:123456789012:key/test"
    }
    fn algorithm(&self) -> RemoteAlgorithm {
        self.algorithm
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, RemoteSignError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.disabled.load(Ordering::SeqCst) {
            return Err(RemoteSignError::outage(
                "DisabledException",
                "arn:aws:kms:eu-west-1:123456789012:key/test is disabled.",
            ));
        }
        Ok(self.key.sign(message).unwrap())
    }
}

const ID: &str = "i-0123456789abcdef0";

struct RemoteCa {
    dir: std::path::PathBuf,
    root_pem: String,
    int_pem: String,
    kms: Arc<FakeKms>,
}

/// Root (file) certifies the intermediate from a CSR signed through the remote key; only
/// certificates are written.
fn remote_ca(name: &str, spec: KeySpec) -> RemoteCa {
    let dir = std::env::temp_dir().join(format!("fleetpki-remote-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let now = OffsetDateTime::now_utc();
    let subject = |cn: &str| CaSubject {
        common_name: cn.into(),
        organization: Some("fleetpki test".into()),
        lifetime_days: 365,
    };
    let root_key = KeySpec::EcP256.generate().unwrap();
    let root_pem = create_root(&root_key, &subject("Root"), now).unwrap();
    let kms = FakeKms::new(spec);
    let remote = RemoteSigningKey::new(kms.clone(), &public_key_spki(&kms.key)).unwrap();
    let csr = intermediate_csr(&remote, &subject("KMS Intermediate")).unwrap();
    let int_pem = certify_intermediate_csr(&csr, 365, &root_pem, root_key, now).unwrap();
    std::fs::write(dir.join("int.pem"), &int_pem).unwrap();
    std::fs::write(dir.join("chain.pem"), format!("{int_pem}{root_pem}")).unwrap();
    RemoteCa {
        dir,
        root_pem,
        int_pem,
        kms,
    }
}

fn signer(ca: &RemoteCa) -> CaSigner {
    let spki = public_key_spki(&ca.kms.key);
    CaSigner::with_remote_key(
        &ca.dir.join("int.pem"),
        &ca.dir.join("chain.pem"),
        ca.kms.clone(),
        &spki,
    )
    .unwrap()
}

fn node_csr() -> (KeyPair, fleetpki_core::csr::ParsedCsr) {
    let key = KeySpec::EcP256.generate().unwrap();
    let names = parse_names(&["DNS:node1.example"]).unwrap();
    let csr = parse_and_verify_csr(&build_csr(&key, ID, &names).unwrap()).unwrap();
    (key, csr)
}

#[test]
fn a_leaf_signed_through_the_remote_key_is_accepted_by_the_node() {
    for (i, spec) in [KeySpec::EcP256, KeySpec::EcP384, KeySpec::Rsa(2048)]
        .into_iter()
        .enumerate()
    {
        let ca = remote_ca(&format!("ok{i}"), spec);
        let signer = signer(&ca);
        assert_eq!(
            signer.key_ref(),
            Some("arn:aws:kms:eu-west-1:123456789012:key/test")
        );
        let (_, csr) = node_csr();
        let issued = signer
            .sign(
                &csr,
                ID,
                Profile::Mtls,
                Duration::from_secs(86400),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let anchors = load_certificates(&ca.root_pem);
        let expect = Expectation {
            instance_id: ID,
            spki_der: &csr.spki_der,
            names: &csr.names,
            profile: Profile::Mtls,
        };
        check_issued_certificate(
            &issued.certificate_pem,
            &ca.int_pem,
            &anchors,
            &expect,
            SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    }
}

#[test]
fn the_intermediate_keeps_the_csr_subject_and_a_sha1_key_identifier() {
    let ca = remote_ca("subject", KeySpec::EcP256);
    let info = parse_certificate(&ca.int_pem, "intermediate").unwrap();
    assert!(info.is_ca);
    assert_eq!(info.common_name.as_deref(), Some("KMS Intermediate"));
    assert_eq!(info.spki_der, public_key_spki(&ca.kms.key));
    // RFC 5280 method 1: SHA-1 of the subjectPublicKey bits (what AWS Private CA puts in the
    // authority key identifier of the leaves it issues).
    let bits = &x509_bits(&info.spki_der);
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bits);
    assert_eq!(info.subject_key_id.as_deref(), Some(sha1.as_ref()));
}

fn x509_bits(spki_der: &[u8]) -> Vec<u8> {
    use x509_cert::der::Decode;
    x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
        .unwrap()
        .subject_public_key
        .raw_bytes()
        .to_vec()
}

#[test]
fn the_intermediate_hangs_under_its_root_and_no_other() {
    let ca = remote_ca("issuedby", KeySpec::EcP256);
    let other = remote_ca("issuedby-other", KeySpec::EcP256);
    assert!(is_signed_by(&ca.int_pem, &ca.root_pem).unwrap());
    assert!(
        !is_signed_by(&ca.int_pem, &other.root_pem).unwrap(),
        "same subject, another root key"
    );
    assert!(!is_signed_by(&ca.root_pem, &ca.int_pem).unwrap());
}

#[test]
fn a_disabled_key_is_a_remote_error_with_its_code_not_a_certificate() {
    let ca = remote_ca("disabled", KeySpec::EcP256);
    let signer = signer(&ca);
    ca.kms.disabled.store(true, Ordering::SeqCst);
    let (_, csr) = node_csr();
    match signer.sign(
        &csr,
        ID,
        Profile::Mtls,
        Duration::from_secs(86400),
        OffsetDateTime::now_utc(),
    ) {
        Err(PkiError::RemoteSign(e)) => assert_eq!(e.code, "DisabledException"),
        other => panic!("expected a remote-sign error, got {other:?}"),
    }
    ca.kms.disabled.store(false, Ordering::SeqCst);
    assert!(signer
        .sign(
            &csr,
            ID,
            Profile::Mtls,
            Duration::from_secs(86400),
            OffsetDateTime::now_utc()
        )
        .is_ok());
}

#[test]
fn a_key_id_pointing_at_another_key_is_refused_before_and_after_signing() {
    let ca = remote_ca("wrongkey", KeySpec::EcP256);
    let other = FakeKms::new(KeySpec::EcP256);
    // At load: the key's reported public key is not the certificate's.
    let err = CaSigner::with_remote_key(
        &ca.dir.join("int.pem"),
        &ca.dir.join("chain.pem"),
        other.clone(),
        &public_key_spki(&other.key),
    )
    .err()
    .unwrap();
    assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err}");
    // If the backend lies about its public key, the signature check still catches it.
    let signer = CaSigner::with_remote_key(
        &ca.dir.join("int.pem"),
        &ca.dir.join("chain.pem"),
        other.clone(),
        &public_key_spki(&ca.kms.key),
    )
    .unwrap();
    let (_, csr) = node_csr();
    match signer.sign(
        &csr,
        ID,
        Profile::Mtls,
        Duration::from_secs(86400),
        OffsetDateTime::now_utc(),
    ) {
        Err(PkiError::RemoteSign(e)) => assert_eq!(e.code, "SignatureMismatch"),
        other => panic!("expected a signature mismatch, got {other:?}"),
    }
}

#[test]
fn a_crl_is_signed_through_the_remote_key() {
    let ca = remote_ca("crl", KeySpec::EcP256);
    let signer = signer(&ca);
    let before = ca.kms.calls.load(Ordering::SeqCst);
    let revoked = vec![Revocation {
        serial: "40aabbcc".into(),
        revoked_at: OffsetDateTime::now_utc().unix_timestamp(),
        reason: Reason::KeyCompromise,
        instance_id: None,
    }];
    let crl = signer
        .sign_crl(
            &revoked,
            1,
            OffsetDateTime::now_utc(),
            Duration::from_secs(86400),
        )
        .unwrap();
    assert_eq!(ca.kms.calls.load(Ordering::SeqCst), before + 1);
    let parsed = parse_crl(&crl).unwrap();
    assert!(
        parsed.serials.iter().any(|s| s == "40aabbcc"),
        "{:?}",
        parsed.serials
    );
}

#[test]
fn outages_wait_in_the_queue_and_request_errors_are_answered() {
    assert!(RemoteSignError::outage("DisabledException", "x").is_outage());
    assert!(!RemoteSignError::refused("MalformedCSRException", "x").is_outage());
}

#[test]
fn a_crl_larger_than_a_kms_raw_message_is_signed_through_the_remote_key() {
    let ca = remote_ca("bigcrl", KeySpec::EcP256);
    let signer = signer(&ca);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let revoked: Vec<Revocation> = (0..150u32)
        .map(|i| Revocation {
            serial: format!("40{i:030x}"),
            revoked_at: now,
            reason: Reason::Superseded,
            instance_id: None,
        })
        .collect();
    let crl = signer
        .sign_crl(
            &revoked,
            2,
            OffsetDateTime::now_utc(),
            Duration::from_secs(86400),
        )
        .unwrap();
    assert!(
        crl.len() > 4096 * 4 / 3,
        "the CRL should be over 4 KiB of DER"
    );
    assert_eq!(parse_crl(&crl).unwrap().serials.len(), 150);
}
