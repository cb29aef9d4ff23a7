//! What a leader has, for one term: built when the term begins and dropped
//! when it ends. Everything that writes the store here writes through a
//! [`FencedStore`] of the term (the scheduler, the catalog, auth, retention,
//! the agent API), the scheduler is rebuilt from the store with the term's
//! epoch ([`crate::recovery::load`]), and background work (retention, agents'
//! lease expiry and quarantine clocks, which live in the scheduler) runs only
//! until the term's `stop` token is cancelled.

use std::sync::Arc;

use baton_proto::control_service_server::ControlServiceServer;
use baton_proto::coordinator_service_server::CoordinatorServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::api::Coordinator;
use crate::auth::audit::Audit;
use crate::error::CoordinatorError;
use crate::grpc::agent_api::AgentApi;
use crate::grpc::child_output::ChildOutputs;
use crate::grpc::control_api::ControlApi;
use crate::leadership::Term;
use crate::live_tls::LiveTls;
use crate::store::Store;
use crate::store::fenced::{Fence, FencedStore};
use crate::transport::AgentDialer;
use crate::{
    CoordinatorConfig, MAX_MESSAGE_BYTES, quota, recovery, retention, scheduler_task, secrets,
};

/// The gRPC services a leader serves (their names route calls to them).
pub type AgentService = CoordinatorServiceServer<AgentApi>;
pub type ControlService = ControlServiceServer<ControlApi>;

/// What lives as long as the process, whatever its role.
pub(crate) struct Process {
    pub config: CoordinatorConfig,
    /// The store as opened (unfenced: only campaigns and terms' fenced stores use it).
    pub store: Arc<dyn Store>,
    pub audit: Arc<Audit>,
    pub tls: Option<Arc<LiveTls>>,
    pub dialer: AgentDialer,
}

/// A leader's state for one term.
pub(crate) struct Leader {
    /// The API of this term (what `Running::coordinator` hands out).
    pub coordinator: Coordinator,
    /// The gRPC services of this term, for the role switch.
    pub routes: Routes,
    /// The scheduler's loop; it ends when `stop` is cancelled, or on its own
    /// (a failed commit, an agent's `STALE_EPOCH`).
    pub scheduler: tokio::task::JoinHandle<Result<(), CoordinatorError>>,
    /// Cancelled when the term ends: the scheduler and retention stop.
    pub stop: CancellationToken,
}

/// The term's fence as the store checks it.
pub(crate) fn fence(term: &Term) -> Fence {
    Fence {
        epoch: term.epoch,
        fence_key: term.fence_key.clone(),
        fence_revision: term.fence_revision,
        lost: term.lost.clone(),
    }
}

/// Builds everything a leader has for `term`; nothing is left running if it fails.
pub(crate) async fn lead(p: &Process, term: &Term) -> Result<Leader, CoordinatorError> {
    let store: Arc<dyn Store> = Arc::new(FencedStore::new(p.store.clone(), fence(term)));
    // Commits of the term are timed into the process-wide metrics.
    let store = match &p.config.metrics {
        Some(registry) => crate::prometheus::measured::Measured::wrap(store, registry.clone()),
        None => store,
    };
    let secrets = Arc::new(secrets::load(&p.config.data_dir, store.as_ref()).await?);
    let mut sched =
        recovery::load(store.as_ref(), p.config.scheduler(), &secrets, term.epoch).await?;
    sched.set_secrets(secrets.clone());
    let auth = crate::auth::Auth::new(store.clone(), p.audit.clone());
    auth.ensure_admin().await?;
    // The term's work stops as soon as the term is lost, not when someone
    // next looks.
    let stop = term.lost.child_token();
    let (handle, scheduler) =
        scheduler_task::spawn(sched, store.clone(), p.dialer.clone(), stop.clone());
    let history = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(retention::run(
        store.clone(),
        p.config.retention,
        history.clone(),
        stop.clone(),
    ));
    let coordinator = Coordinator {
        handle: handle.clone(),
        store,
        secrets,
        history,
        local_children: p.config.scheduling.local_children,
    };
    if let Some(registry) = &p.config.metrics {
        crate::prometheus::feed::spawn(
            registry.clone(),
            coordinator.clone(),
            coordinator.store.clone(),
            p.audit.clone(),
            stop.clone(),
        );
    }
    let agent_api = AgentService::new(AgentApi {
        handle,
        auth: auth.clone(),
        tls: p.tls.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let control_api = ControlService::new(ControlApi {
        coordinator: coordinator.clone(),
        auth,
        tls: p.tls.clone(),
        outputs: ChildOutputs::new(coordinator.clone(), p.dialer.clone()),
        quota: quota::Quota::new(
            coordinator.store.clone(),
            p.config.quota_bytes_per_principal,
        ),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let routes = Routes::new(agent_api).add_service(control_api).prepare();
    Ok(Leader {
        coordinator,
        routes,
        scheduler,
        stop,
    })
}
