//! What a new user hit with the CLI (issue 14): a closed pipe, a blind wait
//! that could not be taken up again, a cancel that said the wrong thing, a
//! folder that did not exist, a `--local` failure without its stderr, the
//! demo's result after its clean-up, `validate` stopping at the first stage.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::fixtures::write_file;
use crate::harness::{Cluster, FanoutSpec, baton_bin, wait_until};

/// Waits for a spawned client to exit (SIGKILL after `timeout`): its code.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("client did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// A cluster with one agent of `slots` slots.
fn cluster(name: &str, slots: u32) -> Cluster {
    let mut c = Cluster::new(name);
    c.start_coordinator();
    c.start_agent("a1", slots);
    c.agents_ready(1);
    c
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let c = cluster("pipe", 4);
    let pkg = c.write_fanout("pipe", &FanoutSpec::new(3, "true"));
    let id = c.start_run(&pkg, &[]);
    c.wait_exec_terminal(&id, Duration::from_secs(30));
    for args in [
        vec!["exec", "list"],
        vec!["exec", "show", id.as_str()],
        vec!["exec", "list", "--output", "json"],
        vec!["agents", "list"],
    ] {
        let mut child = c.spawn_cli(&args);
        // The reader goes away before the command writes anything (it has
        // yet to reach the coordinator): every write meets a closed pipe.
        drop(child.stdout.take());
        let stderr = child.stderr.take().expect("piped stderr");
        let err = std::thread::spawn(move || read_all(stderr));
        let code = wait_exit(&mut child, Duration::from_secs(30));
        let err = err.join().unwrap_or_default();
        assert_eq!(code, Some(0), "baton {args:?} | (closed): {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "baton {args:?} must end quietly: {err}"
        );
    }
    c.finish(&[]);
}

#[test]
fn exec_wait_and_exec_watch_follow_an_execution_by_its_id() {
    let c = cluster("wait-watch", 1);
    // One slot for three children: two wait for capacity at first.
    let ok = c.write_fanout("ok", &FanoutSpec::new(3, "sleep 1"));
    let id = c.start_run(&ok, &[]);
    let watch = c.cli_at(
        &c.coordinator_url(),
        &["exec", "watch", &id],
        Duration::from_secs(60),
    );
    watch.expect_code(0);
    let lines: Vec<&str> = watch.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("running ") && l.contains(" done: ")),
        "a progress line per change, without a terminal\n{}",
        watch.describe()
    );
    assert!(
        lines.iter().any(|l| l.contains("waiting for capacity")),
        "the lines say why children wait\n{}",
        watch.describe()
    );
    assert!(
        watch.stdout.contains("status succeeded"),
        "it ends with the summary\n{}",
        watch.describe()
    );
    let wait = c.cli(&["exec", "wait", &id, "--output", "json"]);
    wait.expect_code(0);
    assert_eq!(wait.json()["status"], "succeeded", "{}", wait.describe());

    let bad = c.write_fanout("bad", &FanoutSpec::new(2, "exit 3"));
    let id = c.start_run(&bad, &[]);
    let wait = c.cli(&["exec", "wait", &id]);
    wait.expect_code(1);
    assert!(wait.stdout.contains("status failed"), "{}", wait.describe());
    let watch = c.cli(&["exec", "watch", &id, "--output", "json"]);
    watch.expect_code(1);
    let last = watch.json();
    assert_eq!(last["status"], "failed", "{}", watch.describe());
    assert_eq!(last["children"]["failed"], 2, "{}", watch.describe());

    let unknown = c.cli(&["exec", "wait", "no-such-execution"]);
    unknown.expect_code(2);
    c.finish(&[]);
}

#[test]
fn run_wait_prints_the_execution_id_before_the_end() {
    let c = cluster("run-id", 2);
    let pkg = c.write_fanout("slow", &FanoutSpec::new(2, "sleep 3"));
    let pkg = pkg.display().to_string();
    let mut child = c.spawn_cli(&["run", &pkg, "--wait", "--output", "json"]);
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let err = std::thread::spawn(move || read_all(stderr));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = tx.send(first);
        lines.map_while(Result::ok).collect::<Vec<_>>()
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a first line before the end");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the id comes while the execution runs, not at its end: {first}"
    );
    let v: serde_json::Value = serde_json::from_str(&first).expect("a JSON first line");
    assert_eq!(v["event"], "started", "{v}");
    let id = v["execution_id"].as_str().unwrap_or_default().to_owned();
    assert!(!id.is_empty(), "{v}");
    let code = wait_exit(&mut child, Duration::from_secs(60));
    let rest = reader.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    assert_eq!(code, Some(0), "{rest:?} {err}");
    let last: serde_json::Value =
        serde_json::from_str(rest.last().expect("a summary line")).expect("JSON summary");
    assert_eq!(
        (last["execution_id"].as_str(), last["status"].as_str()),
        (Some(id.as_str()), Some("succeeded")),
        "{last}"
    );

    // Human output: the id on stderr, with how to wait again.
    let out = c.cli(&["run", &pkg, "--wait"]);
    out.expect_code(0);
    assert!(
        out.stderr.contains("started") && out.stderr.contains("baton exec wait "),
        "{}",
        out.describe()
    );
    c.finish(&[]);
}

#[test]
fn cancelling_children_that_wait_for_capacity_says_what_it_did() {
    let c = cluster("cancel-waiting", 1);
    let hog = c.write_fanout("hog", &FanoutSpec::new(1, "sleep 300"));
    let hog = c.start_run(&hog, &[]);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            c.exec_show(&hog).count_state("running") == 1
        }),
        "the hog never ran"
    );
    let waiting = c.write_fanout("waiting", &FanoutSpec::new(3, "true"));
    let id = c.start_run(&waiting, &[]);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            let v = c.exec_show(&id);
            v.raw["summary"]["waiting"]
                .as_str()
                .is_some_and(|w| w.contains("capacity"))
        }),
        "its children never waited for capacity: {}",
        c.exec_show(&id).brief()
    );
    let out = c.cli(&["exec", "cancel", &id]);
    out.expect_code(0);
    assert!(
        !out.stdout.contains("already ended")
            && out
                .stdout
                .contains("3 child(ren) cancelled before they started"),
        "{}",
        out.describe()
    );
    let v = c.exec_show(&id);
    assert_eq!(v.status, "cancelled", "{}", v.brief());
    let children = &v.raw["summary"]["children"];
    assert_eq!(
        (children["cancelled"].as_u64(), children["failed"].as_u64()),
        (Some(3), Some(0)),
        "{children}"
    );
    let again = c.cli(&["exec", "cancel", &id, "--output", "json"]);
    again.expect_code(0);
    assert_eq!(again.json()["already_ended"], true, "{}", again.describe());
    c.cli(&["exec", "cancel", &hog]).expect_code(0);
    c.finish(&[]);
}

#[test]
fn a_run_into_a_missing_folder_is_refused_as_a_deploy_is() {
    let c = cluster("missing-folder", 1);
    let pkg = c.write_fanout("f", &FanoutSpec::new(1, "true"));
    let pkg = pkg.display().to_string();
    let out = c.cli(&["run", &pkg, "--folder", "/does/not/exist"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("FOLDER_NOT_FOUND"),
        "{}",
        out.describe()
    );
    let deploy = c.cli(&["package", "deploy", &pkg, "--folder", "/does/not/exist"]);
    assert!(
        deploy.stderr.contains("FOLDER_NOT_FOUND"),
        "{}",
        deploy.describe()
    );
    let list = c.cli(&["exec", "list", "--output", "json"]);
    list.expect_code(0);
    assert_eq!(
        list.json()["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was started: {}",
        list.describe()
    );
    c.cli(&["folder", "create", "/does/not/exist", "--parents"])
        .expect_code(0);
    c.cli(&["run", &pkg, "--folder", "/does/not/exist"])
        .expect_code(0);
    c.finish(&[]);
}

#[test]
fn a_failed_local_run_shows_the_failing_childs_stderr() {
    let c = Cluster::new("local-stderr");
    let bad = c.write_fanout(
        "bad",
        &FanoutSpec::new(2, "echo the-disk-is-full-$BATON_PARAM_SHARD >&2; exit 3"),
    );
    let out = c.cli_raw(&["run", &bad.display().to_string(), "--local"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("the-disk-is-full-1") && out.stderr.contains("stderr of child fan["),
        "{}",
        out.describe()
    );
    c.finish(&[]);
}

#[test]
fn the_demo_prints_its_result_before_removing_its_directory() {
    let c = Cluster::new("demo-order");
    // One pipe for both streams, so that their order is kept.
    let out = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" demo --agents 1 --children 2 --work-ms 0 2>&1")
        .arg(baton_bin())
        .current_dir(c.root())
        .env("BATON_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let result = text
        .find("status succeeded")
        .unwrap_or_else(|| panic!("{text}"));
    let removing = text
        .find("removing ")
        .unwrap_or_else(|| panic!("no clean-up line: {text}"));
    assert!(result < removing, "the result comes first: {text}");
    c.finish(&[]);
}

#[test]
fn validate_reports_every_finding_in_one_run() {
    let c = Cluster::new("validate-all");
    let dir = c.root().join("packages").join("bad");
    // Five problems: two tasks with fields the schema does not know, an
    // `after` naming a task that does not exist, a `when` that does not
    // parse, and a cycle.
    write_file(
        &dir,
        "parent.toml",
        r#"name = "bad"

[tasks.one]
exec = ["true"]
retries = 3

[tasks.two]
script = "echo hi"
timeout = 10

[tasks.three]
exec = ["true"]
after = ["nobody"]

[tasks.four]
exec = ["true"]
when = "params.x =="

[tasks.five]
exec = ["true"]
after = ["six"]

[tasks.six]
exec = ["true"]
after = ["five"]
"#,
    );
    let file = dir.join("parent.toml").display().to_string();
    let out = c.cli_raw(&["validate", &file]);
    out.expect_code(2);
    let findings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error["))
        .collect();
    for want in ["retries", "timeout", "nobody", "when", "cycle"] {
        assert!(
            findings.iter().any(|l| l.contains(want)),
            "no finding about {want}: {findings:#?}\n{}",
            out.describe()
        );
    }
    assert_eq!(findings.len(), 5, "{findings:#?}");
    let json = c.cli_raw(&["validate", &file, "--output", "json"]);
    json.expect_code(2);
    assert_eq!(
        json.json()["errors"].as_array().map(Vec::len),
        Some(5),
        "{}",
        json.describe()
    );
    c.finish(&[]);
}

/// `exec list`, `exec show` and `exec watch` count the children of a foreach
/// over rows the same way while they wait (here for an agent with a label
/// nobody has): `exec list` said TOTAL 1 while `exec show` said 4 more pending.
#[test]
fn every_listing_counts_a_rows_foreach_alike() {
    let c = cluster("rows-counts", 2);
    let dir = c.root().join("packages").join("rows");
    write_file(
        &dir,
        "item.toml",
        "name = \"item\"\n[parameters.id]\ntype = \"string\"\nrequired = true\n\
         [tasks.run]\nexec = [\"true\"]\n",
    );
    write_file(
        &dir,
        "parent.toml",
        r#"name = "by-rows"
[tasks.list]
script = """
printf '{"id":"1"}\n{"id":"2"}\n{"id":"3"}\n{"id":"4"}\n' >> "$BATON_ROWS"
"""
[tasks.each]
foreach = { rows = "list" }
child = "item.toml"
params = { id = "${item.id}" }
require = { zone = "nowhere" }
after = ["list"]
"#,
    );
    let id = c.start_run(&dir.join("parent.toml"), &[]);
    let counts = |v: &serde_json::Value| {
        let ch = &v["children"];
        (
            ch["total"].as_u64(),
            ch["succeeded"].as_u64(),
            ch["pending"].as_u64(),
        )
    };
    let want = (Some(5), Some(1), Some(4));
    let mut shown = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            shown = c.exec_show(&id).raw["summary"].clone();
            counts(&shown) == want
        }),
        "exec show: {shown}"
    );
    let listed = c.cli(&["exec", "list", "--output", "json"]);
    listed.expect_code(0);
    let listed = listed.json()["items"][0].clone();
    assert_eq!(listed["execution_id"], id.as_str(), "{listed}");
    assert_eq!(
        counts(&listed),
        want,
        "exec list agrees with exec show: {listed}"
    );
    assert!(
        listed["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("zone")),
        "and says why they wait: {listed}"
    );
    // A watch's first line is the same summary.
    let mut watch = c.spawn_cli(&["exec", "watch", &id, "--output", "json"]);
    let stdout = watch.stdout.take().expect("piped stdout");
    let first = BufReader::new(stdout)
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let _ = watch.kill();
    let _ = watch.wait();
    let first: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(counts(&first), want, "exec watch agrees: {first}");
    c.cli(&["exec", "cancel", &id]).expect_code(0);
    c.finish(&[]);
}

/// The README tour: the example fan-out's children write rows, and
/// `exec rows --child 'shards[3]'` shows the one of shard 4.
#[test]
fn the_example_fanout_writes_rows_for_the_tour() {
    let c = cluster("tour-rows", 4);
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/fanout/parent.toml")
        .display()
        .to_string();
    let out = c.cli(&[
        "run",
        &example,
        "-p",
        "children=4",
        "-p",
        "work_s=0",
        "--wait",
        "--output",
        "json",
    ]);
    out.expect_code(0);
    let id = out.json()["execution_id"].as_str().unwrap().to_owned();
    let rows = c.cli(&[
        "exec",
        "rows",
        &id,
        "--child",
        "shards[3]",
        "--format",
        "json",
    ]);
    rows.expect_code(0);
    let row: serde_json::Value =
        serde_json::from_str(rows.stdout.trim()).unwrap_or_else(|_| panic!("{}", rows.describe()));
    assert_eq!(
        (row["shard"].as_u64(), row["square"].as_u64()),
        (Some(4), Some(16))
    );
    c.finish(&[]);
}

/// A token made without `--label` allows no label: an agent that claims one is
/// refused at registration and stops at once with its own code and a hint,
/// instead of retrying for ever.
#[test]
fn an_agent_claiming_a_label_its_token_does_not_allow_stops() {
    let mut c = Cluster::new("label_refused_stops");
    c.start_coordinator();
    let out = c.cli(&["token", "create", "--agent", "l1", "--output", "json"]);
    out.expect_code(0);
    let token = out.json()["token"].as_str().unwrap().to_owned();
    let mut opts = crate::harness::AgentOpts::new("l1", 1);
    opts.tls_dir = Some(c.root().join("l1-tls"));
    opts.wait_announce = false;
    opts.env = vec![("BATON_ENROLL_TOKEN".into(), token)];
    opts.extra_args = vec!["--label".into(), "role=loader".into()];
    c.start_agent_with(opts);
    let mut status = None;
    let exited = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        status = c.agent("l1").try_exit_status();
        status.is_some()
    });
    let log = crate::harness::read_log(&c.agent("l1").stderr_path());
    assert!(exited, "the refused agent still runs after 20 s:\n{log}");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{status:?}\n{log}");
    assert!(
        log.contains("error[AGENT_REGISTRATION_REFUSED]")
            && log.contains("AGENT_LABEL_NOT_ALLOWED")
            && log.contains("baton token create --agent l1 --label"),
        "no clear message on stderr:\n{log}"
    );
    let retries = log.matches("coordinator unreachable; will retry").count();
    assert!(retries == 0, "it retried {retries} times:\n{log}");
    c.finish(&["l1", "AGENT_LABEL_NOT_ALLOWED", "registration"]);
}

/// `baton coordinator` with a variable it read under its old name: it refuses
/// to start rather than open a fresh store (and CA) in the default directory;
/// the new name (or the flag) wins over the old one. A `BATON_TLS_DIR` that
/// holds a CA while the coordinator's own TLS directory holds none is refused too.
#[test]
fn a_coordinator_refuses_to_start_on_a_renamed_variable() {
    let root = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &std::path::Path)], args: &[&str]| {
        let mut cmd = Command::new(baton_bin());
        cmd.current_dir(root.path())
            .args(["coordinator", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("BATON_TLS_DIR")
            .env_remove("BATON_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err = std::thread::spawn(move || read_all(stderr));
        // The first stdout line is the announcement of a coordinator that serves.
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let code = if line.contains("listening on") {
            let _ = child.kill();
            let _ = child.wait();
            None
        } else {
            wait_exit(&mut child, Duration::from_secs(10))
        };
        (code, err.join().unwrap_or_default())
    };
    let old = root.path().join("old-data");
    let (code, err) = run(&[("BATON_DATA_DIR", &old)], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("error[ENV_RENAMED]") && err.contains("BATON_COORDINATOR_DATA_DIR"),
        "{err}"
    );
    assert!(!root.path().join("baton-data").exists(), "it made a store");
    // The flag gives the option a value: the old variable is only warned about.
    let new = root.path().join("new-data");
    let (code, err) = run(
        &[("BATON_DATA_DIR", &old)],
        &["--data-dir", new.to_str().unwrap()],
    );
    assert_eq!(code, None, "with --data-dir it must start: {err}");
    // BATON_TLS_DIR naming that coordinator's CA directory, with a new data dir.
    let ca = new.join("tls");
    assert!(
        ca.join("ca.key").is_file(),
        "no CA made in {}",
        ca.display()
    );
    let other = root.path().join("other-data");
    let (code, err) = run(
        &[("BATON_TLS_DIR", &ca)],
        &["--data-dir", other.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("error[ENV_RENAMED]") && err.contains("--tls-dir"),
        "{err}"
    );
    assert!(!other.join("tls").join("ca.key").exists());
}
