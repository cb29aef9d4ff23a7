//! `baton demo`: an embedded coordinator, N local agents as separate
//! processes, and the example fan-out — the whole system on one machine.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_proto as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::CoordinatorOpt;
use crate::error::{CliError, EXIT_FAILED};
use crate::output::{Format, summary_human, summary_json};

const PARENT: &str = include_str!("../../../examples/fanout/parent.toml");
const CHILD: &str = include_str!("../../../examples/fanout/child.toml");
const AGENTS_MAX: u32 = 64;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Run the example fan-out on an embedded coordinator and local agents.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  baton demo\n  baton demo --agents 3 --children 2000 --work-ms 0 --output json"
)]
pub struct DemoArgs {
    /// Local agents to start (separate processes).
    #[arg(long, default_value_t = 3)]
    pub agents: u32,
    /// Child jobs to fan out.
    #[arg(long, default_value_t = 200)]
    pub children: u32,
    /// Slots per agent.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Milliseconds of simulated work per child (0: the child process just starts and exits).
    #[arg(long, default_value_t = 50)]
    pub work_ms: u32,
    /// Keep the temporary directory (stores, agent logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    #[arg(long, value_enum, default_value = "human")]
    pub output: Format,
}

/// Agent processes, ended (SIGTERM, then SIGKILL) when dropped.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for c in &self.0 {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.0 {
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_agent(exe: &Path, url: &str, dir: &Path, i: u32, slots: u32) -> Result<Child, CliError> {
    let data = dir.join(format!("agent-{i}"));
    std::fs::create_dir_all(&data).map_err(|e| CliError::other("IO_FAILED", e.to_string()))?;
    let log = std::fs::File::create(dir.join(format!("agent-{i}.log")))
        .map_err(|e| CliError::other("IO_FAILED", e.to_string()))?;
    Command::new(exe)
        .args(["agent", "--coordinator", url, "--listen", "127.0.0.1:0"])
        .args([
            "--name",
            &format!("agent-{i}"),
            "--slots",
            &slots.to_string(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .env(
            "BATON_LOG",
            std::env::var("BATON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| CliError::other("SPAWN_FAILED", format!("cannot start agent process: {e}")))
}

pub async fn run(args: DemoArgs) -> Result<u8, CliError> {
    if args.agents == 0 || args.agents > AGENTS_MAX {
        return Err(CliError::invalid(
            "USAGE",
            format!("--agents must be 1..={AGENTS_MAX}"),
        ));
    }
    if args.children == 0 {
        return Err(CliError::invalid("USAGE", "--children must be at least 1"));
    }
    let tmp = tempfile::Builder::new()
        .prefix("baton-demo-")
        .tempdir()
        .map_err(|e| CliError::other("IO_FAILED", e.to_string()))?;
    let dir = tmp.path().to_path_buf();
    let human = args.output == Format::Human;

    // The embedded coordinator.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::other("LISTEN_FAILED", e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::other("LISTEN_FAILED", e.to_string()))?;
    let shutdown = CancellationToken::new();
    let config = baton_coordinator::CoordinatorConfig {
        data_dir: dir.join("coordinator"),
        lease_ttl_ms: 3000,
        heartbeat_ms: 500,
    };
    let running = baton_coordinator::start(config, listener, shutdown.clone()).await?;
    let url = format!("http://{addr}");
    if human {
        eprintln!("coordinator on {url}, data in {}", dir.display());
    }

    // The agents, as separate processes.
    let exe = std::env::current_exe().map_err(|e| CliError::other("IO_FAILED", e.to_string()))?;
    let mut agents = Agents(Vec::new());
    for i in 1..=args.agents {
        agents.0.push(spawn_agent(&exe, &url, &dir, i, args.slots)?);
    }
    let opt = CoordinatorOpt { url: url.clone() };
    let mut client = opt.connect().await?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let list = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .map_err(|s| opt.status(s))?
            .into_inner();
        let ready = list.agents.iter().filter(|a| a.state == "ready").count() as u32;
        if ready >= args.agents {
            break;
        }
        if Instant::now() > deadline {
            return Err(CliError::other(
                "AGENTS_NOT_READY",
                format!(
                    "only {ready} of {} agents registered within {READY_TIMEOUT:?}; see logs in {}",
                    args.agents,
                    dir.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if human {
        eprintln!(
            "{} agents ready ({} slots each); fanning out {} children",
            args.agents, args.slots, args.children
        );
    }

    // The fan-out.
    let work_s = format!("{}.{:03}", args.work_ms / 1000, args.work_ms % 1000);
    let started = Instant::now();
    let id = client
        .start_execution(pb::StartExecutionRequest {
            bundle: Some(pb::PackageBundle {
                root: "parent.toml".into(),
                files: [
                    ("parent.toml".to_string(), PARENT.to_string()),
                    ("child.toml".to_string(), CHILD.to_string()),
                ]
                .into(),
            }),
            parameters: [
                ("children".to_string(), args.children.to_string()),
                ("work_s".to_string(), work_s),
            ]
            .into(),
        })
        .await
        .map_err(|s| opt.status(s))?
        .into_inner()
        .execution_id;
    let summary = super::run::wait(&mut client, &opt, &id, false).await?;
    let wall = started.elapsed().as_secs_f64();

    drop(agents);
    shutdown.cancel();
    let _ = running.task.await;

    match args.output {
        Format::Json => println!("{}", summary_json(&summary, Some(wall))),
        Format::Human => println!("{}", summary_human(&summary, Some(wall))),
    }
    let ok = summary.state == "succeeded";
    if args.keep || !ok {
        let kept = tmp.keep();
        eprintln!("kept {} (coordinator store, agent logs)", kept.display());
    }
    Ok(if ok { 0 } else { EXIT_FAILED })
}
