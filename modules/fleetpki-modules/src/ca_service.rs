//! `mtls_ca_sign serve CONFIG.json`: the same drain loop as the module, long-running. The config
//! file is the module's own JSON arguments. It long-polls, reloads the policy file when it
//! changes (autoscaled fleets add instances all the time), backs off with jitter on SQS errors,
//! and on SIGTERM/SIGINT finishes the batches in hand and exits cleanly. When the signer fails
//! (a disabled KMS key), it stops taking requests and probes the signer, backing off, until it
//! signs again: an outage raises a queued request's receive count once at most, so it never
//! drifts into the dead-letter queue while the CA cannot sign.

use std::time::{Duration, Instant, SystemTime};

use ansible_module::Invocation;
use fleetpki_sqs::Sqs;
use tokio::signal::unix::{signal, SignalKind};

use crate::ca_sign::{load_policy, spec, Args, Worker, NAME};
use crate::metrics::{serve_http, write_textfile};
use crate::signer::OpenError;

/// A round of the service is this many batches' worth of requests at most (`concurrency` ×
/// `batch_size` each): at full speed, the policy file and the metrics are looked at again every
/// second or two, and the short pause between rounds costs a few per cent.
const ROUND_BATCHES: u64 = 20;

fn log(text: &str) {
    eprintln!("mtls_ca_sign: {text}");
}

/// Runs the service; returns the process exit code.
pub fn serve(config_path: Option<&str>) -> i32 {
    let Some(config_path) = config_path else {
        log("usage: mtls_ca_sign serve CONFIG.json (the module's arguments as a JSON object)");
        return 2;
    };
    match run(config_path) {
        Ok(()) => 0,
        Err(message) => {
            log(&message);
            1
        }
    }
}

fn modified(path: &Option<String>) -> Option<SystemTime> {
    path.as_ref()
        .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

fn run(config_path: &str) -> Result<(), String> {
    let invocation =
        Invocation::from_args_file(config_path, NAME, &spec()).map_err(|e| e.to_string())?;
    let args: Args = invocation.args().map_err(|e| e.to_string())?;
    args.check_ranges()
        .map_err(|f| format!("{config_path}: {}", f.msg))?;
    let metrics_address = args.metrics_address().map_err(|f| f.msg)?;
    let poll_interval =
        Duration::from_secs(args.metrics_queue_poll_interval.clamp(1, 86_400) as u64);
    let policy = load_policy(&args).map_err(|f| f.msg)?;
    for warning in policy.warnings() {
        log(&format!("warning: {warning}"));
    }
    // A signer that cannot sign yet (a disabled KMS key, a Private CA not yet ACTIVE) is waited
    // for here, before any request is taken; SIGTERM meanwhile simply ends the process.
    let mut wait = Duration::from_secs(1);
    let backend = loop {
        match args.open_backend() {
            Ok(backend) => break std::sync::Arc::new(backend),
            Err(OpenError::Unavailable(f)) => {
                log(&format!(
                    "signer unavailable at start ({}); retrying in {} s",
                    f.msg,
                    wait.as_secs()
                ));
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(60));
            }
            Err(OpenError::Invalid(f)) => return Err(f.msg),
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let sqs = Sqs::connect(&args.aws).await.map_err(|e| e.to_string())?;
        let mut worker = loop {
            match Worker::new(&sqs, &args, policy.clone(), backend.clone()).await {
                Ok(worker) => break worker,
                // Waiting would not make the record writable, nor move a queue to our region:
                // stop, and let systemd say why.
                Err(e) if e.is_permanent() => return Err(e.with_detail()),
                Err(e) => {
                    log(&format!("cannot start: {}; retrying", e.with_detail()));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = terminate.recv() => return Ok(()),
                        _ = interrupt.recv() => return Ok(()),
                    }
                }
            }
        };
        worker.audit_to_stdout = true;
        for warning in std::mem::take(&mut worker.warnings) {
            log(&format!("warning: {warning}"));
        }
        let metrics_on = metrics_address.is_some() || args.metrics_textfile.is_some();
        if let Some((address, warning)) = metrics_address {
            if let Some(warning) = warning {
                log(&format!("warning: {warning}"));
            }
            let bound = serve_http(address, worker.metrics.clone())
                .await
                .map_err(|e| format!("cannot serve metrics on {address} (metrics_listen): {e}; choose a free port, or unset metrics_listen"))?;
            log(&format!("serving metrics on http://{bound}/metrics"));
        }
        // Polled after the first receive, then after a receive at most every
        // metrics_queue_poll_interval (a receive long-polls up to 20 s on an empty queue).
        let mut next_poll = Instant::now();
        log(&format!("serving {}", args.csr_queue_url));
        let mut policy_mtime = modified(&args.policy_path);
        let mut failures: u32 = 0;
        loop {
            // Reload the policy when its file changed; a broken file keeps the last good one.
            let mtime = modified(&args.policy_path);
            if mtime != policy_mtime {
                policy_mtime = mtime;
                match load_policy(&args) {
                    Ok(policy) => {
                        worker.policy = std::sync::Arc::new(policy);
                        log("policy reloaded");
                    }
                    Err(f) => log(&format!("policy not reloaded, keeping the previous one: {}", f.msg)),
                }
            }
            // A round of batches, `concurrency` in flight, until a 20 s long poll comes back
            // empty or ROUND_BATCHES batches' worth were received; then the policy, the metrics
            // and the signer are looked at again. A signal cancels only the receives: the
            // batches in hand are finished (answered, recorded, deleted) first.
            let mut signalled = false;
            let round = (args.concurrency * args.batch_size) as u64 * ROUND_BATCHES;
            let result = worker
                .drain(round, 20, async {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                    signalled = true;
                })
                .await;
            if result.is_ok() && worker.signer_error.is_none() {
                worker.metrics.drained(crate::common::now_unix());
            }
            if metrics_on && Instant::now() >= next_poll {
                next_poll = Instant::now() + poll_interval;
                if let Err(problem) = worker.poll_gauges().await {
                    log(&format!("metrics: some gauges were not refreshed: {problem}"));
                }
                if let Some(path) = &args.metrics_textfile {
                    let written = write_textfile(std::path::Path::new(path), &worker.metrics.encode());
                    if let Err(e) = written {
                        log(&format!("metrics: not written to {path} (metrics_textfile): {e}"));
                    }
                }
            } else {
                worker.metrics.sqs_calls(&sqs.calls());
            }
            for warning in std::mem::take(&mut worker.warnings) {
                log(&format!("warning: {warning}"));
            }
            // Nothing more may be signed that cannot be recorded.
            if let Err(e) = &result {
                if e.is_permanent() {
                    stop(&worker)?;
                    return Err(e.with_detail());
                }
            }
            if signalled {
                break;
            }
            if let Some(error) = worker.signer_error.take() {
                log(&format!("signer unavailable ({error}); the requests in hand went back to the queue; probing the signer before taking more"));
                let mut attempt: u32 = 0;
                loop {
                    let delay = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = terminate.recv() => return stop(&worker),
                        _ = interrupt.recv() => return stop(&worker),
                    }
                    match backend.probe().await {
                        Ok(()) => {
                            worker.metrics.signer_recovered();
                            log("signer available again; resuming");
                            break;
                        }
                        Err(e) => {
                            attempt = attempt.saturating_add(1);
                            log(&format!("signer still unavailable ({e}); next probe in {} s", (1u64 << attempt.min(6)).min(60)));
                        }
                    }
                }
            }
            match result {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    log(&format!("SQS error ({}); retrying in {} ms", e.with_detail(), delay.as_millis()));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = terminate.recv() => break,
                        _ = interrupt.recv() => break,
                    }
                }
            }
        }
        stop(&worker)
    })
}

fn stop(worker: &Worker<'_>) -> Result<(), String> {
    let tally = &worker.tally;
    log(&format!(
        "stopping: issued {}, rejected {}, dead-lettered {}",
        tally.issued, tally.rejected, tally.dead_lettered
    ));
    Ok(())
}

/// Exponential backoff with full jitter, capped at 30 s.
fn backoff(failures: u32) -> Duration {
    let cap_ms = 30_000u64.min(250u64.saturating_mul(1u64 << failures.min(10)));
    let random = fleetpki_core::random_bytes::<8>()
        .map(u64::from_le_bytes)
        .unwrap_or(cap_ms / 2);
    Duration::from_millis(random % cap_ms.max(1))
}
