//! `baton exec`: inspect executions.

use baton_proto as pb;
use serde_json::json;

use crate::client::CoordinatorOpt;
use crate::error::CliError;
use crate::output::{
    Format, Lines, Progress, errln, list_json, out, outln, summary_human, summary_json,
};

#[derive(Debug, clap::Subcommand)]
pub enum ExecCmd {
    /// List executions, newest first.
    #[command(
        after_help = "Examples:\n  baton exec list\n  baton exec list --state running\n  baton exec list --package fanout --limit 20 --output json"
    )]
    List {
        /// Only this state: running, succeeded, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only executions of this package.
        #[arg(long)]
        package: Option<String>,
        /// Rows per page (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page (printed as next_page_token).
        #[arg(long, default_value = "")]
        page_token: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Cancel an execution: pending children are cancelled, running ones are ended on
    /// their agents (SIGTERM, a grace period, SIGKILL on the whole process group).
    /// With --child, only that child (not retried; its task, and so the execution,
    /// ends failed once the other children are done).
    #[command(
        after_help = "Examples:\n  baton exec cancel 019ab2c4...\n  baton exec cancel 019ab2c4... --reason 'wrong date' --wait\n  baton exec cancel 019ab2c4... --child 'shards[3]' --wait"
    )]
    Cancel {
        id: String,
        /// Only this child: `TASK[INDEX]` as `baton exec show` lists it (`TASK` alone for index 0).
        #[arg(long)]
        child: Option<String>,
        /// Why (recorded on the execution, or on the child).
        #[arg(long, default_value = "")]
        reason: String,
        /// Wait until every child (or the one child) has stopped; exit 0 once it has.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Run a failed or cancelled execution again from where it stopped: every child
    /// that did not succeed (failed, timed out, cancelled, lost) runs again under a
    /// new attempt number; succeeded children keep their results and are not started
    /// again; tasks that had not started yet run as they would have.
    #[command(
        after_help = "Examples:\n  baton exec resume 019ab2c4...\n  baton exec resume 019ab2c4... --wait --output json\n\nThe execution keeps its id, parameters and package version. A succeeded or\nrunning execution cannot be resumed (EXECUTION_NOT_RESUMABLE). With --wait the\nexit code is that of `baton run`: 0 when it succeeds."
    )]
    Resume {
        id: String,
        /// Wait until it ends (with a progress bar on a terminal); exit 0 if it succeeds.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Wait for an execution to end (again, after an interrupted `run --wait`);
    /// the exit code is its result, as with `baton run --wait`.
    #[command(
        after_help = "Examples:\n  baton exec wait 019ab2c4...\n  baton exec wait 019ab2c4... --output json | jq .status\n\nExit code: 0 when the execution succeeded, 1 when it failed or was cancelled,\n3 when the coordinator went away (the execution goes on). A progress bar is\nshown on a terminal; `baton exec watch` prints progress lines anywhere."
    )]
    Wait {
        id: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Follow an execution live: one line per change of its counts (at most one
    /// a second), with why children wait; ends with its summary when it ends.
    #[command(
        after_help = "Examples:\n  baton exec watch 019ab2c4...\n  baton exec watch 019ab2c4... --output json   # one summary object per line\n\nA line: `running 120/500 done: 118 succeeded, 2 failed, 8 running, 372 pending\n(waiting for capacity: …)`. Works without a terminal (logs, CI). The exit code\nis that of `baton exec wait`; Ctrl-C stops watching, not the execution."
    )]
    Watch {
        id: String,
        /// human: a line per change, then the summary; json: a summary object
        /// per change (the last one is the final summary).
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Print one child's stdout and stderr, from its agent (-f: as it writes, until it ends).
    #[command(
        after_help = "Examples:\n  baton exec logs 019ab2c4... --child 'shards[3]'\n  baton exec logs 019ab2c4... --child 'shards[3]' -f\n  baton exec logs 019ab2c4... --child load --stderr --attempt 1\n\nThe child's stdout goes to stdout and its stderr to stderr, as stored on the agent\n(sensitive parameter values masked). Quote TASK[INDEX] in shells that glob brackets."
    )]
    Logs(super::exec_child::LogsArgs),
    /// Print the rows one succeeded child wrote to $BATON_ROWS (JSON lines).
    #[command(
        after_help = "Examples:\n  baton exec rows 019ab2c4... --child 'shards[3]'\n  baton exec rows 019ab2c4... --child 'shards[3]' -o csv > shards3.csv\n  baton exec rows 019ab2c4... --child load -o json | jq .total\n\ncsv and table: the columns are the union of the rows' keys in first-seen order;\nstrings as they are, other values as JSON."
    )]
    Rows(super::exec_child::RowsArgs),
    /// Show an execution and every child job (state, agent, attempt, exit code, reason).
    #[command(
        after_help = "Example:\n  baton exec show 019ab2c4... --output json | jq '.children[] | select(.state != \"succeeded\")'"
    )]
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        /// Rows of the child table per task in human output.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Most children to fetch (at most 100,000): those that did not succeed
        /// come first; counts always cover every child.
        #[arg(long, default_value_t = 10_000)]
        children: u32,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
}

fn child_json(c: &pb::ChildJob) -> serde_json::Value {
    json!({
        "child": format!("{}[{}]", c.task_path, c.item_index),
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

/// The execution as a tree: each task of the parent with its counts, then its
/// children — those that did not succeed first, since they are what a person
/// looks for — up to `limit` rows per task.
fn tree(infos: &[pb::TaskInfo], children: &[pb::ChildJob], limit: usize) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut tasks: BTreeMap<&str, Vec<&pb::ChildJob>> = BTreeMap::new();
    for c in children {
        tasks.entry(c.task_path.as_str()).or_default().push(c);
    }
    let mut out = String::new();
    // Tasks without children (noop, skipped, not started yet, groups) first
    // get a line of their own, in task order.
    for t in infos {
        if !tasks.contains_key(t.name.as_str()) {
            let why = if t.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", t.reason)
            };
            let _ = writeln!(out, "task {} {}{why}", t.name, t.state);
        }
    }
    let state_of = |task: &str| {
        infos
            .iter()
            .find(|t| t.name == task)
            .map(|t| format!("{} ", t.state))
            .unwrap_or_default()
    };
    for (task, mut rows) in tasks {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &rows {
            *counts.entry(c.state.as_str()).or_default() += 1;
        }
        let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let _ = writeln!(
            out,
            "task {task} {}({} children: {})",
            state_of(task),
            rows.len(),
            counts.join(", ")
        );
        rows.sort_by_key(|c| (c.state == "succeeded", c.item_index));
        let _ = writeln!(
            out,
            "  {:>6} {:<10} {:<12} {:>7} {:<16} {:>5} {:>9}  REASON",
            "INDEX", "ITEM", "STATE", "ATTEMPT", "AGENT", "EXIT", "SECONDS"
        );
        for c in rows.iter().take(limit) {
            let exit = if c.exit_code >= 0 {
                c.exit_code.to_string()
            } else {
                "-".into()
            };
            let secs = if c.finished_unix_ms >= c.started_unix_ms && c.started_unix_ms > 0 {
                format!(
                    "{:.2}",
                    (c.finished_unix_ms - c.started_unix_ms) as f64 / 1000.0
                )
            } else {
                "-".into()
            };
            let _ = writeln!(
                out,
                "  {:>6} {:<10} {:<12} {:>7} {:<16} {:>5} {:>9}  {}",
                c.item_index, c.item, c.state, c.attempt, c.agent, exit, secs, c.reason
            );
        }
        if rows.len() > limit {
            let _ = writeln!(
                out,
                "  ... {} more (use --limit or --output json)",
                rows.len() - limit
            );
        }
    }
    out
}

/// What a cancel request did, in words.
fn cancel_phrase(id: &str, a: &pb::CancelExecutionResponse) -> String {
    if a.already_ended {
        return format!(
            "execution {id}: {} (it had already ended; nothing changed)",
            a.state
        );
    }
    let mut did = Vec::new();
    if a.children_cancelled > 0 {
        did.push(format!(
            "{} child(ren) cancelled before they started",
            a.children_cancelled
        ));
    }
    if a.children_stopping > 0 {
        did.push(format!(
            "{} running child(ren) being stopped on their agents",
            a.children_stopping
        ));
    }
    if did.is_empty() {
        did.push("no child was pending or running".to_string());
    }
    format!("execution {id}: {} ({})", a.state, did.join("; "))
}

/// A time for people, RFC 3339 in UTC (see [`crate::output::rfc3339`]).
pub(crate) fn ms_to_utc(ms: u64) -> String {
    crate::output::rfc3339(ms)
}

pub async fn run(cmd: ExecCmd) -> Result<u8, CliError> {
    match cmd {
        ExecCmd::List {
            state,
            package,
            limit,
            page_token,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let resp = client
                .list_executions(pb::ListExecutionsRequest {
                    state: state.unwrap_or_default(),
                    package: package.unwrap_or_default(),
                    limit,
                    page_token,
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            match output {
                Format::Json => {
                    let list: Vec<_> = resp
                        .executions
                        .iter()
                        .map(|s| summary_json(s, None))
                        .collect();
                    outln!("{}", list_json(list, Some(&resp.next_page_token)));
                }
                Format::Human => {
                    outln!(
                        "{:<32}  {:<16} {:<10} {:>7} {:>9} {:>7} {:>9} {:>7} {:>7}  CREATED (UTC)",
                        "EXECUTION",
                        "PACKAGE",
                        "STATE",
                        "TOTAL",
                        "SUCCEEDED",
                        "FAILED",
                        "CANCELLED",
                        "RUNNING",
                        "PENDING"
                    );
                    for s in &resp.executions {
                        outln!(
                            "{:<32}  {:<16} {:<10} {:>7} {:>9} {:>7} {:>9} {:>7} {:>7}  {}",
                            s.execution_id,
                            s.package,
                            s.state,
                            s.total,
                            s.succeeded,
                            s.failed,
                            s.cancelled,
                            s.running,
                            s.pending,
                            ms_to_utc(s.created_unix_ms)
                        );
                    }
                    if !resp.next_page_token.is_empty() {
                        outln!("more: --page-token {}", resp.next_page_token);
                    }
                }
            }
            Ok(0)
        }
        ExecCmd::Resume {
            id,
            wait,
            output,
            coordinator,
        } => resume(&coordinator, &id, wait, output).await,
        ExecCmd::Wait {
            id,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let summary = super::follow::wait(&mut client, &coordinator, &id, false).await?;
            super::follow::print_summary(&summary, None, output);
            Ok(super::follow::exit_of(&summary))
        }
        ExecCmd::Watch {
            id,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let progress = Progress::with_format(Lines::Stdout, output == Format::Json);
            let summary = super::follow::follow(&mut client, &coordinator, &id, progress).await?;
            if crate::output::stdout_closed() {
                // `| head`: the reader has seen enough; the execution goes on.
                return Ok(0);
            }
            if output == Format::Human {
                outln!("{}", summary_human(&summary, None));
            }
            Ok(super::follow::exit_of(&summary))
        }
        ExecCmd::Logs(a) => super::exec_child::logs(a).await,
        ExecCmd::Rows(a) => super::exec_child::rows(a).await,
        ExecCmd::Cancel {
            id,
            child: Some(child),
            reason,
            wait,
            output,
            coordinator,
        } => super::exec_child::cancel(&coordinator, &id, &child, reason, wait, output).await,
        ExecCmd::Cancel {
            id,
            child: None,
            reason,
            wait,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let answer = client
                .cancel_execution(pb::CancelExecutionRequest {
                    execution_id: id.clone(),
                    reason,
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            let summary = if wait && answer.state == "cancelling" {
                Some(super::follow::wait(&mut client, &coordinator, &id, false).await?)
            } else {
                None
            };
            let final_state = summary
                .as_ref()
                .map_or(answer.state.as_str(), |s| s.state.as_str());
            match output {
                Format::Json => {
                    let mut v = json!({
                        "execution_id": id,
                        "status": final_state,
                        "already_ended": answer.already_ended,
                        "children_cancelled": answer.children_cancelled,
                        "children_stopping": answer.children_stopping,
                    });
                    if let Some(s) = &summary {
                        v["summary"] = summary_json(s, None);
                    }
                    outln!("{v}");
                }
                Format::Human => {
                    outln!("{}", cancel_phrase(&id, &answer));
                    match &summary {
                        Some(s) => outln!("{}", summary_human(s, None)),
                        None if final_state == "cancelling" => errln!(
                            "`baton exec watch {id}` follows them, `baton exec wait {id}` waits for the end"
                        ),
                        None => {}
                    }
                }
            }
            Ok(0)
        }
        ExecCmd::Show {
            id,
            output,
            limit,
            children,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let detail = client
                .get_execution(pb::GetExecutionRequest {
                    execution_id: id,
                    children_limit: children.max(1),
                    child: None,
                })
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
                        "tasks": detail.tasks.iter().map(|t| json!({"task": t.name, "state": t.state, "reason": t.reason})).collect::<Vec<_>>(),
                        "children": detail.children.iter().map(child_json).collect::<Vec<_>>(),
                        "children_total": detail.children_total,
                        "children_truncated": detail.children_truncated,
                    });
                    outln!("{v}");
                }
                Format::Human => {
                    outln!("{}\n", summary_human(&summary, None));
                    out!("{}", tree(&detail.tasks, &detail.children, limit));
                    if detail.children_truncated {
                        errln!(
                            "showing {} of {} children (those that did not succeed first); --children N for more",
                            detail.children.len(),
                            detail.children_total
                        );
                    }
                }
            }
            Ok(0)
        }
    }
}

/// `baton exec resume`.
async fn resume(
    coordinator: &CoordinatorOpt,
    id: &str,
    wait: bool,
    output: Format,
) -> Result<u8, CliError> {
    let mut client = coordinator.connect().await?;
    let resp = client
        .resume_execution(pb::ResumeExecutionRequest {
            execution_id: id.to_string(),
        })
        .await
        .map_err(|s| coordinator.status(s))?
        .into_inner();
    if !wait {
        match output {
            Format::Json => outln!(
                "{}",
                json!({"execution_id": id, "status": resp.state, "rerun_children": resp.children, "resumes": resp.resumes})
            ),
            Format::Human => {
                outln!(
                    "execution {id}: running again ({} child(ren) to re-run; resumed {} time(s))",
                    resp.children,
                    resp.resumes
                );
                errln!(
                    "`baton exec watch {id}` follows it; `baton exec wait {id}` waits for the end"
                );
            }
        }
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let summary = super::follow::wait(&mut client, coordinator, id, false).await?;
    let wall = started.elapsed().as_secs_f64();
    match output {
        Format::Json => {
            let mut v = summary_json(&summary, Some(wall));
            v["rerun_children"] = json!(resp.children);
            outln!("{v}");
        }
        Format::Human => outln!("{}", summary_human(&summary, Some(wall))),
    }
    Ok(if summary.state == "succeeded" {
        0
    } else {
        crate::error::EXIT_FAILED
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn tree_groups_by_task_and_puts_failures_first() {
        let child = |task: &str, i: u32, state: &str| super::pb::ChildJob {
            task_path: task.into(),
            item_index: i,
            item: i.to_string(),
            state: state.into(),
            attempt: 1,
            agent: "a1".into(),
            exit_code: if state == "succeeded" { 0 } else { 3 },
            ..Default::default()
        };
        let rows = [
            child("load", 0, "succeeded"),
            child("load", 1, "failed"),
            child("extract", 0, "succeeded"),
        ];
        let t = super::tree(&[], &rows, 1);
        let extract = t.find("task extract (1 children: 1 succeeded)").unwrap();
        let load = t
            .find("task load (2 children: 1 failed, 1 succeeded)")
            .unwrap();
        assert!(extract < load, "{t}");
        assert!(
            t[load..].contains(" failed "),
            "the failure is shown first: {t}"
        );
        assert!(t.contains("... 1 more"), "{t}");
    }

    #[test]
    fn a_cancel_says_what_it_did() {
        let answer = |state: &str, ended: bool, cancelled: u64, stopping: u64| {
            super::pb::CancelExecutionResponse {
                state: state.into(),
                already_ended: ended,
                children_cancelled: cancelled,
                children_stopping: stopping,
            }
        };
        assert_eq!(
            super::cancel_phrase("e1", &answer("cancelled", false, 3, 0)),
            "execution e1: cancelled (3 child(ren) cancelled before they started)"
        );
        assert_eq!(
            super::cancel_phrase("e1", &answer("cancelling", false, 1, 2)),
            "execution e1: cancelling (1 child(ren) cancelled before they started; \
             2 running child(ren) being stopped on their agents)"
        );
        assert!(
            super::cancel_phrase("e1", &answer("succeeded", true, 0, 0))
                .contains("it had already ended")
        );
    }

    #[test]
    fn utc_rendering() {
        assert_eq!(super::ms_to_utc(0), "-");
        assert_eq!(super::ms_to_utc(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(super::ms_to_utc(1_795_305_600_000), "2026-11-22T00:00:00Z");
        assert_eq!(super::ms_to_utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
