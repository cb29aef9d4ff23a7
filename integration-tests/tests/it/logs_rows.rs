//! Watching and stopping one child: `baton exec logs` (streamed from the agent
//! through the coordinator, `-f` while the child runs), `baton exec rows` in each
//! format, and `baton exec cancel --child` (that child's whole process group ends
//! after the grace, checked by pid; its siblings keep running).

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::killpg;
use nix::unistd::Pid;

use crate::harness::{AgentOpts, Cluster, FanoutSpec, wait_until};

/// Whether any process of the group `pgid` is alive (as the agent would see it).
fn group_alive(pgid: u64) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

fn proc_exists(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (20 s) until child `index` runs with a pid; returns the pid.
fn running_pid(c: &Cluster, id: &str, index: u64) -> u64 {
    let mut pid = 0;
    let ok = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let v = c.exec_show(id);
        pid = v
            .children
            .iter()
            .find(|ch| ch.index == index && ch.state == "running")
            .map_or(0, |ch| ch.pid);
        pid > 0
    });
    assert!(ok, "child {index} of {id} never ran with a pid");
    pid
}

#[test]
fn logs_follow_a_running_child_and_end_when_it_ends() {
    let mut c = Cluster::new("logs_follow");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.agents_ready(1);
    let spec = FanoutSpec::new(
        1,
        "echo to-stderr >&2; i=1; while [ $i -le 15 ]; do echo line $i; i=$((i+1)); sleep 0.2; done",
    );
    let parent = c.write_fanout("follow", &spec);
    let id = c.start_run(&parent, &[]);
    running_pid(&c, &id, 0);

    // `exec logs -f` as a user runs it, its stdout read line by line as it comes.
    let mut follow = c.spawn_cli(&["exec", "logs", &id, "--child", "fan[0]", "-f", "--stdout"]);
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });

    let (_, first) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a first line while the child runs");
    assert!(first.starts_with("line "), "{first:?}");
    let state = c.exec_show(&id).children[0].state.clone();
    assert_eq!(
        state, "running",
        "the first line must arrive before the child ends"
    );

    // It ends by itself once the child has ended, with every line in order.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = follow.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            panic!("exec logs -f did not end after the child ended");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = follow.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(
        status.success(),
        "exec logs -f failed: {status:?}\n{stderr}"
    );
    let mut lines = vec![first];
    lines.extend(rx.try_iter().map(|(_, l)| l));
    let want: Vec<String> = (1..=15).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want, "every line, in order");
    let v = c.wait_exec_terminal(&id, Duration::from_secs(10));
    assert_eq!(v.status, "succeeded");
    let c0 = &v.children[0];
    assert!(
        c0.finished_unix_ms > 0,
        "the child's end is recorded: {c0:?}"
    );

    // After the end: both logs by default (its stderr on ours), or one.
    let both = c.cli(&["exec", "logs", &id, "--child", "fan[0]"]);
    both.expect_code(0);
    assert!(both.stdout.starts_with("line 1\n") && both.stdout.ends_with("line 15\n"));
    assert!(both.stderr.contains("to-stderr"), "{}", both.describe());
    let err_only = c.cli(&["exec", "logs", &id, "--child", "fan/0", "--stderr"]);
    err_only.expect_code(0);
    assert_eq!(err_only.stdout, "");
    assert_eq!(err_only.stderr.trim(), "to-stderr");
    let json = c.cli(&[
        "exec", "logs", &id, "--child", "fan", "--stdout", "--output", "json",
    ]);
    json.expect_code(0);
    let chunk = json.json();
    assert_eq!(chunk["stream"], "stdout", "{}", json.describe());

    // A child that does not exist: a stable code and the children it has.
    let none = c.cli(&["exec", "logs", &id, "--child", "fan[9]"]);
    none.expect_code(2);
    assert!(
        none.stderr.contains("error[CHILD_NOT_FOUND]") && none.stderr.contains("fan[0]"),
        "{}",
        none.describe()
    );
    c.finish(&[]);
}

#[test]
fn rows_in_json_csv_and_table() {
    let mut c = Cluster::new("rows_formats");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.agents_ready(1);
    // Shard 1 writes two rows and succeeds; shard 2 writes rows and fails.
    let spec = FanoutSpec::new(
        2,
        r#"printf '%s\n' '{"id":1,"name":"a,b"}' '' '{"id":2,"extra":true,"name":null}' > "$BATON_ROWS"; [ "$BATON_PARAM_SHARD" = 1 ]"#,
    );
    let parent = c.write_fanout("rows", &spec);
    let id = c.start_run(&parent, &[]);
    let v = c.wait_exec_terminal(&id, Duration::from_secs(30));
    assert_eq!(v.status, "failed", "{}", v.brief());

    let json = c.cli(&["exec", "rows", &id, "--child", "fan[0]", "-o", "json"]);
    json.expect_code(0);
    assert_eq!(
        json.stdout, "{\"id\":1,\"name\":\"a,b\"}\n{\"id\":2,\"extra\":true,\"name\":null}\n",
        "rows as written, blank lines dropped"
    );

    let csv = c.cli(&["exec", "rows", &id, "--child", "fan[0]", "--format", "csv"]);
    csv.expect_code(0);
    assert_eq!(csv.stdout, "id,name,extra\n1,\"a,b\",\n2,,true\n");

    let table = c.cli(&["exec", "rows", &id, "--child", "fan[0]"]);
    table.expect_code(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(
        lines,
        ["id  name  extra", "1   a,b", "2         true", "(2 rows)"],
        "{}",
        table.describe()
    );

    // The child that failed kept no rows: a stable code, and what to do.
    let failed = c.cli(&["exec", "rows", &id, "--child", "fan[1]"]);
    failed.expect_code(2);
    assert!(
        failed.stderr.contains("error[ROWS_UNAVAILABLE]") && failed.stderr.contains("hint:"),
        "{}",
        failed.describe()
    );
    c.finish(&[]);
}

#[test]
fn cancel_one_child_ends_its_process_group_and_spares_the_others() {
    const GRACE_MS: u64 = 2_000;
    let mut c = Cluster::new("cancel_child");
    c.start_coordinator();
    for name in ["a1", "a2"] {
        let mut opts = AgentOpts::new(name, 2);
        opts.extra_args = vec!["--kill-grace-ms".into(), GRACE_MS.to_string()];
        c.start_agent_with(opts);
    }
    c.agents_ready(2);
    // The shell and its `sleep` ignore SIGTERM: only the SIGKILL after the grace ends them.
    let spec = FanoutSpec::new(5, "trap '' TERM; sleep 300 & wait").parallelism(4);
    let parent = c.write_fanout("cancel_child", &spec);
    let id = c.start_run(&parent, &[]);
    let pids: Vec<u64> = (0..4).map(|i| running_pid(&c, &id, i)).collect();
    assert!(pids.iter().all(|p| group_alive(*p) && proc_exists(*p)));

    // A pending child ends at once and never starts.
    let pending = c.cli(&[
        "exec", "cancel", &id, "--child", "fan[4]", "--output", "json",
    ]);
    pending.expect_code(0);
    assert_eq!(
        pending.json()["status"],
        "cancelled",
        "{}",
        pending.describe()
    );

    // A running child: SIGTERM (ignored), the grace, then SIGKILL on its group.
    let victim = pids[1];
    let victim_agent = c.exec_show(&id).children[1].agent.clone();
    let agent_log = c.log_mark(&victim_agent);
    let asked = Instant::now();
    let out = c.cli(&[
        "exec", "cancel", &id, "--child", "fan[1]", "--reason", "test", "--output", "json",
    ]);
    out.expect_code(0);
    assert_eq!(out.json()["status"], "cancelling", "{}", out.describe());
    // The agent took the cancel: SIGTERM (ignored), then the grace.
    agent_log.wait_for(&["job cancel requested"], Duration::from_secs(10));
    assert!(
        group_alive(victim),
        "the group went at once although it ignores SIGTERM"
    );
    let gone = wait_until(
        Duration::from_millis(GRACE_MS + 3_000),
        Duration::from_millis(20),
        || !group_alive(victim) && !proc_exists(victim),
    );
    let gone_after = asked.elapsed();
    assert!(
        gone,
        "process group {victim} still alive {gone_after:?} after the cancel"
    );
    // The SIGTERM came after `asked`, the SIGKILL a whole grace after it.
    assert!(
        gone_after >= Duration::from_millis(GRACE_MS),
        "the group went {gone_after:?} after the cancel, before the {GRACE_MS} ms grace, \
         although it ignores SIGTERM"
    );
    let waited = c.cli(&[
        "exec", "cancel", &id, "--child", "fan[1]", "--wait", "--output", "json",
    ]);
    waited.expect_code(0);
    assert_eq!(waited.json()["status"], "cancelled");

    // The others run on, and the execution with them.
    for (i, p) in pids.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert!(
            group_alive(*p) && proc_exists(*p),
            "child {i} (pid {p}) was touched"
        );
    }
    let v = c.exec_show(&id);
    assert_eq!(v.status, "running");
    let states: Vec<&str> = v.children.iter().map(|ch| ch.state.as_str()).collect();
    assert_eq!(
        states,
        ["running", "cancelled", "running", "running", "cancelled"]
    );
    let c1 = &v.raw["children"][1];
    assert_eq!(c1["child"], "fan[1]");
    assert_eq!(c1["reason"], "cancelled: test");
    assert_eq!(c1["attempt"], 1, "a cancelled child is not retried");

    // Clean up: the whole execution.
    let all = c.cli_at(
        &c.coordinator_url(),
        &["exec", "cancel", &id, "--wait", "--output", "json"],
        Duration::from_secs(30),
    );
    all.expect_code(0);
    assert_eq!(all.json()["status"], "cancelled");
    let all_gone = wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
        pids.iter().all(|p| !group_alive(*p))
    });
    assert!(all_gone, "process groups left after the execution's cancel");
    c.finish(&[]);
}
