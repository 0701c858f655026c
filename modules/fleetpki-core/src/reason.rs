//! Why the CA did not sign a request: the reason codes every refusal carries (in the answer to
//! the node, the dead-letter queue's `FleetpkiReason` attribute and the audit log). Their own
//! module: the CSR parser and the policy both classify into them, and neither owns them.

use std::fmt;

/// Why a request was not signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    MessageTooLarge,
    MessageMalformed,
    UnsupportedVersion,
    CsrTooLarge,
    CsrMalformed,
    CsrSignatureAlgorithm,
    CsrSignatureInvalid,
    InstanceIdInvalid,
    InstanceIdMismatch,
    InstanceNotAllowed,
    SanNotAllowed,
    SanUnsupported,
    KeyTypeNotAllowed,
    KeyTooSmall,
    CaRequested,
    CriticalExtension,
    LifetimeNotAllowed,
    ProfileNotAllowed,
    IdentityProofMissing,
    IdentityProofInvalid,
    SenderMismatch,
    RequestExpired,
    /// The remote signer (KMS, Private CA) refused this one request, or issued a certificate
    /// the worker's checks refuse: answered, not retried.
    SignerRefused,
    /// The CSR's subject is not exactly one CN holding the instance id.
    SubjectMismatch,
    /// The reply mode asked for is not allowed by the policy, or this worker cannot answer on it.
    ReplyModeNotAllowed,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 25] = [
        ReasonCode::MessageTooLarge,
        ReasonCode::MessageMalformed,
        ReasonCode::UnsupportedVersion,
        ReasonCode::CsrTooLarge,
        ReasonCode::CsrMalformed,
        ReasonCode::CsrSignatureAlgorithm,
        ReasonCode::CsrSignatureInvalid,
        ReasonCode::InstanceIdInvalid,
        ReasonCode::InstanceIdMismatch,
        ReasonCode::InstanceNotAllowed,
        ReasonCode::SanNotAllowed,
        ReasonCode::SanUnsupported,
        ReasonCode::KeyTypeNotAllowed,
        ReasonCode::KeyTooSmall,
        ReasonCode::CaRequested,
        ReasonCode::CriticalExtension,
        ReasonCode::LifetimeNotAllowed,
        ReasonCode::ProfileNotAllowed,
        ReasonCode::IdentityProofMissing,
        ReasonCode::IdentityProofInvalid,
        ReasonCode::SenderMismatch,
        ReasonCode::RequestExpired,
        ReasonCode::SignerRefused,
        ReasonCode::SubjectMismatch,
        ReasonCode::ReplyModeNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::MessageTooLarge => "message_too_large",
            ReasonCode::MessageMalformed => "message_malformed",
            ReasonCode::UnsupportedVersion => "unsupported_version",
            ReasonCode::CsrTooLarge => "csr_too_large",
            ReasonCode::CsrMalformed => "csr_malformed",
            ReasonCode::CsrSignatureAlgorithm => "csr_signature_algorithm",
            ReasonCode::CsrSignatureInvalid => "csr_signature_invalid",
            ReasonCode::InstanceIdInvalid => "instance_id_invalid",
            ReasonCode::InstanceIdMismatch => "instance_id_mismatch",
            ReasonCode::InstanceNotAllowed => "instance_not_allowed",
            ReasonCode::SanNotAllowed => "san_not_allowed",
            ReasonCode::SanUnsupported => "san_unsupported",
            ReasonCode::KeyTypeNotAllowed => "key_type_not_allowed",
            ReasonCode::KeyTooSmall => "key_too_small",
            ReasonCode::CaRequested => "ca_requested",
            ReasonCode::CriticalExtension => "critical_extension",
            ReasonCode::LifetimeNotAllowed => "lifetime_not_allowed",
            ReasonCode::ProfileNotAllowed => "profile_not_allowed",
            ReasonCode::IdentityProofMissing => "identity_proof_missing",
            ReasonCode::IdentityProofInvalid => "identity_proof_invalid",
            ReasonCode::SenderMismatch => "sender_mismatch",
            ReasonCode::RequestExpired => "request_expired",
            ReasonCode::SignerRefused => "signer_refused",
            ReasonCode::SubjectMismatch => "subject_mismatch",
            ReasonCode::ReplyModeNotAllowed => "reply_mode_not_allowed",
        }
    }

    /// Requests that could not be processed at all go to the dead-letter queue (an alarm there
    /// means malformed or poison traffic); the others are policy answers to the node.
    pub fn is_integrity_failure(self) -> bool {
        matches!(
            self,
            ReasonCode::MessageTooLarge
                | ReasonCode::MessageMalformed
                | ReasonCode::UnsupportedVersion
                | ReasonCode::CsrTooLarge
                | ReasonCode::CsrMalformed
                | ReasonCode::CsrSignatureAlgorithm
                | ReasonCode::CsrSignatureInvalid
                | ReasonCode::InstanceIdInvalid
        )
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the code for machines, the message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ReasonCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::ReasonCode::{self, *};

    /// Exhaustive, so a new variant does not compile until it has a place here; and the place
    /// must be its place in `ALL`, so `ALL` lists every code once.
    fn position(code: ReasonCode) -> usize {
        match code {
            MessageTooLarge => 0,
            MessageMalformed => 1,
            UnsupportedVersion => 2,
            CsrTooLarge => 3,
            CsrMalformed => 4,
            CsrSignatureAlgorithm => 5,
            CsrSignatureInvalid => 6,
            InstanceIdInvalid => 7,
            InstanceIdMismatch => 8,
            InstanceNotAllowed => 9,
            SanNotAllowed => 10,
            SanUnsupported => 11,
            KeyTypeNotAllowed => 12,
            KeyTooSmall => 13,
            CaRequested => 14,
            CriticalExtension => 15,
            LifetimeNotAllowed => 16,
            ProfileNotAllowed => 17,
            IdentityProofMissing => 18,
            IdentityProofInvalid => 19,
            SenderMismatch => 20,
            RequestExpired => 21,
            SignerRefused => 22,
            SubjectMismatch => 23,
            ReplyModeNotAllowed => 24,
        }
    }

    #[test]
    fn all_lists_every_code_once_in_order() {
        for (i, code) in ReasonCode::ALL.iter().enumerate() {
            assert_eq!(position(*code), i, "{code}");
        }
    }

    #[test]
    fn codes_are_distinct_snake_case_words() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ReasonCode::ALL {
            let text = code.as_str();
            assert!(
                text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{text}"
            );
            assert!(seen.insert(text), "{text} twice");
        }
    }
}
