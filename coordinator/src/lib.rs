//! The Baton coordinator.
//!
//! It keeps executions and the agent registry in a [`store`], runs parent
//! packages, places each child job on an agent ([`placement`]) and dispatches
//! it over gRPC, and learns what became of it from each agent's completion
//! stream. All decisions live in [`scheduler::Scheduler`], a plain struct
//! driven by one task ([`scheduler_task`]), which alone does its IO. The gRPC
//! services in [`grpc`] decode, authorize ([`auth`]) and audit each call;
//! executions go through [`api`] and that task, while enrolment, renewal and
//! the catalog write the store through the modules that own those records.
//! The coordinator and the agent meet only through `baton-proto`.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod error;
pub mod grpc;
pub mod leadership;
pub mod live_tls;
pub mod metrics;
pub mod pki;
pub mod placement;
pub mod prepare;
pub mod quota;
pub mod records;
pub mod recovery;
pub mod retention;
pub mod scheduler;
pub mod scheduler_task;
pub mod secrets;
pub mod store;
pub mod trace_context;
pub mod traces;
pub mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::control_service_server::ControlServiceServer;
use baton_proto::coordinator_service_server::CoordinatorServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use api::Coordinator;
pub use error::CoordinatorError;

/// Most bytes of one gRPC message the coordinator accepts (bundles are larger than events).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Coordinator settings (the CLI layers defaults, file, environment and flags into this).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub data_dir: PathBuf,
    /// An agent silent this long is lost.
    pub lease_ttl_ms: u64,
    /// How often agents send a heartbeat.
    pub heartbeat_ms: u64,
    /// TLS (the default) or plaintext.
    pub security: transport::Security,
    /// How long and how many ended executions are kept.
    pub retention: retention::Policy,
    /// Default placement strategy, quarantine and admission limits.
    pub scheduling: SchedulingConfig,
    /// Size at which `audit.log` rotates, and rotated files kept.
    pub audit: auth::audit_file::Limits,
    /// Stored bytes (packages deployed, executions kept) per principal; 0: none.
    pub quota_bytes_per_principal: u64,
    /// The store backend (`--store`): embedded (default) or etcd.
    pub store: store::StoreConfig,
    /// High availability: how this coordinator is reached and how long a
    /// leader keeps its term without renewing it.
    pub ha: HaConfig,
}

/// Settings of a coordinator among several (`--advertise`, `--leader-lease`).
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// The URL clients and agents should use to reach this coordinator, told
    /// to them by standbys (`NOT_LEADER`); derived from the listen address when unset.
    pub advertise: Option<String>,
    /// A leader silent (cut off from the store) this long loses its term.
    pub leader_lease_ms: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            advertise: None,
            leader_lease_ms: 5_000,
        }
    }
}

/// Placement and admission settings of the coordinator (`baton coordinator
/// --placement`, `--quarantine-*`, `--max-pending-children`).
#[derive(Debug, Clone)]
pub struct SchedulingConfig {
    /// Strategy of executions that name none.
    pub default_strategy: placement::Strategy,
    pub quarantine: scheduler::QuarantineConfig,
    /// Most unfinished children over all running executions (0: no limit).
    pub max_pending_children: u64,
    /// Every agent runs on this machine (`baton run --local`): `child` tasks
    /// with `local = true` may run; a fleet's coordinator refuses them.
    pub local_children: bool,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            default_strategy: placement::Strategy::LeastLoaded,
            quarantine: scheduler::QuarantineConfig::default(),
            max_pending_children: scheduler::DEFAULT_MAX_PENDING_CHILDREN,
            local_children: false,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            data_dir: PathBuf::from("baton-data"),
            lease_ttl_ms: 5_000,
            heartbeat_ms: 1_000,
            security: transport::Security::Insecure,
            retention: retention::Policy::default(),
            scheduling: SchedulingConfig::default(),
            audit: auth::audit_file::Limits::default(),
            quota_bytes_per_principal: quota::DEFAULT_QUOTA_BYTES,
            store: store::StoreConfig::Embedded,
            ha: HaConfig::default(),
        }
    }
}

impl CoordinatorConfig {
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        if self.heartbeat_ms == 0 || self.lease_ttl_ms == 0 {
            return Err(CoordinatorError::Config(
                "lease TTL and heartbeat interval must be positive".into(),
            ));
        }
        if self.retention.every.is_zero() {
            return Err(CoordinatorError::Config(
                "the pruning interval must be positive".into(),
            ));
        }
        let q = &self.scheduling.quarantine;
        if q.failures > 0 && (q.window.is_zero() || q.cooldown.is_zero()) {
            return Err(CoordinatorError::Config(
                "the quarantine window and cool-down must be positive (or --quarantine-failures 0 to disable)".into(),
            ));
        }
        if self.lease_ttl_ms < 2 * self.heartbeat_ms {
            return Err(CoordinatorError::Config(format!(
                "lease TTL ({} ms) must be at least twice the heartbeat interval ({} ms), \
                 or one late heartbeat loses an agent",
                self.lease_ttl_ms, self.heartbeat_ms
            )));
        }
        Ok(())
    }

    fn scheduler(&self) -> scheduler::SchedulerConfig {
        scheduler::SchedulerConfig {
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            default_strategy: self.scheduling.default_strategy.clone(),
            quarantine: self.scheduling.quarantine,
            max_pending_children: self.scheduling.max_pending_children,
            ..Default::default()
        }
    }
}

/// A started coordinator: its API handle and the task that serves it.
pub struct Running {
    pub coordinator: Coordinator,
    pub task: tokio::task::JoinHandle<Result<(), CoordinatorError>>,
}

/// Opens the store, recovers state, and serves the coordinator's gRPC services
/// on `listener` until `shutdown` is cancelled.
pub async fn start(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, CoordinatorError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)?;
    let store_path = config.data_dir.join("coordinator.redb");
    let store: Arc<dyn store::Store> = Arc::new(
        tokio::task::spawn_blocking(move || store::embedded::EmbeddedStore::open(&store_path))
            .await
            .map_err(|e| CoordinatorError::Store(e.to_string()))??,
    );
    let secrets = Arc::new(secrets::load(&config.data_dir, store.as_ref()).await?);
    let mut sched = recovery::load(store.as_ref(), config.scheduler(), &secrets).await?;
    sched.set_secrets(secrets.clone());
    let audit = Arc::new(auth::audit::Audit::open_with(
        &config.data_dir,
        config.audit,
    )?);
    tokio::spawn(audit.clone().flush_every_second(shutdown.clone()));
    let tls_audit = audit.clone();
    let auth = auth::Auth::new(store.clone(), audit);
    auth.ensure_admin().await?;
    let live_tls = match &config.security {
        transport::Security::Tls(live) => Some(live.clone()),
        transport::Security::Insecure => None,
    };
    let dialer = transport::AgentDialer::new(config.security.clone());
    let (handle, sched_task) =
        scheduler_task::spawn(sched, store.clone(), dialer.clone(), shutdown.clone());
    let history = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(retention::run(
        store.clone(),
        config.retention,
        history.clone(),
        shutdown.clone(),
    ));
    let coordinator = Coordinator {
        handle: handle.clone(),
        store,
        secrets,
        history,
        local_children: config.scheduling.local_children,
    };
    let agent_api = CoordinatorServiceServer::new(grpc::agent_api::AgentApi {
        handle,
        auth: auth.clone(),
        tls: live_tls.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let control_api = ControlServiceServer::new(grpc::control_api::ControlApi {
        coordinator: coordinator.clone(),
        auth,
        tls: live_tls.clone(),
        outputs: grpc::child_output::ChildOutputs::new(coordinator.clone(), dialer),
        quota: quota::Quota::new(coordinator.store.clone(), config.quota_bytes_per_principal),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let addr = listener.local_addr()?;
    info!(%addr, tls = live_tls.is_some(), "coordinator serving");
    // The server stops on shutdown, and also when the scheduler stops on its own
    // (a store failure): a coordinator that cannot decide must not keep serving.
    let server_stop = shutdown.child_token();
    // Every call knows its caller's address: refusals are aggregated per source.
    let router = transport::server()
        .add_service(grpc::source::WithSource(agent_api))
        .add_service(grpc::source::WithSource(control_api));
    let stop = server_stop.clone().cancelled_owned();
    type Served = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    >;
    let served: Served = match &live_tls {
        Some(live) => {
            tokio::spawn(live.clone().renew_loop(shutdown.clone()));
            // A certificate refused in the handshake (another CA, expired)
            // never reaches a handler: audited here, aggregated per source.
            let on_refused: baton_proto::tls::OnRefused = Arc::new(move |peer, reason| {
                tls_audit.denied_from(
                    Some(peer.ip()),
                    &format!("tls client ({reason})"),
                    "TLS handshake",
                    "",
                    "TLS_HANDSHAKE_REFUSED",
                );
            });
            let incoming = baton_proto::tls::incoming_audited(
                listener,
                live.server_config()?,
                Some(on_refused),
            );
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
        }
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
        }
    };
    let task = tokio::spawn(async move {
        let sched_task = async move {
            let r = sched_task.await;
            server_stop.cancel();
            r
        };
        let (served, sched) = tokio::join!(served, sched_task);
        served.map_err(|e| CoordinatorError::Transport(e.to_string()))?;
        sched.map_err(|e| CoordinatorError::Store(format!("scheduler task failed: {e}")))??;
        Ok(())
    });
    Ok(Running { coordinator, task })
}
