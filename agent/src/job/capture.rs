//! A job's stdout and stderr: masked and captured to capped log files
//! (`stdout.log`, `stderr.log` in its scratch directory, at most
//! [`LOG_BYTES_MAX`] bytes each), with a tail kept for the finished event.
//!
//! The tasks of a job may run at once: they share the job's two `Capture`s
//! (behind a lock), each process pipe with its own masking stream (`pump`), so
//! that a chunk read from one process is written whole, never interleaved byte
//! by byte with another's, and a sensitive value split across two reads of one
//! pipe is still masked.

use std::collections::VecDeque;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::Mutex;
use tracing::warn;

use crate::mask::{MaskStream, Masker};

/// Most bytes of stdout (and of stderr) written to the job's log files.
pub const LOG_BYTES_MAX: u64 = 1 << 20;

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
