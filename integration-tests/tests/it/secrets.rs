//! Sensitive parameters end to end: a value given as `-p token=…` reaches every
//! child through `$BATON_PARAM_TOKEN`, also for children dispatched after a
//! coordinator restart (rebuilt from the sealed record), and appears nowhere
//! else: not in any file under the cluster's directory (the coordinator's redb
//! store and key, agents' outboxes and job dirs, every node's stdout and stderr),
//! not in what any client command printed (`run`, `exec show`, `exec list`, all
//! with `--output json`, and the error of a refused start).
//!
//! The child never prints the value: it compares the SHA-256 of its environment
//! variable with the digest written into its package and reports `token_ok=yes|no`
//! as an output. The only place the value is allowed is `cli.log`, the harness's
//! transcript of client commands, because it records their argv (where the user
//! put the value); that file is left out of the scan on purpose.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::exec::str_at;
use crate::harness::fixtures::{sha256_hex, toml_str};
use crate::harness::{CliOutput, Cluster, wait_until};

const AGENTS: [&str; 2] = ["a1", "a2"];
const CHILDREN: usize = 8;

/// `s3cr3t-` and 32 random hex digits.
fn fresh_secret() -> String {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("s3cr3t-{hex}")
}

/// A parent fanning out `CHILDREN` children that each get the parent's sensitive
/// `token`, and a child that waits for the file `gate`, then reports whether its
/// token has `digest`.
fn write_packages(dir: &Path, gate: &Path, digest: &str, child_sensitive: bool) -> PathBuf {
    fs::create_dir_all(dir).expect("create package dir");
    let parent = format!(
        r#"name = "secrets"

[parameters.token]
type = "string"
required = true
sensitive = true

[parameters.children]
type = "int"
default = {CHILDREN}

[tasks.fan]
foreach = {{ range = {{ start = 1, end = "${{params.children}}" }} }}
child = "child.toml"
parallelism = 2
params = {{ token = "${{params.token}}", shard = "${{item}}" }}
retry = {{ attempts = 1, lost_attempts = 3 }}
"#
    );
    let script = format!(
        "while [ ! -e \"{gate}\" ]; do sleep 0.05; done; \
         if [ \"$(printf %s \"$BATON_PARAM_TOKEN\" | sha256sum | cut -d' ' -f1)\" = {digest} ]; \
         then echo token_ok=yes; else echo token_ok=no; fi >> \"$BATON_OUTPUT\"",
        gate = gate.display()
    );
    let child = format!(
        r#"name = "secret-child"

[parameters.token]
type = "string"
required = true
sensitive = {child_sensitive}

[parameters.shard]
type = "int"
required = true

[tasks.run]
exec = ["sh", "-c", {script}]
timeout_s = 60
"#,
        script = toml_str(&script)
    );
    fs::write(dir.join("child.toml"), child).expect("write child.toml");
    fs::write(dir.join("parent.toml"), parent).expect("write parent.toml");
    dir.join("parent.toml")
}

/// Every child succeeded and saw the right token.
fn assert_children_saw_the_token(view: &Value, n: usize) {
    let children = view["children"].as_array().expect("children array");
    assert_eq!(children.len(), n, "{view:#}");
    for ch in children {
        assert_eq!(ch["state"], "succeeded", "{ch}");
        assert_eq!(
            ch["outputs"]["token_ok"], "yes",
            "the child did not get the sensitive value in $BATON_PARAM_TOKEN: {ch}"
        );
    }
}

/// Every file under `dir`, recursively (symlinks not followed).
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_sensitive_parameter_reaches_the_child_and_nothing_else() {
    let mut c = Cluster::new("secrets");
    c.start_coordinator();
    for name in AGENTS {
        c.start_agent(name, 2);
    }
    c.agents_ready(AGENTS.len());

    let secret = fresh_secret();
    let digest = sha256_hex(secret.as_bytes());
    let token = format!("token={secret}");
    let gate = c.root().join("gate");
    let parent = write_packages(
        &c.root().join("packages").join("secrets"),
        &gate,
        &digest,
        true,
    );
    let pkg = parent.display().to_string();
    fs::write(&gate, "").expect("open the gate");
    let mut printed: Vec<CliOutput> = Vec::new();

    // 1. A run to the end: every child saw the value.
    let run = c.cli_at(
        &c.coordinator_url(),
        &["run", &pkg, "-p", &token, "--wait", "--output", "json"],
        Duration::from_secs(60),
    );
    run.expect_code(0);
    let first = str_at(&run.json(), "/execution_id").to_owned();
    printed.push(run);
    let show = c.cli(&["exec", "show", &first, "--output", "json"]);
    show.expect_code(0);
    assert_children_saw_the_token(&show.json(), CHILDREN);
    let on: Vec<String> = show.json()["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|ch| ch["agent"].as_str().unwrap_or("").to_owned())
        .collect();
    for name in AGENTS {
        assert!(
            on.iter().any(|a| a == name),
            "no child ran on {name}: {on:?}"
        );
    }
    printed.push(show);

    // 2. A run across a coordinator restart: with the gate closed, the first two
    //    children wait on their agents and the other six are still pending when the
    //    coordinator is killed; those are dispatched by the restarted coordinator,
    //    with the value opened from the sealed record with the key in the data dir.
    fs::remove_file(&gate).expect("close the gate");
    let out = c.cli(&["run", &pkg, "-p", &token, "--output", "json"]);
    out.expect_code(0);
    let second = str_at(&out.json(), "/execution_id").to_owned();
    printed.push(out);
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        c.exec_show(&second).count_state("running") == 2
    });
    assert!(
        ok,
        "two children did not start: {}",
        c.exec_show(&second).brief()
    );
    let before = c.exec_show(&second);
    assert_eq!(
        before.count_state("pending"),
        CHILDREN - 2,
        "{}",
        before.brief()
    );
    c.coordinator().kill9();
    c.coordinator().restart();
    fs::write(&gate, "").expect("open the gate");
    c.agents_ready(AGENTS.len());
    let end = c.wait_exec_terminal(&second, Duration::from_secs(60));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    let show = c.cli(&["exec", "show", &second, "--output", "json"]);
    show.expect_code(0);
    assert_children_saw_the_token(&show.json(), CHILDREN);
    printed.push(show);
    for args in [
        &["exec", "list", "--output", "json"][..],
        &["exec", "list"][..],
        &["exec", "show", first.as_str()][..],
    ] {
        let out = c.cli(args);
        out.expect_code(0);
        printed.push(out);
    }

    // 3. A child that would take the value as a non-sensitive parameter is refused
    //    (by `validate` and at start), without quoting the value.
    let leaky = write_packages(
        &c.root().join("packages").join("leaky"),
        &gate,
        &digest,
        false,
    );
    let leaky = leaky.display().to_string();
    let out = c.cli_raw(&["validate", &leaky]);
    out.expect_code(2);
    assert!(out.stderr.contains("PARAM_INVALID"), "{}", out.describe());
    printed.push(out);
    let out = c.cli(&["run", &leaky, "-p", &token, "--output", "json"]);
    out.expect_code(2);
    assert!(out.stderr.contains("sensitive"), "{}", out.describe());
    printed.push(out);

    // 4. Nothing printed the value.
    for out in &printed {
        assert!(
            !out.stdout.contains(&secret) && !out.stderr.contains(&secret),
            "a client command printed the sensitive value\n{}",
            out.describe().replace(&secret, "<THE SECRET>")
        );
    }

    // 5. No file holds it: stop every process first so that nothing is half-written.
    for name in AGENTS {
        c.agent(name).kill9();
    }
    c.coordinator().kill9();
    let mut files = Vec::new();
    files_under(c.root(), &mut files);
    let cli_log = c.root().join("cli.log");
    let store = c
        .root()
        .join("coordinator")
        .join("data")
        .join("coordinator.redb");
    assert!(files.contains(&store), "no store at {}", store.display());
    let mut scanned = 0;
    for f in files.iter().filter(|f| **f != cli_log) {
        let bytes = fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{} holds the sensitive value",
            f.display()
        );
        scanned += 1;
    }
    let stored = fs::read(&store).expect("read the store");
    assert!(
        contains(&stored, b"sealed:v1:"),
        "the store holds no sealed value: the scan would prove nothing"
    );
    let key = c
        .root()
        .join("coordinator")
        .join("data")
        .join("secrets.key");
    assert_eq!(fs::metadata(&key).expect("secrets.key").len(), 32);
    c.note(&format!("scanned {scanned} files; none holds the value"));
    c.finish(&[]);
}
