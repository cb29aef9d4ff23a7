//! One consistent command line: daemons started from `--config` files alone,
//! the layers shown by `--print-config`, CLI contexts, connection flags before
//! the subcommand, and one JSON envelope for every list.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, FanoutSpec, HEARTBEAT_MS, LEASE_TTL_MS};

fn toml_path(p: &std::path::Path) -> String {
    toml_str(&p.display().to_string())
}

fn toml_str(s: &str) -> String {
    format!("{:?}", s)
}

fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19) || c.is_ascii_digit())
}

/// The line of `--print-config` output for `key`.
fn config_line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"))
}

#[test]
fn a_coordinator_and_an_agent_start_from_config_files_only() {
    let mut c = Cluster::new("config_files");
    let root = c.root().to_path_buf();
    let coord_file = root.join("coordinator.toml");
    std::fs::create_dir_all(root.join("coordinator")).unwrap();
    std::fs::write(
        &coord_file,
        format!(
            "# a coordinator's settings\nlisten = \"127.0.0.1:0\"\ndata-dir = {}\nlease-ttl-ms = {LEASE_TTL_MS}\nheartbeat-ms = {HEARTBEAT_MS}\n",
            toml_path(&root.join("coordinator").join("data"))
        ),
    )
    .unwrap();
    c.start_coordinator_args(vec![
        "coordinator".into(),
        "--config".into(),
        coord_file.display().to_string(),
    ]);

    let agent_data = root.join("a1").join("data");
    let tls_dir = agent_data.join("tls");
    c.cli_raw(&[
        "certs",
        "issue",
        "--ca-dir",
        &c.ca_dir().display().to_string(),
        "--agent",
        "a1",
        "--out",
        &tls_dir.display().to_string(),
    ])
    .expect_code(0);
    let agent_file = root.join("agent.toml");
    std::fs::write(
        &agent_file,
        format!(
            "coordinator = {}\nname = \"a1\"\nlisten = \"127.0.0.1:0\"\nslots = 3\nweight = 1\nlabel = [\"pool=cfg\", \"zone=z1\"]\ndata-dir = {}\ntls-dir = {}\n",
            toml_str(&c.coordinator_url()),
            toml_path(&agent_data),
            toml_path(&tls_dir)
        ),
    )
    .unwrap();
    c.start_agent_args(
        "a1",
        vec![
            "--config".into(),
            agent_file.display().to_string(),
            "agent".into(),
        ],
    );
    c.agents_ready(1);
    let agents = c.cli(&["agents", "list", "-o", "json"]).json();
    let a1 = &agents["items"][0];
    assert_eq!(a1["name"], "a1", "{agents:#}");
    assert_eq!(a1["slots"], 3, "{agents:#}");
    assert_eq!(a1["labels"]["pool"], "cfg", "{agents:#}");
    assert_eq!(a1["labels"]["zone"], "z1", "{agents:#}");

    // The fleet made from files runs work.
    let pkg = c.write_fanout("cfg", &FanoutSpec::new(3, "true"));
    let id = c.start_run(&pkg, &[]);
    let end = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(end.status, "succeeded", "{}", end.brief());

    // The layers, as `--print-config` shows them: the file, the environment
    // above it, a flag above both.
    let agent_file_s = agent_file.display().to_string();
    let shown = c.cli_env(
        &[
            "agent",
            "--config",
            &agent_file_s,
            "--slots",
            "5",
            "--enroll",
            "one-time-s3cret",
            "--print-config",
        ],
        &[("BATON_AGENT_WEIGHT", "2".into())],
    );
    shown.expect_code(0);
    let text = &shown.stdout;
    assert!(config_line(text, "name").contains("# file "), "{text}");
    assert!(
        config_line(text, "coordinator").contains("# file "),
        "{text}"
    );
    let weight = config_line(text, "weight");
    assert!(
        weight.starts_with("weight = 2") && weight.ends_with("# env BATON_AGENT_WEIGHT"),
        "the environment is above the file: {text}"
    );
    assert!(config_line(text, "slots").contains("= 5"), "{text}");
    assert!(config_line(text, "slots").ends_with("# flag"), "{text}");
    assert!(
        config_line(text, "label").contains("[\"pool=cfg\", \"zone=z1\"]"),
        "{text}"
    );
    assert!(
        config_line(text, "kill-grace-ms").ends_with("# default"),
        "{text}"
    );
    assert!(config_line(text, "enroll").contains("<set>"), "{text}");
    assert!(!text.contains("s3cret"), "a secret was printed:\n{text}");

    // A key no option has: refused, naming the key, the file and the line.
    let bad = root.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nslot = 3\n").unwrap();
    let out = c.cli_raw(&["agent", "--config", &bad.display().to_string()]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[CONFIG_UNKNOWN_KEY]")
            && out.stderr.contains(&format!("{}:2", bad.display()))
            && out.stderr.contains("`slot`"),
        "{}",
        out.describe()
    );
    c.finish(&[]);
}

#[test]
fn contexts_supply_the_connection_and_flags_go_before_the_subcommand() {
    let mut c = Cluster::new("contexts");
    c.start_coordinator();
    let url = c.coordinator_url();
    let admin = c.ca_dir().join("admin").display().to_string();

    // Connection flags before the subcommand, as after it.
    let before = c.cli_raw(&[
        "--coordinator",
        &url,
        "--tls-dir",
        &admin,
        "exec",
        "list",
        "-o",
        "json",
    ]);
    before.expect_code(0);
    assert_eq!(before.json()["items"], Value::Array(vec![]));
    c.cli_raw(&["exec", "list", "--coordinator", &url, "--tls-dir", &admin])
        .expect_code(0);

    // No context yet: an empty list, and no current one to show.
    let list = c.cli_raw(&["context", "list", "-o", "json"]);
    list.expect_code(0);
    assert_eq!(list.json()["items"], Value::Array(vec![]));
    let none = c.cli_raw(&["context", "show"]);
    none.expect_code(2);
    assert!(
        none.stderr.contains("CONTEXT_NOT_SET"),
        "{}",
        none.describe()
    );

    c.cli_raw(&[
        "context",
        "add",
        "local",
        "--coordinator",
        &url,
        "--tls-dir",
        &admin,
    ])
    .expect_code(0);
    let dead = format!("https://127.0.0.1:{}", crate::harness::dead_port());
    c.cli_raw(&[
        "context",
        "add",
        "gone",
        "--coordinator",
        &dead,
        "--tls-dir",
        &admin,
    ])
    .expect_code(0);
    // Named per call before it is current.
    c.cli_raw(&["exec", "list", "--context", "local"])
        .expect_code(0);
    c.cli_raw(&["--context", "local", "exec", "list"])
        .expect_code(0);
    c.cli_raw(&["context", "use", "local"]).expect_code(0);
    let agents = c.cli_raw(&["agents", "list", "-o", "json"]);
    agents.expect_code(0);
    assert!(agents.json()["items"].is_array(), "{}", agents.describe());

    // BATON_CONTEXT picks another context; its failure says where the address came from.
    let via_env = c.cli_env(&["exec", "list"], &[("BATON_CONTEXT", "gone".into())]);
    via_env.expect_code(3);
    assert!(
        via_env.stderr.contains("context 'gone'"),
        "{}",
        via_env.describe()
    );
    // A flag is above the context.
    c.cli_env(
        &["exec", "list", "--coordinator", &url],
        &[("BATON_CONTEXT", "gone".into())],
    )
    .expect_code(0);
    let unknown = c.cli_raw(&["exec", "list", "--context", "nope"]);
    unknown.expect_code(2);
    assert!(
        unknown.stderr.contains("CONTEXT_NOT_FOUND"),
        "{}",
        unknown.describe()
    );

    // An API token from a file named by the context: the coordinator sees its principal.
    let token = c.cli(&["token", "create", "--api", "carol", "-o", "json"]);
    token.expect_code(0);
    let token_file = c.root().join("carol.token");
    std::fs::write(&token_file, token.json()["token"].as_str().unwrap()).unwrap();
    c.cli_raw(&[
        "context",
        "add",
        "carol",
        "--coordinator",
        &url,
        "--tls-dir",
        &admin,
        "--token-file",
        &token_file.display().to_string(),
        "--use",
    ])
    .expect_code(0);
    let who = c.cli_raw(&["whoami", "-o", "json"]);
    who.expect_code(0);
    assert_eq!(who.json()["principal"], "carol", "{}", who.describe());

    let shown = c.cli_raw(&["context", "show", "-o", "json"]).json();
    assert_eq!(shown["name"], "carol");
    assert_eq!(shown["current"], true);
    let listed = c.cli_raw(&["context", "list", "-o", "json"]).json();
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["carol", "gone", "local"]);

    let store = c.root().join("cli-config").join("contexts.toml");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&store).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "contexts.toml is private");
    let text = std::fs::read_to_string(&store).unwrap();
    assert!(
        !text.contains(token.json()["token"].as_str().unwrap()),
        "the token itself is never stored"
    );

    c.cli_raw(&["context", "rm", "carol"]).expect_code(0);
    let gone = c.cli_raw(&["context", "show"]);
    gone.expect_code(2);
    c.finish(&[]);
}

#[test]
fn every_list_prints_one_envelope_and_times_as_rfc3339() {
    let mut c = Cluster::new("list_shapes");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.agents_ready(1);
    let pkg = c.write_fanout("shapes", &FanoutSpec::new(2, "true"));
    let id = c.start_run(&pkg, &[]);
    c.wait_exec_terminal(&id, Duration::from_secs(60));
    c.cli(&["folder", "create", "/etl"]).expect_code(0);
    c.cli(&[
        "package",
        "deploy",
        &pkg.display().to_string(),
        "--folder",
        "/etl",
    ])
    .expect_code(0);
    c.cli(&["token", "create", "--api", "dave"]).expect_code(0);
    c.cli(&["role", "grant", "dave", "read", "/etl"])
        .expect_code(0);

    for list in [
        &["agents", "list"][..],
        &["exec", "list"],
        &["folder", "list"],
        &["package", "list"],
        &["token", "list"],
        &["role", "list", "/etl"],
        &["context", "list"],
    ] {
        let mut args = list.to_vec();
        args.extend(["-o", "json"]);
        let out = c.cli(&args);
        out.expect_code(0);
        let v = out.json();
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {}", out.describe()));
        assert_eq!(
            obj.keys().map(String::as_str).collect::<Vec<_>>(),
            ["items", "next_page_token"],
            "{}",
            out.describe()
        );
        let items = v["items"].as_array().expect("items");
        assert!(
            v["next_page_token"].is_null() || v["next_page_token"].is_string(),
            "{}",
            out.describe()
        );
        if list[0] != "context" {
            assert!(!items.is_empty(), "{}", out.describe());
        }
        // One unit for times in JSON: unix milliseconds, in `*_unix_ms` fields.
        for item in items {
            for (k, val) in item.as_object().expect("items are objects") {
                assert!(
                    !k.ends_with("_unix_s") && !k.ends_with("_at"),
                    "time field {k} in {}",
                    out.describe()
                );
                if k.ends_with("_unix_ms") {
                    assert!(val.is_u64(), "{k} = {val} in {}", out.describe());
                }
            }
        }
    }

    let execs = c.cli(&["exec", "list", "-o", "json"]).json();
    let first = &execs["items"][0];
    assert!(
        first["created_unix_ms"].as_u64().unwrap() > 1_700_000_000_000
            && first["finished_unix_ms"].as_u64().unwrap()
                >= first["created_unix_ms"].as_u64().unwrap(),
        "{execs:#}"
    );

    // The last heartbeat, in JSON and as an RFC 3339 column.
    let json = c.cli(&["agents", "list", "-o", "json"]).json();
    let hb = json["items"][0]["last_heartbeat_unix_ms"].as_u64().unwrap();
    assert!(hb > 1_700_000_000_000, "{json:#}");
    let human = c.cli(&["agents", "list"]);
    let mut lines = human.stdout.lines();
    assert!(
        lines.next().unwrap().contains("LAST HEARTBEAT"),
        "{}",
        human.describe()
    );
    let row = lines.next().unwrap();
    assert!(
        row.split_whitespace().any(is_rfc3339_utc),
        "no RFC 3339 time in {row:?}"
    );
    let execs = c.cli(&["exec", "list"]);
    assert!(
        execs
            .stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().any(is_rfc3339_utc)),
        "{}",
        execs.describe()
    );
    c.finish(&[]);
}
