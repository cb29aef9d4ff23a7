//! `child = "catalog:/FOLDER/NAME"`: a parent sent by the client runs a child
//! package deployed in the catalog (its latest version, read at start); the
//! caller needs `execute` on the child's folder too.

use crate::harness::{AgentOpts, Cluster};

#[test]
fn a_parent_runs_a_child_from_the_catalog() {
    let mut c = Cluster::new("catalog_child");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.agents_ready(1);
    let marks = c.root().join("marks");
    let lib = c.root().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(
        lib.join("load.toml"),
        format!(
            "name = 'load'\n[parameters.shard]\ntype = 'int'\nrequired = true\n\
             [tasks.t]\nexec = ['sh', '-c', 'echo v1-$BATON_PARAM_SHARD >> {}']\n",
            marks.display()
        ),
    )
    .unwrap();
    c.cli(&["folder", "create", "/lib"]).expect_code(0);
    c.cli(&[
        "package",
        "deploy",
        &lib.join("load.toml").display().to_string(),
        "--folder",
        "/lib",
    ])
    .expect_code(0);

    let dir = c.root().join("pkg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("parent.toml"),
        "name = 'p'\n[tasks.fan]\nforeach = { items = ['1', '2'] }\n\
         child = 'catalog:/lib/load'\nparams = { shard = '${item}' }\n",
    )
    .unwrap();
    let parent = dir.join("parent.toml").display().to_string();
    let out = c.cli(&["run", &parent, "--wait", "--output", "json"]);
    out.expect_code(0);
    let mut got: Vec<String> = std::fs::read_to_string(&marks)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    got.sort();
    assert_eq!(got, ["v1-1", "v1-2"]);

    // A principal with execute on / only for its own folder cannot use /lib's package.
    c.cli(&["folder", "create", "/team"]).expect_code(0);
    let token = c.cli(&["token", "create", "--api", "bob", "--output", "json"]);
    token.expect_code(0);
    let token = token.json()["token"].as_str().unwrap().to_owned();
    c.cli(&["role", "grant", "bob", "execute", "/team"])
        .expect_code(0);
    let out = c.cli(&["run", &parent, "--folder", "/team", "--token", &token]);
    assert!(
        out.stderr.contains("error[PERMISSION_DENIED]") && out.stderr.contains("/lib"),
        "{}",
        out.describe()
    );
    c.finish(&[]);
}
