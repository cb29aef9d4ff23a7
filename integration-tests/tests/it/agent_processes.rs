//! No process outlives its agent (issue 14, item 9), checked by pid.
//!
//! Each child's first attempt runs a script that starts `sleep` grandchildren
//! (one directly, one under a nested shell) and writes every pid of its process
//! group to a file, then waits; later attempts only note that they ran. When
//! the agent is SIGKILLed, its watchdog process must end every one of those
//! pids within a bound, and the coordinator must re-run each child elsewhere
//! exactly once. When the watchdog dies with the agent, the agent's next boot
//! must end them before it registers.

use std::path::Path;
use std::time::Duration;

use crate::harness::{Cluster, FanoutSpec, fixtures::file_lines, read_log, wait_until};

const CHILDREN: usize = 2;
/// Pids each first attempt writes: the shell, its `sleep`, the nested shell, its `sleep`.
const PIDS_PER_CHILD: usize = 4;
/// Within this, killed processes must be gone.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// The child's command: `pids` gets the pids of the first attempt's group,
/// `reruns` the shard of every later attempt.
fn child_cmd(pids: &Path, reruns: &Path) -> String {
    let (pids, reruns) = (pids.display(), reruns.display());
    format!(
        "if [ \"$BATON_ATTEMPT\" -gt 1 ]; then echo \"$BATON_PARAM_SHARD\" >> {reruns}; exit 0; fi\n\
         sleep 300 & echo $! >> {pids}\n\
         sh -c 'sleep 300 & echo $! >> {pids}; wait' & echo $! >> {pids}\n\
         echo $$ >> {pids}\n\
         wait"
    )
}

/// Whether process `pid` exists and is not a zombie.
fn runs(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

/// Waits until the file holds `n` pids; returns them.
fn wait_pids(path: &Path, n: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        pids = file_lines(path)
            .iter()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        pids.len() >= n
    });
    assert!(ok, "the children wrote {pids:?}, not {n} pids");
    pids
}

/// The pid in the agent's `process watchdog started pid=N` log line (the last one).
fn watchdog_pid(stderr: &Path) -> Option<u32> {
    let text = read_log(stderr);
    text.lines()
        .rev()
        .filter(|l| l.contains("process watchdog started"))
        .filter_map(|l| l.split("pid=").nth(1))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[test]
fn a_killed_agent_takes_its_job_processes_with_it() {
    let mut c = Cluster::new("agent_procs_watchdog");
    c.start_coordinator();
    c.start_agent("a1", CHILDREN as u32);
    c.agents_ready(1);
    let (pids_file, reruns) = (c.root().join("pids"), c.root().join("reruns"));
    let spec = FanoutSpec::new(CHILDREN as u32, &child_cmd(&pids_file, &reruns))
        .parallelism(CHILDREN as u32);
    let parent = c.write_fanout("procs", &spec);
    let id = c.start_run(&parent, &[]);
    let pids = wait_pids(&pids_file, CHILDREN * PIDS_PER_CHILD);
    assert!(pids.iter().all(|p| runs(*p)), "{pids:?}");

    // Somewhere for the re-runs to go, then the kill.
    c.start_agent("a2", CHILDREN as u32);
    c.agents_ready(2);
    let stderr = c.agent("a1").stderr_path();
    let watchdog = watchdog_pid(&stderr);
    c.agent("a1").kill9();
    c.note(&format!(
        "killed a1; its jobs' pids {pids:?}, watchdog {watchdog:?}"
    ));

    let gone = wait_until(GONE_WITHIN, Duration::from_millis(20), || {
        pids.iter().all(|p| !runs(*p))
    });
    let left: Vec<_> = pids.iter().filter(|p| runs(**p)).copied().collect();
    for p in &left {
        // Do not leave them to the next test run.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        gone,
        "still running {GONE_WITHIN:?} after the agent's death: {left:?}"
    );
    let watchdog = watchdog.expect("the agent logged no watchdog pid");
    assert!(
        wait_until(GONE_WITHIN, Duration::from_millis(20), || !runs(watchdog)),
        "the watchdog {watchdog} outlived its work"
    );
    assert!(
        read_log(&stderr).contains("the watchdog ended their process groups"),
        "no watchdog report in a1's log"
    );

    let end = c.wait_exec_terminal(&id, Duration::from_secs(45));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    end.assert_all_succeeded_once(CHILDREN, &["a2"]);
    for ch in &end.children {
        assert_eq!(ch.attempt, 2, "{ch:?}");
        assert_eq!(ch.attempt_agents, ["a1", "a2"], "{ch:?}");
    }
    let mut rerun = file_lines(&reruns);
    rerun.sort();
    assert_eq!(rerun, ["1", "2"], "each child re-ran exactly once");
    c.finish(&[]);
}

/// When the watchdog dies too (killed with the agent, say by an OOM killer),
/// the orphans live on; the agent, restarted on the same data dir, ends them
/// from its journal before it registers, so the re-runs never race the old
/// attempts on that machine.
#[test]
fn a_restarted_agent_ends_the_orphans_of_its_earlier_boot_before_registering() {
    let mut c = Cluster::new("agent_procs_orphans");
    c.start_coordinator();
    c.start_agent("a1", CHILDREN as u32);
    c.agents_ready(1);
    let (pids_file, reruns) = (c.root().join("pids"), c.root().join("reruns"));
    let spec = FanoutSpec::new(CHILDREN as u32, &child_cmd(&pids_file, &reruns))
        .parallelism(CHILDREN as u32);
    let parent = c.write_fanout("orphans", &spec);
    let id = c.start_run(&parent, &[]);
    let pids = wait_pids(&pids_file, CHILDREN * PIDS_PER_CHILD);

    let stderr = c.agent("a1").stderr_path();
    let watchdog = watchdog_pid(&stderr).expect("the agent logged no watchdog pid");
    let since_watchdog_kill = c.log_mark("a1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watchdog as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the watchdog");
    assert!(
        wait_until(GONE_WITHIN, Duration::from_millis(20), || !runs(watchdog)),
        "watchdog {watchdog} survived SIGKILL"
    );
    // `kill9` returns once the agent is reaped. Nothing else could end the
    // orphans — unless the agent started a new watchdog in between (it does at
    // its next write to a dead one), which would make this case the other test.
    c.agent("a1").kill9();
    let respawned = since_watchdog_kill.matching(&["started a new one"]);
    assert!(
        respawned.is_empty(),
        "the agent replaced its watchdog before it died: {respawned:?}"
    );
    assert!(
        pids.iter().all(|p| runs(*p)),
        "with the watchdog dead too, the orphans should outlive the agent"
    );

    let before = read_log(&stderr).len();
    c.agent("a1").restart();
    let gone = wait_until(GONE_WITHIN, Duration::from_millis(20), || {
        pids.iter().all(|p| !runs(*p))
    });
    assert!(
        gone,
        "orphans {pids:?} still alive after the agent restarted"
    );
    // The second boot ended them before it registered.
    let mut boot = String::new();
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            boot = read_log(&stderr)[before..].to_owned();
            boot.contains("registered with coordinator")
        }),
        "the restarted agent never registered"
    );
    let ended = boot
        .find("ended process groups left running by an earlier boot")
        .unwrap_or_else(|| panic!("no report of ended groups:\n{boot}"));
    assert!(
        ended < boot.find("registered with coordinator").unwrap(),
        "registered before ending the orphans:\n{boot}"
    );
    assert!(
        boot.contains(&format!("groups={CHILDREN}")),
        "not {CHILDREN} groups ended:\n{boot}"
    );

    let end = c.wait_exec_terminal(&id, Duration::from_secs(45));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    c.finish(&[]);
}
