//! Domain types of the agent, validated on receive from the protocol types.
//!
//! The tonic edge converts each request with `TryFrom`; everything past the edge
//! works with these types and never has to re-check a field.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use baton_proto as pb;

use crate::error::AgentError;

/// Bounds on request fields, so one request cannot make the agent allocate without limit.
const ID_BYTES_MAX: usize = 512;
const PARAMETERS_MAX: usize = 1_000;
const PARAMETER_BYTES_MAX: usize = 64 * 1024;
const TRACEPARENT_BYTES_MAX: usize = 512;

/// The idempotency key of one attempt of one child job (a validated `DispatchId`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DispatchKey {
    pub execution_id: String,
    pub task_path: String,
    pub item_index: u32,
    pub attempt: u32,
}

impl DispatchKey {
    /// The protocol form of this key.
    pub fn to_proto(&self) -> pb::DispatchId {
        pb::DispatchId {
            execution_id: self.execution_id.clone(),
            task_path: self.task_path.clone(),
            item_index: self.item_index,
            attempt: self.attempt,
        }
    }

    /// Converts an optional protocol id, naming `field` in the error when it is absent.
    pub fn from_field(id: Option<pb::DispatchId>, field: &str) -> Result<DispatchKey, AgentError> {
        let id = id.ok_or_else(|| AgentError::InvalidRequest(format!("{field} is missing")))?;
        DispatchKey::try_from(id)
            .map_err(|e| AgentError::InvalidRequest(format!("{field}.{}", strip_invalid(&e))))
    }
}

fn strip_invalid(e: &AgentError) -> String {
    match e {
        AgentError::InvalidRequest(m) => m.clone(),
        other => other.to_string(),
    }
}

impl TryFrom<pb::DispatchId> for DispatchKey {
    type Error = AgentError;

    fn try_from(id: pb::DispatchId) -> Result<Self, Self::Error> {
        let invalid = |m: &str| Err(AgentError::InvalidRequest(m.to_string()));
        if id.execution_id.is_empty() {
            return invalid("execution_id is empty");
        }
        if id.execution_id.len() > ID_BYTES_MAX {
            return invalid("execution_id is too long");
        }
        if id.task_path.is_empty() {
            return invalid("task_path is empty");
        }
        if id.task_path.len() > ID_BYTES_MAX {
            return invalid("task_path is too long");
        }
        if id.attempt == 0 {
            return invalid("attempt must be at least 1");
        }
        Ok(DispatchKey {
            execution_id: id.execution_id,
            task_path: id.task_path,
            item_index: id.item_index,
            attempt: id.attempt,
        })
    }
}

impl fmt::Display for DispatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}[{}]#{}",
            self.execution_id, self.task_path, self.item_index, self.attempt
        )
    }
}

/// A coordinator's fencing epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The package of a dispatch as received (not yet parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSource {
    pub name: String,
    /// Lower-case hex SHA-256 the coordinator claims for the content.
    pub content_hash: String,
    /// The TOML text, when the coordinator sent it inline.
    pub content: Option<String>,
}

/// A validated `StartJobRequest`.
#[derive(Clone, PartialEq, Eq)]
pub struct StartJob {
    pub dispatch: DispatchKey,
    pub package: PackageSource,
    /// Parameter overrides. May hold sensitive values: never log them.
    pub parameters: BTreeMap<String, String>,
    pub epoch: Epoch,
    /// Wall-clock budget of the whole job; `None` means only per-task timeouts apply.
    pub deadline: Option<Duration>,
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with `traceparent`.
    pub tracestate: Option<String>,
    /// Catalog folder of the execution, normalised (`/` for the root or when unset).
    pub folder: String,
}

/// Hand-written so that parameter values never reach a log through `{:?}`.
impl fmt::Debug for StartJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartJob")
            .field("dispatch", &self.dispatch)
            .field("package", &self.package.name)
            .field("content_hash", &self.package.content_hash)
            .field("parameters", &self.parameters.keys().collect::<Vec<_>>())
            .field("epoch", &self.epoch)
            .field("deadline", &self.deadline)
            .field("folder", &self.folder)
            .finish()
    }
}

impl TryFrom<pb::StartJobRequest> for StartJob {
    type Error = AgentError;

    fn try_from(req: pb::StartJobRequest) -> Result<Self, Self::Error> {
        let invalid = |m: String| Err(AgentError::InvalidRequest(m));
        let dispatch = DispatchKey::from_field(req.dispatch_id, "dispatch_id")?;
        let Some(package) = req.package else {
            return invalid("package is missing".into());
        };
        if package.content_hash.is_empty() {
            return invalid("package.content_hash is empty".into());
        }
        if package.content_hash.len() > 128 {
            return invalid("package.content_hash is too long".into());
        }
        let content = if package.content.is_empty() {
            None
        } else {
            match String::from_utf8(package.content) {
                Ok(s) => Some(s),
                Err(_) => return invalid("package.content is not UTF-8".into()),
            }
        };
        if req.parameters.len() > PARAMETERS_MAX {
            return invalid(format!("parameters: more than {PARAMETERS_MAX} entries"));
        }
        for (k, v) in &req.parameters {
            if k.is_empty() {
                return invalid("parameters: empty parameter name".into());
            }
            if k.len() + v.len() > PARAMETER_BYTES_MAX {
                // Name only, never the value.
                return invalid(format!("parameters.{k}: value is too long"));
            }
        }
        if req.traceparent.len() > TRACEPARENT_BYTES_MAX {
            return invalid("traceparent is too long".into());
        }
        if req.tracestate.len() > TRACEPARENT_BYTES_MAX {
            return invalid("tracestate is too long".into());
        }
        let folder = match crate::run_as::normalize_folder(&req.folder) {
            Ok(f) => f,
            Err(m) => return invalid(m),
        };
        Ok(StartJob {
            dispatch,
            package: PackageSource {
                name: package.name,
                content_hash: package.content_hash.to_ascii_lowercase(),
                content,
            },
            parameters: req.parameters.into_iter().collect(),
            epoch: Epoch(req.coordinator_epoch),
            deadline: (req.deadline_ms > 0).then(|| Duration::from_millis(req.deadline_ms)),
            traceparent: (!req.traceparent.is_empty()).then_some(req.traceparent),
            tracestate: (!req.tracestate.is_empty()).then_some(req.tracestate),
            folder,
        })
    }
}

/// Terminal status of a job on this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl FinishStatus {
    pub fn to_proto(self) -> pb::JobStatus {
        match self {
            FinishStatus::Succeeded => pb::JobStatus::Succeeded,
            FinishStatus::Failed => pb::JobStatus::Failed,
            FinishStatus::Cancelled => pb::JobStatus::Cancelled,
            FinishStatus::TimedOut => pb::JobStatus::TimedOut,
        }
    }
}

/// Why the agent ended a job's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The coordinator asked (`CancelJob`).
    Cancelled,
    /// The agent is shutting down.
    Shutdown,
}

/// Turns an id into one safe path component: anything but `[A-Za-z0-9._-]` becomes `_`,
/// and a leading dot is escaped so that `.` and `..` cannot walk the tree.
pub fn fs_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> pb::DispatchId {
        pb::DispatchId {
            execution_id: "exec-1".into(),
            task_path: "fan".into(),
            item_index: 3,
            attempt: 1,
        }
    }

    pub(crate) fn request() -> pb::StartJobRequest {
        pb::StartJobRequest {
            dispatch_id: Some(id()),
            package: Some(pb::PackageRef {
                name: "child".into(),
                content_hash: "ABC".into(),
                content: b"name = 'child'".to_vec(),
            }),
            parameters: [("n".to_string(), "secret".to_string())].into(),
            coordinator_epoch: 7,
            deadline_ms: 0,
            traceparent: String::new(),
            tracestate: String::new(),
            folder: String::new(),
        }
    }

    fn reason(req: pb::StartJobRequest) -> String {
        match StartJob::try_from(req) {
            Err(AgentError::InvalidRequest(m)) => m,
            other => panic!("expected invalid request, got {other:?}"),
        }
    }

    #[test]
    fn valid_request_converts() {
        let job = StartJob::try_from(request()).unwrap();
        assert_eq!(job.dispatch.to_string(), "exec-1/fan[3]#1");
        assert_eq!(job.package.content_hash, "abc");
        assert_eq!(job.epoch, Epoch(7));
        assert_eq!(job.deadline, None);
        assert_eq!(job.traceparent, None);
        assert_eq!(job.folder, "/", "an empty folder is the root");
        assert!(!format!("{job:?}").contains("secret"));
        let mut r = request();
        r.folder = "/etl/daily/".into();
        assert_eq!(StartJob::try_from(r).unwrap().folder, "/etl/daily");
    }

    #[test]
    fn each_invalid_field_is_named() {
        let mut r = request();
        r.dispatch_id = None;
        assert_eq!(reason(r), "dispatch_id is missing");

        let mut r = request();
        r.dispatch_id.as_mut().unwrap().execution_id.clear();
        assert_eq!(reason(r), "dispatch_id.execution_id is empty");

        let mut r = request();
        r.dispatch_id.as_mut().unwrap().task_path.clear();
        assert_eq!(reason(r), "dispatch_id.task_path is empty");

        let mut r = request();
        r.dispatch_id.as_mut().unwrap().attempt = 0;
        assert_eq!(reason(r), "dispatch_id.attempt must be at least 1");

        let mut r = request();
        r.package = None;
        assert_eq!(reason(r), "package is missing");

        let mut r = request();
        r.package.as_mut().unwrap().content_hash.clear();
        assert_eq!(reason(r), "package.content_hash is empty");

        let mut r = request();
        r.package.as_mut().unwrap().content = vec![0xff, 0xfe];
        assert_eq!(reason(r), "package.content is not UTF-8");

        let mut r = request();
        r.parameters.insert(String::new(), "x".into());
        assert_eq!(reason(r), "parameters: empty parameter name");

        let mut r = request();
        r.traceparent = "x".repeat(1000);
        assert_eq!(reason(r), "traceparent is too long");

        let mut r = request();
        r.folder = "etl".into();
        assert_eq!(reason(r), "folder \"etl\" must start with '/'");
    }

    #[test]
    fn fs_component_cannot_escape() {
        assert_eq!(fs_component(".."), "_..");
        assert_eq!(fs_component("a/b c"), "a_b_c");
        assert_eq!(fs_component("fan-1.x"), "fan-1.x");
    }
}
