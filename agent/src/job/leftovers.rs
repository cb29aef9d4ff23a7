//! Process groups left behind by an earlier boot of this agent.
//!
//! Jobs run in their own process groups, so when the agent is SIGKILLed its
//! children live on as orphans — while the coordinator, having lost the agent,
//! runs those children again elsewhere. Each running group is recorded in a
//! journal (`<data_dir>/jobs/.running.log`: a line `+PGID START` when it starts,
//! with the leader's start time, and `-PGID` once the group is empty); a
//! restarted agent replays it and ends every group still recorded before it
//! accepts work. One append per event on an open file, no file per group: a
//! file made is an inode allocated, which costs about as much as starting a
//! short process. The journal is rewritten with the live groups alone when it
//! grows past a few times their number.
//!
//! Pids are reused, so a group is killed only if it is provably ours
//! (`group_record.rs`).
//!
//! The journal covers the case where nothing was left to clean up at the
//! moment of death; while the agent lives, each record also goes to its
//! watchdog process ([`crate::watchdog`], when one is attached), which ends
//! the groups as soon as the agent dies instead of at its next start.
//!
//! Records are best effort: a failure to write one only loses that cleanup.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tracing::{debug, warn};

#[cfg(test)]
use crate::group_record::start_time;
use crate::group_record::{Line, LiveGroups, spawn_start};
use crate::watchdog::Watchdog;

/// The journal's file name under the jobs directory.
const JOURNAL: &str = ".running.log";
/// Lines the journal may hold beyond this many per live group before a rewrite.
const COMPACT_SLACK: usize = 4_096;
/// How long [`reap`] waits for the groups it killed to be gone.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// The records of the groups running now (one per agent, for its jobs directory).
pub struct Leftovers {
    path: PathBuf,
    state: Mutex<Journal>,
}

#[derive(Default)]
struct Journal {
    file: Option<std::fs::File>,
    live: LiveGroups,
    /// Lines in the file now.
    lines: usize,
    /// The process that ends the live groups if the agent dies.
    watchdog: Option<Watchdog>,
}

impl std::fmt::Debug for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leftovers")
            .field("path", &self.path)
            .finish()
    }
}

impl Leftovers {
    /// The journal of `scratch_root` (the jobs directory). Call [`reap`] first:
    /// this starts a new journal.
    pub fn new(scratch_root: &Path) -> Leftovers {
        Leftovers {
            path: scratch_root.join(JOURNAL),
            state: Mutex::new(Journal::default()),
        }
    }

    /// From now on, every record also goes to `watchdog` (which is told the
    /// groups live now first).
    pub(crate) fn attach(&self, mut watchdog: Watchdog) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let j = &mut *guard;
        if !j.live.0.is_empty() {
            watchdog.send(&j.live.lines(), &j.live);
        }
        j.watchdog = Some(watchdog);
    }

    /// Records a running group (its leader's start time read from `/proc`).
    pub fn record(&self, pgid: u32) {
        self.record_spawned(pgid, None);
    }

    /// Records the group of a leader spawned just now; `before` is the boot
    /// clock read just before the spawn (`group_record::boot_ticks`),
    /// which spares the read of `/proc` when the spawn was quick.
    pub fn record_spawned(&self, pgid: u32, before: Option<u64>) {
        let Some(start) = spawn_start(pgid, before) else {
            return;
        };
        let line = Line::Started { pgid, start };
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let j = &mut *guard;
        j.live.apply(line);
        let text = line.to_string();
        if let Some(w) = j.watchdog.as_mut() {
            w.send(&text, &j.live);
        }
        self.append(j, &text);
    }

    /// Forgets a group whose processes have all ended.
    pub fn forget(&self, pgid: u32) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let j = &mut *guard;
        if j.live.0.remove(&pgid).is_none() {
            return;
        }
        let text = Line::Ended { pgid }.to_string();
        if let Some(w) = j.watchdog.as_mut() {
            w.send(&text, &j.live);
        }
        if j.lines > COMPACT_SLACK + 4 * j.live.0.len() {
            self.rewrite(j);
        } else {
            self.append(j, &text);
        }
    }

    fn append(&self, j: &mut Journal, line: &str) {
        if j.file.is_none() {
            self.rewrite(j);
            if j.file.is_some() {
                return; // the rewrite wrote the live set, this group included
            }
        }
        let written = j.file.as_mut().map(|f| f.write_all(line.as_bytes()));
        match written {
            Some(Ok(())) => j.lines += 1,
            Some(Err(e)) => {
                debug!(error = %e, "cannot record a running process group");
                j.file = None;
            }
            None => {}
        }
    }

    /// Writes the live set to a new journal and puts it in place of the old.
    fn rewrite(&self, j: &mut Journal) {
        let tmp = self.path.with_extension("log.new");
        let text = j.live.lines();
        let made = (|| {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::OpenOptions::new().append(true).open(&self.path)
        })();
        match made {
            Ok(f) => {
                j.file = Some(f);
                j.lines = j.live.0.len();
            }
            Err(e) => {
                debug!(error = %e, "cannot write the journal of running process groups");
                j.file = None;
            }
        }
    }
}

/// Ends every group an earlier boot left recorded (and waits a little for them
/// to be gone), and clears the records; returns how many groups were killed.
/// Also reads the records of earlier releases (a file per group under
/// `jobs/.running/`).
pub fn reap(scratch_root: &Path) -> usize {
    let journal = scratch_root.join(JOURNAL);
    let mut recorded = LiveGroups::default();
    if let Ok(text) = std::fs::read_to_string(&journal) {
        recorded.apply_text(&text);
    }
    let old_dir = scratch_root.join(".running");
    if let Ok(entries) = std::fs::read_dir(&old_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let pgid = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok());
            let start = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            if let (Some(pgid), Some(start)) = (pgid, start) {
                recorded.apply(Line::Started { pgid, start });
            }
        }
    }
    let killed = recorded.kill_all(REAP_WAIT);
    let _ = std::fs::remove_file(&journal);
    let _ = std::fs::remove_dir_all(&old_dir);
    if killed > 0 {
        warn!(
            groups = killed,
            "ended process groups left running by an earlier boot of this agent"
        );
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn reap_kills_recorded_groups_and_spares_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = sleeper();
        let mut done = sleeper();
        let mut stranger = sleeper();
        let journal = Leftovers::new(dir.path());
        journal.record(ours.id());
        journal.record(done.id());
        journal.forget(done.id());
        // A record whose start time does not match (a reused pid) is not killed.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap()
            .write_all(format!("+{} 1\n", stranger.id()).as_bytes())
            .unwrap();
        drop(journal); // the agent is SIGKILLed: nothing else is written
        assert_eq!(reap(dir.path()), 1);
        assert!(ours.wait().is_ok());
        for (what, child) in [
            ("a forgotten group", &mut done),
            ("a stranger", &mut stranger),
        ] {
            assert!(child.try_wait().unwrap().is_none(), "{what} must survive");
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(!dir.path().join(JOURNAL).exists(), "records are cleared");
        assert_eq!(reap(dir.path()), 0);
    }

    #[test]
    fn records_of_an_earlier_release_are_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = sleeper();
        let old = dir.path().join(".running");
        std::fs::create_dir_all(&old).unwrap();
        let start = start_time(ours.id()).unwrap();
        std::fs::write(old.join(ours.id().to_string()), start.to_string()).unwrap();
        assert_eq!(reap(dir.path()), 1);
        assert!(ours.wait().is_ok());
        assert!(!old.exists());
    }

    #[test]
    fn the_journal_is_rewritten_with_the_live_groups_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Leftovers::new(dir.path());
        let me = std::process::id();
        let mut child = sleeper();
        journal.record(child.id());
        for _ in 0..(COMPACT_SLACK + 10) {
            journal.record(me);
            journal.forget(me);
        }
        let text = std::fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        assert!(
            text.lines().count() < COMPACT_SLACK,
            "{} lines",
            text.lines().count()
        );
        let mut live = LiveGroups::default();
        live.apply_text(&text);
        assert_eq!(live.0.into_keys().collect::<Vec<_>>(), [child.id()]);
        let _ = child.kill();
        let _ = child.wait();
    }
}
