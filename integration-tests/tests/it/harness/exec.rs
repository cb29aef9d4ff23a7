//! Typed views of the CLI's JSON (`baton exec show --output json`, `baton agents list
//! --output json`, the summary of `baton run --wait --output json`).
//!
//! Parsing is strict about the fields the contract names, so that a shape change in
//! the binary fails with the offending JSON instead of a confusing assertion later.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// `tasks` of `exec show --output json` as name → state.
pub fn task_states(show: &Value) -> BTreeMap<String, String> {
    show["tasks"]
        .as_array()
        .expect("tasks in exec show")
        .iter()
        .map(|t| {
            (
                t["task"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// States in which an execution is over.
pub const TERMINAL_EXEC_STATES: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Reads `ptr` (a JSON pointer) as u64 or panics with the document.
pub fn u64_at(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned integer at {ptr} in {v:#}"))
}

/// Reads `ptr` (a JSON pointer) as a string or panics with the document.
pub fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {ptr} in {v:#}"))
}

/// One entry of `children` in `exec show`.
#[derive(Debug, Clone)]
pub struct ChildView {
    pub task: String,
    pub index: u64,
    pub state: String,
    pub attempt: u64,
    /// Empty when the child has not been placed.
    pub agent: String,
    pub attempt_agents: Vec<String>,
    /// When the last attempt started and finished (Unix ms; 0 when unknown).
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    /// Process id (= process group) of the last attempt on its agent; 0 when unknown.
    pub pid: u64,
}

impl ChildView {
    fn parse(v: &Value) -> ChildView {
        let opt_str = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        ChildView {
            task: str_at(v, "/task").to_owned(),
            index: u64_at(v, "/index"),
            state: str_at(v, "/state").to_owned(),
            attempt: u64_at(v, "/attempt"),
            pid: v.get("pid").and_then(Value::as_u64).unwrap_or(0),
            agent: opt_str("agent"),
            attempt_agents: v
                .get("attempt_agents")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_str().unwrap_or("").to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            started_unix_ms: v
                .get("started_unix_ms")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            finished_unix_ms: v
                .get("finished_unix_ms")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        }
    }

    pub fn key(&self) -> (String, u64) {
        (self.task.clone(), self.index)
    }

    /// Placed on an agent and not finished there.
    pub fn is_occupying(&self) -> bool {
        matches!(self.state.as_str(), "accepted" | "running")
    }
}

/// `baton exec show ID --output json`.
#[derive(Debug, Clone)]
pub struct ExecView {
    pub raw: Value,
    pub status: String,
    pub children: Vec<ChildView>,
}

impl ExecView {
    pub fn parse(raw: Value) -> ExecView {
        let status = str_at(&raw, "/status").to_owned();
        let children = raw
            .get("children")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("no `children` array in exec show: {raw:#}"))
            .iter()
            .map(ChildView::parse)
            .collect();
        ExecView {
            raw,
            status,
            children,
        }
    }

    pub fn is_terminal(&self) -> bool {
        TERMINAL_EXEC_STATES.contains(&self.status.as_str())
    }

    pub fn count_state(&self, state: &str) -> usize {
        self.children.iter().filter(|c| c.state == state).count()
    }

    /// Children placed on `agent` and not finished (accepted or running).
    pub fn occupying(&self, agent: &str) -> usize {
        self.children
            .iter()
            .filter(|c| c.agent == agent && c.is_occupying())
            .count()
    }

    /// The most children whose [started, finished) intervals overlap on `agent`,
    /// from the final records; `None` when a child on it lacks timestamps.
    pub fn max_concurrency_on(&self, agent: &str) -> Option<usize> {
        let mut edges = Vec::new();
        for c in self.children.iter().filter(|c| c.agent == agent) {
            if c.started_unix_ms == 0 || c.finished_unix_ms == 0 {
                return None;
            }
            // At equal times a finish (-1) sorts before a start (+1).
            edges.push((c.started_unix_ms, 1i64));
            edges.push((c.finished_unix_ms, -1i64));
        }
        edges.sort_unstable();
        let (mut now, mut max) = (0i64, 0i64);
        for (_, d) in edges {
            now += d;
            max = max.max(now);
        }
        usize::try_from(max).ok()
    }

    /// `summary.<ptr>` as u64, e.g. `summary_u64("/children/succeeded")`.
    pub fn summary_u64(&self, ptr: &str) -> u64 {
        u64_at(&self.raw, &format!("/summary{ptr}"))
    }

    /// A short line for progress messages.
    pub fn brief(&self) -> String {
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &self.children {
            *by_state.entry(c.state.as_str()).or_default() += 1;
        }
        format!("status={} children={by_state:?}", self.status)
    }

    /// Panics unless the children are `n` distinct (task, index) pairs, all
    /// `succeeded` with attempt >= 1 on an agent from `agents`.
    pub fn assert_all_succeeded_once(&self, n: usize, agents: &[&str]) {
        assert_eq!(
            self.children.len(),
            n,
            "expected {n} children in exec show, got {} ({})",
            self.children.len(),
            self.brief()
        );
        let mut keys = BTreeSet::new();
        for c in &self.children {
            assert!(
                keys.insert(c.key()),
                "child {:?} is listed more than once: {c:?}",
                c.key()
            );
            assert_eq!(c.state, "succeeded", "child not succeeded: {c:?}");
            assert!(c.attempt >= 1, "child with attempt 0: {c:?}");
            assert!(
                agents.contains(&c.agent.as_str()),
                "child ran on unknown agent {:?} (expected one of {agents:?}): {c:?}",
                c.agent
            );
        }
    }
}

/// One entry of `baton agents list --output json`.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub name: String,
    pub state: String,
    pub slots: u64,
    pub running: u64,
}

/// Parses `{"agents":[...]}`.
pub fn parse_agents(v: &Value) -> Vec<AgentView> {
    v.get("items")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no `items` array in agents list: {v:#}"))
        .iter()
        .map(|a| AgentView {
            name: str_at(a, "/name").to_owned(),
            state: str_at(a, "/state").to_owned(),
            slots: u64_at(a, "/slots"),
            running: u64_at(a, "/running"),
        })
        .collect()
}

/// Checks the run summary's `children` counts and `per_agent` against each other:
/// every child succeeded, and per-agent successes add up to the total (each child
/// counted once). Returns the per-agent successes.
pub fn assert_summary_all_succeeded(summary: &Value, n: u64) -> BTreeMap<String, u64> {
    assert_eq!(str_at(summary, "/status"), "succeeded", "{summary:#}");
    assert_eq!(u64_at(summary, "/children/total"), n, "{summary:#}");
    assert_eq!(u64_at(summary, "/children/succeeded"), n, "{summary:#}");
    assert_eq!(u64_at(summary, "/children/failed"), 0, "{summary:#}");
    let per_agent: BTreeMap<String, u64> = summary
        .get("per_agent")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no `per_agent` object: {summary:#}"))
        .iter()
        .map(|(name, counts)| (name.clone(), u64_at(counts, "/succeeded")))
        .collect();
    assert_eq!(
        per_agent.values().sum::<u64>(),
        n,
        "per_agent successes do not add up to {n}: {summary:#}"
    );
    per_agent
}
