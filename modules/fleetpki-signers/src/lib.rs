//! The CA key off disk: an intermediate whose private key is an AWS KMS key ([`kms`]), or AWS
//! Private CA issuing from our policy-checked requests ([`pca`]). Every call is counted like
//! the SQS calls. The PKI (what gets signed, what gets checked) stays in fleetpki-core.

pub mod kms;
pub mod pca;

use aws_sdk_kms::error::ProvideErrorMetadata;
use fleetpki_aws::error_detail;
pub use fleetpki_aws::{AwsErrorKind, CallCounter};
pub use fleetpki_core::remote::RemoteSignError;

/// Errors of the setup calls (creating or describing keys and CAs), each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("{}", call_message(.service, .operation, .target, .code.as_deref(), .message, *.kind))]
    Call {
        service: &'static str,
        operation: &'static str,
        target: String,
        /// The service's error code; `None` when it never answered (no credentials, no connection).
        code: Option<String>,
        /// The service's words, or the SDK's error chain when it never answered.
        message: String,
        kind: AwsErrorKind,
    },
    #[error("the KMS key {0} does not exist: create it, or give an alias (alias/...) that mtls_ca_init may create")]
    KeyNotFound(String),
    #[error("the KMS key {key} cannot sign certificates: {why}")]
    KeyUnusable { key: String, why: String },
    #[error("the Private CA {arn} cannot issue yet: {why}")]
    CaUnusable { arn: String, why: String },
    #[error("cannot start the AWS client runtime: {0}")]
    Runtime(std::io::Error),
}

impl SignerError {
    /// A failed SDK call of `service`: its code and message, its kind, and what to do.
    pub(crate) fn call<E, R>(
        service: &'static str,
        operation: &'static str,
        target: &str,
        error: &aws_sdk_kms::error::SdkError<E, R>,
    ) -> SignerError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let (code, message, kind) = error_parts(error);
        SignerError::Call {
            service,
            operation,
            target: target.to_string(),
            code: error.code().map(|_| code),
            message,
            kind,
        }
    }

    /// What amazon.aws returns beside `msg` for a failed call (the module's `error` key): the
    /// kind, the service's code and words (or the SDK's whole error chain), the operation.
    pub fn detail(&self) -> Option<serde_json::Value> {
        match self {
            SignerError::Call {
                operation,
                code,
                message,
                kind,
                ..
            } => Some(error_detail(
                kind.name(),
                code.as_deref(),
                message,
                Some(operation),
            )),
            // KMS answered GetPublicKey with NotFoundException ([`kms::Kms::public_key`]).
            SignerError::KeyNotFound(_) => Some(error_detail(
                AwsErrorKind::NotFound.name(),
                Some("NotFoundException"),
                &self.to_string(),
                Some("GetPublicKey"),
            )),
            _ => None,
        }
    }

    /// The kind of the AWS call's failure, for an error that came from a call.
    pub fn aws_kind(&self) -> Option<AwsErrorKind> {
        match self {
            SignerError::Call { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// The error code, message and kind of an SDK error: the service's own code
/// (`DisabledException`) when it answered, else a name for what went wrong on the way (no
/// credentials, refused credentials, no connection), from [`AwsErrorKind`].
pub(crate) fn error_parts<E, R>(
    error: &aws_sdk_kms::error::SdkError<E, R>,
) -> (String, String, AwsErrorKind)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let kind = AwsErrorKind::of(error);
    // AWS messages end with a period; ours append ". What to do" after them.
    match error.code() {
        Some(code) => (
            code.to_string(),
            error
                .message()
                .unwrap_or("")
                .trim_end_matches('.')
                .to_string(),
            kind,
        ),
        None => (
            match kind {
                AwsErrorKind::NoCredentials => "NoCredentials",
                AwsErrorKind::BadCredentials => "InvalidCredentials",
                _ => "ConnectionError",
            }
            .into(),
            fleetpki_aws::error_words(error),
            kind,
        ),
    }
}

/// A remote signer's error from the service's error code, classified here where the SDK's error
/// enters: Private CA's refusals of the CSR or its arguments are about this one request (the
/// node is answered `signer_refused`); anything else is an outage of the signer (the request
/// waits in the queue).
pub(crate) fn remote_error(code: String, message: String) -> RemoteSignError {
    match code.as_str() {
        "MalformedCSRException" | "InvalidArgsException" | "MalformedCertificateException" => {
            RemoteSignError::refused(code, message)
        }
        _ => RemoteSignError::outage(code, message),
    }
}

/// The message of a failed call: the service's code and words when it answered (they name the
/// key or CA and what is wrong with it) and what to do; when it never answered, the cause in a few
/// words and what to do; the SDK's error chain stays in [`SignerError::detail`].
fn call_message(
    service: &str,
    operation: &str,
    target: &str,
    code: Option<&str>,
    message: &str,
    kind: AwsErrorKind,
) -> String {
    match (code, kind) {
        (Some(code), _) => format!(
            "{service} {operation} on {target} failed: {code}: {message}{}",
            hint_for(code)
        ),
        // Neither a service answer nor a kind to name: only the SDK's own words can say it.
        (None, AwsErrorKind::Other) => {
            format!("{service} {operation} on {target} failed: {message}")
        }
        (None, _) => format!(
            "{service} {operation} on {target} failed: {}. {}",
            kind.summary(),
            fleetpki_aws::capitalised(kind.fix())
        ),
    }
}

/// What to do about an error code, for the messages.
pub(crate) fn hint_for(code: &str) -> String {
    let fixed: &str = match code {
        "AccessDeniedException" => ". The IAM policy of this identity (or the key policy) does not allow this call: see docs/signers.md in the collection, \"IAM policies\"",
        "DisabledException" => ". Enable the key (aws kms enable-key) and run again: queued requests wait",
        "NotFoundException" | "ResourceNotFoundException" => ". Check the key id / CA ARN and the region",
        "KMSInvalidStateException" | "InvalidStateException" => ". The key or CA is not in a usable state (pending deletion, disabled, expired)",
        "ThrottlingException" | "LimitExceededException" | "TooManyRequestsException" => ". The account's request quota was exceeded after retries: lower the worker's batch concurrency or ask for a quota increase",
        "ConnectionError" => return AwsErrorKind::Unreachable.hint(),
        "NoCredentials" => return AwsErrorKind::NoCredentials.hint(),
        "InvalidCredentials" => return AwsErrorKind::BadCredentials.hint(),
        _ => "",
    };
    fixed.to_string()
}

/// A runtime of its own for AWS calls made from synchronous code (rcgen's signing callback
/// runs on rayon threads, outside the module's runtime). A current-thread runtime driven by a
/// dedicated thread: the multi-threaded scheduler would add ~100 KB to binaries that travel.
pub struct BlockingRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BlockingRuntime {
    pub fn new() -> Result<Self, SignerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SignerError::Runtime)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // This thread drives the I/O and timers for every caller of `block_on` and `spawn_on`.
        std::thread::Builder::new()
            .name("fleetpki-aws".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .map_err(SignerError::Runtime)?;
        Ok(BlockingRuntime {
            handle,
            stop: Some(stop),
        })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }

    /// Runs a call on this runtime and awaits it from another (the module's own).
    pub async fn spawn_on<T, F>(&self, future: F) -> Result<T, RemoteSignError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, RemoteSignError>> + Send + 'static,
    {
        self.handle
            .spawn(future)
            .await
            .unwrap_or_else(|e| Err(RemoteSignError::outage("TaskFailed", e.to_string())))
    }
}

impl Drop for BlockingRuntime {
    /// Lets the driving thread finish; never waits for it (this may run inside another runtime).
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{error_parts, hint_for, remote_error, AwsErrorKind, SignerError};
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_kms::error::{ConnectorError, SdkError};
    use aws_sdk_kms::operation::sign::SignError;
    use aws_smithy_runtime_api::http::Response;

    #[test]
    fn a_signer_call_without_credentials_is_named_so_not_a_connection_error() {
        let missing = CredentialsError::not_loaded("no providers in chain provided credentials");
        let error: SdkError<SignError, Response> =
            SdkError::dispatch_failure(ConnectorError::other(Box::new(missing), None));
        let (code, _, kind) = error_parts(&error);
        assert_eq!(
            (code.as_str(), kind),
            ("NoCredentials", AwsErrorKind::NoCredentials)
        );
        assert!(
            hint_for(&code).contains("credentials"),
            "{}",
            hint_for(&code)
        );

        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error: SdkError<SignError, Response> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(refused)));
        let (code, _, kind) = error_parts(&error);
        assert_eq!(
            (code.as_str(), kind),
            ("ConnectionError", AwsErrorKind::Unreachable)
        );
    }

    #[test]
    fn a_call_the_service_never_answered_says_the_cause_and_fix_and_keeps_the_chain_apart() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error: SdkError<SignError, Response> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(refused)));
        let failed = SignerError::call("KMS", "Sign", "alias/ca", &error);
        let msg = failed.to_string();
        assert!(
            msg.starts_with("KMS Sign on alias/ca failed: the endpoint could not be reached")
                && msg.contains(". Check endpoint_url"),
            "{msg}"
        );
        assert!(
            !msg.contains("refused"),
            "the SDK's chain belongs in the detail: {msg}"
        );
        let detail = failed.detail().unwrap();
        assert_eq!(detail["kind"], "unreachable");
        assert_eq!(detail["code"], serde_json::Value::Null);
        assert_eq!(detail["operation"], "Sign");
        assert!(
            detail["message"].as_str().unwrap().contains("refused"),
            "{detail}"
        );
    }

    #[test]
    fn a_missing_key_is_reported_as_kms_answered_it() {
        let detail = SignerError::KeyNotFound("alias/gone".into())
            .detail()
            .unwrap();
        assert_eq!(
            (&detail["kind"], &detail["code"], &detail["operation"]),
            (
                &serde_json::json!("not_found"),
                &serde_json::json!("NotFoundException"),
                &serde_json::json!("GetPublicKey")
            )
        );
    }

    #[test]
    fn private_ca_refusing_the_csr_is_about_the_request_and_the_rest_are_outages() {
        for code in [
            "MalformedCSRException",
            "InvalidArgsException",
            "MalformedCertificateException",
        ] {
            assert!(!remote_error(code.into(), "x".into()).is_outage(), "{code}");
        }
        for code in [
            "DisabledException",
            "AccessDeniedException",
            "ThrottlingException",
            "KMSInvalidStateException",
            "NotFoundException",
            "InvalidStateException",
            "ConnectionError",
            "RequestInProgressException",
        ] {
            assert!(remote_error(code.into(), "x".into()).is_outage(), "{code}");
        }
    }
}
