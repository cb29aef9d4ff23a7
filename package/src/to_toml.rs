//! [`Package`] → TOML text that [`Package::parse`] reads back to an equal
//! package (property-tested). Fields at their default are left out.

use std::collections::BTreeMap;

use toml::{Table, Value};

use crate::model::{
    ForeachOver, MaxFailures, On, Package, ParamType, ParameterDef, RetryPolicy, Task, TaskKind,
};
use crate::param_values::parse_list;
use crate::policy::ChildrenOnCancel;

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().map(|i| s(i)).collect())
}

fn map(m: &BTreeMap<String, String>) -> Value {
    Value::Table(m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
}

impl Package {
    /// The package as TOML text.
    pub fn to_toml(&self) -> String {
        let mut root = Table::new();
        root.insert("name".into(), s(&self.name));
        if !self.description.is_empty() {
            root.insert("description".into(), s(&self.description));
        }
        if let Some(u) = &self.run_as {
            root.insert("run_as".into(), s(u));
        }
        if self.children_on_cancel != ChildrenOnCancel::default() {
            root.insert(
                "children_on_cancel".into(),
                s(self.children_on_cancel.as_str()),
            );
        }
        if !self.parameters.is_empty() {
            let params = self
                .parameters
                .iter()
                .map(|(n, d)| (n.clone(), Value::Table(param(d))))
                .collect();
            root.insert("parameters".into(), Value::Table(params));
        }
        if !self.tasks.is_empty() {
            let tasks = self
                .tasks
                .iter()
                .map(|(n, t)| (n.clone(), Value::Table(task(t))))
                .collect();
            root.insert("tasks".into(), Value::Table(tasks));
        }
        toml::to_string(&root).unwrap_or_default()
    }
}

fn param(d: &ParameterDef) -> Table {
    let mut t = Table::new();
    t.insert("type".into(), s(d.ty.as_str()));
    if let Some(v) = &d.default {
        let value = match d.ty {
            ParamType::Int => v.parse().map(Value::Integer).ok(),
            ParamType::Bool => v.parse().map(Value::Boolean).ok(),
            ParamType::Float => v.parse().map(Value::Float).ok(),
            ParamType::List => parse_list(v).map(|l| strings(&l)),
            ParamType::String | ParamType::Secret => None,
        };
        t.insert("default".into(), value.unwrap_or_else(|| s(v)));
    }
    if d.required {
        t.insert("required".into(), Value::Boolean(true));
    }
    if d.sensitive && d.ty != ParamType::Secret {
        t.insert("sensitive".into(), Value::Boolean(true));
    }
    if !d.description.is_empty() {
        t.insert("description".into(), s(&d.description));
    }
    t
}

fn retry(r: &RetryPolicy) -> Value {
    let mut t = Table::new();
    t.insert("attempts".into(), Value::Integer(r.attempts.into()));
    t.insert(
        "lost_attempts".into(),
        Value::Integer(r.lost_attempts.into()),
    );
    t.insert("backoff_s".into(), Value::Integer(r.backoff_s as i64));
    t.insert(
        "backoff_max_s".into(),
        Value::Integer(r.backoff_max_s as i64),
    );
    t.insert("jitter".into(), Value::Boolean(r.jitter));
    Value::Table(t)
}

fn task(task: &Task) -> Table {
    let mut t = Table::new();
    match &task.kind {
        TaskKind::Exec(e) => {
            t.insert("exec".into(), strings(&e.argv));
            if !e.env.is_empty() {
                t.insert("env".into(), map(&e.env));
            }
            if let Some(w) = &e.workdir {
                t.insert("workdir".into(), s(w));
            }
        }
        TaskKind::Script(sc) => {
            t.insert("script".into(), s(&sc.script));
            if !sc.env.is_empty() {
                t.insert("env".into(), map(&sc.env));
            }
            if let Some(w) = &sc.workdir {
                t.insert("workdir".into(), s(w));
            }
        }
        TaskKind::Child(c) => {
            t.insert("child".into(), s(&c.child));
            if !c.params.is_empty() {
                t.insert("params".into(), map(&c.params));
            }
            if !c.require.is_empty() {
                t.insert("require".into(), map(&c.require));
            }
            if c.slots != 0 {
                t.insert("slots".into(), Value::Integer(c.slots.into()));
            }
            if c.local {
                t.insert("local".into(), Value::Boolean(true));
            }
        }
        TaskKind::Foreach(fe) => {
            let mut over = Table::new();
            match &fe.over {
                ForeachOver::Range { start, end } => {
                    let mut r = Table::new();
                    r.insert("start".into(), s(start));
                    r.insert("end".into(), s(end));
                    over.insert("range".into(), Value::Table(r));
                }
                ForeachOver::Items(items) => {
                    over.insert("items".into(), strings(items));
                }
                ForeachOver::Param(p) => {
                    over.insert("param".into(), s(p));
                }
                ForeachOver::Rows(task) => {
                    over.insert("rows".into(), s(task));
                }
            }
            t.insert("foreach".into(), Value::Table(over));
            t.insert("child".into(), s(&fe.child));
            t.insert("parallelism".into(), Value::Integer(fe.parallelism.into()));
            if !fe.params.is_empty() {
                t.insert("params".into(), map(&fe.params));
            }
            if fe.retry != RetryPolicy::default() {
                t.insert("retry".into(), retry(&fe.retry));
            }
            if let MaxFailures::Count(n) = fe.max_failures {
                t.insert("max_failures".into(), Value::Integer(n.into()));
            }
            if !fe.require.is_empty() {
                t.insert("require".into(), map(&fe.require));
            }
            if fe.slots != 0 {
                t.insert("slots".into(), Value::Integer(fe.slots.into()));
            }
        }
        TaskKind::Group(g) => {
            t.insert("group".into(), strings(&g.members));
        }
        TaskKind::Noop => {
            t.insert("noop".into(), Value::Boolean(true));
        }
    }
    if !task.description.is_empty() {
        t.insert("description".into(), s(&task.description));
    }
    if !task.after.is_empty() {
        let simple = task.after.iter().all(|a| a.on == On::Success);
        let after = task
            .after
            .iter()
            .map(|a| {
                if simple {
                    s(&a.task)
                } else {
                    let mut c = Table::new();
                    c.insert("task".into(), s(&a.task));
                    c.insert("on".into(), s(a.on.as_str()));
                    Value::Table(c)
                }
            })
            .collect();
        t.insert("after".into(), Value::Array(after));
    }
    if let Some(c) = &task.when {
        t.insert("when".into(), s(&c.source));
    }
    if let Some(secs) = task.timeout_s {
        // TOML integers are i64; larger values cannot be written (nor read).
        t.insert(
            "timeout_s".into(),
            Value::Integer(secs.min(i64::MAX as u64) as i64),
        );
    }
    if task.retry != RetryPolicy::default() && !matches!(task.kind, TaskKind::Foreach(_)) {
        t.insert("retry".into(), retry(&task.retry));
    }
    if task.continue_on_failure {
        t.insert("continue_on_failure".into(), Value::Boolean(true));
    }
    t
}
