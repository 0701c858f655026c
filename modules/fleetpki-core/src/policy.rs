//! The signing policy: what the CA signs, for whom. Every refusal has its own reason code.
//!
//! Anyone who can write to the CSR queue can claim any instance id, so nothing in a request is
//! trusted until it passed here: the instance must be listed, every name allowed for it, the key
//! strong enough, no CA powers asked for, and (where configured) the sender proven.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::csr::{KeyKind, ParsedCsr};
use crate::names::SubjectAltName;
pub use crate::reason::{ReasonCode, Rejection};
use crate::wire::{CsrMessage, Profile, ReplyMode};

/// The worker's own limits on what it reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
/// Tolerated clock difference for request timestamps in the future.
pub const MAX_FUTURE_SKEW_SECONDS: i64 = 300;

/// How the sender proves it is the instance it claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofKind {
    /// Trust the queue's write permission alone (set explicitly; every result warns).
    None,
    /// The SQS `SenderId` (`ROLEID:i-...` for an instance profile) names the instance.
    SqsSenderId,
    /// An HMAC with a per-host secret.
    EnrollmentSecret,
}

/// Names allowed for one instance, or for every instance matching a pattern.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRule {
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub instance_id_pattern: Option<String>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default)]
    pub ip_addresses: Vec<IpAddr>,
    #[serde(default)]
    pub dns_suffixes: Vec<String>,
    #[serde(default)]
    pub ip_networks: Vec<IpNet>,
}

fn default_max_age() -> u64 {
    86_400
}
fn default_lifetime() -> u32 {
    30
}
fn default_profiles() -> Vec<Profile> {
    vec![Profile::Mtls, Profile::Server, Profile::Client]
}
fn default_enrollment_hmac_versions() -> Vec<u8> {
    vec![1, 2]
}
fn default_reply_modes() -> Vec<ReplyMode> {
    vec![ReplyMode::PerNode, ReplyMode::Shared]
}
fn default_rsa_min_bits() -> usize {
    2048
}
fn default_curves() -> Vec<String> {
    vec!["secp256r1".into(), "secp384r1".into()]
}

/// The policy file (JSON), as documented in `docs/interfaces.md`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub identity_proof: ProofKind,
    #[serde(default)]
    pub sender_role_ids: Vec<String>,
    #[serde(default)]
    pub enrollment_secrets: BTreeMap<String, String>,
    /// Which forms of the enrollment HMAC are accepted: 2 covers every field of the request,
    /// 1 (the first release's) leaves lifetime_days, reply_mode and version out.
    #[serde(default = "default_enrollment_hmac_versions")]
    pub enrollment_hmac_versions: Vec<u8>,
    #[serde(default = "default_max_age")]
    pub max_request_age_seconds: u64,
    #[serde(default = "default_lifetime")]
    pub max_lifetime_days: u32,
    #[serde(default = "default_lifetime")]
    pub default_lifetime_days: u32,
    #[serde(default = "default_profiles")]
    pub profiles: Vec<Profile>,
    /// Where nodes may ask to be answered: `per_node` (their own queue), `shared` (the seed's
    /// shared queue, which every node can read).
    #[serde(default = "default_reply_modes")]
    pub reply_modes: Vec<ReplyMode>,
    #[serde(default = "default_rsa_min_bits")]
    pub rsa_min_bits: usize,
    #[serde(default = "default_curves")]
    pub ec_curves: Vec<String>,
    #[serde(default)]
    pub instances: Vec<InstanceRule>,
}

// Hand-written so that the enrollment secrets never reach a log through `{:?}`.
impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("identity_proof", &self.identity_proof)
            .field(
                "enrollment_secrets",
                &format_args!("<{} hidden>", self.enrollment_secrets.len()),
            )
            .field("instances", &self.instances.len())
            .finish_non_exhaustive()
    }
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the signing policy is not valid JSON of the documented shape: {0}")]
    Parse(String),
    #[error("the signing policy is unusable: {0}")]
    Invalid(String),
}

/// What the worker needs to know about one received request.
#[derive(Debug, Clone)]
pub struct SigningRequest<'a> {
    pub message: &'a CsrMessage,
    /// The `InstanceId` message attribute.
    pub attribute_instance_id: Option<&'a str>,
    /// The `SenderId` system attribute SQS sets.
    pub sender_id: Option<&'a str>,
    pub csr: &'a ParsedCsr,
}

/// What the policy allows for an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub profile: Profile,
    pub lifetime: Duration,
    /// Accepted, but worth telling the operator (a v1 enrollment HMAC).
    pub warnings: Vec<String>,
}

/// Text from a request, as a refusal quotes it: at most 64 characters, control characters
/// shown as `?`, so a sender cannot make the record's lines (or a node's message) arbitrarily
/// long or unreadable.
pub fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Request ids name a request in answers and records: a UUID from our nodes, at most 128 of
/// these characters from anyone.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Instance ids become queue names (`prefix` + id): keep them to SQS's queue-name characters.
pub fn is_valid_instance_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The canonical text the enrollment HMAC covers; a newline cannot occur inside the fields
/// that precede the CSR, so the encoding is unambiguous.
pub fn enrollment_mac_input(
    request_id: &str,
    timestamp: i64,
    instance_id: &str,
    profile: Profile,
    csr_pem: &str,
) -> String {
    format!(
        "fleetpki-enrollment-v1\n{request_id}\n{timestamp}\n{instance_id}\n{}\n{csr_pem}",
        profile.as_str()
    )
}

/// What a v2 enrollment HMAC starts with (`v2:` then hex); a bare hex HMAC is v1.
pub const ENROLLMENT_MAC_V2_PREFIX: &str = "v2:";

/// The canonical text the v2 enrollment HMAC covers: every field of the request but the proof
/// itself, as a JSON array without whitespace (UTF-8, only `"`, `\` and control characters
/// escaped), with the defaults the worker applies: profile `mtls`, the reply mode (`shared` for
/// a request without version), `null` for an absent field. Documented in docs/interfaces.md.
pub fn enrollment_mac_input_v2(message: &CsrMessage) -> String {
    serde_json::json!([
        "fleetpki-enrollment-v2",
        message.version,
        message.request_id,
        message.timestamp,
        message.instance_id,
        message.profile.unwrap_or_default().as_str(),
        message.lifetime_days,
        message.reply_mode().as_str(),
        message.csr_pem,
    ])
    .to_string()
}

/// The `hmac` a node sends: `v2:` and the HMAC-SHA256 of [`enrollment_mac_input_v2`], hex.
pub fn enrollment_proof_v2(secret: &str, message: &CsrMessage) -> String {
    format!(
        "{ENROLLMENT_MAC_V2_PREFIX}{}",
        enrollment_mac(secret, &enrollment_mac_input_v2(message))
    )
}

/// HMAC-SHA256 of the enrollment input, hex.
pub fn enrollment_mac(secret: &str, input: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    crate::hex(aws_lc_rs::hmac::sign(&key, input.as_bytes()).as_ref())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Policy {
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy =
            serde_json::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    pub fn from_value(value: serde_json::Value) -> Result<Self, PolicyError> {
        let policy: Policy =
            serde_json::from_value(value).map_err(|e| PolicyError::Parse(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |m: String| Err(PolicyError::Invalid(m));
        if self.rsa_min_bits < 2048 {
            return invalid(format!(
                "rsa_min_bits is {}: RSA below 2048 bits is never allowed",
                self.rsa_min_bits
            ));
        }
        if self.default_lifetime_days == 0 || self.default_lifetime_days > self.max_lifetime_days {
            return invalid("default_lifetime_days must be between 1 and max_lifetime_days".into());
        }
        if self.enrollment_hmac_versions.is_empty()
            || self
                .enrollment_hmac_versions
                .iter()
                .any(|v| !(1..=2).contains(v))
        {
            return invalid("enrollment_hmac_versions must list 1, 2 or both".into());
        }
        if self.reply_modes.is_empty() {
            return invalid("reply_modes is empty: list per_node, shared or both".into());
        }
        for curve in &self.ec_curves {
            if curve != "secp256r1" && curve != "secp384r1" {
                return invalid(format!(
                    "ec_curves: unsupported curve {curve} (use secp256r1, secp384r1)"
                ));
            }
        }
        if self.identity_proof == ProofKind::SqsSenderId && self.sender_role_ids.is_empty() {
            return invalid("identity_proof sqs_sender_id needs sender_role_ids: the role ids (AROA...) of the nodes' instance profile".into());
        }
        if self.identity_proof == ProofKind::EnrollmentSecret && self.enrollment_secrets.is_empty()
        {
            return invalid("identity_proof enrollment_secret needs enrollment_secrets: a map of instance id to secret".into());
        }
        for (i, rule) in self.instances.iter().enumerate() {
            match (&rule.instance_id, &rule.instance_id_pattern) {
                (Some(_), None) => {}
                (None, Some(pattern)) => {
                    glob::Pattern::new(pattern).map_err(|e| {
                        PolicyError::Invalid(format!("instances[{i}].instance_id_pattern: {e}"))
                    })?;
                }
                _ => {
                    return invalid(format!(
                        "instances[{i}]: set exactly one of instance_id and instance_id_pattern"
                    ))
                }
            }
            for suffix in &rule.dns_suffixes {
                if !suffix.starts_with('.') {
                    return invalid(format!(
                        "instances[{i}].dns_suffixes: '{suffix}' must start with '.'"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Warnings every result of a worker under this policy carries.
    pub fn warnings(&self) -> Vec<String> {
        match self.identity_proof {
            ProofKind::None => vec!["signing policy has identity_proof: none — anyone who can write to the CSR queue can obtain a certificate for any allowed instance; use sqs_sender_id on AWS or enrollment_secret elsewhere".into()],
            _ => Vec::new(),
        }
    }

    fn rule_for(&self, instance_id: &str) -> Option<&InstanceRule> {
        self.instances.iter().find(
            |rule| match (&rule.instance_id, &rule.instance_id_pattern) {
                (Some(id), _) => id == instance_id,
                (None, Some(pattern)) => glob::Pattern::new(pattern)
                    .map(|p| p.matches(instance_id))
                    .unwrap_or(false),
                _ => false,
            },
        )
    }

    /// Decides on a request whose CSR parsed and self-verified. `now` is unix seconds.
    pub fn evaluate(&self, request: &SigningRequest<'_>, now: i64) -> Result<Grant, Rejection> {
        use ReasonCode::*;
        let message = request.message;
        let csr = request.csr;
        let instance_id = message.instance_id.as_str();

        if !is_valid_instance_id(instance_id) {
            return Err(Rejection::new(
                InstanceIdInvalid,
                "instance_id must be 1-64 letters, digits, '-' or '_'",
            ));
        }
        match request.attribute_instance_id {
            Some(attr) if attr == instance_id => {}
            Some(attr) => {
                return Err(Rejection::new(
                    InstanceIdMismatch,
                    format!(
                    "the InstanceId attribute {} differs from the body's instance_id {instance_id}",
                    quote(attr)
                ),
                ))
            }
            None => {
                return Err(Rejection::new(
                    InstanceIdMismatch,
                    "the message has no InstanceId attribute",
                ))
            }
        }
        check_subject(csr, instance_id)?;

        let identity_warnings = self.check_identity(request, now)?;

        let rule = self.rule_for(instance_id).ok_or_else(|| {
            Rejection::new(
                InstanceNotAllowed,
                format!("instance {instance_id} is not in the signing policy"),
            )
        })?;

        if let Some(name) = csr.unsupported_names.first() {
            return Err(Rejection::new(
                SanUnsupported,
                format!("only DNS and IP names are signed, not {}", quote(name)),
            ));
        }
        for name in &csr.names {
            if !name_allowed(rule, name) {
                return Err(Rejection::new(
                    SanNotAllowed,
                    format!(
                        "{} is not allowed for {instance_id}",
                        quote(&name.to_string())
                    ),
                ));
            }
        }

        match csr.key {
            KeyKind::Rsa { bits } if bits < self.rsa_min_bits => {
                return Err(Rejection::new(
                    KeyTooSmall,
                    format!(
                        "RSA-{bits} is below the minimum of {} bits",
                        self.rsa_min_bits
                    ),
                ))
            }
            KeyKind::Rsa { .. } => {}
            KeyKind::EcP256 if self.ec_curves.iter().any(|c| c == "secp256r1") => {}
            KeyKind::EcP384 if self.ec_curves.iter().any(|c| c == "secp384r1") => {}
            other => {
                return Err(Rejection::new(
                    KeyTypeNotAllowed,
                    format!("{other} keys are not allowed"),
                ))
            }
        }

        if csr.requests_ca || csr.requests_cert_sign {
            return Err(Rejection::new(
                CaRequested,
                "the CSR asks for CA powers (CA:TRUE, keyCertSign or cRLSign)",
            ));
        }
        if let Some(oid) = csr.unknown_critical.first() {
            return Err(Rejection::new(
                CriticalExtension,
                format!("the CSR requests an unknown critical extension {oid}"),
            ));
        }

        let profile = message.profile.unwrap_or_default();
        if !self.profiles.contains(&profile) {
            return Err(Rejection::new(
                ProfileNotAllowed,
                format!("profile {} is not allowed", profile.as_str()),
            ));
        }
        let mode = message.reply_mode();
        if !self.reply_modes.contains(&mode) {
            return Err(Rejection::new(
                ReplyModeNotAllowed,
                format!(
                    "reply mode {} is not allowed by the signing policy (reply_modes: {})",
                    mode.as_str(),
                    self.reply_modes
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let days = message.lifetime_days.unwrap_or(self.default_lifetime_days);
        if days == 0 || days > self.max_lifetime_days {
            return Err(Rejection::new(
                LifetimeNotAllowed,
                format!(
                    "a lifetime of {days} days is not allowed (1 to {} days)",
                    self.max_lifetime_days
                ),
            ));
        }
        Ok(Grant {
            profile,
            lifetime: Duration::from_secs(u64::from(days) * 86_400),
            warnings: identity_warnings,
        })
    }

    /// The sender's proof; `Ok` carries the warnings an accepted proof deserves.
    fn check_identity(
        &self,
        request: &SigningRequest<'_>,
        now: i64,
    ) -> Result<Vec<String>, Rejection> {
        use ReasonCode::*;
        let message = request.message;
        if let Some(ts) = message.timestamp {
            let age = now - ts;
            if age > self.max_request_age_seconds as i64 {
                return Err(Rejection::new(
                    RequestExpired,
                    format!(
                        "the request is {age} s old; at most {} s are accepted",
                        self.max_request_age_seconds
                    ),
                ));
            }
            if age < -MAX_FUTURE_SKEW_SECONDS {
                return Err(Rejection::new(
                    RequestExpired,
                    format!("the request's timestamp is {} s in the future", -age),
                ));
            }
        }
        match self.identity_proof {
            ProofKind::None => Ok(Vec::new()),
            ProofKind::SqsSenderId => {
                let sender = request.sender_id.ok_or_else(|| {
                    Rejection::new(IdentityProofMissing, "the message has no SenderId")
                })?;
                let (role, session) = sender.split_once(':').ok_or_else(|| {
                    Rejection::new(
                        SenderMismatch,
                        format!("SenderId {sender} is not a role session (ROLEID:session)"),
                    )
                })?;
                if !self.sender_role_ids.iter().any(|r| r == role) {
                    return Err(Rejection::new(
                        SenderMismatch,
                        format!("SenderId role {role} is not an allowed node role"),
                    ));
                }
                if session != message.instance_id {
                    return Err(Rejection::new(
                        SenderMismatch,
                        format!(
                            "SenderId session {session} is not the claimed instance {}",
                            message.instance_id
                        ),
                    ));
                }
                Ok(Vec::new())
            }
            ProofKind::EnrollmentSecret => {
                let proof = message
                    .identity_proof
                    .as_ref()
                    .filter(|p| p.kind == "enrollment_secret")
                    .and_then(|p| p.hmac.as_deref())
                    .ok_or_else(|| {
                        Rejection::new(
                            IdentityProofMissing,
                            "the request carries no enrollment_secret HMAC",
                        )
                    })?;
                let (Some(request_id), Some(timestamp)) =
                    (message.request_id.as_deref(), message.timestamp)
                else {
                    return Err(Rejection::new(
                        IdentityProofMissing,
                        "an enrollment HMAC needs the request's request_id and timestamp",
                    ));
                };
                let secret = self
                    .enrollment_secrets
                    .get(&message.instance_id)
                    .ok_or_else(|| {
                        Rejection::new(
                            IdentityProofInvalid,
                            format!("no enrollment secret is known for {}", message.instance_id),
                        )
                    })?;
                let (version, tag) = match proof.strip_prefix(ENROLLMENT_MAC_V2_PREFIX) {
                    Some(tag) => (2, tag),
                    None => (1, proof),
                };
                if !self.enrollment_hmac_versions.contains(&version) {
                    return Err(Rejection::new(
                        IdentityProofInvalid,
                        "the request carries a v1 enrollment HMAC, and the policy accepts v2 only (enrollment_hmac_versions): upgrade fleetpki.mtls on the node",
                    ));
                }
                let input = if version == 2 {
                    enrollment_mac_input_v2(message)
                } else {
                    enrollment_mac_input(
                        request_id,
                        timestamp,
                        &message.instance_id,
                        message.profile.unwrap_or_default(),
                        &message.csr_pem,
                    )
                };
                let key =
                    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
                let tag = decode_hex(tag)
                    .ok_or_else(|| Rejection::new(IdentityProofInvalid, "the HMAC is not hex"))?;
                aws_lc_rs::hmac::verify(&key, input.as_bytes(), &tag).map_err(|_| {
                    Rejection::new(IdentityProofInvalid, "the enrollment HMAC does not verify")
                })?;
                Ok(if version == 1 {
                    vec![format!(
                        "request {request_id} of {} carries a v1 enrollment HMAC, which does not cover lifetime_days, reply_mode and version: upgrade fleetpki.mtls on the node, then set enrollment_hmac_versions to [2] in the signing policy",
                        message.instance_id
                    )]
                } else {
                    Vec::new()
                })
            }
        }
    }
}

/// Every signer puts exactly `CN=<instance id>` in the certificate, so the CSR must ask for
/// nothing else under that name: one CN, the instance id. Other attributes are ignored (the
/// file and KMS signers rebuild the subject; Private CA refuses them in its own check).
pub fn check_subject(csr: &ParsedCsr, instance_id: &str) -> Result<(), Rejection> {
    match csr.common_names.as_slice() {
        [cn] if cn == instance_id => Ok(()),
        [] => Err(Rejection::new(
            ReasonCode::SubjectMismatch,
            format!("the CSR's subject has no CN; it must be CN={instance_id}"),
        )),
        [cn] => Err(Rejection::new(
            ReasonCode::SubjectMismatch,
            format!(
                "the CSR's subject CN {} is not the instance id {instance_id}",
                quote(cn)
            ),
        )),
        several => Err(Rejection::new(
            ReasonCode::SubjectMismatch,
            format!(
                "the CSR's subject has {} CNs ({}); it must have one, CN={instance_id}",
                several.len(),
                several
                    .iter()
                    .take(4)
                    .map(|cn| quote(cn))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn name_allowed(rule: &InstanceRule, name: &SubjectAltName) -> bool {
    match name {
        SubjectAltName::Dns(dns) => {
            rule.dns_names.iter().any(|allowed| allowed.eq_ignore_ascii_case(dns))
                // A wildcard is only signed when listed literally, never through a suffix.
                || (!dns.starts_with("*.")
                    && rule.dns_suffixes.iter().any(|suffix| dns.len() > suffix.len() && dns.ends_with(&suffix.to_ascii_lowercase())))
        }
        SubjectAltName::Ip(ip) => {
            rule.ip_addresses.contains(ip) || rule.ip_networks.iter().any(|net| net.contains(ip))
        }
    }
}
