//! The builder example program (`examples/builder/build_and_run.rs`): it builds
//! a package in Rust, saves it, loads it back equal, and runs it against a real
//! coordinator; the run's outputs show the rows flowed and the sum was made.

use std::process::Command;
use std::time::Duration;

use crate::harness::{AgentOpts, Cluster, baton_bin, wait_until};

#[test]
fn the_builder_example_builds_saves_and_runs_a_package() {
    let bin = baton_bin();
    let example = bin
        .parent()
        .expect("target/debug")
        .join("examples")
        .join("build_and_run");
    assert!(
        example.is_file(),
        "the example is missing at {}: run `cargo build -p baton-package --example build_and_run` \
         (scripts/test does)",
        example.display()
    );
    let mut c = Cluster::new("builder_example");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.agents_ready(1);
    let out_dir = c.root().join("built");
    let mut child = Command::new(&example)
        .arg(&out_dir)
        .env("BATON_BIN", &bin)
        .env("BATON_COORDINATOR", c.coordinator_url())
        .env("BATON_TLS_DIR", c.ca_dir().join("admin"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    let done = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the example did not finish in 60 s");
    }
    let out = child.wait_with_output().expect("example output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out_dir.join("parent.toml").is_file() && out_dir.join("load.toml").is_file());
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(summary["status"], "succeeded", "{summary}");
    // list + two regions + summary.
    assert_eq!(summary["children"]["succeeded"], 4, "{summary}");
    let id = summary["execution_id"].as_str().unwrap().to_owned();
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    show.expect_code(0);
    let total = show.json()["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["task"] == "summary")
        .map(|ch| ch["outputs"]["total"].clone());
    assert_eq!(total, Some(serde_json::json!("8")), "3 + 5 rows");
    c.finish(&[]);
}
