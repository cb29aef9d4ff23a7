//! The coordinator's error type; every variant has a stable symbolic code.

use crate::store::kv::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Package(#[from] baton_package::PackageError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("execution '{0}' not found")]
    ExecutionNotFound(String),
    #[error("execution '{id}' cannot be resumed: {why}")]
    NotResumable { id: String, why: String },
    #[error("agent '{0}' is not registered; call Register first")]
    AgentNotRegistered(String),
    #[error("no agent named '{0}'")]
    AgentNotFound(String),
    #[error(
        "agent '{0}' is alive or still holds children; only a lost (or revoked) agent can be removed: stop it first, or drain it"
    )]
    AgentAlive(String),
    #[error(
        "store conflict on '{0}': another writer changed it (is a second coordinator running on this data?)"
    )]
    StoreConflict(String),
    #[error("store: {0}")]
    Store(String),
    /// The store cannot be reached now (no quorum, connection lost).
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// This coordinator may no longer write to the store (another leads).
    #[error("store fenced this coordinator: {0}")]
    StoreFenced(String),
    /// This coordinator is a standby: another one leads (its advertised URL,
    /// when known, is in `leader`). Clients retry there.
    #[error("{}", not_leader_message(.leader))]
    NotLeader { leader: Option<String> },
    /// This coordinator's term ended while it led (another took the lead, or
    /// an agent has seen a later epoch): it stops and campaigns again.
    #[error("leadership lost: {0}")]
    LeadershipLost(String),
    /// A batch larger than the store accepts in one commit.
    #[error("{0}")]
    StoreBatchTooLarge(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("token {0} was already used; create a new one with `baton token create --agent`")]
    TokenUsed(String),
    #[error("token {0} has expired")]
    TokenExpired(String),
    #[error("token {0} was revoked")]
    TokenRevoked(String),
    #[error("certificate refused: {0}")]
    CertRevoked(String),
    /// An enrolment for a name an enrolled, unrevoked identity holds.
    #[error(
        "agent name '{0}' is held by an enrolled agent; to re-enrol that machine deliberately, first `baton agents revoke {0}` (or `baton agents rm {0}` once it is lost), then enrol again"
    )]
    AgentNameTaken(String),
    /// A registration claiming labels its enrolment token did not allow.
    #[error("{0}")]
    LabelNotAllowed(String),
    /// A renewal too soon after the last one, or of a certificate far from expiry.
    #[error("{why}; retry after {retry_after_s} s")]
    RenewTooSoon { why: String, retry_after_s: u64 },
    /// An operator revoked this agent (`baton agents revoke`): it is refused
    /// for good, and told so, so that it stops instead of retrying.
    #[error("agent revoked: {0}")]
    AgentRevoked(String),
    /// Plaintext (`--insecure`) to an address that is not loopback.
    #[error("{0}")]
    PlaintextNotLoopback(String),
    #[error(
        "folder {0} does not exist; create it with `baton folder create {0}` (--parents for its ancestors too)"
    )]
    FolderNotFound(String),
    #[error("folder {0} already exists")]
    FolderExists(String),
    #[error(
        "folder not empty: {0}; move or remove what it holds first (`baton package list --folder …`, `baton folder list …`)"
    )]
    FolderNotEmpty(String),
    #[error("no package {0} in the catalog; see `baton package list`")]
    PackageNotFound(String),
    #[error(
        "a package {0} already exists; pick another name, or remove it first with `baton package rm {0}`"
    )]
    PackageExists(String),
    #[error(
        "package {package} has no version {version} (the latest is {latest}); see `baton package show {package}`"
    )]
    VersionNotFound {
        package: String,
        version: u32,
        latest: u32,
    },
    #[error(
        "package {package} has {running} running execution(s) (e.g. {first}); wait for them, cancel them (`baton exec cancel {first}`), or remove it anyway with --force (they finish with the version they pinned)"
    )]
    PackageInUse {
        package: String,
        running: usize,
        first: String,
    },
    #[error("no package content with hash {0} on the coordinator")]
    ContentNotFound(String),
    /// One file of a bundle is larger than the store takes in one commit
    /// (each file is stored whole, once, by its content hash).
    #[error(
        "package file '{path}' is {bytes} bytes; the store takes at most {limit} bytes per commit \
         (split the file, or raise the store's limit)"
    )]
    BundleFileTooLarge {
        path: String,
        bytes: usize,
        limit: usize,
    },
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(String),
    #[error(transparent)]
    Secret(#[from] crate::secrets::key::SecretError),
    /// No child at the path given (`fan[3]`) in that execution.
    #[error("{0}")]
    ChildNotFound(String),
    /// The child has not been placed on an agent yet: no logs, no rows.
    #[error("{0}")]
    ChildNotStarted(String),
    /// The child's agent no longer has its logs or rows (retention, a wiped data
    /// directory, or the job ran no process).
    #[error("{0}")]
    OutputGone(String),
    /// Rows of a child that runs or did not succeed.
    #[error("{0}")]
    RowsUnavailable(String),
    /// The child's agent is lost, unknown or did not answer.
    #[error("{0}")]
    AgentUnreachable(String),
    /// The child's agent has too many log and row streams open.
    #[error("{0}")]
    AgentBusy(String),
    /// Starting would pass `--max-pending-children`; retry later.
    #[error(
        "coordinator busy: {pending} children not yet finished, and this execution adds {adding}; the limit is {limit} (--max-pending-children); retry after {retry_after_s} s"
    )]
    Busy {
        pending: u64,
        adding: u64,
        limit: u64,
        retry_after_s: u64,
    },
    /// One execution alone has more children than `--max-pending-children`.
    #[error(
        "execution too large: it has {adding} children and the coordinator takes at most {limit} unfinished children (--max-pending-children); split it into smaller runs or raise the limit"
    )]
    TooLarge { adding: u64, limit: u64 },
    /// The principal's stored bundles and executions would pass its quota.
    #[error(
        "storage quota exceeded: {principal} uses {used} bytes (packages deployed and executions kept), this adds {adding}, and the limit is {limit} (--quota-bytes-per-principal); delete packages or wait for retention to remove old executions"
    )]
    QuotaExceeded {
        principal: String,
        used: u64,
        adding: u64,
        limit: u64,
    },
}

impl CoordinatorError {
    /// The stable code (see `docs/errors.md`).
    pub fn code(&self) -> &'static str {
        match self {
            CoordinatorError::Config(_) => "CONFIG_INVALID",
            CoordinatorError::Package(e) => e.code(),
            CoordinatorError::InvalidRequest(_) => "INVALID_REQUEST",
            CoordinatorError::ExecutionNotFound(_) => "EXECUTION_NOT_FOUND",
            CoordinatorError::NotResumable { .. } => "EXECUTION_NOT_RESUMABLE",
            CoordinatorError::AgentNotRegistered(_) => "AGENT_NOT_REGISTERED",
            CoordinatorError::AgentNotFound(_) => "AGENT_NOT_FOUND",
            CoordinatorError::AgentAlive(_) => "AGENT_ALIVE",
            CoordinatorError::StoreConflict(_) => "STORE_CONFLICT",
            CoordinatorError::Store(_) => "STORE_FAILED",
            CoordinatorError::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            CoordinatorError::StoreFenced(_) => "STORE_FENCED",
            CoordinatorError::NotLeader { .. } => "NOT_LEADER",
            CoordinatorError::LeadershipLost(_) => "LEADERSHIP_LOST",
            CoordinatorError::StoreBatchTooLarge(_) => "STORE_BATCH_TOO_LARGE",
            CoordinatorError::PermissionDenied(_) => "PERMISSION_DENIED",
            CoordinatorError::Unauthenticated(_) => "UNAUTHENTICATED",
            CoordinatorError::TokenUsed(_) => "TOKEN_USED",
            CoordinatorError::TokenExpired(_) => "TOKEN_EXPIRED",
            CoordinatorError::TokenRevoked(_) => "TOKEN_REVOKED",
            CoordinatorError::CertRevoked(_) => "CERT_REVOKED",
            CoordinatorError::AgentNameTaken(_) => "AGENT_NAME_TAKEN",
            CoordinatorError::LabelNotAllowed(_) => "AGENT_LABEL_NOT_ALLOWED",
            CoordinatorError::RenewTooSoon { .. } => "RENEW_TOO_SOON",
            CoordinatorError::AgentRevoked(_) => "AGENT_REVOKED",
            CoordinatorError::PlaintextNotLoopback(_) => "PLAINTEXT_NOT_LOOPBACK",
            CoordinatorError::FolderNotFound(_) => "FOLDER_NOT_FOUND",
            CoordinatorError::FolderExists(_) => "FOLDER_EXISTS",
            CoordinatorError::FolderNotEmpty(_) => "FOLDER_NOT_EMPTY",
            CoordinatorError::PackageNotFound(_) => "PACKAGE_NOT_FOUND",
            CoordinatorError::PackageExists(_) => "PACKAGE_EXISTS",
            CoordinatorError::VersionNotFound { .. } => "VERSION_NOT_FOUND",
            CoordinatorError::PackageInUse { .. } => "PACKAGE_IN_USE",
            CoordinatorError::ContentNotFound(_) => "CONTENT_NOT_FOUND",
            CoordinatorError::BundleFileTooLarge { .. } => "BUNDLE_FILE_TOO_LARGE",
            CoordinatorError::ShuttingDown => "SHUTTING_DOWN",
            CoordinatorError::Io(_) => "IO_FAILED",
            CoordinatorError::Transport(_) => "TRANSPORT_FAILED",
            CoordinatorError::Secret(e) => e.code(),
            CoordinatorError::ChildNotFound(_) => "CHILD_NOT_FOUND",
            CoordinatorError::ChildNotStarted(_) => "CHILD_NOT_STARTED",
            CoordinatorError::OutputGone(_) => "OUTPUT_GONE",
            CoordinatorError::RowsUnavailable(_) => "ROWS_UNAVAILABLE",
            CoordinatorError::AgentUnreachable(_) => "AGENT_UNREACHABLE",
            CoordinatorError::AgentBusy(_) => "AGENT_BUSY",
            CoordinatorError::Busy { .. } => "COORDINATOR_BUSY",
            CoordinatorError::TooLarge { .. } => "EXECUTION_TOO_LARGE",
            CoordinatorError::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
        }
    }

    /// Whether the caller may retry the same call later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            CoordinatorError::ShuttingDown
                | CoordinatorError::Store(_)
                | CoordinatorError::StoreUnavailable(_)
                | CoordinatorError::LeadershipLost(_)
                | CoordinatorError::Transport(_)
                | CoordinatorError::AgentUnreachable(_)
                | CoordinatorError::AgentBusy(_)
                | CoordinatorError::Busy { .. }
        )
    }
}

impl From<StoreError> for CoordinatorError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { key } => CoordinatorError::StoreConflict(key),
            StoreError::Unavailable(why) => CoordinatorError::StoreUnavailable(why),
            StoreError::Fenced(why) => CoordinatorError::StoreFenced(why),
            e @ StoreError::TooLarge { .. } => CoordinatorError::StoreBatchTooLarge(e.to_string()),
            e @ (StoreError::Backend(_) | StoreError::Lagged(_)) => {
                CoordinatorError::Store(e.to_string())
            }
        }
    }
}

fn not_leader_message(leader: &Option<String>) -> String {
    match leader {
        Some(url) => format!("this coordinator is a standby; the leader is {url}"),
        None => "this coordinator is a standby and no coordinator leads now (an election is under way); retry shortly".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Limits;

    #[test]
    fn store_errors_keep_their_class_as_coordinator_errors() {
        let cases = [
            (
                StoreError::Conflict { key: "k".into() },
                "STORE_CONFLICT",
                false,
            ),
            (
                StoreError::Unavailable("no quorum".into()),
                "STORE_UNAVAILABLE",
                true,
            ),
            (
                StoreError::Fenced("lease lost".into()),
                "STORE_FENCED",
                false,
            ),
            (
                StoreError::TooLarge {
                    ops: 3,
                    bytes: 9,
                    limits: Limits {
                        max_ops_per_commit: Some(2),
                        max_bytes_per_commit: None,
                    },
                },
                "STORE_BATCH_TOO_LARGE",
                false,
            ),
            (StoreError::Backend("disk".into()), "STORE_FAILED", false),
        ];
        for (store_err, code, store_retryable) in cases {
            assert_eq!(store_err.retryable(), store_retryable, "{store_err}");
            let e = CoordinatorError::from(store_err);
            assert_eq!(e.code(), code, "{e}");
            if code != "STORE_FAILED" {
                // STORE_FAILED stays retryable for a caller of the API: the
                // coordinator may have restarted on a sound store meanwhile.
                assert_eq!(e.retryable(), store_retryable, "{e}");
            }
        }
    }
}
