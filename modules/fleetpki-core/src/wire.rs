//! The wire format, version 1. Our messages extend the seed article's bodies with optional fields,
//! so a CA worker of ours serves the seed's `submit_csr.py`/`retrieve_cert.py` unchanged.

use serde::{Deserialize, Serialize};

/// The current schema version written by our nodes and worker.
pub const WIRE_VERSION: u32 = 1;
/// The String message attribute that names the instance (set by the seed's scripts too).
pub const INSTANCE_ID_ATTRIBUTE: &str = "InstanceId";
/// The message attribute carrying why a message was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "FleetpkiReason";

/// Certificate profiles: which extended key usages a certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// serverAuth and clientAuth.
    #[default]
    Mtls,
    Server,
    Client,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Mtls => "mtls",
            Profile::Server => "server",
            Profile::Client => "client",
        }
    }
    pub fn server_auth(self) -> bool {
        matches!(self, Profile::Mtls | Profile::Server)
    }
    pub fn client_auth(self) -> bool {
        matches!(self, Profile::Mtls | Profile::Client)
    }
}

/// Where the worker answers: the node's own reply queue, or the seed's shared queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplyMode {
    #[default]
    PerNode,
    Shared,
}

impl ReplyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyMode::PerNode => "per_node",
            ReplyMode::Shared => "shared",
        }
    }
}

/// The sender's proof of identity, checked against the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityProof {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
}

/// A CSR message body. `version` is absent in the seed's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsrMessage {
    pub instance_id: String,
    pub csr_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Unix seconds when the node built the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_mode: Option<ReplyMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_proof: Option<IdentityProof>,
}

impl CsrMessage {
    /// A seed request (no `version`) is answered in the seed's way: on the shared queue.
    pub fn is_seed_format(&self) -> bool {
        self.version.is_none()
    }
    pub fn reply_mode(&self) -> ReplyMode {
        if self.is_seed_format() {
            ReplyMode::Shared
        } else {
            self.reply_mode.unwrap_or_default()
        }
    }
}

/// A certificate answer; the seed's `retrieve_cert.py` reads the first three fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateMessage {
    pub instance_id: String,
    pub certificate_pem: String,
    pub ca_chain_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// A refusal, sent only where a node of ours reads it (never onto the seed's shared queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionMessage {
    pub instance_id: String,
    pub request_id: String,
    pub reason_code: String,
    pub message: String,
}

/// What a node may find on its reply queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyMessage {
    Certificate(CertificateMessage),
    Rejection(RejectionMessage),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum TaggedReply {
    Certificate(CertificateMessage),
    Rejection(RejectionMessage),
}

impl ReplyMessage {
    /// Parses a reply body; a body without `kind` is the seed's certificate message.
    pub fn from_json(body: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(body)?;
        if value.get("kind").is_none() {
            return serde_json::from_value(value).map(ReplyMessage::Certificate);
        }
        Ok(match serde_json::from_value::<TaggedReply>(value)? {
            TaggedReply::Certificate(c) => ReplyMessage::Certificate(c),
            TaggedReply::Rejection(r) => ReplyMessage::Rejection(r),
        })
    }

    pub fn to_json(&self) -> String {
        let mut value = match self {
            ReplyMessage::Certificate(c) => {
                serde_json::to_value(TaggedReply::Certificate(c.clone()))
            }
            ReplyMessage::Rejection(r) => serde_json::to_value(TaggedReply::Rejection(r.clone())),
        }
        .unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("version".into(), WIRE_VERSION.into());
        }
        value.to_string()
    }

    /// An answer without `version`: what the seed's worker sends (no request id, no kind).
    pub fn is_seed_format(&self) -> bool {
        matches!(self, ReplyMessage::Certificate(c) if c.version.is_none())
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            ReplyMessage::Certificate(c) => c.request_id.as_deref(),
            ReplyMessage::Rejection(r) => Some(&r.request_id),
        }
    }
}

/// The reply queue of an instance: the prefix plus its id (ids are restricted to queue-name
/// characters by the policy), so the worker derives the address from the verified identity.
pub fn reply_queue_name(prefix: &str, instance_id: &str) -> String {
    format!("{prefix}{instance_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_csr_body_parses_and_is_answered_on_the_shared_queue() {
        let body = r#"{"instance_id": "i-1", "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----"}"#;
        let msg: CsrMessage = serde_json::from_str(body).unwrap();
        assert!(msg.is_seed_format());
        assert_eq!(msg.reply_mode(), ReplyMode::Shared);
    }

    #[test]
    fn our_csr_body_round_trips_and_ignores_unknown_fields() {
        let msg = CsrMessage {
            instance_id: "i-1".into(),
            csr_pem: "pem".into(),
            version: Some(WIRE_VERSION),
            request_id: Some("r".into()),
            timestamp: Some(1_700_000_000),
            profile: Some(Profile::Client),
            lifetime_days: None,
            reply_mode: Some(ReplyMode::PerNode),
            identity_proof: Some(IdentityProof {
                kind: "enrollment_secret".into(),
                hmac: Some("ab".into()),
            }),
        };
        let mut value = serde_json::to_value(&msg).unwrap();
        assert_eq!(value["profile"], "client");
        assert_eq!(value["identity_proof"]["type"], "enrollment_secret");
        value["some_future_field"] = serde_json::json!(1);
        let back: CsrMessage = serde_json::from_value(value).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.reply_mode(), ReplyMode::PerNode);
    }

    #[test]
    fn wrong_types_are_refused() {
        assert!(
            serde_json::from_str::<CsrMessage>(r#"{"instance_id": 5, "csr_pem": "x"}"#).is_err()
        );
        assert!(serde_json::from_str::<CsrMessage>(r#"{"instance_id": "i"}"#).is_err());
    }

    #[test]
    fn replies_are_tagged_and_seed_certificates_untagged() {
        let seed = r#"{"instance_id":"i-1","certificate_pem":"c","ca_chain_pem":"ch"}"#;
        assert!(matches!(
            ReplyMessage::from_json(seed).unwrap(),
            ReplyMessage::Certificate(_)
        ));
        let rejection = ReplyMessage::Rejection(RejectionMessage {
            instance_id: "i-1".into(),
            request_id: "r1".into(),
            reason_code: "san_not_allowed".into(),
            message: "m".into(),
        });
        let json = rejection.to_json();
        assert!(
            json.contains(r#""kind":"rejection""#) && json.contains(r#""version":1"#),
            "{json}"
        );
        assert_eq!(ReplyMessage::from_json(&json).unwrap(), rejection);
    }
}
