//! The Baton coordinator.
//!
//! It keeps executions and the agent registry in a [`store`], runs parent
//! packages, places each child job on an agent ([`placement`]) and dispatches
//! it over gRPC, and learns what became of it from each agent's completion
//! stream. All decisions live in [`scheduler::Scheduler`], a plain struct
//! driven by one task ([`scheduler_task`]), which alone does its IO; both speak
//! the coordinator's own types ([`domain`]), converted from and to protobuf at
//! the edges only. The gRPC services in [`grpc`] decode, authorize ([`auth`])
//! and audit each call; executions go through [`api`] and that task, while
//! enrolment, renewal and the catalog write the store through the modules that
//! own those records.
//! The coordinator and the agent meet only through `baton-proto`.
//!
//! A coordinator leads or stands by ([`leadership`], `role`): one gRPC server
//! serves for the process's lifetime, switched to a leader's services for
//! each term it holds, and answering `NOT_LEADER` with the leader's URL
//! otherwise. All a leader writes goes through a store fenced by its term
//! ([`store::fenced`]).

pub mod access;
pub mod api;
pub mod auth;
pub mod bundles;
pub mod catalog;
pub mod clock;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod leadership;
pub mod live_tls;
pub mod metrics;
pub mod pki;
pub mod placement;
pub mod prepare;
pub mod prometheus;
pub mod quota;
pub mod records;
pub mod recovery;
pub mod retention;
mod role;
pub mod scheduler;
pub mod scheduler_task;
pub mod secrets;
pub mod store;
pub mod trace_context;
pub mod traces;
pub mod transport;
pub mod web;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// The process-wide metrics registry (`--metrics-listen`): each term
    /// publishes into it; `None`: no metrics are kept.
    pub metrics: Option<Arc<prometheus::Registry>>,
    /// The web dashboard (`--dashboard-listen`); `None`: not served.
    pub dashboard: Option<web::DashboardConfig>,
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
            metrics: None,
            dashboard: None,
        }
    }
}

impl CoordinatorConfig {
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        if self.ha.leader_lease_ms < 1_000 {
            return Err(CoordinatorError::Config(
                "the leader lease must be at least 1s (4s or more with etcd)".into(),
            ));
        }
        if let Some(url) = &self.ha.advertise
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(CoordinatorError::Config(format!(
                "--advertise {url}: give a URL, e.g. https://c1.example:7400"
            )));
        }
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

/// A started coordinator: the task that serves it, and the API of the term
/// it leads, if it leads now.
pub struct Running {
    current: tokio::sync::watch::Receiver<Option<Coordinator>>,
    pub task: tokio::task::JoinHandle<Result<(), CoordinatorError>>,
}

impl Running {
    /// The API of the term this coordinator leads now; `None` while it is a
    /// standby. A term's API answers `SHUTTING_DOWN` once the term is over:
    /// ask again then.
    pub fn coordinator(&self) -> Option<Coordinator> {
        self.current.borrow().clone()
    }

    /// Waits until this coordinator leads, and returns that term's API;
    /// `SHUTTING_DOWN` if it stops first.
    pub async fn leading(&self) -> Result<Coordinator, CoordinatorError> {
        let mut rx = self.current.clone();
        let current = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        current.clone().ok_or(CoordinatorError::ShuttingDown)
    }
}

/// Opens the store the configuration names and the leadership that goes with it.
async fn open_store(
    config: &CoordinatorConfig,
) -> Result<(Arc<dyn store::Store>, Arc<dyn leadership::Leadership>), CoordinatorError> {
    let (store, etcd) = store::open_shared(&config.store, &config.data_dir).await?;
    let leadership: Arc<dyn leadership::Leadership> = match etcd {
        // One etcd client for the store and the election.
        Some(etcd) => Arc::new(leadership::etcd::EtcdLeadership::new(
            etcd,
            config.ha.leader_lease_ms,
        )),
        None => Arc::new(leadership::embedded::EmbeddedLeadership::new(store.clone())),
    };
    Ok((store, leadership))
}

/// The URL clients and agents are told to use for this coordinator (by
/// standbys, in `NOT_LEADER`): `--advertise`, or the listen address.
fn advertise_url(config: &CoordinatorConfig, addr: std::net::SocketAddr) -> String {
    if let Some(url) = &config.ha.advertise {
        return url.clone();
    }
    let scheme = match config.security {
        transport::Security::Tls(_) => "https",
        transport::Security::Insecure => "http",
    };
    format!("{scheme}://{addr}")
}

/// Opens the store and serves the coordinator's gRPC services on `listener`
/// until `shutdown` is cancelled: as a leader while it holds a term (the
/// embedded store's single coordinator leads at once: this returns once it
/// does, or with the error that stopped it), as a standby otherwise.
pub async fn start(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, CoordinatorError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)?;
    let (store, leadership) = open_store(&config).await?;
    let wait_to_lead = matches!(config.store, store::StoreConfig::Embedded);
    serve(config, store, leadership, listener, shutdown, wait_to_lead).await
}

/// [`start`] on a store and leadership given; with `wait_to_lead`, returns
/// only once the first term's state is loaded (or the error that stopped it).
pub(crate) async fn serve(
    config: CoordinatorConfig,
    store: Arc<dyn store::Store>,
    leadership: Arc<dyn leadership::Leadership>,
    listener: TcpListener,
    shutdown: CancellationToken,
    wait_to_lead: bool,
) -> Result<Running, CoordinatorError> {
    let audit = Arc::new(auth::audit::Audit::open_with(
        &config.data_dir,
        config.audit,
    )?);
    tokio::spawn(audit.clone().flush_every_second(shutdown.clone()));
    let tls_audit = audit.clone();
    let live_tls = match &config.security {
        transport::Security::Tls(live) => Some(live.clone()),
        transport::Security::Insecure => None,
    };
    let dialer = transport::AgentDialer::new(config.security.clone());
    let addr = listener.local_addr()?;
    let advertise = advertise_url(&config, addr);
    if config.ha.advertise.is_none()
        && addr.ip().is_unspecified()
        && !matches!(config.store, store::StoreConfig::Embedded)
    {
        tracing::warn!(%advertise, "listening on all addresses without --advertise: standbys will name an address clients cannot reach");
    }
    info!(%addr, %advertise, tls = live_tls.is_some(), "coordinator serving");
    let switch = grpc::role_switch::RoleSwitch::default();
    // The server stops on shutdown, and also when the roles stop on their own
    // (a fatal error): a coordinator that cannot decide must not keep serving.
    let server_stop = shutdown.child_token();
    // Every call knows its caller's address: refusals are aggregated per source.
    let router = transport::server()
        .add_service(grpc::source::WithSource(
            switch.service::<role::AgentService>(),
        ))
        .add_service(grpc::source::WithSource(
            switch.service::<role::ControlService>(),
        ));
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
    let (current_tx, current) = tokio::sync::watch::channel(None);
    if let Some(dashboard) = &config.dashboard {
        let Some(live) = &live_tls else {
            return Err(CoordinatorError::Config(
                "--dashboard-listen needs TLS: the dashboard is served over HTTPS only (this coordinator runs --insecure)".into(),
            ));
        };
        let listener = web::bind(dashboard).await?;
        web::spawn(
            listener,
            dashboard.clone(),
            live.clone(),
            web::Web {
                current: current.clone(),
                audit: audit.clone(),
                dialer: dialer.clone(),
                sessions: web::session::Sessions::default(),
            },
            shutdown.clone(),
        )?;
    }
    let roles = role::Roles {
        process: role::Process {
            config,
            store,
            audit,
            tls: live_tls,
            dialer,
        },
        leadership,
        advertise,
        switch,
        current: current_tx,
    };
    let roles_task = tokio::spawn(role::run(roles, shutdown.clone()));
    let mut task = tokio::spawn(async move {
        let roles = async move {
            let r = roles_task.await;
            server_stop.cancel();
            r
        };
        let (served, roles) = tokio::join!(served, roles);
        roles
            .map_err(|e| CoordinatorError::Store(format!("coordinator role task failed: {e}")))??;
        served.map_err(|e| CoordinatorError::Transport(e.to_string()))?;
        Ok(())
    });
    if wait_to_lead {
        let mut rx = current.clone();
        tokio::select! {
            led = rx.wait_for(Option::is_some) => {
                if led.is_err() {
                    return Err(CoordinatorError::ShuttingDown);
                }
            }
            ended = &mut task => {
                ended.map_err(|e| CoordinatorError::Store(format!("coordinator task failed: {e}")))??;
                return Err(CoordinatorError::ShuttingDown);
            }
        }
    }
    Ok(Running { current, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_url_is_the_flag_or_the_listen_address() {
        let addr: std::net::SocketAddr = "127.0.0.1:7400".parse().unwrap();
        let mut config = CoordinatorConfig::default();
        assert_eq!(advertise_url(&config, addr), "http://127.0.0.1:7400");
        config.ha.advertise = Some("https://c1.example:7400".into());
        assert_eq!(advertise_url(&config, addr), "https://c1.example:7400");
    }
}
