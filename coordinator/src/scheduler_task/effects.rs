//! The effects of a committed batch, performed outside the scheduler: a
//! StartJob or CancelJob call to an agent (each in its own task, its answer
//! sent back as a message), an acknowledgement on a completion stream, and
//! the rows of a task read from the agents that kept them.

use std::time::{Duration, Instant};

use baton_proto as pb;
use pb::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::{DISPATCH_TIMEOUT, Io, Msg};
use crate::scheduler::{DispatchOutcome, Effect};

pub(super) fn perform(io: &mut Io, effect: Effect) {
    match effect {
        Effect::Cancel {
            agent,
            address,
            request,
        } => {
            let client = match io.dialer.client(&agent, &address) {
                Ok(c) => c,
                Err(e) => {
                    warn!(%agent, error = %e, "cannot build a client to cancel a job");
                    return;
                }
            };
            tokio::spawn(cancel_job(client, agent, request));
        }
        Effect::Dispatch {
            agent,
            address,
            child,
            attempt,
            request,
        } => {
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
                        let tx = io.tx.clone();
                        tokio::spawn(async move {
                            let outcome = DispatchOutcome::Unknown(e.to_string());
                            let _ = tx
                                .send(Msg::Dispatched {
                                    child,
                                    agent,
                                    attempt,
                                    outcome,
                                    rtt: Duration::ZERO,
                                })
                                .await;
                        });
                        return;
                    }
                },
            };
            let tx = io.tx.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let outcome = start_job(client, *request).await;
                let rtt = sent.elapsed();
                let _ = tx
                    .send(Msg::Dispatched {
                        child,
                        agent,
                        attempt,
                        outcome,
                        rtt,
                    })
                    .await;
            });
        }
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
    clients: Vec<(String, AgentServiceClient<Channel>, pb::DispatchId)>,
) -> Result<Vec<String>, String> {
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    for (agent, mut client, id) in clients {
        let req = pb::StreamJobRowsRequest {
            dispatch_id: Some(id.clone()),
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

async fn start_job(
    mut client: AgentServiceClient<Channel>,
    request: pb::StartJobRequest,
) -> DispatchOutcome {
    match tokio::time::timeout(DISPATCH_TIMEOUT, client.start_job(request)).await {
        Err(_) => DispatchOutcome::Unknown("StartJob timed out".to_string()),
        Ok(Err(status)) => {
            DispatchOutcome::Unknown(format!("StartJob failed: {}", status.message()))
        }
        Ok(Ok(resp)) => match resp.into_inner().outcome {
            Some(pb::start_job_response::Outcome::Accepted(_)) => DispatchOutcome::Accepted,
            Some(pb::start_job_response::Outcome::Rejected(r)) => DispatchOutcome::Rejected {
                code: pb::RejectCode::try_from(r.code).unwrap_or(pb::RejectCode::Unspecified),
                reason: r.reason,
            },
            None => DispatchOutcome::Rejected {
                code: pb::RejectCode::Unspecified,
                reason: "agent answered with neither accepted nor rejected".to_string(),
            },
        },
    }
}

/// Asks an agent to stop a job, a few times if the agent cannot be reached.
/// (If it stays unreachable its lease expires and the child ends `cancelled`.)
async fn cancel_job(
    mut client: AgentServiceClient<Channel>,
    agent: String,
    request: pb::CancelJobRequest,
) {
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
