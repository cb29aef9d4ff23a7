//! `deploy/systemd/`: the units are valid for systemd, hardened, say only what the
//! binary accepts, and their command lines bring up a fleet that enrols over TLS.
//!
//! systemd does not run in the test machines (it is not PID 1), so the units are
//! tried in two ways: `systemd-analyze verify` and `systemd-analyze security
//! --offline` read them as systemd would (skipped, with a message, when
//! systemd-analyze is missing: Debian's `systemd` package has it, and `.ci/run`
//! installs it); and the fleet test starts the coordinator and two agents from the
//! units' own `ExecStart=` lines, with the environment systemd would give them
//! (`Environment=`, `EnvironmentFile=`, `${VAR}` expansion), changing only the
//! addresses (loopback, free ports) and data directories (a temp dir).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::deploy_support::{
    Daemon, Invocation, TestDir, baton_invocations, client, fanout_through, on_path,
    read_deploy_file, run_bounded, shell_words, skip, wait_agents_ready,
};
use crate::harness::{baton_bin, dead_port};

const INSTALLED_BIN: &str = "/usr/local/bin/baton";

/// The highest `systemd-analyze security` exposure each unit may have (0 to 10,
/// lower is better; the units shipped before this test scored 9.0 and 9.2).
const EXPOSURE_MAX: [(&str, f64); 3] = [
    ("baton-coordinator.service", 2.0),
    ("baton-agent.service", 5.0),
    ("baton-agent-run-as.service", 6.0),
];

/// The lines of a unit file as (section, key, value), in order.
struct Unit {
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut section = String::new();
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                s.clone_into(&mut section);
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not `Key=value`: {line:?}"));
            assert!(
                !line.ends_with('\\'),
                "continued lines are not used: {line:?}"
            );
            entries.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
        }
        Unit { entries }
    }

    /// Every value of `key` in `[Service]`, in order.
    fn service(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The effective value of a single-valued `[Service]` key (the last one).
    fn last(&self, key: &str) -> Option<&str> {
        self.service(key).last().copied()
    }

    /// `Environment=` assignments, in order.
    fn environment(&self) -> Vec<(String, String)> {
        self.service("Environment")
            .iter()
            .flat_map(|v| shell_words(v))
            .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }

    /// The command line of the effective `ExecStart=` (an empty one resets the list,
    /// as in a drop-in), without its `-@:+!` prefixes.
    fn exec_start(&self) -> String {
        let mut current = None;
        for v in self.service("ExecStart") {
            current = if v.is_empty() { None } else { Some(v) };
        }
        current
            .expect("an ExecStart= line")
            .trim_start_matches(['-', '@', ':', '+', '!'])
            .to_owned()
    }
}

/// `KEY=value` lines of an environment file (comments and blanks skipped).
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=value: {l:?}"));
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

/// systemd's `${VAR}` expansion of a command line (an unknown variable is an
/// error here, where systemd would expand it to nothing).
fn expand(line: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed ${{ in {line:?}"));
        let name = &rest[start + 2..start + end];
        let value = env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("${{{name}}} in {line:?} is set by no environment file"));
        out.push_str(&value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// The one `baton` invocation of a unit's `ExecStart=`.
fn baton_of(unit: &Unit) -> Invocation {
    let line = unit.exec_start();
    let mut inv = baton_invocations(&line);
    assert_eq!(inv.len(), 1, "ExecStart= must run baton once: {line:?}");
    let words = shell_words(&line);
    assert_eq!(words[0], INSTALLED_BIN, "ExecStart= runs {INSTALLED_BIN}");
    inv.remove(0)
}

fn units() -> (Unit, Unit, Unit) {
    let coordinator = Unit::parse(&read_deploy_file("systemd/baton-coordinator.service"));
    let agent = Unit::parse(&read_deploy_file("systemd/baton-agent.service"));
    let run_as = Unit::parse(&format!(
        "{}\n{}",
        read_deploy_file("systemd/baton-agent.service"),
        read_deploy_file("systemd/run-as.conf")
    ));
    (coordinator, agent, run_as)
}

/// Checks common to both units: who runs it, where it may write, what it may gain.
fn assert_hardened(name: &str, unit: &Unit, data_dir: &str) {
    let expect = |key: &str, want: &str| {
        assert_eq!(unit.last(key), Some(want), "{name}: {key}= must be {want}");
    };
    expect("NoNewPrivileges", "yes");
    expect("ProtectSystem", "strict");
    expect("PrivateTmp", "yes");
    expect("PrivateDevices", "yes");
    expect("ProtectKernelTunables", "yes");
    expect("ProtectKernelModules", "yes");
    expect("RestrictSUIDSGID", "yes");
    assert!(
        unit.last("ProtectHome")
            .is_some_and(|v| v == "yes" || v == "read-only"),
        "{name}: ProtectHome= must be set"
    );
    let writable: Vec<&str> = unit
        .service("ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert!(
        writable.contains(&data_dir),
        "{name}: ReadWritePaths= {writable:?} must name the data directory {data_dir}"
    );
    assert!(
        unit.service("StateDirectory")
            .iter()
            .any(|d| data_dir == format!("/var/lib/{d}")),
        "{name}: StateDirectory= must create {data_dir}"
    );
}

/// The units use only options and variables the binary knows, the coordinator
/// listens on every interface, the agent dials https and gets its token from a
/// file of the environment (never a command line), and both are hardened.
#[test]
fn systemd_units_use_what_the_binary_accepts_and_are_hardened() {
    let (coordinator, agent, run_as) = units();
    let agent_env = env_file(&read_deploy_file("systemd/agent.env"));

    let c = baton_of(&coordinator);
    assert_eq!(c.path, ["coordinator"]);
    let c_env: Vec<String> = coordinator
        .environment()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let problems = c.problems(&c_env);
    assert!(
        problems.is_empty(),
        "baton-coordinator.service: {problems:?}"
    );
    let listen: SocketAddr = c
        .value("--listen")
        .expect("the coordinator unit names its --listen address")
        .parse()
        .expect("--listen is IP:PORT");
    assert!(
        listen.ip().is_unspecified(),
        "the coordinator must listen on every interface for remote agents, not {listen}"
    );
    assert!(!c.flags().iter().any(|f| f == "--insecure"));
    let c_data = c.value("--data-dir").expect("--data-dir");
    assert_hardened("baton-coordinator.service", &coordinator, &c_data);
    assert_eq!(coordinator.last("User"), Some("baton"));
    assert_eq!(coordinator.last("CapabilityBoundingSet"), Some(""));

    for (name, unit) in [
        ("baton-agent.service", &agent),
        ("with run-as.conf", &run_as),
    ] {
        let mut env = unit.environment();
        env.extend(agent_env.iter().cloned());
        let a = Invocation::from_words(&shell_words(&expand(&unit.exec_start(), &env))[1..]);
        assert_eq!(a.path, ["agent"], "{name}");
        let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        let mut problems = a.problems(&names);
        problems.extend(a.problems(&["BATON_ENROLL_TOKEN".to_owned()]));
        assert!(problems.is_empty(), "{name}: {problems:?}");
        let url = a.value("--coordinator").expect("--coordinator");
        assert!(
            url.starts_with("https://"),
            "{name}: the agent must dial the coordinator over TLS, not {url}"
        );
        assert!(
            !a.flags()
                .iter()
                .any(|f| f == "--enroll" || f == "--insecure"),
            "{name}: no token and no --insecure on the command line: {:?}",
            a.args
        );
        let files = unit.service("EnvironmentFile");
        assert!(
            files.contains(&"-/etc/baton/enroll.env"),
            "{name}: the token comes from the optional 0600 file /etc/baton/enroll.env: {files:?}"
        );
        let a_data = a.value("--data-dir").expect("--data-dir");
        assert_hardened(name, unit, &a_data);
        assert_eq!(unit.last("KillMode"), Some("mixed"), "{name}");
        // A revoked (exit 6) or refused (exit 2) agent must stay stopped.
        let prevent: Vec<&str> = unit
            .service("RestartPreventExitStatus")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .collect();
        assert!(
            prevent.contains(&"6") && prevent.contains(&"2"),
            "{name}: RestartPreventExitStatus= must hold 2 and 6: {prevent:?}"
        );
    }
    assert_eq!(agent.last("User"), Some("baton"));
    assert_eq!(agent.last("CapabilityBoundingSet"), Some(""));
    // Run-as: root, but only the capabilities run-as uses, and no way to gain more.
    assert_eq!(run_as.last("User"), Some("root"));
    let caps = run_as.service("CapabilityBoundingSet");
    assert_eq!(
        caps.iter().rev().nth(1),
        Some(&""),
        "run-as.conf resets the set first"
    );
    assert!(
        !caps.last().unwrap_or(&"").contains("CAP_SYS_ADMIN"),
        "run-as.conf: {caps:?}"
    );
    assert!(run_as.exec_start().contains("--allow-run-as"));
}

/// Copies of the units (and the agent unit with the run-as drop-in) whose binary
/// is this build's: systemd-analyze checks that ExecStart's program exists.
fn write_units_for_analysis(dir: &Path) -> Vec<String> {
    let bin = baton_bin().display().to_string();
    let files = [
        (
            "baton-coordinator.service",
            read_deploy_file("systemd/baton-coordinator.service"),
        ),
        (
            "baton-agent.service",
            read_deploy_file("systemd/baton-agent.service"),
        ),
        (
            "baton-agent-run-as.service",
            format!(
                "{}\n{}",
                read_deploy_file("systemd/baton-agent.service"),
                read_deploy_file("systemd/run-as.conf")
            ),
        ),
    ];
    let mut paths = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text.replace(INSTALLED_BIN, &bin)).expect("write unit copy");
        paths.push(path.display().to_string());
    }
    paths
}

/// `systemd-analyze verify` accepts the units without a single warning, and
/// `systemd-analyze security --offline` rates each within its exposure limit.
#[test]
fn systemd_units_pass_verify_and_their_exposure_limits() {
    if !on_path("systemd-analyze") {
        skip(
            "systemd_units_pass_verify_and_their_exposure_limits",
            "systemd-analyze is not installed (Debian: apt-get install -y systemd; .ci/run does it)",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let paths = write_units_for_analysis(dir.path());
    let verify = run_bounded(
        Command::new("systemd-analyze").arg("verify").args(&paths),
        Duration::from_secs(60),
    );
    assert!(
        verify.code == Some(0)
            && verify.stderr.trim().is_empty()
            && verify.stdout.trim().is_empty(),
        "systemd-analyze verify must accept the units without a warning\n{}",
        verify.describe()
    );
    let mut measured = Vec::new();
    for (path, (name, max)) in paths.iter().zip(EXPOSURE_MAX) {
        let out = run_bounded(
            Command::new("systemd-analyze")
                .args(["security", "--offline=true", "--no-pager"])
                .arg(path),
            Duration::from_secs(60),
        )
        .ok();
        let exposure: f64 = out
            .stdout
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no overall exposure for {name}\n{}", out.describe()));
        measured.push(format!("{name} {exposure}"));
        assert!(
            exposure <= max,
            "{name}: exposure {exposure} above {max}\n{}",
            out.stdout
        );
    }
    eprintln!("systemd-analyze security exposure: {}", measured.join(", "));
}

/// From nothing to a fleet, as docs/operations.md tells it, with the units'
/// command lines: the coordinator makes its CA; the admin makes a one-time token
/// per agent; each agent gets `agent.env` and a 0600 `enroll.env`, enrols over TLS
/// (the token never in its argv), registers, and a fan-out runs on both. Then
/// `enroll.env` is deleted and an agent restarted: it comes back on the
/// certificate it stored, without a token.
#[test]
fn systemd_units_bring_up_a_fleet_that_enrols_over_tls() {
    let (coordinator_unit, agent_unit, _) = units();
    let root = TestDir::new("deploy-systemd");
    let bin = baton_bin().display().to_string();

    // Machine 1: the coordinator, as its unit starts it (Environment= only).
    let c_data = root.path().join("coordinator").join("data");
    let mut argv = shell_words(&coordinator_unit.exec_start());
    replace_value(&mut argv, "--listen", "127.0.0.1:0");
    replace_value(&mut argv, "--data-dir", &c_data.display().to_string());
    argv[0].clone_from(&bin);
    let mut coordinator = Daemon::spawn(
        "coordinator",
        &root.path().join("coordinator"),
        &argv,
        &coordinator_unit.environment(),
    );
    let addr = coordinator.announced(Duration::from_secs(30));
    let url = format!("https://{addr}");
    let admin = c_data.join("tls").join("admin");

    // Machines 2 and 3: one token each, then the agent unit's command line.
    let example = env_file(&read_deploy_file("systemd/agent.env"));
    let names = ["etl-01", "etl-02"];
    let mut agents = Vec::new();
    for name in names {
        let token = client(
            &url,
            &admin,
            &["token", "create", "--agent", name, "--ttl", "15m"],
            Duration::from_secs(30),
        )
        .ok()
        .stdout
        .trim()
        .to_owned();
        assert!(
            token.starts_with("btn_enr_"),
            "a token on stdout: {token:?}"
        );
        let etc = root.path().join(name).join("etc");
        fs::create_dir_all(&etc).expect("create etc");
        let port = dead_port();
        let values = [
            ("COORDINATOR_URL", url.clone()),
            ("AGENT_NAME", name.to_owned()),
            ("AGENT_ADVERTISE", format!("127.0.0.1:{port}")),
        ];
        // agent.env: the example's keys, this machine's values.
        let mut text = String::new();
        for (k, _) in &example {
            let v = values
                .iter()
                .find(|(key, _)| key == k)
                .unwrap_or_else(|| panic!("agent.env has {k}, which the test does not set"));
            text.push_str(&format!("{k}={}\n", v.1));
        }
        fs::write(etc.join("agent.env"), text).expect("write agent.env");
        let enroll = etc.join("enroll.env");
        fs::write(&enroll, format!("BATON_ENROLL_TOKEN={token}\n")).expect("write enroll.env");
        fs::set_permissions(&enroll, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
        let daemon = start_agent(&agent_unit, root.path(), name, port, &bin);
        let cmdline = fs::read(format!("/proc/{}/cmdline", daemon.pid())).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&token),
            "the token must not be on the agent's command line"
        );
        agents.push(daemon);
    }
    for a in &mut agents {
        a.announced(Duration::from_secs(30));
        assert!(
            a.stderr().contains("enrolled"),
            "{} enrolled:\n{}",
            a.name,
            a.stderr()
        );
    }
    wait_agents_ready(&url, &admin, &names, Duration::from_secs(30));
    fanout_through(&url, &admin, &root.path().join("packages"), 24, &names);

    // Once enrolled, the token file goes; a restart needs only the stored certificate.
    let name = names[0];
    let port: u16 = {
        let env = env_file(
            &fs::read_to_string(root.path().join(name).join("etc").join("agent.env"))
                .expect("read agent.env"),
        );
        let adv = &env
            .iter()
            .find(|(k, _)| k == "AGENT_ADVERTISE")
            .expect("advertise")
            .1;
        adv.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    };
    agents[0].kill();
    fs::remove_file(root.path().join(name).join("etc").join("enroll.env")).expect("rm enroll.env");
    let mut again = start_agent(&agent_unit, root.path(), name, port, &bin);
    again.announced(Duration::from_secs(30));
    agents[0] = again;
    wait_agents_ready(&url, &admin, &names, Duration::from_secs(30));
    fanout_through(&url, &admin, &root.path().join("packages-2"), 8, &names);

    let mut bad = coordinator.error_lines();
    for a in &agents {
        bad.extend(a.error_lines());
    }
    assert!(bad.is_empty(), "ERROR lines: {bad:?}");
    coordinator.kill();
}

/// Starts the agent unit's command line for machine `name` under `root`: the
/// environment from `Environment=` and its existing `EnvironmentFile=`s (in
/// `root/NAME/etc/`), `${VAR}` expanded, loopback on `port`, a temp data dir.
fn start_agent(unit: &Unit, root: &Path, name: &str, port: u16, bin: &str) -> Daemon {
    let etc = root.join(name).join("etc");
    let mut env = unit.environment();
    for file in unit.service("EnvironmentFile") {
        let optional = file.starts_with('-');
        let file = file.trim_start_matches('-');
        let local = etc.join(Path::new(file).file_name().expect("a file name"));
        match fs::read_to_string(&local) {
            Ok(text) => env.extend(env_file(&text)),
            Err(_) if optional => {}
            Err(e) => panic!("EnvironmentFile={file} is required: {e}"),
        }
    }
    let mut argv = shell_words(&expand(&unit.exec_start(), &env));
    replace_value(&mut argv, "--listen", &format!("127.0.0.1:{port}"));
    let data = root.join(name).join("data");
    replace_value(&mut argv, "--data-dir", &data.display().to_string());
    argv[0] = bin.to_owned();
    Daemon::spawn(name, &root.join(name), &argv, &env)
}

/// Sets the value after `flag` in `argv`; panics if the flag is absent.
fn replace_value(argv: &mut [String], flag: &str, value: &str) {
    let i = argv
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {argv:?}"));
    value.clone_into(&mut argv[i + 1]);
}
