//! `mtls_csr_submit`: ensure the node's key, build its CSR and publish it to the CSR queue.
//! Nothing is sent while a valid certificate is installed outside the renewal window or while a
//! request for the same names is pending.

use ansible_module::{
    ArgumentSpec, ElementType, Failure, Invocation, OptionSpec, OptionType, Outcome,
};
use fleetpki_aws::AwsOptions;
use fleetpki_core::csr::build_csr;
use fleetpki_core::keys::{load_private_key, Curve, KeySpec, KeyType};
use fleetpki_core::layout::{Layout, PendingRequest};
use fleetpki_core::names::parse_names;
use fleetpki_core::policy::{enrollment_proof_v2, is_valid_instance_id};
use fleetpki_core::renewal::{decide, recheck_pending, RenewBefore, SubmitReason, Wanted};
use fleetpki_core::wire::reply_queue_name;
use fleetpki_core::wire::{
    CsrMessage, IdentityProof, Profile, ReplyMode, INSTANCE_ID_ATTRIBUTE, WIRE_VERSION,
};
use fleetpki_sqs::Sqs;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{
    add_warnings, aws_options, calls_json, file_options, key_options, key_perms,
    metrics_textfile_option, now_unix, rfc3339, runtime, sqs_error, sqs_failure,
    write_node_metrics,
};

pub const NAME: &str = "fleetpki.mtls.mtls_csr_submit";

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new("instance_id", OptionType::Str).required())
        .option(OptionSpec::new("path", OptionType::Path).required())
        .option(OptionSpec::new("csr_queue_url", OptionType::Str).required())
        .option(
            OptionSpec::new("subject_alt_name", OptionType::List(ElementType::Str))
                .default(json!([])),
        )
        .options(key_options(2048))
        .option(
            OptionSpec::new("certificate_profile", OptionType::Str)
                .choices(["mtls", "server", "client"])
                .default("mtls"),
        )
        .option(
            OptionSpec::new("key_rotation", OptionType::Str)
                .choices(KeyRotation::ALL.map(KeyRotation::as_str))
                .default(KeyRotation::Rotate.as_str()),
        )
        .option(OptionSpec::new("renew_before", OptionType::Str).default("33%"))
        .option(metrics_textfile_option())
        .option(OptionSpec::new("resubmit_after", OptionType::Str).default("1h"))
        .option(OptionSpec::new("force", OptionType::Bool).default(false))
        .option(OptionSpec::new("lifetime_days", OptionType::Int))
        .option(
            OptionSpec::new("reply_mode", OptionType::Str)
                .choices(["per_node", "shared"])
                .default("per_node"),
        )
        .option(OptionSpec::new("reply_queue_prefix", OptionType::Str).default("fleetpki-reply-"))
        .option(OptionSpec::new("enrollment_secret", OptionType::Str).no_log())
        .options(file_options())
        .options(aws_options())
}

/// The `key_rotation` option: a new key with each certificate, or the installed one again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KeyRotation {
    Rotate,
    Reuse,
}

impl KeyRotation {
    const ALL: [KeyRotation; 2] = [KeyRotation::Rotate, KeyRotation::Reuse];

    const fn as_str(self) -> &'static str {
        match self {
            KeyRotation::Rotate => "rotate",
            KeyRotation::Reuse => "reuse",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Args {
    instance_id: String,
    path: String,
    csr_queue_url: String,
    subject_alt_name: Vec<String>,
    r#type: KeyType,
    curve: Curve,
    size: u32,
    /// Not `profile`: that is amazon.aws's AWS profile option.
    certificate_profile: Profile,
    key_rotation: KeyRotation,
    renew_before: String,
    resubmit_after: String,
    metrics_textfile: Option<String>,
    force: bool,
    lifetime_days: Option<u32>,
    reply_mode: ReplyMode,
    reply_queue_prefix: String,
    enrollment_secret: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    mode: Value,
    #[serde(flatten)]
    aws: AwsOptions,
}

fn invalid(name: &str, problem: impl Into<String>) -> Failure {
    Failure::from(ansible_module::ArgumentError::Invalid {
        name: name.into(),
        problem: problem.into(),
    })
}

pub fn run(invocation: &Invocation) -> Result<Outcome, Failure> {
    let args: Args = invocation.args()?;
    let mut result = submit(invocation, &args);
    let layout = Layout::new(&args.path);
    // Check mode changes nothing; a run refused on its arguments, or that never reached a
    // layout, has nothing to record.
    let valid =
        is_valid_instance_id(&args.instance_id) && RenewBefore::parse(&args.renew_before).is_ok();
    if invocation.check_mode || !valid || !layout.root().is_dir() {
        return result;
    }
    // The renewal time of what is installed, for the metrics and the report: renew_before as
    // the last request used it (recorded when a request is sent, or once on a node that has
    // none yet), so a run that sends nothing writes nothing.
    let submitted = matches!(&result, Ok(outcome) if outcome.values.get("submitted") == Some(&Value::Bool(true)));
    let mut warnings: Vec<String> = layout
        .lock(fleetpki_core::layout::LOCK_WAIT)
        .and_then(|_lock| {
            let mut state = layout.read_state()?;
            let recorded = state.renew_before.as_deref();
            if recorded == Some(args.renew_before.as_str()) || (recorded.is_some() && !submitted) {
                return Ok(());
            }
            state.renew_before = Some(args.renew_before.clone());
            layout.write_state(&state)
        })
        .err()
        .map(|e| format!("renew_before was not recorded in the node's state: {e}"))
        .into_iter()
        .collect();
    if let Some(path) = &args.metrics_textfile {
        warnings.extend(write_node_metrics(&layout, &args.instance_id, path));
    }
    add_warnings(&mut result, warnings);
    result
}

fn submit(invocation: &Invocation, args: &Args) -> Result<Outcome, Failure> {
    if !is_valid_instance_id(&args.instance_id) {
        return Err(invalid(
            "instance_id",
            "use 1-64 letters, digits, '-' or '_' (it names the reply queue)",
        ));
    }
    let names = parse_names(&args.subject_alt_name)
        .map_err(|e| invalid("subject_alt_name", e.to_string()))?;
    let renew_before =
        RenewBefore::parse(&args.renew_before).map_err(|e| invalid("renew_before", e))?;
    let resubmit_after = match RenewBefore::parse(&args.resubmit_after) {
        Ok(RenewBefore::Duration(d)) => d,
        _ => {
            return Err(invalid(
                "resubmit_after",
                "use a duration such as 1h, 30m or 600s",
            ))
        }
    };
    let key_spec = KeySpec::from_options(args.r#type, args.curve, args.size)?;
    let perms = key_perms(&args.mode, args.owner.clone(), args.group.clone())?;
    let layout = Layout::new(&args.path);

    // One run at a time on a node (Ansible and the renewal timer share this lock).
    let _lock = if invocation.check_mode {
        None
    } else {
        Some(layout.lock(fleetpki_core::layout::LOCK_WAIT)?)
    };

    // 1. Decide from local state alone (check mode relies on this: no receive, no send).
    let installed = layout.read_current()?;
    let pending = layout.read_pending()?;
    let wanted = Wanted {
        instance_id: &args.instance_id,
        names: &names,
        profile: args.certificate_profile,
        renew_before,
        force: args.force,
        retry_forced: layout.rotation_wanted(),
        resubmit_after,
    };
    if args.force && !invocation.check_mode {
        // Until a request reaches the CA: a forced rotation that fails here is retried next run.
        layout.mark_rotation_wanted()?;
    }
    let decision = decide(
        &wanted,
        installed.as_ref(),
        pending.as_ref(),
        time::OffsetDateTime::now_utc(),
    );
    let mut reason = decision.reason;
    let mut lookup_warning = None;
    // A pending request waits on its own reply queue, which existed when the request was sent
    // (by an earlier run): if it is gone, the queue server lost it and no answer can ever come.
    // (Looked up outside check mode only, which decides from local state.)
    if let (SubmitReason::RequestPending, Some(p), false) =
        (reason, &pending, invocation.check_mode)
    {
        if p.reply_mode == ReplyMode::PerNode {
            let exists = runtime()?.block_on(async {
                let sqs = Sqs::connect(&args.aws).await?;
                let name = reply_queue_name(&args.reply_queue_prefix, &args.instance_id);
                sqs.queue_url(&name).await.map(|url| url.is_some())
            });
            match exists {
                Ok(exists) => reason = recheck_pending(reason, !exists),
                // Unreachable now: the request stays pending, as it would without the check.
                Err(e) => {
                    lookup_warning = Some(format!(
                    "could not check that the reply queue of pending request {} still exists: {e}",
                    p.request_id
                ))
                }
            }
        }
    }
    let mut outcome = Outcome::new(false, "")
        .with("reason", reason.as_str())
        .with("submitted", false);
    if let Some(cert) = &decision.current {
        let left = (cert.not_after - time::OffsetDateTime::now_utc())
            .whole_seconds()
            .max(0);
        outcome = outcome
            .with("not_after", rfc3339(cert.not_after))
            .with("seconds_left", left);
    }
    if let Some(p) = &pending {
        outcome = outcome.with("request_id", p.request_id.clone());
    }
    outcome.warnings.extend(lookup_warning);
    if reason.submits() && names.is_empty() {
        // A typo in the variable that feeds subject_alt_name looks exactly like this.
        outcome.warnings.push(format!(
            "the request for {} names no subject alternative name (subject_alt_name is empty): its certificate will \
             name the instance id only, and TLS peers that check a host name or address will refuse it. Set \
             subject_alt_name to the node's DNS:names and IP:addresses if it serves TLS",
            args.instance_id
        ));
    }
    if !reason.submits() {
        outcome.msg = match reason.as_str() {
            "request_pending" => {
                "a request for these names is already pending: fetch its certificate".into()
            }
            _ => "the installed certificate is valid and outside the renewal window".into(),
        };
        return Ok(outcome);
    }

    // 2. The key: reuse the live key if asked, else the pending key of an earlier attempt
    //    (never used yet), else a new one.
    if let (Some(pair), false) = (&installed, invocation.check_mode) {
        layout.discard_pending_key_if_live(&pair.key_pem)?;
    }
    let existing_key = match (args.key_rotation, &installed) {
        (KeyRotation::Reuse, Some(pair)) => Some(pair.key_pem.clone()),
        // In check mode the stale copy of the live key is not removed: never count it as new.
        (_, Some(pair))
            if layout
                .read_pending_key()?
                .is_some_and(|k| k.trim() == pair.key_pem.trim()) =>
        {
            None
        }
        _ => layout.read_pending_key()?,
    };
    let request_id = fleetpki_core::new_request_id();
    outcome = outcome.with(
        "privatekey_path",
        layout.pending_key_path().display().to_string(),
    );
    // --diff: what waits or is installed now, and the request that replaces it.
    let before = match (&pending, &decision.current) {
        (Some(p), _) => p.diff_fields(),
        (None, Some(cert)) => cert.diff_fields(),
        (None, None) => serde_json::Value::Null,
    };
    let after = serde_json::json!({
        "subject_alt_name": names.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "certificate_profile": args.certificate_profile.as_str(),
        "private_key": match existing_key {
            Some(_) => "the key waiting for its certificate, kept".to_string(),
            None => format!("new {key_spec}"),
        },
    });
    outcome.diff = Some((before, after));
    if invocation.check_mode {
        outcome.changed = true;
        outcome.msg = format!("would submit a new certificate request ({reason})");
        return Ok(outcome);
    }
    let key = match existing_key {
        Some(pem) => load_private_key(&pem, &layout.pending_key_path().display().to_string())?,
        None => key_spec.generate()?,
    };
    // Write the key first: a request must never be in flight for a key we could lose.
    layout.write_pending_key(&key.serialize_pem(), &perms)?;
    let csr_pem = build_csr(&key, &args.instance_id, &names)?;

    // 3. Publish.
    let runtime = runtime()?;
    runtime.block_on(async {
        let sqs = Sqs::connect(&args.aws).await.map_err(sqs_error)?;
        // Before anything is created: a reply queue made in the wrong region would be a stray.
        sqs.check_region(&args.csr_queue_url).map_err(|e| sqs_failure(e, &sqs))?;
        let reply_queue_url = match args.reply_mode {
            ReplyMode::PerNode => Some(
                sqs.create_queue(
                    &reply_queue_name(&args.reply_queue_prefix, &args.instance_id),
                    &[],
                )
                .await
                .map_err(|e| sqs_failure(e, &sqs))?,
            ),
            ReplyMode::Shared => None,
        };
        let timestamp = now_unix();
        let mut message = CsrMessage {
            instance_id: args.instance_id.clone(),
            csr_pem: csr_pem.clone(),
            version: Some(WIRE_VERSION),
            request_id: Some(request_id.clone()),
            timestamp: Some(timestamp),
            profile: Some(args.certificate_profile),
            lifetime_days: args.lifetime_days,
            reply_mode: Some(args.reply_mode),
            identity_proof: None,
        };
        // The v2 HMAC covers every field above.
        message.identity_proof = args
            .enrollment_secret
            .as_deref()
            .map(|secret| IdentityProof {
                kind: "enrollment_secret".into(),
                hmac: Some(enrollment_proof_v2(secret, &message)),
            });
        let body = serde_json::to_string(&message).map_err(|e| Failure::new(e.to_string()))?;
        // Record the request before sending: after a crash in between, the node waits for an
        // answer (and resubmits on `force`) rather than forgetting what it asked for.
        let record = PendingRequest {
            request_id: request_id.clone(),
            instance_id: args.instance_id.clone(),
            names: names.iter().map(ToString::to_string).collect(),
            profile: args.certificate_profile,
            reply_mode: args.reply_mode,
            reply_queue_url: reply_queue_url.clone(),
            submitted_at: timestamp,
        };
        layout.write_pending(&record)?;
        let sent = sqs
            .send(
                &args.csr_queue_url,
                &body,
                &[(INSTANCE_ID_ATTRIBUTE, &args.instance_id)],
            )
            .await;
        let message_id = match sent {
            Ok(id) => {
                layout.clear_rotation_wanted()?;
                id
            }
            Err(error) => {
                layout.clear_pending_request()?;
                return Err(sqs_failure(error, &sqs));
            }
        };
        outcome.changed = true;
        outcome.msg = format!("submitted certificate request {request_id} ({reason})");
        match (reason, &pending) {
            (SubmitReason::ReplyQueueMissing, Some(p)) => outcome.warnings.push(format!(
                "the reply queue of the pending request {} no longer exists (was the queue server reset?), so no answer could come: request {request_id} replaces it, and the queue was created again",
                p.request_id
            )),
            (SubmitReason::ForcedRetry, _) => outcome.warnings.push(
                "a rotation forced by an earlier run had not reached the CA (the queue was unreachable then): it is sent now".into(),
            ),
            _ => {}
        }
        Ok(outcome
            .with("submitted", true)
            .with("request_id", request_id.clone())
            .with("message_id", message_id)
            .with(
                "reply_queue_url",
                reply_queue_url.map(Value::from).unwrap_or(Value::Null),
            )
            .with("csr", csr_pem.clone())
            .with("sqs_calls", calls_json(sqs.calls())))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_of_the_spec_reaches_args() {
        crate::common::assert_args_cover_spec::<super::Args>(&super::spec());
    }
}
