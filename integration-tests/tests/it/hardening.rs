//! Findings of the attack review (issue 16) kept as tests on the real binary:
//!
//! - the daemons' data are private: data directories without group/world read or
//!   write, stores, audit trail and keys 0600; an existing open data directory and
//!   store are made private at start, with a WARN line;
//! - a child's raw `$BATON_OUTPUT` and `$BATON_ROWS` files, which hold sensitive
//!   values unmasked, are gone from the agent once read, while outputs and
//!   `exec rows` still work, masked.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::exec::str_at;
use crate::harness::fixtures::toml_str;
use crate::harness::{Cluster, read_log};

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

#[test]
fn data_dirs_stores_and_keys_are_private_and_open_ones_are_fixed_at_start() {
    let mut c = Cluster::new("private_data");
    c.start_coordinator();
    c.start_agent("a1", 1);
    c.agents_ready(1);

    // The harness makes each node's data dir (0755) before it starts: made private.
    let data = c.root().join("coordinator").join("data");
    assert_eq!(mode(&data) & 0o066, 0, "{:o}", mode(&data));
    for f in ["coordinator.redb", "audit.log", "secrets.key", "tls/ca.key"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&data.join("tls")), 0o700, "a new TLS dir");

    // The same for the agent's (and `baton certs issue` made its TLS dir 0755).
    let agent_data = c.root().join("a1").join("data");
    assert_eq!(mode(&agent_data) & 0o066, 0, "{:o}", mode(&agent_data));
    assert_eq!(mode(&agent_data.join("agent.redb")), 0o600);
    assert_eq!(mode(&agent_data.join("tls").join("tls.key")), 0o600);
    let agent_log = read_log(&c.agent("a1").stderr_path());
    assert!(
        agent_log.contains("made private") && agent_log.contains(&agent_data.display().to_string()),
        "no warning about the open agent data dir:\n{agent_log}"
    );

    // A data dir and store left open (as every release before this one made them)
    // are made private when the coordinator starts again.
    c.coordinator().kill9();
    set_mode(&data, 0o755);
    set_mode(&data.join("coordinator.redb"), 0o644);
    set_mode(&data.join("audit.log"), 0o666);
    c.coordinator().restart();
    assert_eq!(mode(&data), 0o711, "read and write taken, search kept");
    assert_eq!(mode(&data.join("coordinator.redb")), 0o600);
    assert_eq!(mode(&data.join("audit.log")), 0o600);
    let log = read_log(&c.coordinator().stderr_path());
    let store = data.join("coordinator.redb").display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("made private") && l.contains(&store)),
        "no warning naming the store:\n{log}"
    );
    c.agents_ready(1);
    c.finish(&[]);
}

/// Every file under `dir` (symbolic links not followed).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let entry = entry.expect("dir entry");
        let ty = entry.file_type().expect("file type");
        if ty.is_dir() {
            files_under(&entry.path(), out);
        } else if ty.is_file() {
            out.push(entry.path());
        }
    }
}

#[test]
fn raw_output_and_rows_files_do_not_outlive_the_job() {
    let mut c = Cluster::new("raw_files");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.agents_ready(1);
    let secret = format!("s3cr3t-raw-{}", std::process::id());
    let dir = c.root().join("packages");
    fs::create_dir_all(&dir).expect("package dir");
    let parent = r#"name = "raw"

[parameters.token]
type = "string"
required = true
sensitive = true

[tasks.fan]
foreach = { range = { start = 1, end = 2 } }
child = "child.toml"
params = { token = "${params.token}" }
"#;
    // Both files hold the value; the first task's output file is read when that
    // task ends, the rows when the job succeeds.
    let script = r#"echo "pw=$BATON_PARAM_TOKEN" >> "$BATON_OUTPUT"; printf '{"pw":"%s","n":1}\n' "$BATON_PARAM_TOKEN" >> "$BATON_ROWS""#;
    let child = format!(
        r#"name = "raw-child"

[parameters.token]
type = "string"
required = true
sensitive = true

[tasks.write]
exec = ["sh", "-c", {script}]
"#,
        script = toml_str(script)
    );
    fs::write(dir.join("parent.toml"), parent).expect("write parent");
    fs::write(dir.join("child.toml"), child).expect("write child");
    let token = format!("token={secret}");
    let run = c.cli_at(
        &c.coordinator_url(),
        &[
            "run",
            &dir.join("parent.toml").display().to_string(),
            "-p",
            &token,
            "--wait",
            "--output",
            "json",
        ],
        Duration::from_secs(60),
    );
    run.expect_code(0);
    let id = str_at(&run.json(), "/execution_id").to_owned();

    // Outputs and rows still work, masked.
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    show.expect_code(0);
    let children = show.json()["children"]
        .as_array()
        .expect("children")
        .clone();
    assert_eq!(children.len(), 2, "{}", show.stdout);
    for ch in &children {
        assert_eq!(ch["outputs"]["pw"], "***", "{ch}");
    }
    let rows = c.cli(&["exec", "rows", &id, "--child", "fan[0]", "--format", "json"]);
    rows.expect_code(0);
    assert!(
        rows.stdout.contains("\"***\"") && rows.stdout.contains("\"n\""),
        "{}",
        rows.describe()
    );
    assert!(!rows.stdout.contains(&secret), "rows printed the value");

    // No file under the agent's data dir holds the value.
    c.agent("a1").kill9();
    let mut files = Vec::new();
    files_under(&c.root().join("a1").join("data"), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("rows.kept.jsonl")),
        "no kept rows: the scan would prove nothing: {files:?}"
    );
    for f in &files {
        let bytes = fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the sensitive value",
            f.display()
        );
    }
    c.note(&format!("scanned {} agent files", files.len()));
    c.finish(&[]);
}
