//! An agent's registration: what it declares ([`Registration`], validated at
//! the edge) and what the coordinator answers ([`RegisterAnswer`]).

use std::collections::BTreeMap;

/// A validated registration request.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    pub version: String,
    pub boot_id: String,
    pub outbox_id: String,
    /// Hex SHA-256 of the certificate used; empty without TLS.
    pub cert_fingerprint: String,
    /// Placement weight (1 when not given).
    pub weight: u32,
}

/// The answer to a registration: the agent's id, its timings, the
/// coordinator's epoch and where its outbox resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterAnswer {
    pub agent_id: String,
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
    /// Fencing epoch of this coordinator's term.
    pub coordinator_epoch: u64,
    /// Highest sequence number of this outbox the coordinator has made durable.
    pub acked_seq: u64,
}
