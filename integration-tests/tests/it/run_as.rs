//! Run-as: a child package with `run_as = "USER"` runs as that OS user on an agent
//! allowed to use it (`--allow-run-as USER[:FOLDER]`), and is refused
//! (`REJECT_CODE_RUN_AS_DENIED`) by an agent that is not.
//!
//! The first test runs a child that writes `id -u` to `$BATON_OUTPUT` on an agent
//! allowed `nobody` and reads the uid back from `exec show`. The second starts the
//! same child where the only agent may use `nobody` for another folder only: the
//! coordinator treats the refusal as "this agent cannot take it", finds no other
//! agent, and fails the child at once ("refused by every ready agent"); the child's
//! command never runs, as `nobody` or as anyone.
//!
//! Both need the agent to run as root (it must switch users); they print why and
//! return when the test process is not root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::exec::str_at;
use crate::harness::fixtures::{child_toml, parent_toml};
use crate::harness::{AgentOpts, Cluster, FanoutSpec};

const USER: &str = "nobody";

/// `nobody`'s uid from the user database, or `None` (with the reason printed) when
/// these tests cannot run here.
fn nobody_uid(test: &str) -> Option<u32> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "[{test}] skipped: the agent must run as root to switch users, and this test process is not root"
        );
        return None;
    }
    let out = std::process::Command::new("id")
        .args(["-u", USER])
        .output()
        .ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    if uid.is_none() || uid == Some(0) {
        eprintln!("[{test}] skipped: no unprivileged user {USER:?} on this host");
        return None;
    }
    uid
}

/// A one-child fan-out whose child runs `sh -c CMD` as `nobody`.
fn write_run_as_packages(dir: &Path, cmd: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create package dir");
    let child = child_toml(cmd).replacen(
        "name = \"work\"\n",
        &format!("name = \"work\"\nrun_as = \"{USER}\"\n"),
        1,
    );
    assert!(child.contains("run_as"), "{child}");
    std::fs::write(dir.join("child.toml"), child).expect("write child.toml");
    let parent = dir.join("parent.toml");
    std::fs::write(&parent, parent_toml(&FanoutSpec::new(1, cmd))).expect("write parent.toml");
    parent
}

/// Starts a coordinator and one agent `a1` with `extra` agent arguments.
fn cluster(test: &str, extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(test);
    // The temp dir is 0700: the run-as user must be able to pass through the agent's
    // data directory to its job directory (see docs/security.md).
    std::fs::set_permissions(c.root(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod cluster dir");
    c.start_coordinator();
    let mut opts = AgentOpts::new("a1", 2);
    opts.extra_args = extra.iter().map(|s| (*s).to_owned()).collect();
    c.start_agent_with(opts).expect("agent announced");
    c.agents_ready(1);
    c
}

#[test]
fn allowed_agent_runs_the_child_as_the_run_as_user() {
    let Some(uid) = nobody_uid("run-as-allowed") else {
        return;
    };
    let c = cluster("run-as-allowed", &["--allow-run-as", USER]);
    let parent = write_run_as_packages(
        &c.root().join("packages").join("run-as"),
        r#"echo "uid=$(id -u)" >> "$BATON_OUTPUT"; echo "user=$USER" >> "$BATON_OUTPUT""#,
    );
    let id = c.start_run(&parent, &[]);
    let view = c.wait_exec_terminal(&id, Duration::from_secs(30));
    assert_eq!(view.status, "succeeded", "{:#}", view.raw);
    view.assert_all_succeeded_once(1, &["a1"]);
    assert_eq!(
        str_at(&view.raw, "/children/0/outputs/uid"),
        uid.to_string(),
        "the child did not run as {USER}: {:#}",
        view.raw
    );
    assert_eq!(str_at(&view.raw, "/children/0/outputs/user"), USER);
    c.finish(&[]);
}

#[test]
fn agent_not_allowed_refuses_and_the_child_does_not_run() {
    if nobody_uid("run-as-denied").is_none() {
        return;
    }
    // Allowed for another folder only: the execution's folder is the root.
    let mut c = cluster("run-as-denied", &["--allow-run-as", "nobody:/etl"]);
    let marker = c.root().join("ran");
    let cmd = format!("touch '{}'-$(id -u)", marker.display());
    let parent = write_run_as_packages(&c.root().join("packages").join("run-as"), &cmd);
    let id = c.start_run(&parent, &[]);
    let view = c.wait_exec_terminal(&id, Duration::from_secs(30));
    c.note(&format!("every agent refused: {}", view.brief()));
    assert_eq!(view.status, "failed", "{:#}", view.raw);
    assert_eq!(view.children.len(), 1, "{:#}", view.raw);
    let child = &view.children[0];
    assert_eq!(child.state, "failed", "{:#}", view.raw);
    let reason = str_at(&view.raw, "/children/0/reason");
    for expected in [
        "refused by every ready agent",
        "a1",
        "RUN_AS_DENIED",
        "\"nobody\"",
        "not allowed for folder \"/\"",
    ] {
        assert!(
            reason.contains(expected),
            "reason lacks {expected:?}: {reason}"
        );
    }
    let ran: Vec<_> = std::fs::read_dir(c.root())
        .expect("read cluster dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ran-"))
        .map(|e| e.file_name())
        .collect();
    assert!(ran.is_empty(), "the refused child ran anyway: {ran:?}");
    let log = crate::harness::read_log(&c.agent("a1").stderr_path());
    assert!(
        log.contains("RUN_AS_DENIED"),
        "the agent did not log the refusal"
    );
    c.finish(&[]);
}

#[test]
fn a_refusal_by_every_agent_that_may_take_the_child_fails_the_run() {
    if nobody_uid("run-as-required").is_none() {
        return;
    }
    // a1 carries the label the run requires but may not use `nobody` here;
    // a2 could, but the run's `--require` rules it out. a1's refusal is for
    // good, so the run fails with its reason instead of waiting for ever.
    let mut c = cluster(
        "run-as-required",
        &["--allow-run-as", "nobody:/etl", "--label", "zone=x"],
    );
    let mut opts = AgentOpts::new("a2", 2);
    opts.extra_args = vec!["--allow-run-as".into(), USER.into()];
    c.start_agent_with(opts).expect("agent announced");
    c.agents_ready(2);
    let marker = c.root().join("ran");
    let cmd = format!("touch '{}'-$(id -u)", marker.display());
    let parent = write_run_as_packages(&c.root().join("packages").join("run-as"), &cmd);
    let t0 = std::time::Instant::now();
    let out = c.cli_at(
        &c.coordinator_url(),
        &[
            "run",
            &parent.display().to_string(),
            "--require",
            "zone=x",
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
    assert_eq!(view.status, "failed", "{:#}", view.raw);
    let reason = str_at(&view.raw, "/children/0/reason");
    for expected in ["refused by every ready agent", "a1", "RUN_AS_DENIED"] {
        assert!(
            reason.contains(expected),
            "reason lacks {expected:?}: {reason}"
        );
    }
    assert!(!reason.contains("a2"), "a2 was never asked: {reason}");
    c.finish(&[]);
}
