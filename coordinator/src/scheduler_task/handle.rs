//! [`SchedulerHandle`]: the edge the API and the gRPC services call. Each
//! method sends one message to the scheduler task and awaits its reply; a
//! method whose call changes state answers only once that change is durable
//! (the task holds the reply until its batch is committed). A stopped task
//! answers `ShuttingDown`.

use tokio::sync::{mpsc, oneshot, watch};

use super::msg::{AgentListing, Msg};
use crate::domain::{AgentReport, RegisterAnswer};
use crate::error::CoordinatorError;
use crate::metrics::MetricsSnapshot;
use crate::prepare::Plan;
use crate::records::{ChildRecord, ExecutionRecord};
use crate::scheduler::{CancelOutcome, ExecutionView, Registration, Summary};

/// A cheap, cloneable handle to the scheduler task.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Msg>,
}

impl SchedulerHandle {
    /// A handle on the task that receives from `tx`'s channel.
    pub(super) fn new(tx: mpsc::Sender<Msg>) -> Self {
        SchedulerHandle { tx }
    }

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

    pub async fn register(&self, reg: Registration) -> Result<RegisterAnswer, CoordinatorError> {
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

    pub async fn event(&self, agent: String, event: AgentReport) -> Result<(), CoordinatorError> {
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
        children: Vec<(ChildRecord, u64)>,
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

    /// A page of an in-memory execution's children, of one phase when
    /// `phase` is not empty (`None`: not in memory).
    pub async fn children_page(
        &self,
        id: String,
        offset: usize,
        limit: usize,
        phase: String,
    ) -> Result<Option<crate::scheduler::ChildrenPage>, CoordinatorError> {
        self.ask(|reply| Msg::ChildrenPage {
            id,
            offset,
            limit,
            phase,
            reply,
        })
        .await
    }

    /// One child of an in-memory execution (`None`: not in memory).
    pub async fn child(
        &self,
        id: String,
        task: String,
        index: u32,
    ) -> Result<Option<Option<ChildRecord>>, CoordinatorError> {
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

    /// Requests cancellation; answers once the request is durable;
    /// `ExecutionNotFound` if it is not running.
    pub async fn cancel(
        &self,
        id: String,
        reason: String,
    ) -> Result<CancelOutcome, CoordinatorError> {
        self.ask(|reply| Msg::Cancel { id, reason, reply }).await?
    }

    /// Cancels one child; answers once the request is durable;
    /// `ExecutionNotFound` if the execution is not running.
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
