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
            (Some(cert), Some(renew_before)) => Some(renewal_due(renew_before, instance_id, cert)),
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

    /// Whether the installed certificate is past its renewal time at `now`.
    pub fn renewal_overdue(&self, now: OffsetDateTime) -> bool {
        self.renewal_due.is_some_and(|due| now >= due)
    }
}
