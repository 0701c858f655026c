//! `mtls_cert_info`: what a node's install layout holds — the installed certificate, its
//! renewal time, the request waiting for an answer, the last result and the CA's last refusal.
//! Reads only; the same in check mode.

use ansible_module::{ArgumentSpec, Failure, Invocation, OptionSpec, OptionType, Outcome};
use fleetpki_core::layout::Layout;
use fleetpki_core::policy::is_valid_instance_id;
use serde::Deserialize;
use serde_json::Value;

use crate::common::node_status;

pub const NAME: &str = "fleetpki.mtls.mtls_cert_info";

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new("path", OptionType::Path).required())
        .option(OptionSpec::new("instance_id", OptionType::Str))
}

#[derive(Debug, Deserialize)]
struct Args {
    path: String,
    instance_id: Option<String>,
}

pub fn run(invocation: &Invocation) -> Result<Outcome, Failure> {
    let args: Args = invocation.args()?;
    if let Some(id) = args
        .instance_id
        .as_deref()
        .filter(|id| !is_valid_instance_id(id))
    {
        return Err(ansible_module::ArgumentError::Invalid {
            name: "instance_id".into(),
            problem: format!("'{id}' is not an instance id: use 1-64 letters, digits, '-' or '_'"),
        }
        .into());
    }
    let layout = Layout::new(&args.path);
    if !layout.root().exists() {
        return Err(Failure::new(format!(
            "{} does not exist: nothing was ever installed or requested there (check path, the mtls_client_path of the node)",
            args.path
        )));
    }
    // The renewal jitter is the host's: its instance id, else the certificate's or the request's.
    let probe = node_status(&layout, args.instance_id.as_deref().unwrap_or_default())?;
    let instance_id = args
        .instance_id
        .clone()
        .or_else(|| {
            probe
                .certificate
                .as_ref()
                .and_then(|c| c.common_name.clone())
        })
        .or_else(|| probe.pending.as_ref().map(|p| p.instance_id.clone()));
    let status = match &instance_id {
        Some(id) => node_status(&layout, id)?,
        None => probe,
    };
    let facts = status.facts(time::OffsetDateTime::now_utc());
    let msg = match (&status.certificate, &status.pending) {
        (Some(cert), _) => format!(
            "certificate {} valid until {}",
            cert.serial_hex,
            fleetpki_core::rfc3339(cert.not_after)
        ),
        (None, Some(p)) => format!("no certificate yet; request {} is pending", p.request_id),
        (None, None) => "no certificate and no pending request".to_string(),
    };
    let mut outcome = Outcome::new(false, msg)
        .with("path", args.path.clone())
        .with("instance_id", instance_id.map_or(Value::Null, Value::from));
    if let Value::Object(facts) = facts {
        outcome.values.extend(facts);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_of_the_spec_reaches_args() {
        crate::common::assert_args_cover_spec::<super::Args>(&super::spec());
    }
}
