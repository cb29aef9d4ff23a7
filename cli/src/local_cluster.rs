//! A whole Baton system on this machine: an embedded coordinator and agents
//! started as separate `baton agent` processes, each with its own temp dir.
//! Secure like a real fleet: it makes a CA in the temp dir, and every
//! connection (client, coordinator, agents) uses mutual TLS.
//! Used by `baton demo` and `baton bench`; stopped (agents SIGTERM, then
//! SIGKILL after a grace) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use baton_proto as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::CoordinatorOpt;
use crate::error::CliError;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Slots of each agent, one entry per agent.
    pub agent_slots: Vec<u32>,
    /// Jobs each agent accepts beyond its slots (`baton agent --queue`).
    pub agent_queue: u32,
    pub lease_ttl_ms: u64,
    pub heartbeat_ms: u64,
    /// The CPUs the agent processes may run on (a `taskset -c` list; `None`: any).
    pub agent_cpus: Option<String>,
    /// The coordinator's store (embedded unless `baton bench --store etcd`).
    pub store: baton_coordinator::store::StoreConfig,
}

/// One agent process.
pub struct AgentProc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

/// A running local cluster.
pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub opt: CoordinatorOpt,
    pub client: crate::client::Control,
    pub coordinator: baton_coordinator::Coordinator,
    pub agents: Vec<AgentProc>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), baton_coordinator::CoordinatorError>>>,
}

fn io(e: impl std::fmt::Display) -> CliError {
    CliError::other("IO_FAILED", e.to_string())
}

pub(crate) fn spawn_agent(
    exe: &Path,
    url: &str,
    dir: &Path,
    name: &str,
    (slots, queue): (u32, u32),
    enrol_token: &str,
    cpus: Option<&str>,
) -> Result<AgentProc, CliError> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).map_err(io)?;
    let log = dir.join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log).map_err(io)?;
    // `taskset -c` execs the agent: the pid is the agent's.
    let child = crate::proc_cpu::command_on(cpus, exe.as_os_str())
        .args(["agent", "--coordinator", url, "--listen", "127.0.0.1:0"])
        .args(["--name", name, "--slots", &slots.to_string()])
        .args(["--queue", &queue.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .env(
            "BATON_LOG",
            std::env::var("BATON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        // Zero-touch enrolment, as on a real worker; the token is passed by
        // environment so that it is not in `ps`.
        .env("BATON_ENROLL_TOKEN", enrol_token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| CliError::other("SPAWN_FAILED", format!("cannot start agent process: {e}")))?;
    Ok(AgentProc {
        name: name.to_string(),
        child,
        log,
    })
}

impl LocalCluster {
    /// Starts the coordinator and the agents and waits until every agent is ready.
    pub async fn start(spec: &ClusterSpec, prefix: &str) -> Result<LocalCluster, CliError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(io)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::other("LISTEN_FAILED", e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::other("LISTEN_FAILED", e.to_string()))?;
        let shutdown = CancellationToken::new();
        let tls_dir = dir.path().join("coordinator").join("tls");
        let (live, _) = baton_coordinator::live_tls::LiveTls::bootstrap(
            &tls_dir,
            baton_coordinator::pki::DEFAULT_TTL,
        )
        .map_err(|e| CliError::other(e.code(), format!("TLS setup: {e}")))?;
        let config = baton_coordinator::CoordinatorConfig {
            data_dir: dir.path().join("coordinator"),
            lease_ttl_ms: spec.lease_ttl_ms,
            heartbeat_ms: spec.heartbeat_ms,
            security: baton_coordinator::transport::Security::Tls(live),
            retention: baton_coordinator::retention::Policy::default(),
            // Every agent is a process on this machine.
            scheduling: baton_coordinator::SchedulingConfig {
                local_children: true,
                ..Default::default()
            },
            store: spec.store.clone(),
            ..Default::default()
        };
        let running = baton_coordinator::start(config, listener, shutdown.clone()).await?;
        // Alone on its store, it leads as soon as it has campaigned.
        let coordinator = running.leading().await?;
        let opt = CoordinatorOpt {
            url: format!("https://{addr}"),
            tls_dir: tls_dir.join("admin"),
            token: None,
            token_file: None,
            context: None,
            failover_wait: 30,
            session: Default::default(),
        };
        let client = opt.connect().await?;
        let mut cluster = LocalCluster {
            dir,
            opt,
            client,
            coordinator,
            agents: Vec::new(),
            shutdown,
            task: Some(running.task),
        };
        let exe = std::env::current_exe().map_err(io)?;
        for (i, slots) in spec.agent_slots.iter().enumerate() {
            let name = format!("agent-{}", i + 1);
            let token = cluster
                .client
                .create_token(pb::CreateTokenRequest {
                    kind: "agent".into(),
                    name: name.clone(),
                    ttl_s: 600,
                    labels: Vec::new(),
                })
                .await
                .map_err(|s| cluster.opt.status(s))?
                .into_inner()
                .token;
            let a = spawn_agent(
                &exe,
                &cluster.opt.url,
                cluster.dir.path(),
                &name,
                (*slots, spec.agent_queue),
                &token,
                spec.agent_cpus.as_deref(),
            )?;
            cluster.agents.push(a);
        }
        cluster.wait_ready(spec.agent_slots.len()).await?;
        Ok(cluster)
    }

    async fn wait_ready(&mut self, n: usize) -> Result<(), CliError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let list = self
                .client
                .list_agents(pb::ListAgentsRequest {})
                .await
                .map_err(|s| self.opt.status(s))?
                .into_inner();
            let ready = list.agents.iter().filter(|a| a.state == "ready").count();
            if ready >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CliError::other(
                    "AGENTS_NOT_READY",
                    format!(
                        "only {ready} of {n} agents registered within {READY_TIMEOUT:?}; see logs in {}",
                        self.dir.path().display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs one agent (by index) and reaps it.
    pub fn kill_agent(&mut self, index: usize) {
        if let Some(a) = self.agents.get_mut(index) {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
    }

    /// Stops everything; keeps the directory when `keep` and returns its path then.
    pub async fn stop(mut self, keep: bool) -> Option<PathBuf> {
        self.stop_agents();
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().ok()?);
        keep.then(|| dir.keep())
    }

    fn stop_agents(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for a in &self.agents {
            let _ = kill(Pid::from_raw(a.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for a in &mut self.agents {
            while Instant::now() < deadline {
                if matches!(a.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        self.agents.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_agents();
        self.shutdown.cancel();
    }
}
