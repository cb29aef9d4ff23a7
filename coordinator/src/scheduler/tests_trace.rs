//! The scheduler's side of traces: an execution with a trace context puts
//! each attempt's derived `traceparent` in its dispatch and notes trace
//! events; one without notes none.

use std::collections::BTreeMap;

use crate::domain::{DispatchId, JobStatus};

use super::tests::{commit, finished, reg, running_record, sched};
use super::*;
use crate::prepare::plan_bundle;
use crate::trace_context::{ExecTrace, TraceContext};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PARENT: &str = "name='p'\n[parameters.n]\ntype='int'\n[tasks.fan]\nforeach={range={start=1,end='${params.n}'}}\nchild='c.toml'\nparams={shard='${item}'}\n";
const CHILD: &str = "name='c'\n[parameters.shard]\ntype='int'\n[tasks.run]\nexec=['true']\n";

fn start_traced(s: &mut Scheduler, n: u32, trace: Option<ExecTrace>) {
    let files: BTreeMap<String, String> = [
        ("p.toml".into(), PARENT.into()),
        ("c.toml".into(), CHILD.into()),
    ]
    .into();
    let params: BTreeMap<String, String> = [("n".into(), n.to_string())].into();
    let plan = plan_bundle("p.toml", &files, &params).unwrap();
    let mut rec = running_record("e1", files, params, &plan);
    rec.trace = trace;
    s.start(rec, plan, Now::read());
}

/// Runs 2 children to success; returns every effect of the run.
fn run_two(trace: Option<ExecTrace>) -> Vec<Effect> {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 4, "b1", now);
    start_traced(&mut s, 2, trace);
    s.pump(now);
    commit(&mut s);
    let mut all = s.take_effects();
    let dispatched: Vec<(ChildRef, u32, DispatchId)> = all
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch {
                child,
                attempt,
                spec,
                ..
            } => Some((*child, *attempt, spec.dispatch_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(dispatched.len(), 2);
    for (seq, (child, attempt, id)) in dispatched.into_iter().enumerate() {
        s.dispatch_result(child, "a", attempt, DispatchOutcome::Accepted, now);
        let event = finished(seq as u64 + 1, &id, JobStatus::Succeeded);
        s.agent_event("a", event, now);
    }
    commit(&mut s);
    all.extend(s.take_effects());
    all
}

#[test]
fn a_traced_execution_dispatches_each_attempt_under_its_own_span() {
    let exec = TraceContext::parse(TP).unwrap();
    let trace = ExecTrace {
        traceparent: TP.into(),
        parent_span: String::new(),
        tracestate: "k=v".into(),
        started_unix_ms: 0,
    };
    let effects = run_two(Some(trace.clone()));
    let mut parents = Vec::new();
    for e in &effects {
        if let Effect::Dispatch { child, spec, .. } = e {
            let want = exec.attempt(child.task, child.child, 1).traceparent();
            assert_eq!(spec.traceparent, want);
            assert_eq!(spec.tracestate, "k=v");
            parents.push(spec.traceparent.clone());
        }
    }
    assert_eq!(parents.len(), 2);
    assert_ne!(parents[0], parents[1]);
    let phases: Vec<(u32, &str)> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Trace(TraceEvent::Child {
                child, phase, exec, ..
            }) => {
                assert_eq!(exec, TP);
                Some((*child, phase.as_str()))
            }
            _ => None,
        })
        .collect();
    for child in 0..2 {
        let of: Vec<&str> = phases
            .iter()
            .filter(|(c, _)| *c == child)
            .map(|(_, p)| *p)
            .collect();
        assert_eq!(
            of,
            ["dispatching", "accepted", "succeeded"],
            "child {child}"
        );
    }
    let ended: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Trace(TraceEvent::Execution {
                trace: t, state, ..
            }) => Some((t, *state)),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [(&trace, "succeeded")]);
    assert!(
        effects.iter().any(
            |e| matches!(e, Effect::Trace(TraceEvent::Commit { execs, .. }) if execs == &[TP])
        ),
        "commits of a traced execution are noted"
    );
}

#[test]
fn an_untraced_execution_notes_no_trace_event_and_sends_no_context() {
    let effects = run_two(None);
    for e in &effects {
        assert!(!matches!(e, Effect::Trace(_)), "{e:?}");
        if let Effect::Dispatch { spec, .. } = e {
            assert!(spec.traceparent.is_empty() && spec.tracestate.is_empty());
        }
    }
    assert!(effects.iter().any(|e| matches!(e, Effect::Dispatch { .. })));
}
