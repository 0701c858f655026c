//! The CA worker's signing rate against the raw rate of its crypto library, in one run.
//!
//!   cargo run --release --example sign_rate [-- SECONDS]
//!
//! "raw" is what any CA must do per request with aws-lc-rs alone: verify one ECDSA P-256
//! signature (the CSR's) and make one (the certificate's). "worker" is `judge_batch`, the
//! worker's whole CPU path per request without the queue: JSON, size limits, CSR parse and
//! verify, policy, building and signing the certificate, PEM. Both run single-threaded and on
//! all cores; the figures that matter are the ratios. Prints one JSON object.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use fleetpki_core::ca::{create_intermediate, create_root, CaSubject};
use fleetpki_core::csr::build_csr;
use fleetpki_core::keys::KeySpec;
use fleetpki_core::names::parse_names;
use fleetpki_core::policy::Policy;
use fleetpki_core::sign::CaSigner;
use fleetpki_core::wire::{CsrMessage, Profile, ReplyMode, INSTANCE_ID_ATTRIBUTE, WIRE_VERSION};
use fleetpki_core::worker::{Routes, Verdict};
use fleetpki_modules::ca_sign::judge_batch;
use fleetpki_sqs::Received;

fn rate(seconds: f64, threads: usize, op: impl Fn(usize) -> usize + Sync) -> f64 {
    let deadline = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let total: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                scope.spawn(move || {
                    let mut done = 0;
                    let mut i = t;
                    while started.elapsed() < deadline {
                        done += op(i);
                        i += threads;
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    // A P-256 CA like the default one, on disk as the worker loads it.
    let dir = std::env::temp_dir().join(format!("fleetpki-sign-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let now = time::OffsetDateTime::now_utc();
    let subject = |cn: &str| CaSubject {
        common_name: cn.into(),
        organization: None,
        lifetime_days: 365,
    };
    let root_key = KeySpec::EcP256.generate().expect("key");
    let root = create_root(&root_key, &subject("bench root"), now).expect("root");
    let int_key = KeySpec::EcP256.generate().expect("key");
    let int = create_intermediate(
        &int_key,
        &subject("bench intermediate"),
        &root,
        root_key,
        now,
    )
    .expect("intermediate");
    std::fs::write(dir.join("int.pem"), &int).expect("write");
    std::fs::write(dir.join("int.key"), int_key.serialize_pem()).expect("write");
    std::fs::write(dir.join("chain.pem"), format!("{int}{root}")).expect("write");
    let signer = CaSigner::load(
        &dir.join("int.pem"),
        &dir.join("int.key"),
        &dir.join("chain.pem"),
    )
    .expect("signer");
    let _ = std::fs::remove_dir_all(&dir);
    // Where the worker would answer: only checked, nothing is sent.
    let routes = Routes {
        csr_queue_url: "http://127.0.0.1:1/000000000000/fleetpki-csr".into(),
        reply_queue_prefix: "fleetpki-reply-".into(),
        shared_cert_queue_url: None,
        dead_letter_queue_url: None,
        chain_pem: signer.chain_pem().to_string(),
        signer: "file",
        signer_ref: None,
    };
    let policy = Policy::from_json(
        r#"{"identity_proof": "none", "instances": [{"instance_id_pattern": "i-*", "dns_suffixes": [".fleet.internal"], "ip_networks": ["10.0.0.0/8"]}]}"#,
    )
    .expect("policy");

    // 64 distinct node requests, as they arrive from the queue.
    let requests: Vec<Received> = (0..64)
        .map(|n| {
            let id = format!("i-{n:017x}");
            let key = KeySpec::EcP256.generate().expect("key");
            let names = parse_names(&[format!("DNS:node{n}.fleet.internal"), "IP:10.0.0.7".into()])
                .expect("names");
            let message = CsrMessage {
                instance_id: id.clone(),
                csr_pem: build_csr(&key, &id, &names).expect("csr"),
                version: Some(WIRE_VERSION),
                request_id: Some(fleetpki_core::new_request_id()),
                timestamp: Some(now.unix_timestamp()),
                profile: Some(Profile::Mtls),
                lifetime_days: None,
                reply_mode: Some(ReplyMode::PerNode),
                identity_proof: None,
            };
            Received {
                message_id: n.to_string(),
                receipt_handle: n.to_string(),
                body: serde_json::to_string(&message).expect("json"),
                attributes: HashMap::from([(INSTANCE_ID_ATTRIBUTE.to_string(), id)]),
                sender_id: None,
                receive_count: Some(1),
                sent_at_ms: None,
            }
        })
        .collect();
    // Every request must really be signed, or the rate would measure refusals.
    assert!(judge_batch(&policy, &routes, &signer, &requests)
        .iter()
        .all(|(v, _)| matches!(v, Verdict::Sign { .. })));

    // Raw: one ECDSA P-256 verify (of a real CSR-sized message) and one sign, per request.
    let raw_key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).expect("key");
    let rng = SystemRandom::new();
    let tbs = vec![0x5au8; 180];
    let sig = raw_key.sign(&rng, &tbs).expect("sign");
    let public = UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        raw_key.public_key().as_ref().to_vec(),
    );
    let raw_op = |_: usize| {
        let ok = public.verify(&tbs, sig.as_ref()).is_ok();
        let s = raw_key
            .sign(&rng, &tbs)
            .map(|s| s.as_ref().len())
            .unwrap_or(0);
        usize::from(ok && s > 0)
    };
    // Worker: batches of 10 (one SQS receive) through the same function the worker runs.
    let worker_op = |i: usize| {
        let start = (i * 10) % (requests.len() - 10);
        judge_batch(&policy, &routes, &signer, &requests[start..start + 10])
            .iter()
            .filter(|(v, _)| matches!(v, Verdict::Sign { .. }))
            .count()
    };
    // judge_batch itself spreads a batch over the cores, so the all-core worker figure runs one
    // caller; the single-core figures run on one thread with one core's worth of work.
    let single_worker = |i: usize| {
        let r = &requests[i % requests.len()];
        judge_batch(&policy, &routes, &signer, std::slice::from_ref(r))
            .iter()
            .filter(|(v, _)| matches!(v, Verdict::Sign { .. }))
            .count()
    };

    let raw_1 = rate(seconds, 1, raw_op);
    let worker_1 = rate(seconds, 1, single_worker);
    let raw_n = rate(seconds, cores, raw_op);
    let worker_n = rate(seconds, 1, worker_op);
    println!(
        "{}",
        serde_json::json!({
            "algorithm": "ECDSA P-256 (CA and nodes)",
            "cores": cores,
            "raw_verify_sign_per_s_1core": raw_1.round(),
            "worker_per_s_1core": worker_1.round(),
            "ratio_1core": (worker_1 / raw_1 * 1000.0).round() / 1000.0,
            "raw_verify_sign_per_s_all_cores": raw_n.round(),
            "worker_per_s_all_cores": worker_n.round(),
            "ratio_all_cores": (worker_n / raw_n * 1000.0).round() / 1000.0,
        })
    );
}
