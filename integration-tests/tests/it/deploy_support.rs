//! What the deploy tests share: where `deploy/` is, what the binary accepts (flags
//! and environment variables from its `--help`), the `baton` command lines found in
//! shell scripts and unit files, bounded external commands, and daemons started
//! from a deploy file's command line (killed by pid when dropped).
//!
//! The deploy files are checked against the binary itself rather than a list kept
//! in the test, so a renamed flag or variable fails the test of every file that
//! still uses the old name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{baton_bin, read_log};

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests is inside the repository")
        .join("deploy")
}

/// Reads `deploy/REL`, panicking with the path when it is missing.
pub fn read_deploy_file(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// True when `program` is found on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Prints why a test did not run; the test then returns (passes) without checking.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// What one `baton SUBCOMMAND --help` lists.
#[derive(Debug, Clone, Default)]
pub struct Help {
    /// `--long` and `-s` option names.
    pub flags: BTreeSet<String>,
    /// Variables named by `[env: NAME=]`.
    pub envs: BTreeSet<String>,
}

/// Variables every subcommand reads besides those its `--help` lists: the log
/// filter of the tracing setup (`cli/src/main.rs`).
pub const COMMON_ENVS: [&str; 1] = ["BATON_LOG"];

/// `baton PATH... --help`, parsed (cached per path).
pub fn help(path: &[String]) -> Help {
    static CACHE: OnceLock<Mutex<BTreeMap<Vec<String>, Help>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(BTreeMap::new()));
    if let Some(h) = cache.lock().expect("help cache").get(path) {
        return h.clone();
    }
    let mut cmd = Command::new(baton_bin());
    cmd.args(path).arg("--help");
    // Values set in this environment would show up in `[env: NAME=value]`.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BATON_") {
            cmd.env_remove(k);
        }
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(20));
    assert_eq!(
        out.code,
        Some(0),
        "`baton {} --help` failed: {}",
        path.join(" "),
        out.stderr
    );
    let parsed = parse_help(&out.stdout);
    cache
        .lock()
        .expect("help cache")
        .insert(path.to_vec(), parsed.clone());
    parsed
}

/// Option names and `[env: …]` variables of a clap help text.
pub fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    for line in text.lines() {
        let t = line.trim_start();
        if !t.starts_with('-') {
            continue;
        }
        for word in t.split([' ', ',']).filter(|w| !w.is_empty()) {
            if !word.starts_with('-') {
                break;
            }
            let name = word.split(['=', '<', '[']).next().unwrap_or(word);
            if name.len() > 1 {
                help.flags.insert(name.to_owned());
            }
        }
    }
    for part in text.split("[env: ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            help.envs.insert(name);
        }
    }
    help
}

/// One `baton …` command line: its subcommand path and the words after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub path: Vec<String>,
    pub args: Vec<String>,
}

impl Invocation {
    /// From the words after the program: leading words up to the first option are
    /// the subcommand path.
    pub fn from_words(words: &[String]) -> Invocation {
        let split = words
            .iter()
            .position(|w| w.starts_with('-'))
            .unwrap_or(words.len());
        Invocation {
            path: words[..split].to_vec(),
            args: words[split..].to_vec(),
        }
    }

    /// The option names used (`--x=v` gives `--x`).
    pub fn flags(&self) -> Vec<String> {
        self.args
            .iter()
            .filter(|a| a.starts_with('-'))
            .map(|a| a.split('=').next().unwrap_or(a).to_owned())
            .collect()
    }

    /// The value of `--flag` (`--flag V` or `--flag=V`), the last if repeated.
    pub fn value(&self, flag: &str) -> Option<String> {
        let mut found = None;
        for (i, a) in self.args.iter().enumerate() {
            if a == flag {
                found = self.args.get(i + 1).cloned();
            } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                found = Some(v.to_owned());
            }
        }
        found
    }

    /// Problems with this command line, measured against the binary's `--help`:
    /// unknown options, and `BATON_*` variables in `envs` it does not read.
    pub fn problems(&self, envs: &[String]) -> Vec<String> {
        let h = help(&self.path);
        let cmd = format!("baton {}", self.path.join(" "));
        let mut out = Vec::new();
        for f in self.flags() {
            if !h.flags.contains(&f) {
                out.push(format!("`{cmd}` has no option {f}"));
            }
        }
        for e in envs {
            if e.starts_with("BATON_") && !h.envs.contains(e) && !COMMON_ENVS.contains(&e.as_str())
            {
                out.push(format!("`{cmd}` reads no variable {e}"));
            }
        }
        out
    }
}

/// Shell words of `text`: blanks split, quotes removed, `\`+newline joins lines;
/// `;`, `&&`, `||`, `|` and newlines become the word `;`. Variables are kept as
/// written (`$NODE_NAME`), redirections (`>`, `<`, `2>`) and their target dropped.
pub fn shell_words(text: &str) -> Vec<String> {
    let text = text.replace("\\\n", " ");
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    let push = |cur: &mut String, in_word: &mut bool, words: &mut Vec<String>| {
        if *in_word {
            words.push(std::mem::take(cur));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if c == '\\' && q == '"' {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                in_word = true;
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            ' ' | '\t' => push(&mut cur, &mut in_word, &mut words),
            // `2>&1`, `>&2`: part of a redirection.
            '&' if cur.ends_with('>') => cur.push(c),
            '\n' | ';' | '|' | '&' => {
                push(&mut cur, &mut in_word, &mut words);
                if matches!(chars.peek(), Some('|' | '&')) {
                    chars.next();
                }
                words.push(";".to_owned());
            }
            _ => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    push(&mut cur, &mut in_word, &mut words);
    // Drop redirections and their targets.
    let mut out = Vec::new();
    let mut skip_next = false;
    for w in words {
        if skip_next {
            skip_next = false;
            continue;
        }
        let redirect = w.trim_start_matches(|c: char| c.is_ascii_digit());
        if redirect.starts_with('>') || redirect.starts_with('<') {
            // `>file` carries its target; `>` alone takes the next word.
            skip_next = redirect.trim_start_matches(['>', '<', '&']).is_empty();
            continue;
        }
        out.push(w);
    }
    out
}

/// Every `baton …` command in a shell script or a unit's command line (the program
/// named `baton` or `…/baton`), up to the end of its command.
pub fn baton_invocations(script: &str) -> Vec<Invocation> {
    let words = shell_words(script);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if w == "baton" || w.ends_with("/baton") {
            let end = words[i + 1..]
                .iter()
                .position(|x| x == ";")
                .map_or(words.len(), |p| i + 1 + p);
            out.push(Invocation::from_words(&words[i + 1..end]));
            i = end;
        }
        i += 1;
    }
    out
}

/// Every `BATON_*` name in a text.
pub fn baton_env_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("BATON_") {
        if i > 0 {
            let prev = text.as_bytes()[i - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' {
                continue;
            }
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// What a finished external command left behind.
#[derive(Debug, Clone)]
pub struct Ran {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics with the whole output unless the command exited 0.
    pub fn ok(self) -> Ran {
        assert_eq!(self.code, Some(0), "{}", self.describe());
        self
    }
}

/// Runs `cmd` to completion with no stdin, killing it (SIGKILL, by pid) after
/// `timeout`; panics if it had to be killed.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Ran {
    let (ran, timed_out) = try_run_bounded(cmd, timeout);
    assert!(!timed_out, "killed after {timeout:?}: {}", ran.describe());
    ran
}

/// [`run_bounded`] that says whether it had to kill instead of panicking (for
/// clean-up paths, which must go on). The command runs in a process group of its
/// own, killed whole on timeout (`docker compose` and scripts start children that
/// hold the output pipes), and the outputs are waited for a bounded time too.
pub fn try_run_bounded(cmd: &mut Command, timeout: Duration) -> (Ran, bool) {
    use std::os::unix::process::CommandExt;
    let what = format!("{cmd:?}");
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let ran = Ran {
                what,
                code: None,
                stdout: String::new(),
                stderr: format!("spawn: {e}"),
            };
            return (ran, false);
        }
    };
    let out = reader(child.stdout.take().expect("piped stdout"));
    let err = reader(child.stderr.take().expect("piped stderr"));
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if started.elapsed() > timeout {
            timed_out = true;
            if let Ok(pgid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            kill_pid(child.id());
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever still holds the pipes, the outputs are not waited for long.
    let join = |h: Receiver<String>| h.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let ran = Ran {
        what,
        code: status.and_then(|s| s.code()),
        stdout: join(out),
        stderr: join(err),
    };
    (ran, timed_out)
}

fn reader<R: Read + Send + 'static>(mut r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

fn kill_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// A daemon started from a deploy file's command line, with exactly the
/// environment given (as systemd or a container would), its stdout lines
/// forwarded to a channel and both outputs kept in its directory. Killed by pid
/// (SIGKILL) when dropped.
pub struct Daemon {
    pub name: String,
    pub dir: PathBuf,
    child: Child,
    lines: Receiver<String>,
}

impl Daemon {
    pub fn spawn(name: &str, dir: &Path, argv: &[String], env: &[(String, String)]) -> Daemon {
        fs::create_dir_all(dir).expect("create daemon dir");
        let stderr = File::create(dir.join("stderr.log")).expect("create stderr.log");
        let (program, args) = argv.split_first().expect("a command line");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({argv:?}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            child,
            lines: rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the stdout line `… listening on ADDR` and returns ADDR.
    pub fn announced(&mut self, timeout: Duration) -> SocketAddr {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.split(" listening on ").nth(1) {
                        return addr.trim().parse().unwrap_or_else(|e| {
                            panic!("{}: bad address in {line:?}: {e}", self.name)
                        });
                    }
                }
                Err(_) => panic!(
                    "{} announced no address within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
    }

    pub fn stderr(&self) -> String {
        read_log(&self.dir.join("stderr.log"))
    }

    /// Lines of its stderr at ERROR level, or a panic.
    pub fn error_lines(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        kill_pid(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn shell_words_split_commands_and_drop_redirections() {
    let words = shell_words(
        "read -r T < \"/x/$N\" || exit 1\nexec baton agent --name \"$N\" \\\n  --listen 0.0.0.0:7401 2>/dev/null > out; echo 'a b'",
    );
    assert_eq!(
        words,
        [
            "read",
            "-r",
            "T",
            ";",
            "exit",
            "1",
            ";",
            "exec",
            "baton",
            "agent",
            "--name",
            "$N",
            "--listen",
            "0.0.0.0:7401",
            ";",
            "echo",
            "a b"
        ]
    );
    let inv = baton_invocations(&words.join(" "));
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].path, ["agent"]);
    assert_eq!(inv[0].value("--listen").as_deref(), Some("0.0.0.0:7401"));
    assert_eq!(inv[0].flags(), ["--name", "--listen"]);
}

#[test]
fn help_text_gives_flags_and_variables() {
    let h = parse_help(
        "Options:\n      --listen <LISTEN>\n          Address [env: BATON_X_LISTEN=] [default: a]\n  -o, --output <OUTPUT>  x [env: BATON_TOKEN]\n  -h, --help\n",
    );
    assert_eq!(
        h.flags.iter().map(String::as_str).collect::<Vec<_>>(),
        ["--help", "--listen", "--output", "-h", "-o"]
    );
    assert_eq!(
        h.envs.iter().map(String::as_str).collect::<Vec<_>>(),
        ["BATON_TOKEN", "BATON_X_LISTEN"]
    );
    assert_eq!(
        baton_env_names("a $BATON_ENROLL_TOKEN b XBATON_NO ${BATON_LOG}")
            .into_iter()
            .collect::<Vec<_>>(),
        ["BATON_ENROLL_TOKEN", "BATON_LOG"]
    );
}

/// Runs `baton ARGS` as a client of the coordinator at `url` with the identity in
/// `tls_dir` (flags, not the environment: nothing of the test's own environment
/// leaks in).
pub fn client(url: &str, tls_dir: &Path, args: &[&str], timeout: Duration) -> Ran {
    let mut cmd = Command::new(baton_bin());
    cmd.args(args)
        .arg("--coordinator")
        .arg(url)
        .arg("--tls-dir")
        .arg(tls_dir)
        .env("NO_COLOR", "1");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BATON_") {
            cmd.env_remove(k);
        }
    }
    run_bounded(&mut cmd, timeout)
}

/// Waits until the coordinator lists exactly `names`, all `ready`; panics with the
/// last listing (or error) after `timeout`.
pub fn wait_agents_ready(url: &str, tls_dir: &Path, names: &[&str], timeout: Duration) {
    let want: BTreeSet<&str> = names.iter().copied().collect();
    let mut last = String::new();
    let ok = crate::harness::wait_until(timeout, Duration::from_millis(250), || {
        let out = client(
            url,
            tls_dir,
            &["agents", "list", "--output", "json"],
            timeout,
        );
        if out.code != Some(0) {
            last = out.describe();
            return false;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(out.stdout.trim()) else {
            last = out.describe();
            return false;
        };
        let agents = crate::harness::exec::parse_agents(&v);
        last = format!("{agents:?}");
        let ready: BTreeSet<&str> = agents
            .iter()
            .filter(|a| a.state == "ready")
            .map(|a| a.name.as_str())
            .collect();
        agents.len() == names.len() && ready == want
    });
    assert!(
        ok,
        "agents {names:?} not all ready within {timeout:?}; last: {last}"
    );
}

/// Runs a fan-out of `children` shell children through the coordinator at `url`
/// and checks that every child succeeded exactly once and every agent of `agents`
/// ran some. The package pair is written under `dir`.
pub fn fanout_through(url: &str, tls_dir: &Path, dir: &Path, children: u32, agents: &[&str]) {
    use crate::harness::FanoutSpec;
    use crate::harness::exec::{ExecView, assert_summary_all_succeeded, str_at};
    // Shell builtins only: the container image holds /bin/sh and nothing else.
    let spec = FanoutSpec::new(children, "echo \"shard $BATON_PARAM_SHARD\"");
    let parent = crate::harness::fixtures::write_fanout(dir, &spec);
    let parent = parent.display().to_string();
    let out = client(
        url,
        tls_dir,
        &["run", &parent, "--wait", "--output", "json"],
        Duration::from_secs(120),
    )
    .ok();
    let line = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    let summary: serde_json::Value = line
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary\n{}", out.describe()));
    let per_agent = assert_summary_all_succeeded(&summary, u64::from(children));
    for name in agents {
        assert!(
            per_agent.get(*name).copied().unwrap_or(0) > 0,
            "agent {name} ran no child: {per_agent:?}"
        );
    }
    let id = str_at(&summary, "/execution_id").to_owned();
    let show = client(
        url,
        tls_dir,
        &["exec", "show", &id, "--output", "json"],
        Duration::from_secs(30),
    )
    .ok();
    let view = ExecView::parse(
        serde_json::from_str(show.stdout.trim())
            .unwrap_or_else(|e| panic!("exec show is not JSON ({e})\n{}", show.describe())),
    );
    view.assert_all_succeeded_once(children as usize, agents);
}

/// A test's temp dir, kept (and its path printed) when the test fails or
/// `BATON_IT_KEEP` is set, so the daemons' logs and the files they were given can
/// be read afterwards.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    test: &'static str,
}

impl TestDir {
    pub fn new(test: &'static str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("baton-it-{test}-"))
            .tempdir()
            .expect("create temp dir");
        TestDir {
            dir: Some(dir),
            test,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("BATON_IT_KEEP").is_some())
            && let Some(dir) = self.dir.take()
        {
            eprintln!("[{}] temp dir kept at {}", self.test, dir.keep().display());
        }
    }
}
