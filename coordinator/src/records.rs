//! What the coordinator persists: the records' types. Under which keys they
//! live is [`crate::keys`]' table (its functions are re-exported here for
//! the records' readers and writers).
//!
//! Records are JSON: small, inspectable with any redb or etcd tool, and
//! tolerant of added fields (`#[serde(default)]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

pub use crate::keys::{
    EPOCH_KEY, agent_key, child_key, children_prefix, execution_key, issued_prefix, revoked_key,
    seq_key,
};

/// An agent's registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    #[serde(default)]
    pub version: String,
    pub boot_id: String,
    /// What an operator set: kept across re-registrations and restarts.
    #[serde(default)]
    pub admin: AdminState,
    /// SHA-256 (hex) of the certificate the agent registered with; empty without TLS.
    #[serde(default)]
    pub cert_fingerprint: String,
    /// Relative share under least-loaded placement (`baton agent --weight`); 0 means 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An operator's say over an agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes new work.
    #[default]
    Active,
    /// Takes no new work; running work goes on.
    Cordoned,
    /// Takes no new work; shown `drained` once nothing runs there.
    Draining,
}

/// Dedup state of an agent's completion stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRecord {
    pub outbox_id: String,
    /// Highest sequence number applied (and so acknowledged).
    pub applied_seq: u64,
}

/// State of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl ExecutionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Running => "running",
            ExecutionState::Succeeded => "succeeded",
            ExecutionState::Failed => "failed",
            ExecutionState::Cancelled => "cancelled",
        }
    }
    pub fn is_terminal(self) -> bool {
        self != ExecutionState::Running
    }
}

/// One execution of a parent package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub id: String,
    pub package: String,
    /// Name of the root file of the bundle.
    pub root: String,
    /// The texts of the bundle's files, as records written before bundles
    /// were stored by reference embed them; empty in newer records, whose
    /// texts are blobs ([`Self::file_hashes`], loaded into [`Self::texts`]
    /// by [`crate::bundles::load`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// The parent package and every child package it references, as
    /// started: path → content hash of the text (blob `b/<hash>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub file_hashes: BTreeMap<String, String>,
    /// Hash of the whole bundle (`crate::catalog::blobs::bundle_hash`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bundle_hash: String,
    /// In memory only: the texts of [`Self::file_hashes`], shared by the
    /// sub-executions of a nested fan-out.
    #[serde(skip)]
    pub texts: Option<std::sync::Arc<BTreeMap<String, String>>>,
    /// Parameter overrides as given (defaults are re-derived from the package);
    /// values of sensitive parameters are sealed (`sealed:v1:…`, [`crate::secrets`]).
    pub params: BTreeMap<String, String>,
    pub state: ExecutionState,
    /// Index, in task order, of the task that runs now.
    #[serde(default)]
    pub current_task: usize,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub finished_unix_ms: u64,
    #[serde(default)]
    pub reason: String,
    /// Reports that named an older attempt or another agent, ignored.
    #[serde(default)]
    pub stale_events: u64,
    /// Set by a cancel request; the execution ends `cancelled` once no child runs.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Child counts, written when the execution ends (listings read only this record).
    #[serde(default)]
    pub final_counts: Option<FinalCounts>,
    /// Catalog folder (permissions are checked on it); empty in records
    /// written before folders existed, which means "/".
    #[serde(default)]
    pub folder: String,
    /// The catalog package version it was started from; `None` for a bundle
    /// sent by the client.
    #[serde(default)]
    pub catalog: Option<CatalogRef>,
    /// How many times `baton exec resume` re-ran it.
    #[serde(default)]
    pub resumes: u32,
    /// The state of every task of the parent (`succeeded`, `skipped`, …),
    /// written when the execution ends; while it runs they are the engine's.
    #[serde(default)]
    pub task_states: BTreeMap<String, String>,
    /// How its children are placed and how many run at once (`baton run
    /// --placement/--require/--pin/--slots-per-child/--max-in-flight`).
    #[serde(default, skip_serializing_if = "is_default_policy")]
    pub placement: crate::placement::PlacementPolicy,
    /// Set on a sub-execution (nested fan-out): the child it runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// Rows foreaches that made no child (no rows, or the rows could not be
    /// read or expanded), by task: a replay after a restart decides the same
    /// way instead of reading rows again (children, when there are some, are
    /// the record of the others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rows_outcomes: BTreeMap<String, RowsOutcome>,
    /// Its place in a trace (when the coordinator exports traces): the
    /// execution span's context, from which every task and child attempt
    /// span id is derived ([`crate::trace_context`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace_context::ExecTrace>,
}

/// How a rows foreach that made no child ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowsOutcome {
    /// There were no rows: the foreach succeeded with no child.
    Empty,
    /// The rows could not be read or expanded: the foreach failed, for this reason.
    Failed(String),
}

/// The child of another execution that a sub-execution runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    pub execution_id: String,
    pub task: String,
    pub index: u32,
    pub attempt: u32,
    /// 1 for a child of a top-level execution, 2 below that, …
    pub depth: u32,
}

fn is_default_policy(p: &crate::placement::PlacementPolicy) -> bool {
    *p == crate::placement::PlacementPolicy::default()
}

/// Which catalog package version an execution runs (it keeps its own
/// reference to the bundle's blobs, so the package may change or go away
/// meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRef {
    /// The package's id: stable across renames and moves.
    pub package_id: String,
    /// Its catalog path when the execution started.
    pub path: String,
    pub version: u32,
    /// Hash of the whole bundle of that version.
    pub hash: String,
}

impl ExecutionRecord {
    /// The texts of the bundle: loaded from the blobs, or embedded in a
    /// record written before bundles were stored by reference.
    pub fn bundle_files(&self) -> &BTreeMap<String, String> {
        self.texts.as_deref().unwrap_or(&self.files)
    }

    /// The folder, "/" for records without one.
    pub fn folder(&self) -> &str {
        if self.folder.is_empty() {
            "/"
        } else {
            &self.folder
        }
    }
}

/// Child counts of an ended execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalCounts {
    pub total: u64,
    pub succeeded: u64,
    /// Failed, timed out or lost; records written before `cancelled` was
    /// kept apart count cancelled children here too.
    pub failed: u64,
    #[serde(default)]
    pub cancelled: u64,
    pub lost_attempts: u64,
}

/// Phase of a child job (the coordinator's record of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Dispatching,
    Accepted,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Lost,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Dispatching => "dispatching",
            Phase::Accepted => "accepted",
            Phase::Running => "running",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
            Phase::TimedOut => "timed_out",
            Phase::Lost => "lost",
        }
    }
    /// Terminal phases are recorded exactly once and never left.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::Cancelled | Phase::TimedOut | Phase::Lost
        )
    }
    /// Phases in which the child occupies a slot on its agent.
    pub fn is_on_agent(self) -> bool {
        matches!(self, Phase::Dispatching | Phase::Accepted | Phase::Running)
    }
}

/// One child job: intent (attempt N on agent X) and what is known of it.
/// Fields at their default are left out of the stored JSON (a pending child
/// is about 70 bytes, not 260: a million of them are written at once).
/// The task, item and agent names are [`SmolStr`]s: up to 23 bytes they are
/// held inline, so a child in memory allocates nothing for them (a million
/// children in memory made four allocations each for these names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub task: SmolStr,
    pub index: u32,
    pub item: SmolStr,
    pub phase: Phase,
    /// Current attempt, from 1. Reports for any other attempt are stale.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<SmolStr>,
    /// The agent of each attempt, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_agents: Vec<SmolStr>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub started_unix_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub finished_unix_ms: u64,
    /// Process id (and group) of the current attempt, as the agent reported it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pid: u32,
    /// This child alone was asked to stop (`CancelChild`): it ends `cancelled`,
    /// is not retried, and is never started again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cancel_requested: bool,
    /// Rows the succeeded attempt kept (`$BATON_ROWS`), as its agent reported;
    /// `None` in records written before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
