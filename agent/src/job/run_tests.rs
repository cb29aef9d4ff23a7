//! Tests of a job's run on real processes (`sh`, `sleep`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use baton_package::ParamValues;
use nix::unistd::Pid;

use super::*;
use crate::job::capture::LOG_BYTES_MAX;
use crate::job::layout::{ROWS_FILE, ROWS_KEPT_FILE, output_file};
use crate::job::plan::NESTED_FANOUT;
use crate::mask::Masker;
use crate::model::{DispatchKey, KillReason};
use crate::run_as::RunAsUser;

fn key(name: &str) -> DispatchKey {
    DispatchKey {
        execution_id: "exec".into(),
        task_path: name.into(),
        item_index: 0,
        attempt: 1,
    }
}

/// One task of a test package.
pub(super) enum T {
    /// `exec = ["sh", "-c", SCRIPT]` with `env = { TASK_VAR = "tv" }`.
    Sh {
        name: String,
        script: String,
        timeout_s: u64,
    },
    /// `exec = ARGV`.
    Exec {
        name: String,
        argv: Vec<String>,
    },
    Noop {
        name: String,
    },
    /// A `foreach` (nested fan-out: agents do not run it).
    Nested {
        name: String,
    },
}

impl T {
    fn name(&self) -> &str {
        match self {
            T::Sh { name, .. } | T::Exec { name, .. } | T::Noop { name } | T::Nested { name } => {
                name
            }
        }
    }
}

/// A TOML basic string.
pub(super) fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A task timeout in whole seconds (rounded up: `timeout_s` has no fractions).
pub(super) fn sh(task: &str, script: &str, timeout: Duration) -> T {
    T::Sh {
        name: task.into(),
        script: script.into(),
        timeout_s: timeout.as_millis().div_ceil(1000).max(1) as u64,
    }
}

/// A plan of a package from its TOML text.
pub(super) fn plan_toml(name: &str, toml: &str) -> JobPlan {
    let package = Package::parse("test.toml", toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    JobPlan {
        dispatch: key(name),
        package: Arc::new(package),
        params: ParamValues::default(),
        default_task_timeout: LONG,
        env: vec![("BATON_PARAM_N".into(), "42".into())],
        deadline: None,
        run_as: None,
        masker: Masker::default(),
    }
}

/// A plan whose tasks run one after another (each after the previous one's success).
fn plan(name: &str, tasks: Vec<T>) -> JobPlan {
    let mut toml = format!("name = {}\n", toml_str(name));
    let mut previous: Option<String> = None;
    for t in &tasks {
        toml.push_str(&format!("[tasks.{}]\n", t.name()));
        match t {
            T::Sh {
                script, timeout_s, ..
            } => toml.push_str(&format!(
                "exec = [\"sh\", \"-c\", {}]\nenv = {{ TASK_VAR = \"tv\" }}\ntimeout_s = {timeout_s}\n",
                toml_str(script)
            )),
            T::Exec { argv, .. } => {
                let argv: Vec<String> = argv.iter().map(|a| toml_str(a)).collect();
                toml.push_str(&format!("exec = [{}]\n", argv.join(", ")));
            }
            T::Noop { .. } => toml.push_str("noop = true\n"),
            T::Nested { .. } => {
                toml.push_str("foreach = { items = [\"x\"] }\nchild = \"other.toml\"\n")
            }
        }
        if let Some(p) = &previous {
            toml.push_str(&format!("after = [{}]\n", toml_str(p)));
        }
        previous = Some(t.name().to_string());
    }
    plan_toml(name, &toml)
}

pub(super) fn settings(dir: &Path) -> RunnerSettings {
    RunnerSettings::new(dir.join("jobs"), Duration::from_millis(500), 64)
}

pub(super) async fn run(
    plan: &JobPlan,
    s: &RunnerSettings,
    cancel: &JobCancel,
) -> (JobReport, Option<u32>) {
    let (tx, rx) = oneshot::channel();
    let report = tokio::time::timeout(Duration::from_secs(30), run_job(plan, s, cancel, tx))
        .await
        .expect("runner timed out");
    (report, rx.await.ok())
}

pub(super) const LONG: Duration = Duration::from_secs(60);

/// True while the process exists and is not a zombie.
pub(super) fn alive(pid: i32) -> bool {
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

    let missing = T::Exec {
        name: "t".into(),
        argv: vec!["/nonexistent/baton-test".into()],
    };
    let (r, pid) = run(&plan("missing", vec![missing]), &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Failed);
    assert!(r.reason.contains("cannot start"), "{}", r.reason);
    assert_eq!(pid, None, "no process, no started event");

    let fail = T::Nested { name: "fan".into() };
    let (r, _) = run(&plan("unsupported", vec![fail]), &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Failed);
    assert_eq!(r.reason, format!("task fan: {}", NESTED_FANOUT));
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
    // TERM is ignored by the shell, so SIGKILL after the 500 ms grace ends it:
    // one grace in all, not one for the leader and another for the group.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_millis(1_150),
        "cancel after 200 ms + a 500 ms grace took {took:?}"
    );
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

#[tokio::test]
async fn noop_job_succeeds_at_once_without_a_process_or_scratch_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let p = plan("noop", vec![T::Noop { name: "a".into() }]);
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
            T::Noop { name: "a".into() },
            sh("b", "echo b=1 >> \"$BATON_OUTPUT\"", LONG),
            T::Noop { name: "c".into() },
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
    let p = plan("noop-cancelled", vec![T::Noop { name: "a".into() }]);
    let (r, _) = run(&p, &settings(dir.path()), &cancel).await;
    assert_eq!(r.status, FinishStatus::Cancelled, "{r:?}");
}

/// `nobody` from the user database, when this test process can switch to it.
fn nobody_if_root(test: &str) -> Option<RunAsUser> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{test}: skipped, the test process is not root and cannot switch users");
        return None;
    }
    use crate::run_as::Host;
    match crate::run_as::RealHost.user("nobody") {
        Ok(Some(u)) if u.uid != 0 => Some(u),
        other => {
            eprintln!("{test}: skipped, no unprivileged user `nobody` here ({other:?})");
            None
        }
    }
}

/// A data dir the run-as user can pass through (a temp dir is 0700).
fn searchable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn run_as_runs_the_processes_as_that_user() {
    let Some(nobody) = nobody_if_root("run_as_runs_the_processes_as_that_user") else {
        return;
    };
    let dir = searchable_tempdir();
    let s = settings(dir.path());
    let mut p = plan(
        "run-as",
        vec![
            sh(
                "first",
                r#"echo "uid=$(id -u)" >> "$BATON_OUTPUT"; echo "gid=$(id -g)" >> "$BATON_OUTPUT"
                   echo "groups=$(id -G)" >> "$BATON_OUTPUT"
                   echo "home=$HOME user=$USER logname=$LOGNAME" >> "$BATON_OUTPUT"
                   echo "names=$(env | cut -d= -f1 | sort | tr '\n' ' ')" >> "$BATON_OUTPUT"
                   echo '{"r":1}' >> "$BATON_ROWS""#,
                LONG,
            ),
            sh(
                "second",
                r#"echo "second=$(id -un)" >> "$BATON_OUTPUT""#,
                LONG,
            ),
        ],
    );
    p.run_as = Some(nobody.clone());
    let (r, pid) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert!(pid.is_some());
    let get = |k: &str| r.outputs.get(k).cloned().unwrap_or_default();
    assert_eq!(get("uid"), nobody.uid.to_string());
    assert_eq!(get("gid"), nobody.gid.to_string());
    assert_eq!(
        get("groups"),
        nobody.gid.to_string(),
        "supplementary groups of the agent are dropped"
    );
    assert_eq!(
        get("home"),
        format!(
            "{} user=nobody logname=nobody",
            nobody.home.to_string_lossy()
        )
    );
    // Only the job's own variables and a few harmless ones of the agent's.
    for name in get("names").split_whitespace() {
        assert!(
            name.starts_with("BATON_")
                || name.starts_with("LC_")
                || [
                    "PATH", "LANG", "LANGUAGE", "TZ", "HOME", "USER", "LOGNAME", "TASK_VAR", "PWD",
                    "OLDPWD", "SHLVL", "_"
                ]
                .contains(&name),
            "the agent's environment leaked into a run-as job: {name}"
        );
    }
    assert_eq!(get("second"), "nobody");
    assert_eq!(r.row_count, 1);
    let job_dir = scratch_dir(&s.scratch_root, &p.dispatch);
    let meta = std::fs::metadata(&job_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (nobody.uid, 0o700));
}

#[tokio::test]
async fn run_as_child_is_cancelled_with_its_group() {
    let Some(nobody) = nobody_if_root("run_as_child_is_cancelled_with_its_group") else {
        return;
    };
    let dir = searchable_tempdir();
    let pids = dir.path().join("pids");
    std::fs::write(&pids, "").unwrap();
    std::os::unix::fs::chown(&pids, Some(nobody.uid), None).unwrap();
    let script = format!(
        "trap '' TERM; sleep 30 & echo $$ $! > {}; sleep 30",
        pids.display()
    );
    let mut p = plan("run-as-cancel", vec![sh("t", &script, LONG)]);
    p.run_as = Some(nobody);
    let cancel = JobCancel::new();
    let c2 = cancel.clone();
    let pids2 = pids.clone();
    tokio::spawn(async move {
        for _ in 0..200 {
            if std::fs::read_to_string(&pids2).is_ok_and(|t| !t.trim().is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c2.cancel(KillReason::Cancelled);
    });
    let (r, _) = run(&p, &settings(dir.path()), &cancel).await;
    assert_eq!(r.status, FinishStatus::Cancelled, "{r:?}");
    let text = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{text:?}");
    for _ in 0..100 {
        if pids.iter().all(|&p| !alive(p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in pids {
        assert!(!alive(p), "run-as process {p} survived the cancel");
    }
}

#[tokio::test]
async fn run_as_job_cannot_make_the_agent_read_other_files() {
    let Some(nobody) = nobody_if_root("run_as_job_cannot_make_the_agent_read_other_files") else {
        return;
    };
    let dir = searchable_tempdir();
    let secret = dir.path().join("root-only");
    std::fs::write(&secret, "stolen=yes\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!(
        "ln -s {} \"$BATON_OUTPUT\"; mkfifo \"$BATON_ROWS\"",
        secret.display()
    );
    let mut p = plan("run-as-symlink", vec![sh("t", &script, LONG)]);
    p.run_as = Some(nobody);
    let (r, _) = run(&p, &settings(dir.path()), &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert!(
        r.outputs.is_empty(),
        "read through a symlink: {:?}",
        r.outputs
    );
    assert_eq!(r.row_count, 0, "a FIFO is not read (and does not block)");
}

#[tokio::test]
async fn run_as_user_that_cannot_reach_the_job_dir_fails_with_a_reason() {
    let Some(nobody) = nobody_if_root("run_as_user_that_cannot_reach_the_job_dir") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let marker = dir.path().join("ran");
    let mut p = plan(
        "run-as-unreachable",
        vec![sh("t", &format!("touch {}", marker.display()), LONG)],
    );
    p.run_as = Some(nobody);
    let (r, pid) = run(&p, &settings(dir.path()), &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Failed, "{r:?}");
    assert!(
        r.reason.contains("cannot reach the job directory") && r.reason.contains("mode 700"),
        "{}",
        r.reason
    );
    assert_eq!(pid, None, "nothing started");
    assert!(!marker.exists());
}

#[tokio::test]
async fn sensitive_values_are_masked_in_logs_tails_outputs_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let mut p = plan(
        "masked",
        vec![sh(
            "t",
            r#"set -x; echo "pw=$BATON_PARAM_PW" >> "$BATON_OUTPUT"; echo "token is $BATON_PARAM_PW"; : "$BATON_PARAM_PW"; exit 4"#,
            LONG,
        )],
    );
    p.env
        .push(("BATON_PARAM_PW".into(), "hunter2-s3cret".into()));
    p.masker = Masker::new(["hunter2-s3cret"]);
    let (r, _) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Failed, "{r:?}");
    assert_eq!(r.stdout_tail, "token is ***\n");
    assert!(r.stderr_tail.contains("***"), "{:?}", r.stderr_tail);
    let job_dir = scratch_dir(&s.scratch_root, &p.dispatch);
    for f in ["stdout.log", "stderr.log"] {
        let text = std::fs::read_to_string(job_dir.join(f)).unwrap();
        assert!(!text.contains("hunter2"), "{f}: {text:?}");
    }
    assert!(!format!("{r:?}").contains("hunter2"), "{r:?}");

    // Outputs of a successful job and the reason of a failed start are masked too.
    let mut p = plan(
        "masked-ok",
        vec![sh(
            "t",
            r#"echo "pw=$BATON_PARAM_PW" >> "$BATON_OUTPUT""#,
            LONG,
        )],
    );
    p.env
        .push(("BATON_PARAM_PW".into(), "hunter2-s3cret".into()));
    p.masker = Masker::new(["hunter2-s3cret"]);
    let (r, _) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.outputs.get("pw").map(String::as_str), Some("***"));
    let missing = T::Exec {
        name: "t".into(),
        argv: vec!["/nonexistent/hunter2-s3cret".into()],
    };
    let mut p = plan("masked-missing", vec![missing]);
    p.masker = Masker::new(["hunter2-s3cret"]);
    let (r, _) = run(&p, &s, &JobCancel::new()).await;
    assert!(r.reason.contains("/nonexistent/***"), "{}", r.reason);
}

/// Every file under `dir` whose bytes contain `needle` (symbolic links not followed).
fn files_holding(dir: &Path, needle: &[u8], found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            files_holding(&entry.path(), needle, found);
        } else if ty.is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(entry.path());
            }
        }
    }
}

#[tokio::test]
async fn raw_output_and_rows_files_are_gone_once_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let secret = "hunter2-raw-s3cret";
    let script = r#"echo "pw=$BATON_PARAM_PW" >> "$BATON_OUTPUT"; printf '{"pw":"%s"}\n' "$BATON_PARAM_PW" >> "$BATON_ROWS""#;
    // One job that succeeds (its rows are kept, masked) and one that fails after
    // writing the same (its rows are not kept).
    for (name, script) in [
        ("ok", script.to_string()),
        ("fails", format!("{script}; exit 3")),
    ] {
        let mut p = plan(name, vec![sh("t", &script, LONG)]);
        p.env.push(("BATON_PARAM_PW".into(), secret.into()));
        p.masker = Masker::new([secret]);
        let (r, _) = run(&p, &s, &JobCancel::new()).await;
        if name == "ok" {
            assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
            assert_eq!(r.outputs.get("pw").map(String::as_str), Some("***"));
            assert_eq!(r.row_count, 1);
            let job_dir = scratch_dir(&s.scratch_root, &p.dispatch);
            let kept = std::fs::read_to_string(job_dir.join(ROWS_KEPT_FILE)).unwrap();
            assert_eq!(kept, "{\"pw\":\"***\"}\n");
            assert!(!job_dir.join(ROWS_FILE).exists());
            assert!(!output_file(&job_dir, "t").exists());
        } else {
            assert_eq!(r.status, FinishStatus::Failed, "{r:?}");
        }
    }
    let mut found = Vec::new();
    files_holding(dir.path(), secret.as_bytes(), &mut found);
    assert!(
        found.is_empty(),
        "files hold the sensitive value: {found:?}"
    );
}

#[tokio::test]
async fn a_job_without_sensitive_values_writes_its_logs_itself_and_a_silent_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    // Printed straight to the files: the log holds it, the tail is read back.
    let p = plan("loud", vec![sh("t", "echo out; echo err >&2", LONG)]);
    let (r, _) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert_eq!(
        (r.stdout_tail.as_str(), r.stderr_tail.as_str()),
        ("out\n", "err\n")
    );
    assert!(!r.left_nothing);
    let job_dir = scratch_dir(&s.scratch_root, &p.dispatch);
    assert_eq!(
        std::fs::read_to_string(job_dir.join("stdout.log")).unwrap(),
        "out\n"
    );
    // A silent job's directory goes to the pool, its empty logs removed.
    let p = plan("silent", vec![sh("t", "true", LONG)]);
    let (r, _) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert!(r.left_nothing, "{r:?}");
    assert!(!scratch_dir(&s.scratch_root, &p.dispatch).exists());
    assert_eq!(s.dirs.pooled(), 1);
    // The next job with a sensitive value gets that directory (empty) and goes
    // through the masker.
    let mut p = plan(
        "masked-reuse",
        vec![sh("t", r#"echo "token is $BATON_PARAM_PW""#, LONG)],
    );
    p.env
        .push(("BATON_PARAM_PW".into(), "hunter2-s3cret".into()));
    p.masker = Masker::new(["hunter2-s3cret"]);
    let (r, _) = run(&p, &s, &JobCancel::new()).await;
    assert_eq!(r.status, FinishStatus::Succeeded, "{r:?}");
    assert_eq!(s.dirs.pooled(), 0, "the pooled directory was reused");
    assert_eq!(r.stdout_tail, "token is ***\n");
    let log = std::fs::read_to_string(scratch_dir(&s.scratch_root, &p.dispatch).join("stdout.log"))
        .unwrap();
    assert_eq!(log, "token is ***\n");
}
