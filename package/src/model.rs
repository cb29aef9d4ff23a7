//! The typed package model, as the rest of Baton sees it.

use std::collections::BTreeMap;

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
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Int => "int",
            ParamType::Bool => "bool",
        }
    }
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterDef {
    pub name: String,
    pub ty: ParamType,
    /// The default, already type-checked and rendered as a string.
    pub default: Option<String>,
    pub required: bool,
    /// A sensitive value is never logged, listed or printed.
    pub sensitive: bool,
    pub description: String,
}

/// One task of a package.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    /// Tasks that must succeed before this one starts.
    pub after: Vec<String>,
    pub timeout_s: Option<u64>,
    pub kind: TaskKind,
}

/// What a task does.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// Run a process (no shell), on the node that runs the package.
    Exec(ExecTask),
    /// Run a child package once per item, on agents chosen by placement.
    Foreach(ForeachTask),
    /// Do nothing and succeed at once, without a process (`noop = true`): for
    /// benchmarks of the orchestration itself and for placeholder tasks.
    Noop,
}

/// A process to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecTask {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
}

/// A fan-out of a child package.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeachTask {
    pub over: ForeachOver,
    /// Path of the child package, relative to the parent file.
    pub child: String,
    /// How many children of this foreach may be in flight at once.
    pub parallelism: u32,
    /// Child parameter templates, bound per item (`${item}`, `${params.X}`).
    pub params: BTreeMap<String, String>,
    pub retry: RetryPolicy,
}

/// What a foreach iterates over.
#[derive(Debug, Clone, PartialEq)]
pub enum ForeachOver {
    /// Integers from `start` to `end` inclusive; both may be templates.
    Range { start: String, end: String },
    /// A fixed list.
    Items(Vec<String>),
    /// A parameter holding a comma-separated list.
    Param(String),
}

/// How often a child is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts for children that fail (exit code, timeout); 1 = no retry.
    pub attempts: u32,
    /// Attempts for children whose agent was lost; these say nothing about the child.
    pub lost_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            lost_attempts: 3,
        }
    }
}

/// The most items one foreach may expand to (a limit on everything).
pub const MAX_FOREACH_ITEMS: usize = 1_000_000;

impl Package {
    /// Tasks in dependency order; ties broken by name. `parse` rejects cycles.
    pub fn task_order(&self) -> Vec<&Task> {
        let mut done: std::collections::BTreeSet<&str> = Default::default();
        let mut order = Vec::with_capacity(self.tasks.len());
        while order.len() < self.tasks.len() {
            let before = order.len();
            for (name, task) in &self.tasks {
                if !done.contains(name.as_str())
                    && task.after.iter().all(|d| done.contains(d.as_str()))
                {
                    done.insert(name);
                    order.push(task);
                }
            }
            if order.len() == before {
                break; // unreachable for validated packages
            }
        }
        order
    }
}
