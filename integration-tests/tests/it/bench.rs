//! `baton bench` end to end: each workload at a small size on the real binary.
//!
//! Checks the contract of the benchmark harness, not speed: exit 0, the last stdout
//! line is one JSON object with every documented field, every child succeeded, and the
//! workload's own promises hold (agent-loss: nothing lost or run twice; mixed: the
//! makespan is not below its lower bound). Each run is killed after 60 s.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::baton_bin;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Fields every workload reports.
const COMMON: &[&str] = &[
    "workload",
    "status",
    "children",
    "succeeded",
    "failed",
    "agents",
    "wall_s",
    "children_per_s",
    "accept_p50_us",
    "accept_p99_us",
    "completion_p99_ms",
    "coordinator_cpu_s",
    "coordinator_rss_mb",
    "store_bytes_per_child",
    "stale_events",
    "dispatches",
];

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `baton bench ARGS`, killed (SIGKILL) after [`RUN_TIMEOUT`].
fn bench(args: &[&str]) -> Run {
    let mut child = Command::new(baton_bin())
        .arg("bench")
        .args(args)
        .env("BATON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start baton bench");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for baton bench") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "baton bench {args:?} did not finish within {RUN_TIMEOUT:?}\n{}",
        run.describe()
    );
    run
}

/// Runs a workload with `--output json`; checks exit 0, the common fields and that
/// all `children` succeeded; returns the JSON object.
fn run_json(workload: &str, agents: u32, children: u64) -> Value {
    run_json_with(workload, agents, children, &[])
}

/// [`run_json`] with more flags.
fn run_json_with(workload: &str, agents: u32, children: u64, extra: &[&str]) -> Value {
    let (a, n) = (agents.to_string(), children.to_string());
    let mut args = vec![
        "--workload",
        workload,
        "--agents",
        &a,
        "--children",
        &n,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    let run = bench(&args);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    let line = run
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no output line\n{}", run.describe()));
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e})\n{}", run.describe()));
    for field in COMMON {
        assert!(v.get(field).is_some(), "missing {field:?} in {v}");
    }
    assert_eq!(v["workload"], workload, "{v}");
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["children"].as_u64(), Some(children), "{v}");
    assert_eq!(v["succeeded"].as_u64(), Some(children), "{v}");
    assert_eq!(v["failed"].as_u64(), Some(0), "{v}");
    assert_eq!(v["agents"].as_u64(), Some(u64::from(agents)), "{v}");
    assert!(v["dispatches"].as_u64() >= Some(children), "{v}");
    v
}

fn num(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field:?} is not a number in {v}"))
}

#[test]
fn bench_noop() {
    run_json("noop", 2, 20);
}

#[test]
fn bench_proc_reports_its_xargs_baseline() {
    let v = run_json("proc", 2, 20);
    assert!(num(&v, "baseline_per_s") > 0.0, "{v}");
    assert!(num(&v, "vs_baseline") > 0.0, "{v}");
}

#[test]
fn bench_mixed_makespan_is_not_below_its_lower_bound() {
    let v = run_json("mixed", 2, 20);
    let (makespan, bound) = (num(&v, "makespan_s"), num(&v, "lower_bound_s"));
    assert!(bound > 0.0, "{v}");
    assert!(
        makespan >= bound,
        "makespan {makespan} < lower bound {bound}: {v}"
    );
}

#[test]
fn bench_agent_loss_loses_and_duplicates_nothing() {
    let v = run_json("agent-loss", 3, 30);
    assert_eq!(v["lost"].as_u64(), Some(0), "{v}");
    assert_eq!(v["duplicated"].as_u64(), Some(0), "{v}");
    assert!(num(&v, "detect_s") > 0.0, "{v}");
    assert!(v["redispatched"].as_u64().is_some(), "{v}");
    assert_eq!(v["agents_lost"].as_u64(), Some(1), "{v}");
}

/// With `--queue`, the jobs queued on the killed agent are lost with it and run
/// again elsewhere: still nothing lost, nothing run twice.
#[test]
fn bench_agent_loss_with_queued_jobs_loses_and_duplicates_nothing() {
    let v = run_json_with("agent-loss", 3, 30, &["--queue", "2"]);
    assert_eq!(v["lost"].as_u64(), Some(0), "{v}");
    assert_eq!(v["duplicated"].as_u64(), Some(0), "{v}");
    assert_eq!(v["agents_lost"].as_u64(), Some(1), "{v}");
}

#[test]
fn bench_rejects_bad_flags_with_a_usage_error() {
    let run = bench(&["--workload", "agent-loss", "--agents", "1"]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(run.stderr.contains("error[USAGE]"), "{}", run.describe());
    let run = bench(&["--workload", "noop", "--children", "0"]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(run.stderr.contains("error[USAGE]"), "{}", run.describe());
}

/// Whether Debian's `etcd` is on PATH (the etcd workloads start a local cluster).
fn have_etcd() -> bool {
    if baton_coordinator::store::etcd::local::etcd_binary().is_some() {
        return true;
    }
    eprintln!("{}", baton_coordinator::store::etcd::local::SKIPPED);
    false
}

#[test]
fn bench_noop_on_a_local_etcd() {
    if !have_etcd() {
        return;
    }
    let v = run_json_with("noop", 2, 300, &["--store", "etcd"]);
    assert_eq!(v["store"], "etcd", "{v}");
    assert_eq!(v["duplicate_events"].as_u64(), Some(0), "{v}");
}

#[test]
fn bench_failover_loses_and_duplicates_nothing() {
    if !have_etcd() {
        return;
    }
    let run = bench(&[
        "--workload",
        "failover",
        "--agents",
        "2",
        "--children",
        "100",
        "--output",
        "json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let line = run
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no output line\n{}", run.describe()));
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e})\n{}", run.describe()));
    assert_eq!(v["workload"], "failover", "{v}");
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["succeeded"].as_u64(), Some(100), "{v}");
    assert_eq!(v["lost"].as_u64(), Some(0), "{v}");
    assert_eq!(v["duplicated"].as_u64(), Some(0), "{v}");
    // The new leader dispatched, after the kill, within the lease and a margin
    // (the target is lease + 2 s; a loaded CI machine gets more room).
    let takeover = num(&v, "takeover_s");
    assert!(takeover > 0.0 && takeover < 15.0, "{v}");
}
