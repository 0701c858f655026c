//! The Ansible binary-module protocol, and nothing about PKI.
//!
//! Ansible runs a binary module as `<binary> <args-file>`: the file holds the task's options plus
//! internal `_ansible_*` keys; the module prints exactly one JSON object on stdout. Ansible
//! checks none of the options of a binary module and masks none of its secrets, so this crate
//! does both. Stdin is read only when the args file is `-`: the collection's action plugin runs
//! a cached copy of the binary that way, the arguments on stdin (one SSH command instead of
//! transfers). Without `-` stdin is never read: over SSH it stays open and a read would block.
//!
//! The same JSON file doubles as a config file, so a node can run a module from a systemd timer.

mod spec;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

pub use spec::{coerce_bool, ArgumentSpec, ElementType, OptionSpec, OptionType};

/// A problem with the task's options, worded like `AnsibleModule`'s own messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgumentError {
    #[error("Unsupported parameters for ({module}) module: {names}. Supported parameters include: {supported}.")]
    Unsupported {
        module: String,
        names: String,
        supported: String,
    },
    /// Every missing one, comma-separated, as AnsibleModule lists them.
    #[error("missing required arguments: {names}")]
    MissingRequired { names: String },
    #[error("argument '{name}' is of type {found} and we were unable to convert to {expected}")]
    WrongType {
        name: String,
        expected: String,
        found: String,
    },
    #[error("value of {name} must be one of: {choices}, got: {value}")]
    InvalidChoice {
        name: String,
        value: String,
        choices: String,
    },
    #[error("parameters are mutually exclusive: {names}")]
    MutuallyExclusive { names: String },
    #[error("one of the following is required: {names}")]
    RequiredOneOf { names: String },
    #[error("{name} is {value} but all of the following are missing: {missing}")]
    RequiredIf {
        name: String,
        value: String,
        missing: String,
    },
    #[error("options '{first}' and its alias '{second}' are both set, to different values: set only one")]
    AliasConflict { first: String, second: String },
    #[error("option {name}: {problem}")]
    Invalid { name: String, problem: String },
}

/// Why the module could not even start on its task.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("usage: {0} ARGS_FILE (Ansible passes the path of the task's JSON arguments; `-` reads them from stdin)")]
    Usage(String),
    #[error("cannot read the arguments file {path}: {source}")]
    ReadArgs {
        path: String,
        source: std::io::Error,
    },
    #[error("the arguments file {path} is not a JSON object: {detail}. Ansible writes JSON for binary modules; when running by hand, write the options as a JSON object")]
    NotJson { path: String, detail: String },
    #[error(transparent)]
    Argument(#[from] ArgumentError),
}

/// A validated task: canonical options plus Ansible's modes.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub module_name: String,
    pub params: Map<String, Value>,
    pub check_mode: bool,
    pub diff: bool,
}

impl Invocation {
    /// Reads and validates an args file; `-` is stdin, read to its end.
    pub fn from_args_file(
        path: &str,
        default_name: &str,
        spec: &ArgumentSpec,
    ) -> Result<Self, ProtocolError> {
        let read = || -> std::io::Result<String> {
            if path == "-" {
                std::io::read_to_string(std::io::stdin().lock())
            } else {
                std::fs::read_to_string(path)
            }
        };
        let text = read().map_err(|source| ProtocolError::ReadArgs {
            path: path.to_string(),
            source,
        })?;
        let raw: Map<String, Value> =
            serde_json::from_str(&text).map_err(|e| ProtocolError::NotJson {
                path: path.to_string(),
                detail: e.to_string(),
            })?;
        Self::from_raw(raw, default_name, spec)
    }

    /// Validates raw task arguments (options plus `_ansible_*` keys).
    pub fn from_raw(
        raw: Map<String, Value>,
        default_name: &str,
        spec: &ArgumentSpec,
    ) -> Result<Self, ProtocolError> {
        let (internal, options): (Map<String, Value>, Map<String, Value>) = raw
            .into_iter()
            .partition(|(k, _)| k.starts_with("_ansible_"));
        register_secrets(spec.secret_values(&options));
        let flag = |key: &str| internal.get(key).and_then(coerce_bool).unwrap_or(false);
        let module_name = internal
            .get("_ansible_module_name")
            .and_then(Value::as_str)
            .unwrap_or(default_name)
            .to_string();
        let params = spec.validate(&module_name, &options)?;
        Ok(Invocation {
            check_mode: flag("_ansible_check_mode"),
            diff: flag("_ansible_diff"),
            module_name,
            params,
        })
    }

    /// The options as the module's own typed struct.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, ArgumentError> {
        // Unset options are dropped rather than passed as null: serde then treats them as
        // absent (`None`), which also works through `#[serde(flatten)]`.
        let set: Map<String, Value> = self
            .params
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::from_value(Value::Object(set)).map_err(|e| ArgumentError::Invalid {
            name: "(options)".into(),
            problem: e.to_string(),
        })
    }
}

/// What a module reports when it did its job.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub changed: bool,
    pub msg: String,
    /// Module-specific return values.
    pub values: Map<String, Value>,
    pub warnings: Vec<String>,
    /// `(before, after)`, shown by Ansible in diff mode: texts, or objects (which Ansible shows
    /// as sorted JSON, field by field, as community.crypto's modules return them).
    pub diff: Option<(Value, Value)>,
}

impl Outcome {
    pub fn new(changed: bool, msg: impl Into<String>) -> Self {
        Outcome {
            changed,
            msg: msg.into(),
            ..Default::default()
        }
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.values.insert(key.to_string(), value.into());
        self
    }
}

/// A failed task: the message tells the user what went wrong and what to do; `values` carry
/// whatever return values are known (e.g. the SQS calls made before the failure).
#[derive(Debug, Clone, Default)]
pub struct Failure {
    pub msg: String,
    pub values: Map<String, Value>,
}

impl Failure {
    pub fn new(msg: impl Into<String>) -> Self {
        Failure {
            msg: msg.into(),
            values: Map::new(),
        }
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.values.insert(key.to_string(), value.into());
        self
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Self {
        // Include the source chain: typed errors wrap the I/O or SDK error that says why.
        let mut msg = error.to_string();
        let mut source = error.source();
        while let Some(inner) = source {
            let text = inner.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            source = inner.source();
        }
        Failure::new(msg)
    }
}

static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
static PRINTED: AtomicBool = AtomicBool::new(false);

fn register_secrets(values: Vec<String>) {
    let lock = SECRETS.get_or_init(|| Mutex::new(Vec::new()));
    if let Ok(mut secrets) = lock.lock() {
        secrets.extend(values.into_iter().filter(|s| !s.is_empty()));
    }
}

/// Replaces every secret option value in every string of the result, like Ansible's no_log.
pub fn mask_secrets(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(s) => {
            for secret in secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), "********");
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_secrets(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| mask_secrets(v, secrets)),
        _ => {}
    }
}

/// Prints the one result object (masked) unless one was printed already.
fn emit(mut result: Value) {
    if PRINTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let secrets = SECRETS
        .get()
        .and_then(|m| m.lock().ok().map(|s| s.clone()))
        .unwrap_or_default();
    mask_secrets(&mut result, &secrets);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{result}");
    let _ = out.flush();
}

/// Builds the JSON result of an outcome.
pub fn outcome_json(outcome: Outcome, invocation: &Invocation) -> Value {
    let mut result = outcome.values;
    result.insert("changed".into(), Value::Bool(outcome.changed));
    result.insert("failed".into(), Value::Bool(false));
    result.insert("msg".into(), Value::String(outcome.msg));
    if !outcome.warnings.is_empty() {
        result.insert("warnings".into(), json!(outcome.warnings));
    }
    if let (true, Some((before, after))) = (invocation.diff, outcome.diff) {
        result.insert("diff".into(), json!({"before": before, "after": after}));
    }
    Value::Object(result)
}

pub fn failure_json(failure: Failure) -> Value {
    let mut result = failure.values;
    result.insert("failed".into(), Value::Bool(true));
    result.insert("changed".into(), Value::Bool(false));
    result.insert("msg".into(), Value::String(failure.msg));
    Value::Object(result)
}

/// Turns any panic into a failed result on stdout (the release profile aborts on panic, so
/// this hook, not `catch_unwind`, is what keeps a traceback from reaching Ansible).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let detail = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        emit(failure_json(Failure::new(format!(
            "internal error in the module{place}: {detail}. This is a bug in fleetpki.mtls: please report it with the task that triggered it"
        ))));
    }));
}

/// Entry point of every module binary: reads `argv[1]`, validates it against `spec`, runs `body`
/// and prints exactly one JSON object. Never returns an error: every failure is a result.
pub fn run_module<F>(default_name: &str, spec: &ArgumentSpec, body: F)
where
    F: FnOnce(&Invocation) -> Result<Outcome, Failure>,
{
    install_panic_hook();
    let args: Vec<String> = std::env::args().collect();
    let result = match args.as_slice() {
        [_, flag] if flag == "--argument-spec" => {
            println!("{}", spec.to_json());
            std::process::exit(0);
        }
        [_, path] => match Invocation::from_args_file(path, default_name, spec) {
            Ok(invocation) => match body(&invocation) {
                Ok(outcome) => outcome_json(outcome, &invocation),
                Err(failure) => failure_json(failure),
            },
            Err(error) => failure_json(Failure::from(error)),
        },
        _ => failure_json(Failure::from(ProtocolError::Usage(
            default_name.to_string(),
        ))),
    };
    let failed = result
        .get("failed")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    emit(result);
    // Ansible ignores the exit code once stdout is JSON; a non-zero code helps shell users.
    std::process::exit(if failed { 1 } else { 0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ArgumentSpec {
        ArgumentSpec::new()
            .option(OptionSpec::new("name", OptionType::Str).required())
            .option(OptionSpec::new("token", OptionType::Str).no_log())
    }

    #[test]
    fn internal_keys_set_modes_and_are_not_options() {
        let raw = json!({"name": "a", "_ansible_check_mode": true, "_ansible_diff": "yes",
                         "_ansible_module_name": "fleetpki.mtls.x", "_ansible_verbosity": 3});
        let inv = Invocation::from_raw(raw.as_object().unwrap().clone(), "x", &spec()).unwrap();
        assert!(inv.check_mode);
        assert!(inv.diff);
        assert_eq!(inv.module_name, "fleetpki.mtls.x");
        assert!(!inv.params.contains_key("_ansible_verbosity"));
    }

    #[test]
    fn secrets_are_masked_everywhere() {
        let mut v = json!({"msg": "bad token abc123 here", "nested": ["abc123"], "n": 1});
        mask_secrets(&mut v, &["abc123".to_string()]);
        assert_eq!(
            v,
            json!({"msg": "bad token ******** here", "nested": ["********"], "n": 1})
        );
    }

    #[test]
    fn diff_is_returned_only_in_diff_mode() {
        let raw = json!({"name": "a"});
        let mut inv = Invocation::from_raw(raw.as_object().unwrap().clone(), "x", &spec()).unwrap();
        let outcome = || Outcome {
            diff: Some(("a".into(), "b".into())),
            ..Outcome::new(true, "m")
        };
        assert!(outcome_json(outcome(), &inv).get("diff").is_none());
        inv.diff = true;
        assert_eq!(
            outcome_json(outcome(), &inv)["diff"],
            json!({"before": "a", "after": "b"})
        );
    }

    #[test]
    fn failure_keeps_the_error_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let f = Failure::from(ProtocolError::ReadArgs {
            path: "/x".into(),
            source: io,
        });
        assert!(
            f.msg.contains("/x") && f.msg.contains("no such file"),
            "{}",
            f.msg
        );
        let json = failure_json(f);
        assert_eq!(json["failed"], json!(true));
        assert_eq!(json["changed"], json!(false));
    }
}
