//! `baton run FILE --local`: the same execution on a coordinator and one
//! agent that live only for this run, on loopback, in a temporary directory.
//!
//! When the run does not succeed, the stderr of its first children that did
//! not succeed is printed before the cluster stops: without a coordinator
//! left to ask, that is the only time `exec logs` could have shown it.

use std::time::Instant;

use baton_proto as pb;

use super::follow::{announce, exit_of, print_summary, wait};
use crate::client::{Control, CoordinatorOpt};
use crate::error::CliError;
use crate::output::{Format, errln};

/// Children whose stderr a failed local run prints.
const FAILED_SHOWN_MAX: usize = 3;
/// Bytes of each one's stderr (its end, where the error usually is).
const STDERR_TAIL_BYTES: usize = 4096;

/// What `baton run --local` takes from the command line.
#[derive(Debug, Clone)]
pub struct LocalRun {
    /// `--local-slots`: the agent's slots (default: the machine's CPUs).
    pub slots: Option<u32>,
    pub output: Format,
    /// `--follow`: progress lines while it runs.
    pub follow: bool,
    /// `--keep`: leave the temporary directory behind.
    pub keep: bool,
}

pub async fn run_local(
    args: &LocalRun,
    request: pb::StartExecutionRequest,
) -> Result<u8, CliError> {
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    if slots == 0 || slots > 1024 {
        return Err(CliError::invalid("USAGE", "--local-slots must be 1..=1024"));
    }
    let spec = crate::local_cluster::ClusterSpec {
        agent_slots: vec![slots],
        agent_queue: 0,
        lease_ttl_ms: 3000,
        heartbeat_ms: 500,
        agent_cpus: None,
        store: Default::default(),
    };
    let human = args.output == Format::Human;
    let mut cluster = crate::local_cluster::LocalCluster::start(&spec, "baton-local-").await?;
    if human {
        errln!(
            "local run: embedded coordinator and one agent ({slots} slots) in {}",
            cluster.path().display()
        );
    }
    let opt = cluster.opt.clone();
    let started = Instant::now();
    let outcome = async {
        let id = cluster
            .client
            .start_execution(request)
            .await
            .map_err(|s| opt.status(s))?
            .into_inner()
            .execution_id;
        announce(&id, args.output, None);
        wait(&mut cluster.client, &opt, &id, args.follow).await
    }
    .await;
    let wall = started.elapsed().as_secs_f64();
    let ok = matches!(&outcome, Ok(s) if s.state == "succeeded");
    if let Ok(summary) = &outcome
        && !ok
    {
        show_failed_stderr(&mut cluster.client, &opt, &summary.execution_id).await;
    }
    let kept = cluster.stop(args.keep || !ok).await;
    let summary = outcome?;
    print_summary(&summary, Some(wall), args.output);
    if let Some(kept) = kept {
        errln!(
            "kept {} (coordinator store, agent log and job directories with each child's logs)",
            kept.display()
        );
    }
    Ok(exit_of(&summary))
}

/// Prints on stderr the end of the stderr of the first children that did not
/// succeed (best effort: a child that ran no process has none).
async fn show_failed_stderr(client: &mut Control, opt: &CoordinatorOpt, id: &str) {
    let Ok(detail) = client
        .get_execution(pb::GetExecutionRequest {
            execution_id: id.to_string(),
            // Those that did not succeed come first.
            children_limit: FAILED_SHOWN_MAX as u32,
            child: None,
        })
        .await
    else {
        return;
    };
    let failed = detail
        .into_inner()
        .children
        .into_iter()
        .filter(|c| matches!(c.state.as_str(), "failed" | "timed_out"))
        .take(FAILED_SHOWN_MAX);
    for c in failed {
        let name = format!("{}[{}]", c.task_path, c.item_index);
        let text = match stderr_of(client, id, &name).await {
            Ok(t) if t.is_empty() => "(it wrote nothing to stderr)".to_string(),
            Ok(t) => t,
            Err(s) => format!("(its stderr cannot be read: {})", opt.status(s).message),
        };
        let exit = if c.exit_code >= 0 {
            format!(", exit code {}", c.exit_code)
        } else {
            String::new()
        };
        errln!(
            "--- stderr of child {name} ({}{exit}): {}",
            c.state,
            c.reason
        );
        errln!("{}", text.trim_end());
        errln!("--- end of the stderr of {name}");
    }
}

/// The last [`STDERR_TAIL_BYTES`] of a child's stderr.
async fn stderr_of(client: &mut Control, id: &str, child: &str) -> Result<String, tonic::Status> {
    let mut chunks = client
        .stream_logs(pb::StreamLogsRequest {
            execution_id: id.to_string(),
            child: child.to_string(),
            stream: pb::LogStream::Stderr as i32,
            follow: false,
            stdout_offset: 0,
            stderr_offset: 0,
            attempt: 0,
        })
        .await?
        .into_inner();
    let mut tail: Vec<u8> = Vec::new();
    while let Some(c) = chunks.message().await? {
        tail.extend_from_slice(&c.data);
        if tail.len() > 2 * STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
    }
    let cut = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    Ok(String::from_utf8_lossy(&tail[cut..]).into_owned())
}
