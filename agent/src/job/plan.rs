//! What a job is to run: child package + bound parameters → a [`JobPlan`], and
//! each task → a concrete [`Step`] at the moment it becomes ready (a process step
//! is an [`ExecStep`]).
//!
//! Nothing of a task is interpolated at plan time: a task's argv, env and workdir may
//! name the outputs of tasks before it (`${tasks.T.outputs.K}`), known only once they
//! ended, so [`step`] renders them through the engine ([`Engine::render`]) when the
//! engine says the task is ready. A task agents do not run (`child`, `foreach`: nested
//! fan-out needs the coordinator) or whose interpolation fails becomes a
//! [`Step::Fail`]; a `noop` task a [`Step::Noop`], which succeeds without a process;
//! `exec` and `script` (`/bin/sh -c SCRIPT`) tasks a [`Step::Exec`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_package::{Engine, Package, PackageError, ParamValues, Task, TaskKind};

use crate::mask::Masker;
use crate::model::{DispatchKey, StartJob};
use crate::run_as::RunAsUser;

/// A process to run, fully interpolated.
#[derive(Clone)]
pub struct ExecStep {
    pub task: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    pub timeout: Duration,
}

/// Hand-written: argv and env may hold sensitive parameter values.
impl std::fmt::Debug for ExecStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStep")
            .field("task", &self.task)
            .field("program", &self.argv.first())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Everything needed to run one job.
#[derive(Clone)]
pub struct JobPlan {
    pub dispatch: DispatchKey,
    /// The child package; its tasks are interpolated when they become ready.
    pub package: Arc<Package>,
    /// Its bound parameters.
    pub params: ParamValues,
    /// Timeout of a task without `timeout_s`.
    pub default_task_timeout: Duration,
    /// Job-wide environment (`BATON_PARAM_*`, `TRACEPARENT`, ...), before each task's own.
    pub env: Vec<(String, String)>,
    /// Wall-clock budget of the whole job.
    pub deadline: Option<Duration>,
    /// The user the processes run as (approved by admission); `None`: the agent's.
    pub run_as: Option<RunAsUser>,
    /// The job's sensitive parameter values, masked in logs, tails, outputs, reasons.
    pub masker: Masker,
}

/// What one task becomes once it is ready (see [`step`]).
#[derive(Debug, Clone)]
pub enum Step {
    /// Run a process.
    Exec(ExecStep),
    /// The task cannot run (a kind agents do not run, an interpolation error): it
    /// fails with this reason, without a process.
    Fail { task: String, reason: String },
    /// A `noop` task: succeeds at once, no process.
    Noop { task: String },
}

/// Reason given for a `child` or `foreach` task inside a child package.
pub const NESTED_FANOUT: &str =
    "nested fan-out: a child package's `child`/`foreach` tasks are not run by agents yet";

/// Builds the plan of an accepted job; `run_as` is the user admission approved.
pub fn build(
    job: &StartJob,
    package: Arc<Package>,
    params: &ParamValues,
    default_task_timeout: Duration,
    run_as: Option<RunAsUser>,
) -> JobPlan {
    let mut env: Vec<(String, String)> = params
        .iter()
        .map(|(name, value)| (param_env_name(name), value.to_string()))
        .collect();
    if let Some(tp) = &job.traceparent {
        env.push(("TRACEPARENT".into(), tp.clone()));
        if let Some(ts) = &job.tracestate {
            env.push(("TRACESTATE".into(), ts.clone()));
        }
    }
    let masker = Masker::new(
        params
            .iter()
            .filter(|(name, _)| params.is_sensitive(name))
            .map(|(_, value)| value),
    );
    JobPlan {
        dispatch: job.dispatch.clone(),
        package,
        params: params.clone(),
        default_task_timeout,
        env,
        deadline: job.deadline,
        run_as,
        masker,
    }
}

/// The step of a task the engine just said is ready, interpolated against the
/// parameters and the outputs of the tasks that ended so far.
pub fn step(engine: &Engine, task: &Task, default_task_timeout: Duration) -> Step {
    let name = task.name.clone();
    let timeout = task
        .timeout_s
        .map_or(default_task_timeout, Duration::from_secs);
    let (argv, env, workdir) = match &task.kind {
        TaskKind::Noop => return Step::Noop { task: name },
        TaskKind::Child(_) | TaskKind::Foreach(_) => {
            return Step::Fail {
                task: name,
                reason: NESTED_FANOUT.to_string(),
            };
        }
        // The engine runs groups itself; one never becomes ready.
        TaskKind::Group(_) => {
            return Step::Fail {
                task: name,
                reason: "a group does not run by itself".to_string(),
            };
        }
        TaskKind::Exec(exec) => (exec.argv.clone(), &exec.env, &exec.workdir),
        TaskKind::Script(script) => (script.argv(), &script.env, &script.workdir),
    };
    let render = |t: &str| engine.render(t, None);
    let interpolated = (|| {
        let argv = argv
            .iter()
            .map(|a| render(a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = env
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(v)?)))
            .collect::<Result<Vec<_>, PackageError>>()?;
        let workdir = workdir
            .as_deref()
            .map(|w| render(w).map(PathBuf::from))
            .transpose()?;
        Ok::<_, PackageError>((argv, env, workdir))
    })();
    match interpolated {
        Ok((argv, env, workdir)) => Step::Exec(ExecStep {
            task: name,
            argv,
            env,
            workdir,
            timeout,
        }),
        Err(e) => Step::Fail {
            task: name,
            reason: format!("{}: {e}", e.code()),
        },
    }
}

/// `BATON_PARAM_<NAME>`: upper-cased, `-` → `_`.
pub fn param_env_name(name: &str) -> String {
    format!(
        "BATON_PARAM_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DispatchKey, Epoch, PackageSource};
    use baton_package::TaskOutcome;

    const CHILD: &str = r#"
name = "child"
[parameters.shard-id]
type = "int"
default = 1
[parameters.password]
type = "string"
sensitive = true
default = "pw-123"
[tasks.b]
exec = ["echo", "${params.shard-id}", "${tasks.a.outputs.k}"]
after = ["a"]
env = { X = "v${params.shard-id}" }
workdir = "/tmp/${tasks.a.outputs.k}"
timeout_s = 5
[tasks.a]
script = "echo k=${params.shard-id} >> $BATON_OUTPUT"
[tasks.c]
foreach = { items = ["x"] }
child = "other.toml"
after = ["b"]
[tasks.d]
noop = true
after = [{ task = "c", on = "failure" }]
[tasks.e]
exec = ["echo", "${tasks.a.outputs.missing}"]
after = [{ task = "c", on = "failure" }]
"#;

    fn job() -> StartJob {
        StartJob {
            dispatch: DispatchKey {
                execution_id: "e".into(),
                task_path: "fan".into(),
                item_index: 0,
                attempt: 1,
            },
            package: PackageSource {
                name: "child".into(),
                content_hash: baton_package::content_hash(CHILD),
                content: Some(CHILD.into()),
            },
            parameters: Default::default(),
            epoch: Epoch(1),
            deadline: None,
            traceparent: Some("00-abc-def-01".into()),
            tracestate: None,
            folder: "/".into(),
        }
    }

    /// Starts the ready task named `want` and returns its step.
    fn ready_step(engine: &mut Engine, want: &str) -> Step {
        assert_eq!(engine.ready(), [want]);
        engine.started(want).unwrap();
        let task = engine.package().tasks[want].clone();
        step(engine, &task, Duration::from_secs(99))
    }

    #[test]
    fn plan_holds_the_environment_and_masks_sensitive_values() {
        let pkg = Package::parse("child.toml", CHILD).unwrap();
        let params = pkg
            .bind(&[("shard-id".to_string(), "7".to_string())].into())
            .unwrap();
        let plan = build(
            &job(),
            Arc::new(pkg),
            &params,
            Duration::from_secs(99),
            None,
        );
        assert!(plan.run_as.is_none());
        assert_eq!(plan.default_task_timeout, Duration::from_secs(99));
        assert_eq!(
            plan.masker.mask_str("7 pw-123"),
            "7 ***",
            "sensitive values are masked, others are not"
        );
        assert!(
            plan.env
                .contains(&("BATON_PARAM_SHARD_ID".into(), "7".into()))
        );
        assert!(
            plan.env
                .contains(&("TRACEPARENT".into(), "00-abc-def-01".into()))
        );
    }

    #[test]
    fn steps_are_interpolated_when_ready_with_earlier_outputs() {
        let pkg = Package::parse("child.toml", CHILD).unwrap();
        let params = pkg
            .bind(&[("shard-id".to_string(), "7".to_string())].into())
            .unwrap();
        let mut engine = Engine::new(&pkg, params);
        let Step::Exec(a) = ready_step(&mut engine, "a") else {
            panic!("a script is a process")
        };
        assert_eq!(
            a.argv,
            ["/bin/sh", "-c", "echo k=7 >> $BATON_OUTPUT"],
            "a script runs with /bin/sh -c"
        );
        assert_eq!(a.timeout, Duration::from_secs(99));
        let outputs = [("k".to_string(), "out-a".to_string())].into();
        engine
            .finished("a", TaskOutcome::Succeeded, outputs)
            .unwrap();

        let Step::Exec(b) = ready_step(&mut engine, "b") else {
            panic!("b is a process")
        };
        assert_eq!(b.argv, ["echo", "7", "out-a"]);
        assert_eq!(b.env, [("X".to_string(), "v7".to_string())]);
        assert_eq!(b.workdir, Some(PathBuf::from("/tmp/out-a")));
        assert_eq!(b.timeout, Duration::from_secs(5));
        engine
            .finished("b", TaskOutcome::Succeeded, Default::default())
            .unwrap();

        let Step::Fail { reason, .. } = ready_step(&mut engine, "c") else {
            panic!("nested fan-out fails")
        };
        assert_eq!(reason, NESTED_FANOUT);
        engine.failed("c", reason).unwrap();

        let mut ready = engine.ready();
        ready.sort();
        assert_eq!(ready, ["d", "e"]);
        for t in ["d", "e"] {
            engine.started(t).unwrap();
        }
        let d = engine.package().tasks["d"].clone();
        assert!(matches!(
            step(&engine, &d, Duration::ZERO),
            Step::Noop { .. }
        ));
        let e = engine.package().tasks["e"].clone();
        let Step::Fail { reason, .. } = step(&engine, &e, Duration::ZERO) else {
            panic!("an unknown output is an interpolation error")
        };
        assert!(reason.starts_with("TEMPLATE_INVALID"), "{reason}");
    }
}
