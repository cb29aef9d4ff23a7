//! `baton run FILE --local`: a package (and its children) runs on this machine
//! with no coordinator to talk to — an embedded coordinator and one agent live
//! for the run only; a child package can be run on its own to debug it.

use crate::harness::fixtures::file_lines;
use crate::harness::{Cluster, FanoutSpec};

#[test]
fn a_package_runs_locally_without_a_coordinator() {
    let c = Cluster::new("local");
    let marks = c.root().join("marks");
    let cmd = format!("echo $BATON_PARAM_SHARD >> {}", marks.display());
    let parent = c.write_fanout("local", &FanoutSpec::new(20, &cmd).parallelism(8));
    let parent = parent.display().to_string();
    let out = c.cli_raw(&[
        "run",
        &parent,
        "--local",
        "--local-slots",
        "4",
        "--output",
        "json",
    ]);
    out.expect_code(0);
    let v = out.json();
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["children"]["succeeded"], 20, "{v}");
    let mut got: Vec<u32> = file_lines(&marks)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=20).collect::<Vec<_>>());

    // A child package on its own, with its parameter given by hand.
    let child = std::path::Path::new(&parent).with_file_name("child.toml");
    std::fs::remove_file(&marks).unwrap();
    let out = c.cli_raw(&[
        "run",
        &child.display().to_string(),
        "--local",
        "-p",
        "shard=7",
        "--output",
        "json",
    ]);
    out.expect_code(0);
    assert_eq!(file_lines(&marks), ["7"]);

    // A failure exits 1 and keeps the directory with the logs.
    let bad = c.write_fanout("local-bad", &FanoutSpec::new(2, "echo nope >&2; exit 3"));
    let out = c.cli_raw(&["run", &bad.display().to_string(), "--local"]);
    out.expect_code(1);
    let kept = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("kept "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no kept directory: {}", out.describe()));
    let kept = std::path::PathBuf::from(kept);
    assert!(kept.is_dir(), "{}", kept.display());
    std::fs::remove_dir_all(&kept).unwrap();
    c.finish(&[]);
}

#[test]
fn a_local_child_runs_with_local_and_is_refused_by_a_fleet() {
    let mut c = Cluster::new("local_child");
    let marks = c.root().join("marks");
    let dir = c.root().join("pkg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("child.toml"),
        format!(
            "name = 'one'\n[tasks.t]\nexec = ['sh', '-c', 'echo ran >> {}']\n",
            marks.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("parent.toml"),
        "name = 'p'\n[tasks.here]\nchild = 'child.toml'\nlocal = true\n",
    )
    .unwrap();
    let parent = dir.join("parent.toml").display().to_string();
    let out = c.cli_raw(&["run", &parent, "--local", "--output", "json"]);
    out.expect_code(0);
    assert_eq!(file_lines(&marks), ["ran"]);

    c.start_coordinator();
    let out = c.cli(&["run", &parent]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[INVALID_REQUEST]") && out.stderr.contains("local child"),
        "{}",
        out.describe()
    );
    c.finish(&[]);
}
