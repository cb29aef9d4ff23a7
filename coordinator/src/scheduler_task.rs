//! The loop around [`Scheduler`]: receives messages, ticks, commits each batch
//! of changes to the store in one transaction (group commit), then performs
//! the effects — dispatch RPCs, acknowledgements, replies — that must wait for
//! durability. The scheduler holds the logic; this file holds the IO.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use baton_proto as pb;
use pb::agent_service_client::AgentServiceClient;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, error};

use crate::api::MetricsSnapshot;
use crate::clock::Now;
use crate::error::CoordinatorError;
use crate::prepare::Plan;
use crate::records::{AgentRecord, ExecutionRecord};
use crate::scheduler::{
    ChildRef, DispatchOutcome, Effect, ExecutionView, Registration, Scheduler, Summary,
};
use crate::store::Store;
use crate::transport;

mod effects;
use effects::perform_all;

/// Most messages handled between two commits: bounds batch size and latency.
const MAX_BATCH_MSGS: usize = 4096;
/// Capacity of the scheduler's inbox; senders wait when it is full (backpressure).
pub const INBOX_CAPACITY: usize = 65_536;
const TICK: Duration = Duration::from_millis(100);
const DISPATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// An agent as listed.
#[derive(Debug, Clone)]
pub struct AgentListing {
    pub rec: AgentRecord,
    pub state: &'static str,
    pub running: u32,
    pub load1: f64,
    pub last_heartbeat_unix_ms: u64,
    /// Why it is quarantined and until when (unix ms); `None` when it is not.
    pub quarantine: Option<(String, u64)>,
}

pub(crate) enum Msg {
    Register {
        reg: Registration,
        reply: oneshot::Sender<Result<pb::RegisterResponse, CoordinatorError>>,
    },
    OpenStream {
        agent: String,
        boot_id: String,
        fingerprint: String,
        acks: watch::Sender<u64>,
        reply: oneshot::Sender<Result<(), CoordinatorError>>,
    },
    Event {
        agent: String,
        event: pb::AgentEvent,
    },
    Dispatched {
        child: ChildRef,
        agent: String,
        attempt: u32,
        outcome: DispatchOutcome,
        /// Round trip of the StartJob call.
        rtt: Duration,
    },
    Start {
        rec: Box<ExecutionRecord>,
        plan: Box<Plan>,
        reply: oneshot::Sender<Result<String, CoordinatorError>>,
    },
    RowsFetched {
        execution_id: String,
        task: String,
        rows: Result<Vec<String>, String>,
    },
    Resume {
        rec: Box<ExecutionRecord>,
        version: u64,
        plan: Box<Plan>,
        children: Vec<(crate::records::ChildRecord, u64)>,
        reply: oneshot::Sender<Result<u64, CoordinatorError>>,
    },
    Child {
        id: String,
        task: String,
        index: u32,
        reply: oneshot::Sender<Option<Option<crate::records::ChildRecord>>>,
    },
    View {
        id: String,
        /// Most children in the view.
        limit: usize,
        reply: oneshot::Sender<Option<ExecutionView>>,
    },
    Watch {
        id: String,
        reply: oneshot::Sender<Option<watch::Receiver<Summary>>>,
    },
    ListAgents {
        reply: oneshot::Sender<Vec<AgentListing>>,
    },
    Cancel {
        id: String,
        reason: String,
        reply: oneshot::Sender<Result<crate::scheduler::CancelOutcome, CoordinatorError>>,
    },
    CancelChild {
        id: String,
        task: String,
        index: u32,
        reason: String,
        reply: oneshot::Sender<Result<crate::scheduler::ChildCancelState, CoordinatorError>>,
    },
    SetAgent {
        name: String,
        action: String,
        /// With `revoke`: more certificates of the agent to refuse (issued to it
        /// but maybe not yet used to register).
        also_revoke: Vec<String>,
        reply: oneshot::Sender<Result<AgentListing, CoordinatorError>>,
    },
    Metrics {
        reply: oneshot::Sender<MetricsSnapshot>,
    },
}

/// A cheap, cloneable handle to the scheduler task.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Msg>,
}

impl SchedulerHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Msg,
    ) -> Result<T, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        rx.await.map_err(|_| CoordinatorError::ShuttingDown)
    }

    pub async fn register(
        &self,
        reg: Registration,
    ) -> Result<pb::RegisterResponse, CoordinatorError> {
        self.ask(|reply| Msg::Register { reg, reply }).await?
    }

    pub async fn open_stream(
        &self,
        agent: String,
        boot_id: String,
        fingerprint: String,
        acks: watch::Sender<u64>,
    ) -> Result<(), CoordinatorError> {
        self.ask(|reply| Msg::OpenStream {
            agent,
            boot_id,
            fingerprint,
            acks,
            reply,
        })
        .await?
    }

    pub async fn event(
        &self,
        agent: String,
        event: pb::AgentEvent,
    ) -> Result<(), CoordinatorError> {
        self.tx
            .send(Msg::Event { agent, event })
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)
    }

    pub async fn start(
        &self,
        rec: ExecutionRecord,
        plan: Plan,
    ) -> Result<String, CoordinatorError> {
        self.ask(|reply| Msg::Start {
            rec: Box::new(rec),
            plan: Box::new(plan),
            reply,
        })
        .await?
    }

    /// Resumes an ended execution read from the store (with the revisions
    /// read); answers how many children run again, once that is durable.
    pub async fn resume(
        &self,
        rec: ExecutionRecord,
        version: u64,
        plan: Plan,
        children: Vec<(crate::records::ChildRecord, u64)>,
    ) -> Result<u64, CoordinatorError> {
        self.ask(|reply| Msg::Resume {
            rec: Box::new(rec),
            version,
            plan: Box::new(plan),
            children,
            reply,
        })
        .await?
    }

    pub async fn view(&self, id: String) -> Result<Option<ExecutionView>, CoordinatorError> {
        self.view_limited(id, usize::MAX).await
    }

    /// One child of an in-memory execution (`None`: not in memory).
    pub async fn child(
        &self,
        id: String,
        task: String,
        index: u32,
    ) -> Result<Option<Option<crate::records::ChildRecord>>, CoordinatorError> {
        self.ask(|reply| Msg::Child {
            id,
            task,
            index,
            reply,
        })
        .await
    }

    /// [`Self::view`] with at most `limit` children (those that did not succeed first).
    pub async fn view_limited(
        &self,
        id: String,
        limit: usize,
    ) -> Result<Option<ExecutionView>, CoordinatorError> {
        self.ask(|reply| Msg::View { id, limit, reply }).await
    }

    pub async fn watch(
        &self,
        id: String,
    ) -> Result<Option<watch::Receiver<Summary>>, CoordinatorError> {
        self.ask(|reply| Msg::Watch { id, reply }).await
    }

    /// Requests cancellation; `ExecutionNotFound` if it is not running.
    pub async fn cancel(
        &self,
        id: String,
        reason: String,
    ) -> Result<crate::scheduler::CancelOutcome, CoordinatorError> {
        self.ask(|reply| Msg::Cancel { id, reason, reply }).await?
    }

    /// Cancels one child; `ExecutionNotFound` if the execution is not running.
    pub async fn cancel_child(
        &self,
        id: String,
        task: String,
        index: u32,
        reason: String,
    ) -> Result<crate::scheduler::ChildCancelState, CoordinatorError> {
        self.ask(|reply| Msg::CancelChild {
            id,
            task,
            index,
            reason,
            reply,
        })
        .await?
    }

    /// Cordons, drains or uncordons an agent; answers once the change is durable.
    pub async fn set_agent(
        &self,
        name: String,
        action: String,
        also_revoke: Vec<String>,
    ) -> Result<AgentListing, CoordinatorError> {
        self.ask(|reply| Msg::SetAgent {
            name,
            action,
            also_revoke,
            reply,
        })
        .await?
    }

    pub async fn agents(&self) -> Result<Vec<AgentListing>, CoordinatorError> {
        self.ask(|reply| Msg::ListAgents { reply }).await
    }

    pub async fn metrics(&self) -> Result<MetricsSnapshot, CoordinatorError> {
        self.ask(|reply| Msg::Metrics { reply }).await
    }
}

/// Replies that wait for the commit of the batch they belong to.
enum Post {
    Registered(
        oneshot::Sender<Result<pb::RegisterResponse, CoordinatorError>>,
        Result<pb::RegisterResponse, CoordinatorError>,
    ),
    Started(
        oneshot::Sender<Result<String, CoordinatorError>>,
        Result<String, CoordinatorError>,
    ),
    Resumed(
        oneshot::Sender<Result<u64, CoordinatorError>>,
        Result<u64, CoordinatorError>,
    ),
    AgentSet(
        oneshot::Sender<Result<AgentListing, CoordinatorError>>,
        Result<AgentListing, CoordinatorError>,
    ),
}

struct Io {
    tx: mpsc::Sender<Msg>,
    dialer: transport::AgentDialer,
    /// agent → (address, TLS generation, client).
    clients: HashMap<String, (String, u64, AgentServiceClient<Channel>)>,
    acks: HashMap<String, watch::Sender<u64>>,
    /// Agents that do not serve `StartJobs` (an earlier release): one
    /// `StartJob` per child for them, until they register again.
    singles_only: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Spawns the scheduler task; returns its handle and join handle.
pub fn spawn(
    sched: Scheduler,
    store: Arc<dyn Store>,
    dialer: transport::AgentDialer,
    shutdown: CancellationToken,
) -> (
    SchedulerHandle,
    tokio::task::JoinHandle<Result<(), CoordinatorError>>,
) {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let io = Io {
        tx: tx.clone(),
        dialer,
        clients: HashMap::new(),
        acks: HashMap::new(),
        singles_only: Arc::default(),
    };
    let join = tokio::spawn(run(sched, store, rx, io, shutdown));
    (SchedulerHandle { tx }, join)
}

/// A batch whose commit is under way: what to do once it is durable.
struct InFlight<'a> {
    commit: crate::store::BoxFuture<'a, Result<crate::store::Revision, crate::store::StoreError>>,
    written: Vec<crate::scheduler::Written>,
    post: Vec<Post>,
    effects: Vec<Effect>,
}

/// The loop. While one batch is being committed (an fsync, on a blocking
/// thread) the next batch is already being handled in memory; it is flushed
/// as soon as the commit before it is durable, so the scheduler never waits
/// for the disk with messages in its inbox. Effects and replies of a batch
/// are taken when it is flushed and performed only after its commit: nothing
/// leaves this task before the state that caused it is durable.
async fn run(
    mut sched: Scheduler,
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Msg>,
    mut io: Io,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut post = Vec::new();
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
                    Ok(rev) => sched.committed(done.written, rev),
                    Err(e) => {
                        // Memory is ahead of the store now: stop rather than act on
                        // state that is not durable. A restart reloads the truth.
                        error!(error = %e, "store commit failed; stopping the scheduler");
                        return Err(e.into());
                    }
                }
                reply(done.post);
                perform_all(&mut io, done.effects);
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                handle(&mut sched, &mut io, msg, &mut post);
                for _ in 1..MAX_BATCH_MSGS {
                    match rx.try_recv() {
                        Ok(msg) => handle(&mut sched, &mut io, msg, &mut post),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => sched.tick(Now::read()),
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
                commit: store.commit(ops),
                written,
                post: std::mem::take(&mut post),
                effects: sched.take_effects(),
            });
        } else {
            sched.publish_and_evict();
            reply(std::mem::take(&mut post));
            perform_all(&mut io, sched.take_effects());
        }
    }
    debug!("scheduler stopped");
    Ok(())
}

fn reply(post: Vec<Post>) {
    for p in post {
        match p {
            Post::Registered(reply, resp) => {
                let _ = reply.send(resp);
            }
            Post::Started(reply, id) => {
                let _ = reply.send(id);
            }
            Post::Resumed(reply, r) => {
                let _ = reply.send(r);
            }
            Post::AgentSet(reply, r) => {
                let _ = reply.send(r);
            }
        }
    }
}

fn handle(sched: &mut Scheduler, io: &mut Io, msg: Msg, post: &mut Vec<Post>) {
    let now = Now::read();
    match msg {
        Msg::Register { reg, reply } => {
            // It may have been upgraded: try StartJobs with it again.
            io.singles_only
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&reg.name);
            let resp = sched.register(reg, now);
            post.push(Post::Registered(reply, resp));
        }
        Msg::OpenStream {
            agent,
            boot_id,
            fingerprint,
            acks,
            reply,
        } => {
            let r = sched.open_stream(&agent, &boot_id, &fingerprint, now);
            if r.is_ok() {
                io.acks.insert(agent, acks);
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
            post.push(Post::Started(reply, r));
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
            post.push(Post::Resumed(reply, r));
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
            post.push(Post::AgentSet(reply, r));
        }
        Msg::Cancel { id, reason, reply } => {
            let _ = reply.send(sched.cancel(&id, &reason, now));
        }
        Msg::CancelChild {
            id,
            task,
            index,
            reason,
            reply,
        } => {
            let _ = reply.send(sched.cancel_child(&id, &task, index, &reason, now));
        }
        Msg::ListAgents { reply } => {
            let _ = reply.send(listings(sched));
        }
        Msg::Metrics { reply } => {
            let _ = reply.send(MetricsSnapshot {
                latency: sched.latency.clone(),
                stats: sched.stats,
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
