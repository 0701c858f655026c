//! An intermediate CA key held in AWS KMS: signatures come from KMS `Sign`, so no private key
//! of the intermediate ever exists on the worker host.

use std::sync::Arc;

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use aws_sdk_kms::Client;
use fleetpki_aws::SdkConfig;
use fleetpki_core::remote::{algorithm_for_spki, RemoteAlgorithm, RemoteKey, RemoteSignError};

use crate::{error_parts, hint_for, BlockingRuntime, CallCounter, SignerError};

/// Bytes KMS signs as a raw message. A leaf's TBSCertificate is well under 2 KiB and goes raw
/// (KMS hashes it); a larger message — a CRL with many entries — is hashed here and sent as a
/// DIGEST. (moto implements only RAW: scripts/moto_server.py adds DIGEST.)
const MAX_RAW_MESSAGE: usize = 4096;

/// A KMS key's public half, as `GetPublicKey` reports it.
#[derive(Debug, Clone)]
pub struct KmsPublicKey {
    pub key_arn: String,
    pub spki_der: Vec<u8>,
}

/// A KMS client that counts its calls.
#[derive(Debug, Clone)]
pub struct Kms {
    client: Client,
    calls: CallCounter,
}

impl Kms {
    /// KMS with the SDK's standard retry (exponential backoff with jitter on throttling and
    /// transient errors), five attempts.
    pub fn new(config: &SdkConfig) -> Self {
        let config = aws_sdk_kms::config::Builder::from(config)
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .build();
        Kms {
            client: Client::from_conf(config),
            calls: CallCounter::default(),
        }
    }

    pub fn calls(&self) -> std::collections::BTreeMap<String, u64> {
        self.calls.snapshot()
    }

    fn fail<E, R>(
        operation: &'static str,
        target: &str,
        error: &aws_sdk_kms::error::SdkError<E, R>,
    ) -> SignerError
    where
        E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        SignerError::call("KMS", operation, target, error)
    }

    /// The key's public key, or None when no such key (or alias) exists. Refuses a key that
    /// is not a SIGN_VERIFY key; a disabled one fails here already (DisabledException).
    /// (GetPublicKey alone: DescribeKey's large answer would cost the worker binary ~15 KB.)
    pub async fn public_key(&self, key_id: &str) -> Result<Option<KmsPublicKey>, SignerError> {
        self.calls.add("GetPublicKey");
        let out = match self.client.get_public_key().key_id(key_id).send().await {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_not_found_exception()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Self::fail("GetPublicKey", key_id, &e)),
        };
        let unusable = |why: String| SignerError::KeyUnusable {
            key: key_id.to_string(),
            why,
        };
        if out.key_usage() != Some(&KeyUsageType::SignVerify) {
            let usage = out.key_usage().map_or("unknown", |u| u.as_str());
            return Err(unusable(format!(
                "its usage is {usage}; create it with KeyUsage SIGN_VERIFY"
            )));
        }
        let spki_der = out
            .public_key()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| unusable("GetPublicKey returned no key".into()))?;
        let key_arn = out.key_id().unwrap_or(key_id).to_string();
        Ok(Some(KmsPublicKey { key_arn, spki_der }))
    }

    /// Creates an asymmetric SIGN_VERIFY key of `spec` (ECC_NIST_P256 / ECC_NIST_P384) and,
    /// when `alias` is given, points that alias at it. Returns the key's ARN.
    pub async fn create_signing_key(
        &self,
        spec: &str,
        alias: Option<&str>,
        description: &str,
    ) -> Result<String, SignerError> {
        let key_spec = KeySpec::from(spec);
        self.calls.add("CreateKey");
        let out = self
            .client
            .create_key()
            .key_spec(key_spec)
            .key_usage(KeyUsageType::SignVerify)
            .description(description)
            .send()
            .await
            .map_err(|e| Self::fail("CreateKey", spec, &e))?;
        let arn = out
            .key_metadata()
            .map(|m| m.arn().unwrap_or(m.key_id()).to_string())
            .unwrap_or_default();
        if let Some(alias) = alias {
            self.calls.add("CreateAlias");
            self.client
                .create_alias()
                .alias_name(alias)
                .target_key_id(&arn)
                .send()
                .await
                .map_err(|e| Self::fail("CreateAlias", alias, &e))?;
        }
        Ok(arn)
    }

    /// One KMS `Sign` of `message` (raw up to 4 KiB, else as its digest).
    pub async fn sign(
        &self,
        key_id: &str,
        algorithm: RemoteAlgorithm,
        message: &[u8],
    ) -> Result<(String, Vec<u8>), RemoteSignError> {
        let (spec, body, message_type) = sign_request(algorithm, message);
        self.calls.add("Sign");
        let out = self
            .client
            .sign()
            .key_id(key_id)
            .message(Blob::new(body))
            .message_type(message_type)
            .signing_algorithm(spec)
            .send()
            .await
            .map_err(|e| {
                let (code, text, _) = error_parts(&e);
                crate::remote_error(
                    code.clone(),
                    format!("KMS Sign with {key_id}: {text}{}", hint_for(&code)),
                )
            })?;
        let signature = out
            .signature()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| {
                RemoteSignError::outage("EmptySignature", "KMS Sign returned no signature")
            })?;
        Ok((out.key_id().unwrap_or(key_id).to_string(), signature))
    }
}

/// What a `Sign` request carries for `message`: the algorithm, and the message itself (RAW) or,
/// above 4 KiB, its digest with the algorithm's hash (DIGEST).
fn sign_request(
    algorithm: RemoteAlgorithm,
    message: &[u8],
) -> (SigningAlgorithmSpec, Vec<u8>, MessageType) {
    use aws_lc_rs::digest::{digest, SHA256, SHA384};
    let (spec, hash) = match algorithm {
        RemoteAlgorithm::EcdsaP256Sha256 => (SigningAlgorithmSpec::EcdsaSha256, &SHA256),
        RemoteAlgorithm::EcdsaP384Sha384 => (SigningAlgorithmSpec::EcdsaSha384, &SHA384),
        RemoteAlgorithm::RsaPkcs1Sha256 => (SigningAlgorithmSpec::RsassaPkcs1V15Sha256, &SHA256),
    };
    if message.len() <= MAX_RAW_MESSAGE {
        (spec, message.to_vec(), MessageType::Raw)
    } else {
        (
            spec,
            digest(hash, message).as_ref().to_vec(),
            MessageType::Digest,
        )
    }
}

/// A KMS key as the CA's signing key. rcgen calls `sign` synchronously from the worker's
/// threads; the call runs on a runtime of its own.
pub struct KmsKey {
    kms: Kms,
    key_arn: String,
    algorithm: RemoteAlgorithm,
    runtime: Arc<BlockingRuntime>,
}

impl KmsKey {
    /// `key_id` may be an alias: it is resolved once, and every `Sign` names the key's ARN,
    /// so the audit log and the signatures agree even if the alias is moved later.
    pub fn new(
        kms: Kms,
        public: &KmsPublicKey,
        runtime: Arc<BlockingRuntime>,
    ) -> Result<Self, SignerError> {
        let algorithm =
            algorithm_for_spki(&public.spki_der).map_err(|e| SignerError::KeyUnusable {
                key: public.key_arn.clone(),
                why: e.to_string(),
            })?;
        Ok(KmsKey {
            kms,
            key_arn: public.key_arn.clone(),
            algorithm,
            runtime,
        })
    }

    pub fn calls(&self) -> std::collections::BTreeMap<String, u64> {
        self.kms.calls()
    }

    /// Whether the key signs now: one `Sign` of a fixed probe message (what a service does
    /// before it takes requests from the queue again after a failure).
    pub fn probe(&self) -> Result<(), RemoteSignError> {
        self.sign(b"fleetpki.mtls signer probe").map(|_| ())
    }
}

impl RemoteKey for KmsKey {
    fn key_ref(&self) -> &str {
        &self.key_arn
    }

    fn algorithm(&self) -> RemoteAlgorithm {
        self.algorithm
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, RemoteSignError> {
        self.runtime
            .block_on(self.kms.sign(&self.key_arn, self.algorithm, message))
            .map(|(_, signature)| signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_messages_go_raw_and_large_ones_as_the_digest_of_the_keys_hash() {
        let small = vec![7u8; MAX_RAW_MESSAGE];
        let (_, body, kind) = sign_request(RemoteAlgorithm::EcdsaP256Sha256, &small);
        assert_eq!((body, kind), (small.clone(), MessageType::Raw));

        let large = vec![7u8; MAX_RAW_MESSAGE + 1];
        let (spec, body, kind) = sign_request(RemoteAlgorithm::EcdsaP256Sha256, &large);
        assert_eq!(
            (spec, kind),
            (SigningAlgorithmSpec::EcdsaSha256, MessageType::Digest)
        );
        assert_eq!(
            body,
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &large).as_ref()
        );
        let (spec, body, _) = sign_request(RemoteAlgorithm::EcdsaP384Sha384, &large);
        assert_eq!((spec, body.len()), (SigningAlgorithmSpec::EcdsaSha384, 48));
    }
}
