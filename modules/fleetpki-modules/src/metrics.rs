//! Prometheus series: the CA worker's ([`WorkerMetrics`]), served by `mtls_ca_sign serve` on
//! `metrics_listen` or written after a one-shot drain to `metrics_textfile`, in the text format
//! node_exporter's textfile collector reads. Labels take only bounded values (outcomes, reason
//! codes, queue and CA names): never an instance id, so a fleet of 100,000 nodes adds no series.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetpki_core::certs::{load_certificates, parse_certificate_der};
use fleetpki_core::crl::{parse_crl, split_bundle};
use fleetpki_core::layout::{write_atomic, FilePerms};
use fleetpki_core::status::NodeStatus;
use fleetpki_core::worker::Fate;
use fleetpki_core::PkiError;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type TimestampGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    ca: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    signer: &'static str,
}

/// The outcome and reason code a request's fate is counted under. Pure: unit-tested below.
pub fn fate_labels(fate: &Fate) -> (&'static str, &'static str) {
    match fate {
        Fate::Issued(_) => ("issued", ""),
        Fate::Rejected(rejection) => ("rejected", rejection.code.as_str()),
        Fate::DeadLettered(rejection) => ("dead_lettered", rejection.code.as_str()),
        Fate::Retry(_) => ("retry", "not_answered"),
        Fate::SignerUnavailable(_) => ("retry", "signer_unavailable"),
    }
}

/// Which CA a chain certificate is, by its place: the first signs nodes, the last is the root.
pub const CAS: [&str; 2] = ["intermediate", "root"];

/// The CA worker's series. Cheap to update (atomics; a histogram takes a short lock).
pub struct WorkerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    sign_seconds: Histogram,
    request_seconds: Histogram,
    queue_messages: Family<QueueLabels, Gauge>,
    sqs_calls: Family<CallLabels, Counter>,
    signer_up: Gauge,
    signer_errors: Counter,
    signer_last_error: TimestampGauge,
    ca_not_after: Family<CaLabels, TimestampGauge>,
    crl_next_update: Family<CaLabels, TimestampGauge>,
    last_drain: TimestampGauge,
}

impl WorkerMetrics {
    pub fn new(signer: &'static str) -> Arc<Self> {
        let mut registry = Registry::with_prefix("fleetpki_ca");
        let requests = Family::<RequestLabels, Counter>::default();
        // Present from the start, so `rate()` and `increase()` see the first issuance.
        drop(requests.get_or_create(&RequestLabels {
            outcome: "issued",
            reason: "",
        }));
        registry.register(
            "requests",
            "Requests taken from the CSR queue, by outcome (issued, rejected, dead_lettered, retry) and reason code",
            requests.clone(),
        );
        // 0.5 ms .. ~16 s: a local P-256 signature up to a slow KMS call.
        let sign_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "sign_duration_seconds",
            "Time to check and sign one request (parsing, proof of possession, policy, signature)",
            sign_seconds.clone(),
        );
        // 10 ms .. ~2.8 h: a request sent while the worker was down waits in the queue.
        let request_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival in the CSR queue to its settlement (answered and deleted)",
            request_seconds.clone(),
        );
        let queue_messages = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_messages",
            "Approximate messages in the CSR queue and its dead-letter queue, by state (visible, in_flight, delayed), as last polled",
            queue_messages.clone(),
        );
        let sqs_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "sqs_calls",
            "SQS calls made by this worker, by action (the queue-depth polls are GetQueueAttributes)",
            sqs_calls.clone(),
        );
        let signer_up = Gauge::default();
        signer_up.set(1);
        registry.register(
            "signer_up",
            "1 while the signer signs, 0 from a failed signature until a probe succeeds",
            signer_up.clone(),
        );
        let signer_errors = Counter::default();
        registry.register(
            "signer_errors",
            "Signer failures (a KMS or Private CA call that failed)",
            signer_errors.clone(),
        );
        let signer_last_error = TimestampGauge::default();
        registry.register(
            "signer_last_error_timestamp_seconds",
            "When the signer last failed (Unix time; 0 if never)",
            signer_last_error.clone(),
        );
        let ca_not_after = Family::<CaLabels, TimestampGauge>::default();
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "notAfter of the issuing intermediate and of the root (Unix time)",
            ca_not_after.clone(),
        );
        let crl_next_update = Family::<CaLabels, TimestampGauge>::default();
        registry.register(
            "crl_next_update_timestamp_seconds",
            "nextUpdate of the intermediate's and the root's CRL (Unix time), read from crl_path and root_crl_path",
            crl_next_update.clone(),
        );
        let last_drain = TimestampGauge::default();
        registry.register(
            "last_drain_success_timestamp_seconds",
            "When the worker last received from the CSR queue and settled what it got without error (Unix time)",
            last_drain.clone(),
        );
        registry.register(
            "build",
            "The worker's version and signer kind",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                signer,
            }),
        );
        Arc::new(WorkerMetrics {
            registry,
            requests,
            sign_seconds,
            request_seconds,
            queue_messages,
            sqs_calls,
            signer_up,
            signer_errors,
            signer_last_error,
            ca_not_after,
            crl_next_update,
            last_drain,
        })
    }

    /// One request settled: its fate, and how long it was in the queue (from its
    /// `SentTimestamp`) when it was.
    pub fn settled(&self, fate: &Fate, queued_for: Option<Duration>) {
        let (outcome, reason) = fate_labels(fate);
        self.requests
            .get_or_create(&RequestLabels { outcome, reason })
            .inc();
        if let Some(queued_for) = queued_for {
            self.request_seconds.observe(queued_for.as_secs_f64());
        }
    }

    pub fn signed(&self, took: Duration) {
        self.sign_seconds.observe(took.as_secs_f64());
    }

    pub fn signer_failed(&self, at_unix: i64) {
        self.signer_up.set(0);
        self.signer_errors.inc();
        self.signer_last_error.set(at_unix as f64);
    }

    pub fn signer_recovered(&self) {
        self.signer_up.set(1);
    }

    pub fn drained(&self, at_unix: i64) {
        self.last_drain.set(at_unix as f64);
    }

    pub fn queue_depth(&self, queue: &'static str, depth: fleetpki_sqs::QueueDepth) {
        for (state, value) in [
            ("visible", depth.visible),
            ("in_flight", depth.in_flight),
            ("delayed", depth.delayed),
        ] {
            self.queue_messages
                .get_or_create(&QueueLabels { queue, state })
                .set(value as i64);
        }
    }

    /// The SQS client's running call counts (it counts every call it makes).
    pub fn sqs_calls(&self, calls: &std::collections::BTreeMap<String, u64>) {
        for (action, count) in calls {
            let counter = self.sqs_calls.get_or_create(&CallLabels {
                action: action.clone(),
            });
            let seen = counter.get();
            if *count > seen {
                counter.inc_by(count - seen);
            }
        }
    }

    /// notAfter of the chain's first (issuing) and last (root) certificates.
    pub fn chain(&self, chain_pem: &str) {
        let certificates = load_certificates(chain_pem);
        let ends = [certificates.first(), certificates.last()];
        for (ca, der) in CAS.into_iter().zip(ends) {
            if let Some(info) = der.and_then(|d| parse_certificate_der(d, ca).ok()) {
                self.ca_not_after
                    .get_or_create(&CaLabels { ca })
                    .set(info.not_after.unix_timestamp() as f64);
            }
        }
    }

    /// nextUpdate of the CRLs: `crl_path` holds the intermediate's (first, in a bundle) and may
    /// hold the root's after it; `root_crl_path` the root's (it wins over the bundle's).
    pub fn crls(
        &self,
        crl_path: Option<&str>,
        root_crl_path: Option<&str>,
    ) -> Result<(), PkiError> {
        // A CRL not written yet (the first drain runs before the first CRL) is left out.
        let read = |path: &str| match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(PkiError::io(path, e)),
        };
        let mut found: Vec<(&'static str, String)> = Vec::new();
        if let Some(path) = crl_path {
            if let Some((first, rest)) = split_bundle(&read(path)?)? {
                found.push(("intermediate", first));
                if !rest.trim().is_empty() && root_crl_path.is_none() {
                    found.push(("root", rest));
                }
            }
        }
        if let Some(path) = root_crl_path {
            if let Some((first, _)) = split_bundle(&read(path)?)? {
                found.push(("root", first));
            }
        }
        for (ca, pem) in found {
            if let Some(next_update) = parse_crl(&pem)?.next_update {
                self.crl_next_update
                    .get_or_create(&CaLabels { ca })
                    .set(next_update.unix_timestamp() as f64);
            }
        }
        Ok(())
    }

    /// The exposition, in Prometheus' text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
    reason: String,
}

/// A node's series, for node_exporter's textfile collector (`metrics_textfile` of
/// mtls_csr_submit and mtls_cert_fetch). A series whose fact is unknown (no certificate, no
/// request pending) is left out, so an alert on it cannot fire on a made-up 0.
pub fn node_exposition(status: &NodeStatus, now_unix: i64) -> String {
    let mut registry = Registry::with_prefix("fleetpki_node");
    let timestamp = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let gauge = TimestampGauge::default();
        gauge.set(value as f64);
        registry.register(name, help, gauge);
    };
    if let Some(cert) = &status.certificate {
        timestamp(
            &mut registry,
            "certificate_expiration_timestamp_seconds",
            "notAfter of the installed certificate (Unix time)",
            cert.not_after.unix_timestamp(),
        );
        timestamp(
            &mut registry,
            "certificate_not_before_timestamp_seconds",
            "notBefore of the installed certificate (Unix time)",
            cert.not_before.unix_timestamp(),
        );
    }
    if let Some(due) = status.renewal_due {
        timestamp(
            &mut registry,
            "certificate_renewal_timestamp_seconds",
            "When the node renews the installed certificate (renew_before and the host's jitter; Unix time)",
            due.unix_timestamp(),
        );
    }
    if let Some(pending) = &status.pending {
        timestamp(
            &mut registry,
            "request_pending_since_timestamp_seconds",
            "When the request waiting for its certificate was sent (Unix time); absent when none waits",
            pending.submitted_at,
        );
    }
    if let Some(result) = &status.last_result {
        registry.register(
            "last_result",
            "The result of the last fetch that had a request to fetch (installed, pending, refused, failed, or no_request when a lost reply queue ended it) and, for a refusal, its reason code",
            Info::new(ResultLabels {
                result: result.clone(),
                reason: status.last_reason_code().unwrap_or_default().to_string(),
            }),
        );
    }
    if let Some(at) = status.last_result_at {
        timestamp(
            &mut registry,
            "last_result_timestamp_seconds",
            "Since when the last result holds (Unix time)",
            at,
        );
    }
    timestamp(
        &mut registry,
        "metrics_written_timestamp_seconds",
        "When this file was written, at the end of the node's last run (Unix time)",
        now_unix,
    );
    let mut text = String::new();
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// Writes an exposition for node_exporter's textfile collector: atomically (the collector never
/// reads half a file), world-readable like the collector's other files.
pub fn write_textfile(path: &Path, text: &str) -> Result<(), PkiError> {
    write_atomic(
        path,
        text.as_bytes(),
        &FilePerms::private(None, None, 0o644),
    )
}

/// Serves `GET /metrics` (any path, in fact: one page) on `address` until the runtime ends.
pub async fn serve_http(
    address: SocketAddr,
    metrics: Arc<WorkerMetrics>,
) -> std::io::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let body = metrics.encode();
                    async move {
                        hyper::Response::builder()
                            .header("content-type", prometheus_text::CONTENT_TYPE)
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                // A scraper that hangs up early is its own business.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetpki_core::policy::ReasonCode;
    use fleetpki_core::reason::Rejection;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.split_once(' ').map(|(name, _)| name) == Some(series))
            .and_then(|l| l.rsplit(' ').next())
    }

    #[test]
    fn every_fate_counts_under_its_outcome_and_reason_code() {
        let rejected = Fate::Rejected(Rejection::new(ReasonCode::SanNotAllowed, "x"));
        let dead = Fate::DeadLettered(Rejection::new(ReasonCode::CsrSignatureInvalid, "x"));
        assert_eq!(fate_labels(&rejected), ("rejected", "san_not_allowed"));
        assert_eq!(
            fate_labels(&dead),
            ("dead_lettered", "csr_signature_invalid")
        );
        assert_eq!(
            fate_labels(&Fate::Retry("no reply queue".into())),
            ("retry", "not_answered")
        );
        let metrics = WorkerMetrics::new("file");
        metrics.settled(&rejected, Some(Duration::from_millis(30)));
        metrics.settled(&rejected, None);
        metrics.settled(&dead, None);
        let text = metrics.encode();
        assert_eq!(
            sample(
                &text,
                r#"fleetpki_ca_requests_total{outcome="rejected",reason="san_not_allowed"}"#
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"fleetpki_ca_requests_total{outcome="issued",reason=""}"#
            ),
            Some("0")
        );
        assert_eq!(
            sample(&text, "fleetpki_ca_request_duration_seconds_count"),
            Some("1")
        );
        assert!(text.contains("# TYPE fleetpki_ca_requests_total counter"));
        assert!(
            text.contains(r#"fleetpki_ca_build_info{version=""#),
            "{text}"
        );
    }

    #[test]
    fn a_node_without_certificate_or_request_exports_no_made_up_dates() {
        use fleetpki_core::layout::{NodeState, RecordedRefusal};
        let state = NodeState {
            last_result: Some("refused".into()),
            last_result_at: Some(1_700_000_100),
            last_refusal: Some(RecordedRefusal {
                request_id: "req-1".into(),
                reason_code: "san_not_allowed".into(),
                message: "refused".into(),
                at: 1_700_000_000,
            }),
            renew_before: Some("30d".into()),
        };
        let status = NodeStatus::new("i-1", None, None, state);
        let text = node_exposition(&status, 1_700_000_200);
        assert!(!text.contains("certificate_"), "{text}");
        assert!(!text.contains("request_pending"), "{text}");
        assert_eq!(
            sample(
                &text,
                r#"fleetpki_node_last_result_info{result="refused",reason="san_not_allowed"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(&text, "fleetpki_node_last_result_timestamp_seconds"),
            Some("1700000100.0")
        );
    }

    #[test]
    fn signer_state_and_call_counts_follow_what_they_are_told() {
        let metrics = WorkerMetrics::new("aws_kms");
        metrics.signer_failed(1_700_000_000);
        let mut calls = std::collections::BTreeMap::new();
        calls.insert("ReceiveMessage".to_string(), 3u64);
        metrics.sqs_calls(&calls);
        calls.insert("ReceiveMessage".to_string(), 5u64);
        metrics.sqs_calls(&calls);
        let text = metrics.encode();
        assert_eq!(sample(&text, "fleetpki_ca_signer_up"), Some("0"));
        assert_eq!(sample(&text, "fleetpki_ca_signer_errors_total"), Some("1"));
        assert_eq!(
            sample(&text, "fleetpki_ca_signer_last_error_timestamp_seconds"),
            Some("1700000000.0")
        );
        assert_eq!(
            sample(
                &text,
                r#"fleetpki_ca_sqs_calls_total{action="ReceiveMessage"}"#
            ),
            Some("5")
        );
        metrics.signer_recovered();
        assert_eq!(
            sample(&metrics.encode(), "fleetpki_ca_signer_up"),
            Some("1")
        );
    }
}
