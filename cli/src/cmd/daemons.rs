//! `baton coordinator` and `baton agent`: the two long-running processes.
//!
//! Each process reads only variables of its own: `BATON_COORDINATOR_*` for the
//! coordinator, `BATON_AGENT_*` (and `BATON_COORDINATOR`, the address it
//! dials, `BATON_ENROLL_TOKEN`) for an agent. `BATON_TLS_DIR` is the CLI's
//! client identity and nothing else: a coordinator started in a shell that
//! exported it for the CLI must not take it for its CA directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::CliError;

/// Run a coordinator.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  baton coordinator --listen 127.0.0.1:7400 --data-dir /var/lib/baton"
)]
pub struct CoordinatorArgs {
    /// Address to serve gRPC on (port 0 picks a free port; the chosen one is printed).
    #[arg(
        long,
        env = "BATON_COORDINATOR_LISTEN",
        default_value = "127.0.0.1:7400"
    )]
    pub listen: String,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "BATON_COORDINATOR_DATA_DIR", default_value = "baton-data")]
    pub data_dir: PathBuf,
    /// An agent silent this long is declared lost and its children re-run.
    #[arg(long, env = "BATON_COORDINATOR_LEASE_TTL_MS", default_value_t = 5000)]
    pub lease_ttl_ms: u64,
    /// Heartbeat interval asked of agents.
    #[arg(long, env = "BATON_COORDINATOR_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// TLS directory: CA, the coordinator's certificate, `admin/` client identity
    /// (created on first start; default: DATA_DIR/tls). Never BATON_TLS_DIR,
    /// which is the CLI's client identity; a directory that holds a client or
    /// agent identity (tls.pem or ca.pem without ca.key) is refused.
    #[arg(long, env = "BATON_COORDINATOR_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Lifetime of the certificates this coordinator issues (its own, the admin
    /// identity's, every agent's): e.g. 24h, 30m, 90s. Each renews at two thirds
    /// of it, without a restart.
    #[arg(long, env = "BATON_COORDINATOR_CERT_TTL", default_value = "24h", value_parser = crate::cmd::duration_arg::parse_duration)]
    pub cert_ttl: std::time::Duration,
    /// Keep ended executions (their records, children, outputs) this long, e.g. 7d, 12h.
    #[arg(long, env = "BATON_COORDINATOR_RETAIN_FOR", default_value = "7d", value_parser = crate::cmd::duration_arg::parse_duration)]
    pub retain_for: std::time::Duration,
    /// Keep at most this many ended executions (the newest); older ones are pruned.
    #[arg(long, env = "BATON_COORDINATOR_RETAIN_COUNT", default_value_t = 10_000)]
    pub retain_count: usize,
    /// How often to prune, e.g. 5m.
    #[arg(long, default_value = "5m", value_parser = crate::cmd::duration_arg::parse_duration)]
    pub prune_every: std::time::Duration,
    /// Placement strategy of executions that name none: least-loaded,
    /// round-robin or spread:LABEL (`baton run --placement` overrides it).
    #[arg(
        long,
        env = "BATON_COORDINATOR_PLACEMENT",
        default_value = "least-loaded"
    )]
    pub placement: baton_coordinator::placement::Strategy,
    /// Refuse a start (COORDINATOR_BUSY, retry later) that would bring the
    /// children not yet finished, over all running executions, past this; an
    /// execution larger than this alone is refused for good (EXECUTION_TOO_LARGE).
    /// Sub-executions and rows foreach children wait until there is room.
    /// Each unfinished child costs about 1 KB of coordinator memory. 0: no limit.
    #[arg(long, env = "BATON_COORDINATOR_MAX_PENDING_CHILDREN", default_value_t = baton_coordinator::scheduler::DEFAULT_MAX_PENDING_CHILDREN)]
    pub max_pending_children: u64,
    /// Quarantine an agent after this many failed children within
    /// --quarantine-window with no success between (0: never).
    #[arg(
        long,
        env = "BATON_COORDINATOR_QUARANTINE_FAILURES",
        default_value_t = 5
    )]
    pub quarantine_failures: u32,
    /// The window of --quarantine-failures, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = crate::cmd::duration_arg::parse_duration)]
    pub quarantine_window: std::time::Duration,
    /// How long a quarantined agent gets no new children, e.g. 5m.
    #[arg(long, default_value = "5m", value_parser = crate::cmd::duration_arg::parse_duration)]
    pub quarantine_cooldown: std::time::Duration,
    /// Serve plaintext instead of mutual TLS. Refused unless --listen is a loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// Rotate DATA_DIR/audit.log when it reaches this size (e.g. 64MiB, 500000).
    #[arg(long, env = "BATON_COORDINATOR_AUDIT_MAX_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub audit_max_bytes: u64,
    /// Rotated audit files kept (audit.log.1 … audit.log.N); 0: none, the file is emptied.
    #[arg(long, env = "BATON_COORDINATOR_AUDIT_KEEP", default_value_t = baton_coordinator::auth::audit_file::DEFAULT_KEEP)]
    pub audit_keep: u32,
    /// Most bytes one principal may keep in the store: package versions it
    /// deployed and executions it started that retention has not removed yet
    /// (QUOTA_EXCEEDED past it). 0: no quota.
    #[arg(long, env = "BATON_COORDINATOR_QUOTA_BYTES_PER_PRINCIPAL", default_value = "1GiB", value_parser = parse_bytes)]
    pub quota_bytes_per_principal: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464
    /// (plaintext: a loopback address only; port 0 picks a free port, printed).
    /// Needs --metrics-token-file. See docs/observability.md.
    #[arg(
        long,
        env = "BATON_COORDINATOR_METRICS_LISTEN",
        value_name = "ADDR",
        requires = "metrics_token_file"
    )]
    pub metrics_listen: Option<String>,
    /// File holding the bearer token every scrape must send (Prometheus:
    /// `authorization: { credentials_file: FILE }`); at least 16 characters,
    /// not readable by others.
    #[arg(
        long,
        env = "BATON_COORDINATOR_METRICS_TOKEN_FILE",
        value_name = "FILE",
        requires = "metrics_listen"
    )]
    pub metrics_token_file: Option<PathBuf>,
    /// Serve the web dashboard at https://ADDR/ (e.g. 0.0.0.0:7443; port 0
    /// picks a free port, logged). HTTPS only, with a certificate from
    /// Baton's CA (trust DATA_DIR/tls/ca.pem in the browser once); people
    /// log in with an API token (`baton token create --kind api NAME`) and see
    /// what their folder permissions allow. See docs/observability.md.
    #[arg(long, env = "BATON_COORDINATOR_DASHBOARD_LISTEN", value_name = "ADDR")]
    pub dashboard_listen: Option<std::net::SocketAddr>,
    /// A name (DNS name or IP address) browsers use to reach the dashboard,
    /// put in its certificate (not a Baton identity name such as
    /// coordinator.baton); repeat or separate
    /// with commas. Default: localhost, 127.0.0.1 and ::1, plus the listen
    /// address when it is a specific one.
    #[arg(
        long,
        env = "BATON_COORDINATOR_DASHBOARD_NAME",
        value_name = "NAME",
        value_delimiter = ',',
        requires = "dashboard_listen"
    )]
    pub dashboard_name: Vec<String>,
    /// Where executions, the catalog and the agent registry are kept:
    /// `embedded` (one file in DATA_DIR, one coordinator) or
    /// `etcd://HOST:PORT,HOST:PORT,...` (an etcd cluster shared by several
    /// coordinators, one of which leads).
    #[arg(long, env = "BATON_COORDINATOR_STORE", default_value = "embedded")]
    pub store: String,
    /// etcd's CA certificate (PEM): mutual TLS to etcd needs --etcd-ca,
    /// --etcd-cert and --etcd-key together; without them only loopback
    /// endpoints are allowed (plaintext).
    #[arg(long, env = "BATON_COORDINATOR_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// This coordinator's client certificate for etcd (PEM).
    #[arg(long, env = "BATON_COORDINATOR_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, env = "BATON_COORDINATOR_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// Every key this cluster writes in etcd starts with this (several Baton
    /// clusters may share one etcd).
    #[arg(long, env = "BATON_COORDINATOR_ETCD_PREFIX", default_value = baton_coordinator::store::config::DEFAULT_KEY_PREFIX)]
    pub etcd_prefix: String,
    /// etcd's --max-txn-ops (give the value etcd was started with): commits
    /// are split to fit.
    #[arg(long, env = "BATON_COORDINATOR_ETCD_MAX_TXN_OPS", default_value_t = baton_coordinator::store::config::ETCD_DEFAULT_MAX_TXN_OPS)]
    pub etcd_max_txn_ops: usize,
    /// etcd's --max-request-bytes (give the value etcd was started with).
    #[arg(long, env = "BATON_COORDINATOR_ETCD_MAX_REQUEST_BYTES", default_value = "1572864", value_parser = parse_bytes)]
    pub etcd_max_request_bytes: u64,
    /// How long to wait at start for etcd to answer (with a quorum) before
    /// giving up with STORE_UNAVAILABLE, e.g. 30s.
    #[arg(long, env = "BATON_COORDINATOR_ETCD_CONNECT_TIMEOUT", default_value = "30s", value_parser = crate::cmd::duration_arg::parse_duration)]
    pub etcd_connect_timeout: std::time::Duration,
    /// The URL clients and agents should use to reach this coordinator, which
    /// standbys name in their NOT_LEADER answers, such as `https://c1.example:7400`
    /// (default: the listen address; set it when listening on 0.0.0.0).
    #[arg(long, env = "BATON_COORDINATOR_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// With --store etcd: a leader cut off from etcd this long loses its term
    /// and another coordinator takes over (rounded up to seconds; keep it at
    /// 4s or more so that a term survives etcd electing its own leader).
    #[arg(long, env = "BATON_COORDINATOR_LEADER_LEASE", default_value = "5s", value_parser = crate::cmd::duration_arg::parse_duration)]
    pub leader_lease: std::time::Duration,
}

/// `--metrics-listen` and `--metrics-token-file` of either daemon.
#[derive(Debug, Clone)]
pub struct MetricsArgs {
    pub metrics_listen: Option<String>,
    pub metrics_token_file: Option<PathBuf>,
}

impl MetricsArgs {
    /// Starts the endpoint when asked to, printing `baton WHAT metrics on ADDR`.
    async fn serve(
        &self,
        what: &str,
        component: &'static str,
        render: crate::metrics_http::Render,
        on_refused: Option<crate::metrics_http::OnRefused>,
        shutdown: CancellationToken,
    ) -> Result<(), CliError> {
        let (Some(listen), Some(token)) = (&self.metrics_listen, &self.metrics_token_file) else {
            return Ok(());
        };
        let addr =
            crate::metrics_http::serve(listen, token, component, render, on_refused, shutdown)
                .await?;
        announce(format!("baton {what} metrics on {addr}"));
        Ok(())
    }
}

/// The store of `--store` and the `--etcd-*` flags.
pub fn store_config(
    args: &CoordinatorArgs,
) -> Result<baton_coordinator::store::StoreConfig, CliError> {
    use baton_coordinator::store::{EtcdConfig, EtcdTls, StoreConfig, config::parse_etcd_url};
    let tls_flags = [&args.etcd_ca, &args.etcd_cert, &args.etcd_key];
    let tls_given = tls_flags.iter().filter(|f| f.is_some()).count();
    if args.store.trim().eq_ignore_ascii_case("embedded") {
        if tls_given > 0 {
            return Err(CliError::invalid(
                "ETCD_TLS_INCOMPLETE",
                "--etcd-ca, --etcd-cert and --etcd-key apply to --store etcd://...; the store is embedded",
            ));
        }
        return Ok(StoreConfig::Embedded);
    }
    let endpoints = parse_etcd_url(args.store.trim()).map_err(|why| {
        CliError::invalid(
            "STORE_URL_INVALID",
            format!(
                "--store {why}\n  hint: --store embedded (the default), or --store etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"
            ),
        )
    })?;
    let tls = match (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
        (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None, None) => None,
        _ => {
            let missing: Vec<&str> = ["--etcd-ca", "--etcd-cert", "--etcd-key"]
                .into_iter()
                .zip(tls_flags)
                .filter(|(_, f)| f.is_none())
                .map(|(name, _)| name)
                .collect();
            return Err(CliError::invalid(
                "ETCD_TLS_INCOMPLETE",
                format!(
                    "mutual TLS to etcd needs --etcd-ca, --etcd-cert and --etcd-key together; missing {}",
                    missing.join(", ")
                ),
            ));
        }
    };
    let prefix = args.etcd_prefix.trim();
    if prefix.is_empty() || prefix.contains(char::is_control) {
        return Err(CliError::invalid(
            "ETCD_PREFIX_INVALID",
            "--etcd-prefix must be a non-empty key prefix without control characters, e.g. /baton/",
        ));
    }
    if args.etcd_max_txn_ops < 2 || args.etcd_max_request_bytes < 4096 {
        return Err(CliError::invalid(
            "USAGE",
            "--etcd-max-txn-ops must be at least 2 and --etcd-max-request-bytes at least 4096 (give the values etcd runs with)",
        ));
    }
    let mut config = EtcdConfig::new(endpoints);
    config.tls = tls;
    config.key_prefix = prefix.to_string();
    config.max_txn_ops = args.etcd_max_txn_ops;
    config.max_request_bytes = usize::try_from(args.etcd_max_request_bytes).unwrap_or(usize::MAX);
    config.connect_patience = args.etcd_connect_timeout;
    Ok(StoreConfig::Etcd(config))
}

/// A byte count: digits with an optional unit (B, KB, MB, GB: powers of 1000;
/// KiB, MiB, GiB: powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count (e.g. 1GiB, 500MB, 1048576)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// The process watchdog of `baton agent`: this executable again, hidden
/// subcommand `agent-watchdog`.
fn watchdog_launcher() -> Result<baton_agent::watchdog::Launcher, CliError> {
    let program = std::env::current_exe().map_err(|e| {
        CliError::other(
            "AGENT_IO",
            format!("cannot find this executable to start the process watchdog: {e}"),
        )
    })?;
    Ok(baton_agent::watchdog::Launcher {
        program,
        args: vec!["agent-watchdog".to_owned()],
    })
}

/// Run an agent on this machine.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example (its token must allow its labels: `baton token create --agent etl-07 --label pool=etl`):\n  baton agent --coordinator https://10.0.0.5:7400 --name etl-07 \\\n      --listen 0.0.0.0:7401 --advertise 10.0.0.7:7401 --slots 8 --label pool=etl \\\n      --allow-run-as etl:/etl --allow-run-as reports"
)]
pub struct AgentArgs {
    /// Coordinator URL; for a highly available cluster, the URLs of its coordinators
    /// separated by commas (https://c1:7400,https://c2:7400): the agent registers with
    /// the leader (a standby names it), moves to the next coordinator when one goes
    /// away, and resends its unacknowledged events to the new leader; its jobs keep
    /// running through a failover.
    #[arg(long, env = "BATON_COORDINATOR", default_value = crate::client::DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// Agent name, unique in the fleet (default: the host name).
    #[arg(long, env = "BATON_AGENT_NAME")]
    pub name: Option<String>,
    /// Address to serve AgentService on (port 0 picks a free port).
    #[arg(long, env = "BATON_AGENT_LISTEN", default_value = "127.0.0.1:7401")]
    pub listen: String,
    /// Address the coordinator should dial (default: the bound listen address).
    #[arg(long, env = "BATON_AGENT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Child jobs run at once (default: number of CPUs).
    #[arg(long, env = "BATON_AGENT_SLOTS")]
    pub slots: Option<u32>,
    /// Jobs accepted beyond the slots, started in order as slots free: the
    /// coordinator may keep slots + N jobs here, so a freed slot starts the next
    /// one without a round trip. Good for many short jobs; 0 (the default) for
    /// long uneven ones, where a queued job could wait behind a long one while
    /// another agent is idle.
    #[arg(long, env = "BATON_AGENT_QUEUE", default_value_t = 0)]
    pub queue: u32,
    /// Label for placement, repeatable: --label pool=etl --label zone=a. The
    /// enrolment token must allow it (`baton token create --agent NAME --label pool=etl`).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Relative share of work under least-loaded placement: an agent of weight 2
    /// is filled as if it had twice its slots (never beyond them). 1-100.
    #[arg(long, env = "BATON_AGENT_WEIGHT", default_value_t = 1)]
    pub weight: u32,
    /// Directory of the outbox and job scratch space (created if missing).
    #[arg(long, env = "BATON_AGENT_DATA_DIR", default_value = "baton-agent-data")]
    pub data_dir: PathBuf,
    /// Grace between SIGTERM and SIGKILL when a job is cancelled or times out.
    #[arg(long, default_value_t = 5000)]
    pub kill_grace_ms: u64,
    /// This agent's identity: ca.pem, tls.pem, tls.key (default: DATA_DIR/tls).
    /// Made by --enroll, or by hand with `baton certs issue --agent NAME --out DIR`.
    #[arg(long, env = "BATON_AGENT_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// One-time enrolment token from `baton token create --agent`: if the TLS
    /// directory holds no certificate yet, the agent gets one with it (the key
    /// never leaves this host). Ignored once enrolled. Prefer the environment
    /// variable: a flag shows up in `ps`.
    #[arg(long = "enroll", env = "BATON_ENROLL_TOKEN", hide_env_values = true)]
    pub enroll: Option<String>,
    /// Plaintext instead of mutual TLS. Refused unless --listen, --advertise and
    /// the --coordinator URL are all loopback addresses (PLAINTEXT_NOT_LOOPBACK).
    #[arg(long)]
    pub insecure: bool,
    /// Let packages with `run_as = "USER"` run as that OS user, repeatable. Without
    /// FOLDER for every catalog folder; with FOLDER only for that folder and its
    /// sub-folders (etl:/etl allows /etl and /etl/daily, not /etlx). The agent must run
    /// as root to switch users; uid 0 is never used. Jobs asking for any other user
    /// are refused (RUN_AS_DENIED) and the coordinator tries other agents.
    #[arg(long = "allow-run-as", value_name = "USER[:FOLDER]")]
    pub allow_run_as: Vec<String>,
    /// Remove the scratch directories (logs, outputs, rows) of jobs that ended
    /// longer ago than this, e.g. 7d, 12h. Running jobs are never touched.
    #[arg(long, env = "BATON_AGENT_RETAIN_FOR", default_value = "7d", value_parser = crate::cmd::duration_arg::parse_duration)]
    pub retain_for: std::time::Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464
    /// (plaintext: a loopback address only; port 0 picks a free port, printed).
    /// Needs --metrics-token-file. See docs/observability.md.
    #[arg(
        long,
        env = "BATON_AGENT_METRICS_LISTEN",
        value_name = "ADDR",
        requires = "metrics_token_file"
    )]
    pub metrics_listen: Option<String>,
    /// File holding the bearer token every scrape must send (Prometheus:
    /// `authorization: { credentials_file: FILE }`); at least 16 characters,
    /// not readable by others.
    #[arg(
        long,
        env = "BATON_AGENT_METRICS_TOKEN_FILE",
        value_name = "FILE",
        requires = "metrics_listen"
    )]
    pub metrics_token_file: Option<PathBuf>,
}

async fn bind(addr: &str) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::other("LISTEN_FAILED", format!("cannot listen on {addr}: {e}")))
}

fn announce(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Variables `baton coordinator` read before they got its own prefix
/// (`BATON_X` is now `BATON_COORDINATOR_X`). One still set while the option has
/// no other source (flag, new variable, config file) refuses the start: going on
/// with the default would, for `BATON_DATA_DIR`, open a fresh store and CA.
const RENAMED_COORDINATOR_VARS: [&str; 13] = [
    "BATON_LISTEN",
    "BATON_DATA_DIR",
    "BATON_LEASE_TTL_MS",
    "BATON_HEARTBEAT_MS",
    "BATON_CERT_TTL",
    "BATON_RETAIN_FOR",
    "BATON_RETAIN_COUNT",
    "BATON_PLACEMENT",
    "BATON_MAX_PENDING_CHILDREN",
    "BATON_QUARANTINE_FAILURES",
    "BATON_AUDIT_MAX_BYTES",
    "BATON_AUDIT_KEEP",
    "BATON_QUOTA_BYTES_PER_PRINCIPAL",
];

/// The same for `baton agent` (`BATON_X` is now `BATON_AGENT_X`).
const RENAMED_AGENT_VARS: [&str; 1] = ["BATON_SLOTS"];

/// Refuses to start a daemon (`path` is `["coordinator"]` or `["agent"]`)
/// while a variable it read under its old name is set and the option it set
/// has no value from anywhere else: the old name is ignored, and the default
/// (a fresh data directory, say) must not silently replace it. Exit 2.
pub fn refuse_renamed(
    path: &[String],
    settings: &[crate::config::Setting],
    env: crate::config::EnvLookup<'_>,
) -> Result<(), CliError> {
    let (old, prefix): (&[&str], &str) = match path {
        [c] if c == "coordinator" => (&RENAMED_COORDINATOR_VARS, "BATON_COORDINATOR_"),
        [c] if c == "agent" => (&RENAMED_AGENT_VARS, "BATON_AGENT_"),
        _ => return Ok(()),
    };
    for name in old {
        if env(name).is_none() {
            continue;
        }
        let rest = name.trim_start_matches("BATON_");
        let key = rest.to_ascii_lowercase().replace('_', "-");
        let defaulted = settings
            .iter()
            .find(|s| s.key == key)
            .is_none_or(|s| s.source == crate::config::Source::Default);
        if defaulted {
            return Err(CliError::invalid(
                "ENV_RENAMED",
                format!(
                    "{name} is set but `baton {}` no longer reads it: it is now {prefix}{rest}\n  \
                     hint: rename the variable (or give --{key}); starting with the default \
                     instead could, for a data directory, open an empty store",
                    path[0]
                ),
            ));
        }
        warn!(variable = name, use_instead = %format!("{prefix}{rest}"), "ignored: this variable was renamed");
    }
    Ok(())
}

/// `BATON_TLS_DIR` is the CLI's identity, but the coordinator of earlier
/// releases took it for its CA directory. When it names a CA directory (it
/// holds `ca.key`) and the directory this coordinator will use holds none, the
/// coordinator would make a new CA that no agent trusts: refused (exit 2).
fn refuse_old_tls_dir(effective: &std::path::Path) -> Result<(), CliError> {
    let Some(old) = std::env::var_os("BATON_TLS_DIR").map(PathBuf::from) else {
        return Ok(());
    };
    if old.join("ca.key").is_file() && !effective.join("ca.key").exists() {
        return Err(CliError::invalid(
            "ENV_RENAMED",
            format!(
                "BATON_TLS_DIR={} holds a CA (ca.key) but `baton coordinator` no longer reads \
                 it, and its TLS directory {} has none: it would make a new CA\n  hint: give \
                 --tls-dir {} or BATON_COORDINATOR_TLS_DIR (BATON_TLS_DIR is the CLI's client \
                 identity only)",
                old.display(),
                effective.display(),
                old.display()
            ),
        ));
    }
    Ok(())
}

pub async fn coordinator(args: CoordinatorArgs) -> Result<(), CliError> {
    let store = store_config(&args)?;
    if !args.insecure {
        let tls_dir = args
            .tls_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("tls"));
        refuse_old_tls_dir(&tls_dir)?;
    }
    let listener = bind(&args.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::other("LISTEN_FAILED", e.to_string()))?;
    crate::private_dir::secure(&args.data_dir, crate::private_dir::COORDINATOR)?;
    let security = if args.insecure {
        refuse_insecure_beyond_loopback(addr)?;
        warn!(%addr, "serving plaintext (--insecure): anyone on this host can control the fleet");
        baton_coordinator::transport::Security::Insecure
    } else {
        let tls_dir = args.tls_dir.unwrap_or_else(|| args.data_dir.join("tls"));
        crate::private_dir::secure_tls_dir(&tls_dir)?;
        let (live, created) =
            baton_coordinator::live_tls::LiveTls::bootstrap(&tls_dir, args.cert_ttl).map_err(
                |e| {
                    let exit = if matches!(e, baton_coordinator::pki::PkiError::NotCaDir { .. }) {
                        crate::error::EXIT_INVALID
                    } else {
                        crate::error::EXIT_OTHER
                    };
                    CliError::new(
                        e.code(),
                        format!("TLS setup in {}: {e}", tls_dir.display()),
                        exit,
                    )
                },
            )?;
        if created {
            info!(dir = %tls_dir.display(), admin = %tls_dir.join("admin").display(), "created a CA, the coordinator certificate and an admin client identity");
        }
        baton_coordinator::transport::Security::Tls(live)
    };
    let metrics_args = MetricsArgs {
        metrics_listen: args.metrics_listen.clone(),
        metrics_token_file: args.metrics_token_file.clone(),
    };
    let config = baton_coordinator::CoordinatorConfig {
        data_dir: args.data_dir,
        lease_ttl_ms: args.lease_ttl_ms,
        heartbeat_ms: args.heartbeat_ms,
        security,
        retention: baton_coordinator::retention::Policy {
            keep_for: args.retain_for,
            keep_count: args.retain_count,
            every: args.prune_every,
        },
        scheduling: baton_coordinator::SchedulingConfig {
            default_strategy: args.placement,
            quarantine: baton_coordinator::scheduler::QuarantineConfig {
                failures: args.quarantine_failures,
                window: args.quarantine_window,
                cooldown: args.quarantine_cooldown,
            },
            max_pending_children: args.max_pending_children,
            local_children: false,
        },
        audit: baton_coordinator::auth::audit_file::Limits {
            max_bytes: args.audit_max_bytes,
            keep: args.audit_keep,
        },
        quota_bytes_per_principal: args.quota_bytes_per_principal,
        store,
        ha: baton_coordinator::HaConfig {
            advertise: args.advertise.clone(),
            leader_lease_ms: u64::try_from(args.leader_lease.as_millis()).unwrap_or(u64::MAX),
        },
        metrics: metrics_args
            .metrics_listen
            .is_some()
            .then(baton_coordinator::prometheus::Registry::new),
        dashboard: args
            .dashboard_listen
            .map(|listen| baton_coordinator::web::DashboardConfig {
                listen,
                names: dashboard_names(listen, &args.dashboard_name),
            }),
    };
    config
        .validate()
        .map_err(|e| CliError::invalid(e.code(), e.to_string()))?;
    let shutdown = CancellationToken::new();
    if let Some(registry) = &config.metrics {
        let (r, a) = (registry.clone(), registry.clone());
        metrics_args
            .serve(
                "coordinator",
                "coordinator",
                Arc::new(move || baton_coordinator::prometheus::render(&r.read())),
                Some(Arc::new(move |ip, code| a.refused(ip, code))),
                shutdown.clone(),
            )
            .await?;
    }
    let running = baton_coordinator::start(config, listener, shutdown.clone())
        .await
        .map_err(|e| {
            // The store's settings are the user's to fix; an etcd without
            // quorum may come back.
            let exit = match e.code() {
                "PLAINTEXT_NOT_LOOPBACK" | "CONFIG_INVALID" => Some(crate::error::EXIT_INVALID),
                "STORE_UNAVAILABLE" => Some(crate::error::EXIT_UNAVAILABLE),
                _ => None,
            };
            let mut err = CliError::from(e);
            err.exit = exit.unwrap_or(err.exit);
            err
        })?;
    announce(format!("baton coordinator listening on {addr}"));
    let mut task = running.task;
    tokio::select! {
        _ = super::signals::shutdown_signal() => {
            info!("shutting down");
            shutdown.cancel();
            (&mut task).await.map_err(|e| CliError::other("INTERNAL", e.to_string()))??;
        }
        r = &mut task => {
            r.map_err(|e| CliError::other("INTERNAL", e.to_string()))??;
        }
    }
    Ok(())
}

fn refuse_insecure_beyond_loopback(addr: std::net::SocketAddr) -> Result<(), CliError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(CliError::invalid(
            "INSECURE_NOT_LOOPBACK",
            format!(
                "--insecure serves plaintext, which is allowed only on a loopback address, not {addr}; drop --insecure to use mutual TLS"
            ),
        ))
    }
}

pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for l in labels {
        let (k, v) = l.split_once('=').ok_or_else(|| {
            CliError::invalid("USAGE", format!("label '{l}' must be written key=value"))
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

pub async fn agent(args: AgentArgs) -> Result<(), CliError> {
    let listener = bind(&args.listen).await?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::other("LISTEN_FAILED", e.to_string()))?;
    let advertise = match args.advertise {
        Some(a) => a,
        None if bound.ip().is_unspecified() => {
            return Err(CliError::invalid(
                "USAGE",
                format!(
                    "--listen {bound} is a wildcard address; say with --advertise which address the coordinator should dial"
                ),
            ));
        }
        None => bound.to_string(),
    };
    let name = args.name.unwrap_or_else(hostname);
    // Run-as users pass through the data directory to their job directories.
    let layout = crate::private_dir::agent(!args.allow_run_as.is_empty());
    crate::private_dir::secure(&args.data_dir, layout)?;
    let tls = if args.insecure {
        refuse_insecure_beyond_loopback(bound)?;
        baton_agent::transport::refuse_plaintext_beyond_loopback(&args.coordinator, &advertise)
            .await
            .map_err(|e| CliError::invalid(e.code(), e.to_string()))?;
        warn!(%bound, "serving plaintext (--insecure)");
        None
    } else {
        baton_agent::transport::require_https(&args.coordinator)
            .map_err(|e| CliError::invalid(e.code(), e.to_string()))?;
        let dir = args
            .tls_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("tls"));
        crate::private_dir::secure_tls_dir(&dir)?;
        if let Some(token) = &args.enroll
            && !dir.join("tls.pem").exists()
        {
            info!(coordinator = %args.coordinator, "enrolling");
            baton_agent::enrol::enroll(&args.coordinator, token, &name, &dir)
                .await
                .map_err(|e| CliError::other(e.code(), e.to_string()))?;
            info!(dir = %dir.display(), "enrolled: certificate stored");
        }
        Some(baton_agent::transport::TlsPem::load(&dir).map_err(|e| {
            CliError::invalid(
                "AGENT_TLS_MISSING",
                format!(
                    "{e}\n  hint: enrol with a token (`baton token create --agent` on an admin \
                     host, then `BATON_ENROLL_TOKEN=… baton agent …`), or issue a certificate with \
                     `baton certs issue --agent {name} --out {}` and copy the directory here",
                    dir.display()
                ),
            )
        })?)
    };
    let allow_run_as = args
        .allow_run_as
        .iter()
        .map(|rule| rule.parse::<baton_agent::run_as::RunAsRule>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::invalid(e.code(), e.to_string()))?;
    let mut config = baton_agent::AgentConfig {
        name: name.clone(),
        coordinator_url: args.coordinator,
        advertise_addr: advertise,
        labels: parse_labels(&args.labels)?,
        weight: args.weight,
        queue: args.queue,
        data_dir: args.data_dir,
        kill_grace_ms: args.kill_grace_ms,
        tls,
        allow_run_as,
        retain_jobs_for: args.retain_for,
        watchdog: Some(watchdog_launcher()?),
        ..Default::default()
    };
    if let Some(s) = args.slots {
        config.slots = s;
    }
    let metrics_args = MetricsArgs {
        metrics_listen: args.metrics_listen.clone(),
        metrics_token_file: args.metrics_token_file.clone(),
    };
    if metrics_args.metrics_listen.is_some() {
        config.metrics = Some(Arc::default());
    }
    config
        .validate()
        .map_err(|e| CliError::invalid(e.code(), e.to_string()))?;
    let shutdown = CancellationToken::new();
    if let Some(metrics) = config.metrics.clone() {
        metrics_args
            .serve(
                &format!("agent {name}"),
                "agent",
                Arc::new(move || metrics.render()),
                None,
                shutdown.clone(),
            )
            .await?;
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::signals::shutdown_signal().await;
        info!("shutting down");
        stop.cancel();
    });
    announce(format!("baton agent {name} listening on {bound}"));
    baton_agent::run(config, listener, shutdown)
        .await
        .map_err(|e| match e {
            baton_agent::AgentError::Revoked(_) => CliError::new(
                e.code(),
                format!(
                    "{e}\n  hint: an operator ran `baton agents revoke {name}`; to bring this \
                     machine back, enrol it again with a new token (`baton token create --agent \
                     {name}`, then `BATON_ENROLL_TOKEN=… baton agent …` with an empty TLS directory)"
                ),
                crate::error::EXIT_REVOKED,
            ),
            baton_agent::AgentError::RegistrationRefused(_) => CliError::invalid(
                e.code(),
                format!(
                    "{e}\n  hint: the token this machine enrolled with allows only the labels \
                     it was created with; create one that allows the labels this agent claims \
                     (`baton token create --agent {name} --label KEY=VALUE`) and enrol again \
                     with an empty TLS directory, or drop the --label flags the token does not allow"
                ),
            ),
            e if e.code() == baton_proto::plaintext::CODE => {
                CliError::invalid(e.code(), e.to_string())
            }
            e => CliError::other(e.code(), e.to_string()),
        })
}

/// The names in the dashboard's certificate: those given, else the loopback
/// names and the listen address when it is a specific one.
fn dashboard_names(listen: std::net::SocketAddr, given: &[String]) -> Vec<String> {
    if !given.is_empty() {
        return given
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = listen.ip().to_string();
    if !listen.ip().is_unspecified() && !names.contains(&ip) {
        names.push(ip);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::{CoordinatorArgs, parse_bytes, store_config};
    use baton_coordinator::store::StoreConfig;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        coordinator: CoordinatorArgs,
    }

    fn store(flags: &[&str]) -> Result<StoreConfig, crate::error::CliError> {
        let args =
            Args::try_parse_from(std::iter::once("baton").chain(flags.iter().copied())).unwrap();
        store_config(&args.coordinator)
    }

    #[test]
    fn the_store_is_embedded_unless_an_etcd_url_is_given() {
        assert_eq!(store(&[]).unwrap(), StoreConfig::Embedded);
        assert_eq!(
            store(&["--store", "embedded"]).unwrap(),
            StoreConfig::Embedded
        );
        let StoreConfig::Etcd(etcd) = store(&[
            "--store",
            "etcd://10.0.0.1:2379,10.0.0.2",
            "--etcd-ca",
            "ca.pem",
            "--etcd-cert",
            "c.pem",
            "--etcd-key",
            "c.key",
            "--etcd-prefix",
            "/prod/",
            "--etcd-max-txn-ops",
            "512",
            "--etcd-max-request-bytes",
            "10MiB",
        ])
        .unwrap() else {
            panic!("an etcd store");
        };
        assert_eq!(etcd.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(etcd.key_prefix, "/prod/");
        assert_eq!((etcd.max_txn_ops, etcd.max_request_bytes), (512, 10 << 20));
        assert_eq!(etcd.tls.unwrap().key, std::path::PathBuf::from("c.key"));
        let StoreConfig::Etcd(plain) = store(&["--store", "etcd://127.0.0.1:2379"]).unwrap() else {
            panic!("an etcd store");
        };
        assert_eq!((plain.tls, plain.key_prefix.as_str()), (None, "/baton/"));
    }

    #[test]
    fn bad_store_flags_are_refused_with_their_code() {
        for (flags, code, says) in [
            (
                &["--store", "etcd://h1:x"][..],
                "STORE_URL_INVALID",
                "not a port number",
            ),
            (
                &["--store", "redis://h1"][..],
                "STORE_URL_INVALID",
                "etcd://",
            ),
            (
                &["--store", "etcd://h1", "--etcd-ca", "ca.pem"][..],
                "ETCD_TLS_INCOMPLETE",
                "missing --etcd-cert, --etcd-key",
            ),
            (
                &["--etcd-key", "k.pem"][..],
                "ETCD_TLS_INCOMPLETE",
                "embedded",
            ),
            (
                &["--store", "etcd://h1", "--etcd-prefix", ""][..],
                "ETCD_PREFIX_INVALID",
                "non-empty",
            ),
        ] {
            let e = store(flags).unwrap_err();
            assert_eq!(
                (e.code.as_str(), e.exit),
                (code, 2),
                "{flags:?}: {}",
                e.message
            );
            assert!(e.message.contains(says), "{flags:?}: {}", e.message);
        }
    }

    #[test]
    fn byte_counts_with_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("2 KiB"), Ok(2048));
        assert!(parse_bytes("1TiB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("MiB").is_err());
        assert!(
            parse_bytes("99999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
