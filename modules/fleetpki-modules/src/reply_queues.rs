//! `mtls_reply_queues`: delete the reply queues of instances that are gone. Nodes create their
//! own reply queue; an autoscaled fleet leaves one behind for every instance it retires.

use ansible_module::{
    ArgumentSpec, ElementType, Failure, Invocation, OptionSpec, OptionType, Outcome,
};
use fleetpki_aws::AwsOptions;
use fleetpki_core::reply_queues::plan_cleanup;
use fleetpki_sqs::Sqs;
use serde::Deserialize;
use serde_json::json;

use crate::common::{aws_options, calls_json, runtime, sqs_error, sqs_failure};

pub const NAME: &str = "fleetpki.mtls.mtls_reply_queues";

pub fn spec() -> ArgumentSpec {
    ArgumentSpec::new()
        .option(OptionSpec::new("keep_instance_ids", OptionType::List(ElementType::Str)).required())
        .option(OptionSpec::new("reply_queue_prefix", OptionType::Str).default("fleetpki-reply-"))
        .option(OptionSpec::new("max_delete", OptionType::Int).default(100))
        .option(OptionSpec::new("force", OptionType::Bool).default(false))
        .options(aws_options())
}

#[derive(Debug, Deserialize)]
struct Args {
    keep_instance_ids: Vec<String>,
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
    runtime()?.block_on(async {
        let sqs = Sqs::connect(&args.aws).await.map_err(sqs_error)?;
        let urls = sqs
            .list_queues(&args.reply_queue_prefix)
            .await
            .map_err(|e| sqs_failure(e, &sqs))?;
        let plan = plan_cleanup(
            &args.keep_instance_ids,
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_of_the_spec_reaches_args() {
        crate::common::assert_args_cover_spec::<super::Args>(&super::spec());
    }
}
