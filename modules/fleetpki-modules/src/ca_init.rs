//! `mtls_ca_init`: create the root and the intermediate, or adopt existing ones (an openssl-made
//! intermediate's key may be PKCS#8, PKCS#1 or SEC1). The root key is only read or written
//! where `root_privatekey_path` points, so it can stay off the worker host.

use std::path::Path;

use ansible_module::{ArgumentSpec, Failure, Invocation, OptionSpec, OptionType, Outcome};
use fleetpki_core::ca::{create_intermediate, create_root, CaSubject};
use fleetpki_core::certs::parse_certificate;
use fleetpki_core::keys::{load_private_key, public_key_spki, KeySpec};
use fleetpki_core::layout::{write_atomic, FilePerms};
use serde::Deserialize;
use serde_json::Value;

use crate::common::{file_options, key_perms};
use crate::common::rfc3339;

pub const NAME: &str = "fleetpki.mtls.mtls_ca_init";

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new("root_cert_path", OptionType::Path).required())
        .option(OptionSpec::new("root_privatekey_path", OptionType::Path))
        .option(OptionSpec::new("intermediate_cert_path", OptionType::Path).required())
        .option(OptionSpec::new("intermediate_privatekey_path", OptionType::Path).required())
        .option(OptionSpec::new("chain_path", OptionType::Path).required())
        .option(OptionSpec::new("root_common_name", OptionType::Str).default("fleetpki Root CA"))
        .option(OptionSpec::new("intermediate_common_name", OptionType::Str).default("fleetpki Intermediate CA"))
        .option(OptionSpec::new("organization_name", OptionType::Str))
        .option(OptionSpec::new("type", OptionType::Str).choices(["ECC", "RSA"]).default("ECC"))
        .option(OptionSpec::new("curve", OptionType::Str).choices(["secp256r1", "secp384r1"]).default("secp256r1"))
        .option(OptionSpec::new("size", OptionType::Int).choices([2048, 3072, 4096]).default(3072))
        .option(OptionSpec::new("root_lifetime_days", OptionType::Int).default(3650))
        .option(OptionSpec::new("intermediate_lifetime_days", OptionType::Int).default(1825))
        .options(file_options())
}

#[derive(Debug, Deserialize)]
struct Args {
    root_cert_path: String,
    root_privatekey_path: Option<String>,
    intermediate_cert_path: String,
    intermediate_privatekey_path: String,
    chain_path: String,
    root_common_name: String,
    intermediate_common_name: String,
    organization_name: Option<String>,
    #[serde(rename = "type")]
    key_type: String,
    curve: String,
    size: u32,
    root_lifetime_days: u32,
    intermediate_lifetime_days: u32,
    owner: Option<String>,
    group: Option<String>,
    mode: Value,
}

fn read_optional(path: &str) -> Result<Option<String>, Failure> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::new(format!("cannot read {path}: {e}"))),
    }
}

fn ensure_parent(path: &str) -> Result<(), Failure> {
    if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Failure::new(format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(())
}

fn write(path: &str, contents: &str, perms: &FilePerms) -> Result<(), Failure> {
    ensure_parent(path)?;
    write_atomic(Path::new(path), contents.as_bytes(), perms).map_err(Failure::from)
}

pub fn run(invocation: &Invocation) -> Result<Outcome, Failure> {
    let args: Args = invocation.args()?;
    let spec = KeySpec::from_options(&args.key_type, &args.curve, args.size)?;
    let key_perms = key_perms(&args.mode, args.owner.clone(), args.group.clone())?;
    let public = FilePerms::public_like(&key_perms);
    let check = invocation.check_mode;
    let now = time::OffsetDateTime::now_utc();
    let subject = |cn: &str, days: u32| CaSubject { common_name: cn.to_string(), organization: args.organization_name.clone(), lifetime_days: days };
    let mut created = Vec::new();

    // 1. The root: existing, or created from (and with) the root key.
    let existing_root = read_optional(&args.root_cert_path)?;
    let root_key_path = args.root_privatekey_path.clone();
    let load_root_key = |required_for: &str| -> Result<Option<rcgen::KeyPair>, Failure> {
        let path = root_key_path
            .as_deref()
            .ok_or_else(|| Failure::new(format!("root_privatekey_path is needed to {required_for}")))?;
        Ok(match read_optional(path)? {
            Some(pem) => Some(load_private_key(&pem, path)?),
            None => None,
        })
    };
    let mut fresh_root_key = None;
    let root_pem = match existing_root {
        Some(pem) => {
            let info = parse_certificate(&pem, &args.root_cert_path)?;
            if !info.is_ca {
                return Err(Failure::new(format!("{} is not a CA certificate", args.root_cert_path)));
            }
            pem
        }
        None => {
            let key = match load_root_key("create the root CA")? {
                Some(key) => key,
                None => {
                    created.push("root_privatekey");
                    let key = spec.generate()?;
                    if !check {
                        write(root_key_path.as_deref().unwrap_or_default(), &key.serialize_pem(), &key_perms)?;
                    }
                    key
                }
            };
            let pem = create_root(&key, &subject(&args.root_common_name, args.root_lifetime_days), now)?;
            if !check {
                write(&args.root_cert_path, &pem, &public)?;
            }
            created.push("root");
            fresh_root_key = Some(key);
            pem
        }
    };
    let root_info = parse_certificate(&root_pem, &args.root_cert_path)?;

    // 2. The intermediate: adopted when its certificate and key exist and match.
    let existing_cert = read_optional(&args.intermediate_cert_path)?;
    let existing_key = read_optional(&args.intermediate_privatekey_path)?;
    let intermediate_pem = match (existing_cert, &existing_key) {
        (Some(cert_pem), Some(key_pem)) => {
            let info = parse_certificate(&cert_pem, &args.intermediate_cert_path)?;
            let key = load_private_key(key_pem, &args.intermediate_privatekey_path)?;
            if info.spki_der != public_key_spki(&key) {
                return Err(Failure::new(format!(
                    "{} does not belong to {}: point both at the same intermediate CA",
                    args.intermediate_privatekey_path, args.intermediate_cert_path
                )));
            }
            if !info.is_ca {
                return Err(Failure::new(format!("{} is not a CA certificate", args.intermediate_cert_path)));
            }
            cert_pem
        }
        (Some(_), None) => {
            return Err(Failure::new(format!(
                "{} exists but its key {} does not: restore the key or remove the certificate",
                args.intermediate_cert_path, args.intermediate_privatekey_path
            )))
        }
        (None, _) => {
            let root_key = match fresh_root_key {
                Some(key) => key,
                None => load_root_key("sign the intermediate CA")?.ok_or_else(|| {
                    Failure::new("the root key is needed to sign the intermediate, but root_privatekey_path does not exist")
                })?,
            };
            if public_key_spki(&root_key) != root_info.spki_der {
                return Err(Failure::new("root_privatekey_path does not belong to root_cert_path"));
            }
            let key = match existing_key {
                Some(pem) => load_private_key(&pem, &args.intermediate_privatekey_path)?,
                None => {
                    created.push("intermediate_privatekey");
                    let key = spec.generate()?;
                    if !check {
                        write(&args.intermediate_privatekey_path, &key.serialize_pem(), &key_perms)?;
                    }
                    key
                }
            };
            let pem = create_intermediate(
                &key,
                &subject(&args.intermediate_common_name, args.intermediate_lifetime_days),
                &root_pem,
                root_key,
                now,
            )?;
            if !check {
                write(&args.intermediate_cert_path, &pem, &public)?;
            }
            created.push("intermediate");
            pem
        }
    };
    let intermediate = parse_certificate(&intermediate_pem, &args.intermediate_cert_path)?;

    // 3. The chain published to nodes: intermediate then root.
    let chain = format!("{}\n{}\n", intermediate_pem.trim_end(), root_pem.trim_end());
    if read_optional(&args.chain_path)?.as_deref() != Some(chain.as_str()) {
        if !check {
            write(&args.chain_path, &chain, &public)?;
        }
        created.push("chain");
    }

    let changed = !created.is_empty();
    let mut outcome = Outcome::new(
        changed,
        if changed { format!("{}: {}", if check { "would write" } else { "wrote" }, created.join(", ")) } else { "the CA is in place".into() },
    )
    .with("root_created", created.contains(&"root"))
    .with("intermediate_created", created.contains(&"intermediate"))
    .with("intermediate_serial", intermediate.serial_hex.clone())
    .with("intermediate_not_after", rfc3339(intermediate.not_after));
    if changed {
        outcome.diff = Some((String::new(), created.iter().map(|c| format!("{c}\n")).collect()));
    }
    Ok(outcome)
}
