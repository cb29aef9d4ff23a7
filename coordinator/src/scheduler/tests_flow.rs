//! Scheduler tests of a parent package's control flow: independent tasks are
//! dispatched together, a dependent task waits for both, an on-failure task
//! runs only on failure, outputs reach the next task's children, and a
//! retry waits for its backoff.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{AgentReport, DispatchId, JobStarted, JobStatus, ReportBody};

use super::tests::{finished, reg, settle};
use super::*;
use crate::prepare::plan_bundle;
use crate::records::{ChildRecord, Phase};

const CHILD: &str = "name='c'\n[parameters.shard]\ntype='string'\n[tasks.run]\nexec=['true']\n";

fn start_with(s: &mut Scheduler, parent: &str) {
    let files: BTreeMap<String, String> = [
        ("p.toml".into(), parent.into()),
        ("c.toml".into(), CHILD.into()),
    ]
    .into();
    let plan = plan_bundle("p.toml", &files, &BTreeMap::new()).unwrap();
    let rec = super::tests::running_record("e1", files, BTreeMap::new(), &plan);
    s.start(rec, plan, Now::read());
}

fn long_lease() -> Scheduler {
    Scheduler::new(
        SchedulerConfig {
            lease_ttl: Duration::from_secs(3600),
            ..SchedulerConfig::default()
        },
        1,
    )
}

fn tasks_of(d: &[(String, ChildRef, u32, DispatchId)]) -> Vec<String> {
    let mut t: Vec<String> = d.iter().map(|x| x.3.task_path.clone()).collect();
    t.sort();
    t
}

fn state(s: &Scheduler, task: &str) -> String {
    s.execution_view("e1")
        .unwrap()
        .tasks
        .into_iter()
        .find(|t| t.0 == task)
        .map(|t| t.1)
        .unwrap()
}

const DIAMOND: &str = "name='p'\n\
    [tasks.a]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='${item}'}\n\
    [tasks.b]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='${item}'}\n\
    [tasks.join]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='${tasks.a.outputs.k.0}'}\nafter=['a','b']\n\
    [tasks.rescue]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='x'}\nafter=[{task='join', on='failure'}]\n";

#[test]
fn independent_tasks_run_together_and_a_join_waits_for_both() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 8, "b1", now);
    start_with(&mut s, DIAMOND);
    let d = settle(&mut s, now);
    assert_eq!(tasks_of(&d), ["a", "b"], "a and b at once, nothing else");
    let id_a = d.iter().find(|x| x.3.task_path == "a").unwrap().3.clone();
    let id_b = d.iter().find(|x| x.3.task_path == "b").unwrap().3.clone();
    // a ends with an output; join is not ready while b runs.
    s.agent_event("a", with_output(1, &id_a, "k", "from-a"), now);
    assert!(settle(&mut s, now).is_empty(), "join waits for b");
    s.agent_event("a", finished(2, &id_b, JobStatus::Succeeded), now);
    let d = settle(&mut s, now);
    assert_eq!(tasks_of(&d), ["join"]);
    // a's output reached join's child parameters.
    let params = s.child_parameters(d[0].1).unwrap();
    assert_eq!(params["shard"], "from-a");
    s.agent_event("a", finished(3, &d[0].3, JobStatus::Succeeded), now);
    assert_eq!(state(&s, "rescue"), "skipped");
    assert_eq!(summary_state(&s), "succeeded");
    assert!(settle(&mut s, now).is_empty());
}

fn summary_state(s: &Scheduler) -> String {
    super::tests::summary(s).state
}

fn with_output(seq: u64, id: &DispatchId, k: &str, v: &str) -> AgentReport {
    let mut ev = finished(seq, id, JobStatus::Succeeded);
    if let Some(ReportBody::Finished(f)) = &mut ev.body {
        f.outputs = [(k.to_string(), v.to_string())].into();
    }
    ev
}

#[test]
fn a_failure_runs_the_on_failure_task_and_fails_the_execution() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 8, "b1", now);
    start_with(&mut s, DIAMOND);
    let d = settle(&mut s, now);
    for (i, x) in d.iter().enumerate() {
        s.agent_event("a", with_output(i as u64 + 1, &x.3, "k", "v"), now);
    }
    let d = settle(&mut s, now);
    assert_eq!(tasks_of(&d), ["join"]);
    s.agent_event("a", finished(3, &d[0].3, JobStatus::Failed), now);
    let d = settle(&mut s, now);
    assert_eq!(tasks_of(&d), ["rescue"], "the on-failure task runs");
    s.agent_event("a", finished(4, &d[0].3, JobStatus::Succeeded), now);
    assert_eq!(state(&s, "join"), "failed");
    assert_eq!(state(&s, "rescue"), "succeeded");
    assert_eq!(
        summary_state(&s),
        "failed",
        "a handled failure still fails the run"
    );
}

#[test]
fn a_template_that_cannot_be_rendered_fails_its_task_before_any_child() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 8, "b1", now);
    start_with(&mut s, DIAMOND);
    let d = settle(&mut s, now);
    // a writes no output `k`: join's parameters cannot be rendered.
    for (i, x) in d.iter().enumerate() {
        s.agent_event("a", finished(i as u64 + 1, &x.3, JobStatus::Succeeded), now);
    }
    let view = s.execution_view("e1").unwrap();
    let join = view.tasks.iter().find(|t| t.0 == "join").unwrap();
    assert_eq!(join.1, "failed");
    assert!(join.2.contains("has no output 'k.0'"), "{join:?}");
    assert!(
        view.children.iter().all(|c| c.task != "join"),
        "no child was made"
    );
    let d = settle(&mut s, now);
    assert_eq!(tasks_of(&d), ["rescue"]);
}

#[test]
fn a_retry_waits_for_its_backoff() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 8, "b1", now);
    let parent = "name='p'\n[tasks.t]\nforeach={items=['1']}\nchild='c.toml'\n\
        params={shard='${item}'}\nretry={attempts=2, backoff_s=5}\n";
    start_with(&mut s, parent);
    let d = settle(&mut s, now);
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Failed), now);
    assert!(settle(&mut s, now).is_empty(), "not before the backoff");
    s.tick(now + Duration::from_secs(4));
    assert!(settle(&mut s, now + Duration::from_secs(4)).is_empty());
    s.tick(now + Duration::from_secs(6));
    let d = settle(&mut s, now + Duration::from_secs(6));
    assert_eq!(d.len(), 1, "retried after 5 s");
    assert_eq!(d[0].2, 2, "attempt 2");
}

#[test]
fn max_failures_stops_a_foreach_early() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 1, "b1", now);
    let parent = "name='p'\n[tasks.t]\nforeach={items=['1','2','3','4']}\nchild='c.toml'\n\
        params={shard='${item}'}\nmax_failures=0\n";
    start_with(&mut s, parent);
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 1, "one slot");
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Failed), now);
    let sum = super::tests::summary(&s);
    assert_eq!(
        (sum.state.as_str(), sum.failed, sum.cancelled),
        ("failed", 1, 3),
        "the others are cancelled, not failed: {sum:?}"
    );
    assert!(
        settle(&mut s, now).is_empty(),
        "no child after the first failure"
    );
}

#[test]
fn a_limited_view_picks_what_did_not_succeed_first() {
    use crate::records::Phase::{Failed, Pending, Succeeded};
    let phases = [Succeeded, Failed, Succeeded, Pending, Succeeded, Failed];
    assert_eq!(super::pick_children(&phases, 3), [1, 3, 5]);
    assert_eq!(super::pick_children(&phases, 4), [0, 1, 3, 5]);
    assert_eq!(super::pick_children(&phases, 0), Vec::<usize>::new());
    assert_eq!(super::pick_children(&phases, 10).len(), 6);
}

/// A coordinator restarted while a cancel is under way waits for the
/// children that still run (it used to end the execution at once, leaving
/// their records `running` for ever).
#[test]
fn a_restart_during_a_cancel_waits_for_the_running_children() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 8, "b1", now);
    let parent = "name='p'\n[tasks.t]\nforeach={items=['1','2']}\nchild='c.toml'\n\
        params={shard='${item}'}\n";
    start_with(&mut s, parent);
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 2);
    for (i, x) in d.iter().enumerate() {
        s.agent_event(
            "a",
            AgentReport {
                seq: i as u64 + 1,
                at_unix_ms: 1,
                body: Some(ReportBody::Started(JobStarted {
                    dispatch_id: Some(x.3.clone()),
                    pid: 100 + i as u32,
                })),
            },
            now,
        );
    }
    s.cancel("e1", "test", Now::read()).unwrap();
    settle(&mut s, now);
    // What a restart reads back: the execution (cancel requested) and its children.
    let view = s.execution_view("e1").unwrap();
    assert!(view.children.iter().all(|c| c.phase == Phase::Running));
    let e = s.execs.by_id("e1").expect("e1 is in memory");
    let (rec, plan) = (e.rec.clone(), e.plan.clone());
    assert!(rec.cancel_requested);
    let stored: Vec<(ChildRecord, u64)> = view.children.into_iter().map(|c| (c, 7)).collect();

    let mut s2 = long_lease();
    reg(&mut s2, "a", 8, "b1", now);
    s2.restore_execution(rec, 7, plan, stored, now);
    let sum = super::tests::summary(&s2);
    assert_eq!(sum.state, "running", "two children still run: {sum:?}");
    for (i, x) in d.iter().enumerate() {
        s2.agent_event("a", finished(i as u64 + 1, &x.3, JobStatus::Cancelled), now);
    }
    let sum = super::tests::summary(&s2);
    assert_eq!(
        (sum.state.as_str(), sum.failed, sum.cancelled),
        ("cancelled", 0, 2),
        "{sum:?}"
    );
}

/// A task whose children find no agent does not hold up an independent task.
#[test]
fn a_task_waiting_for_a_label_does_not_block_an_independent_one() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 8, "b1", now);
    let parent = "name='p'\n\
        [tasks.gpu]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='${item}'}\nrequire={gpu='yes'}\n\
        [tasks.cpu]\nforeach={items=['1','2']}\nchild='c.toml'\nparams={shard='${item}'}\n";
    start_with(&mut s, parent);
    let d = settle(&mut s, now);
    assert_eq!(
        tasks_of(&d),
        ["cpu", "cpu"],
        "the cpu task runs while gpu waits"
    );
    let view = s.execution_view("e1").unwrap();
    let gpu = view.children.iter().position(|c| c.task == "gpu").unwrap();
    assert!(
        view.waiting[gpu].contains("gpu=yes"),
        "it says why: {}",
        view.waiting[gpu]
    );
}

/// A rows foreach that found no rows is recorded as such: a restart replays
/// that decision instead of reading rows again (which might differ by then).
#[test]
fn a_rows_foreach_without_rows_replays_without_reading_them_again() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 8, "b1", now);
    let parent = "name='p'\n[tasks.list]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='x'}\n\
        [tasks.each]\nforeach={rows='list'}\nchild='c.toml'\nparams={shard='${item}'}\nafter=['list']\n\
        [tasks.last]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='y'}\nafter=['each']\n";
    start_with(&mut s, parent);
    let d = settle(&mut s, now);
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Succeeded), now);
    let fetches = s
        .take_effects()
        .into_iter()
        .filter(|e| matches!(e, Effect::FetchRows { .. }))
        .count();
    assert_eq!(fetches, 1, "the rows of list are asked for");
    s.rows_fetched("e1", "each", Ok(Vec::new()), Now::read());
    let e = s.execs.by_id("e1").expect("e1 is in memory");
    assert_eq!(
        e.rec.rows_outcomes.get("each"),
        Some(&crate::records::RowsOutcome::Empty)
    );
    let d = settle(&mut s, now);
    assert_eq!(tasks_of(&d), ["last"], "what comes after runs");

    // A restart before `last` ended: the replay does not read rows again.
    let view = s.execution_view("e1").unwrap();
    let e = s.execs.by_id("e1").expect("e1 is in memory");
    let (rec, plan) = (e.rec.clone(), e.plan.clone());
    let stored: Vec<(ChildRecord, u64)> = view.children.into_iter().map(|c| (c, 7)).collect();
    let mut s2 = long_lease();
    reg(&mut s2, "a", 8, "b1", now);
    s2.restore_execution(rec, 7, plan, stored, now);
    let fetches = s2
        .take_effects()
        .into_iter()
        .filter(|e| matches!(e, Effect::FetchRows { .. }))
        .count();
    assert_eq!(fetches, 0, "no second read of the rows");
    assert_eq!(state(&s2, "each"), "succeeded");
}

/// `exec list` and watchers read the published summary while `exec show`
/// computes one: once a foreach over rows made its children (after the
/// execution started, with no slot free for them) both must count them
/// (the published one said TOTAL 1, SUCCEEDED 1 while `show` said 4 total).
#[test]
fn the_children_of_a_rows_foreach_reach_the_published_counts() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 1, "b1", now);
    let parent = "name='p'\n[tasks.list]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='x'}\n\
        [tasks.hog]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='h'}\nafter=['list']\n\
        [tasks.each]\nforeach={rows='list'}\nchild='c.toml'\nparams={shard='${item.id}'}\nafter=['list']\n";
    start_with(&mut s, parent);
    let rx = s.watch("e1").unwrap();
    let d = settle(&mut s, now);
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Succeeded), now);
    let d = settle(&mut s, now);
    assert_eq!(tasks_of(&d), ["hog"], "the one slot goes to hog");
    let rows = (1..=3).map(|i| format!("{{\"id\":\"{i}\"}}")).collect();
    s.rows_fetched("e1", "each", Ok(rows), Now::read());
    assert!(
        settle(&mut s, now).is_empty(),
        "no slot for the rows' children"
    );
    let shown = super::tests::summary(&s);
    let published = rx.borrow().clone();
    assert_eq!(
        (shown.total, shown.pending, shown.running, shown.succeeded),
        (5, 3, 1, 1),
        "{shown:?}"
    );
    assert_eq!(
        (
            published.total,
            published.pending,
            published.running,
            published.succeeded
        ),
        (shown.total, shown.pending, shown.running, shown.succeeded),
        "{published:?}"
    );
    assert!(
        published.waiting.contains("capacity"),
        "why they wait: {published:?}"
    );
}

/// Runs an execution of `tasks` one-child tasks and a chain of as many noop
/// tasks on one agent of 16 slots (every agent full most of the time) to its
/// end; returns the tasks the scheduler looked at and the engine's steps.
fn work_of_a_run(tasks: usize) -> u64 {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 16, "b1", now);
    let mut parent = String::from("name='p'\n");
    for i in 0..tasks {
        parent.push_str(&format!(
            "[tasks.c{i:05}]\nforeach={{items=['1']}}\nchild='c.toml'\nparams={{shard='${{item}}'}}\n\
             [tasks.n{i:05}]\nnoop=true\n"
        ));
        if i > 0 {
            parent.push_str(&format!("after=['n{:05}']\n", i - 1));
        }
    }
    start_with(&mut s, &parent);
    let (mut seq, mut steps, mut state) = (0, 0, String::new());
    loop {
        let d = settle(&mut s, now);
        if d.is_empty() {
            break;
        }
        for x in d {
            seq += 1;
            s.agent_event("a", finished(seq, &x.3, JobStatus::Succeeded), now);
        }
        // Read before an ended execution leaves memory (at the next flush).
        if let Some(e) = s.execs.values().next() {
            steps = e.engine.steps();
            state = e.rec.state.as_str().to_string();
        }
    }
    assert_eq!((state.as_str(), seq), ("succeeded", tasks as u64));
    s.stats.task_checks + steps
}

#[test]
fn the_work_per_child_does_not_grow_with_the_number_of_tasks() {
    // Before: every child's end swept every task (ended? past max_failures?
    // queued?) and the engine every task again: quadratic in the tasks.
    let (small, big) = (work_of_a_run(100), work_of_a_run(800));
    assert!(
        big <= small * 8 * 2,
        "8x the tasks cost {big} against {small}: not linear"
    );
}

/// A rows foreach whose rows are on an agent this coordinator no longer
/// knows (a restart after that agent was removed) cannot ask for them: it
/// fails with that reason inside the flow's loop, the decision is recorded
/// for replays, and the task that runs on its failure starts.
#[test]
fn a_rows_foreach_whose_rows_are_on_a_forgotten_agent_fails_and_the_flow_goes_on() {
    let now = Now::read();
    let mut s = long_lease();
    reg(&mut s, "a", 8, "b1", now);
    let parent = "name='p'\n[tasks.list]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='x'}\n\
        [tasks.each]\nforeach={rows='list'}\nchild='c.toml'\nparams={shard='${item}'}\nafter=['list']\n\
        [tasks.rescue]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='y'}\nafter=[{task='each', on='failure'}]\n";
    start_with(&mut s, parent);
    let d = settle(&mut s, now);
    let mut done = finished(1, &d[0].3, JobStatus::Succeeded);
    if let Some(ReportBody::Finished(f)) = done.body.as_mut() {
        f.row_count = 3;
    }
    s.agent_event("a", done, now);
    let view = s.execution_view("e1").unwrap();
    let e = s.execs.by_id("e1").expect("e1 is in memory");
    let (rec, plan) = (e.rec.clone(), e.plan.clone());
    let stored: Vec<(ChildRecord, u64)> = view.children.into_iter().map(|c| (c, 7)).collect();

    // Restarted, and agent "a" is not known any more.
    let mut s2 = long_lease();
    s2.restore_execution(rec, 7, plan, stored, now);
    let fetches = s2
        .take_effects()
        .into_iter()
        .filter(|e| matches!(e, Effect::FetchRows { .. }))
        .count();
    assert_eq!(fetches, 0, "nobody to ask");
    assert_eq!(state(&s2, "each"), "failed");
    let e = s2.execs.by_id("e1").expect("e1 is in memory");
    assert!(
        matches!(e.rec.rows_outcomes.get("each"),
            Some(crate::records::RowsOutcome::Failed(why)) if why.contains("does not know any more")),
        "{:?}",
        e.rec.rows_outcomes
    );
    let view = s2.execution_view("e1").unwrap();
    assert!(
        view.children.iter().any(|c| c.task == "rescue"),
        "the task that runs on its failure started"
    );
    assert_eq!(s2.stats.refused_steps, 0);
}
