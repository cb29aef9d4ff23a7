//! A job's scratch directory: where it is
//! (`scratch_root/<execution_id>/<task_path>-<item>-<attempt>`, [`scratch_dir`]) and
//! the names of the files in it; how it is made, fresh and empty for every dispatch
//! (mode 0700, owned by the run-as user when there is one), with the check that a
//! run-as user can reach it through every directory above; and how the agent opens
//! what a job wrote there.
//!
//! A job directory belongs to the job's run-as user, who could put a link to
//! another file, or a FIFO, in place of any file the agent reads: every file a job
//! wrote is opened without following links, without blocking, only as a regular
//! file and only when owned by the user expected (`open_job_file`), and read
//! line by line within a bound (`read_line`). The job run writes the files
//! (`job::capture`, `job::files`); [`crate::logs`] and [`crate::rows`] read them
//! back through this module alone.
//!
//! **The pool.** Making a directory allocates an inode, and on ext4 with files
//! being deleted around it (retention, finished executions) finding a free inode
//! was most of what a short process cost the agent (`perf`: `mkdir` →
//! `find_inode_bit` → `recently_deleted`; 97 µs per mkdir here, and 159 µs more to
//! remove the directory later). A job that leaves its directory empty (it printed
//! nothing, wrote no output or rows; empty log files of its own do not count)
//! gives it back to a pool
//! (`jobs/.free/N`, at most [`POOL_MAX`]) and the next job's directory is that one,
//! renamed into place (no inode; 22 µs per rename). Only jobs without a run-as user
//! take part: a run-as job's directory belongs to that user. The pool is emptied
//! at start-up.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tracing::warn;

use crate::model::{DispatchKey, fs_component};
use crate::run_as::RunAsUser;

/// The scratch directory of a job: `scratch_root/<execution_id>/<task_path>-<item>-<attempt>`.
pub fn scratch_dir(scratch_root: &Path, key: &DispatchKey) -> PathBuf {
    scratch_root
        .join(fs_component(&key.execution_id))
        .join(format!(
            "{}-{}-{}",
            fs_component(&key.task_path),
            key.item_index,
            key.attempt
        ))
}

/// File names inside the scratch directory.
/// `$BATON_OUTPUT` of task `T` is `output.T` ([`output_file`]).
pub const OUTPUT_FILE_PREFIX: &str = "output.";
pub const ROWS_FILE: &str = "rows.jsonl";
pub const STDOUT_LOG: &str = "stdout.log";
pub const STDERR_LOG: &str = "stderr.log";
/// The agent's copy of a succeeded job's rows (masked; no line longer than
/// [`ROW_BYTES_MAX`]).
pub const ROWS_KEPT_FILE: &str = "rows.kept.jsonl";
/// Present when some rows were not kept.
pub const ROWS_TRUNCATED_FILE: &str = "rows.truncated";
/// Longest row kept.
pub const ROW_BYTES_MAX: usize = 1 << 20;
/// Buffer of a line reader over a job's file.
pub(crate) const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The `$BATON_OUTPUT` file of `task` in the job directory `dir`.
pub fn output_file(dir: &Path, task: &str) -> PathBuf {
    dir.join(format!("{OUTPUT_FILE_PREFIX}{}", fs_component(task)))
}

/// Whether a file a job wrote is one of its raw `$BATON_OUTPUT`/`$BATON_ROWS` files.
pub(crate) fn is_raw(name: &str) -> bool {
    name.starts_with(OUTPUT_FILE_PREFIX) || name == ROWS_FILE
}

/// Removes the raw files that jobs of an earlier boot left under `jobs_root`
/// (`<execution>/<job>/`): a killed agent never read them, and those jobs run
/// again elsewhere. Called at start, before any job runs; returns how many went.
pub fn remove_raw_files_left(jobs_root: &Path) -> usize {
    let mut removed = 0;
    let dirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    for execution in dirs(jobs_root) {
        for job in dirs(&execution) {
            for e in std::fs::read_dir(&job).into_iter().flatten().flatten() {
                if is_raw(&e.file_name().to_string_lossy())
                    && std::fs::remove_file(e.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
    }
    removed
}

/// Opens a file the job wrote, for reading: never through a symbolic link, never
/// blocking (a FIFO is refused), only a regular file, and owned by `owner` when given
/// (a run-as job's user). `None` when absent or refused (refusals are logged).
/// One trip to a blocking thread (the open and its checks together).
pub(crate) async fn open_job_file(path: &Path, owner: Option<u32>) -> Option<tokio::fs::File> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || open_job_file_blocking(&path, owner))
        .await
        .ok()
        .flatten()
        .map(tokio::fs::File::from_std)
}

/// [`open_job_file`] on the calling thread, for code already on a blocking one.
pub(crate) fn open_job_file_blocking(path: &Path, owner: Option<u32>) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "job file ignored (a symbolic link, or unreadable)");
            return None;
        }
    };
    let meta = file.metadata().ok()?;
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

/// What [`read_line`] read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// `line` holds a whole line, without its newline.
    Whole,
    /// A line longer than the limit was skipped (`line` is empty).
    TooLong,
    End,
}

/// Reads one line into `line` without ever holding more than `max` bytes of it.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
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

/// Most empty directories kept for reuse.
pub const POOL_MAX: usize = 256;

/// Empty scratch directories of finished jobs, for the next jobs.
#[derive(Debug)]
pub struct DirPool {
    root: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
    /// `root` was made (it is made once, on the first give-back).
    made: std::sync::atomic::AtomicBool,
}

impl DirPool {
    /// The pool under `scratch_root` (`.free`), emptied.
    pub fn new(scratch_root: &Path) -> DirPool {
        let root = scratch_root.join(".free");
        let _ = std::fs::remove_dir_all(&root);
        DirPool {
            root,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            made: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Directories in the pool now.
    pub fn pooled(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take(&self) -> Option<PathBuf> {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Takes `dir` of a finished job into the pool if it is empty, the agent's
    /// own with mode 0700, and the pool has room. True when taken: `dir` is gone.
    pub(crate) fn give_back(&self, dir: &Path) -> bool {
        if self.pooled() >= POOL_MAX {
            return false;
        }
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return false;
        };
        let ours = meta.is_dir()
            && meta.uid() == nix::unistd::geteuid().as_raw()
            && meta.mode() & 0o7777 == 0o700;
        if !ours || !left_empty(dir) {
            return false;
        }
        // The pool holds empty directories only: the empty logs go (a later
        // job makes its own, O_EXCL, so that no handle on these — a follower's,
        // or a process's that outlived the job — ever reaches its output).
        for name in [STDOUT_LOG, STDERR_LOG] {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => return false,
            }
        }
        if !self.made.load(Ordering::Relaxed) {
            if std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&self.root)
                .is_err()
                && !self.root.is_dir()
            {
                return false;
            }
            self.made.store(true, Ordering::Relaxed);
        }
        let to = self
            .root
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        if std::fs::rename(dir, &to).is_err() {
            return false;
        }
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(to);
        true
    }
}

/// Whether a directory is empty (a pooled one must be: nothing that outlived its
/// last job wrote into it).
fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Whether job directory `dir` holds nothing a job left: no entry, or only an
/// empty `stdout.log` and `stderr.log` of the agent's own (regular files with one
/// link), which a job whose processes wrote straight to their logs
/// ([`super::capture`]) leaves when it printed nothing; they are removed when the
/// directory goes back to the pool.
fn left_empty(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let me = nix::unistd::geteuid().as_raw();
    entries.into_iter().all(|e| {
        e.is_ok_and(|e| {
            let name = e.file_name();
            (name == STDOUT_LOG || name == STDERR_LOG)
                // `DirEntry::metadata` does not follow a link.
                && e.metadata().is_ok_and(|m| {
                    m.is_file() && m.len() == 0 && m.uid() == me && m.nlink() == 1
                })
        })
    })
}

/// Makes a fresh scratch directory (mode 0700; owned by the run-as user if any) and
/// checks that a run-as user can reach it. `Err` is the job's failure reason.
pub(crate) async fn prepare_dir(
    dir: &Path,
    run_as: Option<&RunAsUser>,
    pool: &std::sync::Arc<DirPool>,
) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let run_as = run_as.cloned();
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || prepare_dir_blocking(&dir, run_as.as_ref(), &pool))
        .await
        .map_err(|e| format!("cannot prepare scratch directory: {e}"))?
}

fn prepare_dir_blocking(
    dir: &Path,
    run_as: Option<&RunAsUser>,
    pool: &DirPool,
) -> Result<(), String> {
    let failed =
        |e: std::io::Error| format!("cannot prepare scratch directory {}: {e}", dir.display());
    let parent = dir.parent().unwrap_or(Path::new("/"));
    // The execution's directory: others may pass through it to their own job
    // directory but not list it.
    let make_parent = || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
    };
    make_parent().map_err(failed)?;
    if run_as.is_none()
        && let Some(free) = pool.take()
    {
        // Fails when `dir` is there and not empty (left by an earlier boot):
        // then it is made the slow way below.
        if std::fs::rename(&free, dir).is_ok() {
            // Still empty (nothing that outlived its last job wrote into it),
            // and young: retention judges a directory by its modification
            // time, which a rename does not change.
            let empty = is_empty(dir);
            let touched = std::fs::File::open(dir).and_then(|f| {
                f.set_times(std::fs::FileTimes::new().set_modified(std::time::SystemTime::now()))
            });
            if empty && touched.is_ok() {
                return Ok(());
            }
        } else {
            let _ = std::fs::remove_dir(&free);
        }
    }
    let fresh = || std::fs::DirBuilder::new().mode(0o700).create(dir);
    match fresh() {
        Ok(()) => {}
        // A dispatch id runs at most once per boot; leftovers of an earlier boot
        // are stale. (`remove_dir_all` does not follow symbolic links a job left
        // there.) Tried only when the directory is there: on a path that does not
        // exist it costs more than the mkdir.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_dir_all(dir).map_err(failed)?;
            fresh().map_err(failed)?;
        }
        // Retention removed the execution's directory, empty and old, between
        // its making above and now: made again, once.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            make_parent().map_err(failed)?;
            fresh().map_err(failed)?;
        }
        Err(e) => return Err(failed(e)),
    }
    let Some(user) = run_as else {
        return Ok(());
    };
    // Under a restrictive umask the execution's directory and `jobs/` lack o+x: add
    // it (they are the agent's own), then check the whole path for the user.
    for own in [parent].into_iter().chain(parent.parent()) {
        if let Ok(meta) = std::fs::metadata(own)
            && meta.mode() & 0o001 == 0
        {
            let mode = (meta.mode() & 0o7777) | 0o001;
            std::fs::set_permissions(own, std::fs::Permissions::from_mode(mode)).map_err(failed)?;
        }
    }
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(failed)?;
    reachable_by(parent, user)
}

/// Whether `user` (uid, primary gid; no supplementary groups) may search every
/// directory from `/` down to `dir`. `Err` names the first one it may not.
pub fn reachable_by(dir: &Path, user: &RunAsUser) -> Result<(), String> {
    for ancestor in dir.ancestors() {
        let meta = std::fs::metadata(ancestor)
            .map_err(|e| format!("cannot check {}: {e}", ancestor.display()))?;
        let mode = meta.mode();
        let search = if meta.uid() == user.uid {
            mode & 0o100
        } else if meta.gid() == user.gid {
            mode & 0o010
        } else {
            mode & 0o001
        };
        if search == 0 {
            return Err(format!(
                "run_as user {:?} cannot reach the job directory: {} (mode {:o}, owner uid {}) \
                 does not let it pass (the agent's data directory and every directory above \
                 it need search permission, e.g. `chmod o+x`)",
                user.name,
                ancestor.display(),
                mode & 0o7777,
                meta.uid()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[test]
    fn only_empty_logs_of_the_agents_own_count_as_nothing_left() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("job");
        std::fs::create_dir(&d).unwrap();
        assert!(left_empty(&d));
        std::fs::write(d.join(STDOUT_LOG), "").unwrap();
        std::fs::write(d.join(STDERR_LOG), "").unwrap();
        assert!(left_empty(&d), "empty logs");
        std::fs::write(d.join(STDERR_LOG), "x").unwrap();
        assert!(!left_empty(&d), "a log with something in it");
        std::fs::remove_file(d.join(STDERR_LOG)).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.join(STDERR_LOG)).unwrap();
        assert!(!left_empty(&d), "a link in place of a log");
        std::fs::remove_file(d.join(STDERR_LOG)).unwrap();
        std::fs::write(d.join("output.t"), "").unwrap();
        assert!(!left_empty(&d), "another file, even empty");
        assert!(!left_empty(&root.path().join("absent")));
    }

    #[test]
    fn a_pooled_directory_is_empty_and_no_handle_on_its_old_logs_sees_the_next_job() {
        use std::io::{Read, Write};
        let root = tempfile::tempdir().unwrap();
        let pool = DirPool::new(root.path());
        let job = |n: u32| root.path().join("e").join(format!("t-{n}-1"));
        // Job 1 printed nothing; somebody (a `logs -f` follower, a process
        // that left its group) still holds its stdout.log.
        prepare_dir_blocking(&job(1), None, &pool).unwrap();
        std::fs::write(job(1).join(STDOUT_LOG), "").unwrap();
        std::fs::write(job(1).join(STDERR_LOG), "").unwrap();
        let mut held = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(job(1).join(STDOUT_LOG))
            .unwrap();
        assert!(pool.give_back(&job(1)));
        let pooled = root.path().join(".free").join("0");
        assert!(is_empty(&pooled), "the empty logs do not go into the pool");

        // Job 2 gets the directory and makes its own logs, which it writes.
        prepare_dir_blocking(&job(2), None, &pool).unwrap();
        assert_eq!(pool.pooled(), 0);
        let mut cap = crate::job::capture::Capture::new(job(2).join(STDOUT_LOG), 64);
        let mut f = cap.child_file().unwrap();
        f.write_all(b"job 2's secret output\n").unwrap();
        // The old handle sees none of it, and what it writes lands nowhere job 2 has.
        let mut seen = String::new();
        held.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "");
        held.write_all(b"from an orphan of job 1\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(job(2).join(STDOUT_LOG)).unwrap(),
            "job 2's secret output\n"
        );
    }

    #[test]
    fn a_hard_link_in_place_of_a_log_is_something_left() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("job");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(root.path().join("elsewhere"), "").unwrap();
        std::fs::hard_link(root.path().join("elsewhere"), d.join(STDOUT_LOG)).unwrap();
        assert!(!left_empty(&d));
    }

    #[test]
    fn empty_directories_are_reused_and_others_are_not() {
        let root = tempfile::tempdir().unwrap();
        let pool = DirPool::new(root.path());
        let job = |n: u32| root.path().join("e").join(format!("t-{n}-1"));
        prepare_dir_blocking(&job(1), None, &pool).unwrap();
        assert!(pool.give_back(&job(1)));
        assert!(!job(1).exists());
        assert_eq!(pool.pooled(), 1);

        // The next job's directory is the pooled one: fresh, empty, 0700, and
        // young (retention goes by modification time; a rename keeps it).
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
        let pooled = root.path().join(".free").join("0");
        std::fs::File::open(&pooled)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
        prepare_dir_blocking(&job(2), None, &pool).unwrap();
        let age = std::fs::metadata(job(2))
            .unwrap()
            .modified()
            .unwrap()
            .elapsed();
        assert!(age.unwrap_or_default() < std::time::Duration::from_secs(60));
        assert_eq!(pool.pooled(), 0);
        let meta = std::fs::metadata(job(2)).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert_eq!(std::fs::read_dir(job(2)).unwrap().count(), 0);

        // Not empty, or not 0700 (the job changed it): kept where it is.
        std::fs::write(job(2).join("stdout.log"), "x").unwrap();
        assert!(!pool.give_back(&job(2)));
        prepare_dir_blocking(&job(3), None, &pool).unwrap();
        std::fs::set_permissions(job(3), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!pool.give_back(&job(3)));
        assert!(job(2).exists() && job(3).exists());
        assert_eq!(pool.pooled(), 0);

        // A stale directory of an earlier boot in the way: made fresh anyway.
        prepare_dir_blocking(&job(4), None, &pool).unwrap();
        assert!(pool.give_back(&job(4)));
        std::fs::create_dir_all(job(5)).unwrap();
        std::fs::write(job(5).join("old"), "x").unwrap();
        prepare_dir_blocking(&job(5), None, &pool).unwrap();
        assert_eq!(std::fs::read_dir(job(5)).unwrap().count(), 0);

        // The pool is bounded, and emptied when the agent starts again.
        let many = 10..(10 + POOL_MAX as u32 + 5);
        for n in many.clone() {
            prepare_dir_blocking(&job(n), None, &pool).unwrap();
        }
        for n in many {
            pool.give_back(&job(n));
        }
        assert_eq!(pool.pooled(), POOL_MAX);
        let again = DirPool::new(root.path());
        assert_eq!(again.pooled(), 0);
        assert!(!root.path().join(".free").exists());
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

    #[test]
    fn raw_files_an_earlier_boot_left_are_removed_at_start() {
        let root = tempfile::tempdir().unwrap();
        let job = root.path().join("exec1").join("fan-0-1");
        std::fs::create_dir_all(&job).unwrap();
        for f in [
            "output.t",
            "output.u",
            ROWS_FILE,
            "stdout.log",
            "rows.kept.jsonl",
        ] {
            std::fs::write(job.join(f), "pw=hunter2\n").unwrap();
        }
        std::fs::write(root.path().join(".running.log"), "+1 2\n").unwrap();
        assert_eq!(remove_raw_files_left(root.path()), 3);
        let mut left: Vec<String> = std::fs::read_dir(&job)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["rows.kept.jsonl", "stdout.log"]);
        assert!(root.path().join(".running.log").exists());
        assert_eq!(remove_raw_files_left(&root.path().join("absent")), 0);
    }
}
