//! Tests of the runner on real processes (`sh`, `sleep`).

use super::*;

fn key(name: &str) -> DispatchKey {
    DispatchKey {
        execution_id: "exec".into(),
        task_path: name.into(),
        item_index: 0,
        attempt: 1,
    }
}

fn sh(task: &str, script: &str, timeout: Duration) -> Step {
    Step::Exec(ExecStep {
        task: task.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("TASK_VAR".into(), "tv".into())],
        workdir: None,
        timeout,
    })
}

fn plan(name: &str, steps: Vec<Step>) -> JobPlan {
    JobPlan {
        dispatch: key(name),
        steps,
        env: vec![("BATON_PARAM_N".into(), "42".into())],
        deadline: None,
    }
}

fn settings(dir: &Path) -> RunnerSettings {
    RunnerSettings {
        scratch_root: dir.join("jobs"),
        kill_grace: Duration::from_millis(500),
        output_tail_bytes: 64,
    }
}

async fn run(plan: &JobPlan, s: &RunnerSettings, cancel: &JobCancel) -> (JobReport, Option<u32>) {
    let (tx, rx) = oneshot::channel();
    let report = tokio::time::timeout(Duration::from_secs(30), run_job(plan, s, cancel, tx))
        .await
        .expect("runner timed out");
    (report, rx.await.ok())
}

const LONG: Duration = Duration::from_secs(60);

/// True while the process exists and is not a zombie.
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
async fn success_collects_outputs_rows_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        "ok",
        vec![
            sh(
                "first",
                r#"echo "n=$BATON_PARAM_N" >> "$BATON_OUTPUT"; echo "task=$BATON_TASK tv=$TASK_VAR" >> "$BATON_OUTPUT"
                   printf '# comment\n\nnot a pair\n' >> "$BATON_OUTPUT"
                   echo "exec=$BATON_EXECUTION_ID attempt=$BATON_ATTEMPT"
                   printf '{"a":1}\n\n{"a":2}\n' >> "$BATON_ROWS""#,
                LONG,
            ),
            sh(
                "second",
                r#"echo "second=yes" >> "$BATON_OUTPUT"; printf '{"a":3}' >> "$BATON_ROWS"; echo oops >&2"#,
                LONG,
            ),
        ],
    );
    let s = settings(dir.path());
    let (r, pid) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert_eq!(r.exit_code, 0);
    assert!(pid.is_some_and(|p| p > 0));
    assert_eq!(r.outputs.get("n").map(String::as_str), Some("42"));
    assert_eq!(
        r.outputs.get("task").map(String::as_str),
        Some("first tv=tv")
    );
    assert_eq!(r.outputs.get("second").map(String::as_str), Some("yes"));
    assert_eq!(r.outputs.len(), 3);
    assert_eq!(r.row_count, 3);
    assert_eq!(r.stdout_tail, "exec=exec attempt=1\n");
    assert_eq!(r.stderr_tail, "oops\n");
    let log = std::fs::read_to_string(scratch_dir(&s.scratch_root, &p.dispatch).join("stdout.log"))
        .unwrap();
    assert_eq!(log, "exec=exec attempt=1\n");
}

#[tokio::test]
async fn non_zero_exit_fails_and_stops_later_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran-second");
    let p = plan(
        "fail",
        vec![
            sh("first", "echo k=v >> \"$BATON_OUTPUT\"; exit 3", LONG),
            sh("second", &format!("touch {}", marker.display()), LONG),
        ],
    );
    let (r, _) = run(&p, &settings(dir.path()), &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Failed);
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.reason, "task first exited with code 3");
    assert!(r.outputs.is_empty(), "outputs are read only after success");
    assert!(!marker.exists());
}

#[tokio::test]
async fn killed_by_signal_and_spawn_failure_and_fail_step() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let (r, _) = run(
        &plan("sig", vec![sh("t", "kill -9 $$", LONG)]),
        &s,
        &JobCancel::new(),
    )
    .await;
    assert_eq!((r.status, r.exit_code), (FinishStatus::Failed, -1));
    assert_eq!(r.reason, "task t killed by signal 9");

    let missing = Step::Exec(ExecStep {
        task: "t".into(),
        argv: vec!["/nonexistent/baton-test".into()],
        env: vec![],
        workdir: None,
        timeout: LONG,
    });
    let (r, pid) = run(&plan("missing", vec![missing]), &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Failed);
    assert!(r.reason.contains("cannot start"), "{}", r.reason);
    assert_eq!(pid, None, "no process, no started event");

    let fail = Step::Fail {
        task: "fan".into(),
        reason: "foreach in a child package is not supported yet".into(),
    };
    let (r, _) = run(&plan("unsupported", vec![fail]), &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Failed);
    assert_eq!(
        r.reason,
        "task fan: foreach in a child package is not supported yet"
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("sleep 30 & echo $$ $! > {}; sleep 30", pids.display());
    let p = plan("slow", vec![sh("t", &script, Duration::from_millis(700))]);
    let (r, pid) = run(&p, &settings(dir.path()), &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::TimedOut, "{r:?}");
    assert!(r.reason.contains("timed out"), "{}", r.reason);
    let text = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert_eq!(pid, Some(pids[0] as u32));
    // The orphaned background sleep is reaped by init; give it a moment.
    for _ in 0..100 {
        if pids.iter().all(|&p| !alive(p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in pids {
        assert!(!alive(p), "process {p} survived the timeout");
    }
}

#[tokio::test]
async fn job_deadline_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = plan("deadline", vec![sh("t", "sleep 30", LONG)]);
    p.deadline = Some(Duration::from_millis(300));
    let (r, _) = run(&p, &settings(dir.path()), &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::TimedOut);
    assert!(r.reason.contains("deadline"), "{}", r.reason);
}

#[tokio::test]
async fn cancel_ends_the_job_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan("cancel", vec![sh("t", "trap '' TERM; sleep 30", LONG)]);
    let cancel = JobCancel::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c2.cancel(KillReason::Cancelled);
    });
    let start = std::time::Instant::now();
    let (r, _) = run(&p, &settings(dir.path()), &cancel).await;
    assert_eq!(r.status, FinishStatus::Cancelled);
    assert_eq!(r.reason, "cancelled by the coordinator");
    // TERM is ignored by the shell, so SIGKILL after the 500 ms grace ends it.
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn stdout_tail_and_log_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB of 'x' then a recognisable end.
    let script = "head -c 2097152 /dev/zero | tr '\\0' x; echo; echo THE-END";
    let p = plan("big", vec![sh("t", script, LONG)]);
    let s = settings(dir.path());
    let (r, _) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout_tail.len(), 64);
    assert!(
        r.stdout_tail.ends_with("x\nTHE-END\n"),
        "{:?}",
        r.stdout_tail
    );
    let log = std::fs::read(scratch_dir(&s.scratch_root, &p.dispatch).join("stdout.log")).unwrap();
    assert!(log.len() as u64 <= LOG_BYTES_MAX + 100);
    assert!(String::from_utf8_lossy(&log).ends_with("truncated after 1048576 bytes]\n"));
}

#[test]
fn outputs_parsing() {
    let (o, bad) = parse_outputs("a=1\n# c\n\n b = x=y\nnovalue\n=empty\r\nc=\r\n");
    assert_eq!(o.get("a").map(String::as_str), Some("1"));
    assert_eq!(o.get("b").map(String::as_str), Some(" x=y"));
    assert_eq!(o.get("c").map(String::as_str), Some(""));
    assert_eq!(bad, 2);
}

#[tokio::test]
async fn noop_job_succeeds_at_once_without_a_process_or_scratch_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let p = plan("noop", vec![Step::Noop { task: "a".into() }]);
    let (r, pid) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert_eq!(r.exit_code, 0);
    assert!(pid.is_none(), "a noop job starts no process");
    assert!(r.outputs.is_empty());
    assert!(!scratch_dir(&s.scratch_root, &p.dispatch).exists());
}

#[tokio::test]
async fn noop_steps_between_processes_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        "mixed",
        vec![
            Step::Noop { task: "a".into() },
            sh("b", "echo b=1 >> \"$BATON_OUTPUT\"", LONG),
            Step::Noop { task: "c".into() },
        ],
    );
    let (r, pid) = run(&p, &settings(dir.path()), &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert!(pid.is_some());
    assert_eq!(r.outputs.get("b").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn cancelled_noop_job_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = JobCancel::new();
    cancel.cancel(KillReason::Cancelled);
    let p = plan("noop-cancelled", vec![Step::Noop { task: "a".into() }]);
    let (r, _) = run(&p, &settings(dir.path()), &cancel).await;
    assert_eq!(r.status, FinishStatus::Cancelled, "{r:?}");
}
