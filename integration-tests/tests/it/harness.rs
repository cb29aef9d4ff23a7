//! The multi-process harness: a [`Cluster`] of real `baton` processes in one temp dir.
//!
//! Why it is built this way (STYLE item 12): every node gets its own directory and
//! binds port 0, and the harness learns the port from the line the node announces, so
//! tests run in parallel without clashing and without sleeping for readiness. Every
//! wait has a deadline. Nor does a test sleep to let something happen, or to see
//! that nothing did: it waits for the log line that marks the event
//! ([`LogMark`], from a mark taken before it acts) or for the state it expects
//! ([`Cluster::wait_agent_state`], [`Cluster::wait_exec`]); for "nothing
//! happened" it waits for a line that proves the system went past the point.
//! Every process is killed (SIGKILL, by pid) when the cluster is dropped. When a
//! test fails, the cluster's directory (logs, data, packages, CLI transcript) is
//! kept and its path printed. After a passing test, every node's stderr
//! is scanned for ` ERROR ` and `panicked`: an error a person would have to look at is
//! a failure unless the test says it expects it.
//!
//! Everything runs over mutual TLS, as in production: the coordinator creates its CA
//! and an `admin/` client identity in `<data>/tls` on first start, the harness issues
//! each agent a certificate with `baton certs issue`, client commands get
//! `BATON_TLS_DIR=<ca>/admin`, and direct `StartJob` calls use that identity too.
//!
//! `BATON_IT_KEEP=1` keeps the directory of passing tests too.
//!
//! Layout of a cluster directory: `coordinator/`, one directory per agent (each with
//! `stdout.log`, `stderr.log`, `data/`), `packages/` and `cli.log`.

mod cli;
pub mod exec;
pub mod fixtures;
pub mod grpc;
pub mod logs;
mod node;
pub mod otlp;

use std::fs::{self, File};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use cli::{CLI_TIMEOUT, CliOutput};
pub use exec::{AgentView, ExecView};
pub use fixtures::FanoutSpec;
pub use logs::{
    AGENT_DEBUG, AGENT_SESSION_FAILED, COORDINATOR_DEBUG, LogMark, field, log_level,
    log_level_with, read_log, strip_ansi,
};
pub use node::Node;
use node::{NodeSpec, Role, tail};

/// Lease TTL given to test coordinators: small, so that loss is detected fast.
pub const LEASE_TTL_MS: u64 = 2000;
/// Heartbeat interval given to test coordinators.
pub const HEARTBEAT_MS: u64 = 300;

/// The `baton` binary: `BATON_BIN`, else `<target>/debug/baton` beside the test
/// executable (which lives in `<target>/debug/deps/`).
pub fn baton_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BATON_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "BATON_BIN={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let debug_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in <target>/debug/deps/");
    let bin = debug_dir.join("baton");
    assert!(
        bin.is_file(),
        "the baton binary is missing at {}: run `cargo build -p baton-cli` first \
         (or set BATON_BIN)",
        bin.display()
    );
    bin
}

/// Polls `f` every `poll` until it returns true or `timeout` passes; true if it did.
pub fn wait_until(timeout: Duration, poll: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
}

/// A port nobody listens on: bound, then released.
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Options of an agent node.
pub struct AgentOpts {
    pub name: String,
    pub slots: u32,
    /// Coordinator URL; `None` means this cluster's coordinator.
    pub coordinator_url: Option<String>,
    /// Wait for the `baton agent NAME listening on ADDR` line.
    pub wait_announce: bool,
    /// Use this TLS identity instead of issuing one for `name`.
    pub tls_dir: Option<PathBuf>,
    /// More `baton agent` arguments (e.g. `--allow-run-as nobody`).
    pub extra_args: Vec<String>,
    /// More environment variables of the agent process.
    pub env: Vec<(String, String)>,
}

impl AgentOpts {
    pub fn new(name: &str, slots: u32) -> AgentOpts {
        AgentOpts {
            name: name.to_owned(),
            slots,
            coordinator_url: None,
            wait_announce: true,
            tls_dir: None,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Logs `TARGET=LEVEL` too (see [`log_level_with`]): for a test that waits
    /// on a line the agent logs at `debug`.
    pub fn log_targets(mut self, targets: &[(&str, &str)]) -> AgentOpts {
        self.env
            .push(("BATON_LOG".to_owned(), log_level_with(targets)));
        self
    }
}

/// A coordinator, agents and the client commands run against them.
pub struct Cluster {
    test: String,
    root: Option<TempDir>,
    bin: PathBuf,
    coordinator: Option<Node>,
    agents: Vec<Node>,
    cli_log: Mutex<File>,
    finished: bool,
}

impl Cluster {
    /// An empty cluster (no process yet) in a fresh temp dir named after the test.
    pub fn new(test: &str) -> Cluster {
        let bin = baton_bin();
        let root = tempfile::Builder::new()
            .prefix(&format!("baton-it-{test}-"))
            .tempdir()
            .expect("create temp dir");
        let cli_log = File::create(root.path().join("cli.log")).expect("create cli.log");
        Cluster {
            test: test.to_owned(),
            root: Some(root),
            bin,
            coordinator: None,
            agents: Vec::new(),
            cli_log: Mutex::new(cli_log),
            finished: false,
        }
    }

    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("cluster dir").path()
    }

    /// Starts `baton coordinator` with the fast test lease and waits for its address.
    pub fn start_coordinator(&mut self) -> SocketAddr {
        self.start_coordinator_with(&[])
    }

    /// Starts `baton coordinator` with more arguments (e.g. `--cert-ttl 8s`).
    pub fn start_coordinator_with(&mut self, extra: &[&str]) -> SocketAddr {
        self.start_coordinator_env(extra, Vec::new())
    }

    /// Starts `baton coordinator` with an agent lease of `lease_ms` instead of
    /// the fast test lease: for a test whose agents must not be declared lost
    /// while a loaded machine spawns hundreds of processes (losing one is
    /// another test's subject).
    pub fn start_coordinator_with_lease(&mut self, lease_ms: u64) -> SocketAddr {
        let dir = self.root().join("coordinator");
        let args = vec![
            "coordinator".to_owned(),
            "--data-dir".to_owned(),
            dir.join("data").display().to_string(),
            "--lease-ttl-ms".to_owned(),
            lease_ms.to_string(),
            "--heartbeat-ms".to_owned(),
            HEARTBEAT_MS.to_string(),
        ];
        self.start_coordinator_node(args, Vec::new())
    }

    /// Starts `baton coordinator` with more arguments and more environment
    /// variables (e.g. a `BATON_LOG` from [`log_level_with`] that shows a debug
    /// line a test waits for); they stay for its restarts.
    pub fn start_coordinator_env(
        &mut self,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> SocketAddr {
        assert!(self.coordinator.is_none(), "one coordinator per cluster");
        let dir = self.root().join("coordinator");
        let mut args = vec![
            "coordinator".to_owned(),
            "--data-dir".to_owned(),
            dir.join("data").display().to_string(),
            "--lease-ttl-ms".to_owned(),
            LEASE_TTL_MS.to_string(),
            "--heartbeat-ms".to_owned(),
            HEARTBEAT_MS.to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.start_coordinator_node(args, env)
    }

    /// Starts `baton ARGS` as the coordinator, with exactly these arguments (its
    /// data dir must be `<root>/coordinator/data` for [`Cluster::ca_dir`]).
    pub fn start_coordinator_args(&mut self, args: Vec<String>) -> SocketAddr {
        self.start_coordinator_node(args, Vec::new())
    }

    fn start_coordinator_node(
        &mut self,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> SocketAddr {
        assert!(self.coordinator.is_none(), "one coordinator per cluster");
        let mut node = Node::new(NodeSpec {
            name: "coordinator".to_owned(),
            role: Role::Coordinator,
            dir: self.root().join("coordinator"),
            bin: self.bin.clone(),
            args,
        });
        node.set_env(env);
        let addr = node.start();
        self.coordinator = Some(node);
        addr
    }

    /// Starts `baton ARGS` as agent `name`, with exactly these arguments.
    pub fn start_agent_args(&mut self, name: &str, args: Vec<String>) -> SocketAddr {
        let mut node = Node::new(NodeSpec {
            name: name.to_owned(),
            role: Role::Agent,
            dir: self.root().join(name),
            bin: self.bin.clone(),
            args,
        });
        let addr = node.start();
        self.agents.push(node);
        addr
    }

    /// `https://ADDR` of the coordinator (mutual TLS, as in production).
    pub fn coordinator_url(&self) -> String {
        let node = self.coordinator.as_ref().expect("coordinator started");
        format!("https://{}", node.addr())
    }

    /// The CA of this cluster: the coordinator's TLS dir (which it creates on first
    /// start), or, for a cluster without a coordinator, one made by `baton certs init`.
    pub fn ca_dir(&self) -> PathBuf {
        if self.coordinator.is_some() {
            return self.root().join("coordinator").join("data").join("tls");
        }
        let dir = self.root().join("ca");
        if !dir.join("ca.pem").exists() {
            let out = self.cli_raw(&["certs", "init", "--dir", &dir.display().to_string()]);
            out.expect_code(0);
        }
        dir
    }

    /// What a test needs to call an agent's `AgentService` directly over mutual TLS,
    /// as the coordinator does (agents take job calls only from the coordinator's
    /// identity, which lives in the CA dir).
    pub fn agent_tls(&self, agent: &str) -> grpc::AgentTls {
        grpc::AgentTls {
            client_dir: self.ca_dir(),
            agent: agent.to_owned(),
        }
    }

    pub fn coordinator(&mut self) -> &mut Node {
        self.coordinator.as_mut().expect("coordinator started")
    }

    /// Starts an agent of `slots` slots on this cluster's coordinator.
    pub fn start_agent(&mut self, name: &str, slots: u32) -> SocketAddr {
        self.start_agent_with(AgentOpts::new(name, slots))
            .expect("agent announced")
    }

    /// Starts an agent; returns its address when `wait_announce` is set.
    pub fn start_agent_with(&mut self, opts: AgentOpts) -> Option<SocketAddr> {
        let url = opts
            .coordinator_url
            .clone()
            .unwrap_or_else(|| self.coordinator_url());
        let dir = self.root().join(&opts.name);
        // The agent's identity, issued by this cluster's CA (what an operator does once per machine).
        let tls_dir = match &opts.tls_dir {
            Some(d) => d.clone(),
            None => {
                let tls_dir = dir.join("data").join("tls");
                let ca_dir = self.ca_dir();
                let issued = self.cli_raw(&[
                    "certs",
                    "issue",
                    "--ca-dir",
                    &ca_dir.display().to_string(),
                    "--agent",
                    &opts.name,
                    "--out",
                    &tls_dir.display().to_string(),
                ]);
                issued.expect_code(0);
                tls_dir
            }
        };
        let mut args = vec![
            "agent".to_owned(),
            "--coordinator".to_owned(),
            url,
            "--name".to_owned(),
            opts.name.clone(),
            "--slots".to_owned(),
            opts.slots.to_string(),
            "--data-dir".to_owned(),
            dir.join("data").display().to_string(),
            "--tls-dir".to_owned(),
            tls_dir.display().to_string(),
        ];
        args.extend(opts.extra_args.iter().cloned());
        let mut node = Node::new(NodeSpec {
            name: opts.name.clone(),
            role: Role::Agent,
            dir,
            bin: self.bin.clone(),
            args,
        });
        node.set_env(opts.env.clone());
        let addr = if opts.wait_announce {
            Some(node.start())
        } else {
            node.spawn();
            None
        };
        self.agents.push(node);
        addr
    }

    pub fn agent(&mut self, name: &str) -> &mut Node {
        self.agents
            .iter_mut()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// The agent started last.
    pub fn agents_last(&mut self) -> &mut Node {
        self.agents.last_mut().expect("an agent was started")
    }

    /// Runs `baton ARGS` against this cluster's coordinator (`BATON_COORDINATOR`).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_at(&self.coordinator_url(), args, CLI_TIMEOUT)
    }

    /// Starts `baton ARGS` against this cluster's coordinator (admin identity)
    /// with piped stdout and stderr, for a command that runs a while (`exec
    /// logs -f`); the caller reads it, bounds it and kills it by pid.
    pub fn spawn_cli(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(baton_bin())
            .args(args)
            .env("BATON_COORDINATOR", self.coordinator_url())
            .env(
                "BATON_TLS_DIR",
                self.ca_dir().join("admin").display().to_string(),
            )
            .env("BATON_LOG", log_level())
            .env("BATON_CONFIG_DIR", self.root().join("cli-config"))
            .env_remove("BATON_CONTEXT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn baton {args:?}: {e}"))
    }

    /// Runs `baton ARGS` with no coordinator in its environment (for `certs`, `validate`).
    pub fn cli_raw(&self, args: &[&str]) -> CliOutput {
        self.cli_env(args, &[])
    }

    /// Runs `baton ARGS` with only these variables of Baton's in its environment
    /// (the CLI contexts are in `<root>/cli-config` unless `BATON_CONFIG_DIR` is given).
    pub fn cli_env(&self, args: &[&str], envs: &[(&str, String)]) -> CliOutput {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let out = cli::run(&self.bin, &args, envs, self.root(), CLI_TIMEOUT);
        if let Ok(mut log) = self.cli_log.lock() {
            let _ = writeln!(log, "====\n{}\n", out.describe());
        }
        out
    }

    /// Runs `baton ARGS` with `BATON_COORDINATOR=url` and the cluster's admin client
    /// identity in `BATON_TLS_DIR`, killed after `timeout`. Logs the command and its
    /// output to `cli.log`; panics at once if the client panicked.
    pub fn cli_at(&self, url: &str, args: &[&str], timeout: Duration) -> CliOutput {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let tls_dir = self.ca_dir().join("admin").display().to_string();
        let out = cli::run(
            &self.bin,
            &args,
            &[
                ("BATON_COORDINATOR", url.to_owned()),
                ("BATON_TLS_DIR", tls_dir),
            ],
            self.root(),
            timeout,
        );
        if let Ok(mut log) = self.cli_log.lock() {
            let _ = writeln!(log, "==== BATON_COORDINATOR={url}\n{}\n", out.describe());
        }
        assert!(
            !out.stderr.contains("panicked"),
            "client command panicked\n{}",
            out.describe()
        );
        out
    }

    /// `baton agents list --output json`, which must exit 0.
    pub fn agents_list(&self) -> Vec<AgentView> {
        let out = self.cli(&["agents", "list", "--output", "json"]);
        out.expect_code(0);
        exec::parse_agents(&out.json())
    }

    /// Waits (20 s) until exactly `n` agents are listed and all are `ready`.
    pub fn agents_ready(&self, n: usize) -> Vec<AgentView> {
        let mut last = Vec::new();
        let ok = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            last = self.agents_list();
            last.len() == n && last.iter().all(|a| a.state == "ready")
        });
        assert!(
            ok,
            "expected {n} ready agents within 20 s, last listing: {last:?}"
        );
        last
    }

    /// Waits (polling `agents list`) until agent `name` is listed in `state`;
    /// returns that listing. Panics after `timeout` with the last listing.
    pub fn wait_agent_state(&self, name: &str, state: &str, timeout: Duration) -> Vec<AgentView> {
        let mut last = Vec::new();
        let ok = wait_until(timeout, Duration::from_millis(100), || {
            last = self.agents_list();
            last.iter().any(|a| a.name == name && a.state == state)
        });
        assert!(
            ok,
            "agent {name} not listed as {state} within {timeout:?}; last listing: {last:?}"
        );
        last
    }

    /// A mark at the current end of node `name`'s stderr (`coordinator` or an
    /// agent's name): waits on it see only what the node logs from now on.
    pub fn log_mark(&self, name: &str) -> LogMark {
        self.nodes()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"))
            .log_mark()
    }

    /// `baton exec show ID --output json`, which must exit 0.
    pub fn exec_show(&self, id: &str) -> ExecView {
        let out = self.cli(&["exec", "show", id, "--output", "json"]);
        out.expect_code(0);
        ExecView::parse(out.json())
    }

    /// Polls `exec show` until `done` holds for the view; returns that view.
    /// Panics after `timeout` with `what` and the last view.
    pub fn wait_exec(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&ExecView) -> bool,
    ) -> ExecView {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.exec_show(id);
            if done(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "execution {id}: {what} not seen within {timeout:?}: {}",
                view.brief()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `exec show` until the execution is terminal; panics after `timeout`.
    pub fn wait_exec_terminal(&self, id: &str, timeout: Duration) -> ExecView {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.exec_show(id);
            if view.is_terminal() {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} not terminal within {timeout:?}: {}",
                view.brief()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `baton run FILE ARGS... --output json` without `--wait`: the execution id.
    pub fn start_run(&self, package: &Path, extra: &[&str]) -> String {
        let pkg = package.display().to_string();
        let mut args = vec!["run", pkg.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--output", "json"]);
        let out = self.cli(&args);
        out.expect_code(0);
        let v = out.json();
        let id = exec::str_at(&v, "/execution_id");
        assert!(!id.is_empty(), "empty execution id\n{}", out.describe());
        id.to_owned()
    }

    /// Writes a fan-out package pair under `packages/NAME/`; returns the parent path.
    pub fn write_fanout(&self, name: &str, spec: &FanoutSpec) -> PathBuf {
        fixtures::write_fanout(&self.root().join("packages").join(name), spec)
    }

    /// Kills every process, then fails the test if a node's stderr has an unexpected
    /// ` ERROR ` or `panicked` line. `allow` lists substrings of expected lines.
    pub fn finish(mut self, allow: &[&str]) {
        self.finished = true;
        self.kill_all();
        let bad = self.unexpected_log_lines(allow);
        if !bad.is_empty() {
            let dir = self.keep_dir();
            panic!(
                "[{}] unexpected ERROR/panic lines in node logs (kept {}):\n{}",
                self.test,
                dir.display(),
                bad.join("\n")
            );
        }
        if std::env::var_os("BATON_IT_KEEP").is_some() {
            let dir = self.keep_dir();
            eprintln!(
                "[{}] BATON_IT_KEEP: cluster dir kept at {}",
                self.test,
                dir.display()
            );
        }
    }

    fn kill_all(&mut self) {
        for a in &mut self.agents {
            a.kill9();
        }
        if let Some(c) = self.coordinator.as_mut() {
            c.kill9();
        }
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.coordinator.iter().chain(self.agents.iter())
    }

    /// Lines of the nodes' stderr with ` ERROR ` or `panicked`, less the allowed ones.
    fn unexpected_log_lines(&self, allow: &[&str]) -> Vec<String> {
        let mut bad = Vec::new();
        for node in self.nodes() {
            let text = fs::read(node.stderr_path()).unwrap_or_default();
            let text = strip_ansi(&String::from_utf8_lossy(&text));
            for line in text.lines() {
                let suspicious = line.contains(" ERROR ")
                    || line.contains("\"level\":\"ERROR\"")
                    || line.contains("panicked");
                if suspicious && !allow.iter().any(|a| line.contains(a)) {
                    bad.push(format!("{}: {line}", node.name()));
                }
            }
        }
        bad
    }

    /// Stops the temp dir from being deleted; returns its path.
    fn keep_dir(&mut self) -> PathBuf {
        match self.root.take() {
            Some(dir) => dir.keep(),
            None => PathBuf::from("(already kept)"),
        }
    }

    /// Appends a line to `cli.log` (test-level notes, for whoever reads a kept dir).
    pub fn note(&self, msg: &str) {
        if let Ok(mut log) = self.cli_log.lock() {
            let _ = writeln!(log, "==== note: {msg}");
        }
        eprintln!("[{}] {msg}", self.test);
    }

    /// A line with each node's stderr tail, for failure messages.
    fn tails(&self) -> String {
        self.nodes()
            .map(|n| {
                format!(
                    "--- {} ({}) stderr tail ---\n{}",
                    n.name(),
                    n.dir().display(),
                    tail(&n.stderr_path(), 15)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            let tails = self.tails();
            let dir = self.keep_dir();
            eprintln!(
                "[{}] test failed; cluster dir kept at {}\n{tails}",
                self.test,
                dir.display()
            );
        } else if !self.finished {
            let bad = self.unexpected_log_lines(&[]);
            if !bad.is_empty() {
                let dir = self.keep_dir();
                panic!(
                    "[{}] unexpected ERROR/panic lines in node logs (kept {}):\n{}",
                    self.test,
                    dir.display(),
                    bad.join("\n")
                );
            }
        }
    }
}
