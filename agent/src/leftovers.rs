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
//! Pids are reused, so a group is killed only if it is provably ours: its
//! leader is alive with the recorded start time, or the leader is gone but
//! processes remain in the group (Linux does not hand out a pid that is still
//! some group's id, so such a group cannot be a newcomer's).
//!
//! Records are best effort: a failure to write one only loses that cleanup.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// The journal's file name under the jobs directory.
const JOURNAL: &str = ".running.log";
/// Lines the journal may hold beyond this many per live group before a rewrite.
const COMPACT_SLACK: usize = 4_096;

/// The records of the groups running now (one per agent, for its jobs directory).
pub struct Leftovers {
    path: PathBuf,
    state: Mutex<Journal>,
}

#[derive(Default)]
struct Journal {
    file: Option<std::fs::File>,
    /// pgid → the leader's start time.
    live: HashMap<u32, u64>,
    /// Lines in the file now.
    lines: usize,
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

    /// Records a running group.
    pub fn record(&self, pgid: u32) {
        let Some(start) = start_time(pgid) else {
            return;
        };
        let mut j = self.state.lock().unwrap_or_else(|p| p.into_inner());
        j.live.insert(pgid, start);
        self.append(&mut j, &format!("+{pgid} {start}\n"));
    }

    /// Forgets a group whose processes have all ended.
    pub fn forget(&self, pgid: u32) {
        let mut j = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if j.live.remove(&pgid).is_none() {
            return;
        }
        if j.lines > COMPACT_SLACK + 4 * j.live.len() {
            self.rewrite(&mut j);
        } else {
            self.append(&mut j, &format!("-{pgid}\n"));
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
        let text: String = j
            .live
            .iter()
            .map(|(pgid, start)| format!("+{pgid} {start}\n"))
            .collect();
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
                j.lines = j.live.len();
            }
            Err(e) => {
                debug!(error = %e, "cannot write the journal of running process groups");
                j.file = None;
            }
        }
    }
}

/// The start time of process `pid` (clock ticks since boot), from `/proc/PID/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after ')' start at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The groups a journal leaves recorded: `+` lines not followed by their `-`.
fn replay(text: &str) -> HashMap<u32, u64> {
    let mut live = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('+') {
            let mut parts = rest.split_whitespace();
            if let (Some(Ok(pgid)), Some(Ok(start))) = (
                parts.next().map(str::parse::<u32>),
                parts.next().map(str::parse::<u64>),
            ) {
                live.insert(pgid, start);
            }
        } else if let Some(Ok(pgid)) = line.strip_prefix('-').map(str::parse::<u32>) {
            live.remove(&pgid);
        }
    }
    live
}

/// Ends every group an earlier boot left recorded, and clears the records;
/// returns how many groups were killed. Also reads the records of earlier
/// releases (a file per group under `jobs/.running/`).
pub fn reap(scratch_root: &Path) -> usize {
    let journal = scratch_root.join(JOURNAL);
    let mut recorded: Vec<(u32, u64)> = std::fs::read_to_string(&journal)
        .map(|t| replay(&t).into_iter().collect())
        .unwrap_or_default();
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
                recorded.push((pgid, start));
            }
        }
    }
    let mut killed = 0;
    for (pgid, recorded) in recorded {
        if pgid <= 1 {
            continue;
        }
        let group = Pid::from_raw(pgid as i32);
        let ours = match start_time(pgid) {
            Some(now) => now == recorded,
            None => killpg(group, None).is_ok(),
        };
        if ours && killpg(group, Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
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

    #[test]
    fn start_time_of_self_is_readable() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }

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
        assert_eq!(replay(&text).into_keys().collect::<Vec<_>>(), [child.id()]);
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn replay_ignores_malformed_lines() {
        let live = replay("+12 34\n+x 1\ngarbage\n-99\n+13 5\n-12\n+14\n");
        assert_eq!(live, HashMap::from([(13, 5)]));
    }
}
