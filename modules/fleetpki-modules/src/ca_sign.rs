//! `mtls_ca_sign`: drain the CSR queue — check each request against the policy, sign what it
//! allows, record it, answer the node, and delete a CSR only once its answer is published and
//! recorded. A CA that is down simply leaves CSRs waiting in the queue.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ansible_module::{ArgumentSpec, Failure, Invocation, OptionSpec, OptionType, Outcome};
use fleetpki_aws::AwsOptions;
use fleetpki_core::drain::{DrainEnd, DrainFlow};
use fleetpki_core::layout::crash_point;
use fleetpki_core::policy::{Policy, ReasonCode};
use fleetpki_core::remote::RemoteSignError;
use fleetpki_core::sign::CaSigner;
use fleetpki_core::wire::{INSTANCE_ID_ATTRIBUTE, REASON_ATTRIBUTE};
use fleetpki_core::worker::{
    accept_pca_certificate, check, pca_intent_record, plan_pca_issuance, remote_failure,
    sign_locally, Accepted, Action, AuditRecord, Disposition, Fate, Inbound, PcaIssuance, Routes,
    Sent, Verdict,
};
use fleetpki_signers::pca::{template_for, Issuance};
use fleetpki_sqs::{Received, Sqs, SqsError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::rfc3339;
use crate::common::{aws_options, calls_json, now_unix, runtime, sqs_error, sqs_failure};
use crate::issuance_record::{GroupCommit, IssuanceRecord, RecordError};
use crate::metrics::{write_textfile, WorkerMetrics};
use crate::signer::{
    signer_options, Backend, OpenError, PcaBackend, SignerArgs, SignerKind, AWS_KMS, AWS_PCA, FILE,
};

pub const NAME: &str = "fleetpki.mtls.mtls_ca_sign";

/// The most batches a drain keeps in flight (`concurrency`): 64 × 10 requests in hand at once is
/// far past what hides a remote queue's round trips.
pub const MAX_CONCURRENCY: i64 = 64;

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new("csr_queue_url", OptionType::Str).required())
        .option(OptionSpec::new("ownca_path", OptionType::Path).required())
        .option(OptionSpec::new("ownca_privatekey_path", OptionType::Path))
        .option(OptionSpec::new("ca_chain_path", OptionType::Path).required())
        .option(OptionSpec::new("policy_path", OptionType::Path))
        .option(OptionSpec::new("policy", OptionType::Dict))
        .option(OptionSpec::new("reply_queue_prefix", OptionType::Str).default("fleetpki-reply-"))
        .option(OptionSpec::new("shared_cert_queue_url", OptionType::Str))
        .option(OptionSpec::new("dead_letter_queue_url", OptionType::Str))
        .option(OptionSpec::new("batch_size", OptionType::Int).default(10))
        .option(OptionSpec::new("wait_time_seconds", OptionType::Int).default(1))
        .option(OptionSpec::new("max_requests", OptionType::Int).default(0))
        .option(OptionSpec::new("concurrency", OptionType::Int).default(16))
        .option(OptionSpec::new("visibility_timeout", OptionType::Int).default(60))
        .option(OptionSpec::new("audit_log_path", OptionType::Path).required())
        .options(signer_options(&[
            SignerKind::File,
            SignerKind::AwsKms,
            SignerKind::AwsPca,
        ]))
        .option(OptionSpec::new("pca_template_arn", OptionType::Str))
        .option(OptionSpec::new("crl_path", OptionType::Path))
        .option(OptionSpec::new("root_crl_path", OptionType::Path))
        .option(OptionSpec::new("metrics_listen", OptionType::Str))
        .option(OptionSpec::new("metrics_textfile", OptionType::Path))
        .option(OptionSpec::new("metrics_queue_poll_interval", OptionType::Int).default(60))
        .options(aws_options())
        .mutually_exclusive(&["policy", "policy_path"])
        .required_one_of(&["policy", "policy_path"])
        .required_if("signer", FILE, &["ownca_privatekey_path"])
        .required_if("signer", AWS_KMS, &["kms_key_id"])
        .required_if("signer", AWS_PCA, &["certificate_authority_arn"])
}

#[derive(Debug, Deserialize)]
pub struct Args {
    pub csr_queue_url: String,
    pub ownca_path: String,
    pub ownca_privatekey_path: Option<String>,
    pub ca_chain_path: String,
    pub policy_path: Option<String>,
    pub policy: Option<Value>,
    pub reply_queue_prefix: String,
    pub shared_cert_queue_url: Option<String>,
    pub dead_letter_queue_url: Option<String>,
    pub batch_size: i64,
    pub wait_time_seconds: i64,
    pub max_requests: i64,
    pub concurrency: i64,
    pub visibility_timeout: i64,
    pub audit_log_path: String,
    #[serde(flatten)]
    pub signer: SignerArgs,
    pub pca_template_arn: Option<String>,
    pub crl_path: Option<String>,
    pub root_crl_path: Option<String>,
    pub metrics_listen: Option<String>,
    pub metrics_textfile: Option<String>,
    pub metrics_queue_poll_interval: i64,
    #[serde(flatten)]
    pub aws: AwsOptions,
}

impl Args {
    /// Opens the signer the options name (checking a KMS key before any request is taken).
    pub fn open_backend(&self) -> Result<Backend, OpenError> {
        Backend::open(
            &self.signer,
            &self.aws,
            &self.ownca_path,
            self.ownca_privatekey_path.as_deref(),
            &self.ca_chain_path,
            self.pca_template_arn.clone(),
        )
    }

    /// The integer options within what SQS and the drain accept.
    pub fn check_ranges(&self) -> Result<(), Failure> {
        check_range("batch_size", self.batch_size, 1, 10)?;
        check_range("wait_time_seconds", self.wait_time_seconds, 0, 20)?;
        check_range("max_requests", self.max_requests, 0, i64::MAX)?;
        check_range("concurrency", self.concurrency, 1, MAX_CONCURRENCY)?;
        check_range("visibility_timeout", self.visibility_timeout, 0, 43_200)?;
        check_range(
            "metrics_queue_poll_interval",
            self.metrics_queue_poll_interval,
            1,
            86_400,
        )
    }

    /// `metrics_listen` as an address, and a warning when it is reachable from other hosts.
    pub fn metrics_address(&self) -> Result<Option<(SocketAddr, Option<String>)>, Failure> {
        let Some(text) = &self.metrics_listen else {
            return Ok(None);
        };
        let address: SocketAddr = text.parse().map_err(|_| {
            Failure::from(ansible_module::ArgumentError::Invalid {
                name: "metrics_listen".into(),
                problem: format!("'{text}' is not an IP address and port (for example 127.0.0.1:9469 or [::1]:9469)"),
            })
        })?;
        let warning = (!address.ip().is_loopback()).then(|| {
            format!("metrics_listen {address} is not a loopback address: anyone who reaches it reads the worker's request counts and queue depths; limit it with a firewall, or listen on 127.0.0.1 and let a local Prometheus or proxy scrape it")
        });
        Ok(Some((address, warning)))
    }
}

/// `mtls_ca_sign --reason-codes`: every code a refusal can carry, and whether it goes to the
/// dead-letter queue (an integrity failure) or only to the node.
pub fn reason_codes_json() -> Value {
    Value::Array(
        ReasonCode::ALL
            .iter()
            .map(
                |code| json!({"code": code.as_str(), "dead_lettered": code.is_integrity_failure()}),
            )
            .collect(),
    )
}

fn check_range(name: &str, value: i64, low: i64, high: i64) -> Result<(), Failure> {
    if value < low || value > high {
        return Err(ansible_module::ArgumentError::Invalid {
            name: name.into(),
            problem: format!("{value} is outside {low}..{high}"),
        }
        .into());
    }
    Ok(())
}

pub fn load_policy(args: &Args) -> Result<Policy, Failure> {
    match (&args.policy_path, &args.policy) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::new(format!("cannot read the policy file {path}: {e}")))?;
            Policy::from_json(&text).map_err(|e| Failure::new(format!("{path}: {e}")))
        }
        (None, Some(value)) => Policy::from_value(value.clone()).map_err(Failure::from),
        (None, None) => Err(Failure::new(
            "one of the following is required: policy, policy_path",
        )),
    }
}

pub fn run(invocation: &Invocation) -> Result<Outcome, Failure> {
    let args: Args = invocation.args()?;
    args.check_ranges()?;
    let listen_warning = args.metrics_address()?.map(|_| {
        "metrics_listen is used by the long-running worker (`mtls_ca_sign serve`) only; a one-shot drain writes its metrics to metrics_textfile".to_string()
    });
    let policy = load_policy(&args)?;
    let backend = Arc::new(
        args.open_backend()
            .map_err(|f| signer_unavailable_at_start(&args, f))?,
    );

    let runtime = runtime()?;
    runtime.block_on(async {
        let sqs = Sqs::connect(&args.aws).await.map_err(sqs_error)?;
        let mut outcome = if invocation.check_mode {
            // Never receive in check mode: receiving raises receive counts, and repeated
            // `--check` runs would push valid CSRs into the dead-letter queue.
            let depth = sqs.depth(&args.csr_queue_url).await.map_err(|e| sqs_failure(e, &sqs))?;
            let mut outcome = Outcome::new(depth.visible > 0, format!("{} request(s) waiting; would process them", depth.visible))
                .with("queue_depth", depth.visible)
                .with("issued", 0)
                .with("rejected", 0)
                .with("dead_lettered", 0)
                .with("serials", json!([]));
            outcome.warnings = policy.warnings();
            outcome
        } else {
            let mut worker = Worker::new(&sqs, &args, policy.clone(), backend.clone()).await.map_err(|e| e.failure(&sqs))?;
            let limit = if args.max_requests == 0 { u64::MAX } else { args.max_requests as u64 };
            let mut signalled = false;
            let result = worker
                .drain(limit, args.wait_time_seconds as i32, async {
                    termination().await;
                    signalled = true;
                })
                .await;
            if signalled {
                worker.warnings.push("stopped by a signal (SIGTERM or SIGINT) after finishing the requests in hand; those not yet received wait in the queue for the next run".into());
            }
            if let Some(path) = &args.metrics_textfile {
                if result.is_ok() && worker.signer_error.is_none() {
                    worker.metrics.drained(now_unix());
                }
                if let Err(e) = worker.write_metrics_textfile(path).await {
                    worker.warnings.push(format!("the metrics were not written to {path}: {e}; the drain itself is done: make the directory writable for this user (node_exporter's textfile directory), or unset metrics_textfile"));
                }
            }
            worker.warnings.extend(listen_warning);
            let tally = &worker.tally;
            let with_tally = |mut values: serde_json::Map<String, Value>| {
                for (key, value) in [
                    ("issued", json!(tally.issued)),
                    ("rejected", json!(tally.rejected)),
                    ("dead_lettered", json!(tally.dead_lettered)),
                    ("left_for_retry", json!(tally.failed)),
                    ("serials", json!(tally.serials)),
                    ("retries", json!(tally.retries)),
                    ("signer", json!(backend.name())),
                    ("sqs_calls", calls_json(sqs.calls())),
                ] {
                    values.insert(key.into(), value);
                }
                if let Some((key, calls)) = backend.calls() {
                    values.insert(key.into(), calls);
                }
                values
            };
            if let Err(e) = result {
                let mut failure = e.failure(&sqs);
                failure.values = with_tally(failure.values);
                return Err(failure);
            }
            if let Some(error) = &worker.signer_error {
                let mut failure = Failure::new(format!(
                    "the signer is unavailable: {error}; {} request(s) stay queued for the next run",
                    tally.failed
                ));
                failure.values = with_tally(failure.values);
                return Err(failure);
            }
            let mut outcome = Outcome::new(
                tally.issued + tally.rejected + tally.dead_lettered > 0,
                format!("issued {}, rejected {}, dead-lettered {}, left for retry {}", tally.issued, tally.rejected, tally.dead_lettered, tally.failed),
            );
            outcome.values = with_tally(std::mem::take(&mut outcome.values));
            outcome.warnings = policy.warnings();
            outcome.warnings.extend(worker.warnings.clone());
            return Ok(outcome);
        };
        outcome = outcome.with("sqs_calls", calls_json(sqs.calls())).with("signer", backend.name());
        if let Some((key, calls)) = backend.calls() {
            outcome = outcome.with(key, calls); // the signer check before the queue was looked at
        }
        Ok(outcome)
    })
}

/// Resolves at the first SIGTERM or SIGINT: the one-shot drain then finishes the batches in hand
/// instead of dying between an answer and its delete. Never resolves when the handlers cannot
/// be installed (the drain then runs to its end, as before).
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// The signer failed its check before any request was received (a disabled or missing KMS
/// key, a Private CA that is not ACTIVE): nothing left the queue, so nothing was counted
/// against the requests' receive counts. Said in the words of a failure in mid-drain, with the
/// same (empty) result keys, so a playbook handles both alike.
fn signer_unavailable_at_start(args: &Args, error: OpenError) -> Failure {
    // Not an AWS answer (a missing file, a key that is not the certificate's): said as it is.
    let (failure, msg) = match error {
        OpenError::Unavailable(f) => {
            let msg = format!("the signer is unavailable: {}; no request was taken from the queue: they wait there for the next run", f.msg);
            (f, msg)
        }
        OpenError::Invalid(f) => {
            let msg = f.msg.clone();
            (f, msg)
        }
    };
    let mut out = Failure::new(msg);
    out.values = failure.values;
    for (key, value) in [
        ("signer", json!(args.signer.signer.as_str())),
        ("issued", json!(0)),
        ("rejected", json!(0)),
        ("dead_lettered", json!(0)),
        ("left_for_retry", json!(0)),
        ("serials", json!([])),
        ("retries", json!([])),
        ("sqs_calls", json!({"total": 0})),
    ] {
        out.values.insert(key.into(), value);
    }
    out
}

/// Counts of one drain.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub issued: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
    /// Left in the queue for a retry (e.g. a reply could not be published).
    pub failed: u64,
    pub serials: Vec<String>,
    /// The requests left in the queue, and why.
    pub retries: Vec<Value>,
}

/// The test-only crash points of the worker's publish path (`FLEETPKI_TEST_CRASH_AT=k`), in
/// order; the node's install has 1 to 6.
pub mod crash {
    /// A certificate's `signed` line is durable; the certificate is not sent yet.
    pub const BEFORE_ANSWER: u32 = 11;
    /// The certificate was sent; its delivery is not recorded yet.
    pub const AFTER_ANSWER: u32 = 12;
    /// The batch's last lines are durable; its requests are not deleted yet.
    pub const BEFORE_DELETE: u32 = 13;
    /// The batch's requests are deleted.
    pub const AFTER_DELETE: u32 = 14;
    pub const ALL: [u32; 4] = [BEFORE_ANSWER, AFTER_ANSWER, BEFORE_DELETE, AFTER_DELETE];
}

/// Why a drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Sqs(#[from] SqsError),
    /// Nothing described by the lines that could not be written was sent: those requests stay
    /// queued.
    #[error("{0}; nothing more was sent (every certificate already sent was recorded before it was), and the requests in hand stay queued, to be answered again: free space or fix the permissions of the record, then run again")]
    Record(#[from] RecordError),
}

impl WorkerError {
    /// The task's failure: an SQS error as amazon.aws reports one (`error`, `sqs_calls`).
    pub fn failure(self, sqs: &Sqs) -> Failure {
        match self {
            WorkerError::Sqs(e) => sqs_failure(e, sqs),
            WorkerError::Record(e) => {
                Failure::from(WorkerError::Record(e)).with("sqs_calls", calls_json(sqs.calls()))
            }
        }
    }

    /// The message with the SDK's or service's detail after it: for the service's journal,
    /// which has no `error` key to keep it in.
    pub fn with_detail(&self) -> String {
        let detail = match self {
            WorkerError::Sqs(e) => e
                .detail()
                .and_then(|d| d["message"].as_str().map(str::to_string)),
            WorkerError::Record(_) => None,
        };
        match detail {
            Some(detail) => format!("{self} (detail: {detail})"),
            None => self.to_string(),
        }
    }

    /// Whether waiting cannot help (the service stops and says why instead of retrying).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            WorkerError::Record(_) | WorkerError::Sqs(SqsError::Config(_))
        )
    }
}

pub struct Worker<'a> {
    sqs: &'a Sqs,
    args: &'a Args,
    /// Owned, so a long-running worker can swap in a reloaded policy; shared with the threads
    /// that judge the batches in flight.
    pub policy: Arc<Policy>,
    backend: Arc<Backend>,
    /// KMS signing waits on the network, not the CPU: a batch is signed on this wider pool.
    remote_pool: Option<rayon::ThreadPool>,
    /// Set when the signer failed: the drain stops, the requests in hand go back to the queue.
    pub signer_error: Option<RemoteSignError>,
    /// Service mode also writes each record line to stdout (for journald).
    pub audit_to_stdout: bool,
    record: GroupCommit,
    routes: Arc<Routes>,
    pub tally: Tally,
    pub warnings: Vec<String>,
    /// The CSR queue's depth when the worker started, for its first drain's flow control.
    waiting_at_start: Option<u64>,
    /// Counted whether or not anything exposes them: a few atomics per request.
    pub metrics: Arc<WorkerMetrics>,
}

/// What one batch adds to the drain's counts, warnings and signer state; the worker adds each
/// batch's outcome to its own (`Worker::absorb`).
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub tally: Tally,
    pub warnings: Vec<String>,
    /// The signer failed on a request of this batch.
    pub signer_error: Option<RemoteSignError>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.issued += other.issued;
        self.rejected += other.rejected;
        self.dead_lettered += other.dead_lettered;
        self.failed += other.failed;
        self.serials.extend(other.serials);
        self.retries.extend(other.retries);
    }
}

/// One request of a batch while its disposition runs.
struct Slot {
    disposition: Disposition,
    /// Its line waiting for the batch's next commit: the request waits with it.
    pending: Option<AuditRecord>,
    delete: bool,
    done: bool,
}

impl<'a> Worker<'a> {
    pub async fn new(
        sqs: &'a Sqs,
        args: &'a Args,
        policy: Policy,
        backend: Arc<Backend>,
    ) -> Result<Worker<'a>, WorkerError> {
        // Before anything is received: a worker that cannot record must not take requests.
        let record = IssuanceRecord::open(Path::new(&args.audit_log_path))?;
        // A queue of another region would only ever answer "does not exist".
        let queues = [
            Some(&args.csr_queue_url),
            args.dead_letter_queue_url.as_ref(),
            args.shared_cert_queue_url.as_ref(),
        ];
        for url in queues.into_iter().flatten() {
            sqs.check_region(url)?;
        }
        // One call: the dead-letter queue the RedrivePolicy names, and how many requests wait
        // (which bounds the receives the first drain keeps in flight).
        let csr_queue = sqs.redrive_and_depth(&args.csr_queue_url).await?;
        let dead_letter_queue = match (
            &args.dead_letter_queue_url,
            csr_queue.dead_letter_queue_name,
        ) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(name)) => sqs.queue_url(&name).await?,
            (None, None) => None,
        };
        let mut warnings = Vec::new();
        if dead_letter_queue.is_none() {
            warnings.push("the CSR queue has no dead-letter queue (no RedrivePolicy, no dead_letter_queue_url): unprocessable messages stay in the queue".into());
        }
        let remote_pool = match &*backend {
            Backend::SigningKey { kms: Some(_), .. } => rayon::ThreadPoolBuilder::new()
                .num_threads(args.batch_size.clamp(1, 10) as usize)
                .thread_name(|i| format!("kms-sign-{i}"))
                .build()
                .ok(),
            _ => None,
        };
        let routes = Routes {
            csr_queue_url: args.csr_queue_url.clone(),
            reply_queue_prefix: args.reply_queue_prefix.clone(),
            shared_cert_queue_url: args.shared_cert_queue_url.clone(),
            dead_letter_queue_url: dead_letter_queue,
            chain_pem: backend.chain_pem().to_string(),
            signer: backend.name(),
            signer_ref: backend.signer_ref().map(str::to_string),
        };
        let metrics = WorkerMetrics::new(backend.name());
        Ok(Worker {
            sqs,
            args,
            policy: Arc::new(policy),
            backend,
            remote_pool,
            signer_error: None,
            audit_to_stdout: false,
            record: GroupCommit::new(record),
            routes: Arc::new(routes),
            waiting_at_start: csr_queue.visible,
            tally: Tally::default(),
            warnings,
            metrics,
        })
    }

    /// Refreshes the gauges read from elsewhere: both queues' depth (one GetQueueAttributes
    /// each, counted with the other calls), the CA certificates' and the CRLs' dates.
    pub async fn poll_gauges(&self) -> Result<(), String> {
        let metrics = &self.metrics;
        metrics.chain(self.backend.chain_pem());
        let crls = metrics.crls(
            self.args.crl_path.as_deref(),
            self.args.root_crl_path.as_deref(),
        );
        let mut problems: Vec<String> = crls.err().map(|e| e.to_string()).into_iter().collect();
        let queues = [
            ("csr", Some(&self.routes.csr_queue_url)),
            ("dead_letter", self.routes.dead_letter_queue_url.as_ref()),
        ];
        for (name, url) in queues {
            let Some(url) = url else { continue };
            match self.sqs.depth(url).await {
                Ok(depth) => metrics.queue_depth(name, depth),
                Err(e) => problems.push(e.to_string()),
            }
        }
        metrics.sqs_calls(&self.sqs.calls());
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }

    /// The one-shot drain's metrics, for node_exporter's textfile collector.
    async fn write_metrics_textfile(&self, path: &str) -> Result<(), String> {
        let polled = self.poll_gauges().await;
        write_textfile(Path::new(path), &self.metrics.encode()).map_err(|e| e.to_string())?;
        polled.map_err(|e| format!("written, but without some gauges ({e})"))
    }

    /// Receives and processes batches, `concurrency` of them in flight, until the queue is
    /// empty, `limit` requests were received, a batch failed or the signer did, or `stop`
    /// resolves (a signal). A stop cancels only receives (which lose nothing); every batch in
    /// hand is finished: answered, recorded and deleted. Receives long-poll up to `wait` s.
    pub async fn drain(
        &mut self,
        limit: u64,
        wait: i32,
        stop: impl Future<Output = ()>,
    ) -> Result<DrainEnd, WorkerError> {
        let mut flow = DrainFlow::new(
            limit,
            self.args.batch_size as u32,
            self.args.concurrency as usize,
        );
        if let Some(waiting) = self.waiting_at_start.take() {
            flow = flow.expecting(waiting);
        }
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        // Each ended batch's outcome, absorbed once the batches no longer borrow the worker.
        let mut ended = Vec::new();
        let mut error = None;
        {
            let this = &*self;
            let mut batches = FuturesUnordered::new();
            let mut stop = std::pin::pin!(stop);
            let mut signalled = false;
            loop {
                while let Some(asked) = flow.next_batch() {
                    let mut stopped = stopped.clone();
                    batches.push(async move {
                        let received = tokio::select! {
                            biased;
                            _ = stopped.wait_for(|stop| *stop) => Ok(Vec::new()),
                            received = this.receive(asked as i32, wait) => received,
                        };
                        let mut outcome = BatchOutcome::default();
                        let result = match received {
                            Ok(batch) => this
                                .process(&batch, &mut outcome)
                                .await
                                .map(|()| batch.len()),
                            Err(e) => Err(WorkerError::from(e)),
                        };
                        (asked, outcome, result)
                    });
                }
                if flow.is_over() {
                    break;
                }
                tokio::select! {
                    _ = &mut stop, if !signalled => {
                        signalled = true;
                        flow.stop();
                        stopping.send_replace(true);
                    }
                    Some((asked, outcome, result)) = batches.next() => {
                        let failed = outcome.signer_error.is_some() || result.is_err();
                        ended.push(outcome);
                        match result {
                            Ok(received) => flow.batch_ended(asked, received),
                            Err(e) => {
                                flow.batch_ended(asked, 0);
                                error.get_or_insert(e);
                            }
                        }
                        if failed {
                            // The other batches in hand finish; no new one starts.
                            flow.stop();
                            stopping.send_replace(true);
                        }
                    }
                }
            }
        }
        for outcome in ended {
            self.absorb(outcome);
        }
        match error {
            Some(e) => Err(e),
            None => Ok(flow.end().unwrap_or(DrainEnd::Stopped)),
        }
    }

    /// Adds a batch's outcome to the worker's: counts, warnings, and the first signer error.
    pub fn absorb(&mut self, outcome: BatchOutcome) {
        self.tally.add(outcome.tally);
        self.warnings.extend(outcome.warnings);
        if self.signer_error.is_none() {
            self.signer_error = outcome.signer_error;
        }
    }

    /// Receives up to `max` requests. Cancelling this loses nothing (a service stops here).
    pub async fn receive(&self, max: i32, wait: i32) -> Result<Vec<Received>, SqsError> {
        self.sqs
            .receive(
                &self.args.csr_queue_url,
                max,
                wait,
                Some(self.args.visibility_timeout as i32),
            )
            .await
    }

    /// Processes received requests: checking and signing run in parallel on the cores; each
    /// request's actions are performed in the core's order, concurrently with the other
    /// requests'. A record line is a barrier: the batch's requests run to their next line, the
    /// lines are committed together (one fsync), and only then do they go on. The requests the
    /// core deletes are deleted in one batch call at the end. Not to be cancelled midway.
    pub async fn process(
        &self,
        batch: &[Received],
        outcome: &mut BatchOutcome,
    ) -> Result<(), WorkerError> {
        if batch.is_empty() {
            return Ok(());
        }
        let judged = match &*self.backend {
            Backend::SigningKey { signer, .. } => self.judge_off_thread(signer, batch).await,
            Backend::PrivateCa(pca) => self.issue_batch_through_pca(pca, batch).await?,
        };
        let verdicts: Vec<Verdict> = judged
            .into_iter()
            .map(|(verdict, took)| {
                if matches!(verdict, Verdict::Sign { .. }) {
                    self.metrics.signed(took);
                }
                verdict
            })
            .collect();
        for verdict in &verdicts {
            if let Verdict::Sign { warnings, .. } = verdict {
                outcome.warnings.extend(warnings.iter().cloned());
            }
        }
        let mut slots: Vec<Slot> = batch
            .iter()
            .zip(verdicts)
            .map(|(received, verdict)| Slot {
                disposition: Disposition::new(verdict, &self.routes, &inbound(received)),
                pending: None,
                delete: false,
                done: false,
            })
            .collect();
        loop {
            futures_util::future::join_all(
                slots
                    .iter_mut()
                    .zip(batch)
                    .filter(|(slot, _)| !slot.done)
                    .map(|(slot, received)| self.advance(received, slot)),
            )
            .await;
            let lines: Vec<AuditRecord> =
                slots.iter_mut().filter_map(|s| s.pending.take()).collect();
            if lines.is_empty() {
                break;
            }
            self.commit(lines).await?;
        }
        let mut done = Vec::new();
        for (received, slot) in batch.iter().zip(&slots) {
            if slot.delete {
                done.push(received.receipt_handle.clone());
            }
            self.count(received, &slot.disposition, outcome);
        }
        crash_point(crash::BEFORE_DELETE);
        // Delete only what was settled; a failed delete means a duplicate answer later, which
        // the node discards (it no longer waits for that request id).
        let failed = self
            .sqs
            .delete_batch(&self.args.csr_queue_url, &done)
            .await?;
        crash_point(crash::AFTER_DELETE);
        if !failed.is_empty() {
            outcome.warnings.push(format!(
                "{} processed request(s) could not be deleted and will be answered again",
                failed.len()
            ));
        }
        Ok(())
    }

    /// Judges a batch on rayon's threads (a KMS key's on its wider pool) while this thread goes
    /// on with the SQS calls of the other batches in flight.
    async fn judge_off_thread(
        &self,
        signer: &Arc<CaSigner>,
        batch: &[Received],
    ) -> Vec<(Verdict, Duration)> {
        let (policy, routes, signer) = (self.policy.clone(), self.routes.clone(), signer.clone());
        let batch = batch.to_vec();
        let (done, judged) = tokio::sync::oneshot::channel();
        let job = move || {
            let _ = done.send(judge_batch(&policy, &routes, &signer, &batch));
        };
        match &self.remote_pool {
            Some(pool) => pool.spawn(job),
            None => rayon::spawn(job),
        }
        // The job always sends (with panic=abort a panic ends the process).
        judged.await.unwrap_or_default()
    }

    /// Performs one request's actions in its disposition's order until it reaches a record line
    /// (left in `slot.pending` for the batch's commit) or its end; only the delete is left for
    /// the batch call.
    async fn advance(&self, received: &Received, slot: &mut Slot) {
        let disposition = &mut slot.disposition;
        while let Some(action) = disposition.next_action() {
            match action {
                Action::Record(line) => {
                    slot.pending = Some(*line);
                    return;
                }
                Action::Publish {
                    queue,
                    body,
                    instance_id,
                } => {
                    let certificate = disposition.issued().is_some();
                    if certificate {
                        crash_point(crash::BEFORE_ANSWER);
                    }
                    let sent = self
                        .sqs
                        .send(&queue, &body, &[(INSTANCE_ID_ATTRIBUTE, &instance_id)])
                        .await;
                    if certificate {
                        crash_point(crash::AFTER_ANSWER);
                    }
                    disposition.sent(sent_result(sent));
                }
                Action::DeadLetter { queue, reason } => {
                    let mut attributes = vec![(REASON_ATTRIBUTE, reason.as_str())];
                    if let Some(id) = received.attributes.get(INSTANCE_ID_ATTRIBUTE) {
                        attributes.push((INSTANCE_ID_ATTRIBUTE, id.as_str()));
                    }
                    let sent = self.sqs.send(&queue, &received.body, &attributes).await;
                    disposition.sent(sent_result(sent));
                }
                Action::Delete => slot.delete = true,
                Action::HandBack => {
                    // Visible again at once: the next drain (or the service, once its probe
                    // passes) takes it up; a failed hand-back only delays it by the timeout.
                    let _ = self
                        .sqs
                        .hand_back(&self.args.csr_queue_url, &received.receipt_handle)
                        .await;
                }
            }
        }
        slot.done = true;
    }

    /// Makes `lines` durable in the issuance record (one fsync, shared with the other batches
    /// committing meanwhile), stamped with this worker's clock; in service mode they go to
    /// stdout too.
    async fn commit(&self, lines: Vec<AuditRecord>) -> Result<(), RecordError> {
        let written = self.record.commit(lines, now_rfc3339).await?;
        if self.audit_to_stdout {
            for line in written {
                println!("{line}");
            }
        }
        Ok(())
    }

    fn count(&self, received: &Received, disposition: &Disposition, outcome: &mut BatchOutcome) {
        let message = disposition.message();
        if let Some(fate) = disposition.fate() {
            let queued_for = received.sent_at_ms.and_then(|sent| {
                let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                u64::try_from(now_ms - i128::from(sent))
                    .ok()
                    .map(Duration::from_millis)
            });
            self.metrics.settled(fate, queued_for);
            if matches!(fate, Fate::SignerUnavailable(_)) {
                self.metrics.signer_failed(now_unix());
            }
        }
        match disposition.fate() {
            Some(Fate::Issued(issued)) => {
                outcome.tally.issued += 1;
                outcome.tally.serials.push(issued.serial_hex.clone());
            }
            Some(Fate::Rejected(_)) => outcome.tally.rejected += 1,
            Some(Fate::DeadLettered(_)) => outcome.tally.dead_lettered += 1,
            Some(Fate::Retry(warning)) => {
                outcome.tally.failed += 1;
                outcome.warnings.push(warning.clone());
            }
            Some(Fate::SignerUnavailable(error)) => {
                outcome.tally.failed += 1;
                outcome.tally.retries.push(json!({
                    "message_id": received.message_id,
                    "instance_id": message.map(|m| m.instance_id.clone()),
                    "request_id": message.and_then(|m| m.request_id.clone()),
                    "reason": format!("signer_unavailable: {error}"),
                }));
                outcome.signer_error = Some(error.clone());
            }
            None => {}
        }
    }

    /// Judges a batch with AWS Private CA as the issuer: the checks on the cores; the intents
    /// recorded (one commit) before any `IssueCertificate`; then the issuances concurrently.
    async fn issue_batch_through_pca(
        &self,
        backend: &PcaBackend,
        batch: &[Received],
    ) -> Result<Vec<(Verdict, Duration)>, WorkerError> {
        let planned = plan_batch_through_pca(&self.policy, &self.routes, backend, batch);
        let intents: Vec<AuditRecord> = planned
            .iter()
            .zip(batch)
            .filter_map(|(plan, received)| match plan {
                Ok((accepted, issuance)) => Some(pca_intent_record(
                    accepted,
                    issuance,
                    &inbound(received),
                    &self.routes,
                )),
                Err(_) => None,
            })
            .collect();
        self.commit(intents).await?;
        Ok(
            futures_util::future::join_all(planned.into_iter().map(|plan| async move {
                let started = Instant::now();
                let verdict = match plan {
                    Ok((accepted, issuance)) => {
                        issue_through_pca(backend, accepted, issuance).await
                    }
                    Err(refusal) => refusal,
                };
                (verdict, started.elapsed())
            }))
            .await,
        )
    }
}

fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// What the checks read of a received message.
fn inbound(received: &Received) -> Inbound<'_> {
    Inbound {
        message_id: &received.message_id,
        body: &received.body,
        instance_id_attribute: received
            .attributes
            .get(INSTANCE_ID_ATTRIBUTE)
            .map(String::as_str),
        sender_id: received.sender_id.as_deref(),
    }
}

fn sent_result<T>(result: Result<T, SqsError>) -> Sent {
    match result {
        Ok(_) => Sent::Delivered,
        Err(SqsError::QueueMissing(_)) => Sent::QueueMissing,
        Err(e) => Sent::Failed(e.to_string()),
    }
}

/// Judges a batch on all cores (CPU work: parse, verify, policy, sign), on rayon's pool of one
/// thread per core, kept between batches (spawning threads per batch of 10 cost ~10 %).
pub fn judge_batch(
    policy: &Policy,
    routes: &Routes,
    signer: &CaSigner,
    batch: &[Received],
) -> Vec<(Verdict, Duration)> {
    use rayon::prelude::*;
    batch
        .par_iter()
        .map(|r| {
            let started = Instant::now();
            (judge(policy, routes, signer, r), started.elapsed())
        })
        .collect()
}

/// Everything that decides on one request: limits, parsing, proof of possession, policy, and
/// the signature. No I/O but a remote key's.
pub fn judge(policy: &Policy, routes: &Routes, signer: &CaSigner, received: &Received) -> Verdict {
    match check(policy, routes, &inbound(received), now_unix()) {
        Ok(accepted) => sign_locally(signer, accepted, time::OffsetDateTime::now_utc()),
        Err(refusal) => refusal,
    }
}

/// The checks of a batch for AWS Private CA (on the cores) and, for each accepted request, the
/// issuance to ask for.
#[allow(clippy::result_large_err)]
fn plan_batch_through_pca(
    policy: &Policy,
    routes: &Routes,
    backend: &PcaBackend,
    batch: &[Received],
) -> Vec<Result<(Accepted, PcaIssuance), Verdict>> {
    use rayon::prelude::*;
    let now = now_unix();
    let checked: Vec<Result<Accepted, Verdict>> = batch
        .par_iter()
        .map(|r| check(policy, routes, &inbound(r), now))
        .collect();
    checked
        .into_iter()
        .map(|c| {
            let accepted = c?;
            match plan_pca_issuance(
                &accepted,
                backend.ca.not_after,
                time::OffsetDateTime::now_utc(),
            ) {
                Ok(issuance) => Ok((accepted, issuance)),
                Err(rejection) => Err(Verdict::Refuse {
                    message: Some(accepted.message),
                    rejection,
                }),
            }
        })
        .collect()
}

/// One issuance by Private CA: what to ask for, and whether what comes back may be published,
/// are the core's (`plan_pca_issuance`, `accept_pca_certificate`); here only the calls.
async fn issue_through_pca(
    backend: &PcaBackend,
    accepted: Accepted,
    issuance: PcaIssuance,
) -> Verdict {
    let (pca, arn, algorithm) = (backend.pca.clone(), backend.arn.clone(), backend.algorithm);
    let template = backend
        .template_arn
        .clone()
        .unwrap_or_else(|| template_for(accepted.grant.profile).to_string());
    let csr_pem = accepted.message.csr_pem.clone();
    let asked = issuance.clone();
    let issued = backend
        .runtime
        .spawn_on(async move {
            let request = Issuance {
                csr_pem: &csr_pem,
                not_before_unix: asked.not_before_unix,
                not_after_unix: asked.not_after_unix,
                template_arn: &template,
                idempotency_token: &asked.idempotency_token,
            };
            pca.issue(&arn, algorithm, &request).await
        })
        .await;
    match issued {
        Ok((certificate_arn, pem)) => accept_pca_certificate(
            accepted,
            &issuance,
            certificate_arn,
            pem,
            &backend.chain_pem,
            std::time::SystemTime::now(),
        ),
        Err(error) => remote_failure(accepted.message, error),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_of_the_spec_reaches_args() {
        crate::common::assert_args_cover_spec::<super::Args>(&super::spec());
    }
}
