//! `baton exec`: inspect executions.

use baton_proto as pb;
use serde_json::json;

use crate::client::CoordinatorOpt;
use crate::error::CliError;
use crate::output::{Format, summary_human, summary_json};

#[derive(Debug, clap::Subcommand)]
pub enum ExecCmd {
    /// Cancel an execution: pending children are cancelled, running ones are ended on
    /// their agents (SIGTERM, a grace period, SIGKILL on the whole process group).
    #[command(
        after_help = "Examples:\n  baton exec cancel 019ab2c4...\n  baton exec cancel 019ab2c4... --reason 'wrong date' --wait"
    )]
    Cancel {
        id: String,
        /// Why (recorded on the execution).
        #[arg(long, default_value = "")]
        reason: String,
        /// Wait until every child has stopped; exit 0 once the execution has ended.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Show an execution and every child job (state, agent, attempt, exit code, reason).
    #[command(
        after_help = "Example:\n  baton exec show 019ab2c4... --output json | jq '.children[] | select(.state != \"succeeded\")'"
    )]
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        /// Rows of the child table in human output (all with --output json).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
}

fn child_json(c: &pb::ChildJob) -> serde_json::Value {
    json!({
        "task": c.task_path,
        "index": c.item_index,
        "item": c.item,
        "state": c.state,
        "attempt": c.attempt,
        "agent": c.agent,
        "exit_code": c.exit_code,
        "reason": c.reason,
        "attempt_agents": c.attempt_agents,
        "pid": c.pid,
        "outputs": c.outputs,
        "started_unix_ms": c.started_unix_ms,
        "finished_unix_ms": c.finished_unix_ms,
    })
}

pub async fn run(cmd: ExecCmd) -> Result<u8, CliError> {
    match cmd {
        ExecCmd::Cancel {
            id,
            reason,
            wait,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let state = client
                .cancel_execution(pb::CancelExecutionRequest {
                    execution_id: id.clone(),
                    reason,
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner()
                .state;
            let summary = if wait && state == "cancelling" {
                Some(super::run::wait(&mut client, &coordinator, &id, false).await?)
            } else {
                None
            };
            let final_state = summary
                .as_ref()
                .map_or(state.as_str(), |s| s.state.as_str());
            match output {
                Format::Json => {
                    let mut v = json!({ "execution_id": id, "status": final_state });
                    if let Some(s) = &summary {
                        v["summary"] = summary_json(s, None);
                    }
                    println!("{v}");
                }
                Format::Human => match &summary {
                    Some(s) => println!("{}", summary_human(s, None)),
                    None if final_state == "cancelling" => {
                        println!("execution {id}: cancelling");
                        eprintln!(
                            "running children are being stopped; `baton exec show {id}` follows them, --wait waits"
                        );
                    }
                    None => println!("execution {id}: {final_state} (it had already ended)"),
                },
            }
            Ok(0)
        }
        ExecCmd::Show {
            id,
            output,
            limit,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let detail = client
                .get_execution(pb::GetExecutionRequest { execution_id: id })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            let summary = detail.summary.unwrap_or_default();
            match output {
                Format::Json => {
                    let v = json!({
                        "execution_id": summary.execution_id,
                        "status": summary.state,
                        "summary": summary_json(&summary, None),
                        "children": detail.children.iter().map(child_json).collect::<Vec<_>>(),
                    });
                    println!("{v}");
                }
                Format::Human => {
                    println!("{}\n", summary_human(&summary, None));
                    println!(
                        "{:<16} {:>6} {:<12} {:>7} {:<16} {:>5}  REASON",
                        "TASK", "INDEX", "STATE", "ATTEMPT", "AGENT", "EXIT"
                    );
                    // Children that did not succeed first: they are what a person looks for.
                    let mut rows: Vec<&pb::ChildJob> = detail.children.iter().collect();
                    rows.sort_by_key(|c| {
                        (c.state == "succeeded", c.task_path.clone(), c.item_index)
                    });
                    for c in rows.iter().take(limit) {
                        let exit = if c.exit_code >= 0 {
                            c.exit_code.to_string()
                        } else {
                            "-".into()
                        };
                        println!(
                            "{:<16} {:>6} {:<12} {:>7} {:<16} {:>5}  {}",
                            c.task_path, c.item_index, c.state, c.attempt, c.agent, exit, c.reason
                        );
                    }
                    if rows.len() > limit {
                        println!(
                            "... {} more (use --limit or --output json)",
                            rows.len() - limit
                        );
                    }
                }
            }
            Ok(0)
        }
    }
}
