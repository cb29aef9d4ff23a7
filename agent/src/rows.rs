//! A job's kept rows, read back for `StreamRows` (the coordinator proxies them to
//! `baton exec rows`).
//!
//! When a job has succeeded, its run keeps the rows it wrote to `$BATON_ROWS`,
//! masked and capped, in `rows.kept.jsonl` (`job::files::keep_rows`, whose doc
//! says what is kept). This module only reads that file, through the job
//! directory's layout ([`crate::job::layout`]): opened only if the agent owns it
//! and is not a link, read line by line within [`ROW_BYTES_MAX`], so a job cannot
//! make the agent send a file it could not read.
//!
//! Streams read the kept file in batches of at most [`BATCH_ROWS`] rows or about
//! [`BATCH_BYTES`], through the same small channel as logs (back-pressure, bounded
//! memory: [`crate::logs::STREAM_BUFFER`]).

use std::path::Path;

use baton_proto as pb;
use tokio::io::BufReader;
use tokio::sync::mpsc;

use crate::error::AgentError;
use crate::job::layout::{
    LineRead, READ_BUFFER_BYTES, ROW_BYTES_MAX, ROWS_KEPT_FILE, ROWS_TRUNCATED_FILE, open_job_file,
    read_line, scratch_dir,
};
use crate::jobs::JobState;
use crate::logs::{STREAM_BUFFER, Sent, check_dir};
use crate::model::{DispatchKey, FinishStatus};

/// Most rows in one streamed batch.
pub const BATCH_ROWS: usize = 1_000;
/// A batch is sent once it holds this many bytes.
pub const BATCH_BYTES: usize = 64 * 1024;

fn status_name(s: FinishStatus) -> &'static str {
    match s {
        FinishStatus::Succeeded => "succeeded",
        FinishStatus::Failed => "failed",
        FinishStatus::Cancelled => "cancelled",
        FinishStatus::TimedOut => "timed_out",
    }
}

/// Starts sending the rows a job kept. `Err` before anything is sent when the job
/// still runs, did not succeed, is unknown here or its files are gone.
/// `left_nothing`: the job is known to have ended with no file (no rows; its
/// empty directory was reused).
pub fn stream_rows(
    scratch_root: &Path,
    key: &DispatchKey,
    state: JobState,
    left_nothing: bool,
) -> Result<mpsc::Receiver<Sent<pb::RowBatch>>, AgentError> {
    match state {
        JobState::Running => {
            return Err(AgentError::RowsUnavailable(format!(
                "job {key} still runs: its rows are kept when it succeeds"
            )));
        }
        JobState::Finished { status, .. } if status != FinishStatus::Succeeded => {
            return Err(AgentError::RowsUnavailable(format!(
                "job {key} ended {}: rows are kept only from a job that succeeded",
                status_name(status)
            )));
        }
        _ => {}
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    if left_nothing {
        let _ = tx.try_send(Ok(pb::RowBatch {
            end: true,
            ..Default::default()
        }));
        return Ok(rx);
    }
    let dir = scratch_dir(scratch_root, key);
    check_dir(&dir, key, state)?;
    tokio::spawn(async move {
        if let Err(e) = pump(&dir, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(rx)
}

async fn pump(dir: &Path, tx: &mpsc::Sender<Sent<pb::RowBatch>>) -> Result<(), AgentError> {
    let path = dir.join(ROWS_KEPT_FILE);
    let truncated = tokio::fs::symlink_metadata(dir.join(ROWS_TRUNCATED_FILE))
        .await
        .is_ok();
    let mut batch = pb::RowBatch::default();
    let mut size = 0;
    // No kept file: the job wrote no rows.
    let own = nix::unistd::geteuid().as_raw();
    if let Some(f) = open_job_file(&path, Some(own)).await {
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, f);
        let mut line = Vec::new();
        loop {
            let read = read_line(&mut reader, &mut line, ROW_BYTES_MAX)
                .await
                .map_err(|e| AgentError::io(format!("reading {}", path.display()), e))?;
            match read {
                LineRead::End => break,
                LineRead::TooLong => continue,
                LineRead::Whole => {
                    size += line.len();
                    batch.rows.push(String::from_utf8_lossy(&line).into_owned());
                    if size >= BATCH_BYTES || batch.rows.len() >= BATCH_ROWS {
                        if tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                            return Ok(()); // the client went away
                        }
                        size = 0;
                    }
                }
            }
        }
    }
    batch.end = true;
    batch.truncated = truncated;
    let _ = tx.send(Ok(batch)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::files::{Kept, RowCaps, keep_rows, keep_rows_with};
    use crate::job::layout::ROWS_FILE;
    use crate::mask::Masker;

    fn key() -> DispatchKey {
        DispatchKey {
            execution_id: "e1".into(),
            task_path: "fan".into(),
            item_index: 0,
            attempt: 1,
        }
    }

    fn job_dir(root: &Path) -> std::path::PathBuf {
        let d = scratch_dir(root, &key());
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn succeeded() -> JobState {
        JobState::Finished {
            status: FinishStatus::Succeeded,
            exit_code: 0,
        }
    }

    async fn all_rows(root: &Path, state: JobState) -> (Vec<String>, Vec<pb::RowBatch>) {
        let mut rx = stream_rows(root, &key(), state, false).unwrap();
        let mut batches = Vec::new();
        while let Some(b) = rx.recv().await {
            batches.push(b.unwrap());
        }
        let rows = batches.iter().flat_map(|b| b.rows.clone()).collect();
        (rows, batches)
    }

    #[tokio::test]
    async fn rows_are_kept_masked_without_blank_lines_and_streamed_in_batches() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path());
        let mut text = String::from("{\"a\":1,\"pw\":\"hunter2\"}\r\n\n  \n");
        for i in 0..2_500 {
            text.push_str(&format!("{{\"i\":{i}}}\n"));
        }
        text.push_str("{\"last\":true}"); // no newline at the end
        std::fs::write(dir.join(ROWS_FILE), text).unwrap();
        let kept = keep_rows(&dir, None, &Masker::new(["hunter2"])).await;
        assert_eq!(
            kept,
            Kept {
                rows: 2_502,
                truncated: false
            }
        );

        let (rows, batches) = all_rows(root.path(), succeeded()).await;
        assert_eq!(rows.len(), 2_502);
        assert_eq!(rows[0], "{\"a\":1,\"pw\":\"***\"}");
        assert_eq!(rows[1], "{\"i\":0}");
        assert_eq!(rows[2_501], "{\"last\":true}");
        assert!(batches.len() >= 3, "batched by {BATCH_ROWS} rows");
        assert!(batches.iter().all(|b| b.rows.len() <= BATCH_ROWS));
        let last = batches.last().unwrap();
        assert!(last.end && !last.truncated);
        assert!(batches[..batches.len() - 1].iter().all(|b| !b.end));
    }

    #[tokio::test]
    async fn the_cap_keeps_whole_rows_and_says_it_dropped_some() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path());
        let long = "x".repeat(50);
        std::fs::write(
            dir.join(ROWS_FILE),
            format!("\"a\"\n\"{long}\"\n\"b\"\n\"c\"\n\"d\"\n"),
        )
        .unwrap();
        let caps = RowCaps {
            row_bytes_max: 20,
            rows_bytes_max: 12,
        };
        let kept = keep_rows_with(&dir, None, &Masker::default(), caps).await;
        // "a" (4 bytes with its newline) kept, the long row dropped, "b" and "c" kept,
        // "d" would pass 12 bytes.
        assert_eq!(
            kept,
            Kept {
                rows: 3,
                truncated: true
            }
        );
        let (rows, batches) = all_rows(root.path(), succeeded()).await;
        assert_eq!(rows, ["\"a\"", "\"b\"", "\"c\""]);
        assert!(batches.last().unwrap().truncated);
    }

    #[tokio::test]
    async fn rows_of_running_failed_unknown_and_rowless_jobs() {
        let root = tempfile::tempdir().unwrap();
        let e = stream_rows(root.path(), &key(), JobState::Running, false).unwrap_err();
        assert_eq!(e.code(), "AGENT_ROWS_UNAVAILABLE");
        let failed = JobState::Finished {
            status: FinishStatus::Failed,
            exit_code: 3,
        };
        let e = stream_rows(root.path(), &key(), failed, false).unwrap_err();
        assert!(e.to_string().contains("ended failed"), "{e}");
        let e = stream_rows(root.path(), &key(), JobState::Unknown, false).unwrap_err();
        assert_eq!(e.code(), "AGENT_JOB_UNKNOWN");
        let e = stream_rows(root.path(), &key(), succeeded(), false).unwrap_err();
        assert_eq!(e.code(), "AGENT_OUTPUT_GONE");

        // A job that wrote no rows: one empty, final batch.
        let dir = job_dir(root.path());
        assert_eq!(
            keep_rows(&dir, None, &Masker::default()).await,
            Kept::default()
        );
        let (rows, batches) = all_rows(root.path(), succeeded()).await;
        assert!(rows.is_empty());
        assert_eq!(batches.len(), 1);
        assert!(batches[0].end);
    }

    #[tokio::test]
    async fn a_kept_file_the_agent_does_not_own_or_a_link_is_not_sent() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path());
        // What a job's user could leave in its directory in place of the kept file.
        std::os::unix::fs::symlink("/etc/passwd", dir.join(ROWS_KEPT_FILE)).unwrap();
        std::fs::write(dir.join(ROWS_FILE), "{\"a\":1}\n").unwrap();
        assert_eq!(
            keep_rows(&dir, None, &Masker::default()).await,
            Kept::default(),
            "never written through a link"
        );
        let (rows, _) = all_rows(root.path(), succeeded()).await;
        assert!(rows.is_empty(), "never read through a link: {rows:?}");
    }
}
