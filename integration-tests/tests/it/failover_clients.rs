//! Issue 12 item 4, client side, before the real standby exists: the `baton` CLI
//! given a list of coordinators follows a standby's NOT_LEADER to the leader. The
//! standby here is a fake in this process that answers every `ControlService` call
//! as a standby does (UNAVAILABLE, `baton-code: NOT_LEADER`, `baton-leader: URL`),
//! over TLS with the real coordinator's certificate; the leader is a real
//! `baton coordinator`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http;

use crate::harness::{AgentOpts, Cluster, dead_port};

/// Answers every call as a standby naming `hint`.
#[derive(Clone)]
struct Standby {
    hint: Option<String>,
    calls: Arc<AtomicUsize>,
}

impl tonic::codegen::Service<http::Request<Body>> for Standby {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut s = tonic::Status::unavailable("this coordinator is a standby");
        s.metadata_mut()
            .insert("baton-code", "NOT_LEADER".parse().expect("ascii"));
        if let Some(h) = &self.hint {
            s.metadata_mut()
                .insert("baton-leader", h.parse().expect("ascii"));
        }
        std::future::ready(Ok(s.into_http()))
    }
}

impl tonic::server::NamedService for Standby {
    const NAME: &'static str = "baton.v1.ControlService";
}

/// The same standby, for agents' calls.
#[derive(Clone)]
struct StandbyForAgents(Standby);

impl tonic::codegen::Service<http::Request<Body>> for StandbyForAgents {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.0.call(req)
    }
}

impl tonic::server::NamedService for StandbyForAgents {
    const NAME: &'static str = "baton.v1.CoordinatorService";
}

/// A fake standby on its own runtime, serving TLS with `cert`/`key`; dropping it
/// stops it and every connection.
struct FakeStandby {
    url: String,
    calls: Arc<AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeStandby {
    fn start(ca: &str, cert: &str, key: &str, hint: Option<String>) -> FakeStandby {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = Standby {
            hint,
            calls: calls.clone(),
        };
        let live = baton_proto::tls::LiveCert::new(cert, key).expect("server cert");
        let config =
            baton_proto::tls::server_config(ca, live, baton_proto::tls::ClientAuth::Optional)
                .expect("server config");
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let incoming = baton_proto::tls::incoming(listener, config);
            let _ = tonic::transport::Server::builder()
                .add_service(svc.clone())
                .add_service(StandbyForAgents(svc))
                .serve_with_incoming(incoming)
                .await;
        });
        FakeStandby {
            url,
            calls,
            rt: Some(rt),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for FakeStandby {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A certificate for `coordinator.baton` from a CA of its own (not the cluster's).
fn foreign_identity() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["coordinator.baton".to_string()]).expect("params");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn the_cli_follows_a_standby_to_the_leader() {
    let mut cluster = Cluster::new("failover_clients");
    cluster.start_coordinator();
    let leader = cluster.coordinator_url();
    let tls = cluster.ca_dir();
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("coordinator TLS file");
    let (ca, cert, key) = (read("ca.pem"), read("tls.pem"), read("tls.key"));
    let hinting = FakeStandby::start(&ca, &cert, &key, Some(leader.clone()));
    let silent = FakeStandby::start(&ca, &cert, &key, None);
    let dead = format!("https://127.0.0.1:{}", dead_port());
    let t = Duration::from_secs(60);

    // A standby that names the leader (not in the list): a read, then a call
    // that must not be sent twice, both land on the leader.
    let list = format!("{},{dead}", hinting.url);
    let out = cluster.cli_at(&list, &["agents", "list", "--output", "json"], t);
    out.expect_code(0);
    assert!(
        out.stderr.contains(&format!(
            "coordinator {} is a standby; trying the leader it names, {leader}",
            hinting.url
        )),
        "{}",
        out.describe()
    );
    let out = cluster.cli_at(&list, &["folder", "create", "/ha"], t);
    out.expect_code(0);
    let out = cluster.cli_at(&leader, &["folder", "list", "--output", "json"], t);
    out.expect_code(0);
    assert!(out.stdout.contains("/ha"), "{}", out.describe());

    // Without a hint: past a dead URL and a silent standby to the next URL.
    let list = format!("{dead},{},{leader}", silent.url);
    let out = cluster.cli_at(&list, &["folder", "create", "/ha/two"], t);
    out.expect_code(0);
    assert!(
        out.stderr.contains(&format!(
            "coordinator {} is a standby; trying {leader}",
            silent.url
        )),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr
            .contains(&format!("coordinator {dead} is unreachable")),
        "{}",
        out.describe()
    );

    // The list from a context, and from a config file.
    let admin = cluster.ca_dir().join("admin").display().to_string();
    let list = format!("{},{leader}", silent.url);
    let out = cluster.cli_env(
        &[
            "context",
            "add",
            "ha",
            "--coordinator",
            &list,
            "--tls-dir",
            &admin,
            "--use",
        ],
        &[],
    );
    out.expect_code(0);
    let out = cluster.cli_env(&["agents", "list", "--output", "json"], &[]);
    out.expect_code(0);
    assert!(
        out.stderr.contains("is a standby; trying"),
        "{}",
        out.describe()
    );
    let out = cluster.cli_env(
        &[
            "context",
            "add",
            "bad",
            "--coordinator",
            "https://a:1,,https://b:2",
            "--tls-dir",
            &admin,
        ],
        &[],
    );
    out.expect_code(2);
    assert!(out.stderr.contains("error[USAGE]"), "{}", out.describe());
    let file = cluster.root().join("ha.toml");
    std::fs::write(
        &file,
        format!(
            "coordinator = \"{dead}, {}, {leader}\"\ntls-dir = \"{admin}\"\n",
            hinting.url
        ),
    )
    .expect("write config");
    let out = cluster.cli_env(
        &["agents", "list", "--config", &file.display().to_string()],
        &[],
    );
    out.expect_code(0);
    assert!(
        out.stderr.contains("trying the leader it names"),
        "{}",
        out.describe()
    );

    // No leader among the URLs: NO_LEADER after --failover-wait, exit 3.
    let out = cluster.cli_at(
        &silent.url,
        &["agents", "list", "--failover-wait", "1"],
        Duration::from_secs(20),
    );
    out.expect_code(3);
    assert!(
        out.stderr.contains("error[NO_LEADER]"),
        "{}",
        out.describe()
    );
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.describe());

    // A hint to a server that is not this cluster's coordinator (another CA) is
    // refused by TLS: no request reaches it, and no leader is found.
    let (fca, fcert, fkey) = foreign_identity();
    let impostor = FakeStandby::start(&fca, &fcert, &fkey, None);
    let lure = FakeStandby::start(&ca, &cert, &key, Some(impostor.url.clone()));
    let out = cluster.cli_at(
        &lure.url,
        &["folder", "create", "/lured", "--failover-wait", "1"],
        Duration::from_secs(20),
    );
    out.expect_code(3);
    assert_eq!(impostor.calls(), 0, "{}", out.describe());
    assert!(lure.calls() >= 1);
    let out = cluster.cli_at(&leader, &["folder", "list", "--output", "json"], t);
    assert!(!out.stdout.contains("/lured"), "{}", out.describe());
    cluster.finish(&[]);
}

/// A child process killed (by its pid) when the test ends, also on panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `exec watch` over a list of coordinators rides out a leader outage: the watch
/// breaks when the coordinator is killed, is opened again through the failover
/// channel (a standby in the list names the leader while it is down, so the CLI
/// waits for it) and ends with the execution.
#[test]
fn a_watch_opens_again_when_the_leader_comes_back() {
    use std::io::{BufRead, BufReader, Read};

    let mut cluster = Cluster::new("failover_clients_watch");
    cluster.start_coordinator();
    cluster.start_agent("w1", 2);
    cluster.agents_ready(1);
    let leader = cluster.coordinator_url();
    let tls = cluster.ca_dir();
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("coordinator TLS file");
    let standby = FakeStandby::start(
        &read("ca.pem"),
        &read("tls.pem"),
        &read("tls.key"),
        Some(leader.clone()),
    );
    let spec = crate::harness::FanoutSpec::new(40, "sleep 0.25").parallelism(2);
    let parent = cluster.write_fanout("watch", &spec);
    let id = cluster.start_run(&parent, &[]);

    let mut watch = KillOnDrop(
        std::process::Command::new(crate::harness::baton_bin())
            .args(["exec", "watch", &id, "--output", "json"])
            .env("BATON_COORDINATOR", format!("{leader},{}", standby.url))
            .env("BATON_TLS_DIR", tls.join("admin"))
            .env("BATON_CONFIG_DIR", cluster.root().join("cli-config"))
            .env_remove("BATON_CONTEXT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn baton exec watch"),
    );
    let stdout = watch.0.stdout.take().expect("stdout");
    let mut stderr = watch.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a first summary from the watch");
    assert!(
        first.contains("\"running\""),
        "ended before the outage: {first}"
    );

    cluster.coordinator().kill9();
    cluster.coordinator().restart();

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut lines = vec![first];
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        if let Some(status) = watch.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exec watch did not end within 90 s; last: {:?}",
            lines.last()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        lines.push(l);
    }
    let err = err_reader.join().expect("stderr reader");
    assert_eq!(
        status.code(),
        Some(0),
        "stderr:\n{err}\nlast: {:?}",
        lines.last()
    );
    assert!(err.contains("watching it again"), "stderr:\n{err}");
    let last = lines.last().expect("a last summary");
    assert!(last.contains("\"succeeded\""), "{last}");
    drop(watch);
    cluster.finish(&[]);
}

/// An agent given a standby first enrols (the CA from the standby, checked against
/// the token's pin; `Enroll` sent on to the leader it names) and registers with the
/// leader; a run through the list then succeeds on it.
#[test]
fn an_agent_enrols_and_registers_through_a_standby() {
    let mut cluster = Cluster::new("failover_clients_agent");
    cluster.start_coordinator();
    let leader = cluster.coordinator_url();
    let tls = cluster.ca_dir();
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("coordinator TLS file");
    let standby = FakeStandby::start(
        &read("ca.pem"),
        &read("tls.pem"),
        &read("tls.key"),
        Some(leader.clone()),
    );
    let out = cluster.cli(&["token", "create", "--agent", "h1", "--output", "json"]);
    out.expect_code(0);
    let token = out.json()["token"].as_str().expect("a token").to_owned();
    let mut opts = AgentOpts::new("h1", 2);
    opts.coordinator_url = Some(format!("{},{leader}", standby.url));
    opts.tls_dir = Some(cluster.root().join("h1-tls"));
    opts.extra_args = vec!["--enroll".into(), token];
    cluster.start_agent_with(opts);
    cluster.agents_ready(1);
    // Enroll was answered NOT_LEADER by the standby; Register then went straight
    // to the leader this process had found.
    assert_eq!(standby.calls(), 1);
    // Restarted (a new process, no leader remembered), it registers through the
    // standby's hint again.
    // `agents_ready` may still see the first process's registration: wait for
    // the new process's own call and its log line.
    cluster.agent("h1").restart();
    cluster.agents_ready(1);
    let stderr = cluster.agent("h1").stderr_path();
    let hops = || {
        crate::harness::read_log(&stderr)
            .lines()
            .filter(|l| l.contains("is a standby; trying the leader it names"))
            .count()
    };
    let through =
        crate::harness::wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            standby.calls() >= 2 && hops() >= 2
        });
    assert!(
        through,
        "{} calls; log:\n{}",
        standby.calls(),
        crate::harness::read_log(&stderr)
    );

    let spec = crate::harness::FanoutSpec::new(5, "true");
    let parent = cluster.write_fanout("through", &spec);
    let list = format!("{},{leader}", standby.url);
    let out = cluster.cli_at(
        &list,
        &[
            "run",
            &parent.display().to_string(),
            "--wait",
            "--output",
            "json",
        ],
        Duration::from_secs(60),
    );
    out.expect_code(0);
    cluster.finish(&[]);
}
