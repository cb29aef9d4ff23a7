//! `deploy/kubernetes/`: the manifests parse, say only what the binary accepts, and
//! fit together — a coordinator StatefulSet with its state on a volume claim and a
//! Service on its port, agents as a DaemonSet that dial that Service over https and
//! take their enrolment token from a Secret, never from a command line.
//!
//! No cluster runs here, so this is what can be checked without one: the files
//! are read with the small YAML reader of `deploy_yaml` (and rendered by `kubectl
//! kustomize` when kubectl is installed), and every `baton` command line in them
//! (container arguments, `sh -c` scripts, exec probes) is matched against the
//! binary's `--help`: options, and `BATON_*` variables against `[env: …]`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::deploy_support::{
    Invocation, baton_env_names, baton_invocations, deploy_dir, on_path, read_deploy_file,
    run_bounded,
};
use crate::deploy_yaml::{Yaml, parse_documents};

/// Variables a container may set for processes other than baton (`NO_COLOR`: no
/// colour codes in the log).
const OTHER_PROCESS_ENVS: [&str; 1] = ["NO_COLOR"];

/// Every document of every file `kustomization.yaml` lists, with its file name.
fn manifests() -> Vec<(String, Yaml)> {
    let kustomization = parse_documents(&read_deploy_file("kubernetes/kustomization.yaml"))
        .unwrap_or_else(|e| panic!("kustomization.yaml: {e}"));
    let files = kustomization[0]
        .get("resources")
        .expect("kustomization.yaml lists resources")
        .strings();
    assert!(!files.is_empty());
    let mut out = Vec::new();
    for file in files {
        let text = read_deploy_file(&format!("kubernetes/{file}"));
        for doc in parse_documents(&text).unwrap_or_else(|e| panic!("{file}: {e}")) {
            out.push((file.clone(), doc));
        }
    }
    out
}

fn kind(doc: &Yaml) -> &str {
    doc.get("kind").and_then(Yaml::as_str).unwrap_or("")
}

fn name(doc: &Yaml) -> &str {
    doc.at(&["metadata", "name"])
        .and_then(Yaml::as_str)
        .unwrap_or("")
}

/// The pod spec of a workload.
fn pod_spec(doc: &Yaml) -> Option<&Yaml> {
    match kind(doc) {
        "StatefulSet" | "DaemonSet" | "Deployment" | "Job" | "ReplicaSet" => {
            doc.at(&["spec", "template", "spec"])
        }
        "CronJob" => doc.at(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// What a container runs, as the checks see it.
struct Container<'a> {
    where_: String,
    node: &'a Yaml,
    /// The container's own process (a daemon), then its exec probes (clients).
    main: Invocation,
    probes: Vec<Invocation>,
    /// The `sh -c` script, when the container runs one.
    script: Option<String>,
    env: Vec<String>,
}

fn containers<'a>(file: &str, doc: &'a Yaml) -> Vec<Container<'a>> {
    let Some(spec) = pod_spec(doc) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec.get(list).map(Yaml::items).unwrap_or_default() {
            let cname = c.get("name").and_then(Yaml::as_str).unwrap_or("?");
            let where_ = format!("{file}: {} {}/{cname}", kind(doc), name(doc));
            let command = c.get("command").map(Yaml::strings).unwrap_or_default();
            let args = c.get("args").map(Yaml::strings).unwrap_or_default();
            let (main, script) = match command.as_slice() {
                // The image's entrypoint is baton.
                [] => (Invocation::from_words(&args), None),
                [sh, dash_c, rest @ ..] if sh.ends_with("sh") && dash_c == "-c" => {
                    let script = rest.first().or(args.first()).cloned().unwrap_or_default();
                    let mut inv = baton_invocations(&script);
                    assert_eq!(
                        inv.len(),
                        1,
                        "{where_}: the script runs baton once: {script}"
                    );
                    (inv.remove(0), Some(script))
                }
                [bin, rest @ ..] if bin == "baton" || bin.ends_with("/baton") => {
                    let mut words = rest.to_vec();
                    words.extend(args);
                    (Invocation::from_words(&words), None)
                }
                other => panic!("{where_}: runs {other:?}, not baton"),
            };
            let mut probes = Vec::new();
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let cmd = c
                    .at(&[probe, "exec", "command"])
                    .map(Yaml::strings)
                    .unwrap_or_default();
                if let Some((bin, rest)) = cmd.split_first() {
                    assert!(
                        bin == "baton" || bin.ends_with("/baton"),
                        "{where_}: {probe} runs {bin}"
                    );
                    probes.push(Invocation::from_words(rest));
                }
            }
            let env = c
                .get("env")
                .map(Yaml::items)
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    e.get("name")
                        .and_then(Yaml::as_str)
                        .unwrap_or("")
                        .to_owned()
                })
                .collect();
            out.push(Container {
                where_,
                node: c,
                main,
                probes,
                script,
                env,
            });
        }
    }
    out
}

/// Every option and variable the manifests give baton is one the binary knows;
/// every other variable is used by the container's script.
#[test]
fn kubernetes_manifests_use_what_the_binary_accepts() {
    let docs = manifests();
    let mut checked = 0;
    let mut problems = Vec::new();
    for (file, doc) in &docs {
        for c in containers(file, doc) {
            checked += 1;
            let mut names: BTreeSet<String> = c.env.iter().cloned().collect();
            if let Some(script) = &c.script {
                names.extend(baton_env_names(script));
            }
            let baton_names: Vec<String> = names
                .iter()
                .filter(|n| n.starts_with("BATON_"))
                .cloned()
                .collect();
            for p in c.main.problems(&baton_names) {
                problems.push(format!("{}: {p}", c.where_));
            }
            for probe in &c.probes {
                for p in probe.problems(&[]) {
                    problems.push(format!("{} probe: {p}", c.where_));
                }
            }
            for n in names.iter().filter(|n| !n.starts_with("BATON_")) {
                let used = c.script.as_ref().is_some_and(|s| {
                    s.contains(&format!("${n}")) || s.contains(&format!("${{{n}}}"))
                });
                if !used && !OTHER_PROCESS_ENVS.contains(&n.as_str()) {
                    problems.push(format!("{}: variable {n} is set but not used", c.where_));
                }
            }
            let image = c.node.get("image").and_then(Yaml::as_str).unwrap_or("");
            if image != "baton" {
                problems.push(format!(
                    "{}: image {image:?}: name it `baton` (kustomization.yaml sets the tag)",
                    c.where_
                ));
            }
        }
    }
    assert!(
        checked >= 2,
        "expected a coordinator and an agent container"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The pieces fit: the coordinator's state is on a claim, the Service points at
/// its port, the agents reach that Service over https, enrol with a token read
/// from the Secret into `BATON_ENROLL_TOKEN`, and keep their data on a volume.
#[test]
fn kubernetes_manifests_fit_together() {
    let docs = manifests();
    let find = |k: &str| -> Vec<&Yaml> {
        docs.iter()
            .map(|(_, d)| d)
            .filter(|d| kind(d) == k)
            .collect()
    };

    // The coordinator.
    let sts = find("StatefulSet");
    assert_eq!(sts.len(), 1, "one coordinator StatefulSet");
    let sts = sts[0];
    assert_eq!(
        sts.at(&["spec", "replicas"]).and_then(Yaml::as_str),
        Some("1")
    );
    let cs = containers("coordinator", sts);
    let coord = cs
        .iter()
        .find(|c| c.main.path == ["coordinator"])
        .expect("a container runs `baton coordinator`");
    let listen: SocketAddr = coord
        .main
        .value("--listen")
        .expect("--listen")
        .parse()
        .expect("--listen IP:PORT");
    assert!(
        listen.ip().is_unspecified(),
        "the coordinator listens on every interface"
    );
    assert!(!coord.main.flags().iter().any(|f| f == "--insecure"));
    let data = coord.main.value("--data-dir").expect("--data-dir");
    let claims: Vec<String> = sts
        .at(&["spec", "volumeClaimTemplates"])
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            t.at(&["metadata", "name"])
                .and_then(Yaml::as_str)
                .map(str::to_owned)
        })
        .collect();
    let data_volume = mount_of(coord.node, &data).expect("the data dir is a volume mount");
    // kubelet leaves a claim's root owned by root, group fsGroup, mode 2775: a
    // data directory there is refused (DATA_DIR_INSECURE). It must be below it.
    assert!(
        !mount_paths(coord.node).contains(&data),
        "the coordinator's data dir {data} must be a directory below its volume's mount, \
         not the mount itself"
    );
    assert!(
        claims.contains(&data_volume),
        "the coordinator's data dir must be on a volume claim ({claims:?}), not {data_volume}"
    );
    for probe in &coord.probes {
        if let Some(tls) = probe.value("--tls-dir") {
            assert!(
                tls.starts_with(&data),
                "the probe's identity is in the data dir: {tls}"
            );
        }
    }
    let pod_labels = sts
        .at(&["spec", "template", "metadata", "labels"])
        .expect("pod labels");

    // Its Service.
    let services = find("Service");
    let svc = services
        .iter()
        .find(|s| {
            matches!(s.at(&["spec", "selector"]), Some(Yaml::Map(sel))
                if sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)))
        })
        .expect("a Service selects the coordinator's pods");
    let svc_name = name(svc);
    let svc_ports = svc
        .at(&["spec", "ports"])
        .map(Yaml::items)
        .unwrap_or_default();
    let port_names: Vec<&str> = coord
        .node
        .get("ports")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            p.get("containerPort").and_then(Yaml::as_str) == Some(&listen.port().to_string())
        })
        .filter_map(|p| p.get("name").and_then(Yaml::as_str))
        .collect();
    let svc_port = svc_ports
        .iter()
        .find(|p| {
            let target = p.get("targetPort").and_then(Yaml::as_str).unwrap_or("");
            target == listen.port().to_string() || port_names.contains(&target)
        })
        .and_then(|p| p.get("port").and_then(Yaml::as_str))
        .expect("the Service forwards to the coordinator's --listen port");

    // The agents.
    let workloads: Vec<&Yaml> = find("DaemonSet")
        .into_iter()
        .chain(find("Deployment"))
        .collect();
    let agent = workloads
        .iter()
        .flat_map(|d| containers("agent", d))
        .find(|c| c.main.path == ["agent"])
        .expect("a DaemonSet or Deployment runs `baton agent`");
    let url = agent.main.value("--coordinator").expect("--coordinator");
    let ns = sts
        .at(&["metadata", "namespace"])
        .and_then(Yaml::as_str)
        .unwrap_or("default");
    assert!(
        [
            format!("https://{svc_name}:{svc_port}"),
            format!("https://{svc_name}.{ns}:{svc_port}"),
            format!("https://{svc_name}.{ns}.svc:{svc_port}"),
            format!("https://{svc_name}.{ns}.svc.cluster.local:{svc_port}"),
        ]
        .contains(&url),
        "the agent must dial the coordinator's Service over https, not {url}"
    );
    assert!(
        !agent
            .main
            .flags()
            .iter()
            .any(|f| f == "--enroll" || f == "--insecure"),
        "no token and no --insecure on the agent's command line: {:?}",
        agent.main.args
    );
    let a_data = agent.main.value("--data-dir").expect("--data-dir");
    assert!(
        mount_of(agent.node, &a_data).is_some(),
        "the agent's data dir is a volume"
    );
    assert!(
        agent.main.value("--advertise").is_some(),
        "the agent advertises an address the coordinator can dial"
    );

    // The token: from a Secret, into BATON_ENROLL_TOKEN.
    let agent_pod = workloads
        .iter()
        .find_map(|d| pod_spec(d))
        .expect("agent pod spec");
    let from_env = agent
        .node
        .get("env")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .any(|e| {
            e.get("name").and_then(Yaml::as_str) == Some("BATON_ENROLL_TOKEN")
                && e.at(&["valueFrom", "secretKeyRef", "name"]).is_some()
        });
    let from_file = agent_pod
        .get("volumes")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter(|v| v.at(&["secret", "secretName"]).is_some())
        .filter_map(|v| v.get("name").and_then(Yaml::as_str))
        .any(|vol| {
            let mount = agent
                .node
                .get("volumeMounts")
                .map(Yaml::items)
                .unwrap_or_default()
                .iter()
                .find(|m| m.get("name").and_then(Yaml::as_str) == Some(vol))
                .and_then(|m| m.get("mountPath").and_then(Yaml::as_str).map(str::to_owned));
            match (mount, &agent.script) {
                (Some(path), Some(script)) => {
                    script.contains(&format!("< \"{path}/"))
                        && script.contains("BATON_ENROLL_TOKEN")
                        && script.contains("export BATON_ENROLL_TOKEN")
                }
                _ => false,
            }
        });
    assert!(
        from_env || from_file,
        "the agent's BATON_ENROLL_TOKEN must come from a Secret (env secretKeyRef, or a mounted Secret read by its script)"
    );
}

/// Every mountPath of container `c`.
fn mount_paths(c: &Yaml) -> Vec<String> {
    c.get("volumeMounts")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("mountPath").and_then(Yaml::as_str).map(str::to_owned))
        .collect()
}

/// The name of the volume mounted at `path` or above it in container `c`.
fn mount_of(c: &Yaml, path: &str) -> Option<String> {
    c.get("volumeMounts")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let at = m.get("mountPath").and_then(Yaml::as_str)?;
            let under = path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')));
            under.then(|| m.get("name").and_then(Yaml::as_str).map(str::to_owned))?
        })
        .next()
}

/// `kubectl kustomize` renders the directory (a full YAML parser and kustomize's
/// own checks) with the image set by kustomization.yaml. Skipped without kubectl.
#[test]
fn kubernetes_manifests_render_with_kubectl_kustomize() {
    if !on_path("kubectl") {
        crate::deploy_support::skip(
            "kubernetes_manifests_render_with_kubectl_kustomize",
            "kubectl is not installed (the other kubernetes tests still check the files)",
        );
        return;
    }
    let out = run_bounded(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy_dir().join("kubernetes")),
        Duration::from_secs(60),
    )
    .ok();
    let images: BTreeSet<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert_eq!(
        images.into_iter().collect::<Vec<_>>(),
        ["baton:dev"],
        "{}",
        out.stdout
    );
    // What kubectl rendered is also in the subset the other tests read.
    parse_documents(&out.stdout).unwrap_or_else(|e| panic!("rendered manifests: {e}"));
}

/// What the agent DaemonSet's container runs, for running it elsewhere (the
/// compose test starts it in a container of the same image).
pub struct AgentPod {
    /// The `sh -c` script.
    pub script: String,
    /// The variables with a literal `value:` (those from `valueFrom` are the
    /// caller's to set: `NODE_NAME`, `POD_IP`).
    pub env: Vec<(String, String)>,
    /// Where the Secret `baton-enroll` is mounted.
    pub secret_mount: String,
    /// The agent's `--data-dir`.
    pub data_dir: String,
}

pub fn agent_pod() -> AgentPod {
    let docs = manifests();
    let (file, ds) = docs
        .iter()
        .find(|(_, d)| kind(d) == "DaemonSet")
        .expect("an agent DaemonSet");
    let all = containers(file, ds);
    let c = all
        .iter()
        .find(|c| c.main.path == ["agent"])
        .expect("a container runs `baton agent`");
    let env = c
        .node
        .get("env")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let name = e.get("name").and_then(Yaml::as_str)?;
            let value = e.get("value").and_then(Yaml::as_str)?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();
    let secret_volume = pod_spec(ds)
        .and_then(|p| p.get("volumes"))
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .find(|v| v.at(&["secret", "secretName"]).and_then(Yaml::as_str) == Some("baton-enroll"))
        .and_then(|v| v.get("name").and_then(Yaml::as_str))
        .expect("a volume of the Secret baton-enroll");
    let secret_mount = c
        .node
        .get("volumeMounts")
        .map(Yaml::items)
        .unwrap_or_default()
        .iter()
        .find(|m| m.get("name").and_then(Yaml::as_str) == Some(secret_volume))
        .and_then(|m| m.get("mountPath").and_then(Yaml::as_str))
        .expect("the Secret is mounted")
        .to_owned();
    AgentPod {
        script: c.script.clone().expect("the agent runs a script"),
        env,
        secret_mount,
        data_dir: c.main.value("--data-dir").expect("--data-dir"),
    }
}
