//! A cluster of containers from `deploy/compose/ha/docker-compose.yml`, driven
//! through the docker CLI: its images built here from scratch (nothing pulled),
//! etcd's certificates made by `deploy/compose/ha/make-certs.sh`, a unique
//! compose project per run, and the faults the HA tests inject (kill, stop and
//! start, network disconnect and reconnect). `baton` commands run inside the
//! cluster's `client` container, since the cluster's network is internal.
//!
//! [`HaCluster`] takes everything down when dropped, pass or fail — containers,
//! network, volumes, images — after printing the containers' logs on a panic;
//! [`HaCluster::leftovers`] lets a test check that nothing stayed.
//!
//! Until the coordinator has the HA flags, the same file runs with one
//! coordinator ([`Mode`]): `coord1` on etcd when the binary has the store's
//! flags but not `--advertise`, else on its embedded store (an override file
//! written by the test gives `coord1` its command); agents and the client get
//! its one URL, and `coord2` is not started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::deploy_support::{Ran, deploy_dir, help, on_path, run_bounded, try_run_bounded};
use crate::harness::{baton_bin, wait_until};

/// The agents of the compose file.
pub const AGENTS: [&str; 3] = ["agent-1", "agent-2", "agent-3"];
/// Its coordinators.
pub const COORDINATORS: [&str; 2] = ["coord1", "coord2"];
/// Its etcd members.
pub const ETCD: [&str; 3] = ["etcd1", "etcd2", "etcd3"];
/// Every key Baton writes in etcd starts with this (`--etcd-prefix`).
pub const ETCD_PREFIX: &str = "/baton/";
/// The keys of the coordinators' election (`m/leader` under the prefix, one
/// key per candidate).
pub const ELECTION_PREFIX: &str = "/baton/m/leader/";

/// Which cluster the binary can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Two coordinators on etcd, agents and clients with both URLs.
    Ha,
    /// One coordinator on etcd (the store backend is there, leadership is
    /// not); `why` names the flags the binary lacks.
    EtcdStore { why: String },
    /// One coordinator on its embedded store beside the etcd members.
    SingleCoordinator { why: String },
}

/// The flags of the etcd store backend the compose file gives a coordinator.
const STORE_FLAGS: [&str; 5] = [
    "--store",
    "--etcd-ca",
    "--etcd-cert",
    "--etcd-key",
    "--etcd-prefix",
];
/// The flag of leadership the compose file gives a coordinator.
const LEADERSHIP_FLAGS: [&str; 1] = ["--advertise"];

impl Mode {
    /// From what `baton coordinator --help` lists: every flag the compose file
    /// gives a coordinator ([`Mode::Ha`]), the store's only
    /// ([`Mode::EtcdStore`]), or not even those.
    pub fn detect() -> Mode {
        let flags = help(&["coordinator".to_owned()]).flags;
        let missing = |wanted: &[&str]| -> Vec<String> {
            wanted
                .iter()
                .filter(|f| !flags.contains(**f))
                .map(|f| (*f).to_owned())
                .collect()
        };
        let (store, leadership) = (missing(&STORE_FLAGS), missing(&LEADERSHIP_FLAGS));
        let lacks = |m: &[String], what: &str| {
            format!("`baton coordinator --help` lacks {} ({what})", m.join(", "))
        };
        match (store.is_empty(), leadership.is_empty()) {
            (true, true) => Mode::Ha,
            (true, false) => Mode::EtcdStore {
                why: lacks(
                    &leadership,
                    "no leadership in this binary: one coordinator runs, on etcd",
                ),
            },
            _ => {
                let mut all = store;
                all.extend(leadership);
                Mode::SingleCoordinator {
                    why: lacks(
                        &all,
                        "no etcd store in this binary: one coordinator runs, on its embedded store",
                    ),
                }
            }
        }
    }

    /// Why the two-coordinator scenarios cannot run; `None` in [`Mode::Ha`].
    pub fn why_not_ha(&self) -> Option<&str> {
        match self {
            Mode::Ha => None,
            Mode::EtcdStore { why } | Mode::SingleCoordinator { why } => Some(why),
        }
    }

    /// Whether Baton keeps its state in the etcd members.
    pub fn store_on_etcd(&self) -> bool {
        !matches!(self, Mode::SingleCoordinator { .. })
    }

    /// The compose override file of a one-coordinator mode (`coord1`'s command).
    fn override_file(&self) -> Option<String> {
        let store = match self {
            Mode::Ha => return None,
            Mode::EtcdStore { .. } => {
                " --store etcd://etcd1:2379,etcd2:2379,etcd3:2379 \
                 --etcd-ca $$data/etcd/ca.pem --etcd-cert $$data/etcd/client.pem \
                 --etcd-key $$data/etcd/client.key --etcd-prefix /baton/"
            }
            Mode::SingleCoordinator { .. } => "",
        };
        Some(format!(
            "services:\n  coord1:\n    entrypoint:\n      - /bin/sh\n      - -c\n      - \
             data=/var/lib/baton/coordinator; exec baton coordinator --listen 0.0.0.0:7400 \
             --data-dir $$data{store}\n      - coordinator\n"
        ))
    }
}

/// Why docker clusters cannot run here, or the compose command that works.
pub fn compose_or_why() -> Result<Vec<String>, String> {
    for program in ["docker", "openssl", "etcd"] {
        if !on_path(program) {
            return Err(format!("no `{program}` command"));
        }
    }
    let info = docker(&["info", "--format", "{{.ServerVersion}}"], 30);
    if info.code != Some(0) {
        return Err(format!("no docker engine answers: {}", info.stderr.trim()));
    }
    let candidates: [&[&str]; 2] = [&["docker-compose"], &["docker", "compose"]];
    candidates
        .into_iter()
        .find_map(|c| {
            if !on_path(c[0]) {
                return None;
            }
            let out = run_bounded(
                Command::new(c[0]).args(&c[1..]).arg("version"),
                Duration::from_secs(30),
            );
            (out.code == Some(0)).then(|| c.iter().map(|s| (*s).to_owned()).collect())
        })
        .ok_or_else(|| "neither docker-compose nor `docker compose` works".to_owned())
}

/// `docker ARGS`, bounded (panics only if it has to be killed).
pub fn docker(args: &[&str], timeout_s: u64) -> Ran {
    run_bounded(
        Command::new("docker").args(args),
        Duration::from_secs(timeout_s),
    )
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One key of etcd, from its JSON gateway.
#[derive(Debug, Clone)]
pub struct EtcdKv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub lease: u64,
}

/// Prefix of this test's compose projects: `batonha<pid>x<unique>`.
const PROJECT_PREFIX: &str = "batonha";

/// Removes what earlier runs left when their process was killed (no `Drop`
/// ran): containers, volumes and networks of `batonha<pid>x…` projects whose
/// pid is not alive here and whose containers are over an hour old (a run
/// takes minutes; the age keeps a run in another pid namespace on the same
/// engine safe), and their images. Returns the projects removed.
pub fn reap_dead_projects() -> Vec<String> {
    let out = docker(
        &[
            "ps",
            "-a",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            "{{.Label \"com.docker.compose.project\"}} {{.ID}}",
        ],
        30,
    );
    let hour_ago = now_ms().saturating_sub(3_600_000);
    let mut dead: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(p, _)| {
            p.strip_prefix(PROJECT_PREFIX)
                .and_then(|rest| rest.split_once('x'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .filter(|(_, id)| {
            let created = docker(&["inspect", "--format", "{{.Created}}", id], 30);
            log_time_ms(created.stdout.trim()).is_some_and(|t| t < hour_ago)
        })
        .map(|(p, _)| p.to_owned())
        .collect();
    dead.sort();
    dead.dedup();
    for project in &dead {
        let label = format!("label=com.docker.compose.project={project}");
        for (list, remove) in [
            (&["ps", "-aq"][..], &["rm", "-f", "-v"][..]),
            (&["volume", "ls", "-q"], &["volume", "rm", "-f"]),
            (&["network", "ls", "-q"], &["network", "rm"]),
        ] {
            let mut args = list.to_vec();
            args.extend(["--filter", &label]);
            for id in docker(&args, 30).stdout.lines() {
                let mut rm = remove.to_vec();
                rm.push(id);
                let _ = docker(&rm, 60);
            }
        }
        for image in [
            format!("baton-it-ha:{project}"),
            format!("baton-it-ha-etcd:{project}"),
        ] {
            let _ = docker(&["rmi", "-f", &image], 60);
        }
        eprintln!("removed the leftovers of a killed run: compose project {project}");
    }
    dead
}

/// The cluster of one test run.
pub struct HaCluster {
    pub mode: Mode,
    pub name: String,
    compose: Vec<String>,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    images: Vec<String>,
    ids: BTreeMap<String, String>,
    down: bool,
}

impl HaCluster {
    /// Makes the certificates and images under `root` and brings the cluster up
    /// (every service of `mode`), waiting for its agents to be ready.
    pub fn up(root: &Path, compose: Vec<String>, mode: Mode) -> HaCluster {
        let unique = now_ms() % 1_000_000_000;
        let name = format!("{PROJECT_PREFIX}{}x{unique}", std::process::id());
        let baton_image = format!("baton-it-ha:{name}");
        let etcd_image = format!("baton-it-ha-etcd:{name}");
        let certs = root.join("etcd-certs");
        let mut env = vec![
            ("BATON_IMAGE".to_owned(), baton_image.clone()),
            ("BATON_ETCD_IMAGE".to_owned(), etcd_image.clone()),
            ("BATON_HA_CERTS".to_owned(), certs.display().to_string()),
        ];
        let mut files = vec![deploy_dir().join("compose/ha/docker-compose.yml")];
        if let Some(text) = mode.override_file() {
            env.push((
                "BATON_HA_COORDINATORS".to_owned(),
                "https://coord1:7400".to_owned(),
            ));
            let over = root.join("one-coordinator.yml");
            std::fs::write(&over, text).expect("write override");
            files.push(over);
        }
        // From here on, dropping the value takes down whatever was made.
        let mut cluster = HaCluster {
            mode,
            name,
            compose,
            files,
            env,
            images: vec![baton_image.clone(), etcd_image.clone()],
            ids: BTreeMap::new(),
            down: false,
        };

        run_bounded(
            Command::new("sh")
                .arg(deploy_dir().join("compose/ha/make-certs.sh"))
                .arg(&certs),
            Duration::from_secs(120),
        )
        .ok();
        let baton_ctx = root.join("baton-image");
        run_bounded(
            Command::new("sh")
                .arg(deploy_dir().join("docker/stage.sh"))
                .arg("--bin")
                .arg(baton_bin())
                .args(["--with", "/usr/bin/sleep"])
                .arg(&baton_ctx),
            Duration::from_secs(120),
        )
        .ok();
        let etcd_ctx = root.join("etcd-image");
        run_bounded(
            Command::new("sh")
                .arg(deploy_dir().join("docker/stage-etcd.sh"))
                .arg(&etcd_ctx),
            Duration::from_secs(120),
        )
        .ok();
        for (image, ctx) in [(&baton_image, &baton_ctx), (&etcd_image, &etcd_ctx)] {
            run_bounded(
                Command::new("docker")
                    .args(["build", "-q", "-t", image])
                    .arg(ctx),
                Duration::from_secs(300),
            )
            .ok();
        }

        let mut services: Vec<&str> = ETCD.to_vec();
        match cluster.mode {
            Mode::Ha => services.extend(COORDINATORS),
            _ => services.push("coord1"),
        }
        services.extend(AGENTS);
        services.push("client");
        let mut args = vec!["up", "-d"];
        args.extend(&services);
        cluster.compose_run(&args, 300).ok();
        for s in &services {
            let id = cluster
                .compose_run(&["ps", "-q", s], 30)
                .ok()
                .stdout
                .trim()
                .to_owned();
            assert!(!id.is_empty(), "no container for service {s}");
            cluster.ids.insert((*s).to_owned(), id);
        }
        cluster.wait_agents(&AGENTS, Duration::from_secs(120));
        cluster
    }

    fn compose_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..]);
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.arg("-p").arg(&self.name).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `docker-compose -f … -p NAME ARGS`, bounded.
    pub fn compose_run(&self, args: &[&str], timeout_s: u64) -> Ran {
        run_bounded(&mut self.compose_cmd(args), Duration::from_secs(timeout_s))
    }

    /// The container of `service`.
    pub fn id(&self, service: &str) -> &str {
        self.ids
            .get(service)
            .unwrap_or_else(|| panic!("service {service} was not started"))
    }

    /// The compose network every service is on.
    pub fn network(&self) -> String {
        format!("{}_cluster", self.name)
    }

    /// `baton ARGS` in the `client` container (admin identity, the coordinator
    /// URLs). A call looks for a leader for at most 10 s (`BATON_FAILOVER_WAIT`;
    /// the default 30 s would make each poll during an election that long).
    pub fn baton(&self, args: &[&str]) -> Ran {
        let mut full = vec![
            "exec",
            "-e",
            "NO_COLOR=1",
            "-e",
            "BATON_FAILOVER_WAIT=10",
            self.id("client"),
            "baton",
        ];
        full.extend_from_slice(args);
        docker(&full, 90)
    }

    /// `baton ARGS --output json`, parsed; `Err` describes a failure.
    pub fn baton_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut full = args.to_vec();
        full.extend(["--output", "json"]);
        let out = self.baton(&full);
        if out.code != Some(0) {
            return Err(out.describe());
        }
        let line = out
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {}", out.describe()))
    }

    /// Copies the host directory `dir` to `dest` in the client container.
    pub fn copy_to_client(&self, dir: &Path, dest: &str) {
        docker(
            &[
                "cp",
                &dir.display().to_string(),
                &format!("{}:{dest}", self.id("client")),
            ],
            60,
        )
        .ok();
    }

    /// Copies `path` out of `service`'s container into the host file `to`.
    pub fn copy_from(&self, service: &str, path: &str, to: &Path) -> Ran {
        docker(
            &[
                "cp",
                &format!("{}:{path}", self.id(service)),
                &to.display().to_string(),
            ],
            60,
        )
    }

    /// `docker kill` (SIGKILL) of the service's container.
    pub fn kill(&self, service: &str) {
        docker(&["kill", self.id(service)], 60).ok();
    }

    /// `docker stop` (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&self, service: &str) {
        docker(&["stop", "-t", "10", self.id(service)], 60).ok();
    }

    pub fn start(&self, service: &str) {
        docker(&["start", self.id(service)], 60).ok();
    }

    /// Cuts the service off the cluster's network: it reaches nobody and nobody it.
    pub fn disconnect(&self, service: &str) {
        docker(
            &["network", "disconnect", &self.network(), self.id(service)],
            60,
        )
        .ok();
    }

    /// Puts it back on the network under its service name.
    pub fn connect(&self, service: &str) {
        docker(
            &[
                "network",
                "connect",
                "--alias",
                service,
                &self.network(),
                self.id(service),
            ],
            60,
        )
        .ok();
    }

    /// `(running, restart count)` of the service's container.
    pub fn state(&self, service: &str) -> (bool, u64) {
        let out = docker(
            &[
                "inspect",
                "--format",
                "{{.State.Running}} {{.RestartCount}}",
                self.id(service),
            ],
            30,
        );
        let text = out.stdout.trim().to_owned();
        let mut words = text.split_whitespace();
        let running = words.next() == Some("true");
        let restarts = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        (running, restarts)
    }

    /// Whether the etcd `member` sees a leader (its `/health`, on its loopback).
    pub fn etcd_healthy(&self, member: &str) -> bool {
        let out = docker(
            &[
                "exec",
                self.id(member),
                "curl",
                "-s",
                "-m",
                "5",
                "http://127.0.0.1:2381/health",
            ],
            30,
        );
        out.stdout.contains("\"health\":\"true\"")
    }

    /// A call to the JSON gateway of etcd `member` over mutual TLS (its own
    /// certificate, which carries clientAuth too).
    fn etcd_post(&self, member: &str, path: &str, body: &str) -> Result<Value, String> {
        let tls = "/etc/etcd/tls";
        let out = docker(
            &[
                "exec",
                self.id(member),
                "curl",
                "-s",
                "-m",
                "10",
                "--cacert",
                &format!("{tls}/ca.pem"),
                "--cert",
                &format!("{tls}/member.pem"),
                "--key",
                &format!("{tls}/member.key"),
                "-X",
                "POST",
                "-d",
                body,
                &format!("https://127.0.0.1:2379{path}"),
            ],
            30,
        );
        if out.code != Some(0) {
            return Err(out.describe());
        }
        serde_json::from_str(out.stdout.trim()).map_err(|e| format!("{e}: {}", out.describe()))
    }

    /// Every key under `prefix`, read through `member`.
    pub fn etcd_range(&self, member: &str, prefix: &str) -> Result<Vec<EtcdKv>, String> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = format!(
            "{{\"key\":\"{}\",\"range_end\":\"{}\"}}",
            b64_encode(prefix.as_bytes()),
            b64_encode(&end)
        );
        let v = self.etcd_post(member, "/v3/kv/range", &body)?;
        let num = |kv: &Value, k: &str| {
            kv.get(k)
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        Ok(v.get("kvs")
            .and_then(Value::as_array)
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| EtcdKv {
                        key: String::from_utf8_lossy(&b64_decode(
                            kv.get("key").and_then(Value::as_str).unwrap_or(""),
                        ))
                        .into_owned(),
                        value: b64_decode(kv.get("value").and_then(Value::as_str).unwrap_or("")),
                        create_revision: num(kv, "create_revision"),
                        lease: num(kv, "lease"),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The store revision and the hash of the whole backend as `member` holds it
    /// (`/v3/maintenance/hash`, which leaves out the member's own raft index):
    /// members that agree on everything give equal pairs — etcd's own check
    /// against corruption (3.4's gateway does not serve HashKV).
    pub fn etcd_hash(&self, member: &str) -> Result<(u64, u64), String> {
        let v = self.etcd_post(member, "/v3/maintenance/hash", "{}")?;
        let hash = v
            .get("hash")
            .and_then(|h| {
                h.as_u64()
                    .or_else(|| h.as_str().and_then(|s| s.parse().ok()))
            })
            .ok_or_else(|| format!("no hash in {v}"))?;
        let rev = v
            .pointer("/header/revision")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no revision in {v}"))?;
        Ok((rev, hash))
    }

    /// Which coordinator leads, and its epoch, read from etcd: the candidates'
    /// keys of the election ([`ELECTION_PREFIX`], leased, valued with the
    /// candidate's `--advertise` URL); the oldest (lowest creation revision)
    /// leads and that revision is its epoch — what etcd's own `Leader` answers.
    /// `None` when no member answers or nobody campaigns.
    pub fn leader(&self) -> Option<(String, u64)> {
        let kvs = ETCD
            .iter()
            .find_map(|m| self.etcd_range(m, ELECTION_PREFIX).ok())?;
        let oldest = kvs
            .iter()
            .filter(|kv| kv.lease != 0)
            .min_by_key(|kv| kv.create_revision)?;
        let value = String::from_utf8_lossy(&oldest.value);
        COORDINATORS
            .iter()
            .find(|c| value == format!("https://{c}:7400"))
            .map(|c| ((*c).to_owned(), oldest.create_revision))
    }

    /// Lines of `service`'s log that contain `needle`, logged at or after
    /// `since_ms` (Unix ms, by the timestamp that starts each log line), with
    /// that time.
    pub fn log_lines_since(
        &self,
        service: &str,
        since_ms: u64,
        needle: &str,
    ) -> Vec<(u64, String)> {
        let out = docker(&["logs", self.id(service)], 60);
        format!("{}{}", out.stdout, out.stderr)
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| {
                let t = log_time_ms(l.split_whitespace().next()?)?;
                (t >= since_ms).then(|| (t, l.to_owned()))
            })
            .collect()
    }

    /// Waits until the coordinators list exactly `names`, all ready.
    pub fn wait_agents(&self, names: &[&str], timeout: Duration) {
        let mut last = String::new();
        let ok = wait_until(timeout, Duration::from_millis(500), || {
            match self.baton_json(&["agents", "list"]) {
                Ok(v) => {
                    let agents = crate::harness::exec::parse_agents(&v);
                    last = format!("{agents:?}");
                    agents.len() == names.len()
                        && agents
                            .iter()
                            .all(|a| a.state == "ready" && names.contains(&a.name.as_str()))
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        assert!(
            ok,
            "agents {names:?} not all ready within {timeout:?}; last: {last}"
        );
    }

    /// The state of `agent` in `agents list` (None when the list cannot be read).
    pub fn agent_state(&self, agent: &str) -> Option<String> {
        let v = self.baton_json(&["agents", "list"]).ok()?;
        crate::harness::exec::parse_agents(&v)
            .into_iter()
            .find(|a| a.name == agent)
            .map(|a| a.state)
    }

    /// Containers, volumes and networks still labelled with this project.
    pub fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for what in [
            &["ps", "-aq"][..],
            &["volume", "ls", "-q"],
            &["network", "ls", "-q"],
        ] {
            let mut args = what.to_vec();
            args.extend(["--filter", &label]);
            left.extend(docker(&args, 30).stdout.lines().map(str::to_owned));
        }
        for image in &self.images {
            if docker(&["image", "inspect", image], 30).code == Some(0) {
                left.push(image.clone());
            }
        }
        left
    }

    /// `down -v` (containers, network, volumes) and the images; once.
    pub fn take_down(&mut self) {
        if self.down {
            return;
        }
        // Never panics (it runs from Drop, maybe during a panic): a step that
        // fails or times out is reported and the next one runs anyway.
        // A disconnected container is still the project's: down removes it.
        let (out, timed_out) = try_run_bounded(
            &mut self.compose_cmd(&["down", "-v", "--remove-orphans", "--timeout", "5"]),
            Duration::from_secs(180),
        );
        if timed_out || out.code != Some(0) {
            eprintln!("compose down failed: {}", out.describe());
        }
        for image in &self.images {
            let _ = try_run_bounded(
                Command::new("docker").args(["rmi", "-f", image]),
                Duration::from_secs(60),
            );
        }
        self.down = true;
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.down {
            let (out, _) = try_run_bounded(
                &mut self.compose_cmd(&["logs", "--no-color", "--timestamps"]),
                Duration::from_secs(60),
            );
            eprintln!(
                "--- logs of compose project {} ---\n{}{}",
                self.name, out.stdout, out.stderr
            );
        }
        self.take_down();
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (etcd's gateway encodes keys and values so).
pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64, skipping padding and anything outside the alphabet.
pub fn b64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let Some(v) = B64.iter().position(|&x| x == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Unix ms of a log line's RFC 3339 UTC timestamp (`2026-12-07T13:55:31.502788Z`).
pub fn log_time_ms(stamp: &str) -> Option<u64> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms).ok()
}

/// Seconds since `t`, for reports.
pub fn secs_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[test]
fn one_coordinator_overrides_give_coord1_its_store() {
    let why = String::new();
    assert_eq!(Mode::Ha.override_file(), None);
    let embedded = Mode::SingleCoordinator { why: why.clone() }
        .override_file()
        .expect("an override");
    assert!(
        embedded.contains(
            "- data=/var/lib/baton/coordinator; exec baton coordinator --listen 0.0.0.0:7400 \
             --data-dir $$data\n"
        ),
        "{embedded}"
    );
    let etcd = Mode::EtcdStore { why }
        .override_file()
        .expect("an override");
    assert!(
        etcd.contains(
            "--data-dir $$data --store etcd://etcd1:2379,etcd2:2379,etcd3:2379 --etcd-ca \
             $$data/etcd/ca.pem --etcd-cert $$data/etcd/client.pem --etcd-key \
             $$data/etcd/client.key --etcd-prefix /baton/\n"
        ),
        "{etcd}"
    );
}

#[test]
fn log_timestamps_read_as_unix_ms() {
    assert_eq!(log_time_ms("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(log_time_ms("2000-03-01T00:00:01.5Z"), Some(951_868_801_500));
    assert_eq!(
        log_time_ms("2026-12-07T13:55:31.502788Z"),
        Some(1_796_651_731_502)
    );
    // docker's own (`inspect … {{.Created}}`): nanoseconds.
    assert_eq!(
        log_time_ms("2026-12-07T13:55:31.502788123Z"),
        Some(1_796_651_731_502)
    );
    assert_eq!(log_time_ms("baton"), None);
}

#[test]
fn base64_round_trips_etcd_keys() {
    for s in [
        "",
        "/",
        "/b",
        "/baton/",
        "/baton0",
        "a key with\0bytes\u{ff}",
    ] {
        assert_eq!(b64_decode(&b64_encode(s.as_bytes())), s.as_bytes(), "{s:?}");
    }
    assert_eq!(b64_encode(b"/baton/"), "L2JhdG9uLw==");
    assert_eq!(b64_encode(b"/baton0"), "L2JhdG9uMA==");
}
