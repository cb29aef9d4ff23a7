//! Child package + bound parameters → a concrete [`JobPlan`] for the runner.
//!
//! Tasks are taken in `task_order()`. Every argv element and env value is interpolated
//! here; a task that cannot run on an agent yet (`foreach`) or whose interpolation
//! fails becomes a [`Step::Fail`], so the job fails when it reaches that task (earlier
//! tasks still run, as they would have with a real engine). A `noop` task becomes a
//! [`Step::Noop`], which succeeds without a process.

use std::path::PathBuf;
use std::time::Duration;

use baton_package::{Package, ParamValues, TaskKind, interpolate};

use crate::mask::Masker;
use crate::model::StartJob;
use crate::run_as::RunAsUser;
use crate::runner::{ExecStep, JobPlan, Step};

/// Reason given for a `foreach` inside a child package.
pub const FOREACH_UNSUPPORTED: &str = "foreach in a child package is not supported yet";

/// Builds the plan of an accepted job; `run_as` is the user admission approved.
pub fn build(
    job: &StartJob,
    package: &Package,
    params: &ParamValues,
    default_task_timeout: Duration,
    run_as: Option<RunAsUser>,
) -> JobPlan {
    let steps = package
        .task_order()
        .into_iter()
        .map(|task| {
            let timeout = task
                .timeout_s
                .map_or(default_task_timeout, Duration::from_secs);
            match &task.kind {
                TaskKind::Noop => Step::Noop {
                    task: task.name.clone(),
                },
                TaskKind::Foreach(_) => Step::Fail {
                    task: task.name.clone(),
                    reason: FOREACH_UNSUPPORTED.to_string(),
                },
                TaskKind::Script(_) | TaskKind::Child(_) | TaskKind::Group(_) => Step::Fail {
                    task: task.name.clone(),
                    reason: "script/child/group tasks are not run by agents yet".to_string(),
                },
                TaskKind::Exec(exec) => {
                    let interpolated = (|| {
                        let argv = exec
                            .argv
                            .iter()
                            .map(|a| interpolate(a, params, None))
                            .collect::<Result<Vec<_>, _>>()?;
                        let env = exec
                            .env
                            .iter()
                            .map(|(k, v)| Ok((k.clone(), interpolate(v, params, None)?)))
                            .collect::<Result<Vec<_>, baton_package::PackageError>>()?;
                        let workdir = exec
                            .workdir
                            .as_deref()
                            .map(|w| interpolate(w, params, None).map(PathBuf::from))
                            .transpose()?;
                        Ok::<_, baton_package::PackageError>((argv, env, workdir))
                    })();
                    match interpolated {
                        Ok((argv, env, workdir)) => Step::Exec(ExecStep {
                            task: task.name.clone(),
                            argv,
                            env,
                            workdir,
                            timeout,
                        }),
                        Err(e) => Step::Fail {
                            task: task.name.clone(),
                            reason: format!("{}: {e}", e.code()),
                        },
                    }
                }
            }
        })
        .collect();

    let mut env: Vec<(String, String)> = params
        .iter()
        .map(|(name, value)| (param_env_name(name), value.to_string()))
        .collect();
    if let Some(tp) = &job.traceparent {
        env.push(("TRACEPARENT".into(), tp.clone()));
    }
    let masker = Masker::new(
        params
            .iter()
            .filter(|(name, _)| params.is_sensitive(name))
            .map(|(_, value)| value),
    );
    JobPlan {
        dispatch: job.dispatch.clone(),
        steps,
        env,
        deadline: job.deadline,
        run_as,
        masker,
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
exec = ["echo", "${params.shard-id}"]
after = ["a"]
env = { X = "v${params.shard-id}" }
timeout_s = 5
[tasks.a]
exec = ["true"]
[tasks.c]
foreach = { items = ["x"] }
child = "other.toml"
after = ["b"]
[tasks.d]
noop = true
after = ["c"]
"#;

    #[test]
    fn builds_steps_in_order_with_interpolation() {
        let pkg = Package::parse("child.toml", CHILD).unwrap();
        let params = pkg
            .bind(&[("shard-id".to_string(), "7".to_string())].into())
            .unwrap();
        let job = StartJob {
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
            folder: "/".into(),
        };
        let plan = build(&job, &pkg, &params, Duration::from_secs(99), None);
        assert!(plan.run_as.is_none());
        assert_eq!(
            plan.masker.mask_str("7 pw-123"),
            "7 ***",
            "sensitive values are masked, others are not"
        );
        let names: Vec<String> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::Exec(e) => e.task.clone(),
                Step::Fail { task, .. } => format!("fail:{task}"),
                Step::Noop { task } => format!("noop:{task}"),
            })
            .collect();
        assert_eq!(names, ["a", "b", "fail:c", "noop:d"]);
        let Step::Exec(b) = &plan.steps[1] else {
            panic!()
        };
        assert_eq!(b.argv, ["echo", "7"]);
        assert_eq!(b.env, [("X".to_string(), "v7".to_string())]);
        assert_eq!(b.timeout, Duration::from_secs(5));
        let Step::Exec(a) = &plan.steps[0] else {
            panic!()
        };
        assert_eq!(a.timeout, Duration::from_secs(99));
        assert!(
            plan.env
                .contains(&("BATON_PARAM_SHARD_ID".into(), "7".into()))
        );
        assert!(
            plan.env
                .contains(&("TRACEPARENT".into(), "00-abc-def-01".into()))
        );
        let Step::Fail { reason, .. } = &plan.steps[2] else {
            panic!()
        };
        assert_eq!(reason, FOREACH_UNSUPPORTED);
    }
}
