//! What a job leaves behind that the agent reads: its stdout and stderr, masked
//! and captured to capped log files with a tail kept for the finished event
//! (`Capture`), and the `key=value` lines of `$BATON_OUTPUT`. Files a job wrote
//! are opened without following symbolic links and only when they are regular
//! files owned by the job's user (`open_job_file`).
//!
//! The job's raw files (`$BATON_OUTPUT`, `$BATON_ROWS`) may hold sensitive values
//! unmasked: each `$BATON_OUTPUT` file is removed as soon as it is read
//! (`read_outputs`), and whatever is left of them when the job ends (a task that
//! never finished, rows of a job that did not succeed, rows once kept masked) is
//! removed when the job ends (`runner::remove_raw_files`). The agent's data never holds them past the job.
//!
//! The tasks of a job may run at once: they share the job's two `Capture`s
//! (behind a lock), each process pipe with its own masking stream (`pump`), so
//! that a chunk read from one process is written whole, never interleaved byte
//! by byte with another's, and a sensitive value split across two reads of one
//! pipe is still masked.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::Mutex;
use tracing::warn;

use crate::mask::{MaskStream, Masker};
use crate::runner::LOG_BYTES_MAX;

/// Most bytes read from `$BATON_OUTPUT`.
const OUTPUT_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most outputs kept from one task, and from one job.
pub(crate) const OUTPUTS_MAX: usize = 1_000;

/// Copies one process's pipe into the job's shared capture, masked: each chunk
/// read is written whole, under the lock.
pub(crate) async fn pump(
    reader: Option<impl AsyncRead + Unpin>,
    cap: &Mutex<Capture>,
    masker: &Masker,
) {
    let Some(mut reader) = reader else { return };
    let mut mask: MaskStream = masker.stream();
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let masked = mask.feed(&buf[..n]);
                if !masked.is_empty() {
                    cap.lock().await.push(&masked).await;
                }
            }
        }
    }
    let rest = mask.finish();
    if !rest.is_empty() {
        cap.lock().await.push(&rest).await;
    }
}

/// One output stream of a job (already masked by [`pump`]): a log file capped at
/// [`LOG_BYTES_MAX`] and a tail. The file is made when the first byte comes: a
/// job that prints nothing costs no file (a file made is an inode allocated, which
/// is most of what a short process costs the agent).
pub(crate) struct Capture {
    path: PathBuf,
    file: Option<BufWriter<tokio::fs::File>>,
    /// The file was made (or could not be): not tried again.
    tried: bool,
    written: u64,
    truncated: bool,
    tail: VecDeque<u8>,
    tail_max: usize,
}

impl Capture {
    /// A capture into `path`, made on the first write.
    pub(crate) fn new(path: PathBuf, tail_max: usize) -> Capture {
        Capture {
            path,
            file: None,
            tried: false,
            written: 0,
            truncated: false,
            tail: VecDeque::new(),
            tail_max,
        }
    }

    async fn create(&mut self) {
        self.tried = true;
        // The directory is fresh, but a run-as job's user owns it: create the file
        // without following anything that user might have put in its place.
        let created = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)
            .await;
        match created {
            Ok(f) => self.file = Some(BufWriter::new(f)),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot create job log file");
            }
        }
    }

    /// Appends bytes that are already masked.
    pub(crate) async fn push(&mut self, data: &[u8]) {
        self.write(data).await;
        // Flushed at every read of the pipe, so that `StreamLogs --follow` sees
        // output as it comes (one write per read: the pipe read costs as much).
        if let Some(f) = &mut self.file
            && f.flush().await.is_err()
        {
            self.file = None;
        }
    }

    async fn write(&mut self, data: &[u8]) {
        if !self.tried && !data.is_empty() {
            self.create().await;
        }
        let room = LOG_BYTES_MAX.saturating_sub(self.written) as usize;
        let keep = data.len().min(room);
        if keep < data.len() {
            self.truncated = true;
        }
        if keep > 0
            && let Some(f) = &mut self.file
            && f.write_all(&data[..keep]).await.is_err()
        {
            self.file = None;
        }
        self.written += keep as u64;
        let from = data.len().saturating_sub(self.tail_max);
        self.tail.extend(&data[from..]);
        while self.tail.len() > self.tail_max {
            self.tail.pop_front();
        }
    }

    pub(crate) async fn finish(&mut self) {
        if let Some(f) = &mut self.file {
            if self.truncated {
                let note = format!("\n[baton: output truncated after {LOG_BYTES_MAX} bytes]\n");
                let _ = f.write_all(note.as_bytes()).await;
            }
            let _ = f.flush().await;
        }
    }

    pub(crate) fn tail(&mut self) -> String {
        String::from_utf8_lossy(self.tail.make_contiguous()).into_owned()
    }
}

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

/// Opens a file the job wrote, for reading: never through a symbolic link, never
/// blocking (a FIFO is refused), only a regular file, and owned by `owner` when given
/// (a run-as job's user). `None` when absent or refused (refusals are logged).
pub(crate) async fn open_job_file(path: &Path, owner: Option<u32>) -> Option<tokio::fs::File> {
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .await;
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "job file ignored (a symbolic link, or unreadable)");
            return None;
        }
    };
    let meta = file.metadata().await.ok()?;
    if !meta.is_file() {
        warn!(path = %path.display(), "job file ignored: not a regular file");
        return None;
    }
    if let Some(uid) = owner
        && meta.uid() != uid
    {
        warn!(path = %path.display(), owner = meta.uid(), expected = uid, "job file ignored: not owned by the job's user");
        return None;
    }
    Some(file)
}

/// Reads a task's `$BATON_OUTPUT` file, then removes it (it holds values unmasked).
pub(crate) async fn read_outputs(
    path: &Path,
    owner: Option<u32>,
) -> (BTreeMap<String, String>, usize) {
    let Some(file) = open_job_file(path, owner).await else {
        remove_raw(path).await;
        return (BTreeMap::new(), 0);
    };
    let mut bytes = Vec::new();
    let _ = file
        .take(OUTPUT_FILE_BYTES_MAX)
        .read_to_end(&mut bytes)
        .await;
    remove_raw(path).await;
    parse_outputs(&String::from_utf8_lossy(&bytes))
}

/// Removes a raw file the job wrote (never following a link: `remove_file` unlinks
/// the name itself). Absent is fine; another failure is logged.
pub(crate) async fn remove_raw(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot remove a job's raw output file");
        }
    }
}
