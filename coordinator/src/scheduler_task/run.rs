//! The loop: receives messages and ticks, drives the [`Scheduler`], commits
//! each batch of changes in one transaction (group commit) — in several, in
//! order, when it exceeds the store's limits ([`crate::store::split`]) — and
//! only then, once the last is durable, lets the batch's replies and effects
//! out. What leaves goes through a
//! [`Performer`] (the real one is `effects::Io`; tests record instead).
//!
//! A failed commit stops the loop: memory is ahead of the store, and acting
//! on it would send out what may never be durable. The replies and effects of
//! that batch (and of every batch after it) are dropped; their callers get
//! `ShuttingDown`, and the next term (or a restart) reloads the truth from
//! the store. An agent refusing a dispatch as `STALE_EPOCH` stops it too
//! (`LEADERSHIP_LOST`): another coordinator led after this one.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::msg::{AgentListing, Msg};
use crate::clock::Now;
use crate::error::CoordinatorError;
use crate::metrics::MetricsSnapshot;
use crate::scheduler::{DispatchOutcome, Effect, Scheduler};
use crate::store::split::{Chunked, commit_in_chunks};
use crate::store::{BoxFuture, Store, StoreError};

/// Most messages handled between two commits: bounds batch size and latency.
const MAX_BATCH_MSGS: usize = 4096;
const TICK: Duration = Duration::from_millis(100);

/// What the loop hands to the world outside. `perform` is called only with
/// the effects of a batch that is durable.
pub(crate) trait Performer: Send + 'static {
    /// Performs the effects of a committed batch, in order.
    fn perform(&mut self, effects: Vec<Effect>);
    /// Agent `name` registered (again): what is known of its release may be
    /// stale (nothing is sent; this only forgets).
    fn registered(&mut self, name: &str);
    /// Agent `name`'s completion stream was accepted: its acknowledgements
    /// go to `acks`.
    fn stream_opened(&mut self, name: String, acks: watch::Sender<u64>);
}

/// A reply held until the batch it belongs to is durable.
type Reply = Box<dyn FnOnce() + Send>;

/// Holds `value` for `reply` until the current batch is committed.
fn later<T: Send + 'static>(replies: &mut Vec<Reply>, reply: oneshot::Sender<T>, value: T) {
    replies.push(Box::new(move || {
        // The caller may have gone: nothing to tell then.
        let _ = reply.send(value);
    }));
}

fn send_all(replies: Vec<Reply>) {
    for r in replies {
        r();
    }
}

/// A batch whose commit is under way: what to do once it is durable.
struct InFlight<'a> {
    commit: BoxFuture<'a, Result<Chunked, StoreError>>,
    written: Vec<(usize, crate::scheduler::Written)>,
    replies: Vec<Reply>,
    effects: Vec<Effect>,
}

/// The loop. While one batch is being committed (an fsync, on a blocking
/// thread) the next batch is already being handled in memory; it is flushed
/// as soon as the commit before it is durable, so the scheduler never waits
/// for the disk with messages in its inbox. Effects and replies of a batch
/// are taken when it is flushed and performed only after its commit: nothing
/// leaves this task before the state that caused it is durable.
pub(crate) async fn run<P: Performer>(
    mut sched: Scheduler,
    store: std::sync::Arc<dyn Store>,
    mut rx: mpsc::Receiver<Msg>,
    mut out: P,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut replies = Vec::new();
    let mut inflight: Option<InFlight<'_>> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            res = async {
                match inflight.as_mut() {
                    Some(f) => (&mut f.commit).await,
                    None => std::future::pending().await,
                }
            }, if inflight.is_some() => {
                let Some(done) = inflight.take() else { continue };
                match res {
                    Ok(chunks) => sched.committed_chunks(done.written, &chunks),
                    Err(e) => {
                        // Memory is ahead of the store now: stop rather than act on
                        // state that is not durable. A restart reloads the truth.
                        error!(error = %e, "store commit failed; stopping the scheduler");
                        return Err(e.into());
                    }
                }
                send_all(done.replies);
                out.perform(done.effects);
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                handle(&mut sched, &mut out, msg, &mut replies);
                for _ in 1..MAX_BATCH_MSGS {
                    match rx.try_recv() {
                        Ok(msg) => handle(&mut sched, &mut out, msg, &mut replies),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => sched.tick(Now::read()),
        }
        if let Some(why) = sched.deposed() {
            // Another coordinator leads: nothing more leaves (the batch under
            // way and what follows are dropped; the next term reloads).
            error!(%why, "this coordinator's term is over; stopping the scheduler");
            return Err(CoordinatorError::LeadershipLost(why.to_string()));
        }
        if inflight.is_some() {
            // The pump and the next flush wait for the commit under way
            // (record revisions are its preconditions).
            continue;
        }
        sched.pump(Now::read());
        if sched.has_dirty() {
            let (ops, written) = sched.flush();
            inflight = Some(InFlight {
                commit: Box::pin(commit_in_chunks(store.as_ref(), ops)),
                written,
                replies: std::mem::take(&mut replies),
                effects: sched.take_effects(),
            });
        } else {
            sched.publish_and_evict();
            send_all(std::mem::take(&mut replies));
            out.perform(sched.take_effects());
        }
    }
    debug!("scheduler stopped");
    Ok(())
}

/// Applies one message to the scheduler. A reply that depends on a change
/// waits in `replies` for the batch's commit; a read is answered at once.
fn handle<P: Performer>(sched: &mut Scheduler, out: &mut P, msg: Msg, replies: &mut Vec<Reply>) {
    let now = Now::read();
    match msg {
        Msg::Register { reg, reply } => {
            out.registered(&reg.name);
            let resp = sched.register(reg, now);
            later(replies, reply, resp);
        }
        Msg::OpenStream {
            agent,
            boot_id,
            fingerprint,
            acks,
            reply,
        } => {
            // Changes nothing durable: answered at once.
            let r = sched.open_stream(&agent, &boot_id, &fingerprint, now);
            if r.is_ok() {
                out.stream_opened(agent, acks);
            }
            let _ = reply.send(r);
        }
        Msg::Event { agent, event } => sched.agent_event(&agent, event, now),
        Msg::Dispatched {
            child,
            agent,
            attempt,
            outcome,
            rtt,
        } => {
            if !matches!(
                outcome,
                DispatchOutcome::Unknown(_) | DispatchOutcome::WrongAgent(_)
            ) {
                let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                sched.latency.accept_us.record(us);
            }
            sched.dispatch_result(child, &agent, attempt, outcome, now);
        }
        Msg::Start { rec, plan, reply } => {
            // Admission first: a refused start leaves nothing behind.
            let r = sched.admit(&plan).map(|()| sched.start(*rec, *plan, now));
            later(replies, reply, r);
        }
        Msg::RowsFetched {
            execution_id,
            task,
            rows,
        } => sched.rows_fetched(&execution_id, &task, rows, now),
        Msg::Resume {
            rec,
            version,
            plan,
            children,
            reply,
        } => {
            let r = sched.resume(*rec, version, *plan, children, now);
            later(replies, reply, r);
        }
        Msg::Child {
            id,
            task,
            index,
            reply,
        } => {
            let _ = reply.send(sched.child_record(&id, &task, index));
        }
        Msg::View { id, limit, reply } => {
            let _ = reply.send(sched.execution_view_limited(&id, limit));
        }
        Msg::ChildrenPage {
            id,
            offset,
            limit,
            phase,
            reply,
        } => {
            let _ = reply.send(sched.children_page(&id, offset, limit, &phase));
        }
        Msg::Watch { id, reply } => {
            let _ = reply.send(sched.watch(&id));
        }
        Msg::SetAgent {
            name,
            action,
            also_revoke,
            reply,
        } => {
            // A removed agent is listed as it was just before.
            let before = listings(sched).into_iter().find(|a| a.rec.name == name);
            let r = action
                .parse()
                .and_then(|action| sched.set_admin(&name, action, now));
            let r = r.and_then(|()| {
                if action == "revoke" {
                    sched.revoke_certificates(&name, also_revoke);
                }
                if action == "remove" {
                    return before.ok_or_else(|| CoordinatorError::AgentNotFound(name.clone()));
                }
                listings(sched)
                    .into_iter()
                    .find(|a| a.rec.name == name)
                    .ok_or_else(|| CoordinatorError::AgentNotFound(name.clone()))
            });
            later(replies, reply, r);
        }
        Msg::Cancel { id, reason, reply } => {
            // The request is recorded on the execution: answered once durable
            // (a restart carries the cancellation on).
            let r = sched.cancel(&id, &reason, now);
            later(replies, reply, r);
        }
        Msg::CancelChild {
            id,
            task,
            index,
            reason,
            reply,
        } => {
            let r = sched.cancel_child(&id, &task, index, &reason, now);
            later(replies, reply, r);
        }
        Msg::ListAgents { reply } => {
            let _ = reply.send(listings(sched));
        }
        Msg::Metrics { reply } => {
            let _ = reply.send(MetricsSnapshot {
                latency: sched.latency.clone(),
                stats: sched.stats,
                gauges: sched.gauges(),
            });
        }
    }
}

fn listings(sched: &Scheduler) -> Vec<AgentListing> {
    sched
        .agent_list()
        .into_iter()
        .map(|a| AgentListing {
            rec: a.rec,
            state: a.state.as_str(),
            running: a.running,
            load1: a.load1,
            last_heartbeat_unix_ms: a.last_heartbeat_unix_ms,
            quarantine: a.quarantine,
        })
        .collect()
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
