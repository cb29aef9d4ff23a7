//! `baton agents`: the fleet.

use baton_proto as pb;
use serde_json::json;

use crate::client::CoordinatorOpt;
use crate::error::CliError;
use crate::output::{Format, list_json, outln, rfc3339};

#[derive(Debug, clap::Subcommand)]
pub enum AgentsCmd {
    /// Give an agent no new work; its running children finish. Shown `drained` when empty.
    #[command(
        after_help = "Example:\n  baton agents drain etl-07 --wait   # then patch and reboot the machine"
    )]
    Drain {
        name: String,
        /// Wait until nothing runs on the agent.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Give an agent no new work (running work goes on).
    Cordon {
        name: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Make an agent's certificate useless at once: it is refused from now on (even
    /// after restarts) and its children run elsewhere. Issue a new certificate to
    /// bring the machine back.
    #[command(
        after_help = "Example:\n  baton agents revoke etl-07\n  baton certs issue --agent etl-07 --out DIR   # re-enrol later"
    )]
    Revoke {
        name: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Forget a lost (or revoked) agent: its registration is deleted and it leaves
    /// `agents list`. Refused while it is alive or holds children (AGENT_ALIVE).
    /// If the machine comes back, it registers as new.
    #[command(after_help = "Example:\n  baton agents rm etl-07   # the machine was decommissioned")]
    Rm {
        name: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Let a cordoned or drained agent take work again.
    Uncordon {
        name: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// List registered agents with their state, slots and load.
    List {
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
}

async fn set_state(
    coordinator: &CoordinatorOpt,
    name: &str,
    action: &str,
    wait: bool,
    output: Format,
) -> Result<u8, CliError> {
    let mut client = coordinator.connect().await?;
    let mut agent = client
        .set_agent_state(pb::SetAgentStateRequest {
            name: name.to_string(),
            action: action.to_string(),
        })
        .await
        .map_err(|s| coordinator.status(s))?
        .into_inner();
    if output == Format::Human {
        outln!("agent {name}: {} ({} running)", agent.state, agent.running);
    }
    if wait {
        let started = std::time::Instant::now();
        let mut last_running = agent.running;
        while agent.state == "draining" {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let list = client
                .list_agents(pb::ListAgentsRequest {})
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            agent = list
                .agents
                .into_iter()
                .find(|a| a.name == name)
                .ok_or_else(|| {
                    CliError::invalid("AGENT_NOT_FOUND", format!("agent '{name}' disappeared"))
                })?;
            if agent.running != last_running {
                eprintln!(
                    "{:.0?}: {} still running on {name}",
                    started.elapsed(),
                    agent.running
                );
                last_running = agent.running;
            }
        }
        if output == Format::Human {
            outln!("agent {name}: {}", agent.state);
        }
    }
    if output == Format::Json {
        outln!(
            "{}",
            serde_json::json!({"agent": name, "state": agent.state, "running": agent.running})
        );
    }
    Ok(0)
}

pub async fn run(cmd: AgentsCmd) -> Result<u8, CliError> {
    let (output, coordinator) = match cmd {
        AgentsCmd::List {
            output,
            coordinator,
        } => (output, coordinator),
        AgentsCmd::Drain {
            name,
            wait,
            output,
            coordinator,
        } => return set_state(&coordinator, &name, "drain", wait, output).await,
        AgentsCmd::Cordon {
            name,
            output,
            coordinator,
        } => {
            return set_state(&coordinator, &name, "cordon", false, output).await;
        }
        AgentsCmd::Revoke {
            name,
            output,
            coordinator,
        } => {
            return set_state(&coordinator, &name, "revoke", false, output).await;
        }
        AgentsCmd::Rm {
            name,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            client
                .set_agent_state(pb::SetAgentStateRequest {
                    name: name.clone(),
                    action: "remove".into(),
                })
                .await
                .map_err(|s| coordinator.status(s))?;
            match output {
                Format::Json => {
                    outln!("{}", serde_json::json!({"agent": name, "state": "removed"}))
                }
                Format::Human => outln!("agent {name}: removed"),
            }
            return Ok(0);
        }
        AgentsCmd::Uncordon {
            name,
            output,
            coordinator,
        } => {
            return set_state(&coordinator, &name, "uncordon", false, output).await;
        }
    };
    let mut client = coordinator.connect().await?;
    let agents = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(|s| coordinator.status(s))?
        .into_inner()
        .agents;
    match output {
        Format::Json => {
            let list: Vec<_> = agents
                .iter()
                .map(|a| {
                    json!({
                        "name": a.name, "address": a.address, "state": a.state, "slots": a.slots,
                        "running": a.running, "load1": a.load1, "labels": a.labels,
                        "last_heartbeat_unix_ms": a.last_heartbeat_unix_ms, "version": a.version,
                        "weight": a.weight.max(1), "quarantine_reason": a.quarantine_reason,
                        "quarantined_until_unix_ms": a.quarantined_until_unix_ms,
                    })
                })
                .collect();
            outln!("{}", list_json(list, None));
        }
        Format::Human => {
            outln!(
                "{:<20} {:<22} {:<11} {:>5} {:>6} {:>7} {:>6}  {:<20}  LABELS",
                "NAME",
                "ADDRESS",
                "STATE",
                "SLOTS",
                "WEIGHT",
                "RUNNING",
                "LOAD",
                "LAST HEARTBEAT"
            );
            for a in &agents {
                let labels: Vec<String> =
                    a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                outln!(
                    "{:<20} {:<22} {:<11} {:>5} {:>6} {:>7} {:>6.2}  {:<20}  {}",
                    a.name,
                    a.address,
                    a.state,
                    a.slots,
                    a.weight.max(1),
                    a.running,
                    a.load1,
                    rfc3339(a.last_heartbeat_unix_ms),
                    labels.join(",")
                );
            }
            for a in agents.iter().filter(|a| !a.quarantine_reason.is_empty()) {
                let until = match a.quarantined_until_unix_ms {
                    0 => String::new(),
                    ms => format!(" (until {})", rfc3339(ms)),
                };
                outln!("{}: quarantined: {}{until}", a.name, a.quarantine_reason);
            }
        }
    }
    Ok(0)
}
