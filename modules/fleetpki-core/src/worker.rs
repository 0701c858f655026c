//! The CA worker's decisions about one request, without I/O, in the style of rustls's
//! unbuffered API: the caller (`mtls_ca_sign`) receives a request, asks [`check`] and a signer
//! for a [`Verdict`], then drives a [`Disposition`]: it performs each [`Action`] it is given and
//! reports how a send went with [`Disposition::sent`], until [`Disposition::next_action`]
//! returns `None`. Nothing here touches SQS, AWS or the file system; the order in which a
//! request is answered, recorded and deleted is decided in [`Disposition::next_action`] alone.

use serde::Serialize;
use time::OffsetDateTime;

use crate::csr::{csr_der_sha256, parse_and_verify_csr, ParsedCsr};
use crate::policy::{
    is_valid_instance_id, is_valid_request_id, Grant, Policy, SigningRequest, MAX_BODY_BYTES,
    MAX_CSR_PEM_BYTES,
};
use crate::reason::{ReasonCode, Rejection};
use crate::remote::RemoteSignError;
use crate::sign::{CaSigner, IssuedCertificate};
use crate::wire::{
    reply_queue_name, CertificateMessage, CsrMessage, RejectionMessage, ReplyMessage, ReplyMode,
    WIRE_VERSION,
};
use crate::PkiError;

/// A request as it came off the queue: what the checks read of it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub message_id: &'a str,
    pub body: &'a str,
    /// The `InstanceId` message attribute.
    pub instance_id_attribute: Option<&'a str>,
    /// The queue's `SenderId` system attribute.
    pub sender_id: Option<&'a str>,
}

/// A request that passed every check, waiting for its signature.
pub struct Accepted {
    pub message: CsrMessage,
    pub csr: ParsedCsr,
    pub grant: Grant,
}

/// What the checks and the signer decided for one request.
#[derive(Debug)]
pub enum Verdict {
    /// Signed. `signer_ref`: the KMS key ARN, or the Private CA certificate ARN, for the audit.
    Sign {
        message: CsrMessage,
        issued: IssuedCertificate,
        signer_ref: Option<String>,
        /// For the operator: accepted, but worth saying (a v1 enrollment HMAC).
        warnings: Vec<String>,
    },
    /// Not signed, for the reason given (`message` when the body could be read).
    Refuse {
        message: Option<CsrMessage>,
        rejection: Rejection,
    },
    /// The signer cannot sign now (a disabled KMS key, throttling past the retries): the request
    /// waits in the queue for a signer that works.
    Unavailable {
        message: CsrMessage,
        error: RemoteSignError,
    },
}

impl Verdict {
    fn refuse(message: Option<CsrMessage>, code: ReasonCode, text: impl Into<String>) -> Verdict {
        Verdict::Refuse {
            message,
            rejection: Rejection::new(code, text),
        }
    }
}

/// Limits, parsing, proof of possession, policy and the reply route: whether a request may be
/// signed. Nothing is signed that cannot be delivered. A refusal is as common an answer as an
/// acceptance, and moved once: not boxed.
#[allow(clippy::result_large_err)]
pub fn check(
    policy: &Policy,
    routes: &Routes,
    inbound: &Inbound<'_>,
    now_unix: i64,
) -> Result<Accepted, Verdict> {
    if inbound.body.len() > MAX_BODY_BYTES {
        return Err(Verdict::refuse(
            None,
            ReasonCode::MessageTooLarge,
            format!(
                "the body has {} bytes; at most {MAX_BODY_BYTES}",
                inbound.body.len()
            ),
        ));
    }
    let message: CsrMessage = match serde_json::from_str(inbound.body) {
        Ok(m) => m,
        Err(e) => {
            return Err(Verdict::refuse(
                None,
                ReasonCode::MessageMalformed,
                format!("not a CSR message: {e}"),
            ))
        }
    };
    if let Some(version) = message.version.filter(|v| *v != WIRE_VERSION) {
        return Err(Verdict::refuse(
            Some(message),
            ReasonCode::UnsupportedVersion,
            format!("wire version {version} is not supported; this worker reads version {WIRE_VERSION} and the seed's unversioned requests"),
        ));
    }
    if message
        .request_id
        .as_deref()
        .is_some_and(|id| !is_valid_request_id(id))
    {
        // It is quoted in the answer and the record: no arbitrary text there.
        return Err(Verdict::refuse(
            None,
            ReasonCode::MessageMalformed,
            "request_id must be 1-128 letters, digits, '-', '_', '.' or ':'",
        ));
    }
    if message.version.is_some() && (message.request_id.is_none() || message.timestamp.is_none()) {
        // Without them a node cannot match the answer and a replay never expires.
        return Err(Verdict::refuse(
            Some(message),
            ReasonCode::MessageMalformed,
            "a version 1 request needs request_id and timestamp",
        ));
    }
    if message.csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(Verdict::refuse(
            Some(message),
            ReasonCode::CsrTooLarge,
            format!("the CSR PEM exceeds {MAX_CSR_PEM_BYTES} bytes"),
        ));
    }
    let csr = match parse_and_verify_csr(&message.csr_pem) {
        Ok(csr) => csr,
        Err(e) => {
            let code = e.reason_code();
            return Err(Verdict::refuse(Some(message), code, e.to_string()));
        }
    };
    let request = SigningRequest {
        message: &message,
        attribute_instance_id: inbound.instance_id_attribute,
        sender_id: inbound.sender_id,
        csr: &csr,
    };
    let grant = match policy.evaluate(&request, now_unix) {
        Ok(grant) => grant,
        Err(rejection) => {
            return Err(Verdict::Refuse {
                message: Some(message),
                rejection,
            })
        }
    };
    if routes.reply_target(&message).is_none() {
        return Err(Verdict::refuse(
            Some(message),
            ReasonCode::ReplyModeNotAllowed,
            "the request asks to be answered on the shared queue, and this worker has none (shared_cert_queue_url is not set)",
        ));
    }
    Ok(Accepted {
        message,
        csr,
        grant,
    })
}

/// Signs an accepted request with the intermediate's key (a file, or KMS through `Sign`).
pub fn sign_locally(signer: &CaSigner, accepted: Accepted, now: OffsetDateTime) -> Verdict {
    let Accepted {
        message,
        csr,
        grant,
    } = accepted;
    match signer.sign(
        &csr,
        &message.instance_id,
        grant.profile,
        grant.lifetime,
        now,
    ) {
        Ok(issued) => Verdict::Sign {
            message,
            issued,
            signer_ref: signer.key_ref().map(str::to_string),
            warnings: grant.warnings,
        },
        Err(PkiError::RemoteSign(error)) => remote_failure(message, error),
        Err(e) => Verdict::refuse(
            Some(message),
            ReasonCode::CsrMalformed,
            format!("cannot sign: {e}"),
        ),
    }
}

/// A remote signer's error: an outage leaves the request queued; an error about this request is
/// answered to the node (retrying would only fail again until the queue dead-letters it).
pub fn remote_failure(message: CsrMessage, error: RemoteSignError) -> Verdict {
    if error.is_outage() {
        Verdict::Unavailable { message, error }
    } else {
        Verdict::refuse(Some(message), ReasonCode::SignerRefused, error.to_string())
    }
}

/// What AWS Private CA is asked to issue for an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcaIssuance {
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// Private CA returns the same certificate for a repeated token within minutes: bound to
    /// the request id and the CSR, so a node reusing a request id with a new key cannot get the
    /// old certificate.
    pub idempotency_token: String,
}

/// The issuance to ask Private CA for, or why not: its templates copy the CSR's subject, so a
/// CSR whose subject is not exactly `CN=<instance id>` is refused before anything is sent.
pub fn plan_pca_issuance(
    accepted: &Accepted,
    ca_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<PcaIssuance, Rejection> {
    let (message, csr) = (&accepted.message, &accepted.csr);
    // The policy checked the CN already; Private CA copies the whole subject, so any other
    // attribute would reach the certificate.
    crate::policy::check_subject(csr, &message.instance_id)?;
    if csr.subject_attributes != 1 {
        return Err(Rejection::new(
            ReasonCode::SubjectMismatch,
            format!(
                "with AWS Private CA the CSR's subject must be exactly CN={} (Private CA copies the subject into the certificate); it has {} attributes",
                message.instance_id, csr.subject_attributes,
            ),
        ));
    }
    let not_after = (now + accepted.grant.lifetime).min(ca_not_after);
    let token = crate::sha256_hex(
        format!(
            "{}\n{}",
            message.request_id.as_deref().unwrap_or_default(),
            csr.sha256
        )
        .as_bytes(),
    );
    Ok(PcaIssuance {
        not_before_unix: (now - crate::CLOCK_SKEW_ALLOWANCE).unix_timestamp(),
        not_after_unix: not_after.unix_timestamp(),
        idempotency_token: token[..36].to_string(),
    })
}

/// The line recorded before Private CA is asked to issue (`requested`): if the worker stops
/// before the certificate comes back, the record still says that it may exist, for whom, and
/// under which idempotency token (a retry within Private CA's window gets the same certificate,
/// recorded then with its serial).
pub fn pca_intent_record(
    accepted: &Accepted,
    issuance: &PcaIssuance,
    inbound: &Inbound<'_>,
    routes: &Routes,
) -> AuditRecord {
    AuditRecord {
        message_id: inbound.message_id.to_string(),
        request_id: accepted.message.request_id.clone(),
        instance_id: Some(accepted.message.instance_id.clone()),
        sender_id: inbound.sender_id.map(str::to_string),
        decision: "requested",
        reason_code: None,
        reason: None,
        signer: routes.signer,
        signer_ref: routes.signer_ref.clone(),
        serial: None,
        not_after: OffsetDateTime::from_unix_timestamp(issuance.not_after_unix)
            .ok()
            .map(crate::rfc3339),
        csr_sha256: Some(accepted.csr.sha256.clone()),
        certificate_sha256: None,
        idempotency_token: Some(issuance.idempotency_token.clone()),
    }
}

/// Whether the certificate Private CA issued (`certificate_arn`, `pem`) may be published: it is
/// checked as the node will check it (key, names, usages, chain to `chain_pem`'s root), plus
/// its subject and the lifetime granted. What fails is refused (`signer_refused`), not
/// published.
pub fn accept_pca_certificate(
    accepted: Accepted,
    issuance: &PcaIssuance,
    certificate_arn: String,
    pem: String,
    chain_pem: &str,
    now: std::time::SystemTime,
) -> Verdict {
    let Accepted {
        message,
        csr,
        grant,
    } = accepted;
    let anchors = crate::certs::load_certificates(chain_pem)
        .into_iter()
        .last()
        .into_iter()
        .collect::<Vec<_>>();
    let expect = crate::certs::Expectation {
        instance_id: &message.instance_id,
        spki_der: &csr.spki_der,
        names: &csr.names,
        profile: grant.profile,
    };
    let checked = crate::certs::check_issued_certificate(&pem, chain_pem, &anchors, &expect, now)
        .map_err(|why| why.to_string())
        .and_then(|info| {
            if info.subject_attributes != 1 {
                Err(format!(
                    "its subject has {} attributes, not only CN",
                    info.subject_attributes
                ))
            } else if info.not_after.unix_timestamp() > issuance.not_after_unix + 60 {
                Err(format!(
                    "it is valid until {}, beyond the {} granted",
                    crate::rfc3339(info.not_after),
                    OffsetDateTime::from_unix_timestamp(issuance.not_after_unix)
                        .map(crate::rfc3339)
                        .unwrap_or_default()
                ))
            } else {
                Ok(info)
            }
        });
    match checked {
        Ok(info) => Verdict::Sign {
            message,
            issued: IssuedCertificate {
                certificate_pem: pem,
                serial_hex: info.serial_hex,
                not_after: info.not_after,
                sha256: info.sha256,
            },
            signer_ref: Some(certificate_arn),
            warnings: grant.warnings,
        },
        Err(why) => remote_failure(
            message,
            RemoteSignError::refused(
                "UnexpectedCertificate",
                format!("Private CA issued {certificate_arn}, which is not published ({why}): check the CA and pca_template_arn"),
            ),
        ),
    }
}

/// Where a worker answers: derived from its options and the verified instance id, never from
/// an address in the request.
#[derive(Debug, Clone)]
pub struct Routes {
    pub csr_queue_url: String,
    pub reply_queue_prefix: String,
    pub shared_cert_queue_url: Option<String>,
    pub dead_letter_queue_url: Option<String>,
    /// The chain published with every certificate (intermediate, then root).
    pub chain_pem: String,
    /// What the audit log names the signer by: `file`, `aws_kms` or `aws_pca`, and the KMS key
    /// ARN or the Private CA's ARN (a certificate issued by Private CA names its own ARN).
    pub signer: &'static str,
    pub signer_ref: Option<String>,
}

impl Routes {
    /// The queue to answer `message` on. A node's reply queue lives beside the CSR queue (same
    /// endpoint, account and region), so its URL is the CSR queue's with the name replaced.
    pub fn reply_target(&self, message: &CsrMessage) -> Option<String> {
        if message.reply_mode() == ReplyMode::Shared {
            return self.shared_cert_queue_url.clone();
        }
        let (base, _) = self.csr_queue_url.trim_end_matches('/').rsplit_once('/')?;
        Some(format!(
            "{base}/{}",
            reply_queue_name(&self.reply_queue_prefix, &message.instance_id)
        ))
    }
}

/// What the caller must do next for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `body` to `queue` with the `InstanceId` attribute; report with [`Disposition::sent`].
    Publish {
        queue: String,
        body: String,
        instance_id: String,
    },
    /// Send the request's body as received to the dead-letter queue `queue`, with `reason` as
    /// its `FleetpkiReason` attribute (and the request's own `InstanceId` attribute, if any);
    /// report with [`Disposition::sent`].
    DeadLetter { queue: String, reason: String },
    /// Append this line to the issuance record (and stdout in service mode), durably, before
    /// performing any later action of this request: a barrier. The caller may commit the lines of
    /// several requests with one fsync; if it cannot, it must perform nothing more for them.
    Record(Box<AuditRecord>),
    /// Delete the request from the CSR queue (deletes may be batched with other requests').
    Delete,
    /// Make the request visible again at once.
    HandBack,
}

/// How a [`Action::Publish`] or [`Action::DeadLetter`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// The target queue does not exist.
    QueueMissing,
    /// Any other failure, in words.
    Failed(String),
}

/// What became of a request.
#[derive(Debug, Clone)]
pub enum Fate {
    /// Signed and delivered.
    Issued(IssuedCertificate),
    /// A policy refusal, answered to the node.
    Rejected(Rejection),
    /// Moved to the dead-letter queue with its reason.
    DeadLettered(Rejection),
    /// Left in the queue: seen again after the visibility timeout (and dead-lettered by the
    /// queue's redrive policy if it keeps failing). Said in words.
    Retry(String),
    /// Handed back to the queue at once: the signer is unavailable, not the request at fault.
    SignerUnavailable(RemoteSignError),
}

impl Fate {
    /// The audit log's `decision`.
    pub fn decision(&self) -> &'static str {
        match self {
            Fate::Issued(_) => "issued",
            Fate::Rejected(_) => "rejected",
            Fate::DeadLettered(_) => "dead_lettered",
            Fate::Retry(_) | Fate::SignerUnavailable(_) => "retry",
        }
    }
}

/// One audit line. No key, secret or HMAC is ever in it. The time is the caller's clock, given
/// when the line is written ([`AuditRecord::to_json_line`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub message_id: String,
    pub request_id: Option<String>,
    pub instance_id: Option<String>,
    pub sender_id: Option<String>,
    pub decision: &'static str,
    pub reason_code: Option<&'static str>,
    pub reason: Option<String>,
    pub signer: &'static str,
    pub signer_ref: Option<String>,
    /// On the `signed` line written before the certificate is sent, and on every later line
    /// about it (delivered or not): every certificate that exists under the CA is in the record.
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub csr_sha256: Option<String>,
    pub certificate_sha256: Option<String>,
    /// On a `requested` line (Private CA): the token `IssueCertificate` was called with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_token: Option<String>,
}

impl AuditRecord {
    /// The line's fields with `time` (a JSON object; its keys serialize in alphabetical order,
    /// as the log has always had them).
    pub fn to_json_value(&self, time: &str) -> serde_json::Value {
        let mut line = serde_json::to_value(self).unwrap_or_default();
        if let Some(fields) = line.as_object_mut() {
            fields.insert("time".into(), time.into());
        }
        line
    }

    /// The JSON line, with `time`, keys in alphabetical order.
    pub fn to_json_line(&self, time: &str) -> String {
        self.to_json_value(time).to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Record the certificate signed, before it can leave the worker.
    RecordSigned,
    /// Send the certificate to the node.
    PublishCertificate,
    /// Send the refusal to the node (a policy refusal of a request that can be answered).
    PublishRejection,
    /// Send the request to the dead-letter queue.
    DeadLetter,
    /// The fate is known: write the audit line.
    Record,
    /// Delete the request, or hand it back.
    Settle,
    Done,
}

/// The actions for one request, in order. Today's order, for every verdict:
///
/// - signed: record the certificate (`signed`), publish it (a missing reply queue: dead-letter
///   instead; a failed send: leave the request queued), record what became of it, delete. So
///   every certificate that may have reached a node is in the record, whatever the crash point;
/// - refused: publish the refusal when the node can read one (a version 1 request on its own
///   queue), dead-letter it when it is an integrity failure or could not be answered, record,
///   delete;
/// - signer unavailable: record, hand back.
///
/// A request whose dead-lettering failed, or that has no dead-letter queue, stays queued.
#[derive(Debug)]
pub struct Disposition {
    stage: Stage,
    message: Option<CsrMessage>,
    issued: Option<IssuedCertificate>,
    signer_ref: Option<String>,
    rejection: Option<Rejection>,
    signer_error: Option<RemoteSignError>,
    reply_queue: Option<String>,
    dead_letter_queue: Option<String>,
    message_id: String,
    sender_id: Option<String>,
    chain_pem: String,
    signer: &'static str,
    /// The worker's signer, for the lines of requests nothing was signed for.
    default_signer_ref: Option<String>,
    fate: Option<Fate>,
}

impl Disposition {
    pub fn new(verdict: Verdict, routes: &Routes, inbound: &Inbound<'_>) -> Disposition {
        let mut d = Disposition {
            stage: Stage::Done,
            message: None,
            issued: None,
            signer_ref: None,
            rejection: None,
            signer_error: None,
            reply_queue: None,
            dead_letter_queue: routes.dead_letter_queue_url.clone(),
            message_id: inbound.message_id.to_string(),
            sender_id: inbound.sender_id.map(str::to_string),
            chain_pem: routes.chain_pem.clone(),
            signer: routes.signer,
            default_signer_ref: routes.signer_ref.clone(),
            fate: None,
        };
        match verdict {
            Verdict::Sign {
                message,
                issued,
                signer_ref,
                ..
            } => {
                d.reply_queue = routes.reply_target(&message);
                d.issued = Some(issued);
                d.signer_ref = signer_ref;
                d.stage = match d.reply_queue {
                    Some(_) => Stage::RecordSigned,
                    // `check` refuses a request without a route before it is signed.
                    None => {
                        d.rejection = Some(Rejection::new(
                            ReasonCode::ReplyModeNotAllowed,
                            "signed, but this worker has no queue to answer it on",
                        ));
                        Stage::DeadLetter
                    }
                };
                d.message = Some(message);
            }
            Verdict::Refuse { message, rejection } => {
                // A node reads refusals only on its own queue, by request id.
                let answerable = message.as_ref().filter(|m| {
                    m.reply_mode() == ReplyMode::PerNode
                        && m.request_id.is_some()
                        && is_valid_instance_id(&m.instance_id)
                });
                d.reply_queue = answerable.and_then(|m| routes.reply_target(m));
                d.stage = if d.reply_queue.is_some() {
                    Stage::PublishRejection
                } else {
                    Stage::DeadLetter
                };
                d.rejection = Some(rejection);
                d.message = message;
            }
            Verdict::Unavailable { message, error } => {
                d.fate = Some(Fate::SignerUnavailable(error.clone()));
                d.signer_error = Some(error);
                d.message = Some(message);
                d.stage = Stage::Record;
            }
        }
        d
    }

    /// The next action, or `None` once the request is settled. After a `Publish` or a
    /// `DeadLetter`, [`Disposition::sent`] must be called before asking again.
    pub fn next_action(&mut self) -> Option<Action> {
        match self.stage {
            Stage::RecordSigned => {
                self.stage = Stage::PublishCertificate;
                Some(Action::Record(Box::new(AuditRecord {
                    decision: "signed",
                    reason_code: None,
                    reason: None,
                    ..self.audit_record()
                })))
            }
            Stage::PublishCertificate => {
                let message = self.message.as_ref()?;
                let issued = self.issued.as_ref()?;
                let reply = ReplyMessage::Certificate(CertificateMessage {
                    instance_id: message.instance_id.clone(),
                    certificate_pem: issued.certificate_pem.clone(),
                    ca_chain_pem: self.chain_pem.clone(),
                    version: Some(WIRE_VERSION),
                    request_id: message.request_id.clone(),
                    serial: Some(issued.serial_hex.clone()),
                    not_after: Some(crate::rfc3339(issued.not_after)),
                });
                // Seed compatibility: its retrieve_cert.py reads only the untagged fields.
                let body = match (&reply, message.is_seed_format()) {
                    (ReplyMessage::Certificate(c), true) => {
                        serde_json::to_string(c).unwrap_or_default()
                    }
                    _ => reply.to_json(),
                };
                Some(Action::Publish {
                    queue: self.reply_queue.clone()?,
                    body,
                    instance_id: message.instance_id.clone(),
                })
            }
            Stage::PublishRejection => {
                let message = self.message.as_ref()?;
                let rejection = self.rejection.as_ref()?;
                let reply = ReplyMessage::Rejection(RejectionMessage {
                    instance_id: message.instance_id.clone(),
                    request_id: message.request_id.clone().unwrap_or_default(),
                    reason_code: rejection.code.as_str().into(),
                    message: rejection.message.clone(),
                });
                Some(Action::Publish {
                    queue: self.reply_queue.clone()?,
                    body: reply.to_json(),
                    instance_id: message.instance_id.clone(),
                })
            }
            Stage::DeadLetter => {
                let rejection = self.rejection.clone()?;
                match &self.dead_letter_queue {
                    Some(queue) => Some(Action::DeadLetter {
                        queue: queue.clone(),
                        reason: rejection.to_string(),
                    }),
                    None => {
                        // Without a DLQ the message stays; the queue's own redrive decides.
                        self.fate = Some(Fate::Retry(format!(
                            "cannot dead-letter message {} ({rejection}): no dead-letter queue",
                            self.message_id
                        )));
                        self.stage = Stage::Record;
                        self.next_action()
                    }
                }
            }
            Stage::Record => {
                self.stage = Stage::Settle;
                Some(Action::Record(Box::new(self.audit_record())))
            }
            Stage::Settle => {
                self.stage = Stage::Done;
                match self.fate.as_ref()? {
                    Fate::Issued(_) | Fate::Rejected(_) | Fate::DeadLettered(_) => {
                        Some(Action::Delete)
                    }
                    Fate::SignerUnavailable(_) => Some(Action::HandBack),
                    Fate::Retry(_) => None,
                }
            }
            Stage::Done => None,
        }
    }

    /// How the last `Publish` or `DeadLetter` went.
    pub fn sent(&mut self, result: Sent) {
        let instance = || {
            self.message
                .as_ref()
                .map(|m| m.instance_id.clone())
                .unwrap_or_default()
        };
        match self.stage {
            Stage::PublishCertificate => match result {
                Sent::Delivered => {
                    self.fate = self.issued.clone().map(Fate::Issued);
                    self.stage = Stage::Record;
                }
                Sent::QueueMissing => {
                    self.rejection = Some(Rejection::new(
                        ReasonCode::MessageMalformed,
                        format!("the reply queue of {} does not exist", instance()),
                    ));
                    self.stage = Stage::DeadLetter;
                }
                Sent::Failed(e) => {
                    self.fate = Some(Fate::Retry(format!(
                        "could not publish the certificate for {}: {e}",
                        instance()
                    )));
                    self.stage = Stage::Record;
                }
            },
            Stage::PublishRejection => {
                let rejection = self.rejection.clone();
                match (result, rejection) {
                    (Sent::Delivered, Some(r)) if !r.code.is_integrity_failure() => {
                        self.fate = Some(Fate::Rejected(r));
                        self.stage = Stage::Record;
                    }
                    // Integrity failures are dead-lettered too (an alarm there means poison
                    // traffic); a refusal the node could not be told is dead-lettered instead.
                    _ => self.stage = Stage::DeadLetter,
                }
            }
            Stage::DeadLetter => {
                let queue = self.dead_letter_queue.as_deref().unwrap_or_default();
                self.fate = match result {
                    Sent::Delivered => self.rejection.clone().map(Fate::DeadLettered),
                    Sent::QueueMissing => Some(Fate::Retry(format!(
                        "could not dead-letter message {}: the dead-letter queue {queue} does not exist",
                        self.message_id
                    ))),
                    Sent::Failed(e) => Some(Fate::Retry(format!(
                        "could not dead-letter message {}: {e}",
                        self.message_id
                    ))),
                };
                self.stage = Stage::Record;
            }
            // Nothing was sent in the other stages: a report there changes nothing.
            Stage::RecordSigned | Stage::Record | Stage::Settle | Stage::Done => {}
        }
    }

    /// The request's fate, once decided.
    pub fn fate(&self) -> Option<&Fate> {
        self.fate.as_ref()
    }

    pub fn message(&self) -> Option<&CsrMessage> {
        self.message.as_ref()
    }

    /// A certificate signed for this request, delivered or not.
    pub fn issued(&self) -> Option<&IssuedCertificate> {
        self.issued.as_ref()
    }

    fn audit_record(&self) -> AuditRecord {
        let (reason_code, reason) = match &self.fate {
            Some(Fate::Issued(_)) | None => (None, None),
            Some(Fate::Rejected(r)) | Some(Fate::DeadLettered(r)) => {
                (Some(r.code.as_str()), Some(r.message.clone()))
            }
            Some(Fate::Retry(why)) => (Some("not_delivered"), Some(why.clone())),
            Some(Fate::SignerUnavailable(e)) => (Some("signer_unavailable"), Some(e.to_string())),
        };
        let message = self.message.as_ref();
        let issued = self.issued.as_ref();
        AuditRecord {
            message_id: self.message_id.clone(),
            request_id: message.and_then(|m| m.request_id.clone()),
            instance_id: message.map(|m| m.instance_id.clone()),
            sender_id: self.sender_id.clone(),
            decision: self.fate.as_ref().map_or("retry", Fate::decision),
            reason_code,
            reason,
            signer: self.signer,
            // Nothing signed: the signer this worker would have used.
            signer_ref: if issued.is_some() {
                self.signer_ref.clone()
            } else {
                self.default_signer_ref.clone()
            },
            serial: issued.map(|i| i.serial_hex.clone()),
            not_after: issued.map(|i| crate::rfc3339(i.not_after)),
            csr_sha256: message.map(|m| csr_der_sha256(&m.csr_pem)),
            certificate_sha256: issued.map(|i| i.sha256.clone()),
            idempotency_token: None,
        }
    }
}
