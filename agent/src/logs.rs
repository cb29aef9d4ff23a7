//! Reading a job's logs back for `StreamLogs` (the coordinator proxies them to
//! `baton exec logs`).
//!
//! A job's run writes its stdout and stderr, masked, to `stdout.log` and
//! `stderr.log` in its scratch directory (`job::capture`) and flushes them at every
//! read of the pipe. This module sends them from the offsets asked for, in chunks of
//! at most [`LOG_CHUNK_BYTES`], through a channel of [`STREAM_BUFFER`] chunks: a slow
//! client holds the reader back (gRPC flow control) instead of making it buffer, so
//! a stream costs at most a few hundred KiB whatever the log's size. With `follow`,
//! it polls the files every [`FOLLOW_POLL`] while the job runs; once the job has ended
//! it reads to the end once more (everything was flushed before the job was marked
//! finished) and ends the stream.
//!
//! A job directory belongs to the job's run-as user, who could swap a log for a
//! link to a file the agent may read: logs are opened without following links, only
//! as regular files owned by the agent itself ([`crate::job::layout`]).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_proto as pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::error::AgentError;
use crate::job::layout::{STDERR_LOG, STDOUT_LOG, open_job_file, scratch_dir};
use crate::jobs::JobState;
use crate::model::DispatchKey;

/// Largest chunk of a log in one message.
pub const LOG_CHUNK_BYTES: usize = 64 * 1024;
/// How often a followed log is checked for more while its job runs.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Messages queued per stream before the reader waits for the client.
pub const STREAM_BUFFER: usize = 2;
/// Log and row streams open at once on one agent; more are refused (`AGENT_BUSY`).
pub const STREAMS_MAX: usize = 64;

/// What goes out on a stream: a message or the error that ends it.
pub type Sent<T> = Result<T, AgentError>;

/// Which of a job's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Stdout,
    Stderr,
    Both,
}

/// A validated `StreamJobLogsRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRequest {
    pub key: DispatchKey,
    pub which: Which,
    pub follow: bool,
    pub stdout_offset: u64,
    pub stderr_offset: u64,
}

impl TryFrom<pb::StreamJobLogsRequest> for LogRequest {
    type Error = AgentError;

    fn try_from(r: pb::StreamJobLogsRequest) -> Result<Self, Self::Error> {
        let key = DispatchKey::from_field(r.dispatch_id, "dispatch_id")?;
        let which = match pb::LogStream::try_from(r.stream) {
            Ok(pb::LogStream::Stdout) => Which::Stdout,
            Ok(pb::LogStream::Stderr) => Which::Stderr,
            Ok(pb::LogStream::Both | pb::LogStream::Unspecified) => Which::Both,
            Err(_) => {
                return Err(AgentError::InvalidRequest(format!(
                    "stream {} is not stdout, stderr or both",
                    r.stream
                )));
            }
        };
        Ok(LogRequest {
            key,
            which,
            follow: r.follow,
            stdout_offset: r.stdout_offset,
            stderr_offset: r.stderr_offset,
        })
    }
}

/// Checks that the job's directory can be read now, before a stream is promised:
/// a running job's directory may not exist yet; a finished one's must.
pub(crate) fn check_dir(dir: &Path, key: &DispatchKey, state: JobState) -> Result<(), AgentError> {
    if dir.is_dir() {
        return Ok(());
    }
    match state {
        JobState::Running => Ok(()),
        JobState::Finished { .. } => Err(AgentError::OutputGone(format!(
            "the files of job {key} are gone from this agent (removed by retention, or the job \
             ran no process)"
        ))),
        JobState::Unknown => Err(AgentError::JobUnknown(format!(
            "this agent has no job {key} (another agent ran it, or its files were removed)"
        ))),
    }
}

/// Starts sending the logs `req` asks for; `state` tells whether the job still runs.
/// `Err` (job unknown, files gone) before anything is sent; a failure later is the
/// last item of the channel.
/// `left_nothing`: the job is known to have ended with no file (it printed
/// nothing and its empty directory was reused): its logs are empty.
pub fn stream_logs<F>(
    scratch_root: &Path,
    req: LogRequest,
    left_nothing: bool,
    state: F,
) -> Result<mpsc::Receiver<Sent<pb::LogChunk>>, AgentError>
where
    F: Fn() -> JobState + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    if left_nothing {
        return Ok(rx); // `tx` dropped: the stream ends at once, empty
    }
    let dir = scratch_dir(scratch_root, &req.key);
    check_dir(&dir, &req.key, state())?;
    tokio::spawn(async move {
        if let Err(e) = pump(&dir, &req, state, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(rx)
}

/// One log file read from an offset on.
struct Tail {
    stream: pb::LogStream,
    path: PathBuf,
    offset: u64,
    file: Option<tokio::fs::File>,
}

impl Tail {
    fn new(dir: &Path, stream: pb::LogStream, offset: u64) -> Tail {
        let name = match stream {
            pb::LogStream::Stderr => STDERR_LOG,
            _ => STDOUT_LOG,
        };
        Tail {
            stream,
            path: dir.join(name),
            offset,
            file: None,
        }
    }

    /// The next chunk from the offset, `None` at the end of the file for now (or
    /// while the file does not exist yet).
    async fn next(&mut self, buf: &mut [u8]) -> Result<Option<pb::LogChunk>, AgentError> {
        if self.file.is_none() {
            let own = nix::unistd::geteuid().as_raw();
            let Some(mut f) = open_job_file(&self.path, Some(own)).await else {
                return Ok(None);
            };
            f.seek(SeekFrom::Start(self.offset))
                .await
                .map_err(|e| AgentError::io(format!("seeking {}", self.path.display()), e))?;
            self.file = Some(f);
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(None);
        };
        let n = f
            .read(buf)
            .await
            .map_err(|e| AgentError::io(format!("reading {}", self.path.display()), e))?;
        if n == 0 {
            return Ok(None);
        }
        let chunk = pb::LogChunk {
            stream: self.stream as i32,
            offset: self.offset,
            data: buf[..n].to_vec(),
        };
        self.offset += n as u64;
        Ok(Some(chunk))
    }
}

async fn pump<F>(
    dir: &Path,
    req: &LogRequest,
    state: F,
    tx: &mpsc::Sender<Sent<pb::LogChunk>>,
) -> Result<(), AgentError>
where
    F: Fn() -> JobState,
{
    let mut tails = Vec::new();
    if req.which != Which::Stderr {
        tails.push(Tail::new(dir, pb::LogStream::Stdout, req.stdout_offset));
    }
    if req.which != Which::Stdout {
        tails.push(Tail::new(dir, pb::LogStream::Stderr, req.stderr_offset));
    }
    let mut buf = vec![0u8; LOG_CHUNK_BYTES];
    // A job seen running may end with no log and give its empty directory back
    // for reuse ([`crate::job::layout`]): it printed nothing, which is no error.
    let mut seen_running = false;
    loop {
        // Sampled before reading: once the job is seen ended, this pass reads all.
        let running = state() == JobState::Running;
        seen_running |= running;
        loop {
            // A chunk of each log in turn, so that a busy stdout does not hold stderr back.
            let mut sent = false;
            for t in &mut tails {
                if let Some(chunk) = t.next(&mut buf).await? {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(()); // the client went away
                    }
                    sent = true;
                }
            }
            if !sent {
                break;
            }
        }
        if !req.follow || !running {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            () = tx.closed() => return Ok(()),
        }
    }
    // A job that printed nothing has no log files (they are made on the first
    // byte): its logs are empty. Without its directory, or with log files that
    // may not be read (a link, say), they are gone.
    let refused = tails
        .iter()
        .any(|t| t.file.is_none() && t.path.symlink_metadata().is_ok());
    if state() != JobState::Running
        && tails.iter().all(|t| t.file.is_none())
        && (refused || (!dir.is_dir() && !seen_running))
    {
        return Err(AgentError::OutputGone(format!(
            "job {} left no log on this agent (removed by retention, or it ran no process)",
            req.key
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::model::FinishStatus;

    fn key() -> DispatchKey {
        DispatchKey {
            execution_id: "e1".into(),
            task_path: "fan".into(),
            item_index: 2,
            attempt: 1,
        }
    }

    fn finished() -> JobState {
        JobState::Finished {
            status: FinishStatus::Succeeded,
            exit_code: 0,
        }
    }

    fn req(which: Which, follow: bool, stdout_offset: u64, stderr_offset: u64) -> LogRequest {
        LogRequest {
            key: key(),
            which,
            follow,
            stdout_offset,
            stderr_offset,
        }
    }

    fn job_dir(root: &Path) -> PathBuf {
        let d = scratch_dir(root, &key());
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Every chunk of a log stream, stdout and stderr apart, and the error that
    /// ended it (also used by the crate-level tests).
    pub(crate) async fn collect(
        mut rx: mpsc::Receiver<Sent<pb::LogChunk>>,
    ) -> (Vec<u8>, Vec<u8>, Vec<pb::LogChunk>, Option<AgentError>) {
        let (mut out, mut err, mut chunks) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(item) = rx.recv().await {
            match item {
                Ok(c) => {
                    if c.stream == pb::LogStream::Stdout as i32 {
                        out.extend_from_slice(&c.data);
                    } else {
                        err.extend_from_slice(&c.data);
                    }
                    chunks.push(c);
                }
                Err(e) => return (out, err, chunks, Some(e)),
            }
        }
        (out, err, chunks, None)
    }

    #[tokio::test]
    async fn reads_both_logs_from_their_offsets_in_bounded_chunks() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path());
        let big: Vec<u8> = (0..LOG_CHUNK_BYTES * 2 + 10)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        std::fs::write(dir.join(STDOUT_LOG), &big).unwrap();
        std::fs::write(dir.join(STDERR_LOG), b"0123456789").unwrap();

        let rx = stream_logs(root.path(), req(Which::Both, false, 0, 0), false, finished).unwrap();
        let (out, err, chunks, e) = collect(rx).await;
        assert!(e.is_none());
        assert_eq!(out, big);
        assert_eq!(err, b"0123456789");
        assert!(chunks.iter().all(|c| c.data.len() <= LOG_CHUNK_BYTES));
        // Offsets say where each chunk sits in its file.
        let mut next = 0;
        for c in chunks
            .iter()
            .filter(|c| c.stream == pb::LogStream::Stdout as i32)
        {
            assert_eq!(c.offset, next);
            next += c.data.len() as u64;
        }

        let rx = stream_logs(
            root.path(),
            req(Which::Stderr, false, 0, 4),
            false,
            finished,
        )
        .unwrap();
        let (out, err, chunks, _) = collect(rx).await;
        assert!(out.is_empty(), "stdout was not asked for");
        assert_eq!(err, b"456789");
        assert_eq!(chunks[0].offset, 4);

        // An offset past the end is simply the end.
        let rx = stream_logs(
            root.path(),
            req(Which::Stderr, false, 0, 99),
            false,
            finished,
        )
        .unwrap();
        let (_, err, _, e) = collect(rx).await;
        assert!(err.is_empty() && e.is_none());
    }

    #[tokio::test]
    async fn follow_sees_lines_as_they_come_and_ends_when_the_job_ends() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path());
        let log = dir.join(STDOUT_LOG);
        std::fs::write(&log, b"one\n").unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let r = running.clone();
        let state = move || {
            if r.load(Ordering::SeqCst) {
                JobState::Running
            } else {
                finished()
            }
        };
        let mut rx =
            stream_logs(root.path(), req(Which::Stdout, true, 0, 0), false, state).unwrap();
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(first.data, b"one\n");

        // More output while the job runs arrives on the open stream.
        let append = |bytes: &[u8]| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(bytes).unwrap();
        };
        append(b"two\n");
        let second = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a followed line arrives while the job runs")
            .unwrap()
            .unwrap();
        assert_eq!((second.offset, second.data.as_slice()), (4, &b"two\n"[..]));

        // The stream stays open while nothing comes...
        assert!(
            tokio::time::timeout(FOLLOW_POLL * 3, rx.recv())
                .await
                .is_err()
        );
        // ...and after the job ends it sends what was written last, then ends.
        append(b"three\n");
        running.store(false, Ordering::SeqCst);
        let (out, _, _, e) = tokio::time::timeout(Duration::from_secs(5), collect(rx))
            .await
            .expect("the stream ends with the job");
        assert!(e.is_none());
        assert_eq!(out, b"three\n");
    }

    #[tokio::test]
    async fn a_log_that_appears_after_the_stream_opened_is_followed() {
        let root = tempfile::tempdir().unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let r = running.clone();
        let state = move || {
            if r.load(Ordering::SeqCst) {
                JobState::Running
            } else {
                finished()
            }
        };
        // The job is accepted but its directory is not made yet.
        let rx = stream_logs(root.path(), req(Which::Both, true, 0, 0), false, state).unwrap();
        let dir = job_dir(root.path());
        std::fs::write(dir.join(STDERR_LOG), b"late\n").unwrap();
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        running.store(false, Ordering::SeqCst);
        let (_, err, _, e) = collect(rx).await;
        assert!(e.is_none(), "{e:?}");
        assert_eq!(err, b"late\n");
    }

    #[tokio::test]
    async fn unknown_jobs_and_gone_logs_are_clear_errors() {
        let root = tempfile::tempdir().unwrap();
        let e = stream_logs(root.path(), req(Which::Both, false, 0, 0), false, || {
            JobState::Unknown
        })
        .unwrap_err();
        assert_eq!(e.code(), "AGENT_JOB_UNKNOWN");
        let e =
            stream_logs(root.path(), req(Which::Both, true, 0, 0), false, finished).unwrap_err();
        assert_eq!(e.code(), "AGENT_OUTPUT_GONE");
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(
            status.metadata().get("baton-code").unwrap(),
            "AGENT_OUTPUT_GONE"
        );

        // The directory is there without logs: the job printed nothing.
        let dir = job_dir(root.path());
        let rx = stream_logs(root.path(), req(Which::Both, false, 0, 0), false, finished).unwrap();
        let (out, err, chunks, e) = collect(rx).await;
        assert!(out.is_empty() && err.is_empty() && chunks.is_empty());
        assert!(e.is_none(), "no output is not an error: {e:?}");

        // The logs are not the agent's own.
        std::os::unix::fs::symlink("/etc/hostname", dir.join(STDOUT_LOG)).unwrap();
        let rx = stream_logs(
            root.path(),
            req(Which::Stdout, false, 0, 0),
            false,
            finished,
        )
        .unwrap();
        let (out, _, _, e) = collect(rx).await;
        assert!(out.is_empty(), "a link is never followed");
        assert_eq!(e.map(|e| e.code()), Some("AGENT_OUTPUT_GONE"));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_stops_the_reader() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path());
        std::fs::write(dir.join(STDOUT_LOG), vec![b'x'; LOG_CHUNK_BYTES * 8]).unwrap();
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = polls.clone();
        let state = move || {
            p.fetch_add(1, Ordering::SeqCst);
            JobState::Running
        };
        let mut rx =
            stream_logs(root.path(), req(Which::Stdout, true, 0, 0), false, state).unwrap();
        // Back-pressure: with nobody reading, the reader waits after a few chunks.
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        assert!(polls.load(Ordering::SeqCst) <= 2, "the reader ran ahead");
        let _ = rx.recv().await;
        drop(rx);
        tokio::time::sleep(FOLLOW_POLL * 3).await;
        let after = polls.load(Ordering::SeqCst);
        tokio::time::sleep(FOLLOW_POLL * 3).await;
        assert_eq!(
            polls.load(Ordering::SeqCst),
            after,
            "the reader still polls"
        );
    }
}
