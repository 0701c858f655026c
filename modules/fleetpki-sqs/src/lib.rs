//! SQS for fleetpki.mtls: a client built from amazon.aws-style options, the few queue operations
//! the modules need, and a count of every call made (so a run's cost is visible).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};
use aws_sdk_sqs::Client;

use fleetpki_aws::{
    capitalised, check_queue_region, error_detail, error_words, load_config, AwsConfigError,
    AwsErrorKind, AwsOptions, CallCounter,
};

#[derive(Debug, thiserror::Error)]
pub enum SqsError {
    #[error(transparent)]
    Config(#[from] AwsConfigError),
    /// A call that failed: the message says what happened and what to do in a few words; the
    /// service's code and message, or the SDK's error chain, are in `detail()` (amazon.aws's
    /// `error` return value), not in the message.
    #[error("{}", call_message(.operation, .target, *.kind, .code.as_deref(), .service_message.as_deref(), .message))]
    Call {
        operation: &'static str,
        target: String,
        kind: AwsErrorKind,
        /// The service's error code, when it answered with one.
        code: Option<String>,
        /// The service's code and message when it answered, else the SDK's error chain in words.
        message: String,
        /// The service's own message, when it answered with one (short, and worth showing).
        service_message: Option<String>,
    },
    #[error("the queue {0} does not exist: create it first (see docs/aws.md in the collection, \"Deploy\")")]
    QueueMissing(String),
}

/// The message of a failed call: what, on what, why in words, and what to do.
fn call_message(
    operation: &str,
    target: &str,
    kind: AwsErrorKind,
    code: Option<&str>,
    service_message: Option<&str>,
    message: &str,
) -> String {
    let what = format!("SQS {operation} on {target} failed");
    match (kind, code, service_message) {
        // Only the service's own words can say what was wrong.
        (AwsErrorKind::Other, Some(code), Some(said)) => {
            format!("{what}: SQS answered {code}: {said}")
        }
        (AwsErrorKind::Other, Some(code), None) => format!("{what}: SQS answered {code}"),
        (AwsErrorKind::Other, None, _) => format!("{what}: {message}"),
        // The service's words name the identity and the action it may not perform.
        (AwsErrorKind::AccessDenied, _, Some(said)) if !said.is_empty() => {
            format!(
                "{what}: access denied ({said}). {}",
                capitalised(kind.fix())
            )
        }
        _ => format!("{what}: {}. {}", kind.summary(), capitalised(kind.fix())),
    }
}

impl SqsError {
    /// The detail amazon.aws returns beside `msg` as `error`: the kind, the service's code and
    /// message (or the SDK's error chain), and the operation. None for errors that say it all.
    pub fn detail(&self) -> Option<serde_json::Value> {
        match self {
            SqsError::Call {
                operation,
                kind,
                code,
                message,
                ..
            } => Some(error_detail(
                kind.name(),
                code.as_deref(),
                message,
                Some(operation),
            )),
            SqsError::QueueMissing(url) => Some(error_detail(
                AwsErrorKind::NotFound.name(),
                None,
                &format!("the queue {url} does not exist"),
                None,
            )),
            SqsError::Config(AwsConfigError::RegionMismatch { .. }) => Some(error_detail(
                "region_mismatch",
                None,
                &self.to_string(),
                None,
            )),
            SqsError::Config(_) => None,
        }
    }
}

/// A received message, reduced to what the modules use.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// String message attributes.
    pub attributes: HashMap<String, String>,
    /// The `SenderId` system attribute.
    pub sender_id: Option<String>,
    pub receive_count: Option<u32>,
    /// The `SentTimestamp` system attribute: when the queue accepted it (Unix milliseconds).
    pub sent_at_ms: Option<i64>,
}

/// Approximate message counts of a queue (reading them does not touch any message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

#[derive(Debug, Clone)]
pub struct Sqs {
    client: Client,
    calls: CallCounter,
    /// Where the calls go: a queue URL of another region is refused before it is called.
    region: String,
}

impl Sqs {
    pub async fn connect(options: &AwsOptions) -> Result<Self, SqsError> {
        let config = load_config(options).await?;
        Ok(Sqs {
            client: Client::new(&config),
            calls: CallCounter::default(),
            region: config.region().map(ToString::to_string).unwrap_or_default(),
        })
    }

    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }

    /// A request that could not even be built (a value the SDK refuses).
    fn unbuilt(operation: &'static str, target: &str, error: BuildError) -> SqsError {
        SqsError::Call {
            operation,
            target: target.to_string(),
            kind: AwsErrorKind::Other,
            code: None,
            message: error.to_string(),
            service_message: Some(error.to_string()),
        }
    }

    fn fail<E, R>(operation: &'static str, target: &str, error: SdkError<E, R>) -> SqsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        // The service's own code and message when it answered (the SDK's description of an
        // error it has no type for is its Debug form); else the error chain in words.
        let (code, service_message) = match error.as_service_error() {
            Some(e) => (
                e.code().map(str::to_string),
                e.message().map(str::to_string),
            ),
            None => (None, None),
        };
        let message = match (&code, &service_message) {
            (Some(code), Some(m)) => format!("{code}: {m}"),
            (Some(code), None) => code.clone(),
            _ => error_words(&error),
        };
        SqsError::Call {
            operation,
            target: target.to_string(),
            kind: AwsErrorKind::of(&error),
            code,
            message,
            service_message,
        }
    }

    /// Refuses a queue URL of another region than the client's (before any call is made).
    pub fn check_region(&self, queue_url: &str) -> Result<(), SqsError> {
        Ok(check_queue_region(queue_url, &self.region)?)
    }

    /// Sends one message with String attributes; returns its message id.
    pub async fn send(
        &self,
        queue_url: &str,
        body: &str,
        attributes: &[(&str, &str)],
    ) -> Result<String, SqsError> {
        self.check_region(queue_url)?;
        self.calls.add("SendMessage");
        let mut request = self
            .client
            .send_message()
            .queue_url(queue_url)
            .message_body(body);
        for (name, value) in attributes {
            let attribute = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*value)
                .build()
                .map_err(|e| Self::unbuilt("SendMessage", queue_url, e))?;
            request = request.message_attributes(*name, attribute);
        }
        let out = request.send().await.map_err(|e| {
            if e.as_service_error()
                .map(|s| s.is_queue_does_not_exist())
                .unwrap_or(false)
            {
                SqsError::QueueMissing(queue_url.to_string())
            } else {
                Self::fail("SendMessage", queue_url, e)
            }
        })?;
        Ok(out.message_id.unwrap_or_default())
    }

    /// Receives up to `max` messages, long-polling `wait_seconds`.
    pub async fn receive(
        &self,
        queue_url: &str,
        max: i32,
        wait_seconds: i32,
        visibility_timeout: Option<i32>,
    ) -> Result<Vec<Received>, SqsError> {
        self.check_region(queue_url)?;
        self.calls.add("ReceiveMessage");
        let mut request = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait_seconds.clamp(0, 20))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SenderId)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp);
        if let Some(timeout) = visibility_timeout {
            request = request.visibility_timeout(timeout);
        }
        let out = request.send().await.map_err(|e| {
            if e.as_service_error()
                .map(|s| s.is_queue_does_not_exist())
                .unwrap_or(false)
            {
                SqsError::QueueMissing(queue_url.to_string())
            } else {
                Self::fail("ReceiveMessage", queue_url, e)
            }
        })?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let system = m.attributes.unwrap_or_default();
                Received {
                    message_id: m.message_id.unwrap_or_default(),
                    receipt_handle: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    attributes: m
                        .message_attributes
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                        .collect(),
                    sender_id: system.get(&MessageSystemAttributeName::SenderId).cloned(),
                    receive_count: system
                        .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|c| c.parse().ok()),
                    sent_at_ms: system
                        .get(&MessageSystemAttributeName::SentTimestamp)
                        .and_then(|t| t.parse().ok()),
                }
            })
            .collect())
    }

    pub async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), SqsError> {
        self.check_region(queue_url)?;
        self.calls.add("DeleteMessage");
        self.client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| Self::fail("DeleteMessage", queue_url, e))?;
        Ok(())
    }

    /// Deletes up to 10 messages in one call; returns the receipt handles that failed.
    pub async fn delete_batch(
        &self,
        queue_url: &str,
        receipt_handles: &[String],
    ) -> Result<Vec<String>, SqsError> {
        if receipt_handles.is_empty() {
            return Ok(Vec::new());
        }
        self.check_region(queue_url)?;
        self.calls.add("DeleteMessageBatch");
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .map_err(|e| Self::unbuilt("DeleteMessageBatch", queue_url, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| Self::fail("DeleteMessageBatch", queue_url, e))?;
        Ok(out
            .failed
            .iter()
            .filter_map(|f| {
                f.id.parse::<usize>()
                    .ok()
                    .and_then(|i| receipt_handles.get(i).cloned())
            })
            .collect())
    }

    /// Makes a message visible again (hands it back). A handle that became invalid because
    /// another consumer received the message meanwhile is harmless and ignored.
    pub async fn hand_back(&self, queue_url: &str, receipt_handle: &str) -> Result<(), SqsError> {
        self.check_region(queue_url)?;
        self.calls.add("ChangeMessageVisibility");
        match self
            .client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .map(|s| s.is_receipt_handle_is_invalid())
                    .unwrap_or(false) =>
            {
                Ok(())
            }
            Err(e) => Err(Self::fail("ChangeMessageVisibility", queue_url, e)),
        }
    }

    /// Creates a queue, or returns the URL of the existing one with the same attributes.
    pub async fn create_queue(
        &self,
        name: &str,
        attributes: &[(QueueAttributeName, String)],
    ) -> Result<String, SqsError> {
        self.calls.add("CreateQueue");
        let mut request = self.client.create_queue().queue_name(name);
        for (key, value) in attributes {
            request = request.attributes(key.clone(), value);
        }
        let out = request
            .send()
            .await
            .map_err(|e| Self::fail("CreateQueue", name, e))?;
        Ok(out.queue_url.unwrap_or_default())
    }

    /// The URL of a queue by name, or `None` when it does not exist.
    pub async fn queue_url(&self, name: &str) -> Result<Option<String>, SqsError> {
        self.calls.add("GetQueueUrl");
        match self.client.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url),
            Err(e)
                if e.as_service_error()
                    .map(|s| s.is_queue_does_not_exist())
                    .unwrap_or(false) =>
            {
                Ok(None)
            }
            Err(e) => Err(Self::fail("GetQueueUrl", name, e)),
        }
    }

    async fn attributes(
        &self,
        queue_url: &str,
        names: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, String>, SqsError> {
        self.check_region(queue_url)?;
        self.calls.add("GetQueueAttributes");
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error()
                    .map(|s| s.is_queue_does_not_exist())
                    .unwrap_or(false)
                {
                    SqsError::QueueMissing(queue_url.to_string())
                } else {
                    Self::fail("GetQueueAttributes", queue_url, e)
                }
            })?;
        Ok(out.attributes.unwrap_or_default())
    }

    /// Approximate counts, read without receiving (receiving would raise receive counts).
    pub async fn depth(&self, queue_url: &str) -> Result<QueueDepth, SqsError> {
        let attrs = self
            .attributes(
                queue_url,
                &[
                    QueueAttributeName::ApproximateNumberOfMessages,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                ],
            )
            .await?;
        let get = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(QueueDepth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    /// URLs of every queue whose name starts with `prefix` (all pages).
    pub async fn list_queues(&self, prefix: &str) -> Result<Vec<String>, SqsError> {
        let mut urls = Vec::new();
        let mut next: Option<String> = None;
        loop {
            self.calls.add("ListQueues");
            let out = self
                .client
                .list_queues()
                .queue_name_prefix(prefix)
                .max_results(1000)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| Self::fail("ListQueues", prefix, e))?;
            urls.extend(out.queue_urls.unwrap_or_default());
            match out.next_token {
                Some(token) if !token.is_empty() => next = Some(token),
                _ => return Ok(urls),
            }
        }
    }

    pub async fn delete_queue(&self, queue_url: &str) -> Result<(), SqsError> {
        self.check_region(queue_url)?;
        self.calls.add("DeleteQueue");
        match self.client.delete_queue().queue_url(queue_url).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .map(|s| s.is_queue_does_not_exist())
                    .unwrap_or(false) =>
            {
                Ok(())
            }
            Err(e) => Err(Self::fail("DeleteQueue", queue_url, e)),
        }
    }

    /// One GetQueueAttributes for what a drain needs before its first receive: the name of the
    /// dead-letter queue its RedrivePolicy names, if any, and how many messages are visible.
    pub async fn redrive_and_depth(&self, queue_url: &str) -> Result<RedriveAndDepth, SqsError> {
        let attrs = self
            .attributes(
                queue_url,
                &[
                    QueueAttributeName::RedrivePolicy,
                    QueueAttributeName::ApproximateNumberOfMessages,
                ],
            )
            .await?;
        let dead_letter_queue_name = attrs
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|policy| serde_json::from_str::<serde_json::Value>(policy).ok())
            .and_then(|v| {
                v.get("deadLetterTargetArn")
                    .and_then(|a| a.as_str())
                    .and_then(|arn| arn.rsplit(':').next())
                    .map(str::to_string)
            });
        let visible = attrs
            .get(&QueueAttributeName::ApproximateNumberOfMessages)
            .and_then(|v| v.parse().ok());
        Ok(RedriveAndDepth {
            dead_letter_queue_name,
            visible,
        })
    }
}

/// A queue's redrive target and depth, read in one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveAndDepth {
    /// The dead-letter queue's name (its URL is looked up apart: GetQueueUrl).
    pub dead_letter_queue_name: Option<String>,
    /// ApproximateNumberOfMessages, when the queue gave a number.
    pub visible: Option<u64>,
}

#[cfg(test)]
mod tests {
    use aws_sdk_sqs::error::{ConnectorError, ErrorMetadata, SdkError};
    use aws_sdk_sqs::operation::receive_message::ReceiveMessageError;
    use fleetpki_aws::AwsConfigError;

    use super::{Sqs, SqsError};

    type Sdk = SdkError<ReceiveMessageError, ()>;

    fn answered(code: &str, message: &str) -> Sdk {
        let error = ReceiveMessageError::generic(
            ErrorMetadata::builder().code(code).message(message).build(),
        );
        SdkError::service_error(error, ())
    }

    fn not_sent(source: Box<dyn std::error::Error + Send + Sync>) -> Sdk {
        SdkError::dispatch_failure(ConnectorError::other(source, None))
    }

    #[test]
    fn access_denied_names_who_may_not_do_what_and_keeps_the_code_apart() {
        let error = Sqs::fail(
            "ReceiveMessage",
            "the CSR queue",
            answered("AccessDenied", "User: arn:aws:iam::123456789012:user/node is not authorized to perform: sqs:ReceiveMessage"),
        );
        let text = error.to_string();
        assert!(text.starts_with("SQS ReceiveMessage on the CSR queue failed: access denied (User: arn:aws:iam::123456789012:user/node is not authorized"), "{text}");
        assert!(text.contains("IAM policy"), "{text}");
        assert!(!text.contains("Error {") && !text.contains("{ "), "{text}");
        assert_eq!(text.matches("access denied").count(), 1, "{text}");
        let detail = error.detail().unwrap();
        assert_eq!(detail["kind"], "access_denied");
        assert_eq!(detail["code"], "AccessDenied");
        assert_eq!(detail["operation"], "ReceiveMessage");
    }

    #[test]
    fn each_kind_gets_its_own_short_message_with_the_detail_apart() {
        use aws_credential_types::provider::error::CredentialsError;
        let long_chain = "no providers in chain provided credentials: ".repeat(30);
        let cases: Vec<(Sdk, &str)> = vec![
            (
                not_sent(Box::new(CredentialsError::not_loaded(long_chain.clone()))),
                "no_credentials",
            ),
            (
                answered(
                    "InvalidClientTokenId",
                    "The security token included in the request is invalid.",
                ),
                "bad_credentials",
            ),
            (answered("AccessDenied", "not authorized"), "access_denied"),
            (
                answered("ThrottlingException", "Rate exceeded"),
                "throttling",
            ),
            (
                SdkError::dispatch_failure(ConnectorError::io(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "tcp connect error: Connection refused (os error 111)",
                )))),
                "unreachable",
            ),
        ];
        let mut messages = Vec::new();
        for (sdk, kind) in cases {
            let error = Sqs::fail(
                "SendMessage",
                "https://sqs.eu-west-1.amazonaws.com/1/q",
                sdk,
            );
            let text = error.to_string();
            assert_eq!(error.detail().unwrap()["kind"], kind);
            assert!(
                text.len() < 400,
                "{kind}: {} characters: {text}",
                text.len()
            );
            assert!(
                !text.contains("no providers in chain"),
                "{kind}: the SDK's detail is in the message: {text}"
            );
            assert!(
                !text.contains("Some(")
                    && !text.contains("{ ")
                    && !text.contains("DispatchFailure"),
                "{text}"
            );
            assert!(
                !messages.contains(&text),
                "{kind} says what another kind says: {text}"
            );
            messages.push(text);
        }
        assert!(
            messages[0].contains("no AWS credentials were found")
                && !messages[0].contains("network"),
            "{}",
            messages[0]
        );
        assert!(
            messages[4].contains("could not be reached") && messages[4].contains("endpoint_url"),
            "{}",
            messages[4]
        );
        for text in &messages {
            let lower = text.to_lowercase();
            let cause = lower
                .split("failed: ")
                .nth(1)
                .and_then(|rest| rest.split(['.', '(']).next())
                .unwrap_or_default();
            assert_eq!(
                lower.matches(cause.trim()).count(),
                1,
                "the cause is said twice: {text}"
            );
        }
    }

    #[test]
    fn another_answer_is_said_in_the_service_words() {
        let text = Sqs::fail(
            "SendMessage",
            "q",
            answered(
                "InvalidParameterValue",
                "Value for parameter MessageBody is invalid.",
            ),
        )
        .to_string();
        assert_eq!(
            text,
            "SQS SendMessage on q failed: SQS answered InvalidParameterValue: Value for parameter MessageBody is invalid."
        );
    }

    #[test]
    fn a_queue_of_another_region_is_a_configuration_error_with_its_own_kind() {
        let error = SqsError::from(AwsConfigError::RegionMismatch {
            url: "https://sqs.eu-west-1.amazonaws.com/123456789012/fleetpki-csr".into(),
            queue_region: "eu-west-1".into(),
            region: "us-east-1".into(),
        });
        assert_eq!(error.detail().unwrap()["kind"], "region_mismatch");
        assert!(error.to_string().contains("set region: eu-west-1"));
    }
}
