//! `mtls_ca_revoke`: revoke certificates by serial or by instance id, and keep a CRL signed by
//! the intermediate up to date. Run it on a schedule too: it re-issues the CRL before its
//! nextUpdate, so an expired CRL never breaks handshakes.
//!
//! Issuance records are the workers' audit logs (one hash-chained JSON line per decision; every
//! line about a certificate carries its serial, instance id and notAfter). With several worker
//! hosts, gather their records to the host running this module (e.g. `ansible.builtin.fetch`)
//! and list them all. A record whose chain is broken is reported, not trusted.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ansible_module::{
    ArgumentSpec, ElementType, Failure, Invocation, OptionSpec, OptionType, Outcome,
};
use fleetpki_aws::AwsOptions;
use fleetpki_core::crl::{
    bundle, crl_diff_fields, normalise_pem, normalize_serial, parse_crl, reissue_reason,
    split_bundle, Reason, Revocation,
};
use fleetpki_core::layout::{write_atomic, FilePerms};
use fleetpki_core::record::{self, RecordedCertificate};
use fleetpki_core::renewal::RenewBefore;
use serde::Deserialize;
use serde_json::json;

use crate::common::{aws_options, rfc3339};
use crate::signer::{signer_options, Backend, SignerArgs, SignerKind, AWS_KMS, FILE};

pub const NAME: &str = "fleetpki.mtls.mtls_ca_revoke";

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new("ownca_path", OptionType::Path).required())
        .option(OptionSpec::new("ownca_privatekey_path", OptionType::Path))
        .option(OptionSpec::new("ca_chain_path", OptionType::Path).required())
        .option(OptionSpec::new("crl_path", OptionType::Path).required())
        .option(OptionSpec::new("root_crl_path", OptionType::Path))
        .option(OptionSpec::new("revocations_path", OptionType::Path).required())
        .option(
            OptionSpec::new("issuance_log_paths", OptionType::List(ElementType::Str))
                .default(json!([])),
        )
        .option(OptionSpec::new("serials", OptionType::List(ElementType::Str)).default(json!([])))
        .option(
            OptionSpec::new("instance_ids", OptionType::List(ElementType::Str)).default(json!([])),
        )
        .option(
            OptionSpec::new("reason", OptionType::Str)
                .choices([
                    "unspecified",
                    "key_compromise",
                    "affiliation_changed",
                    "superseded",
                    "cessation_of_operation",
                ])
                .default("unspecified"),
        )
        .option(OptionSpec::new("crl_lifetime_days", OptionType::Int).default(7))
        .option(OptionSpec::new("crl_renew_before", OptionType::Str).default("2d"))
        .options(signer_options(&[SignerKind::File, SignerKind::AwsKms]))
        .options(aws_options())
        .required_if("signer", FILE, &["ownca_privatekey_path"])
        .required_if("signer", AWS_KMS, &["kms_key_id"])
}

#[derive(Debug, Deserialize)]
struct Args {
    ownca_path: String,
    ownca_privatekey_path: Option<String>,
    ca_chain_path: String,
    crl_path: String,
    root_crl_path: Option<String>,
    revocations_path: String,
    issuance_log_paths: Vec<String>,
    serials: Vec<String>,
    instance_ids: Vec<String>,
    reason: Reason,
    crl_lifetime_days: i64,
    crl_renew_before: String,
    #[serde(flatten)]
    signer: SignerArgs,
    #[serde(flatten)]
    aws: AwsOptions,
}

#[derive(Debug, Default, Deserialize, serde::Serialize)]
struct State {
    /// Bumped on every CRL issued (the CRL number must increase).
    crl_number: u64,
    revoked: Vec<Revocation>,
}

/// The certificates the workers' issuance records hold (every line with a serial: signed,
/// issued, or signed and not delivered), and what is wrong with each record's chain, in words.
fn recorded_certificates(
    paths: &[String],
) -> Result<(Vec<RecordedCertificate>, Vec<String>), Failure> {
    let mut certificates = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        // As bytes: a line cut inside a character by a crash must not make the record unreadable
        // (it is reported, not trusted).
        let bytes = std::fs::read(path)
            .map_err(|e| Failure::new(format!("cannot read the issuance record {path}: {e}")))?;
        let text = String::from_utf8_lossy(&bytes);
        problems.extend(
            record::verify(&text)
                .into_iter()
                .map(|problem| format!("{path}: {problem}")),
        );
        certificates.extend(record::certificates(&text));
    }
    Ok((certificates, problems))
}

pub fn run(invocation: &Invocation) -> Result<Outcome, Failure> {
    let args: Args = invocation.args()?;
    if !(1..=366).contains(&args.crl_lifetime_days) {
        return Err(Failure::new("crl_lifetime_days must be between 1 and 366"));
    }
    let renew_before = match RenewBefore::parse(&args.crl_renew_before) {
        Ok(RenewBefore::Duration(d)) => d,
        _ => {
            return Err(Failure::new(
                "crl_renew_before must be a duration such as 2d or 12h",
            ))
        }
    };
    if renew_before.is_zero() {
        return Err(Failure::new("crl_renew_before must be more than 0: with 0 the CRL is re-issued only after it expired"));
    }
    let lifetime = Duration::from_secs(args.crl_lifetime_days as u64 * 86_400);
    if renew_before >= lifetime {
        return Err(Failure::new("crl_renew_before must be shorter than crl_lifetime_days, or every run re-issues the CRL"));
    }
    // With signer=aws_kms the CRL is signed through KMS like the certificates.
    let backend = Backend::open(
        &args.signer,
        &args.aws,
        &args.ownca_path,
        args.ownca_privatekey_path.as_deref(),
        &args.ca_chain_path,
        None,
    )?;
    let Backend::SigningKey { signer, .. } = &backend else {
        return Err(Failure::new(
            "AWS Private CA publishes its own CRL: revoke with `aws acm-pca revoke-certificate`",
        ));
    };
    let now = time::OffsetDateTime::now_utc();

    // 1. The revocation state, plus what this task revokes.
    let mut state: State = match std::fs::read_to_string(&args.revocations_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            Failure::new(format!(
                "{} is not a revocation state file: {e}",
                args.revocations_path
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot read {}: {e}",
                args.revocations_path
            )))
        }
    };
    for revocation in &mut state.revoked {
        revocation.serial = normalize_serial(&revocation.serial)?;
    }
    let known: BTreeSet<String> = state.revoked.iter().map(|r| r.serial.clone()).collect();
    let mut wanted: Vec<(String, Option<String>)> = Vec::new();
    for serial in &args.serials {
        wanted.push((normalize_serial(serial)?, None));
    }
    let mut warnings = Vec::new();
    let mut record_problems: Vec<String> = Vec::new();
    if !args.instance_ids.is_empty() {
        if args.issuance_log_paths.is_empty() {
            return Err(Failure::new(
                "revoking by instance_ids needs issuance_log_paths (the workers' issuance records, their audit_log_path files)",
            ));
        }
        let (records, problems) = recorded_certificates(&args.issuance_log_paths)?;
        // Revoking is safe whatever the record says; a broken chain is said, not trusted.
        for problem in &problems {
            warnings.push(format!(
                "the issuance record is not whole ({problem}): certificates it no longer lists cannot be revoked by instance id; compare it with the copy on the worker host and with the worker's journal"
            ));
        }
        record_problems = problems;
        for instance in &args.instance_ids {
            let found: Vec<_> = records
                .iter()
                .filter(|c| &c.instance_id == instance && c.not_after > now.unix_timestamp())
                .collect();
            if found.is_empty() {
                warnings.push(format!(
                    "no unexpired certificate of {instance} is in the issuance records: nothing revoked for it (check the id, and that every worker's record is listed)"
                ));
            }
            for certificate in found {
                wanted.push((
                    normalize_serial(&certificate.serial)?,
                    Some(certificate.instance_id.clone()),
                ));
            }
        }
    }
    let mut newly: Vec<String> = Vec::new();
    for (serial, instance_id) in wanted {
        if known.contains(&serial) || newly.contains(&serial) {
            continue;
        }
        state.revoked.push(Revocation {
            serial: serial.clone(),
            instance_id,
            reason: args.reason,
            revoked_at: now.unix_timestamp(),
        });
        newly.push(serial);
    }

    // 2. The root's CRL, bundled after the intermediate's: servers that check the whole chain
    // refuse every client without it.
    let root_crl = match &args.root_crl_path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::new(format!("cannot read the root's CRL {path}: {e}; make it with mtls_ca_init root_crl_path where the root key lives (the ca_setup role does) and copy it here"))
            })?;
            let info =
                parse_crl(&text).map_err(|e| Failure::new(format!("{path} is not a CRL: {e}")))?;
            match info.next_update {
                Some(next) if next <= now => warnings.push(format!(
                    "the root's CRL {path} expired at {}: servers that check the whole chain (nginx ssl_crl, HAProxy crl-file) refuse every client; re-sign it with mtls_ca_init where the root key lives (ca_setup) and copy it here",
                    rfc3339(next)
                )),
                Some(next) if next - now <= renew_before => warnings.push(format!(
                    "the root's CRL {path} expires at {}: re-sign it with mtls_ca_init where the root key lives (ca_setup) before then",
                    rfc3339(next)
                )),
                _ => {}
            }
            Some((normalise_pem(&text)?, text))
        }
        None => {
            warnings.push("no root_crl_path: the CRL file holds the intermediate's CRL only, and servers that check the whole chain (nginx ssl_crl, HAProxy crl-file, openssl verify -crl_check_all) refuse every client with it".into());
            None
        }
    };

    // 3. Re-issue the CRL when the list changed, when it is missing, when its nextUpdate is
    // near, or when the root's CRL beside it changed.
    let (current, bundled_root) = match std::fs::read_to_string(&args.crl_path) {
        Ok(text) => match split_bundle(&text)? {
            Some((first, rest)) => (Some(parse_crl(&first)?), rest),
            None => {
                return Err(Failure::new(format!(
                    "{} holds no CRL: remove it, and it is issued afresh",
                    args.crl_path
                )))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, String::new()),
        Err(e) => return Err(Failure::new(format!("cannot read {}: {e}", args.crl_path))),
    };
    let mut listed: Vec<String> = state.revoked.iter().map(|r| r.serial.clone()).collect();
    listed.sort();
    let root_part = root_crl
        .as_ref()
        .map_or("", |(normalised, _)| normalised.as_str());
    let why = reissue_reason(current.as_ref(), &listed, now, renew_before)
        .or((bundled_root != root_part).then_some("the root's CRL beside it changed"));
    // Which key signed, and (with KMS) what it cost: on every result.
    let finish = |outcome: Outcome| match backend.calls() {
        Some((key, calls)) => outcome.with("signer", backend.name()).with(key, calls),
        None => outcome.with("signer", backend.name()),
    };
    let mut outcome = Outcome::new(false, "the CRL is current")
        .with("revoked", json!(newly))
        .with("revoked_count", state.revoked.len())
        .with("issuance_record_problems", json!(record_problems));
    outcome.warnings = warnings;
    if let Some(crl) = &current {
        outcome = outcome.with("crl_next_update", crl.next_update.map(rfc3339));
    }
    let Some(why) = why else {
        return Ok(finish(outcome));
    };
    outcome.changed = true;
    // --diff: the CRL in place (its number is the state's, which only this module bumps) and the
    // one issued now.
    outcome.diff = Some((
        current.as_ref().map_or(serde_json::Value::Null, |crl| {
            crl_diff_fields(state.crl_number, &crl.serials)
        }),
        crl_diff_fields(state.crl_number + 1, &listed),
    ));
    outcome.msg = format!(
        "{} a new CRL: {why}",
        if invocation.check_mode {
            "would issue"
        } else {
            "issued"
        }
    );
    if invocation.check_mode {
        return Ok(finish(outcome));
    }
    for path in [&args.revocations_path, &args.crl_path] {
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.is_dir())
        {
            return Err(Failure::new(format!(
                "the directory {} of {path} does not exist: create it first",
                parent.display()
            )));
        }
    }
    state.crl_number += 1;
    let crl_pem = signer.sign_crl(&state.revoked, state.crl_number, now, lifetime)?;
    let crl_pem = match &root_crl {
        Some((_, root_text)) => bundle(&crl_pem, root_text),
        None => crl_pem,
    };
    let perms = FilePerms::private(None, None, 0o600);
    let state_json = serde_json::to_vec_pretty(&state).map_err(|e| Failure::new(e.to_string()))?;
    write_atomic(Path::new(&args.revocations_path), &state_json, &perms)?;
    write_atomic(
        Path::new(&args.crl_path),
        crl_pem.as_bytes(),
        &FilePerms::public_like(&perms),
    )?;
    let next = now.replace_nanosecond(0).unwrap_or(now) + lifetime;
    Ok(finish(
        outcome
            .with("crl_next_update", rfc3339(next))
            .with("crl_number", state.crl_number),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_of_the_spec_reaches_args() {
        crate::common::assert_args_cover_spec::<super::Args>(&super::spec());
    }
}
