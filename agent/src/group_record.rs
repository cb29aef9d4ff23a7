//! The record of a running process group, shared by the two things that end
//! groups an agent left behind: the on-disk journal ([`crate::job::leftovers`]) and
//! the watchdog process ([`crate::watchdog`]).
//!
//! Both speak one line format: `+PGID START` when a group starts (START is the
//! leader's start time, clock ticks since boot), `-PGID` once the group is
//! empty, and (watchdog only) `*` to forget every group before a fresh list.
//! Malformed lines are ignored: a line cut short by a crash must not stop the
//! replay of the lines after it.
//!
//! Pids are reused, so a recorded group is killed only if it is provably still
//! ours: its leader is alive with a start time within [`START_SLACK_TICKS`] after
//! the recorded one, or the leader is gone but processes remain in the group
//! (Linux does not hand out a pid that is still some group's id, so such a group
//! cannot be a newcomer's).
//!
//! **The start time without `/proc`.** Reading `/proc/PID/stat` after each spawn
//! cost the agent an open, a stat, six reads and a close per job. The kernel
//! stamps a process's start with the boot clock at fork, so the boot clock read
//! just before the spawn (`CLOCK_BOOTTIME`, in the same ticks, through the vDSO:
//! no system call) is a lower bound of it, and the clock read just after is an
//! upper bound. When the two are within [`START_SLACK_TICKS`], the lower bound is
//! recorded ([`spawn_start`]); when the spawn took longer (a loaded machine), or
//! the first check against `/proc` in this process disagrees (a clock with
//! another base), `/proc` is read as before. A recorded group is then ours when
//! its leader started within the slack after the recorded tick: a stranger would
//! have to get the same pid within 50 ms of our leader's start, after our group
//! emptied — more pids than the system has, handed out in that time. Records of
//! earlier releases hold the exact start time, which passes the same check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// One line of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// A group started; its leader's start time.
    Started { pgid: u32, start: u64 },
    /// A group is empty.
    Ended { pgid: u32 },
    /// Forget every group (a full list follows).
    Reset,
}

impl Line {
    /// Parses one line (without its newline); `None` if malformed.
    pub(crate) fn parse(line: &str) -> Option<Line> {
        let line = line.trim_end_matches('\r');
        if line == "*" {
            return Some(Line::Reset);
        }
        if let Some(rest) = line.strip_prefix('+') {
            let mut parts = rest.split(' ');
            let pgid = parts.next()?.parse().ok()?;
            let start = parts.next()?.parse().ok()?;
            return parts
                .next()
                .is_none()
                .then_some(Line::Started { pgid, start });
        }
        let pgid = line.strip_prefix('-')?.parse().ok()?;
        Some(Line::Ended { pgid })
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Started { pgid, start } => writeln!(f, "+{pgid} {start}"),
            Line::Ended { pgid } => writeln!(f, "-{pgid}"),
            Line::Reset => writeln!(f, "*"),
        }
    }
}

/// The groups a record leaves running: pgid → the leader's start time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LiveGroups(pub(crate) HashMap<u32, u64>);

impl LiveGroups {
    /// Applies one line.
    pub(crate) fn apply(&mut self, line: Line) {
        match line {
            Line::Started { pgid, start } => {
                self.0.insert(pgid, start);
            }
            Line::Ended { pgid } => {
                self.0.remove(&pgid);
            }
            Line::Reset => self.0.clear(),
        }
    }

    /// Applies a text of lines, skipping malformed ones.
    pub(crate) fn apply_text(&mut self, text: &str) {
        for line in text.lines().filter_map(Line::parse) {
            self.apply(line);
        }
    }

    /// The whole set as `+` lines.
    pub(crate) fn lines(&self) -> String {
        self.0
            .iter()
            .map(|(&pgid, &start)| Line::Started { pgid, start }.to_string())
            .collect()
    }

    /// SIGKILLs every group that is still ours, then waits up to `wait` for
    /// them to empty; returns how many were killed.
    pub(crate) fn kill_all(&self, wait: Duration) -> usize {
        let killed: Vec<Pid> = self
            .0
            .iter()
            .filter(|&(&pgid, &start)| kill_if_ours(pgid, start))
            .map(|(&pgid, _)| Pid::from_raw(pgid as i32))
            .collect();
        // Killed processes exit asynchronously: wait a little so that "ended"
        // means gone (zombies count as gone: they run nothing, and who reaps
        // them is their new parent's business).
        let until = Instant::now() + wait;
        while !killed.is_empty()
            && Instant::now() < until
            && killed.iter().any(|g| group_runs(g.as_raw() as u32))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        killed.len()
    }
}

/// How far after the recorded start time a leader's real start time may be
/// (clock ticks of 10 ms).
pub(crate) const START_SLACK_TICKS: u64 = 5;

/// Nanoseconds per clock tick of `/proc/PID/stat` (`USER_HZ` = 100 on Linux).
const NS_PER_TICK: u64 = 10_000_000;

/// The boot clock now, in the ticks of `/proc/PID/stat` (rounded down).
pub(crate) fn boot_ticks() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let ns =
        u64::try_from(now.tv_sec()).ok()? * 1_000_000_000 + u64::try_from(now.tv_nsec()).ok()?;
    Some(ns / NS_PER_TICK)
}

/// Whether the boot clock may stand for `/proc` in this process: 0 not checked
/// yet, 1 yes, 2 no (the first check disagreed).
static BOOT_CLOCK: AtomicU8 = AtomicU8::new(0);

/// The start time to record for process `pid`, spawned between the boot-clock
/// readings `before` and now (see the module doc): `before` when the spawn was
/// quick and the boot clock agrees with `/proc`, else `/proc`'s own figure.
pub(crate) fn spawn_start(pid: u32, before: Option<u64>) -> Option<u64> {
    let window = before.zip(boot_ticks());
    let quick = window.is_some_and(|(b, a)| a.saturating_sub(b) <= START_SLACK_TICKS);
    match (quick, BOOT_CLOCK.load(Ordering::Relaxed)) {
        (true, 1) => before,
        (true, 0) => {
            // First use: check the clock once against `/proc`.
            let exact = start_time(pid)?;
            let agrees = window.is_some_and(|(b, a)| (b..=a).contains(&exact));
            BOOT_CLOCK.store(if agrees { 1 } else { 2 }, Ordering::Relaxed);
            Some(exact)
        }
        _ => start_time(pid),
    }
}

/// Whether a leader that started at `now` is the one recorded with `start`.
pub(crate) fn same_start(start: u64, now: u64) -> bool {
    (start..=start.saturating_add(START_SLACK_TICKS)).contains(&now)
}

/// The start time of process `pid` (clock ticks since boot), from `/proc/PID/stat`.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after ')' start at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether any process of group `pgid` still runs (is not a zombie), by a scan
/// of `/proc`.
pub(crate) fn group_runs(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killpg(Pid::from_raw(pgid as i32), None).is_ok();
    };
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let Some(close) = stat.rfind(')') else {
            return false;
        };
        // After ')': state (field 3), ppid, pgrp (field 5).
        let mut fields = stat[close + 1..].split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
        pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
    })
}

/// SIGKILLs group `pgid` if it is still the one recorded with `start`; true if
/// the signal was sent.
pub(crate) fn kill_if_ours(pgid: u32, start: u64) -> bool {
    if pgid <= 1 || pgid > i32::MAX as u32 {
        return false;
    }
    let group = Pid::from_raw(pgid as i32);
    let ours = match start_time(pgid) {
        Some(now) => same_start(start, now),
        None => killpg(group, None).is_ok(),
    };
    ours && killpg(group, Signal::SIGKILL).is_ok()
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
    fn the_boot_clock_brackets_a_spawned_process_start_time() {
        let before = boot_ticks().expect("CLOCK_BOOTTIME");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let after = boot_ticks().unwrap();
        let exact = start_time(child.id()).unwrap();
        assert!(
            (before..=after).contains(&exact),
            "{before} <= {exact} <= {after}: /proc and the boot clock share a base"
        );
        let recorded = spawn_start(child.id(), Some(before)).unwrap();
        assert!(same_start(recorded, exact), "{recorded} vs {exact}");
        // Without a reading before the spawn: /proc's own figure.
        assert_eq!(spawn_start(child.id(), None), Some(exact));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_start_time_matches_only_within_the_slack_after_the_record() {
        assert!(same_start(100, 100));
        assert!(same_start(100, 100 + START_SLACK_TICKS));
        assert!(!same_start(100, 101 + START_SLACK_TICKS), "a later process");
        assert!(!same_start(100, 99), "an earlier process");
    }

    #[test]
    fn lines_round_trip_and_malformed_ones_are_skipped() {
        for line in [
            Line::Started {
                pgid: 12,
                start: 34,
            },
            Line::Ended { pgid: 12 },
            Line::Reset,
        ] {
            let text = line.to_string();
            assert_eq!(Line::parse(text.trim_end()), Some(line), "{text:?}");
        }
        for bad in [
            "", "+", "+12", "+12 x", "+x 1", "+1 2 3", "-", "-x", "garbage", "**",
        ] {
            assert_eq!(Line::parse(bad), None, "{bad:?}");
        }
        let mut live = LiveGroups::default();
        live.apply_text("+12 34\n+x 1\ngarbage\n-99\n+13 5\n-12\n+14\n");
        assert_eq!(live.0, HashMap::from([(13, 5)]));
        live.apply_text("*\n+15 6\n");
        assert_eq!(live.0, HashMap::from([(15, 6)]));
        let mut again = LiveGroups::default();
        again.apply_text(&live.lines());
        assert_eq!(again, live);
    }

    #[test]
    fn init_and_absurd_groups_are_never_killed() {
        assert!(!kill_if_ours(0, 0));
        assert!(!kill_if_ours(1, start_time(1).unwrap_or(0)));
        assert!(!kill_if_ours(u32::MAX, 0));
    }
}
