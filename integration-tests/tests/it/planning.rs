//! Planning a big package: one package has at most 10,000 tasks (refused
//! with `TOO_MANY_TASKS` by `baton validate`, `baton run` and the
//! coordinator itself), and planning one at that limit does not hold up
//! another user's small run (issue 16, finding 2: a 10,000-task plan used to
//! keep the scheduler's loop for minutes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_proto as pb;

use crate::harness::{AgentOpts, Cluster, FanoutSpec, read_log, wait_until};

/// A package of `n` independent noop tasks, written under the cluster.
fn noop_package(c: &Cluster, n: usize) -> (PathBuf, String) {
    let mut text = String::from("name = \"big\"\n");
    for i in 0..n {
        let _ = write!(text, "[tasks.t{i:05}]\nnoop = true\n");
    }
    let dir = c.root().join("packages").join(format!("big{n}"));
    std::fs::create_dir_all(&dir).expect("create package dir");
    let path = dir.join("big.toml");
    std::fs::write(&path, &text).expect("write package");
    (path, text)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_package_over_the_task_limit_is_refused_with_its_code() {
    let mut c = Cluster::new("too_many_tasks");
    c.start_coordinator();
    let (path, text) = noop_package(&c, 10_001);
    let pkg = path_str(&path);

    let v = c.cli_raw(&["validate", &pkg]);
    v.expect_code(2);
    for expected in ["error[TOO_MANY_TASKS]", "10001 tasks", "the limit is 10000"] {
        assert!(
            v.stderr.contains(expected),
            "{expected:?}\n{}",
            v.describe()
        );
    }
    let run = c.cli(&["run", &pkg, "--wait"]);
    run.expect_code(2);
    assert!(run.stderr.contains("TOO_MANY_TASKS"), "{}", run.describe());

    // The coordinator refuses it too, for a client that does not check first.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ch = crate::rpc_matrix::channel(
        &rt,
        c.coordinator().addr(),
        &c.ca_dir().join("admin"),
        "coordinator.baton",
    )
    .expect("admin connects");
    let mut client = pb::control_service_client::ControlServiceClient::new(ch);
    let status = rt
        .block_on(client.start_execution(pb::StartExecutionRequest {
            bundle: Some(pb::PackageBundle {
                root: "big.toml".into(),
                files: [("big.toml".to_string(), text)].into(),
            }),
            ..Default::default()
        }))
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let code = status
        .metadata()
        .get("baton-code")
        .and_then(|v| v.to_str().ok());
    assert_eq!(code, Some("TOO_MANY_TASKS"), "{status:?}");
    assert!(status.message().contains("10000"), "{status:?}");
    c.finish(&[]);
}

#[test]
fn a_large_plan_does_not_block_another_users_small_run() {
    let mut c = Cluster::new("large_plan");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.agents_ready(1);
    let small = c.write_fanout("small", &FanoutSpec::new(2, "true"));
    let (big, _) = noop_package(&c, 10_000);

    let mut big_run = c.spawn_cli(&["run", &path_str(&big), "--wait"]);
    // Once the coordinator has the big execution, a small run starts.
    let log = c.coordinator().stderr_path();
    let started = wait_until(Duration::from_secs(120), Duration::from_millis(50), || {
        read_log(&log)
            .lines()
            .any(|l| l.contains("execution started") && l.contains("package=big"))
    });
    assert!(started, "the big execution never started");
    let t0 = Instant::now();
    let out = c.cli(&["run", &path_str(&small), "--wait"]);
    let took = t0.elapsed();
    c.note(&format!(
        "the small run took {took:?} beside the 10,000-task one"
    ));
    out.expect_code(0);
    assert!(
        took < Duration::from_secs(30),
        "a 2-child run took {took:?} beside a 10,000-task plan"
    );

    // The big run succeeds too.
    let done = wait_until(Duration::from_secs(120), Duration::from_millis(100), || {
        big_run.try_wait().ok().flatten().is_some()
    });
    if !done {
        let _ = big_run.kill();
    }
    let status = big_run.wait().expect("wait for the big run");
    assert!(done && status.success(), "the big run: {status:?}");
    c.finish(&[]);
}

#[test]
fn a_package_over_the_size_limit_is_refused_as_too_large() {
    let mut c = Cluster::new("package_too_large");
    c.start_coordinator();
    // 33 MiB: past the coordinator's message limit too, which used to break
    // the connection (`COORDINATOR_UNAVAILABLE … use https://`, exit 3).
    let dir = c.root().join("packages").join("huge");
    std::fs::create_dir_all(&dir).expect("create dir");
    let path = dir.join("huge.toml");
    let mut text = String::from("name = \"huge\"\n[tasks.a]\nnoop = true\n");
    text.push_str(&"#".repeat(33 << 20));
    std::fs::write(&path, &text).expect("write package");
    let out = c.cli(&["run", &path_str(&path), "--wait"]);
    out.expect_code(2);
    for expected in [
        "error[PACKAGE_TOO_LARGE]",
        &format!("{} bytes", text.len()),
        "at most 16777216 bytes (16 MiB)",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?}\n{}",
            out.describe()
        );
    }
    c.finish(&[]);
}

#[test]
fn a_child_pinned_to_an_agent_whose_address_serves_another_fails_with_the_reason() {
    let mut c = Cluster::new("wrong_address");
    c.start_coordinator();
    let a1 = c.start_agent("a1", 2);
    // a2 registers a1's address: dispatches for a2 reach a1, whose
    // certificate is not a2's.
    let mut opts = AgentOpts::new("a2", 2);
    opts.extra_args = vec!["--advertise".into(), a1.to_string()];
    c.start_agent_with(opts).expect("a2 announced");
    c.agents_ready(2);
    let parent = c.write_fanout("pinned", &FanoutSpec::new(1, "true"));
    let t0 = Instant::now();
    let out = c.cli_at(
        &c.coordinator_url(),
        &[
            "run",
            &path_str(&parent),
            "--pin",
            "a2",
            "--wait",
            "--output",
            "json",
        ],
        Duration::from_secs(60),
    );
    c.note(&format!("--wait returned after {:?}", t0.elapsed()));
    out.expect_code(1);
    let id = out.json()["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let view = c.exec_show(&id);
    let reason = crate::harness::exec::str_at(&view.raw, "/children/0/reason").to_owned();
    assert_eq!(view.children[0].state, "failed", "{:#}", view.raw);
    for expected in ["a2's registered address", "served by another agent"] {
        assert!(reason.contains(expected), "{expected:?}: {reason}");
    }
    // Not pinned, the child runs on a1 (a2 is passed over).
    let out = c.cli(&["run", &path_str(&parent), "--wait"]);
    out.expect_code(0);
    c.finish(&["served by another agent"]);
}
