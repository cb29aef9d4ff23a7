//! What a job leaves behind that the agent reads once it ended: the
//! `key=value` lines of each task's `$BATON_OUTPUT` (`read_outputs`) and, when
//! the job succeeded, its `$BATON_ROWS` ([`keep_rows`]). Files a job wrote are
//! opened as [`super::layout`] says (no links, no FIFOs, owned by the job's user).
//!
//! A job writes JSON lines to `$BATON_ROWS` (`rows.jsonl` in its scratch
//! directory), like a DataReader destination. When the job has succeeded,
//! [`keep_rows`] copies them to `rows.kept.jsonl`, a file of the agent's own, line
//! by line:
//!
//! - blank lines are skipped; every other line is one row, kept as written (the
//!   agent does not parse JSON: the client renders it);
//! - sensitive parameter values are masked, as in the logs ([`crate::mask`]);
//! - a row longer than [`ROW_BYTES_MAX`] is dropped, and rows stop at
//!   [`ROWS_BYTES_MAX`] per job; either way an empty `rows.truncated` file records
//!   that not everything was kept, and the last batch of a stream says so;
//! - the kept file is created without following links (and [`crate::rows`] reads
//!   it back only if the agent owns it), so a job cannot make the agent send a
//!   file it could not read.
//!
//! The job's raw files (`$BATON_OUTPUT`, `$BATON_ROWS`) may hold sensitive values
//! unmasked: each `$BATON_OUTPUT` file is removed as soon as it is read
//! (`read_outputs`), and whatever is left of them when the job ends (a task that
//! never finished, rows of a job that did not succeed, rows once kept masked) is
//! removed when the job ends (`remove_raw_files`). The agent's data never holds
//! them past the job.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tracing::warn;

use super::layout::{
    LineRead, READ_BUFFER_BYTES, ROW_BYTES_MAX, ROWS_FILE, ROWS_KEPT_FILE, ROWS_TRUNCATED_FILE,
    is_raw, open_job_file, open_job_file_blocking, read_line,
};
use crate::mask::Masker;

/// Most bytes read from `$BATON_OUTPUT`.
const OUTPUT_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most outputs kept from one task, and from one job.
pub(crate) const OUTPUTS_MAX: usize = 1_000;
/// Most bytes of rows kept per job.
pub const ROWS_BYTES_MAX: u64 = 64 << 20;

/// Parses `key=value` lines; blank and `#` lines are skipped; returns (outputs, malformed).
pub fn parse_outputs(text: &str) -> (BTreeMap<String, String>, usize) {
    let mut outputs = BTreeMap::new();
    let mut malformed = 0;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && outputs.len() < OUTPUTS_MAX => {
                outputs.insert(k.trim().to_string(), v.to_string());
            }
            _ => malformed += 1,
        }
    }
    (outputs, malformed)
}

/// Reads a task's `$BATON_OUTPUT` file, then removes it (it holds values unmasked).
/// One trip to a blocking thread for the open, the read and the removal: a task
/// that wrote no output (most) costs a failed open and a failed unlink there.
pub(crate) async fn read_outputs(
    path: &Path,
    owner: Option<u32>,
) -> (BTreeMap<String, String>, usize) {
    let path = path.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        if let Some(file) = open_job_file_blocking(&path, owner) {
            let _ =
                io::Read::read_to_end(&mut io::Read::take(file, OUTPUT_FILE_BYTES_MAX), &mut bytes);
        }
        remove_raw_blocking(&path);
        bytes
    })
    .await
    .unwrap_or_default();
    parse_outputs(&String::from_utf8_lossy(&bytes))
}

/// Removes a raw file the job wrote (never following a link: `remove_file` unlinks
/// the name itself). Absent is fine; another failure is logged.
fn remove_raw_blocking(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot remove a job's raw output file");
        }
    }
}

/// Removes every raw `$BATON_OUTPUT` (`output.*`) and `$BATON_ROWS` file left in the
/// job directory `dir`: called when the job has ended and its rows were kept.
/// One trip to a blocking thread.
pub(crate) async fn remove_raw_files(dir: &Path) {
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            if is_raw(&e.file_name().to_string_lossy()) {
                remove_raw_blocking(&e.path());
            }
        }
    })
    .await;
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parsing() {
        let (o, bad) = parse_outputs("a=1\n# c\n\n b = x=y\nnovalue\n=empty\r\nc=\r\n");
        assert_eq!(o.get("a").map(String::as_str), Some("1"));
        assert_eq!(o.get("b").map(String::as_str), Some(" x=y"));
        assert_eq!(o.get("c").map(String::as_str), Some(""));
        assert_eq!(bad, 2);
    }
}
