//! Transport edges of issues 14 and 16: plaintext never leaves the machine, a
//! coordinator never takes the CLI's identity for its CA directory (nor makes a
//! CA over an identity), a TLS failure says it is one, and a revoked agent stops.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{AgentOpts, Cluster, baton_bin, read_log, wait_until};

/// An address of this machine that is not loopback, if it has one: the source
/// address a UDP socket would use towards a private address (no packet is sent).
fn own_non_loopback_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A listener on every address, to tell whether anything connected to it.
struct Trap(TcpListener);

impl Trap {
    fn new() -> Trap {
        let l = TcpListener::bind("0.0.0.0:0").expect("bind 0.0.0.0:0");
        l.set_nonblocking(true).expect("nonblocking");
        Trap(l)
    }
    fn port(&self) -> u16 {
        self.0.local_addr().expect("local_addr").port()
    }
    /// Whether anyone but the probe dialled this listener before the probe.
    ///
    /// No sleep for "nothing came": the probe connects after the commands under
    /// test have exited, and a listener hands connections out in the order their
    /// handshakes completed, so a connection of theirs is accepted before the probe.
    fn was_dialled_before_probe(&self) -> bool {
        let port = self.port();
        let probe = std::net::TcpStream::connect(("127.0.0.1", port)).expect("probe connect");
        let probe_addr = probe.local_addr().expect("probe local_addr");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.0.accept() {
                Ok((_, peer)) => return peer != probe_addr,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The probe's handshake is done on its side; the listener's
                    // side follows at once on loopback. Bounded all the same.
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the probe connection never reached the listener"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

#[test]
fn plaintext_beyond_loopback_is_refused_before_connecting() {
    let mut c = Cluster::new("plaintext_refused");

    // The CLI with an API token towards a remote http:// address: refused at
    // once (a connection attempt to 10.255.255.1 would hang for the 3 s timeout).
    let out = c.cli_at(
        "http://10.255.255.1:1",
        &["exec", "list", "--token", "btn_api_000000000000_secret"],
        Duration::from_secs(20),
    );
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[PLAINTEXT_NOT_LOOPBACK]")
            && out
                .stderr
                .contains("10.255.255.1 is not a loopback address")
            && out.stderr.contains("https://"),
        "{}",
        out.describe()
    );
    assert!(
        out.elapsed < Duration::from_millis(1500),
        "the refusal took {:?}: was a connection tried?",
        out.elapsed
    );
    assert!(!out.stderr.contains("btn_api_"), "the token was printed");

    // The same against an address of this machine that is not loopback, where
    // a listener would notice any connection: none comes.
    if let Some(ip) = own_non_loopback_ip() {
        let trap = Trap::new();
        let url = format!("http://{ip}:{}", trap.port());
        let out = c.cli_at(&url, &["agents", "list"], Duration::from_secs(20));
        out.expect_code(2);
        assert!(
            out.stderr.contains("error[PLAINTEXT_NOT_LOOPBACK]"),
            "{}",
            out.describe()
        );
        // An --insecure agent is refused too, before it serves or dials.
        let data = c.root().join("agent-remote").display().to_string();
        let out = c.cli_raw(&[
            "agent",
            "--insecure",
            "--name",
            "x1",
            "--listen",
            "127.0.0.1:0",
            "--coordinator",
            &url,
            "--data-dir",
            &data,
        ]);
        out.expect_code(2);
        assert!(
            out.stderr.contains("error[PLAINTEXT_NOT_LOOPBACK]"),
            "{}",
            out.describe()
        );
        assert!(
            !trap.was_dialled_before_probe(),
            "a plaintext connection left for {url}"
        );
    } else {
        eprintln!("no non-loopback address on this machine: the listener check is skipped");
    }

    // An --insecure coordinator on loopback, reached by a name that resolves
    // to loopback, works; an --insecure agent registers over http://localhost.
    let addr = c.start_coordinator_with(&["--insecure"]);
    let local = format!("http://localhost:{}", addr.port());
    c.cli_at(&local, &["agents", "list"], Duration::from_secs(20))
        .expect_code(0);

    // The coordinator holds the same line: a Register (made by hand) whose
    // address is not loopback would make it dial jobs there in plaintext.
    let status = register_by_hand(
        &format!("http://127.0.0.1:{}", addr.port()),
        "10.0.0.7:7401",
    );
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("baton-code")
            .and_then(|v| v.to_str().ok()),
        Some("PLAINTEXT_NOT_LOOPBACK"),
        "{status:?}"
    );

    // ... and an --insecure agent may not advertise an address beyond loopback.
    let data = c.root().join("agent-adv").display().to_string();
    let out = c.cli_raw(&[
        "agent",
        "--insecure",
        "--name",
        "x2",
        "--listen",
        "127.0.0.1:0",
        "--advertise",
        "10.0.0.7:7401",
        "--coordinator",
        &local,
        "--data-dir",
        &data,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[PLAINTEXT_NOT_LOOPBACK]") && out.stderr.contains("--advertise"),
        "{}",
        out.describe()
    );

    // An agent with a TLS identity never dials http:// (tonic would send plaintext).
    let data = c.root().join("agent-tls-http").display().to_string();
    let out = c.cli_raw(&[
        "agent",
        "--name",
        "x3",
        "--listen",
        "127.0.0.1:0",
        "--coordinator",
        "http://10.0.0.5:7400",
        "--data-dir",
        &data,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[AGENT_CONFIG_INVALID]") && out.stderr.contains("https://"),
        "{}",
        out.describe()
    );

    let mut opts = AgentOpts::new("p1", 1);
    opts.coordinator_url = Some(local.clone());
    opts.tls_dir = Some(c.root().join("no-tls"));
    opts.extra_args = vec!["--insecure".to_owned()];
    c.start_agent_with(opts);
    let ok = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let out = c.cli_at(
            &local,
            &["agents", "list", "--output", "json"],
            Duration::from_secs(20),
        );
        out.code == Some(0) && out.stdout.contains("\"p1\"") && out.stdout.contains("ready")
    });
    assert!(
        ok,
        "the --insecure agent did not register over http://localhost"
    );
    c.finish(&[]);
}

/// `CoordinatorService.Register` in plaintext as agent `h1` at `address`; the refusal.
fn register_by_hand(url: &str, address: &str) -> tonic::Status {
    use baton_proto::coordinator_service_client::CoordinatorServiceClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let call = async {
            let mut client = CoordinatorServiceClient::connect(url.to_owned())
                .await
                .expect("connect to the --insecure coordinator");
            client
                .register(baton_proto::RegisterRequest {
                    name: "h1".into(),
                    address: address.into(),
                    slots: 1,
                    version: "test".into(),
                    boot_id: "b1".into(),
                    outbox_id: "o1".into(),
                    weight: 1,
                    ..Default::default()
                })
                .await
                .expect_err("a non-loopback address was registered without TLS")
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("Register answered within 10 s")
    })
}

/// Starts `baton coordinator` with `envs`, waits for its announcement, then
/// kills it; returns the announcement line (empty if none) and its stderr.
fn run_coordinator_once(root: &Path, args: &[&str], envs: &[(&str, String)]) -> (String, String) {
    let err_path = root.join(format!("coordinator-once-{}.stderr", std::process::id()));
    let err_file = std::fs::File::create(&err_path).expect("create stderr file");
    let mut cmd = Command::new(baton_bin());
    cmd.arg("coordinator")
        .args(args)
        .current_dir(root)
        .env("BATON_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err_file));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn baton coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut announced = String::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
            && line.contains("baton coordinator listening on")
        {
            announced = line;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
    }
    let pid = i32::try_from(child.id()).expect("pid");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    (announced, read_log(&err_path))
}

#[test]
fn a_coordinator_never_makes_a_ca_over_the_cli_identity() {
    let mut c = Cluster::new("tls_dir_names");
    c.start_coordinator();
    let admin = c.ca_dir().join("admin");
    let ca_before = std::fs::read_to_string(admin.join("ca.pem")).expect("admin ca.pem");

    // The README's shell: BATON_TLS_DIR exported for the CLI, then a coordinator
    // (re)started in it. It must keep to its own directory.
    let second = c.root().join("second");
    let elsewhere = c.root().join("old-name-data");
    let (announced, stderr) = run_coordinator_once(
        c.root(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &second.display().to_string(),
        ],
        &[
            ("BATON_TLS_DIR", admin.display().to_string()),
            ("BATON_DATA_DIR", elsewhere.display().to_string()),
        ],
    );
    // A variable of the old, shared name is not read, and the log says so.
    assert!(
        stderr.contains("BATON_DATA_DIR") && stderr.contains("BATON_COORDINATOR_DATA_DIR"),
        "no warning about the renamed variable:\n{stderr}"
    );
    assert!(!elsewhere.exists());
    assert!(
        !announced.is_empty(),
        "the second coordinator did not start"
    );
    assert_eq!(
        std::fs::read_to_string(admin.join("ca.pem")).unwrap(),
        ca_before,
        "the admin's ca.pem was overwritten"
    );
    assert!(
        !admin.join("ca.key").exists(),
        "a CA was made in the admin directory"
    );
    assert!(
        second.join("tls").join("ca.key").exists(),
        "the coordinator's CA is in its own data dir"
    );
    // The coordinator's own variable names its TLS directory.
    let third = c.root().join("third-tls");
    let (announced, _) = run_coordinator_once(
        c.root(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &c.root().join("third").display().to_string(),
        ],
        &[("BATON_COORDINATOR_TLS_DIR", third.display().to_string())],
    );
    assert!(!announced.is_empty());
    assert!(
        third.join("ca.key").exists(),
        "BATON_COORDINATOR_TLS_DIR was not used"
    );
    // The CLI still works with the admin identity.
    c.cli(&["agents", "list"]).expect_code(0);

    // Pointing a coordinator (or `certs init`) at an identity on purpose is refused.
    let out = c.cli_raw(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &c.root().join("fourth").display().to_string(),
        "--tls-dir",
        &admin.display().to_string(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[PKI_NOT_A_CA_DIR]") && out.stderr.contains("tls.pem"),
        "{}",
        out.describe()
    );
    let out = c.cli_raw(&["certs", "init", "--dir", &admin.display().to_string()]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error[PKI_NOT_A_CA_DIR]"),
        "{}",
        out.describe()
    );
    assert_eq!(
        std::fs::read_to_string(admin.join("ca.pem")).unwrap(),
        ca_before
    );
    c.finish(&[]);
}

#[test]
fn a_tls_failure_says_which_certificate_and_which_ca() {
    let mut c = Cluster::new("tls_explained");
    let addr = c.start_coordinator();
    let url = format!("https://{addr}");
    let other = c.root().join("other-ca");
    c.cli_raw(&["certs", "init", "--dir", &other.display().to_string()])
        .expect_code(0);

    // The client trusts another CA: the coordinator's certificate is refused.
    let other_admin = other.join("admin");
    let out = c.cli_raw(&[
        "agents",
        "list",
        "--coordinator",
        &url,
        "--tls-dir",
        &other_admin.display().to_string(),
    ]);
    out.expect_code(4);
    let want = format!(
        "TLS handshake with {url} failed: the coordinator's certificate is not signed by the CA in {} (unknown issuer)",
        other_admin.join("ca.pem").display()
    );
    assert!(
        out.stderr.contains("error[TLS_HANDSHAKE_FAILED]") && out.stderr.contains(&want),
        "want {want:?}\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("start one with") && !out.stderr.contains("transport error"),
        "{}",
        out.describe()
    );

    // The client trusts the right CA but holds another CA's certificate: the
    // coordinator refuses it (seen at the first call under TLS 1.3).
    let mixed = c.root().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(c.ca_dir().join("ca.pem"), mixed.join("ca.pem")).unwrap();
    std::fs::copy(other_admin.join("tls.pem"), mixed.join("tls.pem")).unwrap();
    std::fs::copy(other_admin.join("tls.key"), mixed.join("tls.key")).unwrap();
    let out = c.cli_raw(&[
        "agents",
        "list",
        "--coordinator",
        &url,
        "--tls-dir",
        &mixed.display().to_string(),
    ]);
    out.expect_code(4);
    let want = format!(
        "the coordinator refused this client's certificate {}",
        mixed.join("tls.pem").display()
    );
    assert!(
        out.stderr.contains("error[TLS_HANDSHAKE_FAILED]") && out.stderr.contains(&want),
        "want {want:?}\n{}",
        out.describe()
    );

    // An agent holding another CA's certificate says so in its log, instead of
    // "coordinator unreachable: transport error".
    let agent_tls = c.root().join("m1-tls");
    c.cli_raw(&[
        "certs",
        "issue",
        "--ca-dir",
        &other.display().to_string(),
        "--agent",
        "m1",
        "--out",
        &agent_tls.display().to_string(),
    ])
    .expect_code(0);
    std::fs::copy(c.ca_dir().join("ca.pem"), agent_tls.join("ca.pem")).unwrap();
    let mut opts = AgentOpts::new("m1", 1);
    opts.tls_dir = Some(agent_tls.clone());
    c.start_agent_with(opts);
    let want = format!(
        "the coordinator refused this agent's certificate {}/tls.pem: not signed by its CA",
        agent_tls.display()
    );
    let mut log = String::new();
    let said = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        log = read_log(&c.agent("m1").stderr_path());
        log.contains(&want)
    });
    assert!(said, "want {want:?} in the agent's log:\n{log}");
    c.finish(&[]);
}

#[test]
fn a_revoked_agent_stops_with_its_own_exit_code() {
    let mut c = Cluster::new("revoked_agent_stops");
    c.start_coordinator();
    c.start_agent("r1", 1);
    c.agents_ready(1);
    c.cli(&["agents", "revoke", "r1"]).expect_code(0);
    let revoked_at = Instant::now();
    let mut status = None;
    let exited = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        status = c.agent("r1").try_exit_status();
        status.is_some()
    });
    assert!(
        exited,
        "the revoked agent still runs 20 s after `agents revoke`"
    );
    let took = revoked_at.elapsed();
    let log = read_log(&c.agent("r1").stderr_path());
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(6),
        "exit status {status:?}\n{log}"
    );
    assert!(
        log.contains("error[AGENT_REVOKED]") && log.contains("baton agents revoke r1"),
        "no clear message on stderr:\n{log}"
    );
    let retries = log.matches("coordinator unreachable; will retry").count();
    assert!(retries <= 1, "it retried {retries} times:\n{log}");
    eprintln!("revoked agent exited {took:?} after `agents revoke`");
    c.finish(&["r1", "revoked", "AGENT_REVOKED"]);
}
