//! Why no agent can take a job, narrowed step by step the way an operator
//! would look: is anyone registered, is the pin list known, does any agent
//! carry the labels, is any big enough, is any ready, are they all busy.

use super::inputs::{AgentView, PlacementRequest, allowed};

/// The reason of a `NoCapacity` answer; always starts "waiting for capacity:".
pub(super) fn no_capacity(agents: &[AgentView], req: &PlacementRequest<'_>) -> String {
    let need = req.slots.max(1);
    if agents.is_empty() {
        return "waiting for capacity: no agent registered".to_string();
    }
    let pinned: Vec<&AgentView> = agents
        .iter()
        .filter(|a| req.pin.is_empty() || req.pin.contains(&a.name))
        .collect();
    if pinned.is_empty() {
        return format!(
            "waiting for capacity: none of the pinned agents ({}) is registered",
            req.pin.join(", ")
        );
    }
    let scope = scope_text(req);
    let matching: Vec<&AgentView> = pinned.into_iter().filter(|a| allowed(a, req)).collect();
    if matching.is_empty() {
        let among = if req.pin.is_empty() {
            String::new()
        } else {
            " among the pinned agents".to_string()
        };
        return format!(
            "waiting for capacity: no agent{among} has {}",
            labels_text(req)
        );
    }
    let largest = matching.iter().map(|a| a.slots).max().unwrap_or(0);
    if largest < need {
        return format!(
            "waiting for capacity: no agent{scope} has {need} slots (the largest has {largest})"
        );
    }
    let ready: Vec<&&AgentView> = matching.iter().filter(|a| a.ready).collect();
    if ready.is_empty() {
        let why = matching
            .iter()
            .find(|a| !a.not_ready.is_empty())
            .map(|a| format!(" ({}: {})", a.name, a.not_ready))
            .unwrap_or_default();
        return if matching.len() == 1 {
            format!("waiting for capacity: the only agent{scope} is not ready{why}")
        } else {
            format!(
                "waiting for capacity: none of the {} agents{scope} is ready{why}",
                matching.len()
            )
        };
    }
    let (busy, slots) = ready.iter().fold((0u64, 0u64), |(b, s), a| {
        (
            b + u64::from(a.in_flight.min(a.slots)),
            s + u64::from(a.slots),
        )
    });
    let excluded = req.exclude.map_or(0, |ex| {
        ready.iter().filter(|a| ex.contains(&a.name)).count()
    });
    let needs = if need > 1 {
        format!(", this child needs {need}")
    } else {
        String::new()
    };
    let who = if scope.is_empty() {
        format!("on {} ready agents", ready.len())
    } else {
        format!("on the {} ready agents{scope}", ready.len())
    };
    if excluded > 0 {
        format!(
            "waiting for capacity: {busy} of {slots} slots busy {who}{needs}, {excluded} agents refused this job"
        )
    } else if scope.is_empty() {
        format!("waiting for capacity: {busy} of {slots} slots busy {who}{needs}")
    } else {
        format!(
            "waiting for capacity: all agents{scope} are busy ({busy} of {slots} slots busy{needs})"
        )
    }
}

fn labels_text(req: &PlacementRequest<'_>) -> String {
    req.require
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// " with zone=eu", " among the pinned agents", or both; empty without constraints.
fn scope_text(req: &PlacementRequest<'_>) -> String {
    let mut s = String::new();
    if !req.require.is_empty() {
        s.push_str(" with ");
        s.push_str(&labels_text(req));
    }
    if !req.pin.is_empty() {
        s.push_str(" among the pinned agents");
    }
    s
}
