//! A node's certificate status, from what its install layout holds: what the node metrics and
//! the fleet report show. No I/O: the caller reads the layout.

use time::OffsetDateTime;

use crate::certs::{parse_certificate, CertificateInfo};
use crate::layout::{NodeState, PendingRequest, RecordedRefusal};
use crate::renewal::{renewal_due, RenewBefore};

#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// The installed certificate, when one is installed and readable.
    pub certificate: Option<CertificateInfo>,
    /// When the node renews it; known once a submit has recorded its `renew_before`.
    pub renewal_due: Option<OffsetDateTime>,
    pub pending: Option<PendingRequest>,
    /// As [`NodeState::last_result`].
    pub last_result: Option<String>,
    pub last_result_at: Option<i64>,
    pub last_refusal: Option<RecordedRefusal>,
}

impl NodeStatus {
    /// `installed_cert_pem` is `current/cert.pem` of the layout.
    pub fn new(
        instance_id: &str,
        installed_cert_pem: Option<&str>,
        pending: Option<PendingRequest>,
        state: NodeState,
    ) -> NodeStatus {
        let certificate =
            installed_cert_pem.and_then(|pem| parse_certificate(pem, "installed certificate").ok());
        let renew_before = state
            .renew_before
            .as_deref()
            .and_then(|text| RenewBefore::parse(text).ok());
        let renewal_due = match (&certificate, renew_before) {
            // Whole seconds, as every other time of the report and the metrics.
            (Some(cert), Some(renew_before)) => renewal_due(renew_before, instance_id, cert)
                .replace_nanosecond(0)
                .ok(),
            _ => None,
        };
        NodeStatus {
            certificate,
            renewal_due,
            pending,
            last_result: state.last_result,
            last_result_at: state.last_result_at,
            last_refusal: state.last_refusal,
        }
    }

    /// The reason code the last result carries: the refusal's, when the last result is one.
    pub fn last_reason_code(&self) -> Option<&str> {
        match (self.last_result.as_deref(), &self.last_refusal) {
            (Some("refused"), Some(refusal)) => Some(&refusal.reason_code),
            _ => None,
        }
    }

    /// What `mtls_cert_info` returns and the fleet report shows, at `now`: the certificate
    /// (fields named as community.crypto's x509_certificate_info names them), the request
    /// waiting for one, the last result and the CA's last refusal. Null where there is none.
    pub fn facts(&self, now: OffsetDateTime) -> serde_json::Value {
        use serde_json::{json, Value};
        let at = |unix: i64| {
            OffsetDateTime::from_unix_timestamp(unix)
                .map(crate::rfc3339)
                .map_or(Value::Null, Value::from)
        };
        let certificate = self.certificate.as_ref().map_or(Value::Null, |cert| {
            let left = (cert.not_after - now).whole_seconds();
            let mut fields = cert.diff_fields();
            let extra = json!({
                "common_name": cert.common_name,
                "not_before": crate::rfc3339(cert.not_before),
                "expired": left <= 0,
                "seconds_left": left.max(0),
                "days_left": left.max(0) / 86_400,
                "renewal_due": self.renewal_due.map(crate::rfc3339),
                "renewal_overdue": self.renewal_overdue(now),
                "public_key_type": crate::csr::public_key_type(&cert.spki_der),
                "fingerprint_sha256": cert.sha256,
            });
            if let (Some(fields), Value::Object(extra)) = (fields.as_object_mut(), extra) {
                fields.extend(extra);
            }
            fields
        });
        let pending = self.pending.as_ref().map_or(Value::Null, |p| {
            json!({
                "request_id": p.request_id,
                "subject_alt_name": p.names,
                "certificate_profile": p.profile.as_str(),
                "submitted_at": at(p.submitted_at),
                "age_seconds": (now.unix_timestamp() - p.submitted_at).max(0),
            })
        });
        let last_refusal = self.last_refusal.as_ref().map_or(Value::Null, |r| {
            json!({
                "request_id": r.request_id,
                "reason_code": r.reason_code,
                "message": r.message,
                "at": at(r.at),
            })
        });
        json!({
            "certificate": certificate,
            "pending_request": pending,
            "last_result": self.last_result,
            "last_result_at": self.last_result_at.map_or(Value::Null, at),
            "last_refusal": last_refusal,
        })
    }

    /// Whether the installed certificate is past its renewal time at `now`.
    pub fn renewal_overdue(&self, now: OffsetDateTime) -> bool {
        self.renewal_due.is_some_and(|due| now >= due)
    }
}
