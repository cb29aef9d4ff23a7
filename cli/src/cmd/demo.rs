//! `baton demo`: an embedded coordinator, N local agents as separate
//! processes, and the example fan-out — the whole system on one machine.

use std::time::Instant;

use baton_proto as pb;

use crate::error::{CliError, EXIT_FAILED};
use crate::local_cluster::{ClusterSpec, LocalCluster};
use crate::output::{Format, errln, outln, summary_human, summary_json};

const PARENT: &str = include_str!("../../../examples/fanout/parent.toml");
const CHILD: &str = include_str!("../../../examples/fanout/child.toml");
const AGENTS_MAX: u32 = 64;

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
    let human = args.output == Format::Human;
    let spec = ClusterSpec {
        agent_slots: vec![args.slots; args.agents as usize],
        agent_queue: 0,
        lease_ttl_ms: 3000,
        heartbeat_ms: 500,
        agent_cpus: None,
        store: Default::default(),
    };
    let mut cluster = LocalCluster::start(&spec, "baton-demo-").await?;
    if human {
        errln!(
            "coordinator on {}, {} agents ready ({} slots each), data in {}; fanning out {} children",
            cluster.opt.url,
            args.agents,
            args.slots,
            cluster.path().display(),
            args.children
        );
    }
    let opt = cluster.opt.clone();
    let client = &mut cluster.client;

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
            folder: String::new(),
            ..Default::default()
        })
        .await
        .map_err(|s| opt.status(s))?
        .into_inner()
        .execution_id;
    let summary = super::follow::wait(client, &opt, &id, false).await?;
    let wall = started.elapsed().as_secs_f64();
    let ok = summary.state == "succeeded";
    // The result first: stopping the agents and removing the directory take
    // a while, and an interrupted demo should still have shown it.
    match args.output {
        Format::Json => outln!("{}", summary_json(&summary, Some(wall))),
        Format::Human => outln!("{}", summary_human(&summary, Some(wall))),
    }
    let keep = args.keep || !ok;
    if human && !keep {
        errln!(
            "stopping the agents and removing {}",
            cluster.path().display()
        );
    }
    if let Some(kept) = cluster.stop(keep).await {
        errln!("kept {} (coordinator store, agent logs)", kept.display());
    }
    Ok(if ok { 0 } else { EXIT_FAILED })
}
