//! What placement is told: one agent as it sees it ([`AgentView`]), one
//! child job to place ([`PlacementRequest`]), and the hard constraints that
//! rule an agent in or out (pins, labels). A leaf of `placement/`: the
//! choice (`mod.rs`) and the reasons (`reason.rs`) both read these.

use std::collections::{BTreeMap, BTreeSet};

use super::policy::Strategy;

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

/// Hard constraints: the pin list and the labels.
pub(super) fn allowed(a: &AgentView, req: &PlacementRequest<'_>) -> bool {
    (req.pin.is_empty() || req.pin.contains(&a.name))
        && req
            .require
            .iter()
            .all(|(k, v)| a.labels.get(k).is_some_and(|have| have == v))
}
