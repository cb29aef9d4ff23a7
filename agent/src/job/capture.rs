//! A job's stdout and stderr: captured to capped log files (`stdout.log`,
//! `stderr.log` in its scratch directory, at most [`LOG_BYTES_MAX`] bytes each),
//! with a tail kept for the finished event.
//!
//! **Straight to the files** when nothing needs masking (the job has no sensitive
//! value) and the directory is the agent's own (no run-as user): each process gets
//! the log files themselves as its stdout and stderr (opened once per job,
//! `O_APPEND`, `Capture::child_file`), so there is no pipe, no reader and no
//! copy. The cap is then held by checks while a process runs — every 10 ms while
//! the logs grow fast, slowing to every second while they do not (a log past the
//! cap is cut back to it: the process's next writes land after the cap and are
//! cut at the next check, so a process writing as fast as it can passes the cap
//! by what it writes in 10 ms) — and once at the end, when the tail is read back
//! from the file. The logs are always new files (`O_EXCL`): a directory whose logs
//! stayed empty has them removed before it goes back to the pool
//! ([`super::layout`]), so no handle of one job, or of a process that outlived
//! it, ever points to another job's log.
//! The one thing the pipes did that the files do not: a process that left its
//! group (`setsid`) and outlives the job keeps its handle on the log, and what
//! it writes after the job's end is no longer cut at the cap (with pipes it
//! blocked once nobody read them). Every process still in the job's group is
//! ended with it, as before.
//!
//! **Through a pipe** otherwise: the tasks of a job may run at once: they share
//! the job's two `Capture`s (behind a lock), each process pipe with its own
//! masking stream (`pump`), so that a chunk read from one process is written
//! whole, never interleaved byte by byte with another's, and a sensitive value
//! split across two reads of one pipe is still masked.

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::Mutex;
use tracing::warn;

use crate::mask::{MaskStream, Masker};

/// Most bytes of stdout (and of stderr) written to the job's log files.
pub const LOG_BYTES_MAX: u64 = 1 << 20;
/// The first check of the size of a log a process writes straight to, and the
/// pace while it grows fast: a process that writes as fast as it can passes the
/// cap by what it writes in this long before it is cut back.
pub(crate) const CAP_CHECK_MIN: Duration = Duration::from_millis(10);
/// The slowest pace, reached by doubling while the logs grow little.
pub(crate) const CAP_CHECK_MAX: Duration = Duration::from_secs(1);
/// Growth of both logs between two checks that counts as fast.
const CAP_FAST_BYTES: u64 = 64 * 1024;

/// The last `max` bytes of the first `len` of `f`.
fn read_tail(f: &std::fs::File, len: u64, max: usize) -> Vec<u8> {
    let from = len.saturating_sub(max as u64);
    let mut tail = vec![0u8; (len - from) as usize];
    let mut got = 0;
    while got < tail.len() {
        match f.read_at(&mut tail[got..], from + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    tail.truncate(got);
    tail
}

/// Holds the logs that processes write straight to within [`LOG_BYTES_MAX`]
/// while they run: checked every [`CAP_CHECK_MIN`] while they grow fast, up to
/// every [`CAP_CHECK_MAX`] while they do not. Never returns (dropped when the
/// process has ended).
pub(crate) async fn hold_to_cap(out: &Mutex<Capture>, err: &Mutex<Capture>) {
    let mut every = CAP_CHECK_MIN;
    loop {
        tokio::time::sleep(every).await;
        let grew = out.lock().await.cut_to_cap() + err.lock().await.cut_to_cap();
        every = if grew >= CAP_FAST_BYTES {
            CAP_CHECK_MIN
        } else {
            (every * 2).min(CAP_CHECK_MAX)
        };
    }
}

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
    /// The file processes write to themselves (straight mode), once opened.
    direct: Option<std::fs::File>,
    /// Its size at the last check of the cap.
    checked_len: u64,
    file: Option<BufWriter<tokio::fs::File>>,
    /// The file was made (or could not be): not tried again.
    tried: bool,
    written: u64,
    truncated: bool,
    tail: VecDeque<u8>,
    tail_max: usize,
}

impl Capture {
    /// A capture into `path`, made on the first write (or by the first process
    /// in straight mode).
    pub(crate) fn new(path: PathBuf, tail_max: usize) -> Capture {
        Capture {
            path,
            direct: None,
            checked_len: 0,
            file: None,
            tried: false,
            written: 0,
            truncated: false,
            tail: VecDeque::new(),
            tail_max,
        }
    }

    /// A handle on the log file for a process to write to itself (straight
    /// mode): the file is opened (made if absent) on the first call, `O_APPEND`
    /// so that the processes of the job append whole writes. A short open in
    /// the agent's own directory, on the calling thread.
    pub(crate) fn child_file(&mut self) -> std::io::Result<std::fs::File> {
        let file = match &self.direct {
            Some(f) => f,
            None => {
                // Readable too: the tail is read back from it at the end. A new
                // file (O_EXCL): never one a handle from an earlier job, or a
                // process that outlived it, still points to.
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&self.path)?;
                self.tried = true;
                self.direct.insert(f)
            }
        };
        file.try_clone()
    }

    /// Cuts a log that processes write straight to back to [`LOG_BYTES_MAX`];
    /// returns how much it grew since the last check.
    pub(crate) fn cut_to_cap(&mut self) -> u64 {
        let Some(f) = &self.direct else {
            return 0;
        };
        let len = f.metadata().map_or(0, |m| m.len());
        let grew = len.saturating_sub(self.checked_len);
        self.checked_len = len;
        if len > LOG_BYTES_MAX {
            // The last bytes are what the tail must show: kept before the cut,
            // for a process that has written its last (and ended) meanwhile.
            let tail = read_tail(f, len, self.tail_max);
            if f.set_len(LOG_BYTES_MAX).is_ok() {
                self.tail = tail.into();
                self.truncated = true;
                self.checked_len = LOG_BYTES_MAX;
            }
        }
        grew
    }

    /// Straight mode at the end: the tail read back from the file, the file cut
    /// to the cap (with the note) if it grew past it.
    fn finish_direct(&mut self, f: std::fs::File) {
        let len = f.metadata().map_or(0, |m| m.len());
        if len == 0 {
            return;
        }
        // Unless the log was cut at the last check and nothing came after it
        // (then the tail kept at the cut is the true one), read it back.
        if !(self.truncated && len == self.checked_len) {
            self.tail = read_tail(&f, len, self.tail_max).into();
        }
        if len > LOG_BYTES_MAX && f.set_len(LOG_BYTES_MAX).is_ok() {
            self.truncated = true;
        }
        if self.truncated {
            let note = format!("\n[baton: output truncated after {LOG_BYTES_MAX} bytes]\n");
            let _ = (&f).write_all(note.as_bytes());
        }
    }

    async fn create(&mut self) {
        self.tried = true;
        // A new file, never one a job or an earlier job's handle points to (a
        // run-as job's user owns the directory): no following anything put in
        // its place.
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
        if let Some(f) = self.direct.take() {
            self.finish_direct(f);
        }
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
