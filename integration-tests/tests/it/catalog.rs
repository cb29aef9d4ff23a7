//! The catalog through the real CLI: folders, versioned packages, runs by
//! name that pin their version, rename and move under running executions,
//! removal rules, and permissions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::fixtures::toml_str;
use crate::harness::{CliOutput, Cluster, ExecView, wait_until};

/// A parent fanning out `children` (default 4) children, `parallelism` 1, whose
/// child writes `version=<version>` to its outputs and sleeps `sleep_s`.
fn write_package(dir: &Path, version: u32, sleep_s: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let cmd = format!("echo version={version} >> \"$BATON_OUTPUT\"; sleep {sleep_s}");
    std::fs::write(
        dir.join("child.toml"),
        format!(
            "name = \"step\"\n\n[parameters.shard]\ntype = \"string\"\nrequired = true\n\n\
             [tasks.run]\nexec = [\"sh\", \"-c\", {}]\ntimeout_s = 60\n",
            toml_str(&cmd)
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("parent.toml"),
        "name = \"load\"\ndescription = \"catalog test\"\n\n\
         [parameters.children]\ntype = \"int\"\ndefault = 4\n\n\
         [parameters.password]\ntype = \"string\"\nsensitive = true\ndefault = \"hunter2\"\n\n\
         [tasks.fan]\nforeach = { range = { start = 1, end = \"${params.children}\" } }\n\
         child = \"child.toml\"\nparallelism = 1\nparams = { shard = \"${item}\" }\n",
    )
    .unwrap();
    dir.to_path_buf()
}

fn ok_json(out: CliOutput) -> Value {
    out.expect_code(0);
    out.json()
}

fn expect_error(out: &CliOutput, exit: i32, code: &str) {
    assert_eq!(out.code, Some(exit), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("error[{code}]")),
        "expected error[{code}]\n{}",
        out.describe()
    );
}

/// The `version` output of every child of an execution.
fn child_versions(view: &ExecView) -> Vec<String> {
    view.raw["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["outputs"]["version"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn start(c: &Cluster, package: &str, extra: &[&str]) -> (String, u64) {
    let mut args = vec!["run", "--package", package, "--output", "json"];
    args.extend_from_slice(extra);
    let v = ok_json(c.cli(&args));
    (
        v["execution_id"].as_str().unwrap().to_owned(),
        v["version"].as_u64().unwrap(),
    )
}

#[test]
fn versions_pin_moves_keep_references_and_removal_waits_for_runs() {
    let mut c = Cluster::new("catalog");
    c.start_coordinator();
    c.start_agent("a1", 4);
    c.start_agent("a2", 4);
    c.agents_ready(2);
    let dir = c.root().join("packages").join("load");
    let dir_s = dir.display().to_string();

    // Folders are explicit; deploying into a missing one says how to make it.
    write_package(&dir, 1, "0.6");
    let out = c.cli(&["package", "deploy", &dir_s, "--folder", "/etl"]);
    expect_error(&out, 2, "FOLDER_NOT_FOUND");
    assert!(
        out.stderr.contains("baton folder create /etl"),
        "{}",
        out.describe()
    );
    c.cli(&["folder", "create", "/etl"]).expect_code(0);

    // v1; the same content again is not a new version.
    let v1 = ok_json(c.cli(&[
        "package", "deploy", &dir_s, "--folder", "/etl", "--output", "json",
    ]));
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["unchanged"], false);
    assert_eq!(v1["path"], "/etl/load");
    let again = ok_json(c.cli(&[
        "package", "deploy", &dir_s, "--folder", "/etl", "--output", "json",
    ]));
    assert_eq!(again["version"], 1);
    assert_eq!(again["unchanged"], true);
    assert_eq!(again["hash"], v1["hash"]);

    // Run v1 by name; deploy v2 while it runs: v1's children still run v1.
    let (run1, pinned) = start(&c, "/etl/load", &[]);
    assert_eq!(pinned, 1);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            c.exec_show(&run1).count_state("succeeded") >= 1
        }),
        "no child of v1 finished"
    );
    write_package(&dir, 2, "0.6");
    let v2 = ok_json(c.cli(&[
        "package", "deploy", &dir_s, "--folder", "/etl", "--output", "json",
    ]));
    assert_eq!(v2["version"], 2);
    assert_ne!(v2["hash"], v1["hash"]);
    let view = c.exec_show(&run1);
    assert_eq!(view.status, "running", "v1 ended before v2 was deployed");

    // Removal is refused while it runs, with a hint.
    let out = c.cli(&["package", "rm", "/etl/load"]);
    expect_error(&out, 2, "PACKAGE_IN_USE");
    assert!(out.stderr.contains("--force"), "{}", out.describe());

    // Rename, then move to another folder, while v1 still runs.
    c.cli(&["folder", "create", "/prod/nightly", "--parents"])
        .expect_code(0);
    c.cli(&["package", "mv", "/etl/load", "/etl/load-sales"])
        .expect_code(0);
    let moved = ok_json(c.cli(&[
        "package",
        "mv",
        "/etl/load-sales",
        "/prod/nightly/load",
        "--output",
        "json",
    ]));
    assert_eq!(moved["to"], "/prod/nightly/load");
    assert_eq!(moved["id"], v1["id"]);
    expect_error(
        &c.cli(&["package", "show", "/etl/load"]),
        2,
        "PACKAGE_NOT_FOUND",
    );

    let view = c.wait_exec_terminal(&run1, Duration::from_secs(60));
    assert_eq!(view.status, "succeeded", "{}", view.brief());
    assert_eq!(
        child_versions(&view),
        ["1", "1", "1", "1"],
        "v1 ran v1 throughout"
    );

    // The moved package keeps its versions and the execution that ran v1.
    let show = ok_json(c.cli(&["package", "show", "/prod/nightly/load", "--output", "json"]));
    assert_eq!(show["package"]["id"], v1["id"]);
    let versions: Vec<u64> = show["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    let runs = show["executions"].as_array().unwrap();
    assert!(
        runs.iter()
            .any(|e| e["execution_id"] == run1.as_str() && e["version"] == 1),
        "{show:#}"
    );
    // Parameters with types and defaults; a sensitive default never shows.
    let params = &show["versions"][0]["parameters"];
    let pw = params
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "password")
        .unwrap();
    assert_eq!(pw["default"], Value::Null);
    assert_eq!(pw["sensitive"], true);
    let human = c.cli(&["package", "show", "/prod/nightly/load"]);
    human.expect_code(0);
    assert!(!human.stdout.contains("hunter2"), "{}", human.describe());
    assert!(human.stdout.contains("(hidden)"), "{}", human.describe());

    // By name: the latest (v2), or an older version on request.
    let (run2, pinned) = start(&c, "/prod/nightly/load", &["-p", "children=2"]);
    assert_eq!(pinned, 2);
    let view = c.wait_exec_terminal(&run2, Duration::from_secs(60));
    assert_eq!(view.status, "succeeded", "{}", view.brief());
    assert_eq!(child_versions(&view), ["2", "2"]);
    let (run3, pinned) = start(
        &c,
        "/prod/nightly/load",
        &["--version", "1", "-p", "children=1"],
    );
    assert_eq!(pinned, 1);
    let view = c.wait_exec_terminal(&run3, Duration::from_secs(60));
    assert_eq!(child_versions(&view), ["1"]);
    expect_error(
        &c.cli(&["run", "--package", "/prod/nightly/load", "--version", "7"]),
        2,
        "VERSION_NOT_FOUND",
    );

    // Children went to agents by hash: they fetched and cached the child package.
    let cached: usize = ["a1", "a2"]
        .iter()
        .map(|a| {
            std::fs::read_dir(c.root().join(a).join("data").join("packages"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    assert!(cached >= 2, "no agent cached the fetched packages");

    // rm while running: refused, then forced; the run finishes with its version.
    write_package(&dir, 2, "3");
    ok_json(c.cli(&[
        "package",
        "deploy",
        &dir_s,
        "--folder",
        "/prod/nightly",
        "--name",
        "load",
        "--output",
        "json",
    ]));
    let (run4, _) = start(&c, "/prod/nightly/load", &["-p", "children=2"]);
    expect_error(
        &c.cli(&["folder", "rm", "/prod/nightly"]),
        2,
        "FOLDER_NOT_EMPTY",
    );
    expect_error(
        &c.cli(&["package", "rm", "/prod/nightly/load"]),
        2,
        "PACKAGE_IN_USE",
    );
    let rm = ok_json(c.cli(&[
        "package",
        "rm",
        "/prod/nightly/load",
        "--force",
        "--output",
        "json",
    ]));
    assert_eq!(rm["versions"], 3);
    assert_eq!(rm["running_executions"][0], run4.as_str());
    let view = c.wait_exec_terminal(&run4, Duration::from_secs(60));
    assert_eq!(view.status, "succeeded", "{}", view.brief());
    assert_eq!(child_versions(&view), ["2", "2"]);
    expect_error(
        &c.cli(&["package", "show", "/prod/nightly/load"]),
        2,
        "PACKAGE_NOT_FOUND",
    );

    // Empty folders go; listings show what is left.
    c.cli(&["folder", "rm", "/prod/nightly"]).expect_code(0);
    let folders = ok_json(c.cli(&["folder", "list", "--output", "json"]));
    let paths: Vec<&str> = folders["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/etl", "/prod"]);
    c.finish(&[]);
}

#[test]
fn a_reader_lists_and_shows_but_cannot_change_or_run() {
    let mut c = Cluster::new("catalog_perms");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.agents_ready(1);
    let dir = write_package(&c.root().join("packages").join("p"), 1, "0");
    let dir_s = dir.display().to_string();
    c.cli(&["folder", "create", "/etl"]).expect_code(0);
    c.cli(&["folder", "create", "/finance"]).expect_code(0);
    c.cli(&["package", "deploy", &dir_s, "--folder", "/etl"])
        .expect_code(0);
    c.cli(&["package", "deploy", &dir_s, "--folder", "/finance"])
        .expect_code(0);

    let token = ok_json(c.cli(&["token", "create", "--api", "bob", "--output", "json"]))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--token", token.as_str()]);
        c.cli(&a)
    };
    // Nothing granted: nothing listed, nothing shown.
    let list = ok_json(bob(&["package", "list", "--output", "json"]));
    assert_eq!(list["items"], Value::Array(vec![]));
    expect_error(
        &bob(&["package", "show", "/etl/load"]),
        4,
        "PERMISSION_DENIED",
    );

    c.cli(&["role", "grant", "bob", "read", "/etl"])
        .expect_code(0);
    let list = ok_json(bob(&["package", "list", "--output", "json"]));
    let paths: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/etl/load"], "only what bob may read");
    ok_json(bob(&["package", "show", "/etl/load", "--output", "json"]));
    ok_json(bob(&["folder", "list", "--output", "json"]));

    // read is not modify nor execute.
    for args in [
        vec!["package", "deploy", dir_s.as_str(), "--folder", "/etl"],
        vec!["package", "mv", "/etl/load", "/etl/other"],
        vec!["package", "rm", "/etl/load"],
        vec!["folder", "create", "/etl/sub"],
        vec!["folder", "rm", "/etl"],
        vec!["run", "--package", "/etl/load"],
    ] {
        let out = bob(&args);
        expect_error(&out, 4, "PERMISSION_DENIED");
        assert!(
            out.stderr.contains("baton role grant bob"),
            "{}",
            out.describe()
        );
    }
    // Moving needs modify on both folders.
    c.cli(&["role", "grant", "bob", "modify", "/etl"])
        .expect_code(0);
    expect_error(
        &bob(&["package", "mv", "/etl/load", "/finance/load2"]),
        4,
        "PERMISSION_DENIED",
    );
    bob(&["package", "mv", "/etl/load", "/etl/load2"]).expect_code(0);
    c.cli(&["role", "grant", "bob", "execute", "/etl"])
        .expect_code(0);
    let run = ok_json(bob(&[
        "run",
        "--package",
        "/etl/load2",
        "-p",
        "children=1",
        "--output",
        "json",
    ]));
    let id = run["execution_id"].as_str().unwrap().to_owned();
    let view = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(view.status, "succeeded", "{}", view.brief());
    assert_eq!(
        view.raw["summary"]["folder"], "/etl",
        "a catalog run belongs to the package's folder"
    );

    let audit = std::fs::read_to_string(c.root().join("coordinator/data/audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"who\":\"bob\"")
            && l.contains("DeployPackage")
            && l.contains("denied")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("MovePackage") && l.contains("/etl/load2")),
        "{audit}"
    );
    c.finish(&[]);
}

/// A run by name keeps its version across a coordinator SIGKILL and restart,
/// a new version deployed meanwhile, and an agent that joins afterwards with
/// an empty cache (it fetches the pinned version by hash).
#[test]
fn a_pinned_run_survives_a_coordinator_restart_and_a_new_agent_fetches_it() {
    let mut c = Cluster::new("catalog_restart");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.agents_ready(1);
    let dir = c.root().join("packages").join("load");
    let dir_s = dir.display().to_string();
    write_package(&dir, 1, "0.5");
    c.cli(&["folder", "create", "/etl"]).expect_code(0);
    c.cli(&["package", "deploy", &dir_s, "--folder", "/etl"])
        .expect_code(0);
    let (id, pinned) = start(&c, "/etl/load", &["-p", "children=10"]);
    assert_eq!(pinned, 1);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            c.exec_show(&id).count_state("succeeded") >= 1
        }),
        "no child finished"
    );

    let a1_log = c.log_mark("a1");
    c.coordinator().kill9();
    // The agent has seen the coordinator go: the restart is a reconnection.
    a1_log.wait_for(
        &["coordinator unreachable; will retry"],
        Duration::from_secs(10),
    );
    c.coordinator().restart();
    c.agents_ready(1);
    write_package(&dir, 2, "0.5");
    let v2 = ok_json(c.cli(&[
        "package", "deploy", &dir_s, "--folder", "/etl", "--output", "json",
    ]));
    assert_eq!(v2["version"], 2);

    // The rest of the run goes to a new agent, which has nothing cached.
    c.cli(&["agents", "cordon", "a1"]).expect_code(0);
    let before = c.exec_show(&id);
    assert!(!before.is_terminal(), "ended too soon: {}", before.brief());
    c.start_agent("a2", 2);
    let view = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(view.status, "succeeded", "{}", view.brief());
    assert!(
        child_versions(&view).iter().all(|v| v == "1"),
        "{:?}",
        child_versions(&view)
    );
    assert!(
        view.children.iter().any(|ch| ch.agent == "a2"),
        "no child ran on the new agent: {}",
        view.brief()
    );
    let log = crate::harness::read_log(&c.agent("a2").stderr_path());
    assert!(log.contains("package fetched"), "a2 did not fetch:\n{log}");
    c.finish(&[]);
}
