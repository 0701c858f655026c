//! What kind of failure an AWS call met, decided once where the SDK's error enters, from its
//! error kind and the service's error code (as amazon.aws's `module_utils/retries.py` does),
//! never from the text of a formatted error.

use std::error::Error;

use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// The kind of an AWS call's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// No credentials were found (module options, environment, profile, instance profile).
    NoCredentials,
    /// AWS refused the credentials (unknown key id, bad signature, expired token).
    BadCredentials,
    /// The identity may not make this call.
    AccessDenied,
    /// AWS throttled the call.
    Throttling,
    /// The endpoint could not be reached, or did not answer in time.
    Unreachable,
    /// The endpoint's TLS certificate was refused (an unknown CA, another name, expired).
    UntrustedCertificate,
    /// What the call named does not exist.
    NotFound,
    /// Any other answer of the service, or a request that could not be built.
    Other,
}

impl AwsErrorKind {
    /// Classifies an SDK error.
    pub fn of<E, R>(error: &SdkError<E, R>) -> AwsErrorKind
    where
        E: ProvideErrorMetadata + Error + 'static,
        R: std::fmt::Debug,
    {
        match error {
            SdkError::ServiceError(_) => error.code().map_or(AwsErrorKind::Other, Self::from_code),
            SdkError::DispatchFailure(failure) => {
                let tls = failure
                    .as_connector_error()
                    .and_then(|c| source_of_type::<rustls::Error>(c));
                if let Some(rustls::Error::InvalidCertificate(_)) = tls {
                    return AwsErrorKind::UntrustedCertificate;
                }
                // The credentials are resolved just before the request is sent: their absence
                // is reported as a failure to dispatch it.
                let credentials = failure
                    .as_connector_error()
                    .and_then(|c| source_of_type::<CredentialsError>(c));
                match credentials {
                    Some(CredentialsError::CredentialsNotLoaded(_)) => AwsErrorKind::NoCredentials,
                    Some(CredentialsError::ProviderTimedOut(_)) | None => AwsErrorKind::Unreachable,
                    // A provider that failed (an expired SSO session, an assume-role refused, a
                    // broken profile): credentials exist, but are not usable.
                    Some(_) => AwsErrorKind::BadCredentials,
                }
            }
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => AwsErrorKind::Unreachable,
            _ => AwsErrorKind::Other,
        }
    }

    /// Classifies a service's error code (SQS, KMS and ACM PCA spell some differently).
    pub fn from_code(code: &str) -> AwsErrorKind {
        match code {
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                AwsErrorKind::AccessDenied
            }
            "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "InvalidAccessKeyId"
            | "MissingAuthenticationToken"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidSecurity" => AwsErrorKind::BadCredentials,
            "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "KMSRequestThrottled" => AwsErrorKind::Throttling,
            "AWS.SimpleQueueService.NonExistentQueue"
            | "QueueDoesNotExist"
            | "NotFoundException"
            | "ResourceNotFoundException" => AwsErrorKind::NotFound,
            _ => AwsErrorKind::Other,
        }
    }

    /// Its name in return values (`error.kind`), snake case.
    pub fn name(self) -> &'static str {
        match self {
            AwsErrorKind::NoCredentials => "no_credentials",
            AwsErrorKind::BadCredentials => "bad_credentials",
            AwsErrorKind::AccessDenied => "access_denied",
            AwsErrorKind::Throttling => "throttling",
            AwsErrorKind::Unreachable => "unreachable",
            AwsErrorKind::UntrustedCertificate => "untrusted_certificate",
            AwsErrorKind::NotFound => "not_found",
            AwsErrorKind::Other => "other",
        }
    }

    /// What happened, in a few words (the message's cause; the SDK's detail goes elsewhere).
    pub fn summary(self) -> &'static str {
        match self {
            AwsErrorKind::NoCredentials => "no AWS credentials were found",
            AwsErrorKind::BadCredentials => "AWS refused the credentials",
            AwsErrorKind::AccessDenied => "access denied",
            AwsErrorKind::Throttling => "AWS throttled the calls",
            AwsErrorKind::Unreachable => {
                "the endpoint could not be reached, or gave no usable answer"
            }
            AwsErrorKind::UntrustedCertificate => "the endpoint's TLS certificate was refused",
            AwsErrorKind::NotFound => "it does not exist",
            AwsErrorKind::Other => "the service refused the call",
        }
    }

    /// What to do about it ("" when only the service's own words can say).
    pub fn fix(self) -> &'static str {
        match self {
            AwsErrorKind::NoCredentials => "give this host credentials: access_key and secret_key, or profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an instance profile",
            AwsErrorKind::BadCredentials => "check access_key/secret_key or the profile, and renew an expired session token",
            AwsErrorKind::AccessDenied => "the IAM policy of this identity must allow this call (see docs/aws.md in the collection, \"What the stack creates\", and docs/signers.md, \"IAM policies\")",
            AwsErrorKind::Throttling => "run again later, or with fewer hosts at once",
            AwsErrorKind::Unreachable => "check endpoint_url (or the AWS_ENDPOINT_URL_* variable of the service), the region, and the network path to it",
            AwsErrorKind::UntrustedCertificate => "check that endpoint_url names the service; for an endpoint behind your own CA, add that CA to the system's CA bundle or set SSL_CERT_FILE (docs/aws.md in the collection, \"HTTPS: which CAs the modules trust\")",
            AwsErrorKind::NotFound => "check the name or URL, and the region",
            AwsErrorKind::Other => "",
        }
    }

    /// The cause and what to do, appended to a message that says what failed ("" for `Other`).
    pub fn hint(self) -> String {
        match self.fix() {
            "" => String::new(),
            fix => format!(". {}: {fix}", capitalised(self.summary())),
        }
    }
}

/// `text` with its first letter in upper case: a fragment made the start of a sentence.
pub fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The first of `error` and its sources that is a `T`. An `io::Error`'s own payload is visited
/// too (its `source()` skips it): the TLS layer's errors travel inside `io::Error`s.
fn source_of_type<'a, T: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_sqs::operation::send_message::SendMessageError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;

    type Sdk = SdkError<SendMessageError, Response>;

    fn service(code: &str) -> Sdk {
        let error = SendMessageError::generic(ErrorMetadata::builder().code(code).build());
        SdkError::service_error(
            error,
            Response::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn missing_credentials_are_not_a_network_problem() {
        let missing = CredentialsError::not_loaded("no providers in chain provided credentials");
        let error: Sdk = SdkError::dispatch_failure(ConnectorError::other(Box::new(missing), None));
        assert_eq!(AwsErrorKind::of(&error), AwsErrorKind::NoCredentials);
    }

    #[test]
    fn a_provider_that_fails_is_not_missing_credentials() {
        let failed = CredentialsError::provider_error("the SSO session has expired");
        let error: Sdk = SdkError::dispatch_failure(ConnectorError::other(Box::new(failed), None));
        assert_eq!(AwsErrorKind::of(&error), AwsErrorKind::BadCredentials);
        let slow = CredentialsError::provider_timed_out(std::time::Duration::from_secs(5));
        let error: Sdk = SdkError::dispatch_failure(ConnectorError::other(Box::new(slow), None));
        assert_eq!(AwsErrorKind::of(&error), AwsErrorKind::Unreachable);
    }

    #[test]
    fn a_refused_endpoint_certificate_is_not_a_network_problem() {
        // As hyper-rustls reports it: the rustls error inside an io::Error, inside another.
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
        let outer = std::io::Error::other(inner);
        let error: Sdk = SdkError::dispatch_failure(ConnectorError::io(Box::new(outer)));
        assert_eq!(AwsErrorKind::of(&error), AwsErrorKind::UntrustedCertificate);
        // Another TLS failure (an alert from the server) is not about the certificate.
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        let error: Sdk = SdkError::dispatch_failure(ConnectorError::io(Box::new(io)));
        assert_eq!(AwsErrorKind::of(&error), AwsErrorKind::Unreachable);
    }

    #[test]
    fn a_refused_connection_is_unreachable() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error: Sdk = SdkError::dispatch_failure(ConnectorError::io(Box::new(refused)));
        assert_eq!(AwsErrorKind::of(&error), AwsErrorKind::Unreachable);
        let timeout: Sdk = SdkError::timeout_error(Box::new(std::io::Error::other("timed out")));
        assert_eq!(AwsErrorKind::of(&timeout), AwsErrorKind::Unreachable);
    }

    #[test]
    fn service_answers_are_classified_by_their_code() {
        for (code, kind) in [
            ("AccessDenied", AwsErrorKind::AccessDenied),
            ("AccessDeniedException", AwsErrorKind::AccessDenied),
            ("InvalidClientTokenId", AwsErrorKind::BadCredentials),
            ("SignatureDoesNotMatch", AwsErrorKind::BadCredentials),
            ("ExpiredToken", AwsErrorKind::BadCredentials),
            ("ThrottlingException", AwsErrorKind::Throttling),
            ("RequestThrottled", AwsErrorKind::Throttling),
            (
                "AWS.SimpleQueueService.NonExistentQueue",
                AwsErrorKind::NotFound,
            ),
            ("NotFoundException", AwsErrorKind::NotFound),
            ("InvalidParameterValue", AwsErrorKind::Other),
        ] {
            assert_eq!(AwsErrorKind::of(&service(code)), kind, "{code}");
        }
    }

    #[test]
    fn each_kind_that_needs_one_has_its_own_hint() {
        let hints = [
            AwsErrorKind::NoCredentials,
            AwsErrorKind::BadCredentials,
            AwsErrorKind::AccessDenied,
            AwsErrorKind::Throttling,
            AwsErrorKind::Unreachable,
            AwsErrorKind::NotFound,
        ]
        .map(AwsErrorKind::hint);
        for (i, hint) in hints.iter().enumerate() {
            assert!(hint.starts_with(". ") && hint.len() > 20, "{hint}");
            assert!(!hints[..i].contains(hint), "{hint} twice");
        }
        assert!(AwsErrorKind::NoCredentials.hint().contains("credentials"));
        assert!(!AwsErrorKind::NoCredentials.hint().contains("network"));
    }
}

/// What amazon.aws returns beside `msg` for a failed call, the modules' `error` value: the kind
/// (an [`AwsErrorKind`] name, or `region_mismatch`), the service's code (null when it never
/// answered) and words (or the SDK's error chain), and the operation when a call failed.
pub fn error_detail(
    kind: &str,
    code: Option<&str>,
    message: &str,
    operation: Option<&str>,
) -> serde_json::Value {
    let mut detail = serde_json::json!({ "kind": kind, "code": code, "message": message });
    if let Some(operation) = operation {
        detail["operation"] = operation.into();
    }
    detail
}

/// An SDK error in words: its message and those of its sources, each once, joined by ": ".
/// (The SDK's `DisplayErrorContext` ends with the error's `Debug` form, which is not for people.)
pub fn error_words(error: &(dyn std::error::Error + 'static)) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        if !text.is_empty() && !words.iter().any(|w| w.contains(&text)) {
            words.push(text);
        }
        next = current.source();
    }
    words.join(": ")
}

#[cfg(test)]
mod words_tests {
    use super::error_words;

    #[derive(Debug, thiserror::Error)]
    #[error("dispatch failure")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_is_said_in_words_without_debug_text() {
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused (os error 111)",
        ));
        let words = error_words(&error);
        assert_eq!(
            words,
            "dispatch failure: tcp connect error: Connection refused (os error 111)"
        );
        assert!(!words.contains("{ ") && !words.contains("Os {"), "{words}");
    }
}
