//! A checkpoint of an engine as plain data (strings, enums, maps), so that
//! a driver can persist it (JSON, its store) and restore the run later
//! (`Engine::snapshot` and `Engine::restore` make and read it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::TaskState;

/// One task in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    pub state: TaskState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

/// The state of a run: every task's state, attempts and outputs. Parameters
/// are not in it (they may be sensitive): the driver keeps them and binds
/// them again on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// The package's name, checked on restore.
    pub package: String,
    pub cancelled: bool,
    pub tasks: BTreeMap<String, TaskSnapshot>,
}
