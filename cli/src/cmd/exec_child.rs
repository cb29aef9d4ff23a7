//! One child of an execution: `baton exec logs`, `baton exec rows` and
//! `baton exec cancel --child`.
//!
//! A child is named `TASK[INDEX]` (`fan[3]`) as `baton exec show` lists it: the
//! task of the parent package and the index of the item in its foreach (`TASK`
//! alone means index 0, the only child of a task that is not a foreach). Logs and
//! rows stay on the agent that ran the child; the coordinator passes them through.

mod render;

use std::io::Write;
use std::time::Duration;

use baton_coordinator::grpc::child_output::ChildPath;
use baton_proto as pb;
use serde_json::json;

use crate::client::{Control, CoordinatorOpt};
use crate::error::CliError;
use crate::output::{Format, errln, outln};

/// How often `logs -f` asks again while the child has not started, and
/// `cancel --child --wait` looks at the child.
const POLL: Duration = Duration::from_millis(250);

/// `baton exec logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The execution id.
    pub id: String,
    /// The child: `TASK[INDEX]` as `baton exec show` lists it (`TASK` alone for index 0).
    #[arg(long)]
    pub child: String,
    /// Keep printing as the child writes, until its processes have ended (waits
    /// for a child that has not started yet).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the child's stdout.
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only the child's stderr.
    #[arg(long)]
    pub stderr: bool,
    /// An earlier attempt (1, 2, ...); the latest by default.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub attempt: u32,
    /// human: the child's stdout to stdout and its stderr to stderr, as written;
    /// json: one object per chunk ({"stream","offset","data"}).
    #[arg(long, value_enum, default_value = "human")]
    pub output: Format,
    #[command(flatten)]
    pub coordinator: CoordinatorOpt,
}

/// `--output` of `baton exec rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RowFormat {
    /// The JSON lines as the child wrote them (sensitive values masked).
    Json,
    /// A header of the union of the rows' keys, then one line per row.
    Csv,
    /// Aligned columns for a terminal.
    Table,
}

/// `baton exec rows`.
#[derive(Debug, clap::Args)]
pub struct RowsArgs {
    /// The execution id.
    pub id: String,
    /// The child: `TASK[INDEX]` as `baton exec show` lists it (`TASK` alone for index 0).
    #[arg(long)]
    pub child: String,
    /// How rows are shown (`--format` is a deprecated alias).
    #[arg(
        id = "output",
        long = "output",
        alias = "format",
        value_enum,
        default_value = "table"
    )]
    pub format: RowFormat,
    /// At most this many rows (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// An earlier attempt (1, 2, ...); the latest by default.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub attempt: u32,
    #[command(flatten)]
    pub coordinator: CoordinatorOpt,
}

/// What to do about an error of these commands.
fn hint(e: CliError) -> CliError {
    let h = match e.code.as_str() {
        "CHILD_NOT_FOUND" => "`baton exec show ID` lists the children; name one as TASK[INDEX]",
        "CHILD_NOT_STARTED" => "`baton exec logs -f` waits for it to start",
        "OUTPUT_GONE" => {
            "an agent keeps a job's files for its --retain-for (default 7d) after the job ends"
        }
        "ROWS_UNAVAILABLE" => {
            "rows are kept when a child succeeds; `baton exec logs` shows what it printed"
        }
        "AGENT_UNREACHABLE" => {
            "the files stay on that agent: try again once `baton agents list` shows it ready"
        }
        "AGENT_BUSY" => "that agent has too many log and row streams open: try again shortly",
        _ => return e,
    };
    CliError {
        message: format!("{}\n  hint: {h}", e.message),
        ..e
    }
}

fn write_out(w: &mut dyn Write, data: &[u8]) -> Result<bool, CliError> {
    match w.write_all(data).and_then(|()| w.flush()) {
        Ok(()) => Ok(true),
        // `| head`: the reader has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::other("IO_FAILED", e.to_string())),
    }
}

pub async fn logs(a: LogsArgs) -> Result<u8, CliError> {
    let mut client = a.coordinator.connect().await?;
    let stream = match (a.stdout, a.stderr) {
        (true, false) => pb::LogStream::Stdout,
        (false, true) => pb::LogStream::Stderr,
        _ => pb::LogStream::Both,
    };
    let mut req = pb::StreamLogsRequest {
        execution_id: a.id.clone(),
        child: a.child.clone(),
        stream: stream as i32,
        follow: a.follow,
        stdout_offset: 0,
        stderr_offset: 0,
        attempt: a.attempt,
    };
    if a.follow && a.attempt == 0 {
        // Reconnections must read the same attempt's logs from the same offsets:
        // pin the attempt that is current now.
        req.attempt = current_attempt(&mut client, &a.id, &a.child).await;
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut waiting = false;
    // With -f, a lost connection (coordinator restart, agent unreachable) is
    // followed by a new stream from the offsets already printed, for up to
    // RECONNECT_FOR without any progress.
    let mut broken_since: Option<std::time::Instant> = None;
    loop {
        let mut chunks = match client.stream_logs(req.clone()).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let e = a.coordinator.status(s);
                if a.follow && e.code == "CHILD_NOT_STARTED" {
                    if !waiting {
                        errln!("waiting for child {} to start ...", a.child);
                        waiting = true;
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                if !reconnect(&a, &e, &mut broken_since).await {
                    return Err(hint(e));
                }
                if let Ok(c) = a.coordinator.connect().await {
                    client = c;
                }
                continue;
            }
        };
        loop {
            let c = match chunks.message().await {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(0),
                Err(s) => {
                    let e = a.coordinator.status(s);
                    if !reconnect(&a, &e, &mut broken_since).await {
                        return Err(hint(e));
                    }
                    break;
                }
            };
            broken_since = None;
            let is_err = c.stream == pb::LogStream::Stderr as i32;
            let next = c.offset + c.data.len() as u64;
            if is_err {
                req.stderr_offset = next;
            } else {
                req.stdout_offset = next;
            }
            let more = match a.output {
                Format::Json => {
                    let line = json!({
                        "stream": if is_err { "stderr" } else { "stdout" },
                        "offset": c.offset,
                        "data": String::from_utf8_lossy(&c.data),
                    });
                    write_out(&mut out, format!("{line}\n").as_bytes())?
                }
                Format::Human if is_err => write_out(&mut err, &c.data)?,
                Format::Human => write_out(&mut out, &c.data)?,
            };
            if !more {
                return Ok(0);
            }
        }
    }
}

/// The child's current attempt, or 0 (the coordinator picks) when it cannot tell.
async fn current_attempt(client: &mut Control, id: &str, child: &str) -> u32 {
    let Ok(path) = ChildPath::parse(child) else {
        return 0;
    };
    let Ok(detail) = client
        .get_execution(pb::GetExecutionRequest {
            execution_id: id.to_string(),
            // Ignored by a coordinator that knows `child`; an older one
            // sends its most children, where the child should be.
            children_limit: u32::MAX,
            child: Some(pb::ChildKey {
                task_path: path.task.clone(),
                item_index: path.index,
            }),
        })
        .await
    else {
        return 0;
    };
    detail
        .into_inner()
        .children
        .iter()
        .find(|c| c.task_path == path.task && c.item_index == path.index)
        .map_or(0, |c| c.attempt)
}

/// How long `logs -f` keeps reconnecting without getting anything.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Whether `logs -f` should open a new stream after `e` (it waits a little
/// first); says so on stderr the first time.
async fn reconnect(
    a: &LogsArgs,
    e: &CliError,
    broken_since: &mut Option<std::time::Instant>,
) -> bool {
    let transient = matches!(
        e.code.as_str(),
        "UNAVAILABLE" | "AGENT_UNREACHABLE" | "AGENT_BUSY" | "SHUTTING_DOWN" | "TRANSPORT_FAILED"
    ) || e.exit == crate::error::EXIT_UNAVAILABLE;
    if !a.follow || !transient {
        return false;
    }
    let since = *broken_since.get_or_insert_with(|| {
        errln!(
            "baton: log stream interrupted ({}); reconnecting ...",
            e.message
        );
        std::time::Instant::now()
    });
    if since.elapsed() > RECONNECT_FOR {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    true
}

pub async fn rows(a: RowsArgs) -> Result<u8, CliError> {
    let mut client = a.coordinator.connect().await?;
    let mut batches = client
        .stream_rows(pb::StreamRowsRequest {
            execution_id: a.id.clone(),
            child: a.child.clone(),
            attempt: a.attempt,
        })
        .await
        .map_err(|s| hint(a.coordinator.status(s)))?
        .into_inner();
    let mut table = render::Table::new();
    let mut out = std::io::stdout();
    let (mut count, mut truncated, mut open) = (0usize, false, true);
    'stream: while let Some(b) = batches
        .message()
        .await
        .map_err(|s| hint(a.coordinator.status(s)))?
    {
        truncated |= b.truncated;
        for row in b.rows {
            if a.limit > 0 && count == a.limit {
                break 'stream;
            }
            count += 1;
            match a.format {
                // Printed as they come: memory stays flat whatever the number of rows.
                RowFormat::Json => {
                    if open && !write_out(&mut out, format!("{row}\n").as_bytes())? {
                        open = false;
                    }
                }
                RowFormat::Csv | RowFormat::Table => table.push(&row),
            }
        }
        if b.end {
            break;
        }
    }
    match a.format {
        RowFormat::Json => {}
        RowFormat::Csv => {
            write_out(&mut out, table.csv().as_bytes())?;
        }
        RowFormat::Table if count == 0 => outln!("(no rows)"),
        RowFormat::Table => {
            write_out(&mut out, table.text().as_bytes())?;
            outln!("({count} rows)");
        }
    }
    if table.invalid > 0 {
        errln!(
            "warning: {} row(s) are not JSON; shown whole in the `{}` column",
            table.invalid,
            render::VALUE_COLUMN
        );
    }
    if truncated {
        errln!(
            "warning: the agent did not keep every row of this child (a row over 1 MiB, or \
             rows past 64 MiB per child)"
        );
    }
    Ok(0)
}

/// `baton exec cancel ID --child PATH [--wait]`.
pub async fn cancel(
    coordinator: &CoordinatorOpt,
    id: &str,
    child: &str,
    reason: String,
    wait: bool,
    output: Format,
) -> Result<u8, CliError> {
    let path = ChildPath::parse(child).map_err(|e| CliError::invalid(e.code(), e.to_string()))?;
    let mut client = coordinator.connect().await?;
    let state = client
        .cancel_child(pb::CancelChildRequest {
            execution_id: id.to_string(),
            child: child.to_string(),
            reason,
        })
        .await
        .map_err(|s| hint(coordinator.status(s)))?
        .into_inner()
        .state;
    let already = !matches!(state.as_str(), "cancelling" | "cancelled");
    let state = if wait && state == "cancelling" {
        wait_child(&mut client, coordinator, id, &path).await?
    } else {
        state
    };
    match output {
        Format::Json => outln!(
            "{}",
            json!({ "execution_id": id, "child": path.to_string(), "status": state })
        ),
        Format::Human if already => {
            outln!("child {path} of execution {id}: {state} (it had already ended)")
        }
        Format::Human => {
            outln!("child {path} of execution {id}: {state}");
            if state == "cancelling" {
                errln!(
                    "its processes are being stopped; --wait waits, `baton exec show {id}` shows it"
                );
            }
        }
    }
    Ok(0)
}

/// Polls the execution until the child has ended; its final state.
async fn wait_child(
    client: &mut Control,
    coordinator: &CoordinatorOpt,
    id: &str,
    path: &ChildPath,
) -> Result<String, CliError> {
    loop {
        let detail = client
            .get_execution(pb::GetExecutionRequest {
                execution_id: id.to_string(),
                children_limit: u32::MAX,
                child: Some(pb::ChildKey {
                    task_path: path.task.clone(),
                    item_index: path.index,
                }),
            })
            .await
            .map_err(|s| coordinator.status(s))?
            .into_inner();
        let state = detail
            .children
            .iter()
            .find(|c| c.task_path == path.task && c.item_index == path.index)
            .map(|c| c.state.clone())
            .unwrap_or_default();
        if matches!(
            state.as_str(),
            "succeeded" | "failed" | "cancelled" | "timed_out" | "lost" | ""
        ) {
            return Ok(state);
        }
        tokio::time::sleep(POLL).await;
    }
}
