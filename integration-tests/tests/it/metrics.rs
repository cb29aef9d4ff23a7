//! Prometheus metrics on a live cluster: a coordinator and two agents serve
//! `/metrics` (`--metrics-listen 127.0.0.1:0 --metrics-token-file`); a
//! fan-out runs; each endpoint is scraped and the values must have moved
//! (children succeeded = N, accept latency counted for each dispatch, agents
//! ready with their slots, jobs started and events acknowledged on the
//! agents). Every scrape must pass `promtool check metrics`, a request
//! without the token gets 401 and nothing else, and a real `prometheus`
//! (Debian's package) scrapes the three endpoints with a `credentials_file`
//! and answers `up` and a baton metric through its query API. Without
//! promtool or prometheus those parts say why and are skipped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::deploy_support::{on_path, read_deploy_file, skip};
use crate::harness::{AgentOpts, Cluster, FanoutSpec, wait_until};

const TOKEN: &str = "it-metrics-token-0123456789";
const CHILDREN: u64 = 30;
const AGENTS: [&str; 2] = ["m1", "m2"];

/// `GET path` over HTTP/1.0 (no chunking) with the bearer token when given:
/// the status code and the body.
fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Samples of a scrape: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in the scrape: {:?}", s.keys()))
}

/// The address a node printed as `baton … metrics on ADDR` (before its
/// listening line, so it is in `stdout.log` once the node has started).
fn metrics_addr(node_dir: &Path) -> SocketAddr {
    let out = std::fs::read_to_string(node_dir.join("stdout.log")).unwrap_or_default();
    out.lines()
        .find_map(|l| {
            l.split_once(" metrics on ")
                .map(|(_, a)| a.trim().to_owned())
        })
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no `metrics on ADDR` line in {}: {out}", node_dir.display()))
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics", Some(TOKEN));
    assert_eq!(status, 200, "scrape of {addr}: {body}");
    body
}

/// `promtool check metrics` accepts the scrape (lint included).
fn promtool_accepts(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics refused the {what} scrape: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric the Grafana dashboard's queries name is in one of the scrapes.
fn dashboard_names_are_served(scrapes: &[&str]) {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read_deploy_file("grafana/baton.json")).expect("dashboard JSON");
    let served: std::collections::BTreeSet<&str> = scrapes
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut named = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("baton_") || word.starts_with("process_") {
                    named += 1;
                    assert!(
                        served.contains(word),
                        "the dashboard's panel {:?} queries {word}, which no endpoint serves",
                        panel["title"]
                    );
                }
            }
        }
    }
    assert!(named > 20, "the dashboard names only {named} metrics");
}

/// A `prometheus` process, killed by pid when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts Prometheus scraping `targets` every second with the token file;
/// returns it and its address once it is ready.
fn start_prometheus(
    dir: &Path,
    token_file: &Path,
    targets: &[SocketAddr],
) -> (Prometheus, SocketAddr) {
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: baton\n    \
         authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: [{list}]\n",
        token_file.display()
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start prometheus");
    let p = Prometheus(child);
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && http_get(addr, "/-/ready", None).0 == 200
    });
    assert!(
        ready,
        "prometheus not ready on {addr}: {}",
        std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );
    (p, addr)
}

/// The result vector of an instant query (`/api/v1/query`), as (labels, value).
fn query(addr: SocketAddr, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = http_get(addr, &format!("/api/v1/query?query={encoded}"), None);
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| {
                    let val = s["value"][1].as_str()?.parse().ok()?;
                    Some((s["metric"].clone(), val))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_fanout_moves_the_metrics_of_coordinator_and_agents() {
    let mut c = Cluster::new("metrics");
    let token_file: PathBuf = c.root().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tf = token_file.display().to_string();
    let flags = [
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-token-file",
        &tf,
    ];
    c.start_coordinator_with(&flags);
    let coord = metrics_addr(&c.root().join("coordinator"));
    let mut agents = Vec::new();
    for name in AGENTS {
        let mut opts = AgentOpts::new(name, 4);
        opts.extra_args = flags.iter().map(|s| (*s).to_owned()).collect();
        c.start_agent_with(opts).expect("agent announced");
        agents.push(metrics_addr(&c.root().join(name)));
    }
    c.agents_ready(AGENTS.len());

    // Nobody without the token gets anything but 401.
    let (status, body) = http_get(coord, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("baton_"), "{body}");
    assert_eq!(
        http_get(agents[0], "/metrics", Some("wrong-token-0123456789")).0,
        401
    );

    let parent = c.write_fanout("metrics", &FanoutSpec::new(10, "true"));
    let pkg = parent.display().to_string();
    let children = format!("children={CHILDREN}");
    let out = c.cli_at(
        &c.coordinator_url(),
        &["run", &pkg, "-p", &children, "--wait", "--output", "json"],
        Duration::from_secs(60),
    );
    out.expect_code(0);

    // The coordinator publishes once a second: wait for the last child.
    let succeeded = "baton_children_ended_total{state=\"succeeded\"}";
    let mut text = String::new();
    let moved = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        text = scrape(coord);
        samples(&text).get(succeeded).copied() == Some(CHILDREN as f64)
    });
    assert!(moved, "{succeeded} never reached {CHILDREN}:\n{text}");
    let s = samples(&text);
    assert_eq!(value(&s, "baton_coordinator_leader"), 1.0);
    assert!(value(&s, "baton_dispatches_total") >= CHILDREN as f64);
    assert!(value(&s, "baton_dispatch_accept_duration_seconds_count") >= CHILDREN as f64);
    assert_eq!(
        value(
            &s,
            "baton_dispatch_accept_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        value(&s, "baton_dispatch_accept_duration_seconds_count")
    );
    assert!(value(&s, "baton_child_completion_duration_seconds_count") >= CHILDREN as f64);
    assert_eq!(
        value(&s, "baton_agents{state=\"ready\"}"),
        AGENTS.len() as f64
    );
    assert_eq!(value(&s, "baton_fleet_slots{state=\"ready\"}"), 8.0);
    assert!(value(&s, "baton_store_commit_duration_seconds_count") > 0.0);
    assert!(value(&s, "baton_store_size_bytes") > 0.0);
    assert!(value(&s, "process_resident_memory_bytes") > 0.0);
    assert_eq!(
        value(
            &s,
            "baton_metrics_requests_refused_total{reason=\"missing_credentials\"}"
        ),
        1.0
    );

    let mut started = 0.0;
    let mut accepted = 0.0;
    let mut agent_texts = Vec::new();
    for (name, &addr) in AGENTS.iter().zip(&agents) {
        // Acknowledgements follow the coordinator's commits: wait for them.
        let mut text = String::new();
        let acked = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            text = scrape(addr);
            samples(&text).get("baton_agent_completion_unacknowledged_events") == Some(&0.0)
        });
        assert!(acked, "agent {name} keeps unacknowledged events:\n{text}");
        let s = samples(&text);
        assert_eq!(value(&s, "baton_agent_slots"), 4.0, "{name}");
        assert_eq!(value(&s, "baton_agent_slots_used"), 0.0, "{name}");
        started += value(&s, "baton_agent_jobs_started_total");
        accepted += value(&s, "baton_agent_start_requests_total{result=\"accepted\"}");
        agent_texts.push(text);
    }
    assert_eq!(started, CHILDREN as f64, "jobs started over both agents");
    assert!(accepted >= CHILDREN as f64, "accepted {accepted}");

    dashboard_names_are_served(&[&text, &agent_texts[0], &agent_texts[1]]);

    if on_path("promtool") {
        promtool_accepts("coordinator", &text);
        for (name, t) in AGENTS.iter().zip(&agent_texts) {
            promtool_accepts(name, t);
        }
    } else {
        skip(
            "metrics: promtool check metrics",
            "promtool is not installed (Debian: apt-get install -y prometheus; scripts/test does it)",
        );
    }

    if on_path("prometheus") {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut targets = vec![coord];
        targets.extend(&agents);
        let (_prometheus, prom) = start_prometheus(dir.path(), &token_file, &targets);
        let mut up = Vec::new();
        let scraped = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
            up = query(prom, "up");
            up.len() == targets.len() && up.iter().all(|(_, v)| *v == 1.0)
        });
        assert!(scraped, "prometheus `up` of the 3 targets: {up:?}");
        let ended = query(prom, succeeded);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].1, CHILDREN as f64, "{ended:?}");
        let slots = query(prom, "sum(baton_agent_slots)");
        assert_eq!(slots.first().map(|s| s.1), Some(8.0), "{slots:?}");
    } else {
        skip(
            "metrics: a real Prometheus scrape",
            "prometheus is not installed (Debian: apt-get install -y prometheus; scripts/test does it)",
        );
    }
    // The refused scrapes above are audited: their WARN lines are expected.
    c.finish(&[]);
}

/// The endpoint is plaintext: an address that is not loopback is refused at
/// start, as is a token file others can read.
#[test]
fn metrics_listen_refuses_non_loopback_and_open_token_files() {
    let c = Cluster::new("metrics_refusals");
    let token = c.root().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tf = token.display().to_string();
    let data = c.root().join("data").display().to_string();
    let out = c.cli_raw(&[
        "coordinator",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--metrics-listen",
        "0.0.0.0:0",
        "--metrics-token-file",
        &tf,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("METRICS_NOT_LOOPBACK"),
        "{}",
        out.describe()
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = c.cli_raw(&[
        "coordinator",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-token-file",
        &tf,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("METRICS_TOKEN_FILE"),
        "{}",
        out.describe()
    );
    // Without a token file the flag is refused by the parser.
    let out = c.cli_raw(&["coordinator", "--metrics-listen", "127.0.0.1:0"]);
    out.expect_code(2);
    c.finish(&[]);
}
