//! Domain → protobuf conversions for the read side.

use baton_proto as pb;

use crate::error::CoordinatorError;
use crate::scheduler::{ExecutionView, Summary};
use crate::scheduler_task::AgentListing;

pub fn summary(s: &Summary) -> pb::ExecutionSummary {
    pb::ExecutionSummary {
        execution_id: s.execution_id.clone(),
        package: s.package.clone(),
        state: s.state.clone(),
        total: s.total,
        pending: s.pending,
        running: s.running,
        succeeded: s.succeeded,
        failed: s.failed,
        lost_attempts: s.lost_attempts,
        per_agent: s
            .per_agent
            .iter()
            .map(|(agent, (ok, failed))| pb::AgentCount {
                agent: agent.clone(),
                succeeded: *ok,
                failed: *failed,
            })
            .collect(),
        created_unix_ms: s.created_unix_ms,
        finished_unix_ms: s.finished_unix_ms,
        reason: s.reason.clone(),
        stale_events: s.stale_events,
        folder: s.folder.clone(),
        catalog_path: s.catalog.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
        catalog_version: s.catalog.as_ref().map_or(0, |c| c.1),
        resumes: s.resumes,
        parent: s.parent.clone(),
        cancelled: s.cancelled,
        waiting: s.waiting.clone(),
    }
}

pub fn detail(v: ExecutionView) -> pb::ExecutionDetail {
    let summary = Some(summary(&v.summary));
    let children_total = v.children_total;
    let children_truncated = (v.children.len() as u64) < children_total;
    let tasks = v
        .tasks
        .into_iter()
        .map(|(name, state, reason)| pb::TaskInfo {
            name,
            state,
            reason,
        })
        .collect();
    let children = v
        .children
        .into_iter()
        .zip(v.waiting)
        .map(|(c, waiting)| pb::ChildJob {
            task_path: c.task.to_string(),
            item_index: c.index,
            item: c.item.to_string(),
            state: c.phase.as_str().to_string(),
            attempt: c.attempt,
            agent: c.agent.map(|a| a.to_string()).unwrap_or_default(),
            exit_code: c.exit_code.unwrap_or(-1),
            reason: if waiting.is_empty() {
                c.reason
            } else {
                waiting
            },
            started_unix_ms: c.started_unix_ms,
            finished_unix_ms: c.finished_unix_ms,
            outputs: c.outputs.into_iter().collect(),
            attempt_agents: c.attempt_agents.iter().map(|a| a.to_string()).collect(),
            pid: c.pid,
        })
        .collect();
    pb::ExecutionDetail {
        summary,
        children,
        tasks,
        children_total,
        children_truncated,
    }
}

pub fn agent(a: AgentListing) -> pb::AgentInfo {
    pb::AgentInfo {
        name: a.rec.name,
        address: a.rec.address,
        labels: a.rec.labels.into_iter().collect(),
        slots: a.rec.slots,
        running: a.running,
        load1: a.load1,
        state: a.state.to_string(),
        last_heartbeat_unix_ms: a.last_heartbeat_unix_ms,
        version: a.rec.version,
        weight: a.rec.weight.max(1),
        quarantine_reason: a
            .quarantine
            .as_ref()
            .map(|q| q.0.clone())
            .unwrap_or_default(),
        quarantined_until_unix_ms: a.quarantine.map_or(0, |q| q.1),
    }
}

/// The placement and admission settings of a StartExecution request, validated.
pub fn placement(
    r: &pb::StartExecutionRequest,
) -> Result<crate::placement::PlacementPolicy, CoordinatorError> {
    let strategy = if r.placement.trim().is_empty() {
        None
    } else {
        Some(
            r.placement
                .parse::<crate::placement::Strategy>()
                .map_err(CoordinatorError::InvalidRequest)?,
        )
    };
    let policy = crate::placement::PlacementPolicy {
        strategy,
        require: r
            .require
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pin: r.pin.clone(),
        slots_per_child: r.slots_per_child,
        max_in_flight: r.max_in_flight,
    };
    policy
        .validate()
        .map_err(CoordinatorError::InvalidRequest)?;
    Ok(policy)
}
