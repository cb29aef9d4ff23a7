//! `baton agents`: the fleet.

use baton_proto as pb;
use serde_json::json;

use crate::client::CoordinatorOpt;
use crate::error::CliError;
use crate::output::Format;

#[derive(Debug, clap::Subcommand)]
pub enum AgentsCmd {
    /// List registered agents with their state, slots and load.
    List {
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
}

pub async fn run(cmd: AgentsCmd) -> Result<u8, CliError> {
    let AgentsCmd::List {
        output,
        coordinator,
    } = cmd;
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
                    })
                })
                .collect();
            println!("{}", json!({ "agents": list }));
        }
        Format::Human => {
            println!(
                "{:<20} {:<22} {:<9} {:>5} {:>7} {:>6}  LABELS",
                "NAME", "ADDRESS", "STATE", "SLOTS", "RUNNING", "LOAD"
            );
            for a in &agents {
                let labels: Vec<String> =
                    a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<20} {:<22} {:<9} {:>5} {:>7} {:>6.2}  {}",
                    a.name,
                    a.address,
                    a.state,
                    a.slots,
                    a.running,
                    a.load1,
                    labels.join(",")
                );
            }
        }
    }
    Ok(0)
}
