//! Who may do what: the roles a client certificate maps to, and the one
//! place where a caller without the role a call needs is refused (and the
//! refusal recorded).
//!
//! A client's identity comes only from its certificate; the
//! configuration maps it to one role and, for a platform, the purposes it
//! may use. Without TLS (`--insecure-plaintext-development-only`) every
//! caller is its peer address with every role: for development on one
//! machine, never for real data.

use std::collections::BTreeSet;

use tonic::Status;
use tracing::warn;

use crate::{
    audit::{AuditLog, Entry, Kind},
    verify::Caller,
};

/// What a client is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A social assistance platform: verifies households, reads its own
    /// reports, registers consent, enrols households.
    Platform,
    /// An auditor: reads the access log, not reports.
    Auditor,
    /// An administrator: manages configuration and consent, not cases.
    Admin,
}

impl Role {
    /// The role as configuration and the audit log write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Platform => "platform",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roles of a caller: one for a certificate identity, all three for
/// the plaintext development mode and the broker's own work.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roles(BTreeSet<Role>);

impl Roles {
    /// Every role.
    pub fn all() -> Self {
        Self([Role::Platform, Role::Auditor, Role::Admin].into())
    }

    /// Exactly `role`.
    pub fn one(role: Role) -> Self {
        Self([role].into())
    }

    /// Whether `role` is among them.
    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    /// The roles, comma-separated, as the audit log writes them.
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Refuses `caller` unless it has `role`: `PERMISSION_DENIED` naming the
/// call and the role it needs, recorded in the audit log first (when the
/// record cannot be written the answer is `UNAVAILABLE`; nothing else
/// happens either way).
///
/// # Errors
/// The status to return.
pub async fn require(
    audit: &AuditLog,
    caller: &Caller,
    role: Role,
    call: &str,
) -> Result<(), Status> {
    if caller.roles.has(role) {
        return Ok(());
    }
    let message = format!(
        "{call} needs the role {role}; client {} has {}",
        caller.identity,
        caller.roles.names()
    );
    deny(audit, caller, "permission_denied", &message).await;
    Err(Status::permission_denied(message))
}

/// Records a refusal of `caller` (kind `denied`, `outcome`, `detail`). A
/// refusal that cannot be recorded is logged; the request is refused all
/// the same.
pub async fn deny(audit: &AuditLog, caller: &Caller, outcome: &str, detail: &str) {
    let mut entry = Entry::new(Kind::Denied);
    entry.request_id = uuid::Uuid::new_v4().to_string();
    entry.client = caller.identity.clone();
    entry.outcome = outcome.into();
    entry.detail = detail.chars().take(300).collect();
    if let Err(e) = audit.record(entry).await {
        warn!(error = %e, outcome, "refusal not recorded");
    }
}
