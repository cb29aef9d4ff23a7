//! The typed package model, as the rest of Baton sees it.
//!
//! Tasks, their kinds and precedence constraints. Failure policies (retry,
//! tolerated failures, what happens to children on cancel) live in
//! [`crate::policy`]; parsed `when` expressions in [`crate::expr`].

use std::collections::BTreeMap;

use crate::expr::Condition;
pub use crate::policy::{ChildrenOnCancel, MaxFailures, RetryPolicy};

/// A parsed, validated package.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    pub name: String,
    pub description: String,
    pub parameters: BTreeMap<String, ParameterDef>,
    pub tasks: BTreeMap<String, Task>,
    /// The OS user an agent runs this package's processes as (`run_as = "etl"`),
    /// when it runs as a child; the agent must be allowed to use that user for the
    /// execution's folder, or it refuses the job. `None`: the agent's own user.
    pub run_as: Option<String>,
    /// What happens to the running children of this package when its execution
    /// is cancelled (`children_on_cancel = "cancel" | "abandon"`).
    pub children_on_cancel: ChildrenOnCancel,
}

/// Whether `name` is a plausible POSIX user name: 1 to 32 characters, a letter or
/// `_` first, then letters, digits, `_`, `-` or `.` (an all-digit name would be
/// read as a uid by many tools, so it is refused).
pub fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Int,
    Bool,
    /// A finite 64-bit float, rendered in its shortest exact form (`2.5`, `3`).
    Float,
    /// A list of strings, rendered as a JSON array (`["a","b,c"]`).
    List,
    /// A string that is always sensitive.
    Secret,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Int => "int",
            ParamType::Bool => "bool",
            ParamType::Float => "float",
            ParamType::List => "list",
            ParamType::Secret => "secret",
        }
    }

    /// Every type, in the order the docs list them.
    pub const ALL: [ParamType; 6] = [
        ParamType::String,
        ParamType::Int,
        ParamType::Bool,
        ParamType::Float,
        ParamType::List,
        ParamType::Secret,
    ];

    pub fn from_name(s: &str) -> Option<ParamType> {
        ParamType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterDef {
    pub name: String,
    pub ty: ParamType,
    /// The default, already type-checked and rendered as a string (a `list`
    /// as a JSON array).
    pub default: Option<String>,
    pub required: bool,
    /// A sensitive value is never logged, listed or printed. Always true for
    /// a `secret`.
    pub sensitive: bool,
    pub description: String,
}

/// When a precedence constraint is met by its predecessor's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum On {
    /// The predecessor succeeded (the default).
    Success,
    /// The predecessor failed (after its retries).
    Failure,
    /// The predecessor succeeded or failed.
    Completion,
}

impl On {
    pub fn as_str(self) -> &'static str {
        match self {
            On::Success => "success",
            On::Failure => "failure",
            On::Completion => "completion",
        }
    }
}

/// One precedence constraint: run after `task` ended as `on` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub task: String,
    pub on: On,
}

impl After {
    /// `after = ["x"]`: on success.
    pub fn success(task: impl Into<String>) -> After {
        After {
            task: task.into(),
            on: On::Success,
        }
    }
}

/// One task of a package.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub description: String,
    /// Precedence constraints: all must be met before this task starts.
    pub after: Vec<After>,
    /// An expression that must be true, checked once the constraints are met.
    pub when: Option<Condition>,
    pub timeout_s: Option<u64>,
    /// Attempts and backoff of this task. For a `foreach` the policy is per
    /// child and lives in [`ForeachTask::retry`]; this one stays the default.
    pub retry: RetryPolicy,
    /// A failure of this task does not fail the package (or its group).
    pub continue_on_failure: bool,
    pub kind: TaskKind,
}

impl Task {
    /// The names of the tasks this one runs after (any `on`): what callers that
    /// only order tasks need.
    pub fn after_names(&self) -> impl Iterator<Item = &str> {
        self.after.iter().map(|a| a.task.as_str())
    }

    /// The retry policy that applies to one attempt of this task (per child
    /// for a `foreach`).
    pub fn retry_policy(&self) -> &RetryPolicy {
        match &self.kind {
            TaskKind::Foreach(fe) => &fe.retry,
            _ => &self.retry,
        }
    }
}

/// What a task does.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// Run a process (no shell), on the node that runs the package.
    Exec(ExecTask),
    /// Run inline shell with `/bin/sh -c`, on the node that runs the package.
    Script(ScriptTask),
    /// Run one child package, on an agent chosen by placement (or locally).
    Child(ChildTask),
    /// Run a child package once per item, on agents chosen by placement.
    Foreach(ForeachTask),
    /// A container: its member tasks run once its own constraints are met; it
    /// succeeds when they do.
    Group(GroupTask),
    /// Do nothing and succeed at once, without a process (`noop = true`): for
    /// benchmarks of the orchestration itself and for placeholder tasks.
    Noop,
}

impl TaskKind {
    /// The keyword that selects this kind in TOML.
    pub fn keyword(&self) -> &'static str {
        match self {
            TaskKind::Exec(_) => "exec",
            TaskKind::Script(_) => "script",
            TaskKind::Child(_) => "child",
            TaskKind::Foreach(_) => "foreach",
            TaskKind::Group(_) => "group",
            TaskKind::Noop => "noop",
        }
    }
}

/// A process to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecTask {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
}

/// Inline shell.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptTask {
    pub script: String,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
}

/// The shell a `script` task runs with.
pub const SCRIPT_SHELL: &str = "/bin/sh";

impl ScriptTask {
    /// The argv that runs this script (before interpolation of the script).
    pub fn argv(&self) -> Vec<String> {
        vec![SCRIPT_SHELL.into(), "-c".into(), self.script.clone()]
    }
}

/// Where a child package comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildRef {
    /// A file, relative to the parent file (`child = "load.toml"`).
    File(String),
    /// A package of the catalog, by absolute path
    /// (`child = "catalog:/etl/load"`), its latest version at start.
    Catalog(String),
}

/// The prefix of a catalog reference in `child`.
pub const CATALOG_PREFIX: &str = "catalog:";

impl ChildRef {
    pub fn parse(s: &str) -> ChildRef {
        match s.strip_prefix(CATALOG_PREFIX) {
            Some(path) => ChildRef::Catalog(path.to_string()),
            None => ChildRef::File(s.to_string()),
        }
    }
}

/// One child package run once.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildTask {
    /// `"path/to/child.toml"` or `"catalog:/folder/name"`; see [`ChildRef`].
    pub child: String,
    /// Child parameter templates (`${params.X}`, `${tasks.T.outputs.K}`).
    pub params: BTreeMap<String, String>,
    /// Agent labels the child must run on (`require = { zone = "eu" }`).
    pub require: BTreeMap<String, String>,
    /// Agent slots the child occupies (`slots = 4`); 0: as the run says
    /// (`baton run --slots-per-child`, default 1).
    pub slots: u32,
    /// Run on the node that runs this package instead of a placed agent.
    pub local: bool,
}

impl ChildTask {
    pub fn child_ref(&self) -> ChildRef {
        ChildRef::parse(&self.child)
    }
}

/// A fan-out of a child package.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeachTask {
    pub over: ForeachOver,
    /// The child package: a path relative to the parent file, or
    /// `catalog:/folder/name` (see [`ChildRef`]).
    pub child: String,
    /// How many children of this foreach may be in flight at once.
    pub parallelism: u32,
    /// Child parameter templates, bound per item (`${item}`, `${params.X}`).
    pub params: BTreeMap<String, String>,
    /// Attempts per child.
    pub retry: RetryPolicy,
    /// How many children may fail before the foreach fails.
    pub max_failures: MaxFailures,
    /// Agent labels every child must run on.
    pub require: BTreeMap<String, String>,
    /// Agent slots each child occupies; 0: as the run says.
    pub slots: u32,
}

impl ForeachTask {
    pub fn child_ref(&self) -> ChildRef {
        ChildRef::parse(&self.child)
    }
}

/// What a foreach iterates over.
#[derive(Debug, Clone, PartialEq)]
pub enum ForeachOver {
    /// Integers from `start` to `end` inclusive; both may be templates.
    Range { start: String, end: String },
    /// A fixed list.
    Items(Vec<String>),
    /// A parameter: a `list`, or a comma-separated `string`.
    Param(String),
    /// The rows (JSON lines) written by an earlier task; each item is one
    /// row's JSON text, `${item.FIELD}` selects a field.
    Rows(String),
}

/// A group of tasks (`group = ["a", "b"]`): its members are top-level tasks
/// that start only once the group's own constraints are met, and may be
/// ordered among themselves with `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTask {
    pub members: Vec<String>,
}

/// The most items one foreach may expand to (a limit on everything).
pub const MAX_FOREACH_ITEMS: usize = 1_000_000;

/// The most tasks (groups included) one package may have: planning is
/// near-linear in them, but a start is planned in one piece, so one package
/// must not hold a scheduler's worth of work (docs/packages.md). Fan out
/// with a `foreach` or child packages instead.
pub const MAX_TASKS: usize = 10_000;

impl Package {
    /// The group that holds `task`, if any (a scan of the tasks: for one
    /// question; the order and the engine index the groups once).
    pub fn group_of(&self, task: &str) -> Option<&str> {
        self.tasks.values().find_map(|t| match &t.kind {
            TaskKind::Group(g) if g.members.iter().any(|m| m == task) => Some(t.name.as_str()),
            _ => None,
        })
    }

    /// For ordering: each task's predecessors. `after` names, plus the group a
    /// member is in, plus (for a task after a group) every member of it,
    /// transitively through nested groups. The definition the linear
    /// [`crate::order::Graph`] is tested against (quadratic: tests only).
    #[cfg(test)]
    pub(crate) fn order_deps(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, task) in &self.tasks {
            let mut d: Vec<&str> = Vec::new();
            for a in task.after_names() {
                d.push(a);
                d.extend(self.members_deep(a));
            }
            if let Some(g) = self.group_of(name) {
                d.push(g);
            }
            deps.insert(name.as_str(), d);
        }
        deps
    }

    /// Members of group `name`, and of groups inside it (bounded by the task count).
    #[cfg(test)]
    pub(crate) fn members_deep(&self, name: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut stack = vec![name];
        while let Some(n) = stack.pop() {
            if let Some(Task {
                kind: TaskKind::Group(g),
                ..
            }) = self.tasks.get(n)
            {
                for m in &g.members {
                    if !out.contains(&m.as_str()) && out.len() <= self.tasks.len() {
                        out.push(m);
                        stack.push(m);
                    }
                }
            }
        }
        out
    }
}
