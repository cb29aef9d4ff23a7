//! The messages the scheduler task receives: calls from the API and the gRPC
//! services (each with the channel its reply goes back on), agent events, and
//! the answers of the effects it performed. Also what a listing of agents
//! carries.

use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::domain::{AgentReport, RegisterAnswer};
use crate::error::CoordinatorError;
use crate::metrics::MetricsSnapshot;
use crate::prepare::Plan;
use crate::records::{AgentRecord, ChildRecord, ExecutionRecord};
use crate::scheduler::{
    CancelOutcome, ChildRef, ChildrenPage, DispatchOutcome, ExecutionView, Registration, Summary,
};

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

/// One message to the scheduler task.
pub(crate) enum Msg {
    Register {
        reg: Registration,
        reply: oneshot::Sender<Result<RegisterAnswer, CoordinatorError>>,
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
        event: AgentReport,
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
        children: Vec<(ChildRecord, u64)>,
        reply: oneshot::Sender<Result<u64, CoordinatorError>>,
    },
    Child {
        id: String,
        task: String,
        index: u32,
        reply: oneshot::Sender<Option<Option<ChildRecord>>>,
    },
    View {
        id: String,
        /// Most children in the view.
        limit: usize,
        reply: oneshot::Sender<Option<ExecutionView>>,
    },
    /// A page of an in-memory execution's children (only the page is cloned).
    ChildrenPage {
        id: String,
        offset: usize,
        limit: usize,
        phase: String,
        reply: oneshot::Sender<Option<ChildrenPage>>,
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
        reply: oneshot::Sender<Result<CancelOutcome, CoordinatorError>>,
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
