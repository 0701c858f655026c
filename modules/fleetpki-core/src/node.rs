//! The node's decision about one message on its reply queue, without I/O: `mtls_cert_fetch`
//! receives, asks [`judge_reply`], and performs what it returns. Nothing here touches SQS or the
//! install layout.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::certs::{check_issued_certificate, CertRejection, CertificateInfo, Expectation};
use crate::wire::{ReplyMessage, ReplyMode};

/// What the node knows while a request is pending.
pub struct Pending<'a> {
    pub instance_id: &'a str,
    pub request_id: &'a str,
    /// Where answers arrive: the node's own queue, or the seed's shared queue.
    pub reply_mode: ReplyMode,
    /// The pending key, names and profile the certificate must match.
    pub expect: &'a Expectation<'a>,
    /// The pinned CA certificates: the only trust anchors.
    pub anchors: &'a [CertificateDer<'static>],
}

/// One received message, as the node sees it.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub message_id: &'a str,
    pub body: &'a str,
    /// The `InstanceId` message attribute.
    pub instance_id_attribute: Option<&'a str>,
}

/// What the node must do with one message.
#[derive(Debug)]
pub enum ReplyDecision {
    /// Another node's answer on the shared queue: make it visible again at once for its owner.
    HandBack,
    /// Not usable here (unreadable, for another request or instance, a certificate the checks
    /// refuse): delete it — the node's queue is only its own, and a message left there would
    /// come back forever — and warn with `warning`.
    Discard { warning: String },
    /// The CA refused the pending request: end the request (the next submit sends a new one at
    /// once), delete the message, and fail the task with `msg`.
    Refused { reason_code: String, msg: String },
    /// A certificate for the pending request, from the pinned CA, valid only from a time ahead
    /// of this node's clock: stage it beside the pending key, delete the message, warn with
    /// `msg`; the first run at which it is valid installs it (unless a valid answer comes first).
    NotYetValid {
        certificate_pem: String,
        chain_pem: String,
        msg: String,
    },
    /// A certificate that passed every check. In this order: stage it beside the pending key
    /// (from then on an interrupted run is completed without SQS), delete the message, install.
    Install {
        info: Box<CertificateInfo>,
        chain_pem: String,
    },
}

/// Decides what to do with `reply` while `pending` waits for its answer, at time `now`.
pub fn judge_reply(pending: &Pending<'_>, reply: &Reply<'_>, now: SystemTime) -> ReplyDecision {
    // On the seed's shared queue, other nodes' messages are handed back at once.
    if pending.reply_mode == ReplyMode::Shared
        && reply.instance_id_attribute != Some(pending.instance_id)
    {
        return ReplyDecision::HandBack;
    }
    let discard = |warning: String| ReplyDecision::Discard { warning };
    let message = match ReplyMessage::from_json(reply.body) {
        Ok(message) => message,
        Err(e) => {
            return discard(format!(
                "discarded an unreadable message {}: {e}",
                reply.message_id
            ))
        }
    };
    let for_pending = match message.request_id() {
        Some(id) => id == pending.request_id,
        // Only a seed worker's answer (no version) comes without a request id, and only on the
        // seed's shared queue: the key check below still binds it. Any of our answers names the
        // request it answers.
        None => pending.reply_mode == ReplyMode::Shared && message.is_seed_format(),
    };
    if !for_pending {
        return discard(match message.request_id() {
            Some(id) => format!(
                "discarded an answer to request {id}, not the pending request {}",
                pending.request_id
            ),
            None => format!(
                "discarded an answer without a request id, not the pending request {}",
                pending.request_id
            ),
        });
    }
    match message {
        ReplyMessage::Rejection(rejection) => {
            if rejection.instance_id != pending.instance_id {
                return discard(format!(
                    "discarded a rejection addressed to {}",
                    rejection.instance_id
                ));
            }
            ReplyDecision::Refused {
                msg: format!(
                    "the CA refused request {}: {} ({}). Fix the request or the signing policy, then submit again",
                    pending.request_id, rejection.reason_code, rejection.message
                ),
                reason_code: rejection.reason_code,
            }
        }
        ReplyMessage::Certificate(certificate) => match check_issued_certificate(
            &certificate.certificate_pem,
            &certificate.ca_chain_pem,
            pending.anchors,
            pending.expect,
            now,
        ) {
            Ok(info) => ReplyDecision::Install {
                info: Box::new(info),
                chain_pem: certificate.ca_chain_pem,
            },
            Err(refusal @ CertRejection::NotYetValid { .. })
                if valid_later(
                    pending,
                    &certificate.certificate_pem,
                    &certificate.ca_chain_pem,
                    &refusal,
                    now,
                ) =>
            {
                ReplyDecision::NotYetValid {
                    msg: not_yet_valid_msg(pending.request_id, &refusal),
                    certificate_pem: certificate.certificate_pem,
                    chain_pem: certificate.ca_chain_pem,
                }
            }
            // Anything else is set aside, never ending the request: a certificate that anyone
            // able to write to the reply queue can send must not stop the genuine answer.
            Err(refusal) => discard(format!(
                "refused a certificate for request {} ({}): {refusal}",
                pending.request_id,
                refusal.reason_code()
            )),
        },
    }
}

/// Whether a certificate refused as not yet valid passes every check at its notBefore: then it
/// is the pinned CA's answer, early only for this node's clock (a forgery fails there too).
pub fn valid_later(
    pending: &Pending<'_>,
    certificate_pem: &str,
    chain_pem: &str,
    refusal: &CertRejection,
    now: SystemTime,
) -> bool {
    let CertRejection::NotYetValid { ahead_seconds, .. } = refusal else {
        return false;
    };
    let then = now + std::time::Duration::from_secs(ahead_seconds.saturating_add(1));
    check_issued_certificate(
        certificate_pem,
        chain_pem,
        pending.anchors,
        pending.expect,
        then,
    )
    .is_ok()
}

/// What a node says of a certificate that is valid only later: kept, and why.
pub fn not_yet_valid_msg(request_id: &str, refusal: &CertRejection) -> String {
    format!(
        "the certificate for request {request_id} is not valid yet ({}: {refusal}); it is kept and installed by the first run at which it is valid, unless a valid answer comes first. Set the node's clock right (NTP)",
        refusal.reason_code()
    )
}
