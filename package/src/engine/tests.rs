//! Engine tests: the rules one by one, then properties over random DAGs.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn engine(text: &str) -> Engine {
    let p = Package::parse("t.toml", text).unwrap();
    let params = p.bind(&BTreeMap::new()).unwrap();
    Engine::new(&p, params)
}

fn run(e: &mut Engine, task: &str, outcome: TaskOutcome) {
    e.started(task).unwrap();
    e.finished(task, outcome, BTreeMap::new()).unwrap();
}

fn out(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn independent_tasks_are_ready_together_and_after_waits() {
    let mut e = engine(
        "name='p'\n[tasks.a]\nnoop=true\n[tasks.b]\nnoop=true\n[tasks.c]\nnoop=true\nafter=['a','b']\n",
    );
    assert_eq!(e.ready(), ["a", "b"]);
    assert!(e.started("c").is_err());
    run(&mut e, "a", TaskOutcome::Succeeded);
    assert_eq!(e.ready(), ["b"]);
    run(&mut e, "b", TaskOutcome::Succeeded);
    assert_eq!(e.ready(), ["c"]);
    assert_eq!(e.outcome(), None);
    run(&mut e, "c", TaskOutcome::Succeeded);
    assert_eq!(e.outcome(), Some(PackageOutcome::Succeeded));
    assert!(e.ready().is_empty());
}

#[test]
fn constraints_on_failure_and_completion_and_skips() {
    let mut e = engine(
        "name='p'\n[tasks.a]\nexec=['x']\n\
         [tasks.ok]\nnoop=true\nafter=['a']\n\
         [tasks.alert]\nnoop=true\nafter=[{task='a', on='failure'}]\n\
         [tasks.cleanup]\nnoop=true\nafter=[{task='a', on='completion'}]\n\
         [tasks.later]\nnoop=true\nafter=['ok']\n",
    );
    run(&mut e, "a", TaskOutcome::Failed);
    assert_eq!(e.state("ok").unwrap(), TaskState::Skipped);
    assert_eq!(e.state("later").unwrap(), TaskState::Skipped);
    assert!(
        e.reason("ok").unwrap().contains("which failed"),
        "{:?}",
        e.reason("ok")
    );
    assert_eq!(e.ready(), ["alert", "cleanup"]);
    run(&mut e, "alert", TaskOutcome::Succeeded);
    run(&mut e, "cleanup", TaskOutcome::Succeeded);
    // a failed without continue_on_failure: the package failed, the handlers ran.
    assert_eq!(e.outcome(), Some(PackageOutcome::Failed));
}

#[test]
fn continue_on_failure_and_skips_do_not_fail_the_package() {
    let mut e = engine(
        "name='p'\n[tasks.a]\nexec=['x']\ncontinue_on_failure=true\n\
         [tasks.b]\nnoop=true\nafter=['a']\n[tasks.c]\nnoop=true\nafter=[{task='a',on='failure'}]\n",
    );
    run(&mut e, "a", TaskOutcome::Failed);
    assert_eq!(e.state("b").unwrap(), TaskState::Skipped);
    run(&mut e, "c", TaskOutcome::Succeeded);
    assert_eq!(e.outcome(), Some(PackageOutcome::Succeeded));
}

#[test]
fn when_reads_outputs_and_params() {
    let mut e = engine(
        "name='p'\n[parameters.min]\ntype='int'\ndefault=10\n\
         [tasks.extract]\nnoop=true\n\
         [tasks.load]\nnoop=true\nafter=['extract']\nwhen='${tasks.extract.outputs.rows} >= ${params.min}'\n\
         [tasks.empty]\nnoop=true\nafter=['extract']\nwhen='${tasks.extract.outputs.rows} == 0'\n\
         [tasks.bad]\nnoop=true\nafter=['extract']\nwhen='${tasks.extract.outputs.nope} == 0'\n",
    );
    e.started("extract").unwrap();
    e.finished("extract", TaskOutcome::Succeeded, out(&[("rows", "12")]))
        .unwrap();
    assert_eq!(e.ready(), ["load"]);
    assert_eq!(e.state("empty").unwrap(), TaskState::Skipped);
    assert_eq!(e.state("bad").unwrap(), TaskState::Failed);
    assert!(e.reason("bad").unwrap().contains("no output 'nope'"));
    assert_eq!(
        e.render("n=${tasks.extract.outputs.rows}", None).unwrap(),
        "n=12"
    );
}

#[test]
fn groups_run_their_members_and_end_with_them() {
    let text = "name='p'\n[tasks.first]\nnoop=true\n\
         [tasks.load]\ngroup=['a','b']\nafter=['first']\n\
         [tasks.a]\nnoop=true\n[tasks.b]\nexec=['x']\nafter=['a']\n\
         [tasks.after_load]\nnoop=true\nafter=['load']\n";
    let mut e = engine(text);
    assert_eq!(e.ready(), ["first"]);
    run(&mut e, "first", TaskOutcome::Succeeded);
    assert_eq!(e.state("load").unwrap(), TaskState::Running);
    assert_eq!(e.ready(), ["a"]);
    run(&mut e, "a", TaskOutcome::Succeeded);
    assert_eq!(e.ready(), ["b"]);
    run(&mut e, "b", TaskOutcome::Failed);
    assert_eq!(e.state("load").unwrap(), TaskState::Failed);
    assert_eq!(e.state("after_load").unwrap(), TaskState::Skipped);
    assert_eq!(e.outcome(), Some(PackageOutcome::Failed));

    // A group that does not run skips its members.
    let mut e = engine(text);
    run(&mut e, "first", TaskOutcome::Failed);
    for t in ["load", "a", "b", "after_load"] {
        assert_eq!(e.state(t).unwrap(), TaskState::Skipped, "{t}");
    }
    assert!(e.started("load").is_err());
}

#[test]
fn cancel_cancels_what_has_not_started() {
    let mut e = engine("name='p'\n[tasks.a]\nnoop=true\n[tasks.b]\nnoop=true\nafter=['a']\n");
    e.started("a").unwrap();
    assert_eq!(e.cancel(), ["a"]);
    assert_eq!(e.state("b").unwrap(), TaskState::Cancelled);
    assert_eq!(e.outcome(), None);
    e.finished("a", TaskOutcome::Cancelled, BTreeMap::new())
        .unwrap();
    assert_eq!(e.outcome(), Some(PackageOutcome::Cancelled));
}

#[test]
fn retries_follow_the_policy() {
    let mut e = engine(
        "name='p'\n[tasks.a]\nexec=['x']\nretry={attempts=3, backoff_s=2, backoff_max_s=3}\n",
    );
    e.started("a").unwrap();
    assert_eq!(
        e.retry_delay("a", e.attempts("a"), 1),
        Some(Duration::from_secs(2))
    );
    e.started("a").unwrap();
    assert_eq!(
        e.retry_delay("a", e.attempts("a"), 1),
        Some(Duration::from_secs(3))
    );
    e.started("a").unwrap();
    assert_eq!(e.retry_delay("a", e.attempts("a"), 1), None);
    e.failed("a", "exit 1").unwrap();
    assert_eq!(e.reason("a"), Some("exit 1"));
    assert_eq!(e.attempts("a"), 3);
}

#[test]
fn snapshot_restore_and_resume() {
    let text = "name='p'\n[tasks.a]\nnoop=true\n[tasks.b]\nexec=['x']\nafter=['a']\n\
                [tasks.c]\nnoop=true\nafter=['b']\n[tasks.g]\ngroup=['m']\n[tasks.m]\nexec=['y']\n";
    let p = Package::parse("t.toml", text).unwrap();
    let mut e = Engine::new(&p, ParamValues::default());
    e.started("a").unwrap();
    e.finished("a", TaskOutcome::Succeeded, out(&[("k", "v")]))
        .unwrap();
    run(&mut e, "b", TaskOutcome::Failed);
    run(&mut e, "m", TaskOutcome::Failed);
    assert_eq!(e.outcome(), Some(PackageOutcome::Failed));
    let json = serde_json::to_string(&e.snapshot()).unwrap();
    let snap: EngineSnapshot = serde_json::from_str(&json).unwrap();
    let mut r = Engine::restore(&p, ParamValues::default(), &snap).unwrap();
    assert_eq!(r.snapshot(), e.snapshot());
    r.resume().unwrap();
    assert_eq!(r.state("a").unwrap(), TaskState::Succeeded);
    assert_eq!(r.outputs()["a"]["k"], "v");
    assert_eq!(r.state("g").unwrap(), TaskState::Running);
    assert_eq!(r.ready(), ["b", "m"]);
    run(&mut r, "b", TaskOutcome::Succeeded);
    run(&mut r, "m", TaskOutcome::Succeeded);
    run(&mut r, "c", TaskOutcome::Succeeded);
    assert_eq!(r.outcome(), Some(PackageOutcome::Succeeded));

    let mut wrong = snap.clone();
    wrong.tasks.remove("a");
    assert_eq!(
        Engine::restore(&p, ParamValues::default(), &wrong)
            .unwrap_err()
            .code(),
        "ENGINE_SNAPSHOT_INVALID"
    );
}

// ---------------------------------------------------------------- properties

/// A random DAG: task i runs after some earlier tasks with random `on`, some
/// continue on failure, some have a `when` on a predecessor's state, and a
/// few earlier tasks are groups of later ones.
fn dag() -> impl Strategy<Value = String> {
    (2usize..9)
        .prop_flat_map(|n| {
            proptest::collection::vec(
                (
                    proptest::collection::vec((0usize..n, 0u8..3), 0..3),
                    any::<bool>(),
                    0u8..4,
                ),
                n,
            )
        })
        .prop_map(|tasks| {
            let n = tasks.len();
            let mut text = "name='p'\n".to_string();
            let mut member_of: BTreeMap<usize, usize> = BTreeMap::new();
            // Task 0 is a group of the last task when there are enough tasks.
            if n >= 4 {
                member_of.insert(n - 1, 0);
            }
            for (i, (after, cof, when)) in tasks.iter().enumerate() {
                text.push_str(&format!("[tasks.t{i}]\n"));
                if member_of.values().any(|g| *g == i) {
                    let members: Vec<String> = member_of
                        .iter()
                        .filter(|(_, g)| **g == i)
                        .map(|(m, _)| format!("'t{m}'"))
                        .collect();
                    text.push_str(&format!("group=[{}]\n", members.join(",")));
                } else {
                    text.push_str("exec=['x']\n");
                }
                let mut preds: Vec<(usize, u8)> = Vec::new();
                for (j, on) in after {
                    if *j < i && !preds.iter().any(|(p, _)| p == j) && member_of.get(&i) != Some(j)
                    {
                        preds.push((*j, *on));
                    }
                }
                let items: Vec<String> = preds
                    .iter()
                    .map(|(j, on)| {
                        let on = ["success", "failure", "completion"][*on as usize];
                        format!("{{task='t{j}', on='{on}'}}")
                    })
                    .collect();
                if !items.is_empty() {
                    text.push_str(&format!("after=[{}]\n", items.join(",")));
                }
                if *cof {
                    text.push_str("continue_on_failure=true\n");
                }
                if *when == 0
                    && let Some((j, _)) = preds.first()
                {
                    text.push_str(&format!("when=\"${{tasks.t{j}.state}} != 'skipped'\"\n"));
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

    /// Every task ends in exactly one terminal state; a task starts only once
    /// its predecessors ended; a skipped task never fails the package.
    #[test]
    fn runs_end_and_respect_precedence(text in dag(), outcomes in proptest::collection::vec(0u8..3, 32)) {
        let p = match Package::parse("t.toml", &text) {
            Ok(p) => p,
            // Generated constraints can contradict (a task that can never run).
            Err(_) => return Ok(()),
        };
        let mut e = Engine::new(&p, ParamValues::default());
        let mut k = 0;
        let mut started: Vec<String> = Vec::new();
        for _ in 0..64 {
            let ready = e.ready();
            if ready.is_empty() { break; }
            for t in ready {
                for a in &p.tasks[&t].after {
                    prop_assert!(e.state(&a.task).unwrap().is_terminal(), "{t} before {}", a.task);
                }
                prop_assert!(!started.contains(&t), "{t} started twice");
                started.push(t.clone());
                e.started(&t).unwrap();
                let o = [TaskOutcome::Succeeded, TaskOutcome::Failed, TaskOutcome::Succeeded][outcomes[k % 32] as usize];
                k += 1;
                e.finished(&t, o, BTreeMap::new()).unwrap();
            }
        }
        let outcome = e.outcome();
        prop_assert!(outcome.is_some(), "{text}\n{:?}", e.snapshot());
        let snap = e.snapshot();
        for (name, t) in &snap.tasks {
            prop_assert!(t.state.is_terminal(), "{name}");
            let is_group = matches!(p.tasks[name].kind, TaskKind::Group(_));
            prop_assert_eq!(started.contains(name), !is_group && matches!(t.state, TaskState::Succeeded | TaskState::Failed) && t.reason.is_none());
        }
        let counted = snap.tasks.iter().any(|(n, t)| {
            t.state == TaskState::Failed && !p.tasks[n].continue_on_failure && p.group_of(n).is_none()
        });
        prop_assert_eq!(outcome == Some(PackageOutcome::Failed), counted);
        // Resume: succeeded tasks stay (a group runs again when a member
        // that failed runs again), the rest can run again to success.
        let mut r = Engine::restore(&p, ParamValues::default(), &snap).unwrap();
        r.resume().unwrap();
        for (name, t) in &snap.tasks {
            if t.state == TaskState::Succeeded && !matches!(p.tasks[name].kind, TaskKind::Group(_)) {
                prop_assert_eq!(r.state(name).unwrap(), TaskState::Succeeded);
            }
        }
        for _ in 0..64 {
            let ready = r.ready();
            if ready.is_empty() { break; }
            for t in ready {
                prop_assert!(r.state(&t).unwrap() == TaskState::Pending);
                r.started(&t).unwrap();
                r.finished(&t, TaskOutcome::Succeeded, BTreeMap::new()).unwrap();
            }
        }
        prop_assert!(r.outcome().is_some());
    }
}

/// Runs a package to its end as a driver does (start every ready task,
/// report it, ask again) and returns the engine's work in steps.
fn steps_of_a_run(text: &str) -> u64 {
    let mut e = engine(text);
    loop {
        let ready = e.ready();
        if ready.is_empty() {
            break;
        }
        for t in ready {
            run(&mut e, &t, TaskOutcome::Succeeded);
        }
    }
    assert_eq!(e.outcome(), Some(PackageOutcome::Succeeded));
    e.steps()
}

#[test]
fn a_run_costs_steps_linear_in_its_tasks() {
    // Independent tasks, a chain whose names sort against it, and a group
    // whose members feed tasks after it.
    let independent = |n: usize| {
        let mut t = String::from("name='p'\n");
        for i in 0..n {
            t.push_str(&format!("[tasks.t{i}]\nnoop=true\n"));
        }
        t
    };
    let chain = |n: usize| {
        let mut t = String::from("name='p'\n");
        for i in 0..n {
            t.push_str(&format!("[tasks.t{:05}]\nnoop=true\n", n - i));
            if i > 0 {
                t.push_str(&format!(
                    "after=['t{:05}']\nwhen=\"${{tasks.t{:05}.state}} == 'succeeded'\"\n",
                    n - i + 1,
                    n - i + 1
                ));
            }
        }
        t
    };
    let group = |n: usize| {
        let mut t = String::from("name='p'\n[tasks.g]\ngroup=[");
        for i in 0..n / 2 {
            t.push_str(&format!("'m{i}',"));
        }
        t.push_str("]\n");
        for i in 0..n / 2 {
            t.push_str(&format!(
                "[tasks.m{i}]\nnoop=true\n[tasks.a{i}]\nnoop=true\nafter=['g']\n"
            ));
        }
        t
    };
    for make in [independent, chain, group] {
        let (small, big) = (steps_of_a_run(&make(400)), steps_of_a_run(&make(3_200)));
        assert!(small >= 400, "every task is looked at: {small}");
        assert!(
            big <= small * 8 * 2,
            "8x the tasks cost {big} steps against {small}: not linear"
        );
    }
}
