//! The control flow of a parent package: the package engine
//! ([`baton_package::Engine`]) decides which task runs when — precedence
//! constraints, `when` expressions, skips, groups — and this module drives it.
//!
//! A task *starts* when the engine says it is ready: its children are created
//! (`pending`, attempt 1; one per foreach item, one for a `child`, `exec` or
//! `script` task, none for `noop`) and the pump dispatches them. A task *ends*
//! when its last child is terminal: it succeeded if no child failed (a foreach
//! tolerates up to its `max_failures`), and its outputs — the child's, or for a
//! foreach the counts and per-key aggregates ([`foreach_outputs`]) — become
//! `${tasks.T.outputs.K}` for the tasks after it.
//!
//! Nothing here is stored besides the children: after a restart (or a resume)
//! the engine is rebuilt by replaying the same decisions from the children's
//! records ([`Scheduler::advance`] finds tasks that already have children and
//! does not create them twice). The replay is deterministic because every input
//! of a decision — parameters, outputs, which children ended how — is in the
//! store.

use std::collections::BTreeMap;

use baton_package::{PackageOutcome, Scope, TaskOutcome, TaskState};
use smol_str::SmolStr;
use tracing::{info, warn};

use super::child::{Child, End, Step};
use super::exec::Exec;
use super::model::ChildRef;
use super::state::Scheduler;
use crate::prepare::{Work, child_params, dynamic_items, process_package, single_child_params};
use crate::records::{ChildRecord, ExecutionState, FinalCounts, Phase, RowsOutcome};

/// Per-child outputs are repeated as `KEY.INDEX` only up to this many children.
pub const INDEXED_OUTPUTS_MAX: usize = 1_000;
/// Distinct output keys a foreach aggregates (`KEY.count`, `KEY.sum`).
pub const AGGREGATED_KEYS_MAX: usize = 1_000;

/// A stable seed for one child's retry jitter.
pub(crate) fn child_seed(execution: &str, task: &str, index: u32) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (execution, task, index).hash(&mut h);
    h.finish()
}

/// A fresh child record.
pub(crate) fn new_child(task: &SmolStr, index: u32, item: String) -> ChildRecord {
    ChildRecord {
        task: task.clone(),
        index,
        item: item.into(),
        phase: Phase::Pending,
        attempt: 1,
        agent: None,
        attempt_agents: Vec::new(),
        failures: 0,
        lost: 0,
        exit_code: None,
        reason: String::new(),
        outputs: BTreeMap::new(),
        started_unix_ms: 0,
        finished_unix_ms: 0,
        pid: 0,
        cancel_requested: false,
        rows: None,
    }
}

/// The outputs of a foreach task: `children`, `succeeded`, `failed`, and for
/// every key the children wrote, `KEY.count` (children that wrote it),
/// `KEY.sum` (when every value is a number) and `KEY.INDEX` (each child's
/// value, up to [`INDEXED_OUTPUTS_MAX`] children).
pub fn foreach_outputs<'a>(
    children: impl IntoIterator<Item = (u32, Phase, &'a BTreeMap<String, String>)>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let (mut n, mut ok) = (0u64, 0u64);
    let mut keys: BTreeMap<&str, (u64, Option<f64>, bool)> = BTreeMap::new();
    let mut indexed = Vec::new();
    for (index, phase, outputs) in children {
        n += 1;
        if phase == Phase::Succeeded {
            ok += 1;
        }
        for (k, v) in outputs {
            if !keys.contains_key(k.as_str()) && keys.len() >= AGGREGATED_KEYS_MAX {
                continue;
            }
            let e = keys.entry(k.as_str()).or_insert((0, Some(0.0), true));
            e.0 += 1;
            let num = v.trim().parse::<f64>().ok().filter(|f| f.is_finite());
            e.1 = e.1.zip(num).map(|(a, b)| a + b);
            e.2 &= v.trim().parse::<i64>().is_ok();
            // Per-child values only for small foreaches (not built past the limit).
            if n as usize <= INDEXED_OUTPUTS_MAX {
                indexed.push((format!("{k}.{index}"), v.clone()));
            }
        }
    }
    out.insert("children".into(), n.to_string());
    out.insert("succeeded".into(), ok.to_string());
    out.insert("failed".into(), (n - ok).to_string());
    for (k, (count, sum, ints)) in keys {
        out.insert(format!("{k}.count"), count.to_string());
        if let Some(sum) = sum {
            let text = if ints && sum.abs() < 9.0e15 {
                format!("{}", sum as i64)
            } else {
                format!("{sum}")
            };
            out.insert(format!("{k}.sum"), text);
        }
    }
    if n as usize <= INDEXED_OUTPUTS_MAX {
        out.extend(indexed);
    }
    out
}

impl Scheduler {
    /// Moves an execution on: reports ended tasks to the engine, starts the
    /// tasks it makes ready, and ends the execution when the engine says so.
    /// A sub-execution's end ends its parent child, which moves the parent
    /// execution on in turn: one after the other here, not by a call back
    /// into this function.
    pub(crate) fn advance(&mut self, slot: u64) {
        let mut next = Some(slot);
        while let Some(slot) = next {
            next = self.advance_once(slot);
        }
    }

    /// [`Scheduler::advance`] for one execution; returns the parent
    /// execution to move on when this one, a sub-execution, ended its child.
    fn advance_once(&mut self, slot: u64) -> Option<u64> {
        let mut created: Vec<ChildRef> = Vec::new();
        let mut wants_rows: Vec<usize> = Vec::new();
        match self.execs.get(slot) {
            Some(e) if !e.rec.state.is_terminal() => {}
            _ => return None,
        }
        // Twice when a cancel is under way: first replay (only tasks whose
        // children are stored start, so that a restarted coordinator waits for
        // the children still running), then cancel what never started.
        let mut cancelled = false;
        // Again when a rows foreach cannot even ask for its rows: it fails
        // here (not by a call back into this function) and the engine moves on.
        'rows: loop {
            loop {
                // Only the tasks marked since the last look (see `TaskWatch`).
                let candidates = match self.execs.get_mut(slot) {
                    Some(e) => e.watch.take_ending(e.tasks.len()),
                    None => return None,
                };
                self.stats.task_checks += candidates.len() as u64;
                let mut progressed = self.stop_failed_foreaches(slot, &candidates);
                {
                    let e = self.execs.get_mut(slot)?;
                    progressed |= report_ended(e, &candidates);
                    let cancel = e.rec.cancel_requested;
                    for name in e.engine.ready() {
                        let stored = e
                            .task_index
                            .get(&name)
                            .is_some_and(|&ti| !e.tasks[ti as usize].children.is_empty());
                        if cancel && !stored {
                            continue;
                        }
                        start_task(e, slot, &name, &mut created, &mut wants_rows);
                        progressed = true;
                    }
                    if cancel {
                        progressed |= end_awaiting_rows(e);
                        if !progressed && !cancelled {
                            e.engine.cancel();
                            cancelled = true;
                            progressed = true;
                        }
                    }
                }
                if !progressed {
                    break;
                }
            }
            let mut unavailable = false;
            for ti in std::mem::take(&mut wants_rows) {
                if let Err(why) = self.request_rows(slot, ti) {
                    self.take_rows(slot, ti, Err(why));
                    unavailable = true;
                }
            }
            if !unavailable {
                break 'rows;
            }
        }
        let any_created = !created.is_empty();
        for cref in created {
            self.journal.child(cref);
        }
        let e = self.execs.get_mut(slot)?;
        if any_created {
            e.touched = true;
        }
        // The execution record changes only when it ends (task states are
        // the engine's, rebuilt from the children after a restart).
        let outcome = e.engine.outcome()?;
        // Children of tasks the engine will not wait for (a task skipped or
        // cancelled after a resume reset its children): stop them first.
        if self.stop_strays(slot) {
            return None;
        }
        let e = self.execs.get_mut(slot)?;
        if e.rec.state.is_terminal() {
            // Ended already (stopping its strays ended a sub-execution, whose
            // end reached this execution first).
            return None;
        }
        e.touched = true;
        self.journal.exec(slot);
        e.rec.task_states = e.engine.states();
        e.rec.state = match outcome {
            PackageOutcome::Succeeded => ExecutionState::Succeeded,
            PackageOutcome::Failed => ExecutionState::Failed,
            PackageOutcome::Cancelled => ExecutionState::Cancelled,
        };
        if e.rec.state == ExecutionState::Failed && e.rec.reason.is_empty() {
            e.rec.reason = failure_reason(e);
        }
        e.rec.finished_unix_ms = self.unix_ms;
        let sum = super::view::summary_of(e);
        e.rec.final_counts = Some(FinalCounts {
            total: sum.total,
            succeeded: sum.succeeded,
            failed: sum.failed,
            cancelled: sum.cancelled,
            lost_attempts: sum.lost_attempts,
        });
        info!(execution = %e.rec.id, state = e.rec.state.as_str(), reason = %e.rec.reason, "execution finished");
        if let Some(trace) = &e.rec.trace {
            self.journal.effect(super::model::Effect::Trace(
                super::model::TraceEvent::Execution {
                    trace: trace.clone(),
                    execution_id: e.rec.id.clone(),
                    package: e.rec.package.clone(),
                    state: e.rec.state.as_str(),
                    reason: e.rec.reason.clone(),
                    started_unix_ms: if trace.started_unix_ms > 0 {
                        trace.started_unix_ms
                    } else {
                        e.rec.created_unix_ms
                    },
                    ended_unix_ms: e.rec.finished_unix_ms,
                },
            ));
        }
        if e.rec.parent.is_some() {
            return self.nested_ended(slot);
        }
        None
    }
}

impl Scheduler {
    /// Ends the children that no task waits for once the engine has decided:
    /// pending ones at once, running ones asked to stop. True while some are
    /// still running (the execution ends when they have).
    fn stop_strays(&mut self, slot: u64) -> bool {
        let Some(e) = self.execs.get(slot) else {
            return false;
        };
        let mut pending = Vec::new();
        let mut running = Vec::new();
        for (ti, run) in e.tasks.iter().enumerate() {
            if run.is_open() {
                continue;
            }
            for (ci, c) in run.children.iter().enumerate() {
                let cref = ChildRef {
                    exec: slot,
                    task: ti as u16,
                    child: ci as u32,
                };
                match c.rec.phase {
                    Phase::Pending => pending.push(cref),
                    p if p.is_on_agent() => running.push((cref, c.rec.cancel_requested)),
                    _ => {}
                }
            }
        }
        for cref in pending {
            if let Some(c) = self.child_mut(cref) {
                c.rec.reason = "not started: its task will not run".into();
            }
            self.set_state(cref, Step::End(End::Cancelled));
        }
        for (cref, asked) in &running {
            if !asked {
                if let Some(c) = self.child_mut(*cref) {
                    c.rec.cancel_requested = true;
                    c.rec.reason = "stopped: its task will not run".into();
                }
                self.journal.child(*cref);
                self.request_stop(*cref);
            }
        }
        !running.is_empty()
    }
}

/// A cancel does not wait for rows: a rows foreach still waiting ends
/// cancelled (a late answer is ignored).
fn end_awaiting_rows(e: &mut Exec) -> bool {
    let mut changed = false;
    for ti in 0..e.tasks.len() {
        if !e.tasks[ti].awaits_rows() {
            continue;
        }
        e.tasks[ti].waiting.clear();
        e.tasks[ti].end();
        let name = e.plan.tasks[ti].name.clone();
        let _ = e
            .engine
            .finished(&name, TaskOutcome::Cancelled, BTreeMap::new());
        changed = true;
    }
    changed
}

/// Why a failed execution failed: its failed tasks, with their counts.
fn failure_reason(e: &Exec) -> String {
    let mut parts = Vec::new();
    for (t, run) in e.plan.tasks.iter().zip(&e.tasks) {
        if e.engine.state(&t.name) != Ok(TaskState::Failed) {
            continue;
        }
        if run.children.is_empty() {
            let why = e.engine.reason(&t.name).unwrap_or("it failed");
            parts.push(format!("task '{}': {why}", t.name));
        } else {
            parts.push(format!(
                "{} of {} children of task '{}' did not succeed",
                run.failed,
                run.children.len(),
                t.name
            ));
        }
    }
    if parts.is_empty() {
        "a task failed".into()
    } else {
        parts.join("; ")
    }
}

impl Scheduler {
    /// A foreach past its `max_failures` starts no further child: its pending
    /// children end `cancelled`. Returns whether anything changed.
    fn stop_failed_foreaches(&mut self, slot: u64, candidates: &[usize]) -> bool {
        let mut doomed = Vec::new();
        if let Some(e) = self.execs.get_mut(slot) {
            for &ti in candidates {
                let max = e.plan.tasks[ti].max_failures;
                let run = &mut e.tasks[ti];
                if !run.is_open() || !run.has_queued() || max.keeps_going(u64::from(run.failed)) {
                    continue;
                }
                while let Some(ci) = run.take_next_queued() {
                    let c = &mut run.children[ci as usize];
                    if c.rec.phase != Phase::Pending {
                        continue;
                    }
                    c.rec.reason = format!(
                        "not started: task '{}' has more failed children than its max_failures",
                        c.rec.task
                    );
                    doomed.push(ChildRef {
                        exec: slot,
                        task: ti as u16,
                        child: ci,
                    });
                }
            }
        }
        for cref in &doomed {
            self.set_state(*cref, Step::End(End::Cancelled));
        }
        !doomed.is_empty()
    }
}

/// Reports to the engine every started task among `candidates` whose
/// children have all ended.
fn report_ended(e: &mut Exec, candidates: &[usize]) -> bool {
    let mut changed = false;
    for &ti in candidates {
        let run = &e.tasks[ti];
        if !run.may_end() || (run.terminal as usize) < run.children.len() {
            continue;
        }
        let planned = &e.plan.tasks[ti];
        let name = planned.name.clone();
        let cancelled = run
            .children
            .iter()
            .any(|c| c.rec.phase == Phase::Cancelled && !c.rec.cancel_requested)
            && e.rec.cancel_requested;
        let outcome = if cancelled {
            TaskOutcome::Cancelled
        } else if planned.max_failures.succeeded(u64::from(run.failed)) {
            TaskOutcome::Succeeded
        } else {
            TaskOutcome::Failed
        };
        let outputs = match &planned.work {
            Work::Foreach { .. } => foreach_outputs(
                run.children
                    .iter()
                    .map(|c| (c.rec.index, c.rec.phase, &c.rec.outputs)),
            ),
            _ => run
                .children
                .first()
                .map(|c| c.rec.outputs.clone())
                .unwrap_or_default(),
        };
        if let Err(err) = e.engine.finished(&name, outcome, outputs) {
            warn!(execution = %e.rec.id, task = %name, error = %err, "engine refused a task end");
        }
        e.tasks[ti].end();
        changed = true;
    }
    changed
}

/// Starts a task the engine made ready: creates its children (unless a
/// replay finds them already stored) or ends it at once.
fn start_task(
    e: &mut Exec,
    slot: u64,
    name: &str,
    created: &mut Vec<ChildRef>,
    wants_rows: &mut Vec<usize>,
) {
    if let Err(err) = e.engine.started(name) {
        warn!(execution = %e.rec.id, task = %name, error = %err, "engine refused a task start");
        return;
    }
    let Some(&ti) = e.task_index.get(name) else {
        // Not a planned task (the engine runs groups itself).
        return;
    };
    let ti = ti as usize;
    e.tasks[ti].start();
    e.watch.may_end(ti);
    let planned = planned_shallow(e, ti);
    if let Work::Foreach { fe, .. } = &planned.work
        && matches!(fe.over, baton_package::ForeachOver::Rows(_))
        && e.tasks[ti].children.is_empty()
    {
        // Decided before a restart: the same again, without reading rows.
        match e.rec.rows_outcomes.get(name).cloned() {
            Some(RowsOutcome::Empty) => {
                e.tasks[ti].end();
                let _ = e
                    .engine
                    .finished(name, TaskOutcome::Succeeded, BTreeMap::new());
                return;
            }
            Some(RowsOutcome::Failed(why)) => {
                e.tasks[ti].end();
                let _ = e.engine.failed(name, why);
                return;
            }
            None => {}
        }
        // Its items are the rows of an earlier task, kept on the agents that
        // ran it: the children are made when they arrive (`rows_fetched`).
        e.tasks[ti].await_rows();
        wants_rows.push(ti);
        return;
    }
    expand(e, slot, ti, &planned, &[], created);
}

/// A copy of a planned task without its items (a foreach's may be a million
/// strings; [`expand`] takes them from the plan).
pub(super) fn planned_shallow(e: &mut Exec, ti: usize) -> crate::prepare::PlannedTask {
    let items = std::mem::take(&mut e.plan.tasks[ti].items);
    let planned = e.plan.tasks[ti].clone();
    e.plan.tasks[ti].items = items;
    planned
}

/// Makes the children of a started task (its items rendered now, `rows` for
/// a rows foreach), or ends it at once when it has none or cannot start.
pub(super) fn expand(
    e: &mut Exec,
    slot: u64,
    ti: usize,
    planned: &crate::prepare::PlannedTask,
    rows: &[String],
    created: &mut Vec<ChildRef>,
) {
    let name = planned.name.as_str();
    // The plan gives its item list to the children (a foreach's may be a
    // million strings: it is not kept twice).
    let known_items = std::mem::take(&mut e.plan.tasks[ti].items);
    let prepared = {
        let scope = Scope {
            params: &e.plan.params,
            item: None,
            outputs: e.engine.outputs(),
            states: e.engine.state_names(),
        };
        prepare_task(e, planned, &scope, rows, known_items)
    };
    let (items, package, params) = match prepared {
        Ok(p) => p,
        Err(reason) => {
            let _ = e.engine.failed(name, reason);
            e.tasks[ti].end();
            return;
        }
    };
    let run = &mut e.tasks[ti];
    run.package = package;
    run.params = params;
    if !run.children.is_empty() {
        // Replayed after a restart or a resume: the children are stored —
        // all of them, or the first of them when a crash came between the
        // chunks of the commit that made them (a task's children are written
        // in index order): the rest are made now.
        let stored = run.children.len();
        let contiguous = run
            .children
            .last()
            .is_some_and(|c| c.rec.index as usize + 1 == stored);
        if contiguous && stored < items.len() {
            let missing = items.len() - stored;
            warn!(execution = %e.rec.id, task = %name, stored, missing,
                "children missing after a restart (a split commit was cut short): making them");
            e.phase_counts[Phase::Pending as usize] += missing as u64;
            e.touched = true;
            let run = &mut e.tasks[ti];
            let task = SmolStr::new(name);
            for (i, item) in items.into_iter().enumerate().skip(stored) {
                let index = i as u32;
                run.children.push(Child::new(new_child(&task, index, item)));
                created.push(ChildRef {
                    exec: slot,
                    task: ti as u16,
                    child: index,
                });
            }
            let total = e.tasks[ti].children.len() as u32;
            e.enqueue_all(ti, stored as u32..total);
        }
        return;
    }
    if items.is_empty() {
        // A noop, or a foreach over nothing: it has nothing to wait for.
        run.end();
        let _ = e
            .engine
            .finished(name, TaskOutcome::Succeeded, BTreeMap::new());
        return;
    }
    e.phase_counts[Phase::Pending as usize] += items.len() as u64;
    // The counts changed: watchers and `exec list` must see the new children
    // (a foreach over rows makes them after its execution started).
    e.touched = true;
    let run = &mut e.tasks[ti];
    run.children.reserve(items.len());
    let made = items.len() as u32;
    // One name for every child: a long one is shared, not copied a million times.
    let task = SmolStr::new(name);
    for (i, item) in items.into_iter().enumerate() {
        let index = i as u32;
        run.children.push(Child::new(new_child(&task, index, item)));
        created.push(ChildRef {
            exec: slot,
            task: ti as u16,
            child: index,
        });
    }
    e.enqueue_all(ti, 0..made);
}

/// The items, package and parameters of a task about to start; `Err` is why
/// it fails instead.
#[allow(clippy::type_complexity)]
fn prepare_task(
    e: &Exec,
    planned: &crate::prepare::PlannedTask,
    scope: &Scope<'_>,
    rows: &[String],
    known_items: Vec<String>,
) -> Result<
    (
        Vec<String>,
        Option<crate::prepare::ChildPackage>,
        BTreeMap<String, String>,
    ),
    String,
> {
    match &planned.work {
        Work::Noop => Ok((Vec::new(), None, BTreeMap::new())),
        Work::Process { exec } => {
            let (pkg, params) = process_package(
                &e.plan.parent,
                &planned.name,
                exec,
                planned.timeout_s,
                scope,
            )
            .map_err(|err| err.to_string())?;
            Ok((vec![String::new()], Some(pkg), params))
        }
        Work::Child { ct, child } => {
            let params = single_child_params(ct, scope).map_err(|err| err.to_string())?;
            Ok((vec![String::new()], Some(child.clone()), params))
        }
        Work::Foreach { fe, child } => {
            let items = if planned.dynamic {
                dynamic_items(fe, scope, rows).map_err(|err| err.to_string())?
            } else {
                known_items
            };
            // Check the first child's parameters now: a typo fails the task
            // once instead of every child.
            if let Some(first) = items.first() {
                let s = Scope {
                    params: scope.params,
                    item: Some(first),
                    outputs: scope.outputs,
                    states: scope.states,
                };
                child_params(fe, &s).map_err(|err| err.to_string())?;
            }
            Ok((items, Some(child.clone()), BTreeMap::new()))
        }
    }
}
