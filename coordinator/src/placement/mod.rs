//! Placement: which agent gets a child job. A pure function (no IO, no clock,
//! no randomness); see `README.md` beside this file for the problem, the
//! strategies and the properties it guarantees.
//!
//! - `inputs.rs`: what placement is told (an agent, one job) and the hard
//!   constraints (pins, labels);
//! - `mod.rs`: the answer, eligibility and the strategies;
//! - `policy.rs`: what an execution asks for (strategy, labels, pins, slots);
//! - `reason.rs`: why nothing fits, in words a person can act on.

mod inputs;
mod policy;
mod reason;
#[cfg(test)]
mod tests;

use inputs::allowed;
pub use inputs::{AgentView, PlacementRequest};
pub use policy::{PlacementPolicy, Strategy, parse_require};

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
