//! Argument specs with `AnsibleModule`'s semantics: Ansible validates nothing for binary modules,
//! so each module declares its options here and `ArgumentSpec::validate` does what
//! `AnsibleModule(argument_spec=...)` would (aliases, coercions, defaults, choices, required,
//! mutually exclusive, required-one-of).

use serde_json::{Map, Value};

use crate::ArgumentError;

/// The option types of `AnsibleModule` that our modules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionType {
    Str,
    Bool,
    Int,
    Path,
    Raw,
    Dict,
    /// A list whose elements have the given type (`elements:` in the docs).
    List(ElementType),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    Str,
    Int,
}

impl OptionType {
    /// The name Ansible's documentation uses for this type.
    pub fn doc_name(self) -> &'static str {
        match self {
            OptionType::Str => "str",
            OptionType::Bool => "bool",
            OptionType::Int => "int",
            OptionType::Path => "path",
            OptionType::Raw => "raw",
            OptionType::Dict => "dict",
            OptionType::List(_) => "list",
        }
    }
}

impl ElementType {
    pub fn doc_name(self) -> &'static str {
        match self {
            ElementType::Str => "str",
            ElementType::Int => "int",
        }
    }
}

/// One option of a module.
#[derive(Debug, Clone)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: OptionType,
    pub required: bool,
    pub default: Option<Value>,
    pub choices: Vec<Value>,
    pub aliases: Vec<&'static str>,
    /// A secret: never echoed in results or errors.
    pub no_log: bool,
}

impl OptionSpec {
    pub fn new(name: &'static str, kind: OptionType) -> Self {
        OptionSpec {
            name,
            kind,
            required: false,
            default: None,
            choices: Vec::new(),
            aliases: Vec::new(),
            no_log: false,
        }
    }
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
    pub fn default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }
    pub fn choices<V: Into<Value>>(mut self, choices: impl IntoIterator<Item = V>) -> Self {
        self.choices = choices.into_iter().map(Into::into).collect();
        self
    }
    pub fn aliases(mut self, aliases: &[&'static str]) -> Self {
        self.aliases = aliases.to_vec();
        self
    }
    pub fn no_log(mut self) -> Self {
        self.no_log = true;
        self
    }
}

/// All options of a module plus the constraints between them.
#[derive(Debug, Clone, Default)]
pub struct ArgumentSpec {
    pub options: Vec<OptionSpec>,
    pub mutually_exclusive: Vec<Vec<&'static str>>,
    pub required_one_of: Vec<Vec<&'static str>>,
    /// AnsibleModule's `required_if`: (option, value, options required when it has that value).
    pub required_if: Vec<(&'static str, &'static str, Vec<&'static str>)>,
}

impl ArgumentSpec {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn option(mut self, option: OptionSpec) -> Self {
        self.options.push(option);
        self
    }
    pub fn options(mut self, options: impl IntoIterator<Item = OptionSpec>) -> Self {
        self.options.extend(options);
        self
    }
    pub fn mutually_exclusive(mut self, names: &[&'static str]) -> Self {
        self.mutually_exclusive.push(names.to_vec());
        self
    }
    pub fn required_one_of(mut self, names: &[&'static str]) -> Self {
        self.required_one_of.push(names.to_vec());
        self
    }
    pub fn required_if(
        mut self,
        name: &'static str,
        value: &'static str,
        requirements: &[&'static str],
    ) -> Self {
        self.required_if.push((name, value, requirements.to_vec()));
        self
    }

    /// The spec in the shape of an Ansible `argument_spec`, for tests that compare it with the
    /// module's DOCUMENTATION (`<module> --argument-spec`).
    pub fn to_json(&self) -> Value {
        let mut options = Map::new();
        for o in &self.options {
            let mut entry = Map::new();
            entry.insert("type".into(), Value::from(o.kind.doc_name()));
            if let OptionType::List(elements) = o.kind {
                entry.insert("elements".into(), Value::from(elements.doc_name()));
            }
            entry.insert("required".into(), Value::Bool(o.required));
            if let Some(default) = &o.default {
                entry.insert("default".into(), default.clone());
            }
            if !o.choices.is_empty() {
                entry.insert("choices".into(), Value::Array(o.choices.clone()));
            }
            if !o.aliases.is_empty() {
                entry.insert("aliases".into(), Value::from(o.aliases.clone()));
            }
            if o.no_log {
                entry.insert("no_log".into(), Value::Bool(true));
            }
            options.insert(o.name.to_string(), Value::Object(entry));
        }
        serde_json::json!({
            "argument_spec": options,
            "mutually_exclusive": self.mutually_exclusive,
            "required_one_of": self.required_one_of,
            "required_if": self.required_if.iter().map(|(n, v, r)| serde_json::json!([n, v, r])).collect::<Vec<_>>(),
        })
    }

    /// The secret values among the raw parameters, so that they can be masked everywhere,
    /// including in the error about a wrong value of another option.
    pub fn secret_values(&self, raw: &Map<String, Value>) -> Vec<String> {
        let mut secrets = Vec::new();
        for option in self.options.iter().filter(|o| o.no_log) {
            for key in std::iter::once(option.name).chain(option.aliases.iter().copied()) {
                match raw.get(key) {
                    Some(Value::String(s)) if !s.is_empty() => secrets.push(s.clone()),
                    Some(v @ (Value::Number(_) | Value::Object(_) | Value::Array(_))) => {
                        secrets.push(v.to_string())
                    }
                    _ => {}
                }
            }
        }
        secrets
    }

    /// Validates and normalises the task's options (internal `_ansible_*` keys must be removed
    /// beforehand). The result holds every option under its canonical name, with defaults, and
    /// `null` for unset options without a default.
    pub fn validate(
        &self,
        module: &str,
        raw: &Map<String, Value>,
    ) -> Result<Map<String, Value>, ArgumentError> {
        let mut unknown: Vec<&str> = raw
            .keys()
            .map(String::as_str)
            .filter(|key| {
                !self
                    .options
                    .iter()
                    .any(|o| o.name == *key || o.aliases.contains(key))
            })
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            let mut supported: Vec<&str> = self
                .options
                .iter()
                .flat_map(|o| std::iter::once(o.name).chain(o.aliases.iter().copied()))
                .collect();
            supported.sort_unstable();
            return Err(ArgumentError::Unsupported {
                module: module.to_string(),
                names: unknown.join(", "),
                supported: supported.join(", "),
            });
        }

        let mut out = Map::new();
        let mut given: Vec<&str> = Vec::new();
        let mut missing: Vec<&str> = Vec::new();
        for option in &self.options {
            let mut found: Option<(&str, &Value)> = None;
            for key in std::iter::once(option.name).chain(option.aliases.iter().copied()) {
                if let Some(value) = raw.get(key) {
                    if let Some((first, first_value)) = found {
                        if first_value != value {
                            return Err(ArgumentError::AliasConflict {
                                first: first.to_string(),
                                second: key.to_string(),
                            });
                        }
                    } else {
                        found = Some((key, value));
                    }
                }
            }
            let value = match found {
                Some((_, Value::Null)) | None => None,
                Some((_, value)) => Some(coerce(option, value)?),
            };
            let value = match value {
                Some(v) => {
                    given.push(option.name);
                    v
                }
                None if option.required => {
                    missing.push(option.name);
                    continue;
                }
                None => option.default.clone().unwrap_or(Value::Null),
            };
            if !value.is_null() && !option.choices.is_empty() {
                let values: Vec<&Value> = match &value {
                    Value::Array(items) => items.iter().collect(),
                    v => vec![v],
                };
                for v in values {
                    if !option.choices.contains(v) {
                        return Err(ArgumentError::InvalidChoice {
                            name: option.name.to_string(),
                            value: display(v),
                            choices: option
                                .choices
                                .iter()
                                .map(display)
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    }
                }
            }
            out.insert(option.name.to_string(), value);
        }

        if !missing.is_empty() {
            return Err(ArgumentError::MissingRequired {
                names: missing.join(", "),
            });
        }
        for group in &self.mutually_exclusive {
            let set: Vec<&str> = group
                .iter()
                .copied()
                .filter(|n| given.contains(n))
                .collect();
            if set.len() > 1 {
                return Err(ArgumentError::MutuallyExclusive {
                    names: set.join("|"),
                });
            }
        }
        for group in &self.required_one_of {
            if !group.iter().any(|n| given.contains(n)) {
                return Err(ArgumentError::RequiredOneOf {
                    names: group.join(", "),
                });
            }
        }
        for (name, value, requirements) in &self.required_if {
            if out.get(*name).and_then(Value::as_str) == Some(*value) {
                let missing: Vec<&str> = requirements
                    .iter()
                    .copied()
                    .filter(|r| !given.contains(r))
                    .collect();
                if !missing.is_empty() {
                    return Err(ArgumentError::RequiredIf {
                        name: name.to_string(),
                        value: value.to_string(),
                        missing: missing.join(", "),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn coerce(option: &OptionSpec, value: &Value) -> Result<Value, ArgumentError> {
    let wrong = |expected: &str| ArgumentError::WrongType {
        name: option.name.to_string(),
        expected: expected.to_string(),
        // A secret's value is never echoed, not even in a type error.
        found: if option.no_log {
            "(hidden)".to_string()
        } else {
            type_name(value).to_string()
        },
    };
    Ok(match option.kind {
        OptionType::Raw => value.clone(),
        OptionType::Str => Value::String(coerce_str(value).ok_or_else(|| wrong("str"))?),
        OptionType::Path => {
            let text = coerce_str(value).ok_or_else(|| wrong("path"))?;
            // No file system path holds a NUL byte; the OS would cut it short there.
            if text.contains('\0') {
                return Err(ArgumentError::Invalid {
                    name: option.name.to_string(),
                    problem: "contains a NUL byte, which no path can hold".into(),
                });
            }
            Value::String(expand_user(&text))
        }
        OptionType::Bool => Value::Bool(coerce_bool(value).ok_or_else(|| wrong("bool"))?),
        OptionType::Int => Value::from(coerce_int(value).ok_or_else(|| wrong("int"))?),
        OptionType::Dict => match value {
            Value::Object(_) => value.clone(),
            Value::String(s) if s.trim_start().starts_with('{') => {
                serde_json::from_str::<Map<String, Value>>(s)
                    .map(Value::Object)
                    .map_err(|_| wrong("dict"))?
            }
            _ => return Err(wrong("dict")),
        },
        OptionType::List(elements) => {
            let items: Vec<Value> = match value {
                Value::Array(items) => items.clone(),
                // AnsibleModule splits a comma-separated string into a list.
                Value::String(s) if s.is_empty() => Vec::new(),
                Value::String(s) => s
                    .split(',')
                    .map(|p| Value::String(p.trim().to_string()))
                    .collect(),
                Value::Number(_) | Value::Bool(_) => vec![value.clone()],
                _ => return Err(wrong("list")),
            };
            let expected = format!("list of {}", elements.doc_name());
            let items = items
                .iter()
                .map(|item| match elements {
                    ElementType::Str => coerce_str(item).map(Value::String),
                    ElementType::Int => coerce_int(item).map(Value::from),
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| wrong(&expected))?;
            Value::Array(items)
        }
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn coerce_str(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

/// `AnsibleModule`'s boolean strings.
pub fn coerce_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "y" | "yes" | "on" | "1" | "true" | "t" | "1.0" => Some(true),
            "n" | "no" | "off" | "0" | "false" | "f" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn coerce_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|x| x.fract() == 0.0).map(|x| x as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// `type: path` expands `~` like Ansible does.
fn expand_user(path: &str) -> String {
    if path == "~" || path.starts_with("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return format!("{}{}", home.to_string_lossy(), &path[1..]);
        }
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> ArgumentSpec {
        ArgumentSpec::new()
            .option(OptionSpec::new("name", OptionType::Str).required())
            .option(OptionSpec::new("wait", OptionType::Bool).default(true))
            .option(OptionSpec::new("timeout", OptionType::Int).default(300))
            .option(
                OptionSpec::new("type", OptionType::Str)
                    .choices(["ECC", "RSA"])
                    .default("ECC"),
            )
            .option(OptionSpec::new("sans", OptionType::List(ElementType::Str)).default(json!([])))
            .option(
                OptionSpec::new("secret_key", OptionType::Str)
                    .aliases(&["aws_secret_access_key"])
                    .no_log(),
            )
            .option(OptionSpec::new("policy", OptionType::Dict))
            .option(OptionSpec::new("policy_path", OptionType::Path))
            .mutually_exclusive(&["policy", "policy_path"])
    }

    fn validate(raw: Value) -> Result<Map<String, Value>, ArgumentError> {
        spec().validate("fleetpki.mtls.test", raw.as_object().unwrap())
    }

    #[test]
    fn applies_defaults_and_keeps_given_values() {
        let out = validate(json!({"name": "a"})).unwrap();
        assert_eq!(out["wait"], json!(true));
        assert_eq!(out["timeout"], json!(300));
        assert_eq!(out["type"], json!("ECC"));
        assert_eq!(out["secret_key"], Value::Null);
    }

    #[test]
    fn coerces_like_ansible_module() {
        let out = validate(
            json!({"name": 12, "wait": "no", "timeout": "45", "sans": "DNS:a, IP:1.2.3.4"}),
        )
        .unwrap();
        assert_eq!(out["name"], json!("12"));
        assert_eq!(out["wait"], json!(false));
        assert_eq!(out["timeout"], json!(45));
        assert_eq!(out["sans"], json!(["DNS:a", "IP:1.2.3.4"]));
        for yes in ["yes", "True", "on", "1", "y"] {
            assert_eq!(
                validate(json!({"name": "a", "wait": yes})).unwrap()["wait"],
                json!(true),
                "{yes}"
            );
        }
        assert_eq!(
            validate(json!({"name": "a", "wait": 1})).unwrap()["wait"],
            json!(true)
        );
    }

    #[test]
    fn unknown_option_is_named() {
        let err = validate(json!({"name": "a", "colour": "red"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("Supported parameters include"), "{err}");
    }

    #[test]
    fn missing_required_is_named() {
        let err = validate(json!({"wait": true})).unwrap_err().to_string();
        assert_eq!(err, "missing required arguments: name");
    }

    #[test]
    fn a_path_with_a_nul_byte_is_refused() {
        let err = validate(json!({"name": "a", "policy_path": "/etc/x\0y"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("policy_path") && err.contains("NUL"), "{err}");
    }

    #[test]
    fn every_missing_required_option_is_named_at_once() {
        let spec = ArgumentSpec::new()
            .option(OptionSpec::new("name", OptionType::Str).required())
            .option(OptionSpec::new("path", OptionType::Path).required())
            .option(OptionSpec::new("wait", OptionType::Bool).default(false));
        let err = spec
            .validate("m", &serde_json::Map::new())
            .unwrap_err()
            .to_string();
        assert_eq!(err, "missing required arguments: name, path");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = validate(json!({"name": "a", "wait": "maybe"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'wait'") && err.contains("bool"), "{err}");
        let err = validate(json!({"name": "a", "timeout": "soon"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'timeout'") && err.contains("int"), "{err}");
        let err = validate(json!({"name": ["a"]})).unwrap_err().to_string();
        assert!(err.contains("'name'"), "{err}");
    }

    #[test]
    fn invalid_choice_is_named() {
        let err = validate(json!({"name": "a", "type": "DSA"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("type") && err.contains("DSA") && err.contains("ECC, RSA"),
            "{err}"
        );
    }

    #[test]
    fn mutually_exclusive_is_named() {
        let err = validate(json!({"name": "a", "policy": {}, "policy_path": "/p"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("policy|policy_path"), "{err}");
    }

    #[test]
    fn required_if_names_what_is_missing_for_that_value() {
        let spec = spec().required_if("type", "RSA", &["policy_path"]);
        let check = |raw: Value| spec.validate("fleetpki.mtls.test", raw.as_object().unwrap());
        let err = check(json!({"name": "a", "type": "RSA"}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "type is RSA but all of the following are missing: policy_path"
        );
        assert!(check(json!({"name": "a", "type": "RSA", "policy_path": "/p"})).is_ok());
        assert!(
            check(json!({"name": "a"})).is_ok(),
            "the default ECC needs nothing more"
        );
    }

    #[test]
    fn aliases_map_to_the_canonical_name_and_secrets_are_collected() {
        let raw = json!({"name": "a", "aws_secret_access_key": "s3cr3t"});
        let out = validate(raw.clone()).unwrap();
        assert_eq!(out["secret_key"], json!("s3cr3t"));
        assert_eq!(
            spec().secret_values(raw.as_object().unwrap()),
            vec!["s3cr3t".to_string()]
        );
    }

    #[test]
    fn secret_value_is_not_echoed_in_a_type_error() {
        let err = validate(json!({"name": "a", "secret_key": ["hunter2"]}))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("secret_key"), "{err}");
    }
}
