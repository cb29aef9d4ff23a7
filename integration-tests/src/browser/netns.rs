//! A network namespace of one test, joined to the host by a veth pair on a private /30.
//!
//! The host side of the pair gets the first address of the /30 (where the server under
//! test listens), the namespace side the second (where chromedriver listens). The
//! namespace has no default route and no DNS, so whatever runs inside reaches only
//! the host-side address. Dropping a [`Netns`] kills every process still inside it (by
//! pid), deletes the namespace and the host side of the pair, also while unwinding from
//! a panic. Namespaces left behind by a test process that was killed (its pid is gone)
//! are removed by the next [`Netns::create`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::tools;

/// Prefix of every namespace this harness creates: `baton-<pid>-<n>`.
const PREFIX: &str = "baton-";
/// The /16 whose /30s the namespaces use (10.233.0.0/16: 16384 of them).
const SUBNET_FIRST_OCTETS: [u8; 2] = [10, 233];
/// How long the namespace side of the pair may take to get its carrier.
const LINK_UP_WAIT: Duration = Duration::from_secs(5);
/// How long the processes of a namespace may take to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace and its veth pair; everything is removed on drop.
pub struct Netns {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

impl Netns {
    /// Creates `baton-<pid>-<n>` with a veth pair on a /30 of 10.233.0.0/16 that no
    /// interface of the host uses yet. Panics with the failing `ip` command.
    pub fn create() -> Netns {
        Self::try_create().unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"))
    }

    /// As [`Netns::create`], with the reason as an error.
    pub fn try_create() -> Result<Netns, String> {
        remove_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{pid}-{n}");
        // Interface names have at most 15 bytes: "bh" + pid (≤ 7 digits) + "x" + n.
        let host_if = format!("bh{pid}x{n}");
        let ns_if = format!("bn{pid}x{n}");
        let (host_ip, ns_ip) = free_slash30(pid, n)?;
        // Owns the names from here on: a failure below still removes what was made.
        let netns = Netns {
            name,
            host_if,
            host_ip,
            ns_ip,
        };
        let name = netns.name.as_str();
        let host = netns.host_if.as_str();
        ip(&["netns", "add", name])?;
        ip(&["link", "add", host, "type", "veth", "peer", "name", &ns_if])?;
        ip(&["link", "set", &ns_if, "netns", name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", host])?;
        ip(&["link", "set", host, "up"])?;
        // No IPv6 link-local address: its duplicate detection ends 1-2 s after the
        // link is up, and Chromium, seeing that address change, aborts the requests
        // in flight with ERR_NETWORK_CHANGED (a page or a script that fails to load).
        ip(&[
            "-n",
            name,
            "link",
            "set",
            "dev",
            &ns_if,
            "addrgenmode",
            "none",
        ])?;
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", name, "link", "set", &ns_if, "up"])?;
        // Chromedriver talks to the browser it starts over the namespace's loopback.
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        // The same for the carrier: every change of the namespace's links is done
        // before anything is started in it.
        let deadline = Instant::now() + LINK_UP_WAIT;
        while !ip(&["-n", name, "-o", "link", "show", "dev", &ns_if])?.contains("LOWER_UP") {
            if Instant::now() > deadline {
                return Err(format!("{ns_if} has no carrier after {LINK_UP_WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(netns)
    }

    /// The namespace's name (`ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host side of the pair: the address a server under test listens on.
    pub fn host_ip(&self) -> IpAddr {
        IpAddr::V4(self.host_ip)
    }

    /// The namespace side of the pair: where processes inside listen.
    pub fn ns_ip(&self) -> IpAddr {
        IpAddr::V4(self.ns_ip)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which execs
    /// the program: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(tools::ip_path());
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The pids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_of(&self.name)
    }

    /// Sends SIGKILL to every process inside the namespace and waits (bounded) until
    /// none is left. Returns the pids that outlived the wait (none, normally).
    pub fn kill_all(&self) -> Vec<i32> {
        kill_all_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let left = self.kill_all();
        if !left.is_empty() {
            eprintln!("netns {}: processes outlived SIGKILL: {left:?}", self.name);
        }
        let _ = ip(&["netns", "del", &self.name]);
        // Deleting the namespace destroys the pair; this covers a failed `set netns`.
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// Runs `ip ARGS`, turning a failure into its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new(tools::ip_path())
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn pids_of(name: &str) -> Vec<i32> {
    ip(&["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill_all_in(name: &str) -> Vec<i32> {
    let deadline = Instant::now() + KILL_WAIT;
    let mut killed = Vec::new();
    loop {
        // A dying process has left the list already (its namespace is unreadable);
        // the ones killed are waited for until they are gone or zombies.
        let pids = pids_of(name);
        killed.retain(|pid| alive(*pid));
        if (pids.is_empty() && killed.is_empty()) || Instant::now() > deadline {
            return pids.into_iter().chain(killed).collect();
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` exists and is not a zombie (state `Z` in `/proc/<pid>/stat`).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    !matches!(state, Some(Some('Z' | 'X')))
}

/// A /30 of 10.233.0.0/16 (host address, namespace address) no host interface has,
/// starting from one derived from the pid and the counter so that concurrent test
/// processes start far apart.
fn free_slash30(pid: u32, n: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let used = ip(&["-4", "-o", "addr", "show"])?;
    let [a, b] = SUBNET_FIRST_OCTETS;
    let start = pid.wrapping_mul(61).wrapping_add(n) % 16384;
    for k in 0..16384u32 {
        let idx = (start + k) % 16384;
        let c = (idx / 64) as u8;
        let d = ((idx % 64) * 4) as u8;
        let host = Ipv4Addr::new(a, b, c, d + 1);
        let ns = Ipv4Addr::new(a, b, c, d + 2);
        let taken = |x: Ipv4Addr| used.contains(&format!("inet {x}/"));
        if !taken(host) && !taken(ns) {
            return Ok((host, ns));
        }
    }
    Err("no free /30 in 10.233.0.0/16".to_string())
}

/// Removes the namespaces `baton-<pid>-<n>` whose test process is gone (killed before
/// its drops ran), with their processes and host-side interfaces.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), Ok(n)) = (pid.parse::<u32>(), n.parse::<u32>()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(name);
        let _ = ip(&["netns", "del", name]);
        let _ = ip(&["link", "del", &format!("bh{pid}x{n}")]);
    }
}
