//! The Baton agent: admission, job runner, durable event outbox, completion stream.
//!
//! An agent serves `AgentService` for the coordinator (`StartJob` answers at once,
//! before the job runs), runs each accepted child package as processes in their own
//! process group, records `JobStarted` / `JobFinished` in a durable outbox and streams
//! them to the coordinator until acknowledged — across reconnects and restarts.
//!
//! Modules, one job each, in layers that import downwards only (no two files
//! import each other; a module's children are below it):
//!
//! - [`service`]: the thin tonic `AgentService` impl (validates, calls the
//!   supervisor, maps errors);
//! - [`reporter`]: registration and the `ReportEvents` stream; [`retention`]: the
//!   removal of old job directories;
//! - [`supervisor`]: admission + table + runner tasks behind one lock (a package
//!   sent by hash only is fetched on the job's slot);
//! - [`admission`]: the checks behind `StartJob`'s answer; [`parsed`]: child
//!   packages parsed once; [`packages`]: the cache of packages sent by hash only,
//!   fetched from the coordinator; [`jobs`]: the table of running and recently
//!   finished jobs;
//! - [`job`]: one job from its plan to its report — its run, the DAG of its
//!   tasks, each attempt, the process layer, captures, files, leftovers, the
//!   scratch directory's layout (see its doc for its own layers);
//! - [`logs`], [`rows`]: a job's logs and kept rows, streamed back to the
//!   coordinator (they read a job's files through [`job::layout`] alone);
//! - [`outbox`]: the durable, group-committed event outbox (redb);
//! - [`transport`]: every server / channel setup; [`enrol`], [`renew`]: the
//!   first certificate and its renewals; [`tls`] (a leaf): the TLS identity;
//! - [`watchdog`], `group_record`: no job outlives its agent (a watchdog process
//!   that ends the jobs when the agent dies, the record format it shares with
//!   [`job::leftovers`]);
//! - [`config`]: `AgentConfig` and its validation; [`run_as`]: `--allow-run-as`
//!   rules, folders, the host's users; [`mask`]: masks sensitive parameter values
//!   in what a job leaves behind; [`model`]: validated domain types
//!   (`DispatchKey`, `StartJob`, ...); [`error`]: `AgentError` and its stable
//!   codes.

pub mod admission;
pub mod config;
pub mod enrol;
pub mod epoch_file;
pub mod error;
pub(crate) mod group_record;
pub mod job;
pub mod job_trace;
pub mod jobs;
pub mod logs;
pub mod mask;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod packages;
pub mod parsed;
pub mod renew;
pub mod reporter;
pub mod retention;
pub mod rows;
pub mod run_as;
pub mod service;
pub mod supervisor;
pub mod tls;
pub mod transport;
pub mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::AgentConfig;
pub use error::AgentError;

/// How long shutdown waits for the coordinator to acknowledge the last events.
const FINAL_FLUSH_MAX: Duration = Duration::from_secs(3);
/// Extra time, beyond the kill grace, for killed jobs to record their finished events.
const JOB_STOP_SLACK: Duration = Duration::from_secs(5);

/// Serves `AgentService` on `listener`, registers, keeps the completion stream. Returns
/// when `shutdown` is cancelled: stops accepting jobs (rejects with `DRAINING`), kills
/// running jobs' process groups, flushes the outbox (waits a little for the coordinator
/// to acknowledge the last events; they stay durable either way), and returns.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    config.validate()?;
    match &config.tls {
        None => {
            transport::refuse_plaintext_beyond_loopback(
                &config.coordinator_url,
                &config.advertise_addr,
            )
            .await?;
        }
        Some(_) => transport::require_https(&config.coordinator_url)?,
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| AgentError::io(format!("creating {}", config.data_dir.display()), e))?;
    // Jobs run with their scratch directory as working directory: every path
    // handed to them ($BATON_OUTPUT, $BATON_ROWS) must be absolute.
    let mut config = config;
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| AgentError::io(format!("resolving {}", config.data_dir.display()), e))?;
    let outbox_path = config.data_dir.join("agent.redb");
    let outbox = Arc::new(
        tokio::task::spawn_blocking(move || outbox::Outbox::open(&outbox_path))
            .await
            .map_err(|e| AgentError::Store(format!("opening outbox: {e}")))??,
    );
    // Before any job starts, before registering and serving: end what an
    // earlier boot left running (its watchdog, if it lived, did already).
    job::leftovers::reap(&config.data_dir.join("jobs"));
    // Their raw output and rows files (unmasked values) were never read: gone.
    let raw = job::layout::remove_raw_files_left(&config.data_dir.join("jobs"));
    if raw > 0 {
        info!(
            files = raw,
            "removed raw output and rows files an earlier boot left"
        );
    }
    warn_about_run_as(&config);
    let supervisor = supervisor::Supervisor::new(&config, outbox.clone());
    if let Some(metrics) = &config.metrics {
        // Weak: the supervisor holds the metrics; the agent's end frees both.
        let (weak, outbox) = (Arc::downgrade(&supervisor), Arc::downgrade(&outbox));
        metrics.attach(move || {
            let (Some(supervisor), Some(outbox)) = (weak.upgrade(), outbox.upgrade()) else {
                return metrics::Gauges::default();
            };
            let load = supervisor.load();
            metrics::Gauges {
                slots: u64::from(load.slots),
                used: u64::from(load.running),
                draining: load.draining,
                unacked_events: outbox.unacked_len() as u64,
                jobs_started: supervisor.jobs_spawned(),
            }
        });
    }
    // The bar for stale dispatches is where it was before a restart (in this
    // cluster: the one of this CA).
    let cluster = match &config.tls {
        Some(pem) => format!(
            "ca:{}",
            baton_proto::tls::ca_pin(&pem.ca).map_err(|e| AgentError::ConfigInvalid(format!(
                "the CA in the agent's TLS directory: {e}"
            )))?
        ),
        None => "insecure".to_string(),
    };
    let (epoch_file, seen) = epoch_file::EpochFile::open(&config.data_dir, &cluster)?;
    supervisor.keep_epoch_in(epoch_file, seen);
    if let Some(launcher) = config.watchdog.clone() {
        let watchdog = watchdog::Watchdog::start(launcher)
            .map_err(|e| AgentError::io("starting the process watchdog", e))?;
        info!(pid = watchdog.pid(), "process watchdog started");
        supervisor.leftovers().attach(watchdog);
    }
    let boot_id = uuid::Uuid::new_v4().to_string();
    info!(
        name = %config.name,
        boot_id = %boot_id,
        outbox_id = %outbox.outbox_id(),
        unacked = outbox.unacked_len(),
        "agent starting"
    );

    let tls = match config.tls.clone() {
        Some(pem) => Some(tls::LiveTls::new(pem)?),
        None => None,
    };
    // Catalog packages come by hash only: fetched from the coordinator, cached.
    supervisor
        .packages()
        .set_source(config.coordinator_url.clone(), tls.clone());
    let server_stop = CancellationToken::new();
    let server = {
        let service = service::AgentGrpc::new(supervisor.clone());
        let stop = server_stop.clone();
        tokio::spawn(transport::serve(
            service,
            listener,
            tls.clone(),
            async move { stop.cancelled().await },
        ))
    };
    let reporter_stop = CancellationToken::new();
    let mut reporter = tokio::spawn(
        reporter::Reporter::new(
            reporter::Identity {
                name: config.name.clone(),
                coordinator_url: config.coordinator_url.clone(),
                advertise_addr: config.advertise_addr.clone(),
                labels: config.labels.clone(),
                // What the coordinator may keep here: the slots and the queue.
                slots: config.slots + config.queue,
                weight: config.weight,
                boot_id,
                tls: tls.clone(),
            },
            outbox.clone(),
            supervisor.clone(),
        )
        .run(reporter_stop.clone()),
    );

    tokio::spawn(retention::run(
        supervisor.clone(),
        config.data_dir.join("jobs"),
        config.retain_jobs_for,
        (config.retain_jobs_for / 10).clamp(Duration::from_secs(1), Duration::from_secs(600)),
        reporter_stop.clone(),
    ));
    if let Some(live) = &tls {
        tokio::spawn(renew::run(
            live.clone(),
            config.coordinator_url.clone(),
            config.name.clone(),
            reporter_stop.clone(),
        ));
    }

    // Run until asked to stop, until the server fails, or until the
    // coordinator says it will never take this agent (revoked).
    let mut server = server;
    let mut fatal = None;
    let mut reporter_done = false;
    let server_result = tokio::select! {
        () = shutdown.cancelled() => None,
        r = &mut server => Some(r),
        r = &mut reporter => {
            reporter_done = true;
            fatal = match r {
                Ok(Err(e)) => Some(e),
                Ok(Ok(())) => None,
                Err(e) => Some(AgentError::Transport(format!("reporter task failed: {e}"))),
            };
            None
        }
    };

    info!("agent draining");
    supervisor.begin_drain();
    let wait = Duration::from_millis(config.kill_grace_ms) + JOB_STOP_SLACK;
    if !supervisor.stop_all_jobs(wait).await {
        warn!("some jobs did not end within the shutdown deadline");
    }
    // Acknowledgements shrink the outbox without any notification: poll it.
    let flushed = tokio::time::timeout(FINAL_FLUSH_MAX, async {
        while outbox.unacked_len() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    if !flushed {
        info!(
            unacked = outbox.unacked_len(),
            "events not yet acknowledged stay in the outbox for the next start"
        );
    }
    reporter_stop.cancel();
    if !reporter_done {
        let _ = reporter.await;
    }
    server_stop.cancel();
    let result = match server_result {
        Some(r) => r,
        None => server.await,
    };
    info!("agent stopped");
    if let Some(e) = fatal {
        return Err(e);
    }
    match result {
        Ok(r) => r,
        Err(e) => Err(AgentError::Transport(format!("server task failed: {e}"))),
    }
}

/// Says at start what will make run-as jobs fail on this host (admission checks it
/// again at every start; this is only an early warning for the operator).
fn warn_about_run_as(config: &AgentConfig) {
    use run_as::Host;
    if config.allow_run_as.is_empty() {
        return;
    }
    let host = run_as::RealHost;
    let euid = host.euid();
    for rule in &config.allow_run_as {
        match host.user(rule.user()) {
            Ok(Some(user)) if user.uid == 0 || user.gid == 0 => {
                warn!(rule = %rule, "run-as user is root or in the root group: jobs asking for it are refused")
            }
            Ok(Some(user)) if euid != 0 && euid != user.uid => {
                warn!(rule = %rule, euid, "this agent is not root and cannot switch to the run-as user: jobs asking for it are refused")
            }
            Ok(Some(user)) => {
                if let Err(reason) = job::layout::reachable_by(&config.data_dir, &user) {
                    warn!(rule = %rule, %reason, "run-as jobs for this user will fail");
                }
            }
            Ok(None) => {
                warn!(rule = %rule, "run-as user does not exist on this host (yet): jobs asking for it are refused")
            }
            Err(e) => warn!(rule = %rule, error = %e, "cannot look up run-as user"),
        }
    }
    info!(
        rules = %config
            .allow_run_as
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        "run-as users allowed"
    );
}

#[cfg(test)]
mod agent_tests;
