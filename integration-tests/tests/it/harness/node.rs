//! One `baton coordinator` or `baton agent` process and its directory.
//!
//! A node owns its directory (`stdout.log`, `stderr.log`, `data/`), learns its
//! address from the line it announces on stdout (never from a fixed sleep), and can be
//! killed with SIGKILL and started again with the same arguments, data dir and port.
//! A node that is dropped kills its process, so no test leaves a daemon behind.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::logs::LogMark;

/// How long a process may take to announce its listening address.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a node is; decides the announcement line it must print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Agent,
}

/// A process started by the harness, with everything needed to start it again.
pub struct Node {
    name: String,
    role: Role,
    dir: PathBuf,
    bin: PathBuf,
    /// Arguments without `--listen`, which changes on restart (port 0, then the port).
    args: Vec<String>,
    listen: String,
    /// More environment variables of the process.
    env: Vec<(String, String)>,
    child: Option<Child>,
    lines: Option<Receiver<String>>,
    addr: Option<SocketAddr>,
    starts: u32,
}

/// How to build a node; `args` excludes `--listen`.
pub struct NodeSpec {
    pub name: String,
    pub role: Role,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub args: Vec<String>,
}

impl Node {
    /// Creates the node's directory; does not start the process.
    pub fn new(spec: NodeSpec) -> Node {
        fs::create_dir_all(spec.dir.join("data")).expect("create node dir");
        Node {
            name: spec.name,
            role: spec.role,
            dir: spec.dir,
            bin: spec.bin,
            args: spec.args,
            listen: "127.0.0.1:0".to_owned(),
            env: Vec::new(),
            child: None,
            lines: None,
            addr: None,
            starts: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the process's extra environment (from its next start on).
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    /// The current end of this node's stderr: a wait on the mark sees only what
    /// the node logs from now on (across restarts: the log is appended to).
    pub fn log_mark(&self) -> LogMark {
        LogMark::at_end(&self.name, &self.stderr_path())
    }

    /// The announced address; panics if the node never announced one.
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| panic!("node {} has not announced an address", self.name))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (stdout to a forwarding thread, stderr appended to
    /// `stderr.log`) without waiting for its announcement.
    pub fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.name
        );
        self.starts += 1;
        let stderr_path = self.stderr_path();
        let mut stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("open stderr.log");
        let _ = writeln!(
            stderr,
            "==== baton-it: start #{} of {}: {} {} --listen {}",
            self.starts,
            self.name,
            self.bin.display(),
            self.args.join(" "),
            self.listen
        );
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .arg("--listen")
            .arg(&self.listen)
            .current_dir(&self.dir)
            .env("BATON_LOG", super::logs::log_level())
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .env_remove("BATON_COORDINATOR")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({}): {e}", self.name, self.bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let log = self.dir.join("stdout.log");
        std::thread::Builder::new()
            .name(format!("stdout-{}", self.name))
            .spawn(move || forward_lines(stdout, &log, &tx))
            .expect("spawn stdout thread");
        self.child = Some(child);
        self.lines = Some(rx);
    }

    /// Starts the process and waits for its announcement; panics with the node's
    /// output if it does not come.
    pub fn start(&mut self) -> SocketAddr {
        self.spawn();
        match self.wait_announced(ANNOUNCE_TIMEOUT) {
            Ok(addr) => addr,
            Err(e) => panic!("{}", self.failure_report(&e)),
        }
    }

    /// The line this node must print once it serves, up to the address.
    fn announcement_prefix(&self) -> String {
        match self.role {
            Role::Coordinator => "baton coordinator listening on ".to_owned(),
            Role::Agent => format!("baton agent {} listening on ", self.name),
        }
    }

    /// Reads stdout lines until the announcement, the process's exit or the timeout.
    pub fn wait_announced(&mut self, timeout: Duration) -> Result<SocketAddr, String> {
        let prefix = self.announcement_prefix();
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no `{prefix}ADDR` line on stdout within {timeout:?}; stdout so far: {seen:?}"
                ));
            }
            let received = self
                .lines
                .as_ref()
                .expect("node was spawned")
                .recv_timeout(left.min(Duration::from_millis(100)));
            match received {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix(&prefix) {
                        let addr: SocketAddr = rest.trim().parse().map_err(|e| {
                            format!("announced address {rest:?} is not host:port: {e}")
                        })?;
                        self.addr = Some(addr);
                        return Ok(addr);
                    }
                    seen.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.try_exit_status() {
                        return Err(format!(
                            "exited with {status} before announcing; stdout: {seen:?}"
                        ));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is ending or closed its stdout.
                    let status = self.wait_exit(Duration::from_secs(5));
                    return Err(format!(
                        "closed stdout before announcing (exit: {status:?}); stdout: {seen:?}"
                    ));
                }
            }
        }
    }

    /// `Some(status)` once the process has exited; `None` while it runs or was never started.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_exit_status() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// True while the process the harness started is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit_status().is_none()
    }

    /// SIGKILL by pid, then reap. A no-op for a node that is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).expect("pid fits i32");
            // ESRCH (already exited, not yet reaped) is fine: wait() reaps it.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.wait();
        }
        self.lines = None;
    }

    /// Starts the process again on the same data dir and the same address it
    /// announced before. Retries a few times only when the port is still held
    /// (EADDRINUSE), which is the kernel's business, not the product's.
    /// More arguments for the next start (a later flag overrides an earlier one).
    pub fn push_args(&mut self, more: &[&str]) {
        self.args.extend(more.iter().map(|s| (*s).to_owned()));
    }

    pub fn restart(&mut self) -> SocketAddr {
        let old = self.addr();
        self.kill9();
        self.listen = old.to_string();
        let mut last_err = String::new();
        for _ in 0..10 {
            let stderr_len = fs::metadata(self.stderr_path()).map_or(0, |m| m.len());
            self.spawn();
            match self.wait_announced(ANNOUNCE_TIMEOUT) {
                Ok(addr) => {
                    assert_eq!(addr, old, "{} restarted on another address", self.name);
                    return addr;
                }
                Err(e) => {
                    let new_stderr = read_from(&self.stderr_path(), stderr_len);
                    self.kill9();
                    let lower = new_stderr.to_lowercase();
                    if !(lower.contains("address already in use")
                        || lower.contains("address in use"))
                    {
                        panic!("{}", self.failure_report(&format!("restart failed: {e}")));
                    }
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        panic!(
            "{}",
            self.failure_report(&format!("port {old} stayed in use: {last_err}"))
        )
    }

    /// A message for a failed start: the error and the tail of the node's stderr.
    pub fn failure_report(&self, err: &str) -> String {
        format!(
            "node {} ({}): {err}\n--- tail of {} ---\n{}",
            self.name,
            self.dir.display(),
            self.stderr_path().display(),
            tail(&self.stderr_path(), 40)
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Copies each stdout line to `log` and to `tx` (the receiver may be gone).
fn forward_lines(stdout: ChildStdout, log: &Path, tx: &Sender<String>) {
    let mut file = OpenOptions::new().create(true).append(true).open(log).ok();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        let _ = tx.send(line);
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(text.len());
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// The last `n` lines of a file, or a note that it cannot be read.
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}
