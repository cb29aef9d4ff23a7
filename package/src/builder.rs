//! Build a package in Rust, object by object, instead of writing TOML:
//!
//! ```
//! use baton_package::{ForeachOver, On, PackageBuilder, ParamBuilder, ParamType, TaskBuilder};
//!
//! let pkg = PackageBuilder::new("etl")
//!     .param(ParamBuilder::new("day", ParamType::String).required())
//!     .task(TaskBuilder::script("extract", "extract --day \"$BATON_PARAM_DAY\""))
//!     .task(
//!         TaskBuilder::foreach("load", ForeachOver::Rows("extract".into()), "load.toml")
//!             .param("shard", "${item.shard}")
//!             .after("extract"),
//!     )
//!     .task(TaskBuilder::noop("alert").after_on("load", On::Failure))
//!     .build()
//!     .unwrap();
//! assert_eq!(baton_package::Package::parse("etl.toml", &pkg.to_toml()).unwrap(), pkg);
//! ```
//!
//! [`PackageBuilder::build`] validates exactly as the parser does (it writes
//! the package with [`Package::to_toml`] and parses that), so a built package
//! is one a file could hold; errors name the origin `builder:NAME`.

use std::collections::BTreeMap;

use crate::error::PackageError;
use crate::expr::Condition;
use crate::model::{
    After, ChildTask, ExecTask, ForeachOver, ForeachTask, GroupTask, MaxFailures, On, Package,
    ParamType, ParameterDef, RetryPolicy, ScriptTask, Task, TaskKind,
};
use crate::params::check_value;
use crate::policy::ChildrenOnCancel;

/// A package under construction.
#[derive(Debug, Clone)]
pub struct PackageBuilder {
    package: Package,
    errors: Vec<String>,
}

/// A parameter under construction.
#[derive(Debug, Clone)]
pub struct ParamBuilder {
    def: ParameterDef,
    error: Option<String>,
}

/// A task under construction.
#[derive(Debug, Clone)]
pub struct TaskBuilder {
    task: Task,
    error: Option<String>,
}

impl PackageBuilder {
    pub fn new(name: impl Into<String>) -> PackageBuilder {
        PackageBuilder {
            package: Package {
                name: name.into(),
                description: String::new(),
                parameters: BTreeMap::new(),
                tasks: BTreeMap::new(),
                run_as: None,
                children_on_cancel: ChildrenOnCancel::default(),
            },
            errors: Vec::new(),
        }
    }

    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.package.description = d.into();
        self
    }

    pub fn run_as(mut self, user: impl Into<String>) -> Self {
        self.package.run_as = Some(user.into());
        self
    }

    pub fn children_on_cancel(mut self, policy: ChildrenOnCancel) -> Self {
        self.package.children_on_cancel = policy;
        self
    }

    pub fn param(mut self, p: ParamBuilder) -> Self {
        if let Some(e) = p.error {
            self.errors.push(e);
        }
        if self.package.parameters.contains_key(&p.def.name) {
            self.errors
                .push(format!("parameter '{}' is declared twice", p.def.name));
        }
        self.package.parameters.insert(p.def.name.clone(), p.def);
        self
    }

    pub fn task(mut self, t: TaskBuilder) -> Self {
        if let Some(e) = t.error {
            self.errors.push(e);
        }
        if self.package.tasks.contains_key(&t.task.name) {
            self.errors
                .push(format!("task '{}' is declared twice", t.task.name));
        }
        self.package.tasks.insert(t.task.name.clone(), t.task);
        self
    }

    /// Validates and returns the package, or every error found.
    pub fn build(self) -> Result<Package, Vec<PackageError>> {
        let origin = format!("builder:{}", self.package.name);
        if !self.errors.is_empty() {
            return Err(self
                .errors
                .into_iter()
                .map(|message| PackageError::Invalid {
                    origin: origin.clone(),
                    line: 1,
                    column: 1,
                    message,
                })
                .collect());
        }
        Package::check(&origin, &self.package.to_toml())
    }
}

impl ParamBuilder {
    pub fn new(name: impl Into<String>, ty: ParamType) -> ParamBuilder {
        ParamBuilder {
            def: ParameterDef {
                name: name.into(),
                ty,
                default: None,
                required: false,
                sensitive: ty == ParamType::Secret,
                description: String::new(),
            },
            error: None,
        }
    }

    /// A default, checked against the type (a list as JSON or commas).
    pub fn default(mut self, value: impl Into<String>) -> Self {
        match check_value(&self.def.name, self.def.ty, &value.into()) {
            Ok(v) => self.def.default = Some(v),
            Err(e) => self.error = Some(e.to_string()),
        }
        self
    }

    /// A default for a `list` parameter.
    pub fn default_list<I: IntoIterator<Item = S>, S: Into<String>>(mut self, items: I) -> Self {
        let items: Vec<String> = items.into_iter().map(Into::into).collect();
        self.def.default = Some(crate::param_values::render_list(&items));
        self
    }

    pub fn required(mut self) -> Self {
        self.def.required = true;
        self
    }

    pub fn sensitive(mut self) -> Self {
        self.def.sensitive = true;
        self
    }

    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.def.description = d.into();
        self
    }
}

impl TaskBuilder {
    fn new(name: impl Into<String>, kind: TaskKind) -> TaskBuilder {
        TaskBuilder {
            task: Task {
                name: name.into(),
                description: String::new(),
                after: Vec::new(),
                when: None,
                timeout_s: None,
                retry: RetryPolicy::default(),
                continue_on_failure: false,
                kind,
            },
            error: None,
        }
    }

    pub fn exec<I: IntoIterator<Item = S>, S: Into<String>>(
        name: impl Into<String>,
        argv: I,
    ) -> TaskBuilder {
        TaskBuilder::new(
            name,
            TaskKind::Exec(ExecTask {
                argv: argv.into_iter().map(Into::into).collect(),
                env: BTreeMap::new(),
                workdir: None,
            }),
        )
    }

    pub fn script(name: impl Into<String>, script: impl Into<String>) -> TaskBuilder {
        TaskBuilder::new(
            name,
            TaskKind::Script(ScriptTask {
                script: script.into(),
                env: BTreeMap::new(),
                workdir: None,
            }),
        )
    }

    /// One child package: a file relative to the parent, or `catalog:/path`.
    pub fn child(name: impl Into<String>, child: impl Into<String>) -> TaskBuilder {
        TaskBuilder::new(
            name,
            TaskKind::Child(ChildTask {
                child: child.into(),
                params: BTreeMap::new(),
                require: BTreeMap::new(),
                slots: 0,
                local: false,
            }),
        )
    }

    pub fn foreach(
        name: impl Into<String>,
        over: ForeachOver,
        child: impl Into<String>,
    ) -> TaskBuilder {
        TaskBuilder::new(
            name,
            TaskKind::Foreach(ForeachTask {
                over,
                child: child.into(),
                parallelism: crate::parse::DEFAULT_PARALLELISM,
                params: BTreeMap::new(),
                retry: RetryPolicy::default(),
                max_failures: MaxFailures::default(),
                require: BTreeMap::new(),
                slots: 0,
            }),
        )
    }

    pub fn group<I: IntoIterator<Item = S>, S: Into<String>>(
        name: impl Into<String>,
        members: I,
    ) -> TaskBuilder {
        TaskBuilder::new(
            name,
            TaskKind::Group(GroupTask {
                members: members.into_iter().map(Into::into).collect(),
            }),
        )
    }

    pub fn noop(name: impl Into<String>) -> TaskBuilder {
        TaskBuilder::new(name, TaskKind::Noop)
    }

    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.task.description = d.into();
        self
    }

    /// Runs after `task` succeeded.
    pub fn after(self, task: impl Into<String>) -> Self {
        self.after_on(task, On::Success)
    }

    /// Runs after `task` ended as `on` says.
    pub fn after_on(mut self, task: impl Into<String>, on: On) -> Self {
        self.task.after.push(After {
            task: task.into(),
            on,
        });
        self
    }

    /// A `when` expression; a syntax error is reported by `build`.
    pub fn when(mut self, expr: impl Into<String>) -> Self {
        let src = expr.into();
        match Condition::parse(&src) {
            Ok(c) => self.task.when = Some(c),
            Err(e) => {
                self.error = Some(format!("task '{}': `when`: {e}", self.task.name));
            }
        }
        self
    }

    pub fn timeout_s(mut self, secs: u64) -> Self {
        self.task.timeout_s = Some(secs);
        self
    }

    /// The retry policy (per child for a foreach).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        match &mut self.task.kind {
            TaskKind::Foreach(fe) => fe.retry = policy,
            _ => self.task.retry = policy,
        }
        self
    }

    pub fn continue_on_failure(mut self) -> Self {
        self.task.continue_on_failure = true;
        self
    }

    /// An environment variable of an `exec` or `script` task.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        match &mut self.task.kind {
            TaskKind::Exec(e) => drop(e.env.insert(key.into(), value.into())),
            TaskKind::Script(s) => drop(s.env.insert(key.into(), value.into())),
            _ => self.kind_error("env"),
        }
        self
    }

    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        match &mut self.task.kind {
            TaskKind::Exec(e) => e.workdir = Some(dir.into()),
            TaskKind::Script(s) => s.workdir = Some(dir.into()),
            _ => self.kind_error("workdir"),
        }
        self
    }

    /// A child parameter of a `child` or `foreach` task.
    pub fn param(mut self, key: impl Into<String>, template: impl Into<String>) -> Self {
        match &mut self.task.kind {
            TaskKind::Child(c) => drop(c.params.insert(key.into(), template.into())),
            TaskKind::Foreach(f) => drop(f.params.insert(key.into(), template.into())),
            _ => self.kind_error("params"),
        }
        self
    }

    /// A label the agent of a `child` or `foreach` child must have.
    pub fn require(mut self, label: impl Into<String>, value: impl Into<String>) -> Self {
        match &mut self.task.kind {
            TaskKind::Child(c) => drop(c.require.insert(label.into(), value.into())),
            TaskKind::Foreach(f) => drop(f.require.insert(label.into(), value.into())),
            _ => self.kind_error("require"),
        }
        self
    }

    /// The agent slots each child of a `child` or `foreach` task occupies
    /// (1 to 1024; checked when the package is parsed).
    pub fn slots(mut self, slots: u32) -> Self {
        match &mut self.task.kind {
            TaskKind::Child(c) => c.slots = slots,
            TaskKind::Foreach(f) => f.slots = slots,
            _ => self.kind_error("slots"),
        }
        self
    }

    /// Runs a `child` task on the node that runs the package.
    pub fn local(mut self) -> Self {
        match &mut self.task.kind {
            TaskKind::Child(c) => c.local = true,
            _ => self.kind_error("local"),
        }
        self
    }

    pub fn parallelism(mut self, n: u32) -> Self {
        match &mut self.task.kind {
            TaskKind::Foreach(f) => f.parallelism = n,
            _ => self.kind_error("parallelism"),
        }
        self
    }

    pub fn max_failures(mut self, m: MaxFailures) -> Self {
        match &mut self.task.kind {
            TaskKind::Foreach(f) => f.max_failures = m,
            _ => self.kind_error("max_failures"),
        }
        self
    }

    fn kind_error(&mut self, field: &str) {
        self.error = Some(format!(
            "task '{}': a `{}` task has no `{field}`",
            self.task.name,
            self.task.kind.keyword()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_the_parser_reads() {
        let p = PackageBuilder::new("etl")
            .description("nightly")
            .children_on_cancel(ChildrenOnCancel::Abandon)
            .param(ParamBuilder::new("n", ParamType::Int).default("3"))
            .param(ParamBuilder::new("regions", ParamType::List).default_list(["eu", "us,west"]))
            .param(ParamBuilder::new("ratio", ParamType::Float).default("0.5"))
            .param(ParamBuilder::new("pw", ParamType::Secret).required())
            .task(
                TaskBuilder::exec("extract", ["extract", "--n=${params.n}"])
                    .env("PW", "${params.pw}")
                    .retry(RetryPolicy {
                        attempts: 3,
                        backoff_s: 5,
                        backoff_max_s: 60,
                        jitter: true,
                        ..Default::default()
                    })
                    .timeout_s(600),
            )
            .task(
                TaskBuilder::foreach("load", ForeachOver::Param("regions".into()), "load.toml")
                    .param("region", "${item}")
                    .require("zone", "eu")
                    .parallelism(8)
                    .max_failures(MaxFailures::Count(2))
                    .after("extract"),
            )
            .task(TaskBuilder::group("post", ["report", "notify"]).after("load"))
            .task(TaskBuilder::script(
                "report",
                "echo rows=1 >> \"$BATON_OUTPUT\"",
            ))
            .task(
                TaskBuilder::child("notify", "catalog:/ops/notify")
                    .param("what", "${tasks.report.outputs.rows}")
                    .after_on("report", On::Completion)
                    .when("${tasks.report.state} == 'succeeded'")
                    .local()
                    .continue_on_failure(),
            )
            .build()
            .unwrap();
        let text = p.to_toml();
        assert_eq!(Package::parse("x.toml", &text).unwrap(), p, "{text}");
        assert!(p.parameters["pw"].sensitive);
    }

    #[test]
    fn build_reports_errors() {
        let e = PackageBuilder::new("p")
            .task(TaskBuilder::noop("a").after("zz"))
            .task(TaskBuilder::noop("b").env("A", "b"))
            .build()
            .unwrap_err();
        assert!(
            e[0].to_string().contains("`noop` task has no `env`"),
            "{e:?}"
        );
        let e = PackageBuilder::new("p")
            .task(TaskBuilder::noop("a").after("zz"))
            .task(TaskBuilder::noop("c").when("1 <"))
            .build()
            .unwrap_err();
        assert!(e[0].to_string().contains("`when`"), "{e:?}");
        let e = PackageBuilder::new("p")
            .task(TaskBuilder::noop("a").after("zz"))
            .build()
            .unwrap_err();
        assert!(e[0].to_string().starts_with("builder:p:"), "{e:?}");
        assert!(e[0].to_string().contains("unknown task 'zz'"), "{e:?}");
    }
}
