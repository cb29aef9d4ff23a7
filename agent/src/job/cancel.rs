//! The cancel handle of a job: a token that every part of its run watches (the
//! DAG stops starting tasks, each process group is ended), with the first
//! reason given, and what that reason says in a finished event.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::model::KillReason;

/// Cancel handle of a running job: a token plus the first reason given.
#[derive(Clone, Default)]
pub struct JobCancel {
    token: CancellationToken,
    reason: Arc<OnceLock<KillReason>>,
}

impl JobCancel {
    pub fn new() -> JobCancel {
        JobCancel::default()
    }

    /// Asks the job to end; the first reason wins.
    pub fn cancel(&self, reason: KillReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The reason, once cancelled.
    pub(crate) fn reason_if_cancelled(&self) -> Option<KillReason> {
        self.is_cancelled()
            .then(|| self.reason.get().copied().unwrap_or(KillReason::Cancelled))
    }

    pub(crate) async fn cancelled(&self) -> KillReason {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or(KillReason::Cancelled)
    }
}

/// The reason a cancelled job's finished event gives.
pub(crate) fn cancel_reason(r: KillReason) -> &'static str {
    match r {
        KillReason::Cancelled => "cancelled by the coordinator",
        KillReason::Shutdown => "cancelled: agent shutting down",
    }
}
