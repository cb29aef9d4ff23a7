//! Traces end to end: a coordinator, two agents and the CLI export OTLP to
//! a receiver inside the test, and one fan-out of 50 children makes one
//! trace: the CLI's `baton.run` span, the coordinator's request, execution,
//! task, child-attempt, dispatch and store-commit spans, the agents'
//! `baton.job` spans, and in each child process a `TRACEPARENT` of that
//! trace naming its job's span.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::harness::otlp::{Collector, Received};
use crate::harness::{AgentOpts, Cluster, FanoutSpec};

const CHILDREN: usize = 50;

fn named<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Received> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[test]
fn one_trace_per_execution_down_to_the_child_processes() {
    let collector = Collector::start();
    let otlp = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            collector.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let mut c = Cluster::new("traces");
    c.start_coordinator_env(&[], otlp.clone());
    for name in ["a1", "a2"] {
        // "job finished" (debug) is logged inside the job's span.
        let mut opts = AgentOpts::new(name, 8).log_targets(&[("baton_agent::supervisor", "debug")]);
        opts.env.extend(otlp.clone());
        c.start_agent_with(opts).expect("agent announced");
    }
    c.agents_ready(2);
    let seen = c.root().join("traceparents");
    std::fs::create_dir_all(&seen).expect("make the traceparents dir");
    let cmd = format!(
        "printf '%s' \"$TRACEPARENT\" > {}/$BATON_PARAM_SHARD",
        seen.display()
    );
    let parent = c.write_fanout("traced", &FanoutSpec::new(CHILDREN as u32, &cmd));
    let pkg = parent.display().to_string();
    let out = c.cli_env(
        &["run", &pkg, "--output", "json"],
        &[
            ("BATON_COORDINATOR", c.coordinator_url()),
            (
                "BATON_TLS_DIR",
                c.ca_dir().join("admin").display().to_string(),
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ],
    );
    out.expect_code(0);
    let id = out.json()["execution_id"]
        .as_str()
        .expect("execution id")
        .to_owned();
    let view = c.wait_exec_terminal(&id, Duration::from_secs(90));
    assert_eq!(view.status, "succeeded", "{}", view.brief());

    let spans = collector.wait_for(Duration::from_secs(30), |s| {
        named(s, "baton.execution").len() == 1
            && named(s, "baton.job").len() >= CHILDREN
            && named(s, "baton.child").len() >= CHILDREN
            && !named(s, "baton.run").is_empty()
    });
    let count = |n: &str| named(&spans, n).len();
    c.note(&format!(
        "spans: {} (run {}, request {}, execution {}, task {}, child {}, dispatch {}, job {}, commit {})",
        spans.len(),
        count("baton.run"),
        count("StartExecution"),
        count("baton.execution"),
        count("baton.task"),
        count("baton.child"),
        count("baton.dispatch"),
        count("baton.job"),
        count("baton.store.commit"),
    ));

    // The CLI's span starts the trace; everything else is in it.
    let run = named(&spans, "baton.run");
    assert_eq!(run.len(), 1, "one baton.run span: {run:?}");
    let run = run[0];
    assert_eq!(run.service, "baton-cli");
    let trace = run.trace_id.clone();
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |s: &Received| -> &str {
        by_id
            .get(s.parent_span_id.as_str())
            .map_or("<none>", |p| p.name.as_str())
    };
    for s in spans
        .iter()
        .filter(|s| s.name.starts_with("baton.") || s.name == "StartExecution")
    {
        assert_eq!(s.trace_id, trace, "span {} is in another trace", s.name);
    }

    // The structure: run > request > execution > task > child attempt >
    // (dispatch, job); commits under the execution.
    let request = named(&spans, "StartExecution");
    assert_eq!(request.len(), 1);
    assert_eq!(request[0].service, "baton-coordinator");
    assert_eq!(request[0].parent_span_id, run.span_id);
    let exec = named(&spans, "baton.execution")[0];
    assert_eq!(exec.service, "baton-coordinator");
    assert_eq!(exec.parent_span_id, request[0].span_id);
    assert_eq!(exec.attr("baton.execution"), Some(id.as_str()));
    assert_eq!(exec.attr("baton.state"), Some("succeeded"));
    let tasks = named(&spans, "baton.task");
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].parent_span_id, exec.span_id);
    assert_eq!(tasks[0].attr("baton.task"), Some("fan"));
    let children = named(&spans, "baton.child");
    assert_eq!(children.len(), CHILDREN, "one attempt span per child");
    let mut agents = BTreeSet::new();
    let mut items = BTreeSet::new();
    for ch in &children {
        assert_eq!(ch.parent_span_id, tasks[0].span_id, "{ch:?}");
        assert_eq!(ch.attr("baton.attempt"), Some("1"));
        assert_eq!(ch.attr("baton.state"), Some("succeeded"));
        agents.insert(ch.attr("baton.agent").unwrap_or_default().to_owned());
        items.insert(ch.attr("baton.item").unwrap_or_default().to_owned());
    }
    assert_eq!(items.len(), CHILDREN, "every child has its own span");
    assert_eq!(
        agents,
        BTreeSet::from(["a1".to_owned(), "a2".to_owned()]),
        "children ran on both agents"
    );
    let child_ids: BTreeSet<&str> = children.iter().map(|s| s.span_id.as_str()).collect();
    let dispatches = named(&spans, "baton.dispatch");
    assert!(
        dispatches.len() >= CHILDREN,
        "a dispatch span per attempt at least"
    );
    for d in &dispatches {
        assert!(
            child_ids.contains(d.parent_span_id.as_str()),
            "dispatch under {}",
            parent_of(d)
        );
        assert_eq!(d.attr("baton.dispatch.outcome"), Some("accepted"));
    }
    let jobs = named(&spans, "baton.job");
    assert_eq!(jobs.len(), CHILDREN);
    let mut job_parents = BTreeSet::new();
    for j in &jobs {
        assert_eq!(j.service, "baton-agent");
        assert!(
            child_ids.contains(j.parent_span_id.as_str()),
            "job under {}",
            parent_of(j)
        );
        job_parents.insert(j.parent_span_id.as_str());
    }
    assert_eq!(
        job_parents, child_ids,
        "each attempt's job joined its own span"
    );
    let commits = named(&spans, "baton.store.commit");
    assert!(!commits.is_empty(), "store commits are traced");
    for s in &commits {
        assert_eq!(s.parent_span_id, exec.span_id);
    }

    // Each child process saw a TRACEPARENT of this trace, naming its job's span.
    let job_ids: BTreeSet<&str> = jobs.iter().map(|s| s.span_id.as_str()).collect();
    for item in 1..=CHILDREN {
        let tp = std::fs::read_to_string(seen.join(item.to_string()))
            .unwrap_or_else(|e| panic!("child {item} wrote no TRACEPARENT: {e}"));
        let parts: Vec<&str> = tp.trim().split('-').collect();
        assert_eq!(parts.len(), 4, "child {item}: TRACEPARENT {tp:?}");
        assert_eq!(parts[0], "00");
        assert_eq!(
            parts[1], trace,
            "child {item}: TRACEPARENT of another trace"
        );
        assert!(
            job_ids.contains(parts[2]),
            "child {item}: TRACEPARENT names no job span"
        );
    }

    // Log lines written inside a span name its trace and span.
    let a1_log = crate::harness::read_log(&c.root().join("a1").join("stderr.log"));
    let finished: Vec<&str> = a1_log
        .lines()
        .filter(|l| l.contains("job finished"))
        .collect();
    assert!(!finished.is_empty(), "a1 logged no job end:\n{a1_log}");
    for line in finished {
        assert!(
            line.contains(&format!("trace_id={trace} span_id=")),
            "a log line without its trace: {line}"
        );
        let span = line
            .split("span_id=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default();
        assert!(
            job_ids.contains(span),
            "a log line names no job span: {line}"
        );
    }
    c.finish(&[]);
}

/// A retried child makes a span per attempt: attempt 1 (retried) and
/// attempt 2 (succeeded), each with its own id under the task, each joined
/// by its own job span.
#[test]
fn each_attempt_of_a_retried_child_is_its_own_span() {
    const N: usize = 4;
    let collector = Collector::start();
    let otlp = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            collector.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let mut c = Cluster::new("traces_retry");
    c.start_coordinator_env(&[], otlp.clone());
    let mut opts = AgentOpts::new("a1", 4);
    opts.env = otlp;
    c.start_agent_with(opts).expect("agent announced");
    c.agents_ready(1);
    let marks = c.root().join("marks");
    std::fs::create_dir_all(&marks).expect("make the marks dir");
    // Fails the first time it runs for an item, succeeds the second.
    let cmd = format!(
        "m={}/$BATON_PARAM_SHARD; if [ -e $m ]; then exit 0; fi; touch $m; exit 1",
        marks.display()
    );
    let mut spec = FanoutSpec::new(N as u32, &cmd);
    spec.attempts = 2;
    let parent = c.write_fanout("retried", &spec);
    let id = c.start_run(&parent, &[]);
    let view = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(view.status, "succeeded", "{}", view.brief());

    let spans = collector.wait_for(Duration::from_secs(30), |s| {
        named(s, "baton.execution").len() == 1 && named(s, "baton.job").len() >= 2 * N
    });
    let task = named(&spans, "baton.task");
    assert_eq!(task.len(), 1);
    let children = named(&spans, "baton.child");
    assert_eq!(
        children.len(),
        2 * N,
        "two attempt spans per child: {children:?}"
    );
    let mut per_item: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for ch in &children {
        assert_eq!(ch.parent_span_id, task[0].span_id);
        per_item
            .entry(ch.attr("baton.item").unwrap_or_default().to_owned())
            .or_default()
            .push((
                ch.attr("baton.attempt").unwrap_or_default().to_owned(),
                ch.attr("baton.state").unwrap_or_default().to_owned(),
            ));
    }
    assert_eq!(per_item.len(), N);
    for (item, mut attempts) in per_item {
        attempts.sort();
        assert_eq!(
            attempts,
            [
                ("1".to_owned(), "retried".to_owned()),
                ("2".to_owned(), "succeeded".to_owned())
            ],
            "child {item}"
        );
    }
    let ids: BTreeSet<&str> = children.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), 2 * N, "each attempt has its own span id");
    let job_parents: BTreeSet<&str> = named(&spans, "baton.job")
        .iter()
        .map(|j| j.parent_span_id.as_str())
        .collect();
    assert_eq!(job_parents, ids, "each attempt's job joined its own span");
    c.finish(&[]);
}
