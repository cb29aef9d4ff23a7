//! Test packages, written from Rust strings in the TOML format of the contract.
//!
//! Each test writes its own parent/child pair into its cluster directory, so the
//! exact package a test ran is kept with its logs when the test fails.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A parent package that fans a child out over `1..=children`.
#[derive(Debug, Clone)]
pub struct FanoutSpec {
    /// Default of the `children` parameter (`-p children=N` overrides it).
    pub children: u32,
    /// The foreach's `parallelism`.
    pub parallelism: u32,
    /// Shell command of the child (`sh -c CMD`); `$BATON_PARAM_SHARD` is the item.
    pub child_cmd: String,
    /// `retry.attempts` of the foreach (ordinary failures).
    pub attempts: u32,
    /// `retry.lost_attempts` of the foreach (lost agents).
    pub lost_attempts: u32,
}

impl FanoutSpec {
    /// `children` children of `sh -c CMD`, parallelism 50, no retry on failure,
    /// three attempts on loss.
    pub fn new(children: u32, child_cmd: &str) -> FanoutSpec {
        FanoutSpec {
            children,
            parallelism: 50,
            child_cmd: child_cmd.to_owned(),
            attempts: 1,
            lost_attempts: 3,
        }
    }

    pub fn parallelism(mut self, p: u32) -> FanoutSpec {
        self.parallelism = p;
        self
    }
}

/// A TOML basic string (JSON string escapes are a subset of TOML's).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// The parent package text; its child is `child.toml` beside it.
pub fn parent_toml(spec: &FanoutSpec) -> String {
    format!(
        r#"name = "fanout"
description = "baton integration test fan-out"

[parameters.children]
type = "int"
default = {children}

[tasks.fan]
foreach = {{ range = {{ start = 1, end = "${{params.children}}" }} }}
child = "child.toml"
parallelism = {parallelism}
params = {{ shard = "${{item}}" }}
retry = {{ attempts = {attempts}, lost_attempts = {lost} }}
"#,
        children = spec.children,
        parallelism = spec.parallelism,
        attempts = spec.attempts,
        lost = spec.lost_attempts,
    )
}

/// The child package text: one `exec` task running `sh -c CMD`.
pub fn child_toml(cmd: &str) -> String {
    format!(
        r#"name = "work"

[parameters.shard]
type = "string"
required = true

[tasks.run]
exec = ["sh", "-c", {cmd}]
timeout_s = 60
"#,
        cmd = toml_str(cmd)
    )
}

/// Writes `parent.toml` and `child.toml` into `dir` (created) and returns the parent's path.
pub fn write_fanout(dir: &Path, spec: &FanoutSpec) -> PathBuf {
    fs::create_dir_all(dir).expect("create fixture dir");
    fs::write(dir.join("child.toml"), child_toml(&spec.child_cmd)).expect("write child.toml");
    let parent = dir.join("parent.toml");
    fs::write(&parent, parent_toml(spec)).expect("write parent.toml");
    parent
}

/// Writes `text` to `dir/name`, making `dir` first.
pub fn write_file(dir: &Path, name: &str, text: &str) {
    fs::create_dir_all(dir).expect("create package dir");
    fs::write(dir.join(name), text).expect("write package file");
}

/// The lines of a file the test's processes append to (none if it is absent).
pub fn file_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Lower-case hex SHA-256, the package content hash of the protocol.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn sha256_hex_matches_known_vector() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn toml_str_escapes_quotes_and_backslashes() {
    assert_eq!(toml_str(r#"a "b" \c"#), r#""a \"b\" \\c""#);
}
