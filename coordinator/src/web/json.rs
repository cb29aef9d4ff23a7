//! The dashboard's JSON: Baton's domain types as the page reads them (the
//! shapes are listed in `docs/observability.md`, "The web dashboard").
//! Values of sensitive parameters never appear here: a child's record holds
//! only its outputs, and an execution's parameters are not shown at all.

use serde_json::{Value, json};

use crate::access::CatalogFolder;
use crate::records::{ChildRecord, Phase};
use crate::scheduler::{ExecutionView, Summary};
use crate::scheduler_task::AgentListing;

pub fn summary(s: &Summary) -> Value {
    let per_agent: serde_json::Map<String, Value> = s
        .per_agent
        .iter()
        .map(|(a, (ok, bad))| (a.clone(), json!({"succeeded": ok, "failed": bad})))
        .collect();
    json!({
        "execution_id": s.execution_id,
        "package": s.package,
        "state": s.state,
        "folder": s.folder,
        "total": s.total,
        "pending": s.pending,
        "running": s.running,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "cancelled": s.cancelled,
        "lost_attempts": s.lost_attempts,
        "created_unix_ms": s.created_unix_ms,
        "finished_unix_ms": s.finished_unix_ms,
        "reason": s.reason,
        "waiting": s.waiting,
        "resumes": s.resumes,
        "parent": s.parent,
        "catalog": s.catalog.as_ref().map(|(path, version)| json!({"path": path, "version": version})),
        "per_agent": per_agent,
    })
}

pub fn summaries(list: &[Summary], next: &str) -> Value {
    json!({
        "executions": list.iter().map(summary).collect::<Vec<_>>(),
        "next_page_token": next,
    })
}

pub fn agent(a: &AgentListing) -> Value {
    let used = a.running.min(a.rec.slots);
    json!({
        "name": a.rec.name,
        "state": a.state,
        "labels": a.rec.labels,
        "slots": a.rec.slots,
        "used": a.running,
        "free": a.rec.slots - used,
        "load1": if a.load1.is_finite() { a.load1 } else { 0.0 },
        "last_heartbeat_unix_ms": a.last_heartbeat_unix_ms,
        "version": a.rec.version,
        "quarantine": a.quarantine.as_ref().map(|(reason, until)| json!({"reason": reason, "until_unix_ms": until})),
    })
}

pub fn agents(list: &[AgentListing]) -> Value {
    json!({"agents": list.iter().map(agent).collect::<Vec<_>>()})
}

pub fn child(c: &ChildRecord, waiting: &str) -> Value {
    json!({
        "path": format!("{}[{}]", c.task, c.index),
        "task": c.task,
        "index": c.index,
        "item": c.item,
        "phase": c.phase.as_str(),
        "attempt": c.attempt,
        "agent": c.agent,
        "attempt_agents": c.attempt_agents,
        "failures": c.failures,
        "lost": c.lost,
        "exit_code": c.exit_code,
        "reason": c.reason,
        "outputs": c.outputs,
        "started_unix_ms": c.started_unix_ms,
        "finished_unix_ms": c.finished_unix_ms,
        "rows": c.rows,
        "waiting": waiting,
    })
}

/// Whether a child ended without succeeding (what a person looks at first).
fn went_wrong(p: Phase) -> bool {
    matches!(
        p,
        Phase::Failed | Phase::TimedOut | Phase::Lost | Phase::Cancelled
    )
}

/// An execution's page: summary, tasks with their counts, and the children
/// of the view, those that went wrong first.
/// `may_cancel` (`run` on its folder) and `may_resume` (`execute`) tell the
/// page which buttons to show; the actions are checked again when asked for.
pub fn detail(v: &ExecutionView, may_cancel: bool, may_resume: bool) -> Value {
    let tasks: Vec<Value> = v
        .tasks
        .iter()
        .map(|(name, state, reason)| {
            let counts = v.task_counts.get(name);
            let n = |phases: &[Phase]| -> u64 {
                phases
                    .iter()
                    .map(|p| counts.and_then(|c| c.get(p.as_str())).copied().unwrap_or(0))
                    .sum()
            };
            json!({
                "name": name,
                "state": state,
                "reason": reason,
                "counts": {
                    "pending": n(&[Phase::Pending, Phase::Dispatching]),
                    "running": n(&[Phase::Accepted, Phase::Running]),
                    "succeeded": n(&[Phase::Succeeded]),
                    "failed": n(&[Phase::Failed, Phase::TimedOut, Phase::Lost]),
                    "cancelled": n(&[Phase::Cancelled]),
                },
                "children": counts.map_or(0, |c| c.values().sum::<u64>()),
            })
        })
        .collect();
    let mut order: Vec<usize> = (0..v.children.len()).collect();
    order.sort_by_key(|&i| !went_wrong(v.children[i].phase));
    let children: Vec<Value> = order
        .into_iter()
        .map(|i| child(&v.children[i], v.waiting.get(i).map_or("", String::as_str)))
        .collect();
    json!({
        "summary": summary(&v.summary),
        "tasks": tasks,
        "children": children,
        "children_total": v.children_total,
        "may_cancel": may_cancel,
        "may_resume": may_resume,
    })
}

pub fn catalog(folders: &[CatalogFolder], truncated: bool) -> Value {
    let folders: Vec<Value> = folders
        .iter()
        .map(|f| {
            let packages: Vec<Value> = f
                .packages
                .iter()
                .map(|(p, versions)| {
                    json!({
                        "name": p.name,
                        "path": p.path(),
                        "description": p.description,
                        "versions": versions.iter().map(|v| json!({
                            "version": v.version,
                            "deployed_unix_ms": v.deployed_unix_ms,
                            "deployed_by": v.deployed_by,
                            "hash": v.hash,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({"path": f.path, "packages": packages})
        })
        .collect();
    json!({"folders": folders, "truncated": truncated})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(task: &str, index: u32, phase: Phase) -> ChildRecord {
        ChildRecord {
            phase,
            agent: Some("a1".into()),
            attempt_agents: vec!["a1".into()],
            ..crate::scheduler::flow::new_child(&task.into(), index, String::new())
        }
    }

    #[test]
    fn a_detail_puts_children_that_went_wrong_first_and_counts_per_task() {
        let children = vec![
            rec("fan", 0, Phase::Succeeded),
            rec("fan", 1, Phase::Failed),
            rec("fan", 2, Phase::Running),
            rec("fan", 3, Phase::Lost),
        ];
        let mut v = ExecutionView {
            summary: Summary::default(),
            waiting: vec![String::new(); children.len()],
            tasks: vec![("fan".into(), "running".into(), String::new())],
            children_total: 4,
            task_counts: Default::default(),
            children,
        };
        for c in &v.children {
            crate::scheduler::count_task(&mut v.task_counts, c);
        }
        let d = detail(&v, true, false);
        let paths: Vec<&str> = d["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["fan[1]", "fan[3]", "fan[0]", "fan[2]"]);
        assert_eq!(d["tasks"][0]["counts"]["failed"], 2);
        assert_eq!(d["tasks"][0]["counts"]["running"], 1);
        assert_eq!(d["tasks"][0]["children"], 4);
        assert_eq!(
            (d["may_cancel"].as_bool(), d["may_resume"].as_bool()),
            (Some(true), Some(false))
        );
    }
}
