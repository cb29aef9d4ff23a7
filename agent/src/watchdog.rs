//! The process watchdog: ends the agent's jobs when the agent dies, however it
//! dies (SIGKILL and the OOM killer included).
//!
//! Jobs run in their own process groups, so nothing in the kernel ends them
//! with the agent. A parent-death signal (`PR_SET_PDEATHSIG`) is no answer: it
//! needs code between fork and exec (unsafe, forbidden here), fires when the
//! *thread* that forked exits (tokio's blocking threads end when idle), and
//! reaches only the direct child, not a script's background processes. So at
//! start the agent spawns one small process, `baton agent-watchdog` (its own
//! binary again, see [`Launcher`]), in a process group of its own, whose stdin
//! is one end of a socket pair; only the agent holds the other end (close-on-
//! exec, so no job inherits it). The agent writes a `group_record.rs`
//! line for each job process group it starts (`+PGID START`) and empties
//! (`-PGID`): one small non-blocking write per event. When the socket reaches
//! end of file — the agent is gone — the watchdog SIGKILLs every group still
//! recorded that is provably still ours, and exits.
//!
//! The watchdog blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT: a service manager
//! that signals the whole service must not stop it before the agent has
//! drained (the agent's end of the socket closing is its only stop signal).
//! If the watchdog dies while the agent lives, the agent notices at its next
//! write, starts a new one (at most once a second) and sends it the whole set.
//!
//! What it cannot do: a process that left its job's group (`setsid`, a
//! double-forked daemon) is not in any recorded group. Making the agent a child
//! subreaper would catch such processes as its own children, but tokio reaps
//! only the children it spawned (by pid); the agent would collect zombies, and
//! reaping them with `waitpid(-1)` would steal the exit statuses of its jobs.
//! Run the agent under a service manager with a cgroup (systemd's
//! `KillMode=control-group`, the default) for those.

use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};

use crate::group_record::{Line, LiveGroups};

/// Bytes the agent keeps for a watchdog that does not read (stopped); past
/// this it drops them and sends the whole set once the watchdog reads again.
const PENDING_BYTES_MAX: usize = 1 << 20;
/// A dead watchdog is replaced at most this often.
const RESPAWN_INTERVAL: Duration = Duration::from_secs(1);
/// How long the watchdog waits for the groups it killed to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// How to start the watchdog process: a program and its arguments. `baton
/// agent` uses its own executable and the hidden subcommand `agent-watchdog`,
/// whose main is [`main`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// The agent's side: the socket to a running watchdog.
pub(crate) struct Watchdog {
    launcher: Launcher,
    socket: UnixStream,
    child: Child,
    /// Bytes written to the socket's buffer yet.
    pending: Vec<u8>,
    /// The watchdog missed lines: send it a reset and the whole set next time.
    resync: bool,
    spawned_at: Instant,
    respawn_interval: Duration,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

fn spawn(launcher: &Launcher) -> std::io::Result<(UnixStream, Child)> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let child = Command::new(&launcher.program)
        .args(&launcher.args)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Not in the agent's group: a signal to the agent's group (a terminal's
        // Ctrl-C, `kill -- -PGID`) must not take the watchdog with it.
        .process_group(0)
        .spawn()?;
    Ok((ours, child))
}

impl Watchdog {
    /// Starts a watchdog process.
    pub(crate) fn start(launcher: Launcher) -> std::io::Result<Watchdog> {
        let (socket, child) = spawn(&launcher)?;
        Ok(Watchdog {
            launcher,
            socket,
            child,
            pending: Vec::new(),
            resync: false,
            spawned_at: Instant::now(),
            respawn_interval: RESPAWN_INTERVAL,
        })
    }

    /// The watchdog's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `lines` (already applied to `live`, the whole set now). Never
    /// blocks: what the socket does not take now goes with the next send.
    pub(crate) fn send(&mut self, lines: &str, live: &LiveGroups) {
        if self.resync {
            self.resync = false;
            self.pending.clear();
            // The newline ends a line the watchdog may have got only half of.
            self.pending.extend_from_slice(b"\n");
            self.pending
                .extend_from_slice(Line::Reset.to_string().as_bytes());
            self.pending.extend_from_slice(live.lines().as_bytes());
        } else {
            self.pending.extend_from_slice(lines.as_bytes());
        }
        self.flush(live);
    }

    fn flush(&mut self, live: &LiveGroups) {
        let mut respawned = false;
        while !self.pending.is_empty() {
            match self.socket.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.pending.len() > PENDING_BYTES_MAX {
                        warn!(
                            pid = self.child.id(),
                            "the process watchdog does not read; it will get the whole set later"
                        );
                        self.pending.clear();
                        self.resync = true;
                    }
                    return;
                }
                Err(e) => {
                    if respawned || !self.respawn(live, &e) {
                        self.pending.clear();
                        self.resync = true;
                        return;
                    }
                    respawned = true;
                }
            }
        }
    }

    /// Replaces a dead watchdog; its first lines are the whole set.
    fn respawn(&mut self, live: &LiveGroups, cause: &std::io::Error) -> bool {
        if self.spawned_at.elapsed() < self.respawn_interval {
            return false;
        }
        let old = self.child.id();
        // Reap it (it is gone, or going: its end of the socket is closed).
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.spawned_at = Instant::now();
        match spawn(&self.launcher) {
            Ok((socket, child)) => {
                warn!(old_pid = old, pid = child.id(), error = %cause, "the process watchdog ended; started a new one");
                (self.socket, self.child) = (socket, child);
                self.pending = live.lines().into_bytes();
                true
            }
            Err(e) => {
                warn!(old_pid = old, error = %e, "the process watchdog ended and cannot be started again; retrying at the next job");
                false
            }
        }
    }
}

/// The watchdog process's main (`baton agent-watchdog`): reads the agent's
/// records on stdin until end of file, then SIGKILLs the groups still
/// recorded. Call it before any other thread of the process starts (the
/// blocked signals are per thread). Returns the exit code.
pub fn main() -> u8 {
    let mut blocked = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        blocked.add(sig);
    }
    if let Err(e) = blocked.thread_block() {
        warn!(error = %e, "watchdog: cannot block termination signals");
    }
    let killed = serve(std::io::stdin().lock());
    if killed > 0 {
        warn!(
            groups = killed,
            "the agent ended with jobs running: the watchdog ended their process groups"
        );
    } else {
        info!("the agent ended; no job was left running");
    }
    0
}

/// Applies the records read from `input` until end of file (or a read error:
/// the agent is gone either way), then kills what is still recorded; returns
/// how many groups were killed.
pub(crate) fn serve(mut input: impl BufRead) -> usize {
    let mut live = LiveGroups::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                if let Some(l) = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|s| Line::parse(s.trim_end_matches('\n')))
                {
                    live.apply(l);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    live.kill_all(KILL_WAIT)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::group_record::start_time;

    fn sleeper() -> std::process::Child {
        Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn started(child: &std::process::Child) -> String {
        let pgid = child.id();
        Line::Started {
            pgid,
            start: start_time(pgid).unwrap(),
        }
        .to_string()
    }

    #[test]
    fn at_end_of_input_the_live_groups_are_killed_and_no_other() {
        let mut ours = sleeper();
        let mut done = sleeper();
        let mut reset = sleeper();
        let mut stranger = sleeper();
        let input = format!(
            "{}{}-{}\n{}*\n{}+{} 1\n+12",
            started(&reset),
            started(&done),
            done.id(),
            started(&reset),
            started(&ours),
            stranger.id(),
        );
        assert_eq!(serve(input.as_bytes()), 1);
        assert!(ours.wait().is_ok());
        for (what, child) in [
            ("a group that ended", &mut done),
            ("a group forgotten by a reset", &mut reset),
            ("a reused pid", &mut stranger),
        ] {
            assert!(child.try_wait().unwrap().is_none(), "{what} must survive");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A watchdog that copies what it gets to a file, so the test can read it.
    fn recorder(dir: &std::path::Path) -> Launcher {
        Launcher {
            program: "sh".into(),
            args: vec!["-c".into(), format!("cat >> {}", dir.join("got").display())],
        }
    }

    fn got(dir: &std::path::Path, want: &str) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(dir.join("got")) {
                let _ = f.read_to_string(&mut text);
            }
            if text.ends_with(want) || Instant::now() > until {
                return text;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_dead_watchdog_is_replaced_and_gets_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watchdog::start(recorder(dir.path())).unwrap();
        w.respawn_interval = Duration::ZERO;
        let mut live = LiveGroups::default();
        for line in [
            Line::Started { pgid: 10, start: 1 },
            Line::Started { pgid: 11, start: 2 },
            Line::Ended { pgid: 10 },
        ] {
            live.apply(line);
            w.send(&line.to_string(), &live);
        }
        assert_eq!(got(dir.path(), "-10\n"), "+10 1\n+11 2\n-10\n");
        let first = w.pid();
        // The whole group: `sh` may have forked `cat`, which holds the socket.
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(first as i32), Signal::SIGKILL)
            .unwrap();
        // Sends fail until the kernel has closed the dead watchdog's end.
        let line = Line::Started { pgid: 12, start: 3 };
        live.apply(line);
        let until = Instant::now() + Duration::from_secs(10);
        while w.pid() == first && Instant::now() < until {
            w.send(&line.to_string(), &live);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_ne!(w.pid(), first, "no new watchdog");
        w.send(&Line::Ended { pgid: 999_999 }.to_string(), &live);
        let text = got(dir.path(), "-999999\n");
        let mut seen = LiveGroups::default();
        seen.apply_text(&text);
        assert_eq!(seen, live, "{text:?}");
        drop(w);
    }

    #[test]
    fn a_watchdog_that_does_not_read_gets_a_reset_and_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watchdog::start(recorder(dir.path())).unwrap();
        // Stop the reader: the socket buffer fills, lines pile up, then drop.
        let pid = nix::unistd::Pid::from_raw(w.pid() as i32);
        nix::sys::signal::killpg(pid, Signal::SIGSTOP).unwrap();
        let mut live = LiveGroups::default();
        let mut n = 0u32;
        while !w.resync {
            n += 1;
            let line = Line::Started { pgid: n, start: 1 };
            live.apply(line);
            w.send(&line.to_string(), &live);
            let end = Line::Ended { pgid: n };
            live.apply(end);
            w.send(&end.to_string(), &live);
            assert!(n < 1_000_000, "never dropped anything");
        }
        assert!(w.pending.is_empty());
        nix::sys::signal::killpg(pid, Signal::SIGCONT).unwrap();
        let last = Line::Started { pgid: 7, start: 7 };
        live.apply(last);
        w.send(&last.to_string(), &live);
        // Once the reader drains the socket, the reset and the set go through.
        let marker = Line::Ended { pgid: 999_999 };
        let until = Instant::now() + Duration::from_secs(10);
        while !w.pending.is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
            w.send("", &live);
        }
        w.send(&marker.to_string(), &live);
        let text = got(dir.path(), "-999999\n");
        let mut seen = LiveGroups::default();
        seen.apply_text(&text);
        assert_eq!(seen, live);
        drop(w);
    }
}
