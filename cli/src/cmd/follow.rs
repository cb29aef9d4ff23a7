//! Following an execution to its end and printing that end: the execution id
//! announced at once, progress lines or JSON events while it runs, the summary
//! and the exit code it maps to. `run`, `run --local`, `exec wait`/`watch`,
//! `demo` and `bench` share it.
//!
//! With several coordinators (a URL list), a watch that breaks — the leader went
//! away — is opened again (through the failover channel, which finds the new
//! leader) for up to `--failover-wait`; with one URL it ends as before, saying that
//! the execution goes on.

use baton_proto as pb;

use crate::client::CoordinatorOpt;
use crate::error::{CliError, EXIT_FAILED};
use crate::output::{
    Format, Lines, Progress, errln, outln, stdout_closed, summary_human, summary_json,
};

/// Says at once which execution a wait is about: on stderr in human
/// output, as the first JSON line on stdout with `--output json`
/// (`{"event":"started","execution_id":…}`; the last line is the summary).
pub fn announce(id: &str, output: Format, version: Option<&(String, u32, String)>) {
    match output {
        Format::Json => {
            let mut v = serde_json::json!({"event": "started", "execution_id": id});
            if let Some((package, version, hash)) = version {
                v["package"] = serde_json::json!(package);
                v["version"] = serde_json::json!(version);
                v["hash"] = serde_json::json!(hash);
            }
            outln!("{v}");
        }
        Format::Human => {
            if let Some((package, version, _)) = version {
                errln!("started version {version} of {package}");
            }
            errln!(
                "execution {id} started; waiting for its end (Ctrl-C stops waiting, not the \
                 execution: `baton exec wait {id}` waits again)"
            );
        }
    }
}

/// The summary of an ended execution, as `run --wait` prints it.
pub fn print_summary(summary: &pb::ExecutionSummary, wall: Option<f64>, output: Format) {
    match output {
        Format::Json => outln!("{}", summary_json(summary, wall)),
        Format::Human => outln!("{}", summary_human(summary, wall)),
    }
}

/// The exit code of a waited-for execution: 0 when it succeeded.
pub fn exit_of(summary: &pb::ExecutionSummary) -> u8 {
    if summary.state == "succeeded" {
        0
    } else {
        EXIT_FAILED
    }
}

/// Follows an execution's summaries until it ends; returns the last one.
/// `plain_lines`: progress lines on stderr even off a terminal (`--follow`).
pub async fn wait(
    client: &mut crate::client::Control,
    coordinator: &CoordinatorOpt,
    id: &str,
    plain_lines: bool,
) -> Result<pb::ExecutionSummary, CliError> {
    let lines = if plain_lines {
        Lines::Stderr
    } else {
        Lines::Off
    };
    follow(client, coordinator, id, Progress::new(lines)).await
}

/// Follows an execution's summaries (the `WatchExecution` stream), showing
/// them with `progress`, until it ends; returns the last one. With lines on
/// stdout whose reader went away (`exec watch | head -3`) it stops early
/// and returns the last summary seen, still running.
pub async fn follow(
    client: &mut crate::client::Control,
    coordinator: &CoordinatorOpt,
    id: &str,
    mut progress: Progress,
) -> Result<pb::ExecutionSummary, CliError> {
    let lost = |detail: String| {
        CliError::unavailable(
            &coordinator.current_url(),
            format!(
                "{detail}; execution {id} goes on — `baton exec wait {id}` waits again, \
                 `baton exec show {id}` shows it"
            ),
        )
    };
    let mut stream: tonic::Streaming<pb::ExecutionSummary> = client
        .watch_execution(pb::WatchExecutionRequest {
            execution_id: id.to_string(),
        })
        .await
        .map_err(|s| coordinator.status(s))?
        .into_inner();
    let to_stdout = progress.lines() == Lines::Stdout;
    let mut rewatch = coordinator
        .several()
        .then(|| Rewatch::new(coordinator.policy().wait));
    let mut last = None;
    loop {
        let next = match progress.due() {
            // A progress line held back by the rate limit is printed when
            // it is due, even if nothing else changes until then.
            Some(at) => tokio::select! {
                m = stream.message() => m,
                () = tokio::time::sleep_until(at.into()) => {
                    progress.flush();
                    continue;
                }
            },
            None => stream.message().await,
        };
        match next {
            Ok(Some(s)) => {
                if let Some(again) = rewatch.as_mut() {
                    again.healed();
                }
                progress.update(&s);
                last = Some(s);
                if to_stdout && stdout_closed() {
                    break;
                }
            }
            Ok(None) => break,
            Err(s) => {
                if let Some(again) = rewatch.as_mut()
                    && again.may_retry()
                {
                    errln!(
                        "the watch of execution {id} broke ({}); watching it again…",
                        s.message()
                    );
                    match client
                        .watch_execution(pb::WatchExecutionRequest {
                            execution_id: id.to_string(),
                        })
                        .await
                    {
                        Ok(r) => {
                            stream = r.into_inner();
                            continue;
                        }
                        Err(s2) => {
                            progress.finish();
                            return Err(lost(coordinator.status(s2).message));
                        }
                    }
                }
                progress.finish();
                return Err(lost(s.message().to_string()));
            }
        }
    }
    progress.finish();
    let last = last.ok_or_else(|| lost("the watch ended without a summary".into()))?;
    if last.state == "running" && !(to_stdout && stdout_closed()) {
        return Err(lost("the watch ended early".into()));
    }
    Ok(last)
}

/// How long a broken watch may be opened again (several coordinators only):
/// `wait` from the first break since the last summary received.
struct Rewatch {
    wait: std::time::Duration,
    broke_at: Option<std::time::Instant>,
}

impl Rewatch {
    fn new(wait: std::time::Duration) -> Rewatch {
        Rewatch {
            wait,
            broke_at: None,
        }
    }

    /// A summary came: the next break starts a new wait.
    fn healed(&mut self) {
        self.broke_at = None;
    }

    fn may_retry(&mut self) -> bool {
        let since = *self.broke_at.get_or_insert_with(std::time::Instant::now);
        since.elapsed() < self.wait
    }
}
