//! `mtls_ca_init`: create the root and the intermediate, or adopt existing ones (an openssl-made
//! intermediate's key may be PKCS#8, PKCS#1 or SEC1). The root key is only read or written
//! where `root_privatekey_path` points, so it can stay off the worker host. With
//! `signer: aws_kms` the intermediate's key is a KMS key (created behind an alias, or adopted)
//! and only its certificate is written; with `signer: aws_pca` the intermediate is an AWS
//! Private CA whose CSR the root certifies. The root itself stays a file, kept offline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ansible_module::{ArgumentSpec, Failure, Invocation, OptionSpec, OptionType, Outcome};
use fleetpki_aws::AwsOptions;
use fleetpki_core::ca::{
    certify_intermediate_csr, create_intermediate, create_root, intermediate_csr, is_signed_by,
    CaSubject,
};
use fleetpki_core::certs::parse_certificate;
use fleetpki_core::crl::{parse_crl, reissue_reason};
use fleetpki_core::keys::{load_private_key, public_key_spki, Curve, KeySpec, KeyType};
use fleetpki_core::layout::{write_atomic, FilePerms};
use fleetpki_core::remote::RemoteSigningKey;
use fleetpki_core::renewal::RenewBefore;
use fleetpki_core::sign::CaSigner;
use fleetpki_signers::kms::{Kms, KmsKey};
use fleetpki_signers::pca::Pca;
use serde::Deserialize;
use serde_json::Value;

use crate::common::rfc3339;
use crate::common::{
    aws_options, calls_json, file_options, key_options, key_perms, signer_failure,
};
use crate::signer::{
    aws_runtime, refuse_foreign_options, signer_options, SignerArgs, SignerKind, AWS_KMS, AWS_PCA,
    FILE,
};

pub const NAME: &str = "fleetpki.mtls.mtls_ca_init";

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new("root_cert_path", OptionType::Path).required())
        .option(OptionSpec::new("root_privatekey_path", OptionType::Path))
        .option(OptionSpec::new("intermediate_cert_path", OptionType::Path).required())
        .option(OptionSpec::new(
            "intermediate_privatekey_path",
            OptionType::Path,
        ))
        .option(OptionSpec::new("chain_path", OptionType::Path).required())
        .option(OptionSpec::new("root_common_name", OptionType::Str).default("fleetpki Root CA"))
        .option(
            OptionSpec::new("intermediate_common_name", OptionType::Str)
                .default("fleetpki Intermediate CA"),
        )
        .option(OptionSpec::new("organization_name", OptionType::Str))
        .options(key_options(3072))
        .option(OptionSpec::new("root_lifetime_days", OptionType::Int).default(3650))
        .option(OptionSpec::new("intermediate_lifetime_days", OptionType::Int).default(1825))
        .option(OptionSpec::new("root_crl_path", OptionType::Path))
        .option(OptionSpec::new("root_crl_lifetime_days", OptionType::Int).default(365))
        .option(OptionSpec::new("root_crl_renew_before", OptionType::Str).default("60d"))
        .options(file_options())
        .options(signer_options(&[
            SignerKind::File,
            SignerKind::AwsKms,
            SignerKind::AwsPca,
        ]))
        .option(
            OptionSpec::new("kms_key_spec", OptionType::Str)
                .choices(["ECC_NIST_P256", "ECC_NIST_P384"])
                .default("ECC_NIST_P256"),
        )
        .options(aws_options())
        .required_if("signer", FILE, &["intermediate_privatekey_path"])
        .required_if("signer", AWS_KMS, &["kms_key_id"])
        .required_if("signer", AWS_PCA, &["certificate_authority_arn"])
}

#[derive(Debug, Deserialize)]
struct Args {
    root_cert_path: String,
    root_privatekey_path: Option<String>,
    intermediate_cert_path: String,
    intermediate_privatekey_path: Option<String>,
    chain_path: String,
    root_common_name: String,
    intermediate_common_name: String,
    organization_name: Option<String>,
    r#type: KeyType,
    curve: Curve,
    size: u32,
    root_lifetime_days: u32,
    intermediate_lifetime_days: u32,
    root_crl_path: Option<String>,
    root_crl_lifetime_days: i64,
    root_crl_renew_before: String,
    owner: Option<String>,
    group: Option<String>,
    mode: Value,
    #[serde(flatten)]
    signer: SignerArgs,
    kms_key_spec: String,
    #[serde(flatten)]
    aws: AwsOptions,
}

fn read_optional(path: &str) -> Result<Option<String>, Failure> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::new(format!("cannot read {path}: {e}"))),
    }
}

fn ensure_parent(path: &str) -> Result<(), Failure> {
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(())
}

fn write(path: &str, contents: &str, perms: &FilePerms) -> Result<(), Failure> {
    ensure_parent(path)?;
    write_atomic(Path::new(path), contents.as_bytes(), perms).map_err(Failure::from)
}

pub fn run(invocation: &Invocation) -> Result<Outcome, Failure> {
    let args: Args = invocation.args()?;
    let spec = KeySpec::from_options(args.r#type, args.curve, args.size)?;
    let key_perms = key_perms(&args.mode, args.owner.clone(), args.group.clone())?;
    let public = FilePerms::public_like(&key_perms);
    let check = invocation.check_mode;
    let now = time::OffsetDateTime::now_utc();
    let subject = |cn: &str, days: u32| CaSubject {
        common_name: cn.to_string(),
        organization: args.organization_name.clone(),
        lifetime_days: days,
    };
    let mut created = Vec::new();
    let root_crl_timing = root_crl_timing(&args)?;
    // Whatever would make the intermediate fail is found before the root is written.
    if args.signer.signer == SignerKind::File {
        preflight_file_intermediate(&args)?;
    }

    // 1. The root: existing, or created from (and with) the root key.
    let existing_root = read_optional(&args.root_cert_path)?;
    let root_key_path = args.root_privatekey_path.clone();
    let load_root_key = |required_for: &str| -> Result<Option<rcgen::KeyPair>, Failure> {
        let path = root_key_path.as_deref().ok_or_else(|| {
            Failure::new(format!("root_privatekey_path is needed to {required_for}"))
        })?;
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
                return Err(Failure::new(format!(
                    "{} is not a CA certificate",
                    args.root_cert_path
                )));
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
                        write(
                            root_key_path.as_deref().unwrap_or_default(),
                            &key.serialize_pem(),
                            &key_perms,
                        )?;
                    }
                    key
                }
            };
            let pem = create_root(
                &key,
                &subject(&args.root_common_name, args.root_lifetime_days),
                now,
            )?;
            if !check {
                write(&args.root_cert_path, &pem, &public)?;
            }
            created.push("root");
            fresh_root_key = Some(key);
            pem
        }
    };
    let root_info = parse_certificate(&root_pem, &args.root_cert_path)?;

    // 2. The intermediate: a key file, a KMS key, or an AWS Private CA.
    let root_key_for_intermediate = || -> Result<rcgen::KeyPair, Failure> {
        let key = match fresh_root_key.take() {
            Some(key) => key,
            None => load_root_key("sign the intermediate CA")?.ok_or_else(|| {
                Failure::new("the root key is needed to sign the intermediate, but root_privatekey_path does not exist")
            })?,
        };
        if public_key_spki(&key) != root_info.spki_der {
            return Err(Failure::new(
                "root_privatekey_path does not belong to root_cert_path",
            ));
        }
        Ok(key)
    };
    let mut remote = RemoteFacts::default();
    let intermediate_pem = match args.signer.signer {
        SignerKind::AwsKms => kms_intermediate(
            &args,
            &public,
            &root_pem,
            root_key_for_intermediate,
            check,
            now,
            &mut created,
            &mut remote,
        )?,
        SignerKind::AwsPca => Some(pca_intermediate(
            &args,
            &public,
            &root_pem,
            root_key_for_intermediate,
            check,
            now,
            &mut created,
            &mut remote,
        )?),
        SignerKind::File => Some(file_intermediate(
            &args,
            &spec,
            &key_perms,
            &public,
            &root_pem,
            root_key_for_intermediate,
            check,
            now,
            &mut created,
        )?),
    };
    let signer_facts = |outcome: Outcome| {
        let mut outcome = outcome.with("signer", args.signer.signer.as_str());
        if let Some(arn) = &remote.kms_key_arn {
            outcome = outcome.with("kms_key_arn", arn.as_str());
        }
        if args.signer.signer == SignerKind::AwsKms {
            outcome = outcome.with("kms_key_created", remote.kms_key_created);
        }
        if let Some(arn) = &args.signer.certificate_authority_arn {
            outcome = outcome.with("certificate_authority_arn", arn.as_str());
        }
        match &remote.calls {
            Some((key, calls)) => outcome.with(key, calls.clone()),
            None => outcome,
        }
    };
    // Check mode, KMS key still to be created: there is no intermediate to show yet.
    let Some(intermediate_pem) = intermediate_pem else {
        let mut outcome = Outcome::new(true, format!("would write: {}", created.join(", ")))
            .with("root_created", created.contains(&"root"))
            .with("intermediate_created", true);
        outcome.diff = Some((
            String::new().into(),
            created
                .iter()
                .map(|c| format!("{c}\n"))
                .collect::<String>()
                .into(),
        ));
        return Ok(signer_facts(outcome));
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

    // 4. The root's CRL, where the root key lives: TLS servers that check the whole chain want
    // one for every CA in it (mtls_ca_revoke bundles it with the intermediate's).
    let mut root_crl_next_update = None;
    if let (Some(path), Some((lifetime, renew_before))) = (&args.root_crl_path, root_crl_timing) {
        let current = read_optional(path)?
            .map(|text| parse_crl(&text))
            .transpose()
            .map_err(|e| Failure::new(format!("{path} is not a CRL: {e}")))?;
        root_crl_next_update = current.as_ref().and_then(|c| c.next_update);
        if current.as_ref().is_some_and(|c| !c.serials.is_empty()) {
            // Revoking an intermediate is an operator's act: never undone by a re-signing.
            return Err(Failure::new(format!(
                "{path} lists revoked certificates; mtls_ca_init only keeps an empty root CRL current: re-sign that one by hand, or move it aside"
            )));
        }
        let why = if created.contains(&"root") {
            Some("a new root")
        } else {
            reissue_reason(current.as_ref(), &[], now, renew_before)
        };
        if let Some(why) = why {
            if !check {
                let key_path = args.root_privatekey_path.as_deref().ok_or_else(|| {
                    Failure::new(format!(
                        "root_privatekey_path is needed to sign the root's CRL ({why})"
                    ))
                })?;
                let root = CaSigner::load(
                    Path::new(&args.root_cert_path),
                    Path::new(key_path),
                    Path::new(&args.root_cert_path),
                )?;
                // The number only has to grow: the signing time does, without a state file.
                let number = now.unix_timestamp().max(1) as u64;
                let pem = root.sign_crl(&[], number, now, lifetime)?;
                write(path, &pem, &public)?;
                root_crl_next_update = parse_crl(&pem).ok().and_then(|c| c.next_update);
            }
            created.push("root_crl");
        }
    }

    let changed = !created.is_empty();
    let mut outcome = Outcome::new(
        changed,
        if changed {
            format!(
                "{}: {}",
                if check { "would write" } else { "wrote" },
                created.join(", ")
            )
        } else {
            "the CA is in place".into()
        },
    )
    .with("root_created", created.contains(&"root"))
    .with("intermediate_created", created.contains(&"intermediate"))
    .with("intermediate_serial", intermediate.serial_hex.clone())
    .with("intermediate_not_after", rfc3339(intermediate.not_after))
    .with("root_crl_next_update", root_crl_next_update.map(rfc3339));
    if changed {
        outcome.diff = Some((
            String::new().into(),
            created
                .iter()
                .map(|c| format!("{c}\n"))
                .collect::<String>()
                .into(),
        ));
    }
    Ok(signer_facts(outcome))
}

/// The root CRL's lifetime and renewal margin, checked before anything is written.
fn root_crl_timing(args: &Args) -> Result<Option<(Duration, Duration)>, Failure> {
    if args.root_crl_path.is_none() {
        return Ok(None);
    }
    if !(1..=3650).contains(&args.root_crl_lifetime_days) {
        return Err(Failure::new(
            "root_crl_lifetime_days must be between 1 and 3650",
        ));
    }
    let lifetime = Duration::from_secs(args.root_crl_lifetime_days as u64 * 86_400);
    let renew_before = match RenewBefore::parse(&args.root_crl_renew_before) {
        Ok(RenewBefore::Duration(d)) if !d.is_zero() && d < lifetime => d,
        _ => {
            return Err(Failure::new(
                "root_crl_renew_before must be a duration such as 60d, more than 0 and shorter than root_crl_lifetime_days",
            ))
        }
    };
    Ok(Some((lifetime, renew_before)))
}

/// The file signer's intermediate as it is on disk, checked before the root is written: a key
/// that cannot be read, or a certificate without its key, fails the task with nothing written.
fn preflight_file_intermediate(args: &Args) -> Result<(), Failure> {
    let Some(key_path) = args.intermediate_privatekey_path.as_deref() else {
        return Ok(()); // file_intermediate says so, with the option's name
    };
    let existing_key = read_optional(key_path)?;
    if let Some(pem) = &existing_key {
        load_private_key(pem, key_path)?;
    } else if read_optional(&args.intermediate_cert_path)?.is_some() {
        return Err(Failure::new(format!(
            "{} exists but its key {key_path} does not: restore the key or remove the certificate",
            args.intermediate_cert_path
        )));
    }
    Ok(())
}

/// What the AWS side reported, for the result.
#[derive(Default)]
struct RemoteFacts {
    kms_key_arn: Option<String>,
    kms_key_created: bool,
    calls: Option<(&'static str, Value)>,
}

/// The intermediate with its key in a file: adopted when certificate and key exist and match.
#[allow(clippy::too_many_arguments)]
fn file_intermediate(
    args: &Args,
    spec: &KeySpec,
    key_perms: &FilePerms,
    public: &FilePerms,
    root_pem: &str,
    root_key: impl FnOnce() -> Result<rcgen::KeyPair, Failure>,
    check: bool,
    now: time::OffsetDateTime,
    created: &mut Vec<&'static str>,
) -> Result<String, Failure> {
    refuse_foreign_options(
        FILE,
        &[
            ("kms_key_id", args.signer.kms_key_id.is_some()),
            (
                "certificate_authority_arn",
                args.signer.certificate_authority_arn.is_some(),
            ),
        ],
    )?;
    let key_path = args
        .intermediate_privatekey_path
        .as_deref()
        .ok_or_else(|| {
            Failure::new("signer is file but intermediate_privatekey_path is missing")
        })?;
    let existing_cert = read_optional(&args.intermediate_cert_path)?;
    let existing_key = read_optional(key_path)?;
    match (existing_cert, &existing_key) {
        (Some(cert_pem), Some(key_pem)) => {
            let info = parse_certificate(&cert_pem, &args.intermediate_cert_path)?;
            let key = load_private_key(key_pem, key_path)?;
            if info.spki_der != public_key_spki(&key) {
                return Err(Failure::new(format!(
                    "{key_path} does not belong to {}: point both at the same intermediate CA",
                    args.intermediate_cert_path
                )));
            }
            if !info.is_ca {
                return Err(Failure::new(format!(
                    "{} is not a CA certificate",
                    args.intermediate_cert_path
                )));
            }
            Ok(cert_pem)
        }
        (Some(_), None) => Err(Failure::new(format!(
            "{} exists but its key {key_path} does not: restore the key or remove the certificate",
            args.intermediate_cert_path
        ))),
        (None, _) => {
            let root_key = root_key()?;
            let key = match existing_key {
                Some(pem) => load_private_key(&pem, key_path)?,
                None => {
                    created.push("intermediate_privatekey");
                    let key = spec.generate()?;
                    if !check {
                        write(key_path, &key.serialize_pem(), key_perms)?;
                    }
                    key
                }
            };
            let pem =
                create_intermediate(&key, &intermediate_subject(args), root_pem, root_key, now)?;
            if !check {
                write(&args.intermediate_cert_path, &pem, public)?;
            }
            created.push("intermediate");
            Ok(pem)
        }
    }
}

fn intermediate_subject(args: &Args) -> CaSubject {
    CaSubject {
        common_name: args.intermediate_common_name.clone(),
        organization: args.organization_name.clone(),
        lifetime_days: args.intermediate_lifetime_days,
    }
}

/// The intermediate with its key in KMS. An existing certificate must be the key's; otherwise
/// the key is found (or, behind an alias that does not exist yet, created), its CSR is signed
/// through KMS and verified, and the root certifies it. No private key touches this host.
#[allow(clippy::too_many_arguments)]
fn kms_intermediate(
    args: &Args,
    public_perms: &FilePerms,
    root_pem: &str,
    root_key: impl FnOnce() -> Result<rcgen::KeyPair, Failure>,
    check: bool,
    now: time::OffsetDateTime,
    created: &mut Vec<&'static str>,
    facts: &mut RemoteFacts,
) -> Result<Option<String>, Failure> {
    refuse_foreign_options(
        AWS_KMS,
        &[
            (
                "intermediate_privatekey_path",
                args.intermediate_privatekey_path.is_some(),
            ),
            (
                "certificate_authority_arn",
                args.signer.certificate_authority_arn.is_some(),
            ),
        ],
    )?;
    let key_id = args.signer.kms_key_id()?;
    let (runtime, config) = aws_runtime(&args.aws)?;
    let kms = Kms::new(&config);
    let result = (|| {
        let existing_cert = read_optional(&args.intermediate_cert_path)?;
        let public = match runtime.block_on(kms.public_key(key_id)).map_err(|e| signer_failure(&e))? {
            Some(public) => public,
            None if existing_cert.is_some() => {
                return Err(Failure::new(format!(
                    "{} exists but its KMS key {key_id} does not: point kms_key_id at the intermediate's key, or remove the certificate",
                    args.intermediate_cert_path
                )))
            }
            None if !key_id.starts_with("alias/") => return Err(signer_failure(&fleetpki_signers::SignerError::KeyNotFound(key_id.into()))),
            None if check => {
                created.extend(["kms_key", "intermediate"]);
                facts.kms_key_created = true;
                return Ok(None);
            }
            None => {
                let description = format!("fleetpki.mtls intermediate CA key ({})", args.intermediate_common_name);
                runtime.block_on(kms.create_signing_key(&args.kms_key_spec, Some(key_id), &description)).map_err(|e| signer_failure(&e))?;
                created.push("kms_key");
                facts.kms_key_created = true;
                runtime
                    .block_on(kms.public_key(key_id)).map_err(|e| signer_failure(&e))?
                    .ok_or_else(|| Failure::new(format!("the KMS key behind {key_id} was created but cannot be found")))?
            }
        };
        facts.kms_key_arn = Some(public.key_arn.clone());
        if let Some(cert_pem) = existing_cert {
            let info = parse_certificate(&cert_pem, &args.intermediate_cert_path)?;
            if info.spki_der != public.spki_der {
                return Err(Failure::new(format!(
                    "{} is not the certificate of KMS key {}: point kms_key_id at the intermediate's key, or remove the certificate",
                    args.intermediate_cert_path, public.key_arn
                )));
            }
            return Ok(Some(cert_pem));
        }
        let root_key = root_key()?;
        let key = Arc::new(
            KmsKey::new(kms.clone(), &public, runtime.clone())
                .map_err(|e| Failure::new(e.to_string()))?,
        );
        let signing_key = RemoteSigningKey::new(key, &public.spki_der)?;
        let csr = intermediate_csr(&signing_key, &intermediate_subject(args))?;
        let pem = certify_intermediate_csr(
            &csr,
            args.intermediate_lifetime_days,
            root_pem,
            root_key,
            now,
        )?;
        if !check {
            write(&args.intermediate_cert_path, &pem, public_perms)?;
        }
        created.push("intermediate");
        Ok(Some(pem))
    })();
    facts.calls = Some(("kms_calls", calls_json(kms.calls())));
    result.map_err(|failure| failure.with("kms_calls", calls_json(kms.calls())))
}

/// The intermediate is an AWS Private CA (SUBORDINATE): one waiting for its certificate gets
/// its CSR certified by the root and the result imported; an active one is adopted.
#[allow(clippy::too_many_arguments)]
fn pca_intermediate(
    args: &Args,
    public: &FilePerms,
    root_pem: &str,
    root_key: impl FnOnce() -> Result<rcgen::KeyPair, Failure>,
    check: bool,
    now: time::OffsetDateTime,
    created: &mut Vec<&'static str>,
    facts: &mut RemoteFacts,
) -> Result<String, Failure> {
    refuse_foreign_options(
        AWS_PCA,
        &[
            (
                "intermediate_privatekey_path",
                args.intermediate_privatekey_path.is_some(),
            ),
            ("kms_key_id", args.signer.kms_key_id.is_some()),
        ],
    )?;
    let arn = args.signer.certificate_authority_arn()?;
    let (runtime, config) = aws_runtime(&args.aws)?;
    let pca = Pca::new(&config);
    let result = (|| {
        let state = runtime
            .block_on(pca.describe(arn))
            .map_err(|e| signer_failure(&e))?;
        if state.ca_type != "SUBORDINATE" {
            return Err(Failure::new(format!(
                "the Private CA {arn} is a {} CA: the root stays offline, so use a SUBORDINATE CA",
                state.ca_type
            )));
        }
        let pem = match state.status.as_str() {
            "PENDING_CERTIFICATE" => {
                let csr = runtime
                    .block_on(pca.ca_csr(arn))
                    .map_err(|e| signer_failure(&e))?;
                let pem = certify_intermediate_csr(
                    &csr,
                    args.intermediate_lifetime_days,
                    root_pem,
                    root_key()?,
                    now,
                )?;
                if !check {
                    runtime
                        .block_on(pca.import_ca_certificate(arn, &pem, root_pem))
                        .map_err(|e| signer_failure(&e))?;
                }
                created.push("intermediate");
                pem
            }
            "ACTIVE" => runtime
                .block_on(pca.ca_certificate(arn))
                .map_err(|e| signer_failure(&e))?,
            other => {
                return Err(Failure::new(format!(
                    "the Private CA {arn} is {other}: it must be PENDING_CERTIFICATE or ACTIVE"
                )))
            }
        };
        let info = parse_certificate(&pem, arn)?;
        if !info.is_ca {
            return Err(Failure::new(format!(
                "the certificate of {arn} is not a CA certificate"
            )));
        }
        if !is_signed_by(&pem, root_pem)? {
            return Err(Failure::new(format!(
                "the certificate of {arn} is not signed by the root {}: this Private CA belongs to another hierarchy",
                args.root_cert_path
            )));
        }
        if read_optional(&args.intermediate_cert_path)?
            .as_deref()
            .map(str::trim)
            != Some(pem.trim())
        {
            if !check {
                write(&args.intermediate_cert_path, &pem, public)?;
            }
            if !created.contains(&"intermediate") {
                created.push("intermediate_certificate");
            }
        }
        Ok(pem)
    })();
    facts.calls = Some(("acmpca_calls", calls_json(pca.calls())));
    result.map_err(|failure| failure.with("acmpca_calls", calls_json(pca.calls())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_of_the_spec_reaches_args() {
        crate::common::assert_args_cover_spec::<super::Args>(&super::spec());
    }
}
