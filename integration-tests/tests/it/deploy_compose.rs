//! `deploy/docker/` and `deploy/compose/`: the image is built here from scratch
//! (nothing is pulled) from this build's binary, and the compose file brings up one
//! coordinator and three agents that enrol over TLS with one-time tokens; a fan-out
//! sent from the host runs on all three.
//!
//! Needs a docker engine and docker-compose (v1, or the v2 plugin); skipped with a
//! message when either is missing or the engine does not answer. Each run uses its
//! own compose project and image tag, and removes its containers, network,
//! volumes and image at the end, pass or fail (container logs are printed on a
//! failure).
//!
//! The same run also starts the agent of `deploy/kubernetes/agent.yaml` the way its
//! manifest says (script, variables, the token file named after its node in the
//! Secret's mount, read-only root filesystem, no capabilities) as a fourth agent:
//! no cluster runs here, but that script and that image are tried for real.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::deploy_support::{
    Ran, TestDir, client, deploy_dir, fanout_through, on_path, run_bounded, skip, wait_agents_ready,
};
use crate::harness::baton_bin;

const AGENTS: [&str; 3] = ["agent-1", "agent-2", "agent-3"];

/// The compose command that works here: `docker-compose`, else `docker compose`.
fn compose_command() -> Option<Vec<String>> {
    let candidates: [&[&str]; 2] = [&["docker-compose"], &["docker", "compose"]];
    candidates.into_iter().find_map(|c| {
        if !on_path(c[0]) {
            return None;
        }
        let out = run_bounded(
            Command::new(c[0]).args(&c[1..]).arg("version"),
            Duration::from_secs(30),
        );
        (out.code == Some(0)).then(|| c.iter().map(|s| (*s).to_owned()).collect())
    })
}

/// One compose project: every command runs with its name, file and variables;
/// dropping it takes everything down (`down -v`) and removes the image.
struct Project {
    compose: Vec<String>,
    name: String,
    image: String,
    env: Vec<(String, String)>,
    /// Containers started outside compose on its network (removed first).
    extra: Vec<String>,
    down: bool,
}

impl Project {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .arg("-f")
            .arg(deploy_dir().join("compose").join("docker-compose.yml"))
            .arg("-p")
            .arg(&self.name)
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Ran {
        run_bounded(&mut self.cmd(args), timeout)
    }

    fn logs(&self) -> String {
        let out = self.run(&["logs", "--no-color"], Duration::from_secs(60));
        format!("{}{}", out.stdout, out.stderr)
    }

    /// Containers and volumes still labelled with this project.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for what in [
            &["ps", "-aq"][..],
            &["volume", "ls", "-q"],
            &["network", "ls", "-q"],
        ] {
            let out = run_bounded(
                Command::new("docker").args(what).args(["--filter", &label]),
                Duration::from_secs(30),
            );
            left.extend(out.stdout.lines().map(str::to_owned));
        }
        left
    }

    fn take_down(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        for name in &self.extra {
            let _ = run_bounded(
                Command::new("docker").args(["rm", "-f", name]),
                Duration::from_secs(60),
            );
        }
        let out = self.run(
            &["down", "-v", "--remove-orphans", "--timeout", "10"],
            Duration::from_secs(180),
        );
        if out.code != Some(0) {
            eprintln!("compose down failed: {}", out.describe());
        }
        let _ = run_bounded(
            Command::new("docker").args(["rmi", "-f", &self.image]),
            Duration::from_secs(60),
        );
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.down {
            eprintln!("--- compose logs of {} ---\n{}", self.name, self.logs());
        }
        self.take_down();
    }
}

#[test]
fn compose_cluster_of_one_coordinator_and_three_agents_runs_a_fanout() {
    const TEST: &str = "compose_cluster_of_one_coordinator_and_three_agents_runs_a_fanout";
    if !on_path("docker") {
        skip(TEST, "no docker command");
        return;
    }
    let info = run_bounded(
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(30),
    );
    if info.code != Some(0) {
        skip(
            TEST,
            &format!("no docker engine answers: {}", info.stderr.trim()),
        );
        return;
    }
    let Some(compose) = compose_command() else {
        skip(TEST, "neither docker-compose nor `docker compose` works");
        return;
    };

    let root = TestDir::new("deploy-compose");
    let unique = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 1_000_000_000);
    let name = format!("batonit{}x{unique}", std::process::id());
    let image = format!("baton-it-deploy:{name}");
    let mut project = Project {
        compose,
        name,
        image: image.clone(),
        env: vec![
            ("BATON_IMAGE".to_owned(), image.clone()),
            // Publish the coordinator on a free loopback port.
            ("BATON_PUBLISH".to_owned(), "127.0.0.1:".to_owned()),
        ],
        extra: Vec::new(),
        down: false,
    };

    // The image, from this build's binary (a debug build: no release build needed).
    let ctx = root.path().join("image");
    run_bounded(
        Command::new("sh")
            .arg(deploy_dir().join("docker").join("stage.sh"))
            .arg("--bin")
            .arg(baton_bin())
            .arg(&ctx),
        Duration::from_secs(120),
    )
    .ok();
    run_bounded(
        Command::new("docker")
            .args(["build", "-q", "-t", &image])
            .arg(&ctx),
        Duration::from_secs(300),
    )
    .ok();

    // Up: the coordinator, once healthy the token maker, once done the agents.
    project.run(&["up", "-d"], Duration::from_secs(240)).ok();
    let port = project
        .run(&["port", "coordinator", "7400"], Duration::from_secs(30))
        .ok()
        .stdout
        .trim()
        .to_owned();
    let url = format!("https://{port}");
    let cid = project
        .run(&["ps", "-q", "coordinator"], Duration::from_secs(30))
        .ok()
        .stdout
        .trim()
        .to_owned();
    // The operator's identity: the admin client the coordinator made in its volume.
    let admin = root.path().join("admin");
    run_bounded(
        Command::new("docker")
            .arg("cp")
            .arg(format!("{cid}:/var/lib/baton/coordinator/tls/admin"))
            .arg(&admin),
        Duration::from_secs(60),
    )
    .ok();

    wait_agents_ready(&url, &admin, &AGENTS, Duration::from_secs(90));
    fanout_through(&url, &admin, &root.path().join("packages"), 30, &AGENTS);

    // The Kubernetes DaemonSet's agent, run as its manifest says in the same
    // image, joins as a fourth agent with a token from a "Secret" directory.
    let node = "node-4";
    kubernetes_agent_joins(&mut project, &url, &admin, root.path(), node);
    let mut all: Vec<&str> = AGENTS.to_vec();
    all.push(node);
    wait_agents_ready(&url, &admin, &all, Duration::from_secs(60));
    fanout_through(&url, &admin, &root.path().join("packages-4"), 40, &all);

    // The tokens reached the agents by a file, not by their configuration.
    for agent in AGENTS {
        let id = project
            .run(&["ps", "-q", agent], Duration::from_secs(30))
            .ok()
            .stdout
            .trim()
            .to_owned();
        let config = run_bounded(
            Command::new("docker").args(["inspect", "--format", "{{json .Config}}", &id]),
            Duration::from_secs(30),
        )
        .ok();
        assert!(
            !config.stdout.contains("btn_enr_"),
            "{agent}: a token in the container's configuration"
        );
    }
    let node_config = run_bounded(
        Command::new("docker").args(["inspect", "--format", "{{json .Config}}", &project.extra[0]]),
        Duration::from_secs(30),
    )
    .ok();
    assert!(
        !node_config.stdout.contains("btn_enr_"),
        "{node}: a token in its configuration"
    );
    let node_logs = run_bounded(
        Command::new("docker").args(["logs", &project.extra[0]]),
        Duration::from_secs(30),
    );
    let mut logs = project.logs();
    logs.push_str(&node_logs.stdout);
    logs.push_str(&node_logs.stderr);
    for agent in all {
        assert!(
            logs.contains(&format!("agent enrolled agent={agent}")),
            "{agent} did not enrol with a token:\n{logs}"
        );
    }
    let errors: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines in the containers' logs:\n{}",
        errors.join("\n")
    );

    project.take_down();
    let left = project.leftovers();
    assert!(left.is_empty(), "left behind after `down -v`: {left:?}");
}

/// Starts the agent container of `deploy/kubernetes/agent.yaml` on the compose
/// network, as a pod would run: its script, its literal variables, `NODE_NAME`,
/// `POD_IP` (here the container's network alias), the token file named after the
/// node in a read-only mount at the Secret's path, a read-only root filesystem, no
/// capabilities. The Service's name resolves to the coordinator (`--add-host`).
fn kubernetes_agent_joins(project: &mut Project, url: &str, admin: &Path, root: &Path, node: &str) {
    let pod = crate::deploy_kubernetes::agent_pod();
    let network = format!("{}_default", project.name);
    let coordinator = project
        .run(&["ps", "-q", "coordinator"], Duration::from_secs(30))
        .ok()
        .stdout
        .trim()
        .to_owned();
    let service = pod
        .script
        .split("https://")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .expect("the script dials https://SERVICE:PORT")
        .to_owned();
    let ip = run_bounded(
        Command::new("docker").args([
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &coordinator,
        ]),
        Duration::from_secs(30),
    )
    .ok()
    .stdout
    .trim()
    .to_owned();
    let token = client(
        url,
        admin,
        &["token", "create", "--agent", node, "--ttl", "15m"],
        Duration::from_secs(30),
    )
    .ok()
    .stdout
    .trim()
    .to_owned();
    // The Secret's file: readable by the container's user, as fsGroup makes it.
    let secret = root.join("secret");
    fs::create_dir_all(&secret).expect("secret dir");
    fs::write(secret.join(node), format!("{token}\n")).expect("token file");
    fs::set_permissions(secret.join(node), fs::Permissions::from_mode(0o644)).expect("chmod");
    let name = format!("{}-{node}", project.name);
    // Removed by take_down, even if what follows fails.
    project.extra.push(name.clone());
    let mut cmd = Command::new("docker");
    cmd.args(["run", "-d", "--name", &name, "--network", &network])
        .args(["--network-alias", node, "--read-only", "--cap-drop", "ALL"])
        .args(["--security-opt", "no-new-privileges"])
        .args(["--tmpfs", "/tmp"])
        .arg("--add-host")
        .arg(format!("{service}:{ip}"))
        .arg("--tmpfs")
        .arg(format!("{}:uid=10001,gid=10001,mode=0700", pod.data_dir))
        .arg("-v")
        .arg(format!("{}:{}:ro", secret.display(), pod.secret_mount))
        .args([
            "-e",
            &format!("NODE_NAME={node}"),
            "-e",
            &format!("POD_IP={node}"),
        ]);
    for (k, v) in &pod.env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.args(["--entrypoint", "/bin/sh", &project.image, "-c", &pod.script]);
    run_bounded(&mut cmd, Duration::from_secs(60)).ok();
}
