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
    // A rotated audit file, as an earlier release left it.
    std::fs::write(data.join("audit.log.1"), b"{}\n").unwrap();
    set_mode(&data.join("audit.log.1"), 0o644);
    c.coordinator().restart();
    assert_eq!(mode(&data), 0o700, "every group and other bit taken");
    assert_eq!(
        mode(&data.join("audit.log.1")),
        0o600,
        "rotated audit files too"
    );
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

/// Lines of `text` holding every one of `needles`.
fn count_lines(text: &str, needles: &[&str]) -> usize {
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

#[test]
fn a_burst_of_unauthenticated_calls_writes_a_bounded_number_of_lines() {
    use baton_proto as pb;
    use pb::control_service_client::ControlServiceClient;

    const CALLS: usize = 500;
    let mut c = Cluster::new("refusal_burst");
    let addr = c.start_coordinator();
    // A caller that trusts the CA but has no certificate and no token.
    let none = c.root().join("none");
    fs::create_dir_all(&none).expect("mkdir");
    fs::copy(c.ca_dir().join("ca.pem"), none.join("ca.pem")).expect("copy ca.pem");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let channel = crate::rpc_matrix::channel(&rt, addr, &none, "coordinator.baton")
        .expect("a TLS connection without a client certificate");
    let refused = rt.block_on(async {
        let mut client = ControlServiceClient::new(channel);
        let mut refused = 0;
        for _ in 0..CALLS {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                client.who_am_i(pb::WhoAmIRequest {}),
            )
            .await
            .expect("WhoAmI answered");
            if let Err(s) = r
                && s.code() == tonic::Code::Unauthenticated
            {
                refused += 1;
            }
        }
        refused
    });
    assert_eq!(refused, CALLS, "every call is refused");

    let audit_path = c.root().join("coordinator/data/audit.log");
    let log_path = c.coordinator().stderr_path();
    let audit = fs::read_to_string(&audit_path).expect("audit.log");
    let full = count_lines(&audit, &["\"call\":\"WhoAmI\"", "\"source\":\"127.0.0.1\""]);
    assert!(
        (1..=2).contains(&full),
        "{full} audit lines for {CALLS} refusals:\n{audit}"
    );
    // The rest comes as one summary when the 10 s window ends (flushed every second).
    let mut summary = String::new();
    let came =
        crate::harness::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            let text = fs::read_to_string(&audit_path).unwrap_or_default();
            summary = text
                .lines()
                .find(|l| l.contains("\"repeated\"") && l.contains("WhoAmI"))
                .unwrap_or_default()
                .to_owned();
            !summary.is_empty()
        });
    assert!(came, "no summary line in audit.log");
    let v: serde_json::Value = serde_json::from_str(&summary).expect("a JSON line");
    assert_eq!(v["source"], "127.0.0.1", "{summary}");
    assert_eq!(v["detail"], "UNAUTHENTICATED", "{summary}");
    assert_eq!(
        v["repeated"].as_u64().unwrap_or(0) as usize + full,
        CALLS,
        "every refusal is counted: {summary}"
    );
    let audit = fs::read_to_string(&audit_path).expect("audit.log");
    let log = read_log(&log_path);
    let audit_lines = count_lines(&audit, &["WhoAmI"]);
    let warn_lines = count_lines(&log, &["WhoAmI"]);
    assert!(audit_lines <= 3, "{audit_lines} audit lines:\n{audit}");
    assert!(warn_lines <= 3, "{warn_lines} log lines:\n{log}");
    assert!(
        log.contains(&format!(
            "{} more refusals from 127.0.0.1 in the last 10 s",
            CALLS - full
        )),
        "{log}"
    );
    c.note(&format!(
        "{CALLS} refused calls: {audit_lines} audit lines, {warn_lines} log lines"
    ));
    c.finish(&[]);
}

#[test]
fn the_audit_log_rotates_at_its_bound() {
    let mut c = Cluster::new("audit_rotation");
    c.start_coordinator_with(&["--audit-max-bytes", "2000", "--audit-keep", "2"]);
    // Each folder created is one audit line of about 150 bytes.
    for i in 0..60 {
        c.cli(&["folder", "create", &format!("/rotation-{i:02}")])
            .expect_code(0);
    }
    let data = c.root().join("coordinator/data");
    let size = |name: &str| fs::metadata(data.join(name)).map(|m| m.len());
    for name in ["audit.log", "audit.log.1", "audit.log.2"] {
        let bytes = size(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(bytes > 0 && bytes <= 2000, "{name} holds {bytes} bytes");
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    assert!(
        size("audit.log.3").is_err(),
        "only two rotated files are kept"
    );
    // The newest lines are in audit.log, whole.
    let text = fs::read_to_string(data.join("audit.log")).expect("audit.log");
    assert!(text.contains("/rotation-59"), "{text}");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {line}"));
    }
    c.finish(&[]);
}

#[test]
fn a_principal_over_its_quota_is_refused_while_another_is_not() {
    let mut c = Cluster::new("quota");
    c.start_coordinator_with(&["--quota-bytes-per-principal", "20000"]);
    c.start_agent("a1", 2);
    c.agents_ready(1);
    let mut ids = Vec::new();
    for who in ["carol", "dave"] {
        let dir = c.root().join(who);
        c.cli_raw(&[
            "certs",
            "issue",
            "--ca-dir",
            &c.ca_dir().display().to_string(),
            "--client",
            who,
            "--out",
            &dir.display().to_string(),
        ])
        .expect_code(0);
        c.cli(&["role", "grant", who, "execute", "/"])
            .expect_code(0);
        ids.push(dir.display().to_string());
    }
    // A bundle of about 8 KB: the child carries a long comment.
    let pkg_dir = c.root().join("packages");
    fs::create_dir_all(&pkg_dir).expect("mkdir");
    let padding = "# padding padding padding padding padding padding padding padding\n".repeat(120);
    fs::write(
        pkg_dir.join("child.toml"),
        format!("{padding}name = \"q-child\"\n\n[tasks.t]\nexec = [\"true\"]\n"),
    )
    .expect("write child");
    fs::write(
        pkg_dir.join("parent.toml"),
        "name = \"q\"\n\n[tasks.fan]\nforeach = { range = { start = 1, end = 1 } }\nchild = \"child.toml\"\n",
    )
    .expect("write parent");
    let parent = pkg_dir.join("parent.toml").display().to_string();
    let run_as = |tls: &str| c.cli(&["run", &parent, "--wait", "--tls-dir", tls]);
    run_as(&ids[0]).expect_code(0);
    run_as(&ids[0]).expect_code(0);
    let over = run_as(&ids[0]);
    assert!(
        over.stderr.contains("error[QUOTA_EXCEEDED]")
            && over.stderr.contains("carol uses")
            && over.stderr.contains("the limit is 20000"),
        "{}",
        over.describe()
    );
    assert_ne!(over.code, Some(0));
    // Another principal is not affected.
    run_as(&ids[1]).expect_code(0);
    c.finish(&[]);
}
