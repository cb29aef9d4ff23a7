//! Real etcd servers on this machine, for tests and `baton bench --store
//! etcd`: `etcd` from `PATH` (Debian's `etcd-server`), 1 or 3
//! members on free loopback ports, each with a data directory under one
//! temporary directory. [`EtcdCluster::start`] waits until every member says
//! it is healthy; a member can be killed and started again; dropping the
//! cluster kills every member by its pid and removes the directory (kept,
//! with the members' logs, when the test panicked). Without `etcd`,
//! [`EtcdCluster::start`] prints why the test is skipped and returns `None`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a test prints when it cannot run.
pub const SKIPPED: &str = "skipped: etcd not found (apt-get install etcd-server)";

/// How long a fresh cluster may take to elect a leader.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The `etcd` binary: `$BATON_TEST_ETCD`, else `etcd` on `PATH`.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BATON_TEST_ETCD") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP `/health` (and metrics), whatever the client URLs speak.
    metrics_port: u16,
    child: Option<Child>,
}

/// Running etcd members; killed and cleaned up on drop.
pub struct EtcdCluster {
    binary: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    /// Flags given to every member (`--max-txn-ops 64`, ...).
    extra: Vec<String>,
    /// Clients speak TLS (the flags name the files).
    tls: bool,
}

/// Files of a member's client TLS (`--cert-file`, `--key-file`,
/// `--trusted-ca-file` with `--client-cert-auth`).
pub struct ServerTls<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn temp_dir() -> Result<PathBuf, String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "baton-etcd-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot make {} for etcd: {e}", dir.display()))?;
    Ok(dir)
}

/// Whether the member whose metrics URL is at `port` answers `/health` with a leader.
pub fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl EtcdCluster {
    /// Starts `members` (1 or 3) members with etcd's default limits; `None`
    /// (after printing [`SKIPPED`]) when there is no etcd. Panics if etcd is
    /// there but does not become healthy.
    pub fn start(members: usize) -> Option<EtcdCluster> {
        Self::start_with(members, &[])
    }

    /// The same with extra flags for every member (`["--max-txn-ops", "16"]`).
    pub fn start_with(members: usize, extra: &[&str]) -> Option<EtcdCluster> {
        Self::start_full(members, extra, false)
    }

    /// One member whose clients must present a certificate of `tls.ca`.
    pub fn start_tls(tls: ServerTls<'_>) -> Option<EtcdCluster> {
        let files = [
            "--cert-file".as_ref(),
            tls.cert.as_os_str(),
            "--key-file".as_ref(),
            tls.key.as_os_str(),
            "--trusted-ca-file".as_ref(),
            tls.ca.as_os_str(),
            "--client-cert-auth".as_ref(),
        ];
        let files: Vec<String> = files
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        Self::start_full(1, &files, true)
    }

    fn start_full(members: usize, extra: &[&str], tls: bool) -> Option<EtcdCluster> {
        let Some(binary) = etcd_binary() else {
            eprintln!("{SKIPPED}");
            return None;
        };
        match Self::try_start(binary, members, extra, tls) {
            Ok(cluster) => Some(cluster),
            Err(why) => panic!("{why}"),
        }
    }

    /// Starts `members` members of `binary` and waits until they are healthy;
    /// the reason when they could not be started (`baton bench --store etcd`
    /// reports it; the tests' `start` panics with it).
    pub fn try_start(
        binary: PathBuf,
        members: usize,
        extra: &[&str],
        tls: bool,
    ) -> Result<EtcdCluster, String> {
        // Ports are picked free, then bound by etcd: another process may take
        // one meanwhile; a member that exits at once makes a new attempt.
        let mut last = String::new();
        for _ in 0..3 {
            let mut cluster = EtcdCluster::new(binary.clone(), members, extra)?;
            cluster.tls = tls;
            for i in 0..members {
                cluster.spawn(i, "new")?;
            }
            match cluster.wait_healthy(START_PATIENCE) {
                Ok(()) => return Ok(cluster),
                Err(why) => last = why,
            }
        }
        Err(format!("etcd did not start: {last}"))
    }

    fn new(binary: PathBuf, members: usize, extra: &[&str]) -> Result<EtcdCluster, String> {
        let members: Vec<Member> = (0..members)
            .map(|i| {
                Ok(Member {
                    name: format!("m{i}"),
                    client_port: free_port()?,
                    peer_port: free_port()?,
                    metrics_port: free_port()?,
                    child: None,
                })
            })
            .collect::<Result<_, String>>()?;
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Ok(EtcdCluster {
            binary,
            dir: temp_dir()?,
            members,
            initial_cluster,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: false,
        })
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), String> {
        let m = &self.members[i];
        let scheme = if self.tls { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .map_err(|e| format!("cannot open etcd's log file: {e}"))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot open etcd's log file: {e}"))?;
        let child = Command::new(&self.binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "baton-test"])
            .args(["--listen-metrics-urls", &metrics])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until every running member answers `/health` with a leader.
    pub fn wait_healthy(&mut self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            let mut all = true;
            for m in &mut self.members {
                let Some(child) = m.child.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    m.child = None;
                    return Err(format!("member {} exited: {status}", m.name));
                }
                all &= healthy(m.metrics_port);
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not healthy within {} s", patience.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:port` of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The client port of member `i`.
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// Kills member `i` (SIGKILL by pid) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory (it rejoins the cluster);
    /// for tests: panics if it cannot be started.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        if let Err(why) = self.spawn(i, "existing") {
            panic!("{why}");
        }
    }

    /// The directory of the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("etcd data and logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
