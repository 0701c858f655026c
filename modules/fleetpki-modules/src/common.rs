//! What several modules share: amazon.aws connection options, community.crypto file options,
//! and the small async runtime the SQS modules run on.

use std::collections::BTreeMap;

use ansible_module::{ArgumentError, Failure, OptionSpec, OptionType};
use fleetpki_core::layout::{parse_mode, FilePerms};
use fleetpki_sqs::{Sqs, SqsError};
use serde_json::Value;

/// amazon.aws's connection options (see `plugins/doc_fragments/aws.py`).
pub fn aws_options() -> Vec<OptionSpec> {
    vec![
        OptionSpec::new("region", OptionType::Str).aliases(&["aws_region", "ec2_region"]),
        OptionSpec::new("endpoint_url", OptionType::Str).aliases(&["aws_endpoint_url"]),
        OptionSpec::new("profile", OptionType::Str).aliases(&["aws_profile"]),
        OptionSpec::new("access_key", OptionType::Str)
            .aliases(&["aws_access_key_id", "aws_access_key"]),
        OptionSpec::new("secret_key", OptionType::Str)
            .aliases(&["aws_secret_access_key", "aws_secret_key"])
            .no_log(),
        OptionSpec::new("session_token", OptionType::Str)
            .aliases(&["aws_session_token"])
            .no_log(),
    ]
}

/// The key options of the modules that make keys (community.crypto's `type`, `curve`, `size`),
/// from the core's one definition of each; `default_size` is the RSA size when none is given.
pub fn key_options(default_size: u32) -> Vec<OptionSpec> {
    use fleetpki_core::keys::{Curve, KeyType, RSA_SIZES};
    vec![
        OptionSpec::new("type", OptionType::Str)
            .choices(KeyType::ALL.map(KeyType::as_str))
            .default(KeyType::Ecc.as_str()),
        OptionSpec::new("curve", OptionType::Str)
            .choices(Curve::ALL.map(Curve::as_str))
            .default(Curve::Secp256r1.as_str()),
        OptionSpec::new("size", OptionType::Int)
            .choices(RSA_SIZES)
            .default(default_size),
    ]
}

/// community.crypto's file options for a private key.
pub fn file_options() -> Vec<OptionSpec> {
    vec![
        OptionSpec::new("owner", OptionType::Str),
        OptionSpec::new("group", OptionType::Str),
        OptionSpec::new("mode", OptionType::Raw).default("0600"),
    ]
}

/// The key file permissions from `mode`/`owner`/`group`. A YAML `mode: 0600` arrives as the
/// integer 384 (already octal-decoded), a quoted one as the string "0600": both are accepted.
pub fn key_perms(
    mode: &Value,
    owner: Option<String>,
    group: Option<String>,
) -> Result<FilePerms, ArgumentError> {
    let invalid = || ArgumentError::Invalid {
        name: "mode".into(),
        problem: format!("{mode} is not an octal file mode such as \"0600\""),
    };
    let mode = match mode {
        Value::String(s) => parse_mode(s).ok_or_else(invalid)?,
        Value::Number(n) => n.as_u64().filter(|m| *m <= 0o7777).ok_or_else(invalid)? as u32,
        Value::Null => 0o600,
        _ => return Err(invalid()),
    };
    if mode & 0o007 != 0 {
        return Err(ArgumentError::Invalid {
            name: "mode".into(),
            problem: format!(
                "{mode:04o} lets other users read the private key: use 0600, 0640 or 0400"
            ),
        });
    }
    Ok(FilePerms::private(owner, group, mode))
}

/// A single-threaded runtime: the node modules make a handful of sequential calls.
pub fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The SQS call counts as a JSON return value.
pub fn calls_json(calls: BTreeMap<String, u64>) -> Value {
    serde_json::to_value(calls).unwrap_or_default()
}

/// A failed SQS call as amazon.aws reports one: a short `msg`, the service's code and message
/// (or the SDK's error chain) in `error`, and the calls made so far in `sqs_calls`.
pub fn sqs_failure(error: SqsError, sqs: &Sqs) -> Failure {
    sqs_error(error).with("sqs_calls", calls_json(sqs.calls()))
}

/// `sqs_failure` before a client exists (its configuration failed).
pub fn sqs_error(error: SqsError) -> Failure {
    aws_failure(error.to_string(), error.detail())
}

/// A failed KMS or ACM PCA setup call as amazon.aws reports it: the message, and the call's
/// kind, code, words and operation in `error`.
pub fn signer_failure(error: &fleetpki_signers::SignerError) -> Failure {
    aws_failure(error.to_string(), error.detail())
}

/// A failed AWS call as amazon.aws reports it: `msg`, and the call's detail as `error` when the
/// error has one.
fn aws_failure(msg: String, detail: Option<serde_json::Value>) -> Failure {
    let failure = Failure::new(msg);
    match detail {
        Some(detail) => failure.with("error", detail),
        None => failure,
    }
}

/// The node modules' `metrics_textfile` option (one definition for both).
pub fn metrics_textfile_option() -> OptionSpec {
    OptionSpec::new("metrics_textfile", OptionType::Path)
}

/// Writes the node's metrics from its layout to `path`; a warning when that fails (the run's
/// own work is done by then, and stands).
pub fn write_node_metrics(
    layout: &fleetpki_core::layout::Layout,
    instance_id: &str,
    path: &str,
) -> Option<String> {
    let status = node_status(layout, instance_id).and_then(|status| {
        let text = crate::metrics::node_exposition(&status, now_unix());
        crate::metrics::write_textfile(std::path::Path::new(path), &text)
    });
    status.err().map(|e| {
        format!("the metrics were not written to {path} (metrics_textfile): {e}; make its directory writable by this user, or unset metrics_textfile")
    })
}

/// Adds warnings to a result, a failure's too (under its `warnings` key, as Ansible shows them).
pub fn add_warnings(result: &mut Result<ansible_module::Outcome, Failure>, warnings: Vec<String>) {
    match result {
        Ok(outcome) => outcome.warnings.extend(warnings),
        Err(failure) if !warnings.is_empty() => {
            let mut all: Vec<Value> = failure
                .values
                .get("warnings")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            all.extend(warnings.into_iter().map(Value::from));
            failure.values.insert("warnings".into(), Value::from(all));
        }
        Err(_) => {}
    }
}

/// The node's status as its layout holds it.
pub fn node_status(
    layout: &fleetpki_core::layout::Layout,
    instance_id: &str,
) -> Result<fleetpki_core::status::NodeStatus, fleetpki_core::PkiError> {
    let cert_pem = layout.read_current()?.map(|pair| pair.cert_pem);
    Ok(fleetpki_core::status::NodeStatus::new(
        instance_id,
        cert_pem.as_deref(),
        layout.read_pending()?,
        layout.read_state()?,
    ))
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub use fleetpki_core::rfc3339;

/// Tests of each module: every option of its spec (the one definition the docs are checked
/// against) reaches a field of its `Args` struct of the same name. serde ignores unknown keys,
/// so an option without a field would otherwise be accepted and silently dropped.
#[cfg(test)]
pub(crate) fn assert_args_cover_spec<A>(spec: &ansible_module::ArgumentSpec)
where
    A: serde::de::DeserializeOwned + std::fmt::Debug,
{
    use ansible_module::{ElementType, OptionType};
    let mut args = serde_json::Map::new();
    for (i, option) in spec.options.iter().enumerate() {
        let probe = format!("probe-{}", option.name);
        // A value of the option's type that is not its default, so it must come from the input.
        let value = match (option.kind, option.choices.as_slice()) {
            (_, [first, ..]) => option
                .choices
                .iter()
                .find(|c| Some(*c) != option.default.as_ref())
                .unwrap_or(first)
                .clone(),
            (OptionType::Bool, _) => {
                Value::Bool(option.default.as_ref().and_then(Value::as_bool) != Some(true))
            }
            (OptionType::Int, _) => Value::from(7_000 + i as i64),
            (OptionType::Dict, _) => serde_json::json!({ "probe": probe }),
            (OptionType::List(ElementType::Int), _) => serde_json::json!([7_000 + i as i64]),
            (OptionType::List(ElementType::Str), _) => serde_json::json!([probe]),
            (OptionType::Str | OptionType::Path | OptionType::Raw, _) => Value::from(probe),
        };
        args.insert(option.name.to_string(), value);
    }
    let parsed: A = serde_json::from_value(Value::Object(args))
        .unwrap_or_else(|e| panic!("the spec's options do not deserialize into the struct: {e}"));
    let shown = format!("{parsed:?}");
    for option in &spec.options {
        // A field of that name, not one that only ends with it (`mode` in `reply_mode`).
        let field = |before: &str| format!("{before}{}: ", option.name);
        assert!(
            shown.contains(&field("{ ")) || shown.contains(&field(", ")),
            "option {} has no field of that name: {shown}",
            option.name
        );
        let textual = matches!(
            option.kind,
            OptionType::Str | OptionType::Path | OptionType::Raw
        );
        if textual && option.choices.is_empty() {
            assert!(
                shown.contains(&format!("probe-{}", option.name)),
                "option {} does not reach its field: {shown}",
                option.name
            );
        }
    }
}
