//! What planning makes: the plan of a parent package (its tasks, what each
//! does on the fleet, the child packages shipped to agents), and two small
//! helpers the planning steps share. A leaf of `prepare/`: the steps above it
//! (`prepare/mod.rs`, `process.rs`) build these.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_package::{
    ChildTask, Engine, ExecTask, ForeachTask, MaxFailures, Package, ParamValues, RetryPolicy,
    content_hash, template_refs,
};

use crate::error::CoordinatorError;

/// A child package as it is shipped to agents.
#[derive(Debug, Clone)]
pub struct ChildPackage {
    pub name: String,
    /// Its path in the bundle (empty for the package of a parent's `exec`).
    pub path: String,
    /// It has `child` or `foreach` tasks: the coordinator runs it as a
    /// sub-execution instead of sending it to an agent (nested fan-out).
    pub fans_out: bool,
    pub hash: String,
    pub content: Arc<[u8]>,
    /// Sent inside StartJob; when false (catalog packages) agents fetch the
    /// content by hash and cache it.
    pub inline: bool,
}

impl ChildPackage {
    pub(super) fn from_text(name: &str, text: &str) -> ChildPackage {
        ChildPackage {
            name: name.to_string(),
            path: String::new(),
            fans_out: false,
            hash: content_hash(text),
            content: Arc::from(text.as_bytes()),
            inline: true,
        }
    }
}

/// What one task of the parent does on the fleet.
#[derive(Debug, Clone)]
pub enum Work {
    /// One child per item of the foreach.
    Foreach {
        fe: ForeachTask,
        child: ChildPackage,
    },
    /// One child package, its parameters rendered when the task starts.
    Child { ct: ChildTask, child: ChildPackage },
    /// An `exec` or `script` task of the parent: one job on an agent, a
    /// one-task package made when the task starts ([`super::process_package`]).
    Process { exec: ExecTask },
    /// Nothing to run: it succeeds when it starts.
    Noop,
}

/// One task of the parent package, ready to run (groups live only in the engine).
#[derive(Debug, Clone)]
pub struct PlannedTask {
    pub name: String,
    pub work: Work,
    /// Items known at start (a foreach over a range, list or parameter that
    /// reads no task output); one empty item for a single-child task; empty
    /// when they are known only once earlier tasks have ended (`dynamic`).
    pub items: Vec<String>,
    /// Items come from earlier tasks' outputs or rows, when the task starts.
    pub dynamic: bool,
    pub timeout_s: Option<u64>,
    pub retry: RetryPolicy,
    /// Children of this task in flight at once.
    pub parallelism: u32,
    /// Agent labels every child needs.
    pub require: BTreeMap<String, String>,
    /// Agent slots each child occupies, as the package says (`slots = N`);
    /// 0: as the run says (`--slots-per-child`).
    pub slots: u32,
    pub max_failures: MaxFailures,
}

/// A parent package bound to its parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    pub package: String,
    pub params: ParamValues,
    /// The parent package, for the engine that decides which task runs when.
    pub parent: Arc<Package>,
    pub tasks: Vec<PlannedTask>,
    /// The parent's engine, built with the plan (off the scheduler's loop:
    /// it orders and decides every task); taken by the scheduler.
    pub engine: Option<Box<Engine>>,
}

impl Plan {
    /// Children go to agents by hash only (the catalog's packages).
    pub fn fetch_by_hash(&mut self) {
        for t in &mut self.tasks {
            match &mut t.work {
                Work::Foreach { child, .. } | Work::Child { child, .. } => child.inline = false,
                Work::Process { .. } | Work::Noop => {}
            }
        }
    }

    /// Index of a planned task by name.
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }
}

pub(super) fn invalid(msg: String) -> CoordinatorError {
    CoordinatorError::InvalidRequest(msg)
}

/// Whether `template` reads an earlier task's outputs or state.
pub(super) fn reads_tasks(template: &str) -> bool {
    template_refs(template)
        .map(|refs| refs.iter().any(|r| r.task().is_some()))
        .unwrap_or(false)
}
