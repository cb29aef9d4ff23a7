//! The effects of a committed batch, performed outside the scheduler: a
//! StartJob or CancelJob call to an agent (each in its own task, its answer
//! sent back as a message), an acknowledgement on a completion stream, and
//! the rows of a task read from the agents that kept them. [`Io`] is the
//! loop's real `Performer`: the loop calls it only with a durable batch.
//!
//! An edge: the scheduler's domain values become protocol messages here, and
//! the agents' answers domain values, through `grpc/agent_convert.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_proto as pb;
use pb::agent_service_client::AgentServiceClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::msg::Msg;
use super::run::Performer;
use crate::domain::{CancelSpec, DispatchId, DispatchOutcome, DispatchSpec};
use crate::scheduler::{ChildRef, Effect};
use crate::transport;

/// How long a StartJob(s) or CancelJob call may take.
const DISPATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The connections to agents, and where answers go back to the loop.
pub(crate) struct Io {
    /// The loop's own inbox: answers of calls come back as messages.
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) dialer: transport::AgentDialer,
    /// agent → (address, TLS generation, client).
    pub(super) clients: HashMap<String, (String, u64, AgentServiceClient<Channel>)>,
    pub(super) acks: HashMap<String, watch::Sender<u64>>,
    /// Agents that do not serve `StartJobs` (an earlier release): one
    /// `StartJob` per child for them, until they register again.
    pub(super) singles_only: Arc<Mutex<HashSet<String>>>,
    /// Whether this term has dispatched yet (its first dispatch is logged:
    /// after a failover, the moment the new leader is at work).
    pub(super) dispatched: bool,
    /// The spans of traced executions (nothing in it when none is traced).
    pub(super) traces: crate::traces::Traces,
}

impl Io {
    pub(super) fn new(tx: mpsc::Sender<Msg>, dialer: transport::AgentDialer) -> Io {
        Io {
            tx,
            dialer,
            clients: HashMap::new(),
            acks: HashMap::new(),
            singles_only: Arc::default(),
            dispatched: false,
            traces: crate::traces::Traces::default(),
        }
    }
}

impl Performer for Io {
    fn perform(&mut self, effects: Vec<Effect>) {
        perform_all(self, effects);
    }

    fn registered(&mut self, name: &str) {
        // It may have been upgraded: try StartJobs with it again.
        self.singles_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn stream_opened(&mut self, name: String, acks: watch::Sender<u64>) {
        self.acks.insert(name, acks);
    }
}

/// Performs the effects of one flushed batch. The dispatches to one agent go
/// out together: one `StartJobs` call for several (in chunks of
/// [`pb::START_JOBS_MAX`]), a `StartJob` for one. Everything else is performed
/// one by one, in order.
pub(super) fn perform_all(io: &mut Io, effects: Vec<Effect>) {
    let mut batches: Vec<(String, String, Vec<Job>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for effect in effects {
        match effect {
            Effect::Dispatch {
                agent,
                address,
                child,
                attempt,
                spec,
            } => {
                let job = Job {
                    child,
                    attempt,
                    spec,
                };
                match index.get(&agent) {
                    Some(&i) if batches[i].1 == address => batches[i].2.push(job),
                    _ => {
                        index.insert(agent.clone(), batches.len());
                        batches.push((agent, address, vec![job]));
                    }
                }
            }
            other => perform(io, other),
        }
    }
    for (agent, address, jobs) in batches {
        dispatch(io, agent, address, jobs);
    }
}

/// One child's StartJob.
struct Job {
    child: ChildRef,
    attempt: u32,
    spec: Box<DispatchSpec>,
}

/// A job sent: which child's attempt the answer is about.
struct Sent {
    child: ChildRef,
    attempt: u32,
}

impl Job {
    fn sent(&self) -> Sent {
        Sent {
            child: self.child,
            attempt: self.attempt,
        }
    }
}

/// Sends `jobs` to one agent; every answer (or the lack of one) comes back
/// to the scheduler as a [`Msg::Dispatched`] per child.
fn dispatch(io: &mut Io, agent: String, address: String, jobs: Vec<Job>) {
    if !io.dispatched {
        io.dispatched = true;
        tracing::info!(%agent, jobs = jobs.len(), "first dispatch of this term");
    }
    let generation = io.dialer.generation();
    let client = match io.clients.get(&agent) {
        Some((addr, g, c)) if *addr == address && *g == generation => c.clone(),
        _ => match io.dialer.client(&agent, &address) {
            Ok(c) => {
                io.clients
                    .insert(agent.clone(), (address.clone(), generation, c.clone()));
                c
            }
            Err(e) => {
                warn!(%agent, %address, error = %e, "cannot build a client for the agent");
                let outcome = DispatchOutcome::Unknown(e.to_string());
                tokio::spawn(report(
                    io.tx.clone(),
                    agent,
                    jobs.iter().map(Job::sent).collect(),
                    vec![],
                    outcome,
                    Duration::ZERO,
                ));
                return;
            }
        },
    };
    let tx = io.tx.clone();
    let singles = io.singles_only.clone();
    let one_by_one = jobs.len() == 1
        || singles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&agent);
    if one_by_one {
        for job in jobs {
            let (client, tx, agent) = (client.clone(), tx.clone(), agent.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let span = crate::traces::dispatch_span(&job.spec.traceparent, &agent);
                let outcome = start_job(client, *job.spec).await;
                let rtt = sent.elapsed();
                if let Some(span) = span {
                    crate::traces::end_dispatch(span, &outcome);
                }
                let _ = tx
                    .send(Msg::Dispatched {
                        child: job.child,
                        agent,
                        attempt: job.attempt,
                        outcome,
                        rtt,
                    })
                    .await;
            });
        }
        return;
    }
    let mut jobs = jobs;
    while !jobs.is_empty() {
        let rest = jobs.split_off(jobs.len().min(pb::START_JOBS_MAX));
        let chunk = std::mem::replace(&mut jobs, rest);
        let (client, tx, agent, singles) =
            (client.clone(), tx.clone(), agent.clone(), singles.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let spans: Vec<_> = chunk
                .iter()
                .map(|j| crate::traces::dispatch_span(&j.spec.traceparent, &agent))
                .collect();
            let (chunk, requests): (Vec<Sent>, Vec<pb::StartJobRequest>) = chunk
                .into_iter()
                .map(|j| (j.sent(), pb::StartJobRequest::from(*j.spec)))
                .unzip();
            let (answers, otherwise) = start_jobs(client, requests).await;
            let rtt = sent.elapsed();
            if otherwise.is_none() && answers.is_empty() {
                // StartJobs is not served: an agent of an earlier release.
                singles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(agent.clone());
            }
            let otherwise = otherwise.unwrap_or_else(|| {
                DispatchOutcome::Unknown(
                    "the agent does not serve StartJobs yet; resending one by one".to_string(),
                )
            });
            for (i, span) in spans.into_iter().enumerate() {
                if let Some(span) = span {
                    crate::traces::end_dispatch(span, answers.get(i).unwrap_or(&otherwise));
                }
            }
            report(tx, agent, chunk, answers, otherwise, rtt).await;
        });
    }
}

/// Sends one `Msg::Dispatched` per job: its answer from `answers` (same
/// order), or `otherwise` where there is none.
async fn report(
    tx: mpsc::Sender<Msg>,
    agent: String,
    jobs: Vec<Sent>,
    answers: Vec<DispatchOutcome>,
    otherwise: DispatchOutcome,
    rtt: Duration,
) {
    let mut answers = answers.into_iter();
    for job in jobs {
        let outcome = answers.next().unwrap_or_else(|| otherwise.clone());
        let _ = tx
            .send(Msg::Dispatched {
                child: job.child,
                agent: agent.clone(),
                attempt: job.attempt,
                outcome,
                rtt,
            })
            .await;
    }
}

/// Several jobs in one `StartJobs` call: the answers in order, and what the
/// jobs without an answer get (`None`: the agent does not serve `StartJobs`).
async fn start_jobs(
    mut client: AgentServiceClient<Channel>,
    jobs: Vec<pb::StartJobRequest>,
) -> (Vec<DispatchOutcome>, Option<DispatchOutcome>) {
    let n = jobs.len();
    let call = client.start_jobs(pb::StartJobsRequest { jobs });
    match tokio::time::timeout(DISPATCH_TIMEOUT, call).await {
        Err(_) => (
            vec![],
            Some(DispatchOutcome::Unknown("StartJobs timed out".to_string())),
        ),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => (vec![], None),
        Ok(Err(status)) => (vec![], Some(failed_call("StartJobs", &status))),
        Ok(Ok(resp)) => {
            let results = resp.into_inner().results;
            if results.len() != n {
                warn!(
                    sent = n,
                    answered = results.len(),
                    "StartJobs answered a different number of jobs"
                );
            }
            let answers = results
                .into_iter()
                .take(n)
                .map(DispatchOutcome::from)
                .collect();
            (
                answers,
                Some(DispatchOutcome::Unknown(
                    "StartJobs gave no answer for this job".to_string(),
                )),
            )
        }
    }
}

/// What a failed dispatch call means: no answer (`Unknown`: ask again), or,
/// when the TLS handshake met a certificate of another agent at that
/// address, `WrongAgent` (asking again would never reach the right one).
fn failed_call(call: &str, status: &tonic::Status) -> DispatchOutcome {
    let mut text = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if text.contains("not valid for name") || text.contains("NotValidForName") {
        DispatchOutcome::WrongAgent(text)
    } else {
        DispatchOutcome::Unknown(format!("{call} failed: {text}"))
    }
}

fn perform(io: &mut Io, effect: Effect) {
    match effect {
        Effect::Cancel {
            agent,
            address,
            spec,
        } => {
            let client = match io.dialer.client(&agent, &address) {
                Ok(c) => c,
                Err(e) => {
                    warn!(%agent, error = %e, "cannot build a client to cancel a job");
                    return;
                }
            };
            tokio::spawn(cancel_job(client, agent, spec));
        }
        // (perform_all batches dispatches before they get here)
        dispatch @ Effect::Dispatch { .. } => perform_all(io, vec![dispatch]),
        Effect::Ack { agent, seq } => {
            if let Some(tx) = io.acks.get(&agent) {
                tx.send_if_modified(|cur| {
                    let newer = seq > *cur;
                    if newer {
                        *cur = seq;
                    }
                    newer
                });
            }
        }
        Effect::ResetStream { agent } => {
            io.acks.remove(&agent);
        }
        Effect::Trace(event) => io.traces.record(event),
        Effect::FetchRows {
            execution_id,
            task,
            sources,
        } => {
            let clients: Result<Vec<_>, String> = sources
                .into_iter()
                .map(
                    |(agent, address, id)| match io.dialer.client(&agent, &address) {
                        Ok(c) => Ok((agent, c, id)),
                        Err(e) => Err(format!("cannot reach agent {agent}: {e}")),
                    },
                )
                .collect();
            let tx = io.tx.clone();
            tokio::spawn(async move {
                let rows = match clients {
                    Ok(clients) => fetch_rows(clients).await,
                    Err(e) => Err(e),
                };
                let _ = tx
                    .send(Msg::RowsFetched {
                        execution_id,
                        task,
                        rows,
                    })
                    .await;
            });
        }
    }
}

/// Most bytes of rows one foreach reads (they become its children's items,
/// kept in memory and in the store).
const ROWS_BYTES_MAX: usize = 128 << 20;

/// The rows of several children, in order, up to one more than a foreach may
/// take (so that too many is an error, not a silent cut).
async fn fetch_rows(
    clients: Vec<(String, AgentServiceClient<Channel>, DispatchId)>,
) -> Result<Vec<String>, String> {
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    for (agent, mut client, id) in clients {
        let req = pb::StreamJobRowsRequest {
            dispatch_id: Some(id.clone().into()),
        };
        let mut stream = tokio::time::timeout(Duration::from_secs(10), client.stream_rows(req))
            .await
            .map_err(|_| format!("agent {agent} did not answer for the rows of {id}"))?
            .map_err(|s| format!("agent {agent}: rows of {id}: {}", s.message()))?
            .into_inner();
        loop {
            let batch = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .map_err(|_| format!("agent {agent} stalled sending the rows of {id}"))?
                .map_err(|s| format!("agent {agent}: rows of {id}: {}", s.message()))?;
            let Some(batch) = batch else { break };
            bytes += batch.rows.iter().map(String::len).sum::<usize>();
            if bytes > ROWS_BYTES_MAX {
                return Err(format!(
                    "the rows exceed {} MiB; a foreach over rows takes at most that much",
                    ROWS_BYTES_MAX >> 20
                ));
            }
            rows.extend(batch.rows);
            if rows.len() > baton_package::MAX_FOREACH_ITEMS {
                return Ok(rows);
            }
            if batch.end {
                break;
            }
        }
    }
    Ok(rows)
}

async fn start_job(mut client: AgentServiceClient<Channel>, spec: DispatchSpec) -> DispatchOutcome {
    let request = pb::StartJobRequest::from(spec);
    match tokio::time::timeout(DISPATCH_TIMEOUT, client.start_job(request)).await {
        Err(_) => DispatchOutcome::Unknown("StartJob timed out".to_string()),
        Ok(Err(status)) => failed_call("StartJob", &status),
        Ok(Ok(resp)) => DispatchOutcome::from(resp.into_inner()),
    }
}

/// Asks an agent to stop a job, a few times if the agent cannot be reached.
/// (If it stays unreachable its lease expires and the child ends `cancelled`.)
async fn cancel_job(mut client: AgentServiceClient<Channel>, agent: String, spec: CancelSpec) {
    let request = pb::CancelJobRequest::from(spec);
    for attempt in 1..=3u32 {
        match tokio::time::timeout(DISPATCH_TIMEOUT, client.cancel_job(request.clone())).await {
            Ok(Ok(_)) => return,
            Ok(Err(status)) => {
                debug!(%agent, attempt, error = %status.message(), "CancelJob failed")
            }
            Err(_) => debug!(%agent, attempt, "CancelJob timed out"),
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    warn!(%agent, "could not reach the agent to cancel a job");
}

#[cfg(test)]
#[path = "effects_tests.rs"]
mod tests;
