//! A job's rows: kept when it succeeds, read back for `StreamRows` (the coordinator
//! proxies them to `baton exec rows`).
//!
//! A job writes JSON lines to `$BATON_ROWS` (`rows.jsonl` in its scratch directory),
//! like a DataReader destination. When the job has succeeded, [`keep_rows`] copies
//! them to `rows.kept.jsonl`, a file of the agent's own, line by line:
//!
//! - blank lines are skipped; every other line is one row, kept as written (the
//!   agent does not parse JSON: the client renders it);
//! - sensitive parameter values are masked, as in the logs ([`crate::mask`]);
//! - a row longer than [`ROW_BYTES_MAX`] is dropped, and rows stop at
//!   [`ROWS_BYTES_MAX`] per job; either way an empty `rows.truncated` file records
//!   that not everything was kept, and the last batch of a stream says so;
//! - the job's file is opened as the runner opens every file a job wrote (no links,
//!   no FIFOs, owned by the run-as user: `runner::open_job_file`), and the
//!   kept file is created without following links and read back only if the agent
//!   owns it, so a job cannot make the agent send a file it could not read.
//!
//! Streams read the kept file in batches of at most [`BATCH_ROWS`] rows or about
//! [`BATCH_BYTES`], through the same small channel as logs (back-pressure, bounded
//! memory: [`crate::logs::STREAM_BUFFER`]).

use std::io;
use std::path::Path;

use baton_proto as pb;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tracing::warn;

use crate::error::AgentError;
use crate::jobs::JobState;
use crate::logs::{STREAM_BUFFER, Sent, check_dir};
use crate::mask::Masker;
use crate::model::{DispatchKey, FinishStatus};
use crate::runner::{ROWS_FILE, open_job_file, scratch_dir};

/// The agent's copy of a succeeded job's rows.
pub const ROWS_KEPT_FILE: &str = "rows.kept.jsonl";
/// Present when some rows were not kept.
pub const ROWS_TRUNCATED_FILE: &str = "rows.truncated";
/// Most bytes of rows kept per job.
pub const ROWS_BYTES_MAX: u64 = 64 << 20;
/// Longest row kept.
pub const ROW_BYTES_MAX: usize = 1 << 20;
/// Most rows in one streamed batch.
pub const BATCH_ROWS: usize = 1_000;
/// A batch is sent once it holds this many bytes.
pub const BATCH_BYTES: usize = 64 * 1024;
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// What [`keep_rows`] kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub rows: u64,
    /// Some rows were dropped (too long, or past the cap).
    pub truncated: bool,
}

/// Limits of [`keep_rows_with`] (tests use small ones).
#[derive(Debug, Clone, Copy)]
pub struct RowCaps {
    pub row_bytes_max: usize,
    pub rows_bytes_max: u64,
}

impl Default for RowCaps {
    fn default() -> Self {
        RowCaps {
            row_bytes_max: ROW_BYTES_MAX,
            rows_bytes_max: ROWS_BYTES_MAX,
        }
    }
}

/// Keeps the rows of a job that succeeded (see the module doc); `owner` is the
/// run-as user's uid, if any. Never fails the job: problems are logged.
pub async fn keep_rows(dir: &Path, owner: Option<u32>, masker: &Masker) -> Kept {
    keep_rows_with(dir, owner, masker, RowCaps::default()).await
}

pub async fn keep_rows_with(
    dir: &Path,
    owner: Option<u32>,
    masker: &Masker,
    caps: RowCaps,
) -> Kept {
    let mut kept = Kept::default();
    let Some(src) = open_job_file(&dir.join(ROWS_FILE), owner).await else {
        return kept;
    };
    let path = dir.join(ROWS_KEPT_FILE);
    let out = match create_own(&path).await {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot keep the job's rows");
            return kept;
        }
    };
    let mut out = BufWriter::new(out);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, src);
    let mut line = Vec::new();
    let mut bytes = 0u64;
    loop {
        match read_line(&mut reader, &mut line, caps.row_bytes_max).await {
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read the job's rows");
                break;
            }
            Ok(LineRead::End) => break,
            Ok(LineRead::TooLong) => kept.truncated = true,
            Ok(LineRead::Whole) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches('\r');
                if text.trim().is_empty() {
                    continue;
                }
                let row = masker.mask_str(text);
                let size = row.len() as u64 + 1;
                if bytes + size > caps.rows_bytes_max {
                    kept.truncated = true;
                    break;
                }
                let written = async {
                    out.write_all(row.as_bytes()).await?;
                    out.write_all(b"\n").await
                };
                if let Err(e) = written.await {
                    warn!(path = %path.display(), error = %e, "cannot write the job's rows");
                    break;
                }
                bytes += size;
                kept.rows += 1;
            }
        }
    }
    if let Err(e) = out.flush().await {
        warn!(path = %path.display(), error = %e, "cannot write the job's rows");
    }
    if kept.truncated {
        let _ = create_own(&dir.join(ROWS_TRUNCATED_FILE)).await;
    }
    kept
}

/// Creates a new file of the agent's in a directory the job's user owns: never
/// through a link or over a file that user put there.
async fn create_own(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .await
}

#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// `line` holds a whole line, without its newline.
    Whole,
    /// A line longer than the limit was skipped (`line` is empty).
    TooLong,
    End,
}

/// Reads one line into `line` without ever holding more than `max` bytes of it.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    line.clear();
    let (mut any, mut too_long) = (false, false);
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => LineRead::End,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Whole,
            });
        }
        any = true;
        let (take, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if line.len() + take > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&buf[..take]);
            }
        }
        r.consume(take + usize::from(newline));
        if newline {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Whole
            });
        }
    }
}

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

    #[tokio::test]
    async fn lines_are_read_within_their_limit() {
        let data = b"short\nthis one is far too long\n\nend";
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut line = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_line(&mut r, &mut line, 10).await.unwrap() {
                LineRead::End => break,
                LineRead::TooLong => got.push("<long>".to_string()),
                LineRead::Whole => got.push(String::from_utf8(line.clone()).unwrap()),
            }
            assert!(line.len() <= 10);
        }
        assert_eq!(got, ["short", "<long>", "", "end"]);
    }
}
