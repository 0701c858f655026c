//! AWS Private CA as the issuer: our policy decides, Private CA signs. Its templates copy the
//! subject and names from the CSR (which the policy checked), and what comes back is checked
//! against the request before anyone sees it. API passthrough is not used: its request types
//! would push the worker binary past the 6 MB budget, and the checks make it unnecessary.

use std::time::Duration;

use aws_sdk_acmpca::config::retry::RetryConfig;
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{
    CertificateAuthorityStatus, SigningAlgorithm, Validity, ValidityPeriodType,
};
use aws_sdk_acmpca::Client;
use fleetpki_aws::SdkConfig;
use fleetpki_core::remote::{RemoteAlgorithm, RemoteSignError};
use fleetpki_core::wire::Profile;

use crate::{error_parts, hint_for, CallCounter, SignerError};

/// How long to wait for Private CA to finish issuing one certificate (it is asynchronous;
/// typically well under a second).
pub const ISSUANCE_WAIT: Duration = Duration::from_secs(30);

/// The certificate template for a profile. These copy the subject and the names from the CSR,
/// so the worker first refuses a CSR whose subject is not the instance id, and checks what
/// comes back against the request.
pub fn template_for(profile: Profile) -> &'static str {
    match (profile.client_auth(), profile.server_auth()) {
        (true, false) => "arn:aws:acm-pca:::template/EndEntityClientAuthCertificate/V1",
        (false, true) => "arn:aws:acm-pca:::template/EndEntityServerAuthCertificate/V1",
        _ => "arn:aws:acm-pca:::template/EndEntityCertificate/V1",
    }
}

/// What one issuance asks for.
#[derive(Debug, Clone)]
pub struct Issuance<'a> {
    pub csr_pem: &'a str,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub template_arn: &'a str,
    /// Makes a retried IssueCertificate return the same certificate (the request id).
    pub idempotency_token: &'a str,
}

/// The state of a Private CA as DescribeCertificateAuthority reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaState {
    pub status: String,
    pub ca_type: String,
}

/// An ACM PCA client that counts its calls.
#[derive(Debug, Clone)]
pub struct Pca {
    client: Client,
    calls: CallCounter,
}

impl Pca {
    pub fn new(config: &SdkConfig) -> Self {
        let config = aws_sdk_acmpca::config::Builder::from(config)
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .build();
        Pca {
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
        error: &aws_sdk_acmpca::error::SdkError<E, R>,
    ) -> SignerError
    where
        E: aws_sdk_acmpca::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        SignerError::call("ACM PCA", operation, target, error)
    }

    pub async fn describe(&self, ca_arn: &str) -> Result<CaState, SignerError> {
        self.calls.add("DescribeCertificateAuthority");
        let out = self
            .client
            .describe_certificate_authority()
            .certificate_authority_arn(ca_arn)
            .send()
            .await
            .map_err(|e| Self::fail("DescribeCertificateAuthority", ca_arn, &e))?;
        let ca = out.certificate_authority();
        Ok(CaState {
            status: ca
                .and_then(|c| c.status())
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            ca_type: ca
                .and_then(|c| c.r#type())
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
        })
    }

    /// Whether the CA issues now (checked before any request is taken, and a service's probe
    /// after a failure).
    pub async fn probe(&self, ca_arn: &str) -> Result<(), RemoteSignError> {
        let state = self
            .describe(ca_arn)
            .await
            .map_err(|e| RemoteSignError::outage("DescribeFailed", e.to_string()))?;
        if state.status == CertificateAuthorityStatus::Active.as_str() {
            Ok(())
        } else {
            Err(RemoteSignError::outage(
                "InvalidStateException",
                format!("the Private CA {ca_arn} is {}", state.status),
            ))
        }
    }

    /// The CSR of a CA waiting for its certificate (PENDING_CERTIFICATE).
    pub async fn ca_csr(&self, ca_arn: &str) -> Result<String, SignerError> {
        self.calls.add("GetCertificateAuthorityCsr");
        let out = self
            .client
            .get_certificate_authority_csr()
            .certificate_authority_arn(ca_arn)
            .send()
            .await
            .map_err(|e| Self::fail("GetCertificateAuthorityCsr", ca_arn, &e))?;
        out.csr()
            .map(str::to_string)
            .ok_or_else(|| SignerError::CaUnusable {
                arn: ca_arn.into(),
                why: "it returned no CSR".into(),
            })
    }

    /// Installs the CA's own certificate (signed by our root) and the chain above it.
    pub async fn import_ca_certificate(
        &self,
        ca_arn: &str,
        certificate_pem: &str,
        chain_pem: &str,
    ) -> Result<(), SignerError> {
        self.calls.add("ImportCertificateAuthorityCertificate");
        self.client
            .import_certificate_authority_certificate()
            .certificate_authority_arn(ca_arn)
            .certificate(Blob::new(certificate_pem.as_bytes()))
            .certificate_chain(Blob::new(chain_pem.as_bytes()))
            .send()
            .await
            .map_err(|e| Self::fail("ImportCertificateAuthorityCertificate", ca_arn, &e))?;
        Ok(())
    }

    /// The CA's certificate (PEM).
    pub async fn ca_certificate(&self, ca_arn: &str) -> Result<String, SignerError> {
        self.calls.add("GetCertificateAuthorityCertificate");
        let out = self
            .client
            .get_certificate_authority_certificate()
            .certificate_authority_arn(ca_arn)
            .send()
            .await
            .map_err(|e| Self::fail("GetCertificateAuthorityCertificate", ca_arn, &e))?;
        out.certificate()
            .map(str::to_string)
            .ok_or_else(|| SignerError::CaUnusable {
                arn: ca_arn.into(),
                why: "it has no certificate yet".into(),
            })
    }

    /// Issues one certificate and waits for it; returns (certificate ARN, certificate PEM).
    pub async fn issue(
        &self,
        ca_arn: &str,
        algorithm: RemoteAlgorithm,
        request: &Issuance<'_>,
    ) -> Result<(String, String), RemoteSignError> {
        let failed = |operation: &str, code: String, text: String| {
            let hint = hint_for(&code);
            crate::remote_error(
                code,
                format!("ACM PCA {operation} on {ca_arn}: {text}{hint}"),
            )
        };
        let signing_algorithm = match algorithm {
            RemoteAlgorithm::EcdsaP256Sha256 => SigningAlgorithm::Sha256Withecdsa,
            RemoteAlgorithm::EcdsaP384Sha384 => SigningAlgorithm::Sha384Withecdsa,
            RemoteAlgorithm::RsaPkcs1Sha256 => SigningAlgorithm::Sha256Withrsa,
        };
        let absolute = |unix: i64| {
            Validity::builder()
                .r#type(ValidityPeriodType::Absolute)
                .value(unix)
                .build()
                .map_err(|e| RemoteSignError::outage("InvalidRequest", e.to_string()))
        };
        self.calls.add("IssueCertificate");
        let issued = self
            .client
            .issue_certificate()
            .certificate_authority_arn(ca_arn)
            .csr(Blob::new(request.csr_pem.as_bytes()))
            .signing_algorithm(signing_algorithm)
            .template_arn(request.template_arn)
            .validity(absolute(request.not_after_unix)?)
            .validity_not_before(absolute(request.not_before_unix)?)
            .idempotency_token(
                request
                    .idempotency_token
                    .chars()
                    .take(36)
                    .collect::<String>(),
            )
            .send()
            .await
            .map_err(|e| {
                let (code, text, _) = error_parts(&e);
                failed("IssueCertificate", code, text)
            })?;
        let certificate_arn = issued
            .certificate_arn()
            .map(str::to_string)
            .ok_or_else(|| {
                RemoteSignError::outage(
                    "EmptyResponse",
                    "IssueCertificate returned no certificate ARN",
                )
            })?;

        // Issuance is asynchronous: GetCertificate answers RequestInProgressException until done.
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            self.calls.add("GetCertificate");
            match self
                .client
                .get_certificate()
                .certificate_authority_arn(ca_arn)
                .certificate_arn(&certificate_arn)
                .send()
                .await
            {
                Ok(out) => {
                    let pem = out.certificate().map(str::to_string).ok_or_else(|| {
                        RemoteSignError::outage(
                            "EmptyResponse",
                            "GetCertificate returned no certificate",
                        )
                    })?;
                    return Ok((certificate_arn, pem));
                }
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_request_in_progress_exception()) =>
                {
                    if started.elapsed() >= ISSUANCE_WAIT {
                        return Err(failed(
                            "GetCertificate",
                            "RequestInProgressException".into(),
                            format!(
                                "{certificate_arn} still not issued after {} s",
                                ISSUANCE_WAIT.as_secs()
                            ),
                        ));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    let (code, text, _) = error_parts(&e);
                    return Err(failed("GetCertificate", code, text));
                }
            }
        }
    }
}
