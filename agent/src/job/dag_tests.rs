//! Tests of the DAG driver on real processes (`sh`): parallel tasks, precedence
//! on success and failure, `when`, `continue_on_failure`, retries, outputs between
//! tasks, groups, cancel and deadline with several tasks running.

use std::path::Path;

use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::job::layout::{STDOUT_LOG, scratch_dir};
use crate::job::run::{JobReport, RunnerSettings, run_job};
use crate::mask::Masker;
use crate::model::DispatchKey;

use super::*;

fn key(name: &str) -> DispatchKey {
    DispatchKey {
        execution_id: "exec".into(),
        task_path: name.into(),
        item_index: 0,
        attempt: 1,
    }
}

fn settings(dir: &Path) -> RunnerSettings {
    RunnerSettings::new(dir.join("jobs"), Duration::from_millis(500), 256)
}

fn plan(name: &str, toml: &str) -> JobPlan {
    let package =
        baton_package::Package::parse("t.toml", toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    JobPlan {
        dispatch: key(name),
        package: Arc::new(package),
        params: Default::default(),
        default_task_timeout: Duration::from_secs(60),
        env: Vec::new(),
        deadline: None,
        run_as: None,
        masker: Masker::default(),
    }
}

async fn run(plan: &JobPlan, s: &RunnerSettings, cancel: &JobCancel) -> JobReport {
    let (tx, _rx) = oneshot::channel();
    tokio::time::timeout(Duration::from_secs(30), run_job(plan, s, cancel, tx))
        .await
        .expect("runner timed out")
}

/// Nanoseconds since the epoch that a task wrote to `file`.
fn stamp(dir: &Path, file: &str) -> u128 {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file}: {text:?}: {e}"))
}

fn alive(pid: i32) -> bool {
    if nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn independent_tasks_run_at_once_and_a_join_waits_for_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let task = |n: &str| {
        format!(
            "[tasks.{n}]\nscript = \"date +%s%N > {d}/start.{n}; sleep 0.6; date +%s%N > {d}/end.{n}; echo from-{n}\"\n"
        )
    };
    let toml = format!(
        "name = 'p'\n{}{}[tasks.join]\nscript = \"date +%s%N > {d}/start.join\"\nafter = ['a', 'b']\n",
        task("a"),
        task("b")
    );
    let r = run(
        &plan("par", &toml),
        &settings(dir.path()),
        &JobCancel::new(),
    )
    .await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    let p = dir.path();
    assert!(
        stamp(p, "start.a") < stamp(p, "end.b") && stamp(p, "start.b") < stamp(p, "end.a"),
        "a and b did not overlap"
    );
    let join = stamp(p, "start.join");
    assert!(join >= stamp(p, "end.a") && join >= stamp(p, "end.b"));
    // Both tasks' output is in the job's one log, each line whole.
    let log = std::fs::read_to_string(
        scratch_dir(&settings(p).scratch_root, &key("par")).join(STDOUT_LOG),
    )
    .unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort();
    assert_eq!(lines, ["from-a", "from-b"]);
}

#[tokio::test]
async fn a_failure_skips_its_on_success_dependents_and_runs_its_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let toml = format!(
        r#"name = 'p'
[tasks.a]
script = "echo partial=1 >> $BATON_OUTPUT; exit 3"
[tasks.next]
script = "touch {d}/next"
after = ["a"]
[tasks.after-next]
script = "touch {d}/after-next"
after = ["next"]
[tasks.handler]
script = "touch {d}/handler"
after = [{{ task = "a", on = "failure" }}]
[tasks.always]
script = "touch {d}/always"
after = [{{ task = "a", on = "completion" }}]
"#
    );
    let r = run(
        &plan("fail", &toml),
        &settings(dir.path()),
        &JobCancel::new(),
    )
    .await;
    assert_eq!(r.status, FinishStatus::Failed, "{r:?}");
    assert_eq!(r.reason, "task a exited with code 3");
    assert_eq!(r.exit_code, 3);
    assert!(r.outputs.is_empty(), "a failed job reports no outputs");
    assert!(
        !dir.path().join("next").exists(),
        "on-success dependent ran"
    );
    assert!(!dir.path().join("after-next").exists());
    assert!(
        dir.path().join("handler").exists(),
        "on-failure handler did not run"
    );
    assert!(
        dir.path().join("always").exists(),
        "on-completion did not run"
    );
}

#[tokio::test]
async fn when_false_skips_the_task_and_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let toml = format!(
        r#"name = 'p'
[tasks.a]
script = "echo go=no >> $BATON_OUTPUT"
[tasks.b]
script = "touch {d}/b"
after = ["a"]
when = "${{tasks.a.outputs.go}} == 'yes'"
[tasks.c]
script = "touch {d}/c"
after = ["b"]
[tasks.d]
script = "touch {d}/d"
after = ["a"]
when = "${{tasks.a.outputs.go}} == 'no'"
"#
    );
    let r = run(
        &plan("when", &toml),
        &settings(dir.path()),
        &JobCancel::new(),
    )
    .await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert!(!dir.path().join("b").exists(), "`when` false ran");
    assert!(
        !dir.path().join("c").exists(),
        "a skipped task's dependent ran"
    );
    assert!(dir.path().join("d").exists());
}

#[tokio::test]
async fn continue_on_failure_does_not_fail_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"name = 'p'
[tasks.flaky]
script = "exit 2"
continue_on_failure = true
[tasks.ok]
script = "echo done=1 >> $BATON_OUTPUT"
"#;
    let r = run(&plan("cof", toml), &settings(dir.path()), &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.outputs.get("done").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn a_failed_task_is_retried_per_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Succeeds at the third attempt; writes an output only then.
    let toml = format!(
        r#"name = 'p'
[tasks.a]
script = "echo $BATON_TASK_ATTEMPT >> {d}/attempts; [ $(wc -l < {d}/attempts) -ge 3 ] || {{ echo early=1 >> $BATON_OUTPUT; exit 1; }}; echo ok=1 >> $BATON_OUTPUT"
retry = {{ attempts = 3 }}
[tasks.b]
script = "echo $BATON_TASK_ATTEMPT >> {d}/attempts-b; exit 1"
retry = {{ attempts = 2 }}
continue_on_failure = true
"#
    );
    let r = run(
        &plan("retry", &toml),
        &settings(dir.path()),
        &JobCancel::new(),
    )
    .await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    let attempts = std::fs::read_to_string(dir.path().join("attempts")).unwrap();
    assert_eq!(attempts, "1\n2\n3\n");
    let attempts_b = std::fs::read_to_string(dir.path().join("attempts-b")).unwrap();
    assert_eq!(attempts_b, "1\n2\n", "no attempt beyond the policy");
    assert_eq!(r.outputs.get("ok").map(String::as_str), Some("1"));
    assert!(
        !r.outputs.contains_key("early"),
        "outputs are those of the last attempt"
    );
}

#[tokio::test]
async fn a_retry_waits_for_its_jittered_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let toml = format!(
        r#"name = 'p'
[tasks.a]
script = "date +%s%N > {d}/at.$BATON_TASK_ATTEMPT; [ $BATON_TASK_ATTEMPT -ge 2 ]"
retry = {{ attempts = 2, backoff_s = 1, jitter = true }}
"#
    );
    let r = run(
        &plan("backoff", &toml),
        &settings(dir.path()),
        &JobCancel::new(),
    )
    .await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    let gap_ms = (stamp(dir.path(), "at.2") - stamp(dir.path(), "at.1")) / 1_000_000;
    // Jitter spreads a 1 s backoff over [0.5 s, 1 s] (plus the time to start).
    assert!((500..3_000).contains(&gap_ms), "gap {gap_ms} ms");
}

#[tokio::test]
async fn outputs_of_a_task_reach_later_tasks_and_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"name = 'p'
[tasks.a]
script = "echo k=hello >> $BATON_OUTPUT; echo shared=from-a >> $BATON_OUTPUT"
[tasks.b]
exec = ["sh", "-c", "echo got=$1 >> $BATON_OUTPUT; echo shared=from-b >> $BATON_OUTPUT", "sh", "${tasks.a.outputs.k}"]
env = { FROM_A = "${tasks.a.outputs.k}" }
after = ["a"]
[tasks.c]
script = "echo env=$FROM_A >> $BATON_OUTPUT"
env = { FROM_A = "${tasks.a.outputs.k}-${tasks.b.outputs.got}" }
after = ["b"]
"#;
    let r = run(
        &plan("outputs", toml),
        &settings(dir.path()),
        &JobCancel::new(),
    )
    .await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    let get = |k: &str| r.outputs.get(k).cloned().unwrap_or_default();
    assert_eq!(get("k"), "hello");
    assert_eq!(get("got"), "hello", "a's output in b's argv");
    assert_eq!(get("env"), "hello-hello");
    assert_eq!(get("shared"), "from-b", "a later task wins on the same key");
}

#[tokio::test]
async fn a_group_runs_its_members_and_its_failure_skips_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let toml = format!(
        r#"name = 'p'
[tasks.g]
group = ["x", "y"]
[tasks.x]
script = "touch {d}/x"
[tasks.y]
script = "touch {d}/y; exit ${{params.code}}"
after = ["x"]
[tasks.z]
script = "touch {d}/z"
after = ["g"]
[parameters.code]
type = "int"
default = 0
"#
    );
    let s = settings(dir.path());
    let mut ok = plan("group-ok", &toml);
    ok.params = ok.package.bind(&Default::default()).unwrap();
    let r = run(&ok, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    for f in ["x", "y", "z"] {
        assert!(dir.path().join(f).exists(), "{f} did not run");
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let mut bad = plan("group-bad", &toml);
    bad.params = bad
        .package
        .bind(&[("code".to_string(), "5".to_string())].into())
        .unwrap();
    let r = run(&bad, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Failed, "{r:?}");
    assert_eq!(r.reason, "task y exited with code 5");
    assert!(dir.path().join("y").exists());
    assert!(!dir.path().join("z").exists(), "ran after a failed group");
}

/// Two tasks that ignore SIGTERM and leave a background child: `$$ $!` in `pids.T`.
fn stubborn(d: &std::path::Display<'_>) -> String {
    let t = |n: &str| {
        format!(
            "[tasks.{n}]\nscript = \"trap '' TERM; sleep 30 & echo $$ $! > {d}/pids.{n}; sleep 30\"\n"
        )
    };
    format!(
        "name = 'p'\n{}{}[tasks.after]\nscript = \"touch {d}/after\"\nafter = [{{ task = 'a', on = 'completion' }}]\n",
        t("a"),
        t("b")
    )
}

fn pids(dir: &Path) -> Vec<i32> {
    ["pids.a", "pids.b"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(dir.join(f))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

async fn all_dead(pids: &[i32]) -> bool {
    for _ in 0..100 {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn cancel_ends_every_running_task_s_group_within_one_grace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let p = plan("cancel", &stubborn(&d));
    let cancel = JobCancel::new();
    let (c2, path) = (cancel.clone(), dir.path().to_path_buf());
    let cancelled_at = tokio::spawn(async move {
        for _ in 0..250 {
            if pids(&path).len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c2.cancel(KillReason::Cancelled);
        std::time::Instant::now()
    });
    let r = run(&p, &settings(dir.path()), &cancel).await;
    let took = cancelled_at.await.unwrap().elapsed();
    assert_eq!(r.status, FinishStatus::Cancelled, "{r:?}");
    assert_eq!(r.reason, "cancelled by the coordinator");
    // TERM is ignored: SIGKILL after the 500 ms grace, once for both tasks.
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(950),
        "the job ended {took:?} after the cancel"
    );
    let pids = pids(dir.path());
    assert_eq!(pids.len(), 4, "both tasks ran at once");
    assert!(
        all_dead(&pids).await,
        "a process survived the cancel: {pids:?}"
    );
    assert!(
        !dir.path().join("after").exists(),
        "a task started after the cancel"
    );
}

#[tokio::test]
async fn the_deadline_ends_every_running_task_and_starts_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let mut p = plan("deadline", &stubborn(&d));
    p.deadline = Some(Duration::from_millis(700));
    let r = run(&p, &settings(dir.path()), &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::TimedOut, "{r:?}");
    assert!(
        r.reason.starts_with("job deadline of 700 ms exceeded"),
        "{}",
        r.reason
    );
    let pids = pids(dir.path());
    assert_eq!(pids.len(), 4);
    assert!(
        all_dead(&pids).await,
        "a process survived the deadline: {pids:?}"
    );
    assert!(!dir.path().join("after").exists());
}

#[tokio::test]
async fn a_task_timeout_is_a_failure_that_runs_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let toml = format!(
        r#"name = 'p'
[tasks.slow]
script = "sleep 30"
timeout_s = 1
[tasks.handler]
script = "touch {d}/handler"
after = [{{ task = "slow", on = "failure" }}]
"#
    );
    let r = run(
        &plan("timeout", &toml),
        &settings(dir.path()),
        &JobCancel::new(),
    )
    .await;
    assert_eq!(r.status, FinishStatus::TimedOut, "{r:?}");
    assert!(r.reason.contains("task slow timed out"), "{}", r.reason);
    assert!(dir.path().join("handler").exists());
}

#[test]
fn retry_seeds_differ_per_task_and_dispatch() {
    let p1 = plan("one", "name = 'p'\n[tasks.a]\nnoop = true\n");
    let p2 = plan("two", "name = 'p'\n[tasks.a]\nnoop = true\n");
    let seed = |p: &JobPlan, t: &str| {
        let d = Driver {
            plan: p,
            procs: None,
            engine: Engine::new(&p.package, p.params.clone()),
            running: JoinSet::new(),
            by_id: HashMap::new(),
            steps: HashMap::new(),
            stop: None,
            failures: Vec::new(),
            outputs: BTreeMap::new(),
        };
        d.seed(t)
    };
    assert_eq!(seed(&p1, "a"), seed(&p1, "a"));
    assert_ne!(seed(&p1, "a"), seed(&p1, "b"));
    assert_ne!(seed(&p1, "a"), seed(&p2, "a"));
}
