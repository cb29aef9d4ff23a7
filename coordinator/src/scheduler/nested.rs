//! Nested fan-out: a child package that itself has `child` or `foreach` tasks
//! is never shipped to an agent (an agent runs processes, not fan-outs). The
//! coordinator runs it as a *sub-execution* — an execution of its own, linked
//! to the child it stands for — whose children go to agents like any other.
//!
//! - The child is in state [`ChildState::SubExecution`] while its
//!   sub-execution runs (stored as `running` on the agent [`COORDINATOR`]);
//!   the sub-execution's record names the parent child (execution, task, index,
//!   attempt) and its nesting depth, at most [`MAX_DEPTH`].
//! - When the sub-execution ends, the child ends the same way (succeeded,
//!   failed, cancelled), in the same store batch, with the sub-execution's
//!   outputs (every task's, later tasks winning a shared key); the parent's
//!   retry policy applies to it as to any child.
//! - Cancelling the parent (or the child alone) cancels the sub-execution; a
//!   restart restores both as running executions and the link holds.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::admission::Room;
use super::child::{COORDINATOR, ChildState, End, Step};
use super::model::ChildRef;
use super::state::Scheduler;
use crate::clock::Now;
use crate::domain::JobStatus;
use crate::prepare::plan_bundle;
use crate::records::{ExecutionRecord, ExecutionState, ParentLink};

/// Deepest nesting: a parent's child is depth 1, its child's child depth 2, …
pub const MAX_DEPTH: u32 = 4;

/// Most outputs a sub-execution hands back to its child (as an agent's job).
pub const NESTED_OUTPUTS_MAX: usize = 1_000;

impl Scheduler {
    /// Starts the sub-execution of a child whose package fans out, instead of
    /// a dispatch. A child that cannot start one fails with the reason.
    pub(crate) fn start_nested(&mut self, cref: ChildRef) {
        let made = self.nested_record(cref);
        let made = made.and_then(|(rec, plan)| {
            let adding: u64 = plan.tasks.iter().map(|t| t.items.len() as u64).sum();
            match self.room_for(adding) {
                Room::Fits => Ok(Some((rec, plan))),
                Room::Wait(why) => {
                    // Back to the head of its task's queue until children finish.
                    if let Some(c) = self.child_mut(cref) {
                        c.waiting_reason = why;
                    }
                    self.parked_nested.insert(cref, adding);
                    if let Some(e) = self.execs.get_mut(cref.exec) {
                        e.enqueue(cref.task as usize, cref.child, true);
                        e.touched = true;
                    }
                    Ok(None)
                }
                Room::Never(why) => Err(format!("cannot start its sub-execution: {why}")),
            }
        });
        let (rec, plan) = match made {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(reason) => {
                if let Some(c) = self.child_mut(cref) {
                    c.rec.reason = reason;
                }
                self.set_state(cref, Step::End(End::Failed));
                self.advance(cref.exec);
                return;
            }
        };
        self.parked_nested.remove(&cref);
        let sub_id = rec.id.clone();
        let unix_ms = self.unix_ms;
        if let Some(c) = self.child_mut(cref) {
            if c.rec.attempt_agents.len() < c.state().attempt() as usize {
                c.rec.attempt_agents.push(COORDINATOR.into());
            }
            c.rec.reason = format!("runs as execution {sub_id}");
            c.rec.started_unix_ms = unix_ms;
            c.waiting_reason.clear();
        }
        if !self.set_state(cref, Step::RunHere) {
            return;
        }
        self.stats.dispatches += 1;
        info!(child = ?cref, execution = %sub_id, "nested fan-out: child runs as a sub-execution");
        self.start_execution(rec, plan);
    }

    fn nested_record(
        &self,
        cref: ChildRef,
    ) -> Result<(ExecutionRecord, crate::prepare::Plan), String> {
        let e = self.execs.get(cref.exec).ok_or("execution gone")?;
        let depth = e.rec.parent.as_ref().map_or(0, |p| p.depth) + 1;
        if depth > MAX_DEPTH {
            return Err(format!(
                "nested fan-out deeper than {MAX_DEPTH} levels: a child package that fans out \
                 runs here at depth {depth}"
            ));
        }
        let run = &e.tasks[cref.task as usize];
        let c = &run.children[cref.child as usize];
        let root = run
            .package
            .as_ref()
            .map(|p| p.path.clone())
            .ok_or("the task has not started (no package)")?;
        let params = self
            .child_parameters(cref)
            .map_err(|err| format!("cannot bind child parameters: {err}"))?;
        let plan =
            plan_bundle(&root, e.rec.bundle_files(), &params).map_err(|err| err.to_string())?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let sealed = match &self.secrets {
            Some(key) => {
                crate::secrets::seal_params(key, &id, params, |name| plan.params.is_sensitive(name))
                    .map_err(|err| err.to_string())?
            }
            None if plan.params.iter().any(|(n, _)| plan.params.is_sensitive(n)) => {
                return Err("no sealing key to keep sensitive parameters at rest".into());
            }
            None => params,
        };
        let rec = ExecutionRecord {
            id: id.clone(),
            package: plan.package.clone(),
            root,
            // The parent's bundle by reference: its blobs are the sub-execution's.
            files: Default::default(),
            file_hashes: e.rec.file_hashes.clone(),
            bundle_hash: e.rec.bundle_hash.clone(),
            texts: Some(
                e.rec
                    .texts
                    .clone()
                    .unwrap_or_else(|| std::sync::Arc::new(e.rec.files.clone())),
            ),
            params: sealed,
            state: ExecutionState::Running,
            current_task: 0,
            created_unix_ms: self.unix_ms,
            finished_unix_ms: 0,
            reason: String::new(),
            stale_events: 0,
            cancel_requested: false,
            final_counts: None,
            folder: e.rec.folder.clone(),
            catalog: e.rec.catalog.clone(),
            resumes: 0,
            task_states: BTreeMap::new(),
            rows_outcomes: BTreeMap::new(),
            trace: e
                .rec
                .trace
                .as_ref()
                .and_then(|t| t.nested(cref.task, cref.child, c.state().attempt(), &id)),
            placement: e.rec.placement.clone(),
            parent: Some(ParentLink {
                execution_id: e.rec.id.clone(),
                task: c.rec.task.to_string(),
                index: c.rec.index,
                attempt: c.rec.attempt,
                depth,
            }),
        };
        let mut plan = plan;
        if e.rec.catalog.is_some() {
            plan.fetch_by_hash();
        }
        Ok((rec, plan))
    }

    /// A sub-execution ended: its parent child ends the same way. Returns
    /// the parent execution to move on (the caller does).
    pub(crate) fn nested_ended(&mut self, sub_slot: u64) -> Option<u64> {
        let sub = self.execs.get(sub_slot)?;
        let link = sub.rec.parent.clone()?;
        let state = sub.rec.state;
        let reason = format!("execution {}: {}", sub.rec.id, sub.rec.reason);
        // Every task's outputs, later tasks winning a key, at most as many as
        // an agent reports for one job.
        let mut outputs = BTreeMap::new();
        for t in sub.engine.package().task_order() {
            if let Some(o) = sub.engine.outputs().get(&t.name) {
                for (k, v) in o {
                    if outputs.len() < NESTED_OUTPUTS_MAX || outputs.contains_key(k) {
                        outputs.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let Some(slot) = self.execs.slot_of(link.execution_id.as_str()) else {
            warn!(execution = %link.execution_id, "the parent of a sub-execution is not running");
            return None;
        };
        let e = self.execs.get(slot)?;
        let ti = *e.task_index.get(&link.task)?;
        let cref = ChildRef {
            exec: slot,
            task: ti,
            child: link.index,
        };
        let c = self.child(cref)?;
        if !matches!(c.state(), ChildState::SubExecution { attempt } if *attempt == link.attempt) {
            return None;
        }
        let status = match state {
            ExecutionState::Succeeded => JobStatus::Succeeded,
            ExecutionState::Cancelled => JobStatus::Cancelled,
            _ => JobStatus::Failed,
        };
        self.attempt_ended(cref, None, status, 0, outputs, reason, None)
    }

    /// Cancels the sub-execution a child runs as (the child ends when it does).
    pub(crate) fn cancel_nested(&mut self, cref: ChildRef, reason: &str) {
        let Some(e) = self.execs.get(cref.exec) else {
            return;
        };
        let parent_id = e.rec.id.clone();
        let c = &e.tasks[cref.task as usize].children[cref.child as usize];
        let (task, index, attempt) = (c.rec.task.clone(), c.rec.index, c.rec.attempt);
        let sub = self.execs.iter().find_map(|(s, x)| {
            x.rec
                .parent
                .as_ref()
                .filter(|p| {
                    p.execution_id == parent_id
                        && p.task == task
                        && p.index == index
                        && p.attempt == attempt
                })
                .map(|_| (s, x.rec.id.clone()))
        });
        if let Some((_, sub_id)) = sub {
            let _ = self.cancel_execution(&sub_id, reason);
        }
    }
}

impl Scheduler {
    /// After a restart: a child that runs as a sub-execution which is not
    /// running any more (it could not be planned again, or was pruned) would
    /// wait for ever; it fails instead, and its retry policy applies.
    pub fn end_orphaned_nested(&mut self, now: Now) {
        self.at(now);
        let live: std::collections::HashSet<(String, String, u32, u32)> = self
            .execs
            .values()
            .filter(|e| !e.rec.state.is_terminal())
            .filter_map(|e| e.rec.parent.as_ref())
            .map(|p| (p.execution_id.clone(), p.task.clone(), p.index, p.attempt))
            .collect();
        let mut orphans = Vec::new();
        for (slot, e) in self.execs.iter() {
            for (ti, run) in e.tasks.iter().enumerate() {
                for (ci, c) in run.children.iter().enumerate() {
                    if matches!(c.state(), ChildState::SubExecution { .. })
                        && !live.contains(&(
                            e.rec.id.clone(),
                            c.rec.task.to_string(),
                            c.rec.index,
                            c.rec.attempt,
                        ))
                    {
                        orphans.push(ChildRef {
                            exec: slot,
                            task: ti as u16,
                            child: ci as u32,
                        });
                    }
                }
            }
        }
        for cref in orphans {
            warn!(child = ?cref, "the sub-execution of a child is not running after the restart; the child fails");
            self.child_ended(
                cref,
                None,
                JobStatus::Failed,
                -1,
                BTreeMap::new(),
                "its sub-execution did not survive a coordinator restart".into(),
                None,
            );
        }
    }
}
