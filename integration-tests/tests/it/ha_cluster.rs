//! Faults on the cluster of containers of `deploy/compose/ha/` (3 etcd members,
//! 2 coordinators, 3 agents, mutual TLS everywhere), each injected during a
//! running fan-out whose recorded history is then checked by
//! [`crate::history_check`]:
//!
//! - an agent cut off (`docker network disconnect`) longer than the agent lease,
//!   then reconnected: its children re-run elsewhere, its late completions are
//!   refused as stale and recorded nowhere;
//! - one etcd member stopped, then two (no quorum), then one back: etcd keeps
//!   serving with two, stops with one, and its members agree afterwards (same
//!   revision and hash); with the etcd store, Baton makes progress with two, none
//!   with one, and again once a member returns;
//! - the leading coordinator's container killed: the standby takes over and the
//!   fan-out ends with nothing lost or run twice;
//! - the leader cut off from etcd and agents, then reconnected: the standby takes
//!   over with a higher epoch, the old leader stays up (it never exits for a lost
//!   term) and nothing it wrote after losing its lease lands.
//!
//! The binary decides what runs ([`Mode::detect`]): with every flag the compose
//! file gives a coordinator, all of it; with the etcd store's flags but no
//! `--advertise`, one coordinator on etcd (the agent scenario and the whole
//! quorum scenario); with neither, one coordinator on its embedded store beside
//! the etcd members (the agent scenario and etcd's side of the quorum scenario).
//! Each part that cannot run prints `SKIPPED` with the flags the binary lacks,
//! and turns on by itself when a binary has them. Needs docker, docker-compose,
//! openssl and Debian's etcd on this machine
//! (skipped with the reason otherwise). Everything the run made (containers,
//! network, volumes, images; a unique compose project) is removed at the end,
//! pass or fail, and the test checks that nothing is left.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::deploy_support::{TestDir, skip};
use crate::docker_cluster::{
    AGENTS, COORDINATORS, ETCD, HaCluster, Mode, compose_or_why, now_ms, secs_since,
};
use crate::harness::fixtures::{FanoutSpec, write_fanout};
use crate::harness::wait_until;
use crate::history_check::{assert_history, child_cmd};

const TEST: &str = "ha_cluster::faults_during_fanouts_leave_a_consistent_history";
/// Children per fan-out and how long each runs (seconds): 3 agents × 4 slots
/// make one fan-out last about 30 s, long enough for each fault to land in its
/// middle. `BATON_IT_HA_CHILDREN` and `BATON_IT_HA_CHILD_SLEEP` change them
/// (e.g. 2000 and 0.2 for the figures of docs/ha.md).
const CHILDREN: u32 = 360;
const CHILD_SLEEP: &str = "1";

/// The fan-out's size and its children's sleep, from the environment or the defaults.
fn fanout_shape() -> (u32, String) {
    let children = std::env::var("BATON_IT_HA_CHILDREN")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 96)
        .unwrap_or(CHILDREN);
    let sleep = std::env::var("BATON_IT_HA_CHILD_SLEEP")
        .ok()
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .unwrap_or_else(|| CHILD_SLEEP.to_owned());
    (children, sleep)
}
/// The coordinators' agent lease (`--lease-ttl-ms`, default).
const AGENT_LEASE: Duration = Duration::from_millis(5_000);
/// The coordinators' leader lease (`--leader-lease`, default 5 s).
const LEADER_LEASE: Duration = Duration::from_millis(5_000);
/// Bound of one fan-out after its fault is repaired.
const FANOUT_END: Duration = Duration::from_secs(240);

/// A fan-out started in the cluster.
struct Fanout {
    id: String,
    n: usize,
}

/// Writes the package pair of `scenario`, copies it into the client and starts it.
fn start_fanout(cluster: &HaCluster, root: &Path, scenario: &str) -> Fanout {
    let dir = root.join(scenario);
    let (children, sleep) = fanout_shape();
    let mut spec = FanoutSpec::new(children, &child_cmd(&sleep));
    spec.lost_attempts = 5;
    write_fanout(&dir, &spec);
    let dest = format!("/tmp/{scenario}");
    cluster.copy_to_client(&dir, &dest);
    let v = cluster
        .baton_json(&["run", &format!("{dest}/parent.toml")])
        .unwrap_or_else(|e| panic!("{scenario}: cannot start the fan-out: {e}"));
    let id = v
        .get("execution_id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{scenario}: no execution_id in {v}"))
        .to_owned();
    Fanout {
        id,
        n: children as usize,
    }
}

/// Succeeded children and status, as the cluster answers now (`None`: no answer).
fn progress(cluster: &HaCluster, f: &Fanout) -> Option<(u64, String)> {
    let v = cluster
        .baton_json(&["exec", "show", &f.id, "--children", "1"])
        .ok()?;
    let done = v.pointer("/summary/children/succeeded")?.as_u64()?;
    let status = v.get("status")?.as_str()?.to_owned();
    Some((done, status))
}

/// Waits until at least `k` children succeeded; panics after `timeout`.
fn wait_succeeded(cluster: &HaCluster, f: &Fanout, k: u64, timeout: Duration, what: &str) -> u64 {
    let mut last = None;
    let ok = wait_until(timeout, Duration::from_millis(300), || {
        last = progress(cluster, f);
        last.as_ref().is_some_and(|(d, _)| *d >= k)
    });
    assert!(
        ok,
        "{what}: not {k} children succeeded within {timeout:?} (last: {last:?})"
    );
    last.map_or(k, |(d, _)| d)
}

/// Waits for the fan-out to end and returns its whole `exec show`.
fn finish(cluster: &HaCluster, f: &Fanout, scenario: &str) -> Value {
    let mut last = String::new();
    let mut show = Value::Null;
    let ok = wait_until(FANOUT_END, Duration::from_millis(1000), || {
        match cluster.baton_json(&["exec", "show", &f.id, "--children", "100000"]) {
            Ok(v) => {
                let ended = v
                    .get("status")
                    .and_then(Value::as_str)
                    .is_some_and(|s| crate::harness::exec::TERMINAL_EXEC_STATES.contains(&s));
                last = format!("{}", v.get("summary").cloned().unwrap_or(Value::Null));
                show = v;
                ended
            }
            Err(e) => {
                last = e;
                false
            }
        }
    });
    assert!(
        ok,
        "{scenario}: the fan-out did not end within {FANOUT_END:?}; last: {last}"
    );
    assert_eq!(
        show.get("status").and_then(Value::as_str),
        Some("succeeded"),
        "{scenario}: the fan-out did not succeed: {last}"
    );
    show
}

/// Prints a figure of a scenario (the lines docs/ha.md's table is filled from).
fn figure(scenario: &str, name: &str, value: f64) {
    eprintln!("FIGURE {scenario} {name}={value:.1}s");
}

/// An agent cut off for longer than its lease, then reconnected.
fn agent_cut_off(cluster: &HaCluster, root: &Path) {
    const S: &str = "agent_cut_off";
    let victim = "agent-2";
    let f = start_fanout(cluster, root, S);
    wait_succeeded(cluster, &f, 24, Duration::from_secs(120), S);
    let cut = Instant::now();
    cluster.disconnect(victim);
    let lost = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        cluster.agent_state(victim).as_deref() == Some("lost")
    });
    assert!(
        lost,
        "{S}: {victim} was not declared lost within 60 s of its cut"
    );
    figure(S, "declared_lost_after", secs_since(cut));
    // Past the lease, its children run elsewhere: wait until one has.
    let mut rerun = false;
    let seen = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let Ok(v) = cluster.baton_json(&["exec", "show", &f.id, "--children", "100000"]) else {
            return false;
        };
        rerun = v
            .get("children")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    let agents = c.get("attempt_agents").and_then(Value::as_array);
                    agents.is_some_and(|a| {
                        a.len() > 1 && a[0].as_str() == Some(victim) && c["state"] == "succeeded"
                    })
                })
            });
        rerun
    });
    assert!(
        seen,
        "{S}: no child of {victim} re-ran elsewhere within 60 s"
    );
    figure(S, "first_rerun_done_after", secs_since(cut));
    assert!(
        cut.elapsed() > AGENT_LEASE,
        "{S}: cut shorter than the lease"
    );
    cluster.connect(victim);
    let back = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        cluster.agent_state(victim).as_deref() == Some("ready")
    });
    assert!(
        back,
        "{S}: {victim} not ready again within 60 s of its reconnection"
    );
    let show = finish(cluster, &f, S);
    let checked = assert_history(&show, f.n, S);
    assert!(
        !checked.retried.is_empty(),
        "{S}: no child needed a second attempt"
    );
    for (index, agents) in &checked.retried {
        assert_eq!(
            agents.first().map(String::as_str),
            Some(victim),
            "{S}: child {index} re-ran though its first agent was not the one cut off: {agents:?}"
        );
        assert_ne!(
            agents.last().map(String::as_str),
            Some(victim),
            "{S}: child {index} ended on the agent that was cut off: {agents:?}"
        );
    }
    // Its children finished while it was cut off; their completions, sent on its
    // return, were refused as from superseded attempts (the checker showed none
    // of them in a record).
    assert!(
        checked.stale_events >= 1,
        "{S}: the late completions of {victim} were not counted as stale (stale_events 0); \
         retried: {:?}",
        checked.retried
    );
    eprintln!(
        "{S}: ok — {} children re-ran, {} stale events refused, per agent {:?}",
        checked.retried.len(),
        checked.stale_events,
        checked.per_agent
    );
}

/// Waits until `member`'s health is `want`.
fn wait_etcd(cluster: &HaCluster, member: &str, want: bool, timeout: Duration, what: &str) {
    let ok = wait_until(timeout, Duration::from_millis(250), || {
        cluster.etcd_healthy(member) == want
    });
    assert!(
        ok,
        "{what}: {member} health did not become {want} within {timeout:?}"
    );
}

/// The members' (revision, hash) agree once they have caught up.
fn assert_etcd_members_agree(cluster: &HaCluster, what: &str) {
    let mut last = Vec::new();
    let agree = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        last = ETCD.iter().map(|m| cluster.etcd_hash(m)).collect();
        last.iter().all(Result::is_ok) && last.windows(2).all(|w| w[0] == w[1])
    });
    assert!(
        agree,
        "{what}: the etcd members disagree (revision, hash): {last:?}"
    );
}

/// No progress for `window`: the succeeded count (when it can be read at all)
/// never goes past `base`. Returns how many reads were answered.
fn assert_no_progress(
    cluster: &HaCluster,
    f: &Fanout,
    base: u64,
    window: Duration,
    what: &str,
) -> usize {
    let end = Instant::now() + window;
    let mut answered = 0;
    while Instant::now() < end {
        if let Some((done, _)) = progress(cluster, f) {
            answered += 1;
            assert!(
                done <= base,
                "{what}: {done} children succeeded without an etcd quorum (had {base})"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    answered
}

/// The coordinators this mode started.
fn coordinators(cluster: &HaCluster) -> Vec<&'static str> {
    match cluster.mode {
        Mode::Ha => COORDINATORS.to_vec(),
        _ => vec!["coord1"],
    }
}

/// One etcd member stopped, then two, then one back.
fn etcd_quorum(cluster: &HaCluster, root: &Path) {
    const S: &str = "etcd_quorum";
    let baton_on_etcd = cluster.mode.store_on_etcd();
    if let Mode::SingleCoordinator { why } = &cluster.mode {
        skip(
            &format!("{TEST} [{S}: Baton's progress without quorum]"),
            &format!("{why}; only etcd's side of the scenario runs"),
        );
    }
    let f = baton_on_etcd.then(|| start_fanout(cluster, root, S));
    if let Some(f) = &f {
        wait_succeeded(cluster, f, 24, Duration::from_secs(120), S);
    }
    let restarts_before: std::collections::BTreeMap<&str, u64> = coordinators(cluster)
        .into_iter()
        .map(|c| (c, cluster.state(c).1))
        .collect();
    // One member down: the other two keep a quorum.
    cluster.stop("etcd3");
    wait_etcd(cluster, "etcd1", true, Duration::from_secs(30), S);
    if let Some(f) = &f {
        let before = progress(cluster, f).map_or(0, |p| p.0);
        wait_succeeded(
            cluster,
            f,
            before + 12,
            Duration::from_secs(60),
            &format!("{S} (2 of 3 members)"),
        );
    }
    // Two down: no quorum, no leader, no progress.
    let before = f
        .as_ref()
        .and_then(|f| progress(cluster, f))
        .map_or(0, |p| p.0);
    cluster.stop("etcd2");
    let lost = Instant::now();
    wait_etcd(cluster, "etcd1", false, Duration::from_secs(30), S);
    figure(S, "etcd_unhealthy_after", secs_since(lost));
    if let Some(f) = &f {
        // Commits in flight when the quorum went may still land, and the leader
        // keeps its term until its lease runs out: watch that long, keeping the
        // highest count seen, then nothing may move past it.
        let settle_end = Instant::now() + LEADER_LEASE + Duration::from_secs(2);
        let mut base = before;
        while Instant::now() < settle_end {
            if let Some((done, _)) = progress(cluster, f) {
                base = base.max(done);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let answered = assert_no_progress(cluster, f, base, Duration::from_secs(10), S);
        eprintln!(
            "{S}: no progress past {base} for 10 s without quorum ({answered} reads answered)"
        );
        cluster.start("etcd2");
        let back = Instant::now();
        wait_etcd(cluster, "etcd1", true, Duration::from_secs(60), S);
        wait_succeeded(
            cluster,
            f,
            base + 12,
            Duration::from_secs(90),
            &format!("{S} (quorum back)"),
        );
        figure(S, "progress_again_after", secs_since(back));
    } else {
        cluster.start("etcd2");
        wait_etcd(cluster, "etcd1", true, Duration::from_secs(60), S);
    }
    cluster.start("etcd3");
    for c in coordinators(cluster) {
        let (running, restarts) = cluster.state(c);
        eprintln!(
            "{S}: {c} running {running}, restarted {} times by docker during the scenario",
            restarts - restarts_before.get(c).copied().unwrap_or(0)
        );
    }
    for m in ETCD {
        wait_etcd(cluster, m, true, Duration::from_secs(60), S);
    }
    assert_etcd_members_agree(cluster, S);
    if let Some(f) = &f {
        let show = finish(cluster, f, S);
        assert_history(&show, f.n, S);
        assert_etcd_members_agree(cluster, &format!("{S} (after the fan-out)"));
    }
    eprintln!("{S}: ok");
}

/// The current leader, waiting for one to be known.
fn wait_leader(
    cluster: &HaCluster,
    not: Option<&str>,
    timeout: Duration,
    what: &str,
) -> (String, u64) {
    let mut last = None;
    let ok = wait_until(timeout, Duration::from_millis(250), || {
        last = cluster.leader();
        last.as_ref().is_some_and(|(c, _)| Some(c.as_str()) != not)
    });
    if !ok {
        let prefix = crate::docker_cluster::ETCD_PREFIX;
        let keys: Vec<String> = ETCD
            .iter()
            .find_map(|m| cluster.etcd_range(m, prefix).ok())
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                format!(
                    "{} (lease {}, rev {})",
                    kv.key, kv.lease, kv.create_revision
                )
            })
            .collect();
        panic!(
            "{what}: no leader{} in etcd within {timeout:?} (last: {last:?}); the election \
             keys under {prefix} are leased keys whose value names https://coordN:7400; keys \
             there: {keys:?}",
            not.map(|n| format!(" other than {n}")).unwrap_or_default(),
        );
    }
    last.unwrap_or_default()
}

/// The leader's container killed.
fn leader_killed(cluster: &HaCluster, root: &Path) {
    const S: &str = "leader_killed";
    let f = start_fanout(cluster, root, S);
    let before = wait_succeeded(cluster, &f, 24, Duration::from_secs(120), S);
    let (old, epoch) = wait_leader(cluster, None, Duration::from_secs(30), S);
    let killed = Instant::now();
    cluster.kill(&old);
    let (new, new_epoch) = wait_leader(cluster, Some(&old), Duration::from_secs(60), S);
    figure(S, "new_leader_after", secs_since(killed));
    assert!(
        new_epoch > epoch,
        "{S}: epoch did not grow ({epoch} → {new_epoch})"
    );
    let now = progress(cluster, &f).map_or(before, |p| p.0);
    wait_succeeded(
        cluster,
        &f,
        now + 12,
        Duration::from_secs(60),
        &format!("{S} (under {new})"),
    );
    figure(S, "progress_again_after", secs_since(killed));
    let show = finish(cluster, &f, S);
    assert_history(&show, f.n, S);
    cluster.start(&old);
    let up = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        cluster.state(&old).0
    });
    assert!(up, "{S}: {old} did not start again");
    eprintln!("{S}: ok — {old} (epoch {epoch}) killed, {new} leads (epoch {new_epoch})");
}

/// The leader cut off from etcd and agents, then reconnected.
fn leader_cut_off(cluster: &HaCluster, root: &Path) {
    const S: &str = "leader_cut_off";
    let f = start_fanout(cluster, root, S);
    let before = wait_succeeded(cluster, &f, 24, Duration::from_secs(120), S);
    let (old, epoch) = wait_leader(cluster, None, Duration::from_secs(30), S);
    let (_, restarts) = cluster.state(&old);
    let cut_ms = now_ms();
    let cut = Instant::now();
    cluster.disconnect(&old);
    let (new, new_epoch) = wait_leader(cluster, Some(&old), Duration::from_secs(60), S);
    figure(S, "new_leader_after", secs_since(cut));
    assert!(
        new_epoch > epoch,
        "{S}: epoch did not grow ({epoch} → {new_epoch})"
    );
    let now = progress(cluster, &f).map_or(before, |p| p.0);
    wait_succeeded(
        cluster,
        &f,
        now + 12,
        Duration::from_secs(60),
        &format!("{S} (under {new})"),
    );
    figure(S, "progress_again_after", secs_since(cut));
    cluster.connect(&old);
    // Back on the network, the old leader finds its term gone: it must neither
    // lead again while the new one holds its lease nor exit.
    let settle = Instant::now() + Duration::from_secs(15);
    while Instant::now() < settle {
        if let Some((leader, e)) = cluster.leader() {
            assert!(
                leader == new && e == new_epoch,
                "{S}: after reconnecting {old}, the leader is {leader} (epoch {e}), not {new} \
                 (epoch {new_epoch})"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (running, restarts_after) = cluster.state(&old);
    assert!(
        running && restarts_after == restarts,
        "{S}: {old} exited after losing its term (running {running}, restarts {restarts} → \
         {restarts_after})"
    );
    let show = finish(cluster, &f, S);
    assert_history(&show, f.n, S);
    // It stopped leading before the new leader started: its "leadership lost"
    // (when it gave up its term, no later than etcd ended its lease) is logged
    // before the new leader's "leading … epoch=N" (same host clock).
    let lost = cluster.log_lines_since(&old, cut_ms, "leadership lost");
    let leading = cluster.log_lines_since(&new, cut_ms, "leading");
    let started = leading
        .iter()
        .find(|(_, l)| l.contains(&format!("epoch={new_epoch}")));
    let (Some((lost_ms, lost_line)), Some((lead_ms, lead_line))) = (lost.first(), started) else {
        panic!(
            "{S}: cannot order the terms: {old} logged no \"leadership lost\" after the cut \
             ({lost:?}) or {new} no \"leading … epoch={new_epoch}\" ({leading:?})"
        );
    };
    assert!(
        lost_ms < lead_ms,
        "{S}: {new} started leading before {old} gave up its term:\n  {lost_line}\n  {lead_line}"
    );
    figure(
        S,
        "old_stopped_before_new_led_by",
        (lead_ms - lost_ms) as f64 / 1000.0,
    );
    figure(
        S,
        "old_stopped_after",
        lost_ms.saturating_sub(cut_ms) as f64 / 1000.0,
    );
    eprintln!("{S}: ok — {old} (epoch {epoch}) cut off, {new} leads (epoch {new_epoch})");
}

#[test]
fn faults_during_fanouts_leave_a_consistent_history() {
    let compose = match compose_or_why() {
        Ok(c) => c,
        Err(why) => {
            skip(TEST, &why);
            return;
        }
    };
    crate::docker_cluster::reap_dead_projects();
    let mode = Mode::detect();
    let root = TestDir::new("ha-cluster");
    let started = Instant::now();
    let mut cluster = HaCluster::up(root.path(), compose, mode.clone());
    figure("setup", "cluster_up", secs_since(started));
    for m in ETCD {
        assert!(cluster.etcd_healthy(m), "{m} is not healthy after `up`");
    }
    if mode == Mode::Ha {
        // Both coordinators hold the same CA and sealing key (handed out by `keys`).
        for file in ["tls/ca.pem", "secrets.key"] {
            let copies: Vec<Vec<u8>> = COORDINATORS
                .iter()
                .map(|c| {
                    let to = root.path().join(format!("{c}-{}", file.replace('/', "-")));
                    cluster
                        .copy_from(c, &format!("/var/lib/baton/coordinator/{file}"), &to)
                        .ok();
                    std::fs::read(&to).expect("copied file")
                })
                .collect();
            assert_eq!(
                copies[0], copies[1],
                "the coordinators hold different {file}"
            );
        }
    }

    agent_cut_off(&cluster, root.path());
    etcd_quorum(&cluster, root.path());
    match mode.why_not_ha() {
        None => {
            leader_killed(&cluster, root.path());
            leader_cut_off(&cluster, root.path());
        }
        Some(why) => {
            for s in ["leader_killed", "leader_cut_off"] {
                skip(&format!("{TEST} [{s}]"), why);
            }
        }
    }
    cluster.wait_agents(&AGENTS, Duration::from_secs(60));
    figure("all", "total", secs_since(started));

    cluster.take_down();
    let left = cluster.leftovers();
    assert!(left.is_empty(), "left behind after `down -v`: {left:?}");
}

/// `GET /health` of the etcd at `port` on loopback over TLS, as a client with
/// `identity` (`NAME.pem`/`NAME.key` in `certs`) or none; the response text,
/// or why the connection failed.
fn etcd_health_over_tls(certs: &Path, port: u16, identity: Option<&str>) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(certs.join(format!("{name}.pem")))
                .map_err(|e| e.to_string())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(certs.join(format!("{name}.key")))
                .map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    match tls.read_to_string(&mut body) {
        Ok(_) => Ok(body),
        // etcd closes without close_notify; what came is the answer.
        Err(_) if !body.is_empty() => Ok(body),
        Err(e) => Err(e.to_string()),
    }
}

/// `make-certs.sh` gives what etcd 3.4 and a rustls client (the etcd backend's
/// TLS) accept: a member certificate that serves on loopback and a coordinator
/// client certificate etcd lets in; keys 0600 in a 0700 directory. A real etcd
/// on loopback, no docker.
#[test]
fn make_certs_gives_etcd_and_a_rustls_client_what_they_accept() {
    use std::os::unix::fs::PermissionsExt;

    const T: &str = "ha_cluster::make_certs_gives_etcd_and_a_rustls_client_what_they_accept";
    for program in ["openssl", "etcd"] {
        if !crate::deploy_support::on_path(program) {
            skip(
                T,
                &format!("no `{program}` command (Debian: openssl, etcd-server)"),
            );
            return;
        }
    }
    let root = TestDir::new("ha-certs");
    let certs = root.path().join("certs");
    crate::deploy_support::run_bounded(
        std::process::Command::new("sh")
            .arg(crate::deploy_support::deploy_dir().join("compose/ha/make-certs.sh"))
            .arg(&certs),
        Duration::from_secs(60),
    )
    .ok();
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    assert_eq!(mode(&certs), 0o700, "the certificate directory");
    for name in ["ca", "etcd1", "etcd2", "etcd3", "coord1", "coord2"] {
        assert_eq!(
            mode(&certs.join(format!("{name}.key"))),
            0o600,
            "{name}.key"
        );
        assert!(certs.join(format!("{name}.pem")).is_file(), "{name}.pem");
    }

    let (client, peer) = (crate::harness::dead_port(), crate::harness::dead_port());
    let c = |f: &str| certs.join(f).display().to_string();
    let argv: Vec<String> = [
        "etcd",
        "--name",
        "etcd1",
        "--data-dir",
        &root.path().join("etcd-data").display().to_string(),
        "--listen-client-urls",
        &format!("https://127.0.0.1:{client}"),
        "--advertise-client-urls",
        &format!("https://127.0.0.1:{client}"),
        "--listen-peer-urls",
        &format!("https://127.0.0.1:{peer}"),
        "--initial-advertise-peer-urls",
        &format!("https://127.0.0.1:{peer}"),
        "--initial-cluster",
        &format!("etcd1=https://127.0.0.1:{peer}"),
        "--client-cert-auth",
        "--trusted-ca-file",
        &c("ca.pem"),
        "--cert-file",
        &c("etcd1.pem"),
        "--key-file",
        &c("etcd1.key"),
        "--peer-client-cert-auth",
        "--peer-trusted-ca-file",
        &c("ca.pem"),
        "--peer-cert-file",
        &c("etcd1.pem"),
        "--peer-key-file",
        &c("etcd1.key"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let etcd = crate::deploy_support::Daemon::spawn("etcd", &root.path().join("etcd"), &argv, &[]);
    let mut last = Err(String::new());
    let up = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        last = etcd_health_over_tls(&certs, client, Some("coord1"));
        last.as_ref()
            .is_ok_and(|b| b.contains("\"health\":\"true\""))
    });
    assert!(
        up,
        "etcd with make-certs.sh's certificates is not healthy to coord1 over TLS: {last:?}\n{}",
        etcd.stderr()
    );
    // Without a client certificate etcd lets nobody in.
    let anonymous = etcd_health_over_tls(&certs, client, None);
    assert!(
        !anonymous.as_ref().is_ok_and(|b| b.contains("\"health\"")),
        "etcd answered a client without a certificate: {anonymous:?}"
    );
}
