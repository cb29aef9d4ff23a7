//! CPU time and CPU affinity of the processes `baton bench` starts.
//!
//! CPU time is read from `/proc/PID/stat` (user + system, in clock ticks, which
//! Linux fixes at 100 a second for user space), so that the bench can say what a
//! child costs each daemon. Affinity goes through `taskset` (util-linux): the
//! workspace forbids `unsafe`, so a process cannot be pinned between fork and exec
//! by the bench itself; `taskset -c LIST PROGRAM` sets the mask and execs the
//! program (same pid), and `taskset -a -p -c LIST PID` pins every thread of a
//! running process (threads made later inherit the mask of the thread that makes
//! them).

use std::collections::BTreeMap;
use std::process::Command;

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, fixed at 100 on Linux).
pub const TICKS_PER_S: f64 = 100.0;

/// The fields of `/proc/PID/stat` after `(comm)`, which may itself hold spaces.
pub(crate) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User + system CPU ticks of process `pid` (its own threads, not its reaped
/// children); `None` when it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // `rest` starts at field 3 (state): utime and stime are fields 14 and 15.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(tick(11)? + tick(12)?)
}

/// The processes whose parent is `pid` (a scan of `/proc`; for the few
/// readings a bench run makes, not for a hot path).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            // Field 4 (ppid) is the second after `(comm)`.
            stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// CPU ticks of each process of a tree: `roots` and their direct children (an
/// agent and its watchdog process), keyed by pid.
pub fn tree_ticks(roots: &[u32]) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for &root in roots {
        for pid in std::iter::once(root).chain(children_of(root)) {
            if let Some(t) = cpu_ticks(pid) {
                out.insert(pid, t);
            }
        }
    }
    out
}

/// CPU seconds spent between two [`tree_ticks`] readings by the processes present
/// in both (a process killed in between is left out).
pub fn spent_s(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .filter_map(|(pid, a)| Some(a.saturating_sub(*before.get(pid)?)))
        .sum();
    ticks as f64 / TICKS_PER_S
}

/// Whether `list` is a CPU list as `taskset -c` takes it: numbers and ranges
/// separated by commas (`0`, `1-3`, `0,2`).
pub fn valid_cpu_list(list: &str) -> bool {
    !list.is_empty()
        && list.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            let num =
                |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.parse::<u16>().is_ok());
            match (ends.next(), ends.next()) {
                (a, None) => num(a),
                (a, Some(b)) => num(a) && num(Some(b)),
            }
        })
}

/// The CPUs this process may run on now (`Cpus_allowed_list` of
/// `/proc/self/status`), e.g. `0-1`.
pub fn allowed_cpus() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// Pins every thread of the running process `pid` to `cpus`.
pub fn pin_process(pid: u32, cpus: &str) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| format!("cannot run taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset -a -p -c {cpus} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A command that runs `program` on `cpus` only (`taskset -c CPUS PROGRAM`), or
/// `program` itself when `cpus` is `None`.
pub fn command_on(cpus: Option<&str>, program: &std::ffi::OsStr) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_checked_before_taskset_sees_them() {
        for ok in ["0", "1", "0-1", "0,2", "0-3,6", "12"] {
            assert!(valid_cpu_list(ok), "{ok}");
        }
        for bad in ["", "a", "0-", "-1", "0,,1", "0-1-2", "1 2", "0;1"] {
            assert!(!valid_cpu_list(bad), "{bad}");
        }
    }

    #[test]
    fn this_process_has_cpu_ticks_and_a_cpu_list() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(cpu_ticks(u32::MAX).is_none(), "no such process");
        let list = allowed_cpus().expect("Cpus_allowed_list");
        assert!(valid_cpu_list(&list), "{list}");
    }

    #[test]
    fn a_tree_reading_counts_children_and_leaves_out_the_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        assert!(children_of(me).contains(&child.id()));
        let before = tree_ticks(&[me]);
        assert!(before.contains_key(&me) && before.contains_key(&child.id()));
        let mut after = before.clone();
        *after.get_mut(&me).unwrap() += 150;
        after.remove(&child.id());
        after.insert(u32::MAX, 1_000); // a process that was not there before
        assert_eq!(spent_s(&before, &after), 1.5);
        let _ = child.kill();
        let _ = child.wait();
    }
}
