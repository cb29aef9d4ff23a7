//! The control-flow engine: a pure state machine over one package's tasks.
//!
//! Both drivers use it: the coordinator for parent packages, agents for child
//! packages. The driver asks [`Engine::ready`] which tasks may start, runs
//! them, and reports [`Engine::started`] and [`Engine::finished`]; the engine
//! decides everything else itself — precedence constraints (`after` with
//! `on`), `when` expressions, skips, groups — and says when the package is
//! done ([`Engine::outcome`]). No IO, no clock: a retry's delay is computed
//! ([`Engine::retry_delay`]) and waited for by the driver.
//!
//! Rules, in short (docs/packages.md has the long form):
//! - a task is *ready* when every constraint is met (its predecessor ended as
//!   `on` says) and its `when` is true; a constraint that can no longer be met
//!   (the predecessor ended otherwise, was skipped or cancelled) skips it, as
//!   does a false `when`; a `when` that cannot be evaluated fails it;
//! - a group starts (inside the engine) when its constraints are met; its
//!   members are then scheduled like any task; it succeeds when every member
//!   ended without a failure that counts (see below), and is skipped with its
//!   members when it does not run;
//! - a failure counts (fails the group or the package) unless the task has
//!   `continue_on_failure`; skipped tasks never count;
//! - [`Engine::cancel`] cancels every task not started; running tasks end
//!   when the driver reports them.
//!
//! [`Engine::snapshot`] / [`Engine::restore`] persist the state as plain data;
//! [`Engine::resume`] makes failed, cancelled and skipped tasks pending again
//! and keeps the succeeded ones, for "resume from failure".

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::PackageError;
use crate::interpolate::interpolate_in;
use crate::model::{On, Package, TaskKind};
use crate::param_values::ParamValues;
use crate::reference::{Outputs, Scope};

mod snapshot;
mod state;
#[cfg(test)]
mod tests;

pub use snapshot::{EngineSnapshot, TaskSnapshot};
use state::TaskRun;
pub use state::{EngineError, PackageOutcome, TaskOutcome, TaskState};

/// The state machine of one package run.
///
/// Its cost is near-linear in the tasks over a whole run: a task is looked at
/// again only when a task it waits for changes state (a worklist), never by
/// sweeping every task after each report, and every query a driver makes
/// per report (`ready`, `running`, `outcome`, [`Engine::state_names`]) reads
/// an index kept up to date instead of scanning the tasks.
#[derive(Debug, Clone)]
pub struct Engine {
    package: Package,
    params: ParamValues,
    /// Task names in [`Package::task_order`].
    order: Vec<String>,
    /// Position of each task in `order`.
    pos: BTreeMap<String, usize>,
    /// Group of each member.
    group_of: BTreeMap<String, String>,
    /// By position: the tasks to look at again when this one changes state
    /// (tasks after it, its members if it is a group, its group).
    dependents: Vec<Vec<usize>>,
    runs: BTreeMap<String, TaskRun>,
    outputs: Outputs,
    /// Positions of pending tasks whose constraints and `when` passed, not yet started.
    ready: BTreeSet<usize>,
    /// Positions of running tasks that are not groups.
    running: BTreeSet<usize>,
    /// Tasks not in a terminal state.
    unfinished: usize,
    /// Every task's state name (`${tasks.T.state}`), kept in step with `runs`.
    state_names: BTreeMap<String, String>,
    /// Positions of tasks to decide again (see [`Engine::settle`]).
    dirty: BTreeSet<usize>,
    /// Tasks looked at so far: a deterministic measure of the work done.
    steps: u64,
    cancelled: bool,
}

impl Engine {
    /// An engine with every task pending. `package` must be validated (as
    /// [`Package::parse`] and the builder do); `params` bound for it.
    pub fn new(package: &Package, params: ParamValues) -> Engine {
        let order: Vec<String> = package
            .task_order()
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let mut group_of = BTreeMap::new();
        for t in package.tasks.values() {
            if let TaskKind::Group(g) = &t.kind {
                for m in &g.members {
                    group_of.insert(m.clone(), t.name.clone());
                }
            }
        }
        let pos: BTreeMap<String, usize> = order
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); order.len()];
        for (i, name) in order.iter().enumerate() {
            let task = &package.tasks[name];
            for a in &task.after {
                if let Some(&ai) = pos.get(&a.task) {
                    dependents[ai].push(i);
                }
            }
            if let Some(g) = group_of.get(name).and_then(|g| pos.get(g)) {
                dependents[*g].push(i);
                dependents[i].push(*g);
            }
        }
        let runs = order.iter().map(|n| (n.clone(), TaskRun::new())).collect();
        let mut e = Engine {
            package: package.clone(),
            params,
            order,
            pos,
            group_of,
            dependents,
            runs,
            outputs: Outputs::new(),
            ready: BTreeSet::new(),
            running: BTreeSet::new(),
            unfinished: 0,
            state_names: BTreeMap::new(),
            dirty: BTreeSet::new(),
            steps: 0,
            cancelled: false,
        };
        e.rebuild();
        e.settle();
        e
    }

    /// Tasks looked at so far (each decision or check of one task counts
    /// one): a deterministic measure of the engine's work, which its cost
    /// tests count instead of timing it.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Every task's state name, for `${tasks.T.state}`, without a copy
    /// ([`Engine::states`] makes one).
    pub fn state_names(&self) -> &BTreeMap<String, String> {
        &self.state_names
    }

    /// Recomputes the indexes from `runs` after a change of many tasks at
    /// once (restore, resume) and marks every task to be decided again.
    pub(crate) fn rebuild(&mut self) {
        self.ready.clear();
        self.running.clear();
        self.unfinished = 0;
        self.state_names.clear();
        for (i, name) in self.order.iter().enumerate() {
            let state = self.runs[name].state;
            if !state.is_terminal() {
                self.unfinished += 1;
            }
            if state == TaskState::Running && !self.is_group(i) {
                self.running.insert(i);
            }
            self.state_names
                .insert(name.clone(), state.as_str().to_string());
        }
        self.dirty = (0..self.order.len()).collect();
    }

    fn is_group(&self, i: usize) -> bool {
        matches!(self.package.tasks[&self.order[i]].kind, TaskKind::Group(_))
    }

    /// The one place a task changes state: keeps the indexes in step and
    /// marks the tasks that depend on it to be looked at again.
    fn set_state(&mut self, i: usize, new: TaskState) {
        let name = &self.order[i];
        let Some(run) = self.runs.get_mut(name) else {
            return;
        };
        let old = run.state;
        if old == new {
            return;
        }
        run.state = new;
        if !old.is_terminal() && new.is_terminal() {
            self.unfinished -= 1;
        } else if old.is_terminal() && !new.is_terminal() {
            self.unfinished += 1;
        }
        if let Some(s) = self.state_names.get_mut(name) {
            *s = new.as_str().to_string();
        }
        let group = self.is_group(i);
        if new == TaskState::Running && !group {
            self.running.insert(i);
        } else {
            self.running.remove(&i);
        }
        if new != TaskState::Pending {
            self.ready.remove(&i);
        }
        if new.is_terminal() || group {
            self.dirty.extend(self.dependents[i].iter().copied());
        }
        if group && new == TaskState::Running {
            // A group with no member left to wait for ends at once.
            self.dirty.insert(i);
        }
    }

    fn index_of(&self, task: &str) -> Result<usize, EngineError> {
        self.pos.get(task).copied().ok_or_else(|| unknown(task))
    }

    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn params(&self) -> &ParamValues {
        &self.params
    }

    /// Tasks that may start now, in task order: independent tasks are ready
    /// together. Groups never appear (the engine runs them); a task stays
    /// ready until [`Engine::started`].
    pub fn ready(&mut self) -> Vec<String> {
        self.settle();
        self.ready.iter().map(|&i| self.order[i].clone()).collect()
    }

    /// The driver started `task`: its first attempt (it was ready), or a
    /// further attempt of a running task after a retry delay.
    pub fn started(&mut self, task: &str) -> Result<(), EngineError> {
        let state = self.state(task)?;
        let i = self.index_of(task)?;
        let is_group = self.is_group(i);
        match state {
            TaskState::Pending if self.ready.contains(&i) && !is_group => {
                self.set_state(i, TaskState::Running);
                if let Some(run) = self.runs.get_mut(task) {
                    run.attempts = 1;
                }
                Ok(())
            }
            TaskState::Running if !is_group => {
                if let Some(run) = self.runs.get_mut(task) {
                    run.attempts = run.attempts.saturating_add(1);
                }
                Ok(())
            }
            _ => Err(transition(task, "start", state)),
        }
    }

    /// The driver reports the end of a running task (after its last attempt)
    /// with the outputs it wrote (kept for `${tasks.T.outputs.K}`).
    pub fn finished(
        &mut self,
        task: &str,
        outcome: TaskOutcome,
        outputs: BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let state = self.state(task)?;
        if state != TaskState::Running
            || matches!(self.package.tasks[task].kind, TaskKind::Group(_))
        {
            return Err(transition(task, "finish", state));
        }
        let i = self.index_of(task)?;
        self.set_state(
            i,
            match outcome {
                TaskOutcome::Succeeded => TaskState::Succeeded,
                TaskOutcome::Failed => TaskState::Failed,
                TaskOutcome::Cancelled => TaskState::Cancelled,
            },
        );
        self.outputs.insert(task.to_string(), outputs);
        self.settle();
        Ok(())
    }

    /// Like [`Engine::finished`] with a reason recorded for a failure.
    pub fn failed(&mut self, task: &str, reason: impl Into<String>) -> Result<(), EngineError> {
        self.finished(task, TaskOutcome::Failed, BTreeMap::new())?;
        if let Some(run) = self.runs.get_mut(task) {
            run.reason = Some(reason.into());
        }
        Ok(())
    }

    /// The delay before the next attempt of `task` after attempt `attempt`
    /// failed, per its retry policy; `None`: no attempt left, report it
    /// failed. Deterministic for a given `seed`.
    pub fn retry_delay(&self, task: &str, attempt: u32, seed: u64) -> Option<Duration> {
        self.package
            .tasks
            .get(task)?
            .retry_policy()
            .delay_after(attempt, seed)
    }

    /// Cancels the run: every task not started is cancelled; returns the
    /// tasks still running, which the driver cancels and then reports.
    pub fn cancel(&mut self) -> Vec<String> {
        self.cancelled = true;
        self.ready.clear();
        for i in 0..self.order.len() {
            if self.runs[&self.order[i]].state == TaskState::Pending {
                self.set_state(i, TaskState::Cancelled);
                if let Some(run) = self.runs.get_mut(&self.order[i]) {
                    run.reason = Some("the execution was cancelled".into());
                }
            }
        }
        self.settle();
        self.running()
    }

    /// Tasks running now (not groups), in task order.
    pub fn running(&self) -> Vec<String> {
        self.running
            .iter()
            .map(|&i| self.order[i].clone())
            .collect()
    }

    /// The package's outcome once every task ended; `None` before.
    pub fn outcome(&self) -> Option<PackageOutcome> {
        if self.unfinished > 0 {
            return None;
        }
        if self.cancelled {
            return Some(PackageOutcome::Cancelled);
        }
        let failed = self
            .order
            .iter()
            .any(|n| !self.group_of.contains_key(n) && self.counts_as_failure(n));
        Some(if failed {
            PackageOutcome::Failed
        } else {
            PackageOutcome::Succeeded
        })
    }

    /// The state of a task.
    pub fn state(&self, task: &str) -> Result<TaskState, EngineError> {
        self.runs
            .get(task)
            .map(|r| r.state)
            .ok_or_else(|| unknown(task))
    }

    /// Attempts started so far (0 before the first).
    pub fn attempts(&self, task: &str) -> u32 {
        self.runs.get(task).map_or(0, |r| r.attempts)
    }

    /// Why a task was skipped, failed by the engine or cancelled, if known.
    pub fn reason(&self, task: &str) -> Option<&str> {
        self.runs.get(task).and_then(|r| r.reason.as_deref())
    }

    /// Outputs of the tasks that ended.
    pub fn outputs(&self) -> &Outputs {
        &self.outputs
    }

    /// Every task's state name, for `${tasks.T.state}`.
    pub fn states(&self) -> BTreeMap<String, String> {
        self.runs
            .iter()
            .map(|(n, r)| (n.clone(), r.state.as_str().to_string()))
            .collect()
    }

    /// Expands a template of a task against the parameters, the outputs so
    /// far and `item`.
    pub fn render(&self, template: &str, item: Option<&str>) -> Result<String, PackageError> {
        let scope = Scope {
            params: &self.params,
            item,
            outputs: &self.outputs,
            states: &self.state_names,
        };
        interpolate_in(template, &scope)
    }

    /// Makes failed, cancelled and skipped tasks (and groups) pending again
    /// and keeps succeeded ones with their outputs: a resumed run does only
    /// what did not succeed. Refused while a task runs.
    pub fn resume(&mut self) -> Result<(), EngineError> {
        if let Some(t) = self.running().first() {
            return Err(transition(t, "resume", TaskState::Running));
        }
        let mut reset: Vec<String> = Vec::new();
        for (name, run) in &mut self.runs {
            if matches!(
                run.state,
                TaskState::Failed | TaskState::Cancelled | TaskState::Skipped
            ) {
                *run = TaskRun::new();
                self.outputs.remove(name);
                reset.push(name.clone());
            }
        }
        // A group that ran and holds a reset member runs again (its own
        // constraints were met); one that never ran is pending like the rest.
        for name in reset {
            let mut member = name;
            while let Some(g) = self.group_of.get(&member).cloned() {
                let run = self.runs.get_mut(&g).ok_or_else(|| unknown(&g))?;
                if run.state.is_terminal() {
                    run.state = if run.attempts > 0 {
                        TaskState::Running
                    } else {
                        TaskState::Pending
                    };
                    run.reason = None;
                }
                member = g;
            }
        }
        self.cancelled = false;
        self.rebuild();
        self.settle();
        Ok(())
    }

    /// Whether a task's end fails its group or the package.
    fn counts_as_failure(&self, task: &str) -> bool {
        let state = self.runs[task].state;
        let cof = self.package.tasks[task].continue_on_failure;
        matches!(state, TaskState::Failed | TaskState::Cancelled) && !cof
    }

    fn skip(&mut self, i: usize, reason: String) {
        self.set_state(i, TaskState::Skipped);
        if let Some(run) = self.runs.get_mut(&self.order[i]) {
            run.reason = Some(reason);
        }
    }

    /// Applies every decision that follows from the states: skips, `when`,
    /// groups starting and ending. Only tasks marked dirty are looked at —
    /// every task at first, then those a change of state concerns — lowest
    /// position first, until none is left. Each task is decided once and
    /// a group ended once, so a whole run costs about tasks + constraints.
    fn settle(&mut self) {
        while let Some(i) = self.dirty.pop_first() {
            self.steps += 1;
            match self.runs[&self.order[i]].state {
                TaskState::Pending if !self.ready.contains(&i) => {
                    self.decide(i);
                }
                TaskState::Running => {
                    self.end_group(i);
                }
                _ => {}
            }
        }
    }

    /// Decides a pending task if its constraints allow; true if it changed.
    fn decide(&mut self, i: usize) -> bool {
        let name = self.order[i].clone();
        let name = name.as_str();
        if self.cancelled {
            return false;
        }
        if let Some(g) = self.group_of.get(name) {
            match self.runs[g].state {
                TaskState::Running => {}
                TaskState::Pending => return false,
                other => {
                    let why = format!("its group '{g}' did not run ({})", other.as_str());
                    self.skip(i, why);
                    return true;
                }
            }
        }
        let task = &self.package.tasks[name];
        let mut waiting = false;
        for a in &task.after {
            let st = self.runs[&a.task].state;
            if !st.is_terminal() {
                waiting = true;
                continue;
            }
            let met = match a.on {
                On::Success => st == TaskState::Succeeded,
                On::Failure => st == TaskState::Failed,
                On::Completion => matches!(st, TaskState::Succeeded | TaskState::Failed),
            };
            if !met {
                let why = format!(
                    "runs on {} of '{}', which {}",
                    a.on.as_str(),
                    a.task,
                    st.as_str()
                );
                self.skip(i, why);
                return true;
            }
        }
        if waiting {
            return false;
        }
        if let Some(cond) = &task.when {
            let scope = Scope {
                params: &self.params,
                item: None,
                outputs: &self.outputs,
                states: &self.state_names,
            };
            match cond.eval(&scope) {
                Ok(true) => {}
                Ok(false) => {
                    let why = format!("`when` is false: {}", cond.source);
                    self.skip(i, why);
                    return true;
                }
                Err(e) => {
                    let why = format!("`when` {:?}: {e}", cond.source);
                    self.set_state(i, TaskState::Failed);
                    if let Some(run) = self.runs.get_mut(name) {
                        run.reason = Some(why);
                    }
                    return true;
                }
            }
        }
        if matches!(task.kind, TaskKind::Group(_)) {
            self.set_state(i, TaskState::Running);
            if let Some(run) = self.runs.get_mut(name) {
                run.attempts = 1;
            }
        } else {
            self.ready.insert(i);
        }
        true
    }

    /// Ends a running group whose members all ended; true if it did.
    fn end_group(&mut self, i: usize) -> bool {
        let name = self.order[i].clone();
        let name = name.as_str();
        let TaskKind::Group(g) = &self.package.tasks[name].kind else {
            return false;
        };
        if g.members.iter().any(|m| !self.runs[m].state.is_terminal()) {
            return false;
        }
        let failed = g
            .members
            .iter()
            .find(|m| self.counts_as_failure(m))
            .cloned();
        let cancelled = g
            .members
            .iter()
            .any(|m| self.runs[m].state == TaskState::Cancelled);
        let (state, reason) = match failed {
            Some(_) if self.cancelled && cancelled => (TaskState::Cancelled, None),
            Some(m) => (TaskState::Failed, Some(format!("member '{m}' failed"))),
            None => (TaskState::Succeeded, None),
        };
        self.set_state(i, state);
        if let Some(run) = self.runs.get_mut(name) {
            run.reason = reason;
        }
        true
    }
}

fn unknown(task: &str) -> EngineError {
    EngineError::UnknownTask(task.to_string())
}

fn transition(task: &str, action: &'static str, state: TaskState) -> EngineError {
    EngineError::Transition {
        task: task.to_string(),
        action,
        state: state.as_str(),
    }
}

/// Checkpoints: the run's state as plain data ([`EngineSnapshot`]) and back.
impl Engine {
    /// The run's state as plain data.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            package: self.package.name.clone(),
            cancelled: self.cancelled,
            tasks: self
                .runs
                .iter()
                .map(|(name, run)| {
                    let snap = TaskSnapshot {
                        state: run.state,
                        attempts: run.attempts,
                        reason: run.reason.clone(),
                        outputs: self.outputs.get(name).cloned().unwrap_or_default(),
                    };
                    (name.clone(), snap)
                })
                .collect(),
        }
    }

    /// An engine in the state of `snapshot`, which must name exactly the
    /// package's tasks. Decisions that follow from it are applied at once
    /// (they are deterministic, so nothing changes for a consistent snapshot).
    pub fn restore(
        package: &Package,
        params: ParamValues,
        snapshot: &EngineSnapshot,
    ) -> Result<Engine, EngineError> {
        if snapshot.package != package.name {
            return Err(EngineError::Snapshot(format!(
                "it is of package '{}', not '{}'",
                snapshot.package, package.name
            )));
        }
        let mut engine = Engine::new(package, params);
        if let Some(extra) = snapshot
            .tasks
            .keys()
            .find(|t| !package.tasks.contains_key(*t))
        {
            return Err(EngineError::Snapshot(format!("unknown task '{extra}'")));
        }
        if let Some(missing) = package
            .tasks
            .keys()
            .find(|t| !snapshot.tasks.contains_key(*t))
        {
            return Err(EngineError::Snapshot(format!(
                "task '{missing}' is missing"
            )));
        }
        engine.outputs.clear();
        for (name, snap) in &snapshot.tasks {
            engine.runs.insert(
                name.clone(),
                TaskRun {
                    state: snap.state,
                    attempts: snap.attempts,
                    reason: snap.reason.clone(),
                },
            );
            if snap.state.is_terminal() {
                engine.outputs.insert(name.clone(), snap.outputs.clone());
            }
        }
        engine.cancelled = snapshot.cancelled;
        engine.rebuild();
        engine.settle();
        Ok(engine)
    }
}
