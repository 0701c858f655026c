//! `mtls_cert_fetch`: wait for this node's certificate, check it, install it atomically.
//! A certificate is installed only if it is for the pending key, names and profile, answers the
//! pending request, and validates against the pinned CA alone; anything else is a warning and
//! leaves the installed pair untouched.

use std::time::{Duration, Instant, SystemTime};

use ansible_module::{ArgumentSpec, Failure, Invocation, OptionSpec, OptionType, Outcome};
use fleetpki_aws::AwsOptions;
use fleetpki_core::certs::{
    check_issued_certificate, load_certificates, CertRejection, Expectation,
};
use fleetpki_core::keys::{load_private_key, public_key_spki};
use fleetpki_core::layout::{
    crash_point, FilePerms, Layout, PendingRequest, RecordedRefusal, CERT_FILE, CHAIN_FILE,
    FULLCHAIN_FILE, KEY_FILE, LOCK_WAIT,
};
use fleetpki_core::names::parse_names;
use fleetpki_core::node::{
    judge_reply, not_yet_valid_msg, valid_later, Pending, Reply, ReplyDecision,
};
use fleetpki_core::policy::is_valid_instance_id;
use fleetpki_core::renewal::reply_queue_lost;
use fleetpki_core::wire::{reply_queue_name, ReplyMode, INSTANCE_ID_ATTRIBUTE};
use fleetpki_sqs::{Received, Sqs, SqsError};
use serde::Deserialize;
use serde_json::Value;

use crate::common::rfc3339;
use crate::common::{
    add_warnings, aws_options, calls_json, file_options, key_perms, metrics_textfile_option,
    now_unix, runtime, sqs_error, sqs_failure, write_node_metrics,
};

pub const NAME: &str = "fleetpki.mtls.mtls_cert_fetch";

/// How long a received message stays hidden while we look at it.
const VISIBILITY_SECONDS: i32 = 30;
/// Between two receives on a reply queue SQS does not show yet (created a moment ago).
const QUEUE_MISSING_PAUSE: Duration = Duration::from_secs(1);

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new("instance_id", OptionType::Str).required())
        .option(OptionSpec::new("path", OptionType::Path).required())
        .option(OptionSpec::new("ca_path", OptionType::Path).required())
        .option(OptionSpec::new("wait", OptionType::Bool).default(true))
        .option(OptionSpec::new("timeout", OptionType::Int).default(300))
        .option(
            OptionSpec::new("reply_mode", OptionType::Str)
                .choices(["per_node", "shared"])
                .default("per_node"),
        )
        .option(OptionSpec::new("reply_queue_prefix", OptionType::Str).default("fleetpki-reply-"))
        .option(OptionSpec::new("shared_cert_queue_url", OptionType::Str))
        .option(metrics_textfile_option())
        .options(file_options())
        .options(aws_options())
}

#[derive(Debug, Deserialize)]
struct Args {
    instance_id: String,
    path: String,
    ca_path: String,
    wait: bool,
    timeout: i64,
    reply_mode: ReplyMode,
    reply_queue_prefix: String,
    shared_cert_queue_url: Option<String>,
    metrics_textfile: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    mode: Value,
    #[serde(flatten)]
    aws: AwsOptions,
}

/// What became of one received message.
enum Handled {
    Installed(Outcome),
    /// The CA refused the request: it is ended.
    Rejected(String),
    /// Not for us, stale, forged or unusable: the warning says which.
    Ignored(Option<String>),
}

pub fn run(invocation: &Invocation) -> Result<Outcome, Failure> {
    let args: Args = invocation.args()?;
    let mut result = fetch(invocation, &args);
    let layout = Layout::new(&args.path);
    // Check mode changes nothing; a run that never reached a layout has nothing to record.
    if invocation.check_mode || !layout.root().is_dir() {
        return result;
    }
    // The result of a fetch that had a request to fetch; with none ("unchanged", "no_request"),
    // the last such result stands.
    let status = match &result {
        Ok(outcome) => outcome.values.get("status").and_then(Value::as_str),
        Err(failure) => Some(
            failure
                .values
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("failed"),
        ),
    };
    let mut warnings = match status {
        Some("unchanged" | "no_request") | None if result.is_ok() => Vec::new(),
        status => record_result(&layout, status.unwrap_or("failed")),
    };
    if let Some(path) = &args.metrics_textfile {
        warnings.extend(write_node_metrics(&layout, &args.instance_id, path));
    }
    add_warnings(&mut result, warnings);
    result
}

/// Keeps this run's result in the layout's state (for the metrics and the report), when it
/// differs from the last one: a run that changes nothing writes nothing.
fn record_result(layout: &Layout, status: &str) -> Vec<String> {
    // Under the node's lock, as every change of the layout (the renewal timer may run now).
    let written = layout.lock(LOCK_WAIT).and_then(|_lock| {
        let mut state = layout.read_state()?;
        if state.last_result.as_deref() == Some(status) {
            return Ok(());
        }
        state.last_result = Some(status.to_string());
        state.last_result_at = Some(now_unix());
        layout.write_state(&state)
    });
    match written {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!(
            "this run's result was not recorded in the node's state: {e}"
        )],
    }
}

fn fetch(invocation: &Invocation, args: &Args) -> Result<Outcome, Failure> {
    // Checked before anything else, as mtls_csr_submit does: even with nothing pending.
    if !is_valid_instance_id(&args.instance_id) {
        return Err(ansible_module::ArgumentError::Invalid {
            name: "instance_id".into(),
            problem: "use 1-64 letters, digits, '-' or '_' (it names the reply queue)".into(),
        }
        .into());
    }
    if args.timeout < 0 {
        return Err(ansible_module::ArgumentError::Invalid {
            name: "timeout".into(),
            problem: "must be 0 or more seconds".into(),
        }
        .into());
    }
    if args.reply_mode == ReplyMode::Shared && args.shared_cert_queue_url.is_none() {
        return Err(Failure::new(
            "reply_mode=shared needs shared_cert_queue_url",
        ));
    }
    let perms = key_perms(&args.mode, args.owner.clone(), args.group.clone())?;
    let layout = Layout::new(&args.path);
    let paths = |outcome: Outcome| {
        outcome
            .with(
                "privatekey_path",
                layout.current_path(KEY_FILE).display().to_string(),
            )
            .with(
                "certificate_path",
                layout.current_path(CERT_FILE).display().to_string(),
            )
            .with(
                "chain_path",
                layout.current_path(CHAIN_FILE).display().to_string(),
            )
            .with(
                "fullchain_path",
                layout.current_path(FULLCHAIN_FILE).display().to_string(),
            )
    };

    let nothing_pending = |layout: &Layout| -> Result<Outcome, Failure> {
        let status = if layout.read_current()?.is_some() {
            "unchanged"
        } else {
            "no_request"
        };
        Ok(Outcome::new(false, "no request is pending: nothing to fetch").with("status", status))
    };
    if layout.read_pending()?.is_none() {
        if let (Some(pair), false) = (layout.read_current()?, invocation.check_mode) {
            // An install interrupted after its switch may have left the live key in pending/.
            let _lock = layout.lock(LOCK_WAIT)?;
            layout.discard_pending_key_if_live(&pair.key_pem)?;
        }
        return nothing_pending(&layout).map(paths);
    }
    // One run at a time on a node; the state is read again under the lock.
    let _lock = if invocation.check_mode {
        None
    } else {
        Some(layout.lock(LOCK_WAIT)?)
    };
    let Some(pending) = layout.read_pending()? else {
        return nothing_pending(&layout).map(paths);
    };
    let key_pem = layout.read_pending_key()?.ok_or_else(|| {
        Failure::new(format!(
            "request {} is pending but its key {} is missing: run mtls_csr_submit with force=true",
            pending.request_id,
            layout.pending_key_path().display()
        ))
    })?;
    let key = load_private_key(&key_pem, &layout.pending_key_path().display().to_string())?;
    let anchors_pem = std::fs::read_to_string(&args.ca_path).map_err(|e| {
        Failure::new(format!(
            "cannot read the pinned CA file {}: {e}",
            args.ca_path
        ))
    })?;
    let anchors = load_certificates(&anchors_pem);
    if anchors.is_empty() {
        return Err(Failure::new(format!(
            "the pinned CA file {} holds no PEM certificate",
            args.ca_path
        )));
    }
    let names = parse_names(&pending.names)?;
    let spki = public_key_spki(&key);
    let expect = Expectation {
        instance_id: &args.instance_id,
        spki_der: &spki,
        names: &names,
        profile: pending.profile,
    };

    let awaited = Pending {
        instance_id: &args.instance_id,
        request_id: &pending.request_id,
        reply_mode: args.reply_mode,
        expect: &expect,
        anchors: &anchors,
    };
    // Said in this run's result: a staged certificate that is not valid yet.
    let mut staged_early = None;
    // An answer staged by an interrupted run is installed now, re-checked first.
    if let Some((cert_pem, chain_pem)) = layout.read_staged()? {
        match check_issued_certificate(&cert_pem, &chain_pem, &anchors, &expect, SystemTime::now())
        {
            Ok(info) if invocation.check_mode => {
                return Ok(paths(
                    Outcome::new(
                        true,
                        format!("would finish installing certificate {}", info.serial_hex),
                    )
                    .with("status", "pending"),
                ));
            }
            Ok(info) => {
                let mut outcome = install(&layout, &pending, &info, &key_pem, &chain_pem, &perms)?;
                outcome.msg.push_str(" (completing an interrupted install)");
                return Ok(paths(outcome));
            }
            // The CA's answer, early for this node's clock: kept until it is valid, while the
            // queue is still read (a valid answer there replaces it).
            Err(refusal @ CertRejection::NotYetValid { .. })
                if valid_later(&awaited, &cert_pem, &chain_pem, &refusal, SystemTime::now()) =>
            {
                staged_early = Some(not_yet_valid_msg(&pending.request_id, &refusal));
            }
            Err(_) if invocation.check_mode => {}
            Err(refusal) => layout
                .clear_staged()
                .map_err(|e| Failure::new(format!("{e} (after {refusal})")))?,
        }
    }
    let runtime = runtime()?;
    runtime.block_on(async {
        let sqs = Sqs::connect(&args.aws).await.map_err(sqs_error)?;
        let with_calls = |f: Failure, sqs: &Sqs| f.with("sqs_calls", calls_json(sqs.calls()));
        let queue_url = match resolve_queue(&sqs, args, &pending).await {
            Ok(url) => url,
            Err(f) => return Err(with_calls(f, &sqs)),
        };
        let base = Outcome::new(false, "").with("request_id", pending.request_id.clone());

        if invocation.check_mode {
            // Never receive in check mode: it would raise receive counts and hide messages.
            let depth = sqs.depth(&queue_url).await.map_err(|e| sqs_failure(e, &sqs))?;
            let mut outcome = paths(base).with("status", "pending").with("sqs_calls", calls_json(sqs.calls()));
            outcome.changed = depth.visible > 0 && args.reply_mode == ReplyMode::PerNode;
            outcome.msg = if outcome.changed {
                "an answer is waiting: would check and install it".into()
            } else {
                "no answer is waiting yet".into()
            };
            return Ok(outcome);
        }

        let fetch = Fetch {
            sqs: &sqs,
            queue_url: &queue_url,
            layout: &layout,
            request: &pending,
            key_pem: &key_pem,
            perms: &perms,
            awaited,
        };
        let started = Instant::now();
        let deadline = Duration::from_secs(if args.wait { args.timeout as u64 } else { 0 });
        let mut warnings: Vec<String> = staged_early.into_iter().collect();
        loop {
            // Long-poll for what is left of the timeout (whole seconds, at least one), so an
            // empty queue costs one call per 20 s, not a busy loop.
            let left = deadline.saturating_sub(started.elapsed());
            let wait = if args.wait { (left.as_secs_f64().ceil() as i32).clamp(1, 20) } else { 1 };
            let messages = match sqs.receive(&queue_url, 10, wait, Some(VISIBILITY_SECONDS)).await {
                Ok(messages) => messages,
                // No answer can ever come: end the request, so the next submit sends a new one.
                Err(SqsError::QueueMissing(_))
                    if args.reply_mode == ReplyMode::PerNode
                        && reply_queue_lost(pending.submitted_at, time::OffsetDateTime::now_utc(), false) =>
                {
                    layout.clear_pending_request()?;
                    return Err(with_calls(Failure::new(format!(
                        "this node's reply queue {queue_url} no longer exists (was the queue server reset?), so request {} can never be answered: it is ended, and the next mtls_csr_submit sends a new request and creates the queue",
                        pending.request_id
                    )).with("status", "no_request"), &sqs));
                }
                // Created a moment ago and not shown yet: ask again while the timeout lasts.
                Err(SqsError::QueueMissing(_))
                    if args.reply_mode == ReplyMode::PerNode && started.elapsed() + QUEUE_MISSING_PAUSE < deadline =>
                {
                    tokio::time::sleep(QUEUE_MISSING_PAUSE).await;
                    continue;
                }
                // Not shown yet, and no time left to ask again: the request stays pending.
                Err(SqsError::QueueMissing(_)) if args.reply_mode == ReplyMode::PerNode => {
                    warnings.push(format!(
                        "this node's reply queue {queue_url} is not visible yet (it was created a moment ago)"
                    ));
                    break;
                }
                Err(e) => return Err(sqs_failure(e, &sqs)),
            };
            for message in &messages {
                match fetch.handle(message).await {
                    Ok(Handled::Installed(outcome)) => {
                        let mut outcome = paths(outcome).with("sqs_calls", calls_json(sqs.calls()));
                        outcome.warnings = warnings;
                        return Ok(outcome);
                    }
                    Ok(Handled::Rejected(msg)) => {
                        return Err(with_calls(Failure::new(msg).with("status", "refused"), &sqs))
                    }
                    Ok(Handled::Ignored(warning)) => warnings.extend(warning),
                    Err(f) => return Err(with_calls(f, &sqs)),
                }
            }
            // A certificate staged because it was early for this clock may have become valid.
            if let Some((cert_pem, chain_pem)) = layout.read_staged()? {
                if let Ok(info) = check_issued_certificate(&cert_pem, &chain_pem, &anchors, &expect, SystemTime::now()) {
                    let mut outcome = install(&layout, &pending, &info, &key_pem, &chain_pem, &perms)?;
                    outcome = paths(outcome).with("sqs_calls", calls_json(sqs.calls()));
                    outcome.warnings = warnings;
                    return Ok(outcome);
                }
            }
            if started.elapsed() >= deadline {
                break;
            }
        }
        if !args.wait {
            let mut outcome = paths(base).with("status", "pending").with("sqs_calls", calls_json(sqs.calls()));
            outcome.msg = match warnings.first() {
                // The cause, in the message itself (not only among the warnings).
                Some(first) => format!("request {} has no usable answer yet: {first}", pending.request_id),
                None => format!("request {} has no answer yet", pending.request_id),
            };
            outcome.warnings = warnings;
            if layout.read_current()?.is_none() {
                outcome.warnings.push(format!(
                    "no certificate is installed on this node yet: request {} is pending since {}",
                    pending.request_id,
                    time::OffsetDateTime::from_unix_timestamp(pending.submitted_at).map(rfc3339).unwrap_or_else(|_| pending.submitted_at.to_string())
                ));
            }
            return Ok(outcome);
        }
        let mut failure = Failure::new(match warnings.first() {
            Some(first) => format!(
                "no usable certificate for request {} after {} s: {first}. The request stays pending; run again to keep waiting",
                pending.request_id, args.timeout
            ),
            None => format!(
                "no certificate for request {} after {} s: is the CA worker running? The request stays pending; run again to keep waiting",
                pending.request_id, args.timeout
            ),
        })
        .with("status", "pending");
        if !warnings.is_empty() {
            failure = failure.with("warnings", warnings);
        }
        Err(with_calls(failure, &sqs))
    })
}

/// Installs a verified certificate with the pending key as the new current pair.
fn install(
    layout: &Layout,
    pending: &PendingRequest,
    info: &fleetpki_core::certs::CertificateInfo,
    key_pem: &str,
    chain_pem: &str,
    perms: &FilePerms,
) -> Result<Outcome, Failure> {
    // The certificate it replaces, for --diff (a damaged one shows as nothing).
    let before = layout
        .read_current()?
        .and_then(|pair| fleetpki_core::certs::parse_certificate(&pair.cert_pem, CERT_FILE).ok())
        .map_or(Value::Null, |previous| previous.diff_fields());
    layout.install(&info.serial_hex, key_pem, &info.pem(), chain_pem, perms)?;
    let mut outcome = Outcome::new(
        true,
        format!(
            "installed certificate {} for request {}",
            info.serial_hex, pending.request_id
        ),
    )
    .with("status", "installed")
    .with("request_id", pending.request_id.clone())
    .with("serial", info.serial_hex.clone())
    .with("not_after", rfc3339(info.not_after));
    outcome.diff = Some((before, info.diff_fields()));
    Ok(outcome)
}

async fn resolve_queue(
    sqs: &Sqs,
    args: &Args,
    pending: &PendingRequest,
) -> Result<String, Failure> {
    match args.reply_mode {
        ReplyMode::Shared => Ok(args.shared_cert_queue_url.clone().unwrap_or_default()),
        ReplyMode::PerNode => match &pending.reply_queue_url {
            Some(url) => Ok(url.clone()),
            None => sqs
                .queue_url(&reply_queue_name(
                    &args.reply_queue_prefix,
                    &args.instance_id,
                ))
                .await
                .map_err(sqs_error)?
                .ok_or_else(|| {
                    Failure::new(
                        "this node's reply queue does not exist: run mtls_csr_submit first",
                    )
                }),
        },
    }
}

/// One pending request being fetched: what performing the node core's decisions needs.
struct Fetch<'a> {
    sqs: &'a Sqs,
    queue_url: &'a str,
    layout: &'a Layout,
    /// The request as the layout keeps it (its id, names, profile).
    request: &'a PendingRequest,
    key_pem: &'a str,
    perms: &'a FilePerms,
    /// What the node core checks an answer against.
    awaited: Pending<'a>,
}

impl Fetch<'_> {
    /// Performs what the node core decided for one received message.
    async fn handle(&self, message: &Received) -> Result<Handled, Failure> {
        let reply = Reply {
            message_id: &message.message_id,
            body: &message.body,
            instance_id_attribute: message
                .attributes
                .get(INSTANCE_ID_ATTRIBUTE)
                .map(String::as_str),
        };
        let receipt = &message.receipt_handle;
        match judge_reply(&self.awaited, &reply, SystemTime::now()) {
            ReplyDecision::HandBack => {
                self.sqs
                    .hand_back(self.queue_url, receipt)
                    .await
                    .map_err(sqs_error)?;
                Ok(Handled::Ignored(None))
            }
            ReplyDecision::Discard { warning } => {
                self.sqs
                    .delete(self.queue_url, receipt)
                    .await
                    .map_err(sqs_error)?;
                Ok(Handled::Ignored(Some(warning)))
            }
            ReplyDecision::Refused { msg, reason_code } => {
                // Kept past the end of the request: the metrics and the report name it.
                let mut state = self.layout.read_state().unwrap_or_default();
                state.last_refusal = Some(RecordedRefusal {
                    request_id: self.request.request_id.clone(),
                    reason_code,
                    message: msg.clone(),
                    at: now_unix(),
                });
                self.layout.write_state(&state)?;
                self.layout.clear_pending_request()?;
                self.sqs
                    .delete(self.queue_url, receipt)
                    .await
                    .map_err(sqs_error)?;
                Ok(Handled::Rejected(msg))
            }
            ReplyDecision::NotYetValid {
                certificate_pem,
                chain_pem,
                msg,
            } => {
                // Kept beside the pending key (the staged answer), then deleted from the queue.
                self.layout.stage_answer(&certificate_pem, &chain_pem)?;
                self.sqs
                    .delete(self.queue_url, receipt)
                    .await
                    .map_err(sqs_error)?;
                Ok(Handled::Ignored(Some(msg)))
            }
            ReplyDecision::Install { info, chain_pem } => {
                crash_point(1);
                // Staged beside the pending key before its message is deleted: from here on, an
                // interrupted run is completed by the next one without SQS.
                self.layout.stage_answer(&info.pem(), &chain_pem)?;
                crash_point(2);
                let mut warnings = Vec::new();
                if let Err(e) = self.sqs.delete(self.queue_url, receipt).await {
                    warnings.push(format!("could not delete the answer from the queue (it will be discarded when seen again): {e}"));
                }
                let mut outcome = install(
                    self.layout,
                    self.request,
                    &info,
                    self.key_pem,
                    &chain_pem,
                    self.perms,
                )?;
                outcome.warnings = warnings;
                Ok(Handled::Installed(outcome))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_of_the_spec_reaches_args() {
        crate::common::assert_args_cover_spec::<super::Args>(&super::spec());
    }
}
