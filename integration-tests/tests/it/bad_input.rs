//! Bad input: wrong packages, wrong parameters, wrong requests and absent peers get
//! precise, stable answers, and no process dies of them.
//!
//! Checks the error half of the CLI contract (exit 2 for invalid input with
//! `error[CODE]` and a `FILE:LINE:COL` location, exit 3 with
//! `error[COORDINATOR_UNAVAILABLE]`), an agent's patience with a dead coordinator
//! (keeps running, warns `COORDINATOR_UNREACHABLE`), and the agent's admission edge:
//! each malformed `StartJob` is answered `Rejected` with the right `RejectCode` and a
//! reason, never a crash.

use std::fs;
use std::path::Path;
use std::time::Duration;

use baton_proto::{DispatchId, RejectCode, StartJobRequest};

use crate::harness::fixtures::{child_toml, sha256_hex};
use crate::harness::grpc::{Answer, answer, start_job, start_job_request};
use crate::harness::{
    AGENT_DEBUG, AgentOpts, Cluster, FanoutSpec, LogMark, dead_port, read_log, wait_until,
};

/// Not TOML: the table header on line 3 is never closed.
const MALFORMED: &str = "name = \"broken\"\n\n[tasks.run\nexec = [\"true\"]\n";

/// True if `text` has `NAME:LINE:COL` (LINE and COL decimal numbers).
fn has_location(text: &str, name: &str) -> bool {
    text.match_indices(&format!("{name}:")).any(|(i, m)| {
        let rest = &text[i + m.len()..];
        let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if line.is_empty() || !rest[line.len()..].starts_with(':') {
            return false;
        }
        rest[line.len() + 1..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn has_location_finds_file_line_col() {
    assert!(has_location(
        "error[PACKAGE_PARSE]: /x/bad.toml:3:1: expected",
        "bad.toml"
    ));
    assert!(!has_location(
        "error[PACKAGE_PARSE]: bad.toml: expected",
        "bad.toml"
    ));
    assert!(!has_location("bad.toml:3: expected", "bad.toml"));
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    fs::create_dir_all(dir).expect("create dir");
    let p = dir.join(name);
    fs::write(&p, text).expect("write package");
    p.display().to_string()
}

#[test]
fn malformed_package_is_rejected_with_its_location() {
    let mut c = Cluster::new("bad_package");
    c.start_coordinator();
    let bad = write(&c.root().join("packages"), "bad.toml", MALFORMED);

    for args in [vec!["validate", bad.as_str()], vec!["run", bad.as_str()]] {
        let out = c.cli(&args);
        out.expect_code(2);
        assert!(
            out.stderr.contains("error[PACKAGE_PARSE]"),
            "no error[PACKAGE_PARSE] on stderr\n{}",
            out.describe()
        );
        assert!(
            has_location(&out.stderr, "bad.toml"),
            "no bad.toml:LINE:COL location on stderr\n{}",
            out.describe()
        );
    }
    c.finish(&[]);
}

#[test]
fn unknown_parameter_is_rejected() {
    let mut c = Cluster::new("bad_param");
    c.start_coordinator();
    c.start_agent("a1", 2);
    let parent = c.write_fanout("fanout", &FanoutSpec::new(2, "true"));
    let pkg = parent.display().to_string();
    let out = c.cli(&["run", &pkg, "-p", "nope=1"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[PARAM_UNKNOWN]"),
        "no error[PARAM_UNKNOWN] on stderr\n{}",
        out.describe()
    );
    c.finish(&[]);
}

#[test]
fn run_against_dead_coordinator_exits_3() {
    let c = Cluster::new("dead_coordinator_run");
    let parent = c.write_fanout("fanout", &FanoutSpec::new(2, "true"));
    let pkg = parent.display().to_string();
    let url = format!("https://127.0.0.1:{}", dead_port());
    let out = c.cli_at(&url, &["run", &pkg], Duration::from_secs(30));
    out.expect_code(3);
    assert!(
        out.stderr.contains("error[COORDINATOR_UNAVAILABLE]"),
        "no error[COORDINATOR_UNAVAILABLE] on stderr\n{}",
        out.describe()
    );
    c.finish(&[]);
}

/// Failed reconnections a lonely agent must live through.
const RETRIES: usize = 4;

#[test]
fn agent_outlives_a_dead_coordinator() {
    let mut c = Cluster::new("dead_coordinator_agent");
    let url = format!("https://127.0.0.1:{}", dead_port());
    // (Its reporter logs each retry that fails again at debug.)
    let mut opts = AgentOpts::new("lonely", 2).log_targets(AGENT_DEBUG);
    opts.coordinator_url = Some(url);
    opts.wait_announce = false;
    c.start_agent_with(opts);
    let stderr = c.agent("lonely").stderr_path();

    let warned = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        read_log(&stderr).contains("COORDINATOR_UNREACHABLE")
    });
    assert!(
        warned,
        "agent logged no COORDINATOR_UNREACHABLE within 15 s:\n{}",
        read_log(&stderr)
    );
    let log = read_log(&stderr);
    let line = log
        .lines()
        .find(|l| l.contains("COORDINATOR_UNREACHABLE"))
        .expect("line found above");
    assert!(
        line.contains(" WARN "),
        "COORDINATOR_UNREACHABLE is not logged at WARN: {line}"
    );
    // Alive through RETRIES more failed attempts (with the backoff, about 2 to
    // 4 s), checked all along (an exit fails at once).
    let log = LogMark::at_start("lonely", &stderr);
    let retried = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let agent = c.agent("lonely");
        assert!(
            agent.is_running(),
            "agent exited ({:?}) while its coordinator was down:\n{}",
            agent.try_exit_status(),
            read_log(&stderr)
        );
        log.count(&["coordinator still unreachable"]) >= RETRIES
    });
    assert!(
        retried,
        "fewer than {RETRIES} retries logged within 20 s:\n{}",
        read_log(&stderr)
    );
    assert!(
        c.agent("lonely").is_running(),
        "agent exited after {RETRIES} retries"
    );
    c.finish(&[]);
}

/// One malformed request and the rejection it must get.
struct Case {
    what: &'static str,
    req: StartJobRequest,
    code: RejectCode,
}

fn bad_requests() -> Vec<Case> {
    let pkg = child_toml("true");
    let base = |n: &str| start_job_request(&format!("it-bad-{n}"), &pkg);
    let mut cases = Vec::new();

    let mut req = base("no-dispatch-id");
    req.dispatch_id = None;
    cases.push(Case {
        what: "no dispatch_id",
        req,
        code: RejectCode::InvalidRequest,
    });

    let mut req = base("empty-execution-id");
    req.dispatch_id = Some(DispatchId {
        execution_id: String::new(),
        task_path: "fan".to_owned(),
        item_index: 0,
        attempt: 1,
    });
    cases.push(Case {
        what: "empty execution_id",
        req,
        code: RejectCode::InvalidRequest,
    });

    let mut req = base("attempt-0");
    if let Some(d) = req.dispatch_id.as_mut() {
        d.attempt = 0;
    }
    cases.push(Case {
        what: "attempt 0",
        req,
        code: RejectCode::InvalidRequest,
    });

    let mut req = base("no-package");
    req.package = None;
    cases.push(Case {
        what: "no package",
        req,
        code: RejectCode::InvalidRequest,
    });

    let mut req = base("hash-mismatch");
    if let Some(p) = req.package.as_mut() {
        p.content_hash = sha256_hex(b"some other content");
    }
    cases.push(Case {
        what: "content_hash mismatch",
        req,
        code: RejectCode::UnknownPackage,
    });

    let garbage = "this is [[[ not = = a package";
    let mut req = base("garbage-content");
    if let Some(p) = req.package.as_mut() {
        p.content = garbage.as_bytes().to_vec();
        p.content_hash = sha256_hex(garbage.as_bytes());
    }
    cases.push(Case {
        what: "garbage content, right hash",
        req,
        code: RejectCode::InvalidRequest,
    });
    cases
}

#[test]
fn agent_rejects_malformed_start_job_requests() {
    let mut c = Cluster::new("bad_start_job");
    c.start_coordinator();
    let addr = c.start_agent("a1", 2);
    c.agents_ready(1);

    let mut failures = Vec::new();
    for case in bad_requests() {
        match start_job(&c.agent_tls("a1"), addr, case.req).map(|r| answer(&r)) {
            Ok(Answer::Rejected { code, reason }) if code == case.code => {
                if reason.trim().is_empty() {
                    failures.push(format!(
                        "{}: Rejected({code:?}) with an empty reason",
                        case.what
                    ));
                }
            }
            other => failures.push(format!(
                "{}: expected Rejected({:?}), got {other:?}",
                case.what, case.code
            )),
        }
    }
    let agent_alive = c.agent("a1").is_running();
    let coordinator_alive = c.coordinator().is_running();
    assert!(agent_alive, "the agent died of malformed StartJob requests");
    assert!(
        coordinator_alive,
        "the coordinator died while its agent got malformed requests"
    );
    assert!(
        failures.is_empty(),
        "malformed StartJob requests answered wrongly:\n{}",
        failures.join("\n")
    );
    c.agents_ready(1);
    c.finish(&[]);
}
