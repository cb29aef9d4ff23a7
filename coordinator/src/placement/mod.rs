//! Placement: which agent gets a child job. A pure function (no IO, no clock,
//! no randomness); see `README.md` beside this file for the problem, the
//! strategies and the properties it guarantees.
//!
//! - `mod.rs`: the inputs, the answer, eligibility and the strategies;
//! - `policy.rs`: what an execution asks for (strategy, labels, pins, slots);
//! - `reason.rs`: why nothing fits, in words a person can act on.

mod policy;
mod reason;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

pub use policy::{PlacementPolicy, Strategy, parse_require};

/// What placement needs to know about one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    pub name: String,
    pub slots: u32,
    /// Slots taken by the jobs the coordinator has dispatched to the agent and
    /// not seen finish (a child asking for 2 slots counts 2).
    pub in_flight: u32,
    pub load1: f64,
    /// Registered, alive, not draining, not quarantined, not known to be full.
    pub ready: bool,
    /// Why it is not ready (`quarantined: …`, `cordoned`), for reasons; empty when ready.
    pub not_ready: String,
    pub labels: BTreeMap<String, String>,
    /// Relative share under least-loaded: an agent of weight 2 is filled as if
    /// it had twice its slots (its real slots still bound it). 0 counts as 1.
    pub weight: u32,
}

static LEAST_LOADED: Strategy = Strategy::LeastLoaded;
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// One child job to place.
#[derive(Debug, Clone)]
pub struct PlacementRequest<'a> {
    /// The agent the previous attempt failed or was lost on (soft avoidance).
    pub avoid: Option<&'a str>,
    /// Agents that rejected this job in the current dispatch round (hard exclusion).
    pub exclude: Option<&'a BTreeSet<String>>,
    pub strategy: &'a Strategy,
    /// Labels the agent must carry with these values (hard constraint).
    pub require: &'a BTreeMap<String, String>,
    /// When not empty, only these agents (hard constraint).
    pub pin: &'a [String],
    /// Slots the job needs; 0 counts as 1.
    pub slots: u32,
    /// Round-robin: the agent chosen last for this task (the caller's cursor).
    pub cursor: Option<&'a str>,
    /// Spread: children of this task already placed, per value of the label
    /// (agents without the label count under the empty value).
    pub spread_counts: Option<&'a BTreeMap<String, u64>>,
}

impl Default for PlacementRequest<'_> {
    fn default() -> Self {
        PlacementRequest {
            avoid: None,
            exclude: None,
            strategy: &LEAST_LOADED,
            require: &NO_LABELS,
            pin: &[],
            slots: 1,
            cursor: None,
            spread_counts: None,
        }
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Agent(String),
    NoCapacity(String),
}

/// Chooses an agent for one job, or says why none can take it.
pub fn place(agents: &[AgentView], req: &PlacementRequest<'_>) -> Placement {
    let need = req.slots.max(1);
    let eligible = agents
        .iter()
        .filter(|a| allowed(a, req))
        .filter(|a| a.ready && fits(a, need))
        .filter(|a| req.exclude.is_none_or(|ex| !ex.contains(&a.name)));
    let chosen = match req.strategy {
        Strategy::LeastLoaded => eligible.min_by(|a, b| load_key(a, req).cmp(&load_key(b, req))),
        Strategy::RoundRobin => eligible.min_by_key(|a| {
            let wrapped = req.cursor.is_some_and(|c| a.name.as_str() <= c);
            (avoided(a, req), wrapped, a.name.as_str())
        }),
        Strategy::Spread(label) => eligible.min_by_key(|a| {
            let value = a.labels.get(label).map_or("", String::as_str);
            let placed = req
                .spread_counts
                .and_then(|c| c.get(value))
                .copied()
                .unwrap_or(0);
            (avoided(a, req), placed, load_key(a, req))
        }),
    };
    match chosen {
        Some(a) => Placement::Agent(a.name.clone()),
        None => Placement::NoCapacity(reason::no_capacity(agents, req)),
    }
}

/// Whether the agent could ever take the job: its pin list and labels
/// allow it and it has the slots, full or not, refused or not.
pub fn could_take(a: &AgentView, req: &PlacementRequest<'_>) -> bool {
    allowed(a, req) && a.slots >= req.slots.max(1)
}

/// Hard constraints: the pin list and the labels.
fn allowed(a: &AgentView, req: &PlacementRequest<'_>) -> bool {
    (req.pin.is_empty() || req.pin.contains(&a.name))
        && req
            .require
            .iter()
            .all(|(k, v)| a.labels.get(k).is_some_and(|have| have == v))
}

/// Whether `need` more slots fit on the agent.
fn fits(a: &AgentView, need: u32) -> bool {
    u64::from(a.in_flight) + u64::from(need) <= u64::from(a.slots)
}

fn avoided(a: &AgentView, req: &PlacementRequest<'_>) -> bool {
    req.avoid == Some(a.name.as_str())
}

/// Least-loaded score; field order is priority order, smaller is better.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Score<'a> {
    /// The agent this child's previous attempt failed or was lost on sorts
    /// last (a soft rule: with one agent left, the retry still runs).
    avoided: bool,
    /// Slots in use per million of weighted slots (slots × weight).
    used_ppm: u64,
    /// Reported 1-minute load per slot, in quarters: coarse on purpose, so a
    /// small change in load does not reshuffle placements.
    load_bucket: u64,
    name: &'a str,
}

fn load_key<'a>(a: &'a AgentView, req: &PlacementRequest<'_>) -> Score<'a> {
    let weighted = u64::from(a.slots.max(1)) * u64::from(a.weight.max(1));
    let load_bucket = if a.load1.is_finite() && a.load1 > 0.0 {
        (a.load1 * 4.0 / f64::from(a.slots.max(1))) as u64
    } else {
        0
    };
    Score {
        avoided: avoided(a, req),
        used_ppm: u64::from(a.in_flight) * 1_000_000 / weighted,
        load_bucket,
        name: &a.name,
    }
}
