//! Process groups left behind by an earlier boot of this agent.
//!
//! Jobs run in their own process groups, so when the agent is SIGKILLed its
//! children live on as orphans — while the coordinator, having lost the agent,
//! runs those children again elsewhere. Each running group is recorded here
//! (`<data_dir>/jobs/.running/<pgid>`, with the leader's start time) and the
//! record is removed once the group is empty; a restarted agent ends every
//! group still recorded before it accepts work.
//!
//! Pids are reused, so a group is killed only if it is provably ours: its
//! leader is alive with the recorded start time, or the leader is gone but
//! processes remain in the group (Linux does not hand out a pid that is still
//! some group's id, so such a group cannot be a newcomer's).

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// Directory of the records under the jobs directory.
pub fn dir(scratch_root: &Path) -> PathBuf {
    scratch_root.join(".running")
}

/// The start time of process `pid` (clock ticks since boot), from `/proc/PID/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after ')' start at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records a running group (best effort: a failure only loses the cleanup).
pub fn record(scratch_root: &Path, pgid: u32) {
    let Some(start) = start_time(pgid) else {
        return;
    };
    let dir = dir(scratch_root);
    let write = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(pgid.to_string()), start.to_string()));
    if let Err(e) = write {
        debug!(pgid, error = %e, "cannot record a running process group");
    }
}

/// Forgets a group whose processes have all ended.
pub fn forget(scratch_root: &Path, pgid: u32) {
    let _ = std::fs::remove_file(dir(scratch_root).join(pgid.to_string()));
}

/// Ends every recorded group of an earlier boot; returns how many were killed.
pub fn reap(scratch_root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir(scratch_root)) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let pgid = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok());
        let recorded = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let (Some(pgid), Some(recorded)) = (pgid, recorded)
            && pgid > 1
        {
            let group = Pid::from_raw(pgid as i32);
            let ours = match start_time(pgid) {
                Some(now) => now == recorded,
                None => killpg(group, None).is_ok(),
            };
            if ours && killpg(group, Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
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

    #[test]
    fn reap_kills_recorded_groups_and_spares_strangers() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let mut ours = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = ours.id();
        record(dir.path(), pgid);
        // A record whose start time does not match (a reused pid) is not killed.
        let mut stranger = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        std::fs::write(super::dir(dir.path()).join(stranger.id().to_string()), "1").unwrap();
        assert_eq!(reap(dir.path()), 1);
        assert!(ours.wait().is_ok());
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "a stranger's group must survive"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
        assert_eq!(
            std::fs::read_dir(super::dir(dir.path())).unwrap().count(),
            0,
            "records are cleared"
        );
    }

    #[test]
    fn forget_removes_the_record() {
        let dir = tempfile::tempdir().unwrap();
        record(dir.path(), std::process::id());
        forget(dir.path(), std::process::id());
        assert_eq!(reap(dir.path()), 0);
    }
}
