//! The agent's configuration: one plain struct, defaults, and `validate()`.
//!
//! Layering (defaults < file < `BATON_*` environment < flags) is the CLI's job; this
//! module only holds the resulting values and checks that they make sense together.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::AgentError;
use crate::run_as::{RULES_MAX, RunAsRule};

/// Default SIGTERM → SIGKILL grace in milliseconds.
pub const DEFAULT_KILL_GRACE_MS: u64 = 5_000;
/// Default timeout of one task of a child package, in seconds.
pub const DEFAULT_TASK_TIMEOUT_S: u64 = 3_600;
/// Default number of bytes of stdout / stderr kept in the finished event.
pub const DEFAULT_OUTPUT_TAIL_BYTES: usize = 4_096;

/// Upper bounds, so that a typo cannot configure something absurd.
const SLOTS_MAX: u32 = 10_000;
/// Largest placement weight an agent may ask for.
pub const WEIGHT_MAX: u32 = 100;
const KILL_GRACE_MS_MAX: u64 = 10 * 60 * 1_000;
const TASK_TIMEOUT_S_MAX: u64 = 7 * 24 * 3_600;
const OUTPUT_TAIL_BYTES_MAX: usize = 1 << 20;
const LABELS_MAX: usize = 256;

/// Everything `run` needs to know.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Human-readable name of this agent (unique per fleet by convention).
    pub name: String,
    /// Where the coordinator listens, e.g. `http://127.0.0.1:7400`, or the
    /// comma-separated URLs of every coordinator of a highly available cluster.
    pub coordinator_url: String,
    /// `host:port` the coordinator dials for `AgentService`.
    pub advertise_addr: String,
    /// How many child jobs may run at once.
    pub slots: u32,
    /// Jobs accepted beyond the slots, which wait here (in order) for a slot:
    /// the coordinator may keep `slots + queue` jobs on this agent, so a slot
    /// that frees starts the next job without a round trip. 0: none.
    pub queue: u32,
    /// Labels for placement constraints.
    pub labels: BTreeMap<String, String>,
    /// Relative share of work under least-loaded placement (1 = normal, 2 =
    /// filled as if it had twice its slots; never beyond them).
    pub weight: u32,
    /// Directory for the outbox (`agent.redb`) and job scratch directories.
    pub data_dir: PathBuf,
    /// SIGTERM → SIGKILL grace when a job's process group is ended.
    pub kill_grace_ms: u64,
    /// Timeout of a task that sets none.
    pub default_task_timeout_s: u64,
    /// Bytes of stdout / stderr kept in the finished event.
    pub output_tail_bytes: usize,
    /// Mutual TLS material (the default); `None` means plaintext (`--insecure`).
    pub tls: Option<crate::tls::TlsPem>,
    /// OS users that packages may ask to run as (`run_as`), each for every folder or
    /// for one folder and its sub-folders (`--allow-run-as USER[:FOLDER]`). Empty:
    /// every job that asks for a run-as user is refused.
    pub allow_run_as: Vec<RunAsRule>,
    /// Scratch directories of finished jobs (logs, outputs, rows) older than
    /// this are removed.
    pub retain_jobs_for: std::time::Duration,
    /// How to start the process watchdog that ends running jobs if the agent
    /// dies ([`crate::watchdog`]); `None`: no watchdog (embedders, unit tests;
    /// the journal still ends them at the next start). `baton agent` sets it.
    pub watchdog: Option<crate::watchdog::Launcher>,
    /// Where the agent counts for `--metrics-listen`; `None`: counted but
    /// read by nobody.
    pub metrics: Option<std::sync::Arc<crate::metrics::AgentMetrics>>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: "agent".to_string(),
            coordinator_url: "http://127.0.0.1:7400".to_string(),
            advertise_addr: "127.0.0.1:7401".to_string(),
            slots: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            queue: 0,
            labels: BTreeMap::new(),
            weight: 1,
            data_dir: PathBuf::from("baton-agent-data"),
            kill_grace_ms: DEFAULT_KILL_GRACE_MS,
            default_task_timeout_s: DEFAULT_TASK_TIMEOUT_S,
            output_tail_bytes: DEFAULT_OUTPUT_TAIL_BYTES,
            tls: None,
            allow_run_as: Vec::new(),
            retain_jobs_for: std::time::Duration::from_secs(7 * 86_400),
            watchdog: None,
            metrics: None,
        }
    }
}

impl AgentConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |msg: String| Err(AgentError::ConfigInvalid(msg));
        if self.name.trim().is_empty() {
            return bad("name must not be empty".into());
        }
        if self.name.len() > 253 {
            return bad("name is longer than 253 bytes".into());
        }
        // One URL, or the comma-separated URLs of every coordinator of a cluster.
        let urls = baton_proto::failover::parse_urls(&self.coordinator_url)
            .map_err(|e| AgentError::ConfigInvalid(format!("coordinator_url: {e}")))?;
        for url in urls {
            if url.parse::<tonic::transport::Uri>().is_err() {
                return bad(format!("coordinator_url {url:?} is not a valid URL"));
            }
        }
        match self.advertise_addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return bad(format!(
                    "advertise_addr {:?} must be host:port with a non-zero port",
                    self.advertise_addr
                ));
            }
        }
        if self.slots == 0 || self.slots > SLOTS_MAX {
            return bad(format!(
                "slots must be between 1 and {SLOTS_MAX}, got {}",
                self.slots
            ));
        }
        if self.queue > SLOTS_MAX {
            return bad(format!(
                "queue must be between 0 and {SLOTS_MAX}, got {}",
                self.queue
            ));
        }
        if self.weight == 0 || self.weight > WEIGHT_MAX {
            return bad(format!(
                "weight must be between 1 and {WEIGHT_MAX}, got {}",
                self.weight
            ));
        }
        if self.labels.len() > LABELS_MAX {
            return bad(format!("at most {LABELS_MAX} labels are allowed"));
        }
        if let Some(k) = self.labels.keys().find(|k| k.trim().is_empty()) {
            return bad(format!("label key {k:?} must not be empty"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must not be empty".into());
        }
        if self.kill_grace_ms > KILL_GRACE_MS_MAX {
            return bad(format!(
                "kill_grace_ms must be at most {KILL_GRACE_MS_MAX}, got {}",
                self.kill_grace_ms
            ));
        }
        if self.default_task_timeout_s == 0 || self.default_task_timeout_s > TASK_TIMEOUT_S_MAX {
            return bad(format!(
                "default_task_timeout_s must be between 1 and {TASK_TIMEOUT_S_MAX}, got {}",
                self.default_task_timeout_s
            ));
        }
        if self.allow_run_as.len() > RULES_MAX {
            return bad(format!(
                "allow_run_as: at most {RULES_MAX} rules are allowed"
            ));
        }
        if self.output_tail_bytes > OUTPUT_TAIL_BYTES_MAX {
            return bad(format!(
                "output_tail_bytes must be at most {OUTPUT_TAIL_BYTES_MAX}, got {}",
                self.output_tail_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        AgentConfig::default().validate().unwrap();
    }

    #[test]
    fn a_list_of_coordinators_is_valid_and_each_url_is_checked() {
        let mut c = AgentConfig {
            coordinator_url: "https://c1:7400, https://c2:7400".into(),
            ..AgentConfig::default()
        };
        c.validate().unwrap();
        for bad in [
            "https://c1:7400,",
            "https://c1:7400,c2:7400",
            "https://c1:7400,http://c2:7400",
        ] {
            c.coordinator_url = bad.into();
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains("coordinator_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut AgentConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|c| c.name = " ".into())),
            (
                "coordinator_url",
                Box::new(|c| c.coordinator_url = "127.0.0.1:7400".into()),
            ),
            (
                "advertise_addr",
                Box::new(|c| c.advertise_addr = "localhost".into()),
            ),
            (
                "advertise_addr",
                Box::new(|c| c.advertise_addr = "h:0".into()),
            ),
            ("slots", Box::new(|c| c.slots = 0)),
            ("queue", Box::new(|c| c.queue = SLOTS_MAX + 1)),
            ("data_dir", Box::new(|c| c.data_dir = PathBuf::new())),
            (
                "default_task_timeout_s",
                Box::new(|c| c.default_task_timeout_s = 0),
            ),
            (
                "output_tail_bytes",
                Box::new(|c| c.output_tail_bytes = 1 << 30),
            ),
            (
                "allow_run_as",
                Box::new(|c| c.allow_run_as = vec!["etl".parse().unwrap(); RULES_MAX + 1]),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = AgentConfig::default();
            mutate(&mut c);
            let err = c.validate().unwrap_err();
            assert_eq!(err.code(), "AGENT_CONFIG_INVALID");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }
}
