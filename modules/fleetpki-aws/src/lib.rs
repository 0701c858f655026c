//! The AWS plumbing fleetpki.mtls's SQS client and CA signers share: an SDK configuration from
//! amazon.aws-style module options (with an HTTP client that reads the trust store only for
//! HTTPS), a count of every call, and what kind of failure a call met (`AwsErrorKind`, decided
//! once where the SDK's error enters).

mod error_kind;
mod http_client;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region};
use serde::Deserialize;

pub use aws_config::SdkConfig;
pub use error_kind::{capitalised, error_detail, error_words, AwsErrorKind};

/// Why no SDK configuration could be made from the options.
#[derive(Debug, thiserror::Error)]
pub enum AwsConfigError {
    #[error("no AWS region: set the region option or AWS_REGION (or a region in the AWS profile)")]
    NoRegion,
    #[error("access_key and secret_key must be given together")]
    PartialCredentials,
    #[error("the queue {url} is in region {queue_region}, but the calls would go to region {region} (the region option, AWS_REGION or the profile's): set region: {queue_region}, or give the URL of a queue in {region}")]
    RegionMismatch {
        url: String,
        queue_region: String,
        region: String,
    },
}

/// The region an AWS-shaped SQS queue URL names: `https://sqs.eu-west-1.amazonaws.com/…` (also
/// `.amazonaws.com.cn` and the dual-stack `sqs.<region>.api.aws`) or the legacy
/// `https://eu-west-1.queue.amazonaws.com/…`. None for any other host (a local server, a VPC
/// endpoint's name), whose region cannot be told from the URL.
pub fn queue_url_region(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split('/').next()?;
    let host = authority.split(':').next()?;
    let region = host
        .strip_prefix("sqs.")
        .and_then(|h| {
            h.strip_suffix(".amazonaws.com")
                .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
                .or_else(|| h.strip_suffix(".api.aws"))
        })
        .or_else(|| host.strip_suffix(".queue.amazonaws.com"))?;
    let well_formed = region.contains('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    well_formed.then_some(region)
}

/// Refuses a queue URL of another region than the one the client's calls go to: SQS would answer
/// that the queue does not exist (it exists, elsewhere), after a node had created its reply queue
/// in the wrong region.
pub fn check_queue_region(url: &str, region: &str) -> Result<(), AwsConfigError> {
    match queue_url_region(url) {
        Some(queue_region) if queue_region != region => Err(AwsConfigError::RegionMismatch {
            url: url.to_string(),
            queue_region: queue_region.to_string(),
            region: region.to_string(),
        }),
        _ => Ok(()),
    }
}

/// amazon.aws's connection options. Unset ones fall back to the SDK's default chain
/// (environment, shared config and credentials files, instance profile).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AwsOptions {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
}

/// Counts calls by operation; shared by clones of a client (the worker's tasks).
#[derive(Debug, Clone, Default)]
pub struct CallCounter(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl CallCounter {
    pub fn add(&self, operation: &'static str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(operation).or_default() += 1;
        }
    }
    /// A snapshot: operation name → count, plus `total`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let map = self.0.lock().map(|m| m.clone()).unwrap_or_default();
        let total = map.values().sum();
        let mut out: BTreeMap<String, u64> =
            map.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        out.insert("total".into(), total);
        out
    }
}

/// The SDK configuration from amazon.aws-style options: the same for SQS, KMS and ACM PCA.
pub async fn load_config(options: &AwsOptions) -> Result<SdkConfig, AwsConfigError> {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).http_client(http_client::http_client());
    if let Some(profile) = &options.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &options.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    match (&options.access_key, &options.secret_key) {
        (Some(access), Some(secret)) => {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                access,
                secret,
                options.session_token.clone(),
                None,
                "module-options",
            ));
        }
        (None, None) => {}
        _ => return Err(AwsConfigError::PartialCredentials),
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(AwsConfigError::NoRegion);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_of_an_aws_queue_url() {
        for (url, region) in [
            (
                "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr",
                Some("eu-west-1"),
            ),
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q",
                Some("cn-north-1"),
            ),
            (
                "https://sqs.us-gov-west-1.amazonaws.com/123456789012/q",
                Some("us-gov-west-1"),
            ),
            (
                "https://sqs.ap-south-2.api.aws/123456789012/q",
                Some("ap-south-2"),
            ),
            (
                "https://us-east-2.queue.amazonaws.com/123456789012/q",
                Some("us-east-2"),
            ),
            ("http://127.0.0.1:4566/000000000000/fleetpki-csr", None),
            ("http://localhost:9324/queue/q", None),
            (
                "https://vpce-0a1b.sqs.us-east-1.vpce.amazonaws.com/123456789012/q",
                None,
            ),
            ("https://sqs.amazonaws.com/123456789012/q", None),
            ("not a url", None),
        ] {
            assert_eq!(queue_url_region(url), region, "{url}");
        }
    }

    #[test]
    fn a_queue_of_another_region_is_refused_naming_both() {
        let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr";
        assert!(check_queue_region(url, "eu-west-1").is_ok());
        assert!(check_queue_region("http://127.0.0.1:4566/000000000000/q", "us-east-1").is_ok());
        let refused = check_queue_region(url, "us-east-1")
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("is in region eu-west-1")
                && refused.contains("region us-east-1")
                && refused.contains("set region: eu-west-1"),
            "{refused}"
        );
    }
}
