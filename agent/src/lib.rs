//! The Baton agent: admission, job runner, durable event outbox, completion stream.
//!
//! An agent serves `AgentService` for the coordinator (`StartJob` answers at once,
//! before the job runs), runs each accepted child package as processes in their own
//! process group, records `JobStarted` / `JobFinished` in a durable outbox and streams
//! them to the coordinator until acknowledged — across reconnects and restarts.
//!
//! Modules, one job each:
//! - [`config`]: `AgentConfig` and its validation;
//! - [`error`]: `AgentError` and its stable codes;
//! - [`model`]: validated domain types (`DispatchKey`, `StartJob`, ...);
//! - [`admission`]: the checks behind `StartJob`'s answer;
//! - [`plan`]: child package + parameters → concrete steps;
//! - [`runner`]: runs the steps as processes (timeouts, kill, output capture);
//! - [`jobs`]: the table of running and recently finished jobs;
//! - [`supervisor`]: admission + table + runner tasks behind one lock;
//! - [`outbox`]: the durable, group-committed event outbox (redb);
//! - [`reporter`]: registration and the `ReportEvents` stream;
//! - [`service`]: the thin tonic `AgentService` impl;
//! - [`transport`]: every server / channel setup (TLS goes there).

pub mod admission;
pub mod config;
pub mod error;
pub mod jobs;
pub mod leftovers;
pub mod model;
pub mod outbox;
pub mod plan;
pub mod reporter;
pub mod runner;
pub mod service;
pub mod supervisor;
pub mod transport;

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
    // Before any job starts: end what an earlier boot left running.
    leftovers::reap(&config.data_dir.join("jobs"));
    let supervisor = supervisor::Supervisor::new(&config, outbox.clone());
    let boot_id = uuid::Uuid::new_v4().to_string();
    info!(
        name = %config.name,
        boot_id = %boot_id,
        outbox_id = %outbox.outbox_id(),
        unacked = outbox.unacked_len(),
        "agent starting"
    );

    let server_stop = CancellationToken::new();
    let server = {
        let service = service::AgentGrpc::new(supervisor.clone());
        let stop = server_stop.clone();
        tokio::spawn(transport::serve(
            service,
            listener,
            config.tls.clone(),
            async move { stop.cancelled().await },
        ))
    };
    let reporter_stop = CancellationToken::new();
    let reporter = tokio::spawn(
        reporter::Reporter::new(
            reporter::Identity {
                name: config.name.clone(),
                coordinator_url: config.coordinator_url.clone(),
                advertise_addr: config.advertise_addr.clone(),
                labels: config.labels.clone(),
                slots: config.slots,
                boot_id,
                tls: config.tls.clone(),
            },
            outbox.clone(),
            supervisor.clone(),
        )
        .run(reporter_stop.clone()),
    );

    // Run until asked to stop, or until the server fails.
    let mut server = server;
    let server_result = tokio::select! {
        () = shutdown.cancelled() => None,
        r = &mut server => Some(r),
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
    let _ = reporter.await;
    server_stop.cancel();
    let result = match server_result {
        Some(r) => r,
        None => server.await,
    };
    info!("agent stopped");
    match result {
        Ok(r) => r,
        Err(e) => Err(AgentError::Transport(format!("server task failed: {e}"))),
    }
}

#[cfg(test)]
mod agent_tests;
