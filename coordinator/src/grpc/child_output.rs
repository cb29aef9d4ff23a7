//! A child's logs and rows, read from its agent through the coordinator
//! (`ControlService.StreamLogs` / `StreamRows`).
//!
//! The coordinator keeps no logs or rows: they stay on the agent that ran the
//! child ([`baton_agent`'s `logs` and `rows` modules]). For a request it finds the
//! child by its path (`fan[3]`, as `exec show` and the agents' logs name it), the
//! attempt (the latest unless one is asked for) and the agent of that attempt, dials
//! that agent as it dials for dispatch (mutual TLS, the agent must prove its name)
//! and passes the agent's stream through item by item: nothing is buffered here, so
//! a slow client slows the agent's reader (gRPC flow control end to end), and a
//! client that goes away closes the agent's stream.
//!
//! The agent's errors come back with the coordinator's codes: `OUTPUT_GONE`,
//! `ROWS_UNAVAILABLE`, `AGENT_BUSY`, and `AGENT_UNREACHABLE` for anything that
//! prevents reaching the agent (lost, unknown, no answer, a broken stream).
//!
//! [`baton_agent`'s `logs` and `rows` modules]: ../../../agent/src/logs.rs

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use baton_proto as pb;
use tokio_stream::{Stream, StreamExt};

use super::error_status::status;
use crate::api::Coordinator;
use crate::error::CoordinatorError;
use crate::records::{ChildRecord, Phase};
use crate::transport::AgentDialer;

/// How long the agent has to answer the opening of a stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest child path accepted.
const CHILD_PATH_BYTES_MAX: usize = 512;

/// A child of an execution: its task and its index in that task (`fan[3]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPath {
    pub task: String,
    pub index: u32,
}

impl ChildPath {
    /// `TASK[INDEX]`, `TASK/INDEX`, or `TASK` alone for index 0 (a task that is
    /// not a foreach has one child, index 0).
    pub fn parse(s: &str) -> Result<ChildPath, CoordinatorError> {
        let invalid = |why: &str| {
            CoordinatorError::InvalidRequest(format!(
                "child '{s}' {why}: write TASK[INDEX] as `baton exec show` lists it, e.g. fan[3]"
            ))
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(invalid("is empty"));
        }
        if s.len() > CHILD_PATH_BYTES_MAX {
            return Err(invalid("is too long"));
        }
        let (task, index) = if let Some(head) = s.strip_suffix(']') {
            let (task, index) = head.rsplit_once('[').ok_or_else(|| invalid("has no '['"))?;
            (task, Some(index))
        } else if let Some((task, index)) = s.rsplit_once('/')
            && !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
        {
            (task, Some(index))
        } else {
            (s, None)
        };
        if task.is_empty() {
            return Err(invalid("names no task"));
        }
        let index = match index {
            None => 0,
            Some(i) => i
                .trim()
                .parse()
                .map_err(|_| invalid("has an index that is not a number"))?,
        };
        Ok(ChildPath {
            task: task.to_string(),
            index,
        })
    }
}

impl fmt::Display for ChildPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.task, self.index)
    }
}

/// Where one attempt of a child ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub agent: String,
    pub address: String,
    pub dispatch: pb::DispatchId,
    /// The child's phase now (of its latest attempt).
    pub phase: Phase,
    /// Whether `dispatch` is the child's latest attempt.
    pub latest: bool,
}

/// Picks the child and the attempt (`0`: the latest that was placed on an agent).
pub fn pick(
    execution_id: &str,
    children: &[ChildRecord],
    path: &ChildPath,
    attempt: u32,
) -> Result<(pb::DispatchId, String, Phase, bool), CoordinatorError> {
    let Some(c) = children
        .iter()
        .find(|c| c.task == path.task && c.index == path.index)
    else {
        return Err(no_child(execution_id, children, path));
    };
    // A child waiting for its next attempt still has the logs of the last one.
    let placed = c.attempt_agents.len() as u32;
    if placed == 0 {
        return Err(CoordinatorError::ChildNotStarted(format!(
            "child {path} of execution {execution_id} has not started on an agent yet ({})",
            c.phase.as_str()
        )));
    }
    let n = if attempt == 0 { placed } else { attempt };
    if n > placed {
        return Err(CoordinatorError::InvalidRequest(format!(
            "child {path} has run {placed} attempt(s); there is no attempt {n}"
        )));
    }
    let agent = c.attempt_agents[n as usize - 1].to_string();
    let latest = n == c.attempt;
    if latest && c.phase == Phase::Dispatching {
        return Err(CoordinatorError::ChildNotStarted(format!(
            "child {path} is being dispatched to {agent}; its logs come once it runs"
        )));
    }
    let dispatch = pb::DispatchId {
        execution_id: execution_id.to_string(),
        task_path: c.task.to_string(),
        item_index: c.index,
        attempt: n,
    };
    Ok((dispatch, agent, c.phase, latest))
}

/// `CHILD_NOT_FOUND`, naming the children the execution has.
fn no_child(execution_id: &str, children: &[ChildRecord], path: &ChildPath) -> CoordinatorError {
    let mut tasks: Vec<(&str, u32)> = Vec::new();
    for c in children {
        match tasks.iter_mut().find(|(t, _)| *t == c.task) {
            Some((_, n)) => *n = (*n).max(c.index + 1),
            None => tasks.push((&c.task, c.index + 1)),
        }
    }
    let have: Vec<String> = tasks
        .iter()
        .map(|(t, n)| match n {
            1 => format!("{t}[0]"),
            n => format!("{t}[0]..{t}[{}]", n - 1),
        })
        .collect();
    CoordinatorError::ChildNotFound(format!(
        "execution {execution_id} has no child {path}; its children are {}",
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    ))
}

/// Opens logs and rows streams on the agents that ran children.
#[derive(Clone)]
pub struct ChildOutputs {
    pub(crate) coordinator: Coordinator,
    pub(crate) dialer: AgentDialer,
}

pub type Proxied<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

impl ChildOutputs {
    pub fn new(coordinator: Coordinator, dialer: AgentDialer) -> ChildOutputs {
        ChildOutputs {
            coordinator,
            dialer,
        }
    }

    /// The agent and attempt of a child, with the agent's address.
    pub async fn target(
        &self,
        execution_id: &str,
        child: &str,
        attempt: u32,
    ) -> Result<Target, CoordinatorError> {
        let path = ChildPath::parse(child)?;
        // By key: an execution of a million children is not read to find one.
        let found = self
            .coordinator
            .child(execution_id, &path.task, path.index)
            .await?;
        let (dispatch, agent, phase, latest) = match found {
            Some(c) => pick(execution_id, std::slice::from_ref(&c), &path, attempt)?,
            None => {
                // No such child: the error names those there are.
                let view = self.coordinator.view_limited(execution_id, 10_000).await?;
                pick(execution_id, &view.children, &path, attempt)?
            }
        };
        let listing = self.coordinator.agents().await?;
        let Some(a) = listing.iter().find(|a| a.rec.name == agent) else {
            return Err(CoordinatorError::AgentUnreachable(format!(
                "child {path} ran on agent {agent}, which this coordinator no longer knows"
            )));
        };
        if matches!(a.state, "lost" | "revoked") {
            return Err(CoordinatorError::AgentUnreachable(format!(
                "child {path} ran on agent {agent}, which is {}; its files are there until it \
                 comes back",
                a.state
            )));
        }
        Ok(Target {
            address: a.rec.address.clone(),
            agent,
            dispatch,
            phase,
            latest,
        })
    }

    fn client(
        &self,
        t: &Target,
    ) -> Result<
        pb::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
        CoordinatorError,
    > {
        self.dialer
            .client(&t.agent, &t.address)
            .map(|c| c.max_decoding_message_size(crate::MAX_MESSAGE_BYTES))
    }

    /// The agent's log stream of `t`, passed through.
    pub async fn logs(
        &self,
        t: &Target,
        mut req: pb::StreamJobLogsRequest,
    ) -> Result<Proxied<pb::LogChunk>, CoordinatorError> {
        req.dispatch_id = Some(t.dispatch.clone());
        let mut client = self.client(t)?;
        let opened = tokio::time::timeout(OPEN_TIMEOUT, client.stream_logs(req)).await;
        pass_through(&t.agent, opened)
    }

    /// The agent's row stream of `t`, passed through.
    pub async fn rows(&self, t: &Target) -> Result<Proxied<pb::RowBatch>, CoordinatorError> {
        if t.latest {
            match t.phase {
                Phase::Succeeded => {}
                p if p.is_terminal() => {
                    return Err(CoordinatorError::RowsUnavailable(format!(
                        "child {}[{}] ended {}: rows are kept only from a child that succeeded",
                        t.dispatch.task_path,
                        t.dispatch.item_index,
                        p.as_str()
                    )));
                }
                _ => {
                    return Err(CoordinatorError::RowsUnavailable(format!(
                        "child {}[{}] is {}: its rows can be read once it has succeeded",
                        t.dispatch.task_path,
                        t.dispatch.item_index,
                        t.phase.as_str()
                    )));
                }
            }
        }
        let req = pb::StreamJobRowsRequest {
            dispatch_id: Some(t.dispatch.clone()),
        };
        let mut client = self.client(t)?;
        let opened = tokio::time::timeout(OPEN_TIMEOUT, client.stream_rows(req)).await;
        pass_through(&t.agent, opened)
    }
}

type Opened<T> = Result<
    Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    tokio::time::error::Elapsed,
>;

fn pass_through<T: Send + 'static>(
    agent: &str,
    opened: Opened<T>,
) -> Result<Proxied<T>, CoordinatorError> {
    let stream = match opened {
        Err(_) => {
            return Err(CoordinatorError::AgentUnreachable(format!(
                "agent {agent} did not answer within {} s",
                OPEN_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(s)) => return Err(from_agent(agent, &s)),
        Ok(Ok(r)) => r.into_inner(),
    };
    let agent = agent.to_string();
    Ok(Box::pin(stream.map(move |item| {
        item.map_err(|s| status(from_agent(&agent, &s)))
    })))
}

/// An agent's refusal or failure, in the coordinator's codes.
pub fn from_agent(agent: &str, s: &tonic::Status) -> CoordinatorError {
    let code = s
        .metadata()
        .get(super::error_status::ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The agent's message starts with its code: keep the words only.
    let msg = match s.message().split_once(": ") {
        Some((c, rest)) if c == code => rest,
        _ => s.message(),
    };
    let msg = format!("agent {agent}: {msg}");
    match code {
        "AGENT_JOB_UNKNOWN" | "AGENT_OUTPUT_GONE" => CoordinatorError::OutputGone(msg),
        "AGENT_ROWS_UNAVAILABLE" => CoordinatorError::RowsUnavailable(msg),
        "AGENT_BUSY" => CoordinatorError::AgentBusy(msg),
        _ => CoordinatorError::AgentUnreachable(format!("{msg} ({:?})", s.code())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(task: &str, index: u32, phase: Phase, agents: &[&str]) -> ChildRecord {
        ChildRecord {
            phase,
            attempt: agents.len().max(1) as u32,
            agent: agents.last().map(|a| (*a).into()),
            attempt_agents: agents.iter().map(|a| (*a).into()).collect(),
            ..crate::scheduler::flow::new_child(&task.into(), index, index.to_string())
        }
    }

    #[test]
    fn child_paths_parse_in_every_accepted_form() {
        let p = |s: &str| ChildPath::parse(s).map(|c| (c.task, c.index));
        assert_eq!(p("fan[3]").unwrap(), ("fan".into(), 3));
        assert_eq!(p(" fan/12 ").unwrap(), ("fan".into(), 12));
        assert_eq!(p("load").unwrap(), ("load".into(), 0));
        assert_eq!(p("a/b[2]").unwrap(), ("a/b".into(), 2));
        assert_eq!(p("a/b").unwrap(), ("a/b".into(), 0), "not an index");
        for bad in ["", "[3]", "fan[x]", "fan[-1]", "fan]", "/3"] {
            let e = ChildPath::parse(bad).unwrap_err();
            assert_eq!(e.code(), "INVALID_REQUEST", "{bad}");
        }
        assert_eq!(ChildPath::parse("fan/3").unwrap().to_string(), "fan[3]");
    }

    #[test]
    fn the_latest_attempt_and_its_agent_are_picked() {
        let kids = vec![
            child("fan", 0, Phase::Running, &["a1", "a2"]),
            child("fan", 1, Phase::Pending, &[]),
            child("fan", 2, Phase::Dispatching, &["a1"]),
            child("load", 0, Phase::Succeeded, &["a3"]),
        ];
        let path = |s: &str| ChildPath::parse(s).unwrap();
        let (d, agent, _, latest) = pick("e", &kids, &path("fan[0]"), 0).unwrap();
        assert_eq!((d.attempt, agent.as_str(), latest), (2, "a2", true));
        let (d, agent, _, latest) = pick("e", &kids, &path("fan[0]"), 1).unwrap();
        assert_eq!((d.attempt, agent.as_str(), latest), (1, "a1", false));
        let e = pick("e", &kids, &path("fan[0]"), 3).unwrap_err();
        assert_eq!(e.code(), "INVALID_REQUEST");
        let e = pick("e", &kids, &path("fan[1]"), 0).unwrap_err();
        assert_eq!(e.code(), "CHILD_NOT_STARTED");
        let e = pick("e", &kids, &path("fan[2]"), 0).unwrap_err();
        assert_eq!(e.code(), "CHILD_NOT_STARTED");
        let (d, agent, phase, _) = pick("e", &kids, &path("load"), 0).unwrap();
        assert_eq!(
            (d.task_path.as_str(), d.item_index, agent.as_str(), phase),
            ("load", 0, "a3", Phase::Succeeded)
        );
        let e = pick("e", &kids, &path("fan[9]"), 0).unwrap_err();
        assert_eq!(e.code(), "CHILD_NOT_FOUND");
        assert!(
            e.to_string().contains("fan[0]..fan[2], load[0]"),
            "the message lists the children: {e}"
        );
    }

    #[test]
    fn agent_errors_get_the_coordinator_s_codes() {
        let with_code = |grpc: tonic::Code, code: &str| {
            let mut s = tonic::Status::new(grpc, format!("{code}: the files are gone"));
            s.metadata_mut().insert(
                crate::grpc::error_status::ERROR_CODE_KEY,
                code.parse().unwrap(),
            );
            s
        };
        let e = from_agent("a1", &with_code(tonic::Code::NotFound, "AGENT_OUTPUT_GONE"));
        assert_eq!(e.code(), "OUTPUT_GONE");
        assert_eq!(e.to_string(), "agent a1: the files are gone");
        let e = from_agent("a1", &with_code(tonic::Code::NotFound, "AGENT_JOB_UNKNOWN"));
        assert_eq!(e.code(), "OUTPUT_GONE");
        let e = from_agent(
            "a1",
            &with_code(tonic::Code::FailedPrecondition, "AGENT_ROWS_UNAVAILABLE"),
        );
        assert_eq!(e.code(), "ROWS_UNAVAILABLE");
        let e = from_agent(
            "a1",
            &with_code(tonic::Code::ResourceExhausted, "AGENT_BUSY"),
        );
        assert_eq!(e.code(), "AGENT_BUSY");
        let e = from_agent("a1", &tonic::Status::unavailable("connection refused"));
        assert_eq!(e.code(), "AGENT_UNREACHABLE");
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
}
