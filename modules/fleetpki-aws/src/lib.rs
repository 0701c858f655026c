//! The AWS plumbing fleetpki.mtls's SQS client and CA signers share: an SDK configuration from
//! amazon.aws-style module options, a count of every call, and what kind of failure a call met
//! (`AwsErrorKind`, decided once where the SDK's error enters).

mod error_kind;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region};
use serde::Deserialize;

pub use aws_config::SdkConfig;
pub use error_kind::{error_words, AwsErrorKind};

/// Why no SDK configuration could be made from the options.
#[derive(Debug, thiserror::Error)]
pub enum AwsConfigError {
    #[error("no AWS region: set the region option or AWS_REGION (or a region in the AWS profile)")]
    NoRegion,
    #[error("access_key and secret_key must be given together")]
    PartialCredentials,
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
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
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
