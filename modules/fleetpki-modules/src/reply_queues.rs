//! `mtls_reply_queues`: delete the reply queues of instances that are gone. Nodes create their
//! own reply queue; an autoscaled fleet leaves one behind for every instance it retires, and a
//! node removed with the `mtls_client` role's `state: absent` deletes its own.

use ansible_module::{
    ArgumentSpec, ElementType, Failure, Invocation, OptionSpec, OptionType, Outcome,
};
use fleetpki_aws::AwsOptions;
use fleetpki_core::reply_queues::{plan_cleanup, removal_names};
use fleetpki_sqs::Sqs;
use serde::Deserialize;
use serde_json::json;

use crate::common::{aws_options, calls_json, runtime, sqs_error, sqs_failure};

pub const NAME: &str = "fleetpki.mtls.mtls_reply_queues";

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new(
            "keep_instance_ids",
            OptionType::List(ElementType::Str),
        ))
        .option(OptionSpec::new(
            "remove_instance_ids",
            OptionType::List(ElementType::Str),
        ))
        .option(OptionSpec::new("reply_queue_prefix", OptionType::Str).default("fleetpki-reply-"))
        .option(OptionSpec::new("max_delete", OptionType::Int).default(100))
        .option(OptionSpec::new("force", OptionType::Bool).default(false))
        .options(aws_options())
        .mutually_exclusive(&["keep_instance_ids", "remove_instance_ids"])
        .required_one_of(&["keep_instance_ids", "remove_instance_ids"])
}

#[derive(Debug, Deserialize)]
struct Args {
    keep_instance_ids: Option<Vec<String>>,
    remove_instance_ids: Option<Vec<String>>,
    reply_queue_prefix: String,
    max_delete: i64,
    force: bool,
    #[serde(flatten)]
    aws: AwsOptions,
}

pub fn run(invocation: &Invocation) -> Result<Outcome, Failure> {
    let args: Args = invocation.args()?;
    if args.reply_queue_prefix.len() < 4 {
        // A short prefix would match other applications' queues.
        return Err(Failure::new(
            "reply_queue_prefix must have at least 4 characters",
        ));
    }
    if args.max_delete < 0 {
        return Err(Failure::new("max_delete must be 0 or more"));
    }
    let max_delete = args.max_delete as u64;
    // The spec makes the two lists exclusive, and one of them required.
    if let Some(remove) = &args.remove_instance_ids {
        let names = removal_names(&args.reply_queue_prefix, remove)
            .map_err(|e| Failure::new(e.to_string()))?;
        return remove_queues(&names, &args.aws, invocation.check_mode);
    }
    let keep_instance_ids = args.keep_instance_ids.unwrap_or_default();
    runtime()?.block_on(async {
        let sqs = Sqs::connect(&args.aws).await.map_err(sqs_error)?;
        let urls = sqs
            .list_queues(&args.reply_queue_prefix)
            .await
            .map_err(|e| sqs_failure(e, &sqs))?;
        let plan = plan_cleanup(
            &keep_instance_ids,
            &args.reply_queue_prefix,
            &urls,
            max_delete,
            args.force,
        );
        if let Some(refusal) = plan.refused {
            return Err(Failure::new(refusal.to_string())
                .with("stale_queue_urls", json!(plan.stale))
                .with("sqs_calls", calls_json(sqs.calls())));
        }
        let (stale, kept) = (plan.stale, plan.kept);
        if !invocation.check_mode {
            for url in &stale {
                sqs.delete_queue(url)
                    .await
                    .map_err(|e| sqs_failure(e, &sqs))?;
            }
        }
        let verb = if invocation.check_mode {
            "would delete"
        } else {
            "deleted"
        };
        Ok(Outcome::new(
            !stale.is_empty(),
            format!("{verb} {} of {} reply queues", stale.len(), urls.len()),
        )
        .with("deleted_queue_urls", json!(stale))
        .with("kept", kept)
        .with("sqs_calls", calls_json(sqs.calls())))
    })
}

/// Deletes the queues named `names` that exist (looked up by name, so no ListQueues permission is
/// needed and no other queue can match). Run again, it finds none and changes nothing.
fn remove_queues(names: &[String], aws: &AwsOptions, check_mode: bool) -> Result<Outcome, Failure> {
    runtime()?.block_on(async {
        let sqs = Sqs::connect(aws).await.map_err(sqs_error)?;
        let mut found = Vec::new();
        for name in names {
            if let Some(url) = sqs
                .queue_url(name)
                .await
                .map_err(|e| sqs_failure(e, &sqs))?
            {
                found.push(url);
            }
        }
        if !check_mode {
            for (done, url) in found.iter().enumerate() {
                // Said on failure too: those deleted before it are gone.
                sqs.delete_queue(url).await.map_err(|e| {
                    sqs_failure(e, &sqs).with("deleted_queue_urls", json!(found[..done]))
                })?;
            }
        }
        let verb = if check_mode {
            "would delete"
        } else {
            "deleted"
        };
        Ok(Outcome::new(
            !found.is_empty(),
            format!(
                "{verb} {} of the {} reply queues named ({} did not exist)",
                found.len(),
                names.len(),
                names.len() - found.len()
            ),
        )
        .with("deleted_queue_urls", json!(found))
        .with("kept", 0)
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
