//! Runs one `baton` client command to completion, bounded in time.
//!
//! A client command that hangs must fail the test, not hang it: the command is
//! killed (SIGKILL) at its deadline and the test panics with what it printed.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Default deadline of a client command.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished client command left behind.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub args: Vec<String>,
    /// Exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliOutput {
    /// The command, its exit code and both outputs, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`baton {}` exited with {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.elapsed,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// The last non-empty stdout line, parsed as JSON; panics with the output otherwise.
    pub fn json(&self) -> Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no stdout line to parse as JSON\n{}", self.describe()));
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "last stdout line is not JSON ({e}): {line:?}\n{}",
                self.describe()
            )
        })
    }

    /// Panics unless the command exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}\n{}",
            self.describe()
        );
        self
    }
}

/// Runs `bin args...` with `envs`, killing it after `timeout`.
pub fn run(
    bin: &Path,
    args: &[String],
    envs: &[(&str, String)],
    cwd: &Path,
    timeout: Duration,
) -> CliOutput {
    let started = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(cwd)
        .env("BATON_LOG", super::logs::log_level())
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .env_remove("BATON_COORDINATOR")
        // The user's own CLI contexts must not reach a test's commands.
        .env("BATON_CONFIG_DIR", cwd.join("cli-config"))
        .env_remove("BATON_CONTEXT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let out_thread = reader(child.stdout.take().expect("piped stdout"));
    let err_thread = reader(child.stderr.take().expect("piped stderr"));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            let pid = i32::try_from(child.id()).expect("pid fits i32");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = CliOutput {
        args: args.to_vec(),
        code: status.code(),
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    };
    assert!(
        !timed_out,
        "client command did not finish within {timeout:?} and was killed\n{}",
        out.describe()
    );
    out
}

fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[test]
#[should_panic(expected = "did not finish within")]
fn a_hanging_command_is_killed_at_its_deadline() {
    let args = vec!["30".to_owned()];
    let _ = run(
        Path::new("/bin/sleep"),
        &args,
        &[],
        Path::new("/"),
        Duration::from_millis(300),
    );
}
