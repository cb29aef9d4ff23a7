//! `baton bench`: a benchmark harness on this machine.
//!
//! It starts a local cluster ([`LocalCluster`]: the coordinator embedded in this
//! process, agents as separate processes, temp dirs, loopback, mutual TLS), runs one
//! workload as a single execution, stops everything and prints one result (a JSON
//! line with `--output json`, a table otherwise). Because the coordinator runs in the
//! bench process, the process's own CPU time and peak RSS are reported as the
//! coordinator's: they include a thin client (one watch stream, a few calls), which is
//! small next to the coordinator's work. The agents' CPU (each agent process and its
//! watchdog, from `/proc/PID/stat`, [`crate::proc_cpu`]) is reported beside it, both
//! also per child. `--coordinator-cpus` and `--agent-cpus` pin the two sides to
//! different CPUs (`taskset`), as if they ran on different machines.
//!
//! Workloads (`docs/benchmarks.md` says what each means for a fleet):
//! - `noop`: children of one `noop` task — no process — so the orchestration alone.
//! - `proc`: children that run `/bin/true`, compared with `xargs -P <slots>` running
//!   the same number of processes on the same machine.
//! - `mixed`: children sleeping 0.05–0.5 s (a fixed spread by index) on agents of
//!   different sizes; the makespan is compared with its lower bound.
//! - `agent-loss`: children of 0.3–1 s; one agent is SIGKILLed when half are done;
//!   reports how fast the loss is seen and that nothing is lost or run twice.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use baton_proto as pb;
use serde_json::{Value, json};

use crate::error::{CliError, EXIT_FAILED};
use crate::local_cluster::{ClusterSpec, LocalCluster};
use crate::output::{Format, outln};
use crate::proc_cpu;

const AGENTS_MAX: u32 = 64;
const SLOTS_MAX: u32 = 1024;
/// The package language's limit on one foreach (`MAX_FOREACH_ITEMS`).
const CHILDREN_MAX: u32 = 1_000_000;
const LEASE_TTL_MS_MIN: u64 = 500;
const LEASE_TTL_MS_MAX: u64 = 600_000;
/// How often `agent-loss` asks ListAgents whether the killed agent is lost yet.
const DETECT_POLL: Duration = Duration::from_millis(50);

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Noop,
    Proc,
    Mixed,
    AgentLoss,
    Failover,
}

/// Where the bench's coordinator keeps its state (`--store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStore {
    /// The embedded store (one redb file).
    Embedded,
    /// A 3-member etcd started on this machine (`etcd` from PATH).
    Etcd,
}

impl Workload {
    fn as_str(self) -> &'static str {
        match self {
            Workload::Noop => "noop",
            Workload::Proc => "proc",
            Workload::Mixed => "mixed",
            Workload::AgentLoss => "agent-loss",
            Workload::Failover => "failover",
        }
    }
}

/// Measure Baton on this machine: a local coordinator and agents run one workload.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  baton bench --workload noop --agents 4 --children 10000 --output json\n  baton bench --workload noop --store etcd --children 10000\n  baton bench --workload agent-loss --agents 3 --children 300\n  baton bench --workload failover --agents 3 --children 2000"
)]
pub struct BenchArgs {
    /// noop: no process per child; proc: /bin/true per child (vs xargs);
    /// mixed: sleeps of 0.05-0.5 s on agents of 1,2,4,8x slots/4; agent-loss: one agent SIGKILLed halfway;
    /// failover: three coordinators on a local 3-member etcd, the leader SIGKILLed halfway
    /// (children sleep 0.1-0.2 s).
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// The coordinator's store: embedded, or etcd (a 3-member etcd started on
    /// this machine, from Debian's etcd-server). `failover` always uses etcd.
    #[arg(long, value_enum, default_value = "embedded")]
    pub store: BenchStore,
    /// failover: the coordinators' leader lease, in seconds.
    #[arg(long, default_value_t = 5)]
    pub leader_lease_s: u64,
    /// Local agents to start (separate processes).
    #[arg(long, default_value_t = 4)]
    pub agents: u32,
    /// Child jobs of the execution.
    #[arg(long, default_value_t = 1000)]
    pub children: u32,
    /// Slots per agent (for `mixed`, the size of the fourth agent of each group of four).
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Jobs each agent accepts beyond its slots, started as slots free
    /// (`baton agent --queue`; 0: none).
    #[arg(long, default_value_t = 0)]
    pub queue: u32,
    /// The coordinator's lease: an agent silent this long is lost.
    #[arg(long, default_value_t = 3000)]
    pub lease_ttl_ms: u64,
    /// Pin the coordinator (this process, every thread) to these CPUs, a
    /// `taskset -c` list such as `0`: as if it had a machine of its own.
    #[arg(long, value_name = "LIST")]
    pub coordinator_cpus: Option<String>,
    /// Pin the agent processes to these CPUs (e.g. `1`). The `proc` baseline
    /// (xargs) runs on every CPU the bench could use before pinning.
    #[arg(long, value_name = "LIST")]
    pub agent_cpus: Option<String>,
    /// Keep the temporary directory (store, agent logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    #[arg(long, value_enum, default_value = "human")]
    pub output: Format,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::invalid("USAGE", msg)
}

/// Checks the flags before anything starts.
pub fn validate(a: &BenchArgs) -> Result<(), CliError> {
    if a.agents == 0 || a.agents > AGENTS_MAX {
        return Err(usage(format!("--agents must be 1..={AGENTS_MAX}")));
    }
    if a.children == 0 || a.children > CHILDREN_MAX {
        return Err(usage(format!("--children must be 1..={CHILDREN_MAX}")));
    }
    if a.slots == 0 || a.slots > SLOTS_MAX {
        return Err(usage(format!("--slots must be 1..={SLOTS_MAX}")));
    }
    if a.queue > SLOTS_MAX {
        return Err(usage(format!("--queue must be 0..={SLOTS_MAX}")));
    }
    if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&a.lease_ttl_ms) {
        return Err(usage(format!(
            "--lease-ttl-ms must be {LEASE_TTL_MS_MIN}..={LEASE_TTL_MS_MAX}"
        )));
    }
    for (flag, list) in [
        ("--coordinator-cpus", &a.coordinator_cpus),
        ("--agent-cpus", &a.agent_cpus),
    ] {
        if let Some(list) = list
            && !crate::proc_cpu::valid_cpu_list(list)
        {
            return Err(usage(format!(
                "{flag} takes a CPU list such as 0, 1-3 or 0,2 (as taskset -c)"
            )));
        }
    }
    if a.workload == Workload::Failover
        && (!(2..=100_000).contains(&a.children) || !(1..=60).contains(&a.leader_lease_s))
    {
        return Err(usage(
            "--workload failover needs --children 2..=100000 (each child is checked) and --leader-lease-s 1..=60",
        ));
    }
    if a.workload == Workload::AgentLoss && (a.agents < 2 || a.children < 2) {
        return Err(usage(
            "--workload agent-loss needs --agents 2 or more (one is killed) and --children 2 or more",
        ));
    }
    Ok(())
}

/// Slots of each agent: `slots` each, except `mixed`, where agent i gets
/// `slots * 2^(i % 4) / 4` (1, 2, 4, 8 with the default 4), at least 1.
pub fn agent_slots(w: Workload, agents: u32, slots: u32) -> Vec<u32> {
    (0..agents)
        .map(|i| match w {
            Workload::Mixed => ((slots << (i % 4)) / 4).max(1),
            _ => slots,
        })
        .collect()
}

/// Work of child `i` in ms: a fixed, well-spread sequence (multiplicative hash by a
/// prime), so runs are comparable.
pub fn work_ms(w: Workload, i: u32) -> u32 {
    let h = (u64::from(i) * 7919) as u32;
    match w {
        Workload::Mixed => 50 + h % 451,      // 50..=500 ms
        Workload::AgentLoss => 300 + h % 701, // 300..=1000 ms
        Workload::Failover => 100 + h % 101,  // 100..=200 ms
        Workload::Noop | Workload::Proc => 0,
    }
}

/// No schedule can finish before the total work spread over every slot, nor before
/// the longest child: max(Σ work / slots, max work), in seconds.
pub fn lower_bound_s(work_ms: &[u32], total_slots: u32) -> f64 {
    let total: u64 = work_ms.iter().map(|&w| u64::from(w)).sum();
    let longest = work_ms.iter().copied().max().unwrap_or(0);
    (total as f64 / f64::from(total_slots.max(1))).max(f64::from(longest)) / 1000.0
}

/// The parent and child packages of a workload (package TOML, `docs/packages.md`).
pub fn packages(w: Workload, children: u32) -> (String, String) {
    let (over, params) = match w {
        Workload::Noop | Workload::Proc => (
            format!("{{ range = {{ start = 1, end = {children} }} }}"),
            "{ i = \"${item}\" }",
        ),
        Workload::Mixed | Workload::AgentLoss | Workload::Failover => {
            // The item is the child's duration in seconds.
            let mut items = String::with_capacity(children as usize * 8);
            for i in 0..children {
                let ms = work_ms(w, i);
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(items, "{sep}\"{}.{:03}\"", ms / 1000, ms % 1000);
            }
            (
                format!("{{ items = [{items}] }}"),
                "{ work_s = \"${item}\" }",
            )
        }
    };
    let parallelism = children.min(100_000);
    let parent = format!(
        "name = \"bench-{name}\"\n\
         [tasks.fan]\n\
         foreach = {over}\n\
         child = \"child.toml\"\n\
         parallelism = {parallelism}\n\
         params = {params}\n\
         retry = {{ attempts = 1, lost_attempts = 3 }}\n",
        name = w.as_str()
    );
    let child = match w {
        Workload::Noop => {
            "name = \"noop\"\n[parameters.i]\ntype = \"int\"\n[tasks.run]\nnoop = true\n"
        }
        Workload::Proc => {
            "name = \"true\"\n[parameters.i]\ntype = \"int\"\n[tasks.run]\nexec = [\"/bin/true\"]\n"
        }
        Workload::Mixed | Workload::AgentLoss | Workload::Failover => {
            "name = \"sleep\"\n[parameters.work_s]\ntype = \"string\"\n[tasks.run]\nexec = [\"sleep\", \"${params.work_s}\"]\ntimeout_s = 60\n"
        }
    };
    (parent, child.to_string())
}

/// CPU seconds (user + system) of this process, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    proc_cpu::cpu_ticks(std::process::id()).unwrap_or(0) as f64 / proc_cpu::TICKS_PER_S
}

/// Peak resident set size of this process (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Wall seconds of `xargs -P parallel -n 1 /bin/true` over `n` input lines, on
/// `cpus` when given (else where this thread may run).
fn xargs_baseline_s(n: u32, parallel: u32, cpus: Option<&str>) -> Result<f64, CliError> {
    use std::io::Write;
    use std::process::Stdio;
    let fail = |e: std::io::Error| CliError::other("BASELINE_FAILED", format!("xargs: {e}"));
    let mut input = String::with_capacity(n as usize * 8);
    for i in 1..=n {
        let _ = writeln!(input, "{i}");
    }
    let started = Instant::now();
    let mut child = proc_cpu::command_on(cpus, "xargs".as_ref())
        .args(["-P", &parallel.to_string(), "-n", "1", "/bin/true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(fail)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(fail)?;
    }
    let status = child.wait().map_err(fail)?;
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(CliError::other(
            "BASELINE_FAILED",
            format!("xargs exited with {status}"),
        ));
    }
    Ok(wall)
}

/// What `agent-loss` observed around the kill.
struct Loss {
    detect_s: f64,
}

/// Waits until half the children are done, SIGKILLs agent 0, and polls ListAgents
/// until it is listed `lost`. `None` if the execution ended first.
async fn kill_halfway(
    cluster: &mut LocalCluster,
    id: &str,
    total: u64,
    give_up: Duration,
) -> Result<Option<Loss>, CliError> {
    use baton_coordinator::api::Watched;
    let Watched::Live(mut rx) = cluster.coordinator.watch(id).await? else {
        return Ok(None);
    };
    loop {
        let done = {
            let s = rx.borrow_and_update();
            s.succeeded + s.failed + s.cancelled
        };
        if done * 2 >= total {
            break;
        }
        if rx.changed().await.is_err() {
            return Ok(None);
        }
    }
    let victim = cluster.agents[0].name.clone();
    let killed = Instant::now();
    cluster.kill_agent(0);
    let mut client = cluster.client.clone();
    loop {
        let list = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .map_err(|s| cluster.opt.status(s))?
            .into_inner();
        if list
            .agents
            .iter()
            .any(|a| a.name == victim && a.state == "lost")
        {
            return Ok(Some(Loss {
                detect_s: killed.elapsed().as_secs_f64(),
            }));
        }
        if killed.elapsed() > give_up {
            return Err(CliError::other(
                "AGENT_LOSS_UNDETECTED",
                format!("{victim} was killed but not listed lost within {give_up:?}"),
            ));
        }
        tokio::time::sleep(DETECT_POLL).await;
    }
}

pub async fn run(args: BenchArgs) -> Result<u8, CliError> {
    validate(&args)?;
    let w = args.workload;
    if w == Workload::Failover {
        let spec = super::bench_failover::FailoverSpec {
            agents: args.agents,
            slots: args.slots,
            queue: args.queue,
            children: args.children,
            leader_lease_s: args.leader_lease_s,
            agent_cpus: args.agent_cpus.clone(),
            keep: args.keep,
            packages: packages(w, args.children),
        };
        let (out, ok) = super::bench_failover::run(&spec).await?;
        print_result(args.output, out);
        if !ok {
            eprintln!(
                "error[EXECUTION_FAILED]: the failover bench lost or duplicated children, or did not succeed"
            );
            return Ok(EXIT_FAILED);
        }
        return Ok(0);
    }
    // A 3-member etcd on this machine, for as long as the bench runs.
    let etcd = match args.store {
        BenchStore::Embedded => None,
        BenchStore::Etcd => Some(start_etcd().await?),
    };
    let store = match &etcd {
        None => baton_coordinator::store::StoreConfig::Embedded,
        Some(e) => baton_coordinator::store::StoreConfig::Etcd(
            baton_coordinator::store::EtcdConfig::new(e.endpoints()),
        ),
    };
    let slots = agent_slots(w, args.agents, args.slots);
    let total_slots: u32 = slots.iter().sum();
    let (parent, child) = packages(w, args.children);
    let human = args.output == Format::Human;
    let spec = ClusterSpec {
        agent_slots: slots.clone(),
        agent_queue: args.queue,
        lease_ttl_ms: args.lease_ttl_ms,
        heartbeat_ms: (args.lease_ttl_ms / 6).max(50),
        agent_cpus: args.agent_cpus.clone(),
        store,
    };
    // Every CPU this process may use, before it pins itself: the baseline's.
    let all_cpus = proc_cpu::allowed_cpus();
    if let Some(cpus) = &args.coordinator_cpus {
        proc_cpu::pin_process(std::process::id(), cpus)
            .map_err(|e| CliError::other("PIN_FAILED", e))?;
    }
    let load_before = load1();
    let mut cluster = LocalCluster::start(&spec, "baton-bench-").await?;
    if human {
        eprintln!(
            "bench {}: {} children on {} agents (slots {:?}), data in {}",
            w.as_str(),
            args.children,
            args.agents,
            slots,
            cluster.path().display()
        );
    }
    let opt = cluster.opt.clone();
    let agent_pids: Vec<u32> = cluster.agents.iter().map(|a| a.child.id()).collect();
    // An agent and its watchdog process; the jobs' processes are not counted
    // (none runs at either reading, and their time is the work, not Baton's).
    let agents_before = proc_cpu::tree_ticks(&agent_pids);
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let id = cluster
        .client
        .start_execution(pb::StartExecutionRequest {
            bundle: Some(pb::PackageBundle {
                root: "parent.toml".into(),
                files: [
                    ("parent.toml".to_string(), parent),
                    ("child.toml".to_string(), child),
                ]
                .into(),
            }),
            parameters: Default::default(),
            folder: String::new(),
            ..Default::default()
        })
        .await
        .map_err(|s| opt.status(s))?
        .into_inner()
        .execution_id;
    let total = u64::from(args.children);
    let mut client = cluster.client.clone();
    let (summary, loss) = if w == Workload::AgentLoss {
        let give_up = Duration::from_millis(args.lease_ttl_ms * 3) + Duration::from_secs(10);
        let waiting = super::follow::wait(&mut client, &opt, &id, false);
        let killing = kill_halfway(&mut cluster, &id, total, give_up);
        let (summary, loss) = tokio::join!(waiting, killing);
        (summary?, loss?)
    } else {
        (
            super::follow::wait(&mut client, &opt, &id, false).await?,
            None,
        )
    };
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu_before;
    // A killed agent (agent-loss) is left out: it is gone at this reading.
    let agent_cpu_s = proc_cpu::spent_s(&agents_before, &proc_cpu::tree_ticks(&agent_pids));
    let metrics = cluster.coordinator.metrics().await?;
    let store_bytes = cluster.coordinator.store_bytes();
    let view = if w == Workload::AgentLoss {
        Some(cluster.coordinator.view(&id).await?)
    } else {
        None
    };
    let ok = summary.state == "succeeded";
    let agent_logs: Vec<std::path::PathBuf> =
        cluster.agents.iter().map(|a| a.log.clone()).collect();
    let kept = cluster.stop(args.keep || !ok).await;

    let (acc, comp) = (&metrics.latency.accept_us, &metrics.latency.completion_ms);
    let mut out: Vec<(&str, Value)> = vec![
        ("workload", json!(w.as_str())),
        ("status", json!(summary.state)),
        ("children", json!(summary.total)),
        ("succeeded", json!(summary.succeeded)),
        ("failed", json!(summary.failed)),
        ("agents", json!(args.agents)),
        ("total_slots", json!(total_slots)),
        ("load1_before", json!(load_before)),
        ("wall_s", json!(round(wall_s, 3))),
        ("children_per_s", json!(round(total as f64 / wall_s, 1))),
        ("accept_p50_us", json!(acc.quantile(0.5))),
        ("accept_p99_us", json!(acc.quantile(0.99))),
        ("accept_max_us", json!(acc.max())),
        ("completion_p50_ms", json!(comp.quantile(0.5))),
        ("completion_p99_ms", json!(comp.quantile(0.99))),
        ("coordinator_cpu_s", json!(round(cpu_s, 2))),
        (
            "coordinator_cpu_ms_per_child",
            json!(round(cpu_s * 1000.0 / total as f64, 4)),
        ),
        ("agent_cpu_s", json!(round(agent_cpu_s, 2))),
        (
            "agent_cpu_ms_per_child",
            json!(round(agent_cpu_s * 1000.0 / total as f64, 4)),
        ),
        ("coordinator_cpus", json!(args.coordinator_cpus)),
        ("agent_cpus", json!(args.agent_cpus)),
        ("coordinator_rss_mb", json!(round(peak_rss_mb(), 1))),
        (
            "store_bytes_per_child",
            json!(round(store_bytes as f64 / total as f64, 1)),
        ),
        ("dispatches", json!(metrics.stats.dispatches)),
        ("rejections", json!(metrics.stats.rejections)),
        ("stale_events", json!(metrics.stats.stale_events)),
        ("duplicate_events", json!(metrics.stats.duplicate_events)),
        ("agents_lost", json!(metrics.stats.agents_lost)),
    ];
    match w {
        // Run by bench_failover::run, which returned above.
        Workload::Noop | Workload::Failover => {}
        Workload::Proc => {
            // Pinned, this process would pass its own CPUs on to xargs.
            let cpus = args.coordinator_cpus.as_ref().and(all_cpus);
            let base_s = tokio::task::spawn_blocking(move || {
                xargs_baseline_s(args.children, total_slots, cpus.as_deref())
            })
            .await
            .map_err(|e| CliError::other("BASELINE_FAILED", e.to_string()))??;
            let base_per_s = total as f64 / base_s;
            out.push(("baseline_wall_s", json!(round(base_s, 3))));
            out.push(("baseline_per_s", json!(round(base_per_s, 1))));
            out.push((
                "vs_baseline",
                json!(round(total as f64 / wall_s / base_per_s, 3)),
            ));
        }
        Workload::Mixed => {
            let work: Vec<u32> = (0..args.children).map(|i| work_ms(w, i)).collect();
            out.push(("makespan_s", json!(round(wall_s, 3))));
            out.push((
                "lower_bound_s",
                json!(round(lower_bound_s(&work, total_slots), 3)),
            ));
        }
        Workload::AgentLoss => {
            let mut seen = HashSet::new();
            let duplicated = view.as_ref().map_or(0, |v| {
                v.children
                    .iter()
                    .filter(|c| !seen.insert((c.task.clone(), c.index)))
                    .count()
            });
            let lost = total.saturating_sub(summary.succeeded + summary.failed + summary.cancelled);
            out.push((
                "detect_s",
                json!(loss.as_ref().map(|l| round(l.detect_s, 3))),
            ));
            out.push(("redispatched", json!(summary.lost_attempts)));
            out.push(("lost", json!(lost)));
            out.push(("duplicated", json!(duplicated)));
        }
    }
    out.push((
        "store",
        json!(if etcd.is_some() { "etcd" } else { "embedded" }),
    ));
    drop(etcd);
    print_result(args.output, out);
    if let Some(kept) = &kept {
        eprintln!("kept {} (coordinator store, agent logs)", kept.display());
    }
    if !ok {
        if kept.is_some() {
            for log in &agent_logs {
                eprintln!("agent log: {}", log.display());
            }
        }
        eprintln!(
            "error[EXECUTION_FAILED]: the bench execution ended {}: {}",
            summary.state, summary.reason
        );
        return Ok(EXIT_FAILED);
    }
    Ok(0)
}

/// Prints the result: one JSON object, or a `key  value` table.
fn print_result(output: Format, out: Vec<(&str, Value)>) {
    match output {
        Format::Json => {
            let obj: serde_json::Map<String, Value> =
                out.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            outln!("{}", Value::Object(obj));
        }
        Format::Human => {
            let width = out.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in &out {
                outln!("{k:<width$}  {v}");
            }
        }
    }
}

/// A 3-member etcd on loopback (`etcd` from PATH), stopped when dropped.
async fn start_etcd() -> Result<baton_coordinator::store::etcd::local::EtcdCluster, CliError> {
    use baton_coordinator::store::etcd::local::{EtcdCluster, etcd_binary};
    let binary = etcd_binary().ok_or_else(|| {
        CliError::other(
            "ETCD_NOT_FOUND",
            "--store etcd runs a 3-member etcd on this machine: no `etcd` on PATH (apt-get install etcd-server)",
        )
    })?;
    tokio::task::spawn_blocking(move || EtcdCluster::try_start(binary, 3, &[], false))
        .await
        .map_err(|e| CliError::other("INTERNAL", e.to_string()))?
        .map_err(|why| CliError::other("ETCD_NOT_STARTED", why))
}

#[cfg(test)]
#[path = "bench_tests.rs"]
mod tests;
