//! Scheduler tests of admission for work that grows a running execution:
//! a rows foreach and a sub-execution make their children only when the
//! coordinator has room for them under `--max-pending-children`; they wait
//! (with a visible reason) while it has none, and fail with a reason when
//! they could never fit. The bound holds at every step.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{DispatchId, JobStatus};

use super::tests::{finished, reg, settle};
use super::*;
use crate::prepare::plan_bundle;
use crate::records::Phase;

const CHILD: &str = "name='c'\n[parameters.shard]\ntype='string'\n[tasks.run]\nexec=['true']\n";

/// `list` (one child, whose rows feed `each`) beside `busy` (8 children).
const ROWS_PARENT: &str = "name='p'\n\
    [tasks.list]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='x'}\n\
    [tasks.busy]\nforeach={range={start=1,end=8}}\nchild='c.toml'\nparams={shard='${item}'}\n\
    [tasks.each]\nforeach={rows='list'}\nchild='c.toml'\nparams={shard='${item}'}\nafter=['list']\n";

/// Three children, each a package that fans out to four.
const NESTED_PARENT: &str = "name='p'\n\
    [tasks.regions]\nforeach={items=['a','b','c']}\nchild='r.toml'\nparams={shard='${item}'}\n";
const REGION: &str = "name='r'\n[parameters.shard]\ntype='string'\n\
    [tasks.shards]\nforeach={range={start=1,end=4}}\nchild='c.toml'\nparams={shard='${item}'}\n";

fn limited(max_pending_children: u64) -> Scheduler {
    Scheduler::new(
        SchedulerConfig {
            lease_ttl: Duration::from_secs(3600),
            max_pending_children,
            ..SchedulerConfig::default()
        },
        1,
    )
}

fn start_files(s: &mut Scheduler, files: &[(&str, &str)]) {
    let files: BTreeMap<String, String> = files
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let plan = plan_bundle("p.toml", &files, &BTreeMap::new()).unwrap();
    s.admit(&plan).unwrap();
    let rec = super::tests::running_record("e1", files, BTreeMap::new(), &plan);
    s.start(rec, plan, Now::read());
}

fn task_view(s: &Scheduler, task: &str) -> (String, String) {
    let t = s
        .execution_view("e1")
        .unwrap()
        .tasks
        .into_iter()
        .find(|t| t.0 == task)
        .unwrap();
    (t.1, t.2)
}

fn rows(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("\"r{i}\"")).collect()
}

/// A fleet that accepts every dispatch and finishes, one per round, the
/// dispatch `pick` chooses among those open.
#[derive(Default)]
struct Fleet {
    open: Vec<(String, DispatchId)>,
    seqs: BTreeMap<String, u64>,
}

impl Fleet {
    fn accept(&mut self, s: &mut Scheduler, d: Vec<(String, ChildRef, u32, DispatchId)>) {
        for (agent, child, attempt, id) in d {
            s.dispatch_result(
                child,
                &agent,
                attempt,
                DispatchOutcome::Accepted,
                Now::read(),
            );
            self.open.push((agent, id));
        }
    }

    /// Drives "e1" to its end, answering every request for rows with
    /// `rows_n` rows and checking the bound at every step: its last view
    /// (taken before a commit lets an ended execution go), or what is left
    /// when it does not end.
    fn drive(
        &mut self,
        s: &mut Scheduler,
        limit: u64,
        rows_n: usize,
        mut pick: impl FnMut(usize) -> usize,
    ) -> Result<ExecutionView, String> {
        let now = Now::read();
        for round in 0..2_000 {
            // As `settle`, but rows are asked for too.
            s.pump(now);
            match s.execution_view("e1") {
                Some(v) if v.summary.state != "running" => return Ok(v),
                None => return Err("the execution left memory while running".into()),
                _ => {}
            }
            super::tests::commit(s);
            for e in s.take_effects() {
                match e {
                    Effect::Dispatch {
                        agent,
                        child,
                        attempt,
                        spec,
                        ..
                    } => {
                        s.dispatch_result(child, &agent, attempt, DispatchOutcome::Accepted, now);
                        self.open.push((agent, spec.dispatch_id.clone()));
                    }
                    Effect::FetchRows {
                        execution_id, task, ..
                    } => s.rows_fetched(&execution_id, &task, Ok(rows(rows_n)), Now::read()),
                    _ => {}
                }
            }
            assert!(
                s.pending_children() <= limit,
                "{} unfinished children, limit {limit}",
                s.pending_children()
            );
            // With nothing open, only what waits for room is left: the next
            // pump must start it or fail it.
            if !self.open.is_empty() {
                let (agent, id) = self.open.swap_remove(pick(round) % self.open.len());
                let seq = self.seqs.entry(agent.clone()).or_default();
                *seq += 1;
                s.agent_event(&agent, finished(*seq, &id, JobStatus::Succeeded), now);
            }
        }
        Err(format!(
            "stuck: pending {}, parked rows {:?}, parked sub-executions {:?}",
            s.pending_children(),
            s.parked_rows,
            s.parked_nested
        ))
    }
}

/// `ROWS_PARENT` under `limit`: `list` and `busy` dispatched and accepted,
/// `list` finished, its `n` rows arrived. The scheduler and the dispatches.
fn rows_arrived(limit: u64, n: usize) -> (Scheduler, Vec<(String, ChildRef, u32, DispatchId)>) {
    let now = Now::read();
    let mut s = limited(limit);
    reg(&mut s, "a", 16, "b1", now);
    start_files(&mut s, &[("p.toml", ROWS_PARENT), ("c.toml", CHILD)]);
    let d = settle(&mut s, now);
    for (agent, child, attempt, _) in &d {
        s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, now);
    }
    let list = d.iter().find(|x| x.3.task_path == "list").unwrap();
    s.agent_event("a", finished(1, &list.3, JobStatus::Succeeded), now);
    s.rows_fetched("e1", "each", Ok(rows(n)), Now::read());
    (s, d)
}

#[test]
fn a_rows_foreach_waits_for_room_then_makes_its_children() {
    let now = Now::read();
    let (mut s, d) = rows_arrived(10, 5);
    assert_eq!(d.len(), 9, "list and busy run");
    // 8 busy children are unfinished: 8 + 5 > 10.
    let (state, reason) = task_view(&s, "each");
    assert_eq!(state, "running");
    assert!(reason.starts_with("waits for room"), "{reason}");
    assert!(
        reason.contains("holds 8") && reason.contains("adds 5"),
        "{reason}"
    );
    assert!(settle(&mut s, now).is_empty(), "no child of each yet");

    // Three busy children end: 5 + 5 fits.
    let busy: Vec<_> = d.iter().filter(|x| x.3.task_path == "busy").collect();
    for (i, b) in busy.iter().take(3).enumerate() {
        s.agent_event("a", finished(2 + i as u64, &b.3, JobStatus::Succeeded), now);
    }
    let d2 = settle(&mut s, now);
    assert_eq!(d2.len(), 5, "each's children are made and dispatched");
    assert!(d2.iter().all(|x| x.3.task_path == "each"));
    assert_eq!(task_view(&s, "each").1, "", "no waiting reason any more");
    assert_eq!(s.pending_children(), 10);
}

#[test]
fn rows_that_could_never_fit_fail_their_foreach_with_the_reason() {
    let (s, _) = rows_arrived(10, 11);
    let (state, reason) = task_view(&s, "each");
    assert_eq!(state, "failed");
    assert!(
        reason.contains("cannot make this foreach's children") && reason.contains("at most 10"),
        "{reason}"
    );
    let e = s.execs.by_id("e1").expect("e1 is in memory");
    assert!(matches!(
        e.rec.rows_outcomes.get("each"),
        Some(crate::records::RowsOutcome::Failed(_))
    ));
}

#[test]
fn a_cancel_ends_a_rows_foreach_that_holds_rows() {
    let now = Now::read();
    let (mut s, d) = rows_arrived(10, 5);
    assert!(task_view(&s, "each").1.starts_with("waits for room"));
    s.cancel("e1", "test", Now::read()).unwrap();
    let (state, reason) = task_view(&s, "each");
    assert_eq!(state, "cancelled", "{reason}");
    assert_eq!(reason, "");
    // Room that comes later does not bring the rows back.
    for (i, b) in d.iter().filter(|x| x.3.task_path == "busy").enumerate() {
        s.agent_event("a", finished(2 + i as u64, &b.3, JobStatus::Cancelled), now);
    }
    assert!(settle(&mut s, now).is_empty());
    assert!(s.parked_rows.is_empty());
}

#[test]
fn sub_executions_wait_for_room_and_all_run_under_the_bound() {
    let now = Now::read();
    let limit = 8;
    let mut s = limited(limit);
    reg(&mut s, "a", 16, "b1", now);
    start_files(
        &mut s,
        &[
            ("p.toml", NESTED_PARENT),
            ("r.toml", REGION),
            ("c.toml", CHILD),
        ],
    );
    // The first pump starts a sub-execution, the next dispatches its children.
    let mut d = settle(&mut s, now);
    d.extend(settle(&mut s, now));
    // 3 regions + 4 shards of the first: the second would make 11.
    assert_eq!(d.len(), 4, "one sub-execution's children");
    assert_eq!(s.running_executions(), 2);
    let view = s.execution_view("e1").unwrap();
    let waiting: Vec<&String> = view.waiting.iter().filter(|w| !w.is_empty()).collect();
    assert_eq!(waiting.len(), 1, "{:?}", view.waiting);
    assert!(waiting[0].starts_with("waits for room"), "{}", waiting[0]);
    let mut fleet = Fleet::default();
    fleet.accept(&mut s, d);
    let view = fleet.drive(&mut s, limit, 0, |_| 0).unwrap();
    assert_eq!(view.summary.state, "succeeded");
    assert!(view.children.iter().all(|c| c.phase == Phase::Succeeded));
    assert!(s.parked_nested.is_empty());
}

#[test]
fn sub_executions_that_could_never_fit_fail_instead_of_waiting_forever() {
    let now = Now::read();
    // 3 regions pending, each wanting 4 more under a bound of 5: none of
    // the unfinished children can end before a region starts (they are the
    // regions), so a region that does not fit fails; the last one then fits
    // (1 + 4).
    let mut s = limited(5);
    reg(&mut s, "a", 16, "b1", now);
    start_files(
        &mut s,
        &[
            ("p.toml", NESTED_PARENT),
            ("r.toml", REGION),
            ("c.toml", CHILD),
        ],
    );
    let view = Fleet::default().drive(&mut s, 5, 0, |_| 0).unwrap();
    assert_eq!(view.summary.state, "failed");
    let failed: Vec<_> = view
        .children
        .iter()
        .filter(|c| c.phase == Phase::Failed)
        .collect();
    assert_eq!(failed.len(), 2);
    for c in &failed {
        assert!(
            c.reason.contains("cannot start its sub-execution")
                && c.reason.contains("none of which can end before it does"),
            "{}",
            c.reason
        );
    }
    // Once two of them failed, the last one fit and ran.
    let ok = view.children.iter().filter(|c| c.phase == Phase::Succeeded);
    assert_eq!(ok.count(), 1);
}

/// How "e1" ends, or what is left when it does not.
fn state_at_end(s: &mut Scheduler, limit: u64, rows_n: usize) -> String {
    match Fleet::default().drive(s, limit, rows_n, |_| 0) {
        Ok(v) => v.summary.state,
        Err(stuck) => stuck,
    }
}

const ONE_SUB: &str =
    "name='p'\n[tasks.sub]\nforeach={items=['a']}\nchild='s.toml'\nparams={shard='${item}'}\n";

/// A rows foreach inside a sub-execution: the sub-execution's child on the
/// parent counts as unfinished but can only end after the rows' children, so
/// rows that do not fit beside it can never fit: the foreach fails.
#[test]
fn rows_that_only_fit_without_their_own_parent_fail_instead_of_waiting() {
    let sub = "name='s'\n[parameters.shard]\ntype='string'\n\
        [tasks.list]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='x'}\n\
        [tasks.each]\nforeach={rows='list'}\nchild='c.toml'\nparams={shard='${item}'}\nafter=['list']\n";
    let now = Now::read();
    let mut s = limited(10);
    reg(&mut s, "a", 16, "b1", now);
    start_files(
        &mut s,
        &[("p.toml", ONE_SUB), ("s.toml", sub), ("c.toml", CHILD)],
    );
    assert_eq!(state_at_end(&mut s, 10, 10), "failed");
    // Nine rows fit beside it.
    let mut s = limited(10);
    reg(&mut s, "a", 16, "b1", now);
    start_files(
        &mut s,
        &[("p.toml", ONE_SUB), ("s.toml", sub), ("c.toml", CHILD)],
    );
    assert_eq!(state_at_end(&mut s, 10, 9), "succeeded");
}

/// Two levels of sub-executions under a tight bound end (each level either
/// runs or fails with the reason); they never wait for each other for ever.
#[test]
fn nested_sub_executions_never_wait_for_each_other() {
    let mid = "name='m'\n[parameters.shard]\ntype='string'\n\
        [tasks.r]\nforeach={items=['x','y']}\nchild='r.toml'\nparams={shard='${item}'}\n";
    let leaf = "name='r'\n[parameters.shard]\ntype='string'\n\
        [tasks.shards]\nforeach={range={start=1,end=1}}\nchild='c.toml'\nparams={shard='${item}'}\n";
    let now = Now::read();
    for limit in 3..6 {
        let mut s = limited(limit);
        reg(&mut s, "a", 16, "b1", now);
        start_files(
            &mut s,
            &[
                ("p.toml", ONE_SUB),
                ("s.toml", mid),
                ("r.toml", leaf),
                ("c.toml", CHILD),
            ],
        );
        let end = state_at_end(&mut s, limit, 0);
        assert!(
            end == "succeeded" || end == "failed",
            "limit {limit}: {end}"
        );
    }
}

/// While a running execution's work waits for room, new runs are refused
/// as busy even when they would fit: the waiting work goes first.
#[test]
fn work_waiting_for_room_goes_before_new_runs() {
    let (mut s, _) = rows_arrived(10, 5);
    assert!(task_view(&s, "each").1.starts_with("waits for room"));
    // 8 unfinished and 5 waiting: a run of one child would fit beside the 8.
    let files: BTreeMap<String, String> = [(
        "p.toml".to_string(),
        "name='q'\n[tasks.t]\nexec=['true']\n".to_string(),
    )]
    .into();
    let plan = plan_bundle("p.toml", &files, &BTreeMap::new()).unwrap();
    let e = s.admit(&plan).unwrap_err();
    assert_eq!(e.code(), "COORDINATOR_BUSY", "{e}");
}

mod properties {
    //! Whatever the bound, the shape of the fan-out and the order in which
    //! children finish, the unfinished children never pass the bound, the
    //! execution always ends, and each child that did not run says why.

    use super::*;
    use proptest::prelude::*;

    /// Regions that fan out to shards; a rows foreach in the parent
    /// (`rows_at` 1), in every region (2), in every shard's package, two
    /// levels down (3), or nowhere (0).
    fn packages(regions: usize, shards: u32, rows_at: u8) -> Vec<(String, String)> {
        const ROWS: &str = "[tasks.list]\nforeach={items=['1']}\nchild='c.toml'\nparams={shard='x'}\n\
             [tasks.each]\nforeach={rows='list'}\nchild='c.toml'\nparams={shard='${item}'}\nafter=['list']\n";
        let items: Vec<String> = (0..regions).map(|i| format!("'r{i}'")).collect();
        let mut parent = format!(
            "name='p'\n[tasks.regions]\nforeach={{items=[{}]}}\nchild='r.toml'\nparams={{shard='${{item}}'}}\n",
            items.join(",")
        );
        let shard_pkg = if rows_at == 3 { "s.toml" } else { "c.toml" };
        let mut region = format!(
            "name='r'\n[parameters.shard]\ntype='string'\n\
             [tasks.shards]\nforeach={{range={{start=1,end={shards}}}}}\nchild='{shard_pkg}'\nparams={{shard='${{item}}'}}\n"
        );
        match rows_at {
            1 => parent.push_str(ROWS),
            2 => region.push_str(ROWS),
            _ => {}
        }
        vec![
            ("p.toml".into(), parent),
            ("r.toml".into(), region),
            (
                "s.toml".into(),
                format!("name='s'\n[parameters.shard]\ntype='string'\n{ROWS}"),
            ),
            ("c.toml".into(), CHILD.into()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_bound_holds_and_every_execution_ends(
            limit in 4u64..24,
            regions in 1usize..6,
            shards in 1u32..8,
            rows in 0usize..12,
            rows_at in 0u8..4,
            order in proptest::collection::vec(any::<u16>(), 64),
        ) {
            let now = Now::read();
            let mut s = limited(limit);
            reg(&mut s, "a", 3, "b1", now);
            reg(&mut s, "b", 2, "b1", now);
            let files: BTreeMap<String, String> =
                packages(regions, shards, rows_at).into_iter().collect();
            let plan = plan_bundle("p.toml", &files, &BTreeMap::new()).unwrap();
            prop_assume!(s.admit(&plan).is_ok());
            let rec = super::super::tests::running_record("e1", files, BTreeMap::new(), &plan);
            s.start(rec, plan, Now::read());
            let pick = |round: usize| usize::from(order[round % order.len()]);
            let last = Fleet::default().drive(&mut s, limit, rows, pick);
            prop_assert!(last.is_ok(), "{}", last.unwrap_err());
            let last = last.unwrap();
            for c in &last.children {
                if c.phase == Phase::Failed {
                    // Its own sub-execution could not start, or it ran one that
                    // failed (in this test only admission fails anything).
                    let ok = c.reason.contains("--max-pending-children")
                        || c.reason.starts_with("execution ");
                    prop_assert!(ok, "{}", c.reason);
                } else {
                    prop_assert_eq!(c.phase, Phase::Succeeded);
                }
            }
            for (name, state, reason) in &last.tasks {
                if state == "failed" {
                    let ok = reason.contains("--max-pending-children")
                        || last.children.iter().any(|c| c.task == name && c.phase == Phase::Failed);
                    prop_assert!(ok, "{} failed: {}", name, reason);
                }
            }
        }
    }
}

#[test]
fn rows_over_the_item_limit_name_that_limit() {
    // The coordinator's default room (1,000,000 unfinished children) is the
    // same number: the item limit is the reason, not --max-pending-children.
    let (s, _) = rows_arrived(
        crate::scheduler::DEFAULT_MAX_PENDING_CHILDREN,
        baton_package::MAX_FOREACH_ITEMS + 1,
    );
    let (state, reason) = task_view(&s, "each");
    assert_eq!(state, "failed");
    assert!(
        reason.contains("limit of 1000000 items") && !reason.contains("--max-pending-children"),
        "{reason}"
    );
}
