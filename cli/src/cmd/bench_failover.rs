//! `baton bench --workload failover`: the leading coordinator SIGKILLed half
//! way through a fan-out, with two standbys, on a 3-member etcd of this
//! machine.
//!
//! Everything is a separate process on loopback, as on a fleet: three etcd
//! members (`store::etcd::local`), three `baton coordinator --store etcd://…`
//! sharing the first one's CA and sealing key (copied into the others' data
//! directories before they start, as `docs/ha.md` says), and the agents, given
//! the list of the three coordinator URLs. The bench's own client is given
//! the list too and follows the leader. When half the children have ended,
//! the leader is SIGKILLed; the fan-out must still end `succeeded`.
//!
//! Reported: `takeover_s`, from the kill to the first dispatch of the new
//! leader (its log line `first dispatch of this term`; the target is the
//! leader lease + 2 s), `elected_s` (the kill to its `leading` line), `lost`
//! (children without a terminal record) and `duplicated` (children listed
//! twice, or counted beyond their number), both 0 when nothing was lost or
//! recorded twice, and `redispatched` (attempts given up and run again).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_coordinator::store::etcd::local::{EtcdCluster, etcd_binary};
use baton_proto as pb;
use serde_json::{Value, json};

use crate::client::CoordinatorOpt;
use crate::error::CliError;

/// Coordinators of the bench: one leader and two standbys.
const COORDINATORS: usize = 3;
/// How long a process may take to be ready (a coordinator, the agents).
const READY: Duration = Duration::from_secs(60);
/// The log line of a term's first dispatch (coordinator/src/scheduler_task/effects.rs).
const FIRST_DISPATCH: &str = "first dispatch of this term";

fn io(e: impl std::fmt::Display) -> CliError {
    CliError::other("IO_FAILED", e.to_string())
}

/// Processes the bench started; killed (SIGKILL) and reaped on drop.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16, CliError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::other("LISTEN_FAILED", e.to_string()))
}

fn spawn_coordinator(
    exe: &Path,
    dir: &Path,
    i: usize,
    port: u16,
    etcd: &str,
    lease_s: u64,
) -> Result<Child, CliError> {
    let data = dir.join(format!("c{i}"));
    let log = std::fs::File::create(dir.join(format!("c{i}.log"))).map_err(io)?;
    std::process::Command::new(exe)
        .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .args(["--store", etcd])
        .args(["--leader-lease", &format!("{lease_s}s")])
        .args(["--advertise", &format!("https://127.0.0.1:{port}")])
        .env("BATON_LOG", "info")
        .env("BATON_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| CliError::other("SPAWN_FAILED", format!("cannot start a coordinator: {e}")))
}

/// Waits until `path` exists.
async fn wait_file(path: &Path, what: &str) -> Result<(), CliError> {
    let deadline = Instant::now() + READY;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(CliError::other(
                "BENCH_NOT_READY",
                format!(
                    "{what} ({}) did not appear within {READY:?}",
                    path.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Copies the first coordinator's CA and sealing key into `to` (a standby's
/// data directory), private, before it starts: one cluster, one CA, one key.
fn share_keys(from: &Path, to: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let tls = to.join("tls");
    std::fs::create_dir_all(&tls).map_err(io)?;
    for d in [to, tls.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    for (src, dst) in [
        (from.join("tls/ca.pem"), tls.join("ca.pem")),
        (from.join("tls/ca.key"), tls.join("ca.key")),
        (from.join("tls/ca.name"), tls.join("ca.name")),
        (from.join("secrets.key"), to.join("secrets.key")),
    ] {
        std::fs::copy(&src, &dst).map_err(io)?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

/// Seconds since the epoch of a log line's leading RFC 3339 UTC timestamp
/// (`2026-12-07T14:43:06.236265Z  INFO …`).
pub fn line_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

/// The earliest time after `after` at which a line containing `needle`
/// was logged, over `logs`.
fn first_after(logs: &[PathBuf], needle: &str, after: f64) -> Option<f64> {
    logs.iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.contains(needle))
                .filter_map(line_time)
                .collect::<Vec<_>>()
        })
        .filter(|&t| t > after)
        .min_by(f64::total_cmp)
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What `baton bench --workload failover` runs (from its flags).
pub struct FailoverSpec {
    pub agents: u32,
    pub slots: u32,
    pub queue: u32,
    pub children: u32,
    pub leader_lease_s: u64,
    pub agent_cpus: Option<String>,
    pub keep: bool,
    /// The parent and child packages of the fan-out.
    pub packages: (String, String),
}

/// Runs the failover workload; the result lines as `bench::run` prints them.
pub async fn run(args: &FailoverSpec) -> Result<(Vec<(&'static str, Value)>, bool), CliError> {
    let binary = etcd_binary().ok_or_else(|| {
        CliError::other(
            "ETCD_NOT_FOUND",
            "--workload failover runs a 3-member etcd on this machine: no `etcd` on PATH (apt-get install etcd-server)",
        )
    })?;
    let etcd = tokio::task::spawn_blocking(move || EtcdCluster::try_start(binary, 3, &[], false))
        .await
        .map_err(|e| CliError::other("INTERNAL", e.to_string()))?
        .map_err(|why| CliError::other("ETCD_NOT_STARTED", why))?;
    let store = format!("etcd://{}", etcd.endpoints().join(","));
    let dir = tempfile::Builder::new()
        .prefix("baton-bench-failover-")
        .tempdir()
        .map_err(io)?;
    let exe = std::env::current_exe().map_err(io)?;
    let lease_s = args.leader_lease_s;
    let ports: Vec<u16> = (0..COORDINATORS)
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let mut coordinators = Procs::default();
    // The first one creates the CA and, once it leads, the sealing key.
    coordinators.0.push(spawn_coordinator(
        &exe,
        dir.path(),
        0,
        ports[0],
        &store,
        lease_s,
    )?);
    let first = dir.path().join("c0");
    wait_file(
        &first.join("secrets.key"),
        "the first coordinator's sealing key",
    )
    .await?;
    for (i, port) in ports.iter().enumerate().skip(1) {
        share_keys(&first, &dir.path().join(format!("c{i}")))?;
        coordinators.0.push(spawn_coordinator(
            &exe,
            dir.path(),
            i,
            *port,
            &store,
            lease_s,
        )?);
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let opt = CoordinatorOpt {
        url: urls.join(","),
        tls_dir: first.join("tls").join("admin"),
        token: None,
        token_file: None,
        context: None,
        failover_wait: 60,
        session: Default::default(),
    };
    let mut client = opt.connect().await?;

    let mut agents = Procs::default();
    for i in 0..args.agents {
        let name = format!("agent-{}", i + 1);
        let token = client
            .create_token(pb::CreateTokenRequest {
                kind: "agent".into(),
                name: name.clone(),
                ttl_s: 600,
                labels: Vec::new(),
            })
            .await
            .map_err(|s| opt.status(s))?
            .into_inner()
            .token;
        let a = crate::local_cluster::spawn_agent(
            &exe,
            &opt.url,
            dir.path(),
            &name,
            (args.slots, args.queue),
            &token,
            args.agent_cpus.as_deref(),
        )?;
        agents.0.push(a.child);
    }
    let deadline = Instant::now() + READY;
    loop {
        let list = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .map_err(|s| opt.status(s))?
            .into_inner();
        if list.agents.iter().filter(|a| a.state == "ready").count() >= args.agents as usize {
            break;
        }
        if Instant::now() > deadline {
            return Err(CliError::other(
                "AGENTS_NOT_READY",
                format!("the agents did not register within {READY:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (parent, child) = args.packages.clone();
    let started = Instant::now();
    let id = client
        .start_execution(pb::StartExecutionRequest {
            bundle: Some(pb::PackageBundle {
                root: "parent.toml".into(),
                files: [
                    ("parent.toml".to_string(), parent),
                    ("child.toml".to_string(), child),
                ]
                .into(),
            }),
            ..Default::default()
        })
        .await
        .map_err(|s| opt.status(s))?
        .into_inner()
        .execution_id;
    let total = u64::from(args.children);
    // Half way: SIGKILL the leader (the first coordinator: it led before the
    // others started).
    loop {
        let s = client
            .get_execution(pb::GetExecutionRequest {
                execution_id: id.clone(),
                children_limit: 1,
                child: None,
            })
            .await
            .map_err(|s| opt.status(s))?
            .into_inner()
            .summary
            .unwrap_or_default();
        if (s.succeeded + s.failed) * 2 >= total {
            break;
        }
        if started.elapsed() > READY * 5 {
            return Err(CliError::other(
                "BENCH_STUCK",
                "the fan-out did not reach half way within 5 minutes",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first coordinator leads (it campaigned alone before the others
    // started); anything else would make the figures meaningless.
    let first_log = dir.path().join("c0.log");
    if first_after(std::slice::from_ref(&first_log), "leading epoch=", 0.0).is_none() {
        return Err(CliError::other(
            "BENCH_NOT_READY",
            format!(
                "the first coordinator does not lead (see {}); the bench kills the leader",
                first_log.display()
            ),
        ));
    }
    let killed_at = now_s();
    if let Some(leader) = coordinators.0.first_mut() {
        let _ = leader.kill();
        let _ = leader.wait();
    }
    let summary = super::follow::wait(&mut client, &opt, &id, false).await?;
    let wall_s = started.elapsed().as_secs_f64();
    let detail = client
        .get_execution(pb::GetExecutionRequest {
            execution_id: id.clone(),
            children_limit: 100_000,
            child: None,
        })
        .await
        .map_err(|s| opt.status(s))?
        .into_inner();
    // Counted child by child, not from the summary's counters: every child
    // must be listed (the list is complete), once, with a terminal state.
    if detail.children_truncated || detail.children_total != total {
        return Err(CliError::other(
            "BENCH_UNCHECKED",
            format!(
                "the execution lists {} of {} children (truncated: {}); cannot check each",
                detail.children.len(),
                total,
                detail.children_truncated
            ),
        ));
    }
    let mut seen = HashSet::new();
    let listed_twice = detail
        .children
        .iter()
        .filter(|c| !seen.insert((c.task_path.clone(), c.item_index)))
        .count() as u64;
    let ended_listed = detail
        .children
        .iter()
        .filter(|c| matches!(c.state.as_str(), "succeeded" | "failed"))
        .count() as u64;
    let ended = summary.succeeded + summary.failed;
    let lost = total.saturating_sub(ended_listed.min(seen.len() as u64));
    // A child listed twice, or counted more often than there are children.
    let duplicated = listed_twice + ended.saturating_sub(total);
    let logs: Vec<PathBuf> = (1..COORDINATORS)
        .map(|i| dir.path().join(format!("c{i}.log")))
        .collect();
    let takeover_s = first_after(&logs, FIRST_DISPATCH, killed_at).map(|t| t - killed_at);
    let elected_s = first_after(&logs, "leading epoch=", killed_at).map(|t| t - killed_at);
    let ok = summary.state == "succeeded" && lost == 0 && duplicated == 0;
    drop(agents);
    drop(coordinators);
    drop(etcd);
    if args.keep || !ok {
        eprintln!("kept {} (coordinator and agent logs)", dir.keep().display());
    }
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let out = vec![
        ("workload", json!("failover")),
        ("status", json!(summary.state)),
        ("children", json!(summary.total)),
        ("succeeded", json!(summary.succeeded)),
        ("failed", json!(summary.failed)),
        ("agents", json!(args.agents)),
        ("coordinators", json!(COORDINATORS)),
        ("etcd_members", json!(3)),
        ("leader_lease_s", json!(lease_s)),
        ("takeover_s", json!(takeover_s.map(round))),
        ("takeover_target_s", json!(lease_s + 2)),
        ("elected_s", json!(elected_s.map(round))),
        ("lost", json!(lost)),
        ("duplicated", json!(duplicated)),
        ("redispatched", json!(summary.lost_attempts)),
        ("wall_s", json!(round(wall_s))),
    ];
    Ok((out, ok))
}

#[cfg(test)]
mod tests {
    use super::line_time;

    #[test]
    fn a_log_lines_timestamp_is_read_as_unix_seconds() {
        // date -u -d 2026-12-07T14:43:06Z +%s = 1796654586
        let t = line_time("2026-12-07T14:43:06.250000Z  INFO leading epoch=5").unwrap();
        assert!((t - 1_796_654_586.25).abs() < 1e-6, "{t}");
        assert_eq!(line_time("1970-01-01T00:00:00Z x"), Some(0.0));
        assert_eq!(line_time("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(line_time("not a time"), None);
        assert_eq!(line_time(""), None);
    }
}
