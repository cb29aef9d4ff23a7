//! `[tasks.NAME]` tables → [`Task`]s: the kind, the fields each kind takes,
//! precedence constraints, `when` expressions and failure policies.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::ctx::{Ctx, scalar, valid_ident};
use crate::expr::Condition;
use crate::model::{
    After, ChildTask, ExecTask, ForeachOver, ForeachTask, GroupTask, On, ScriptTask, Task, TaskKind,
};
use crate::policy::{MAX_ATTEMPTS, MAX_BACKOFF_S, MaxFailures, RetryPolicy};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    #[serde(default)]
    description: String,
    pub(super) after: Option<Spanned<Vec<toml::Value>>>,
    pub(super) when: Option<Spanned<String>>,
    timeout_s: Option<u64>,
    exec: Option<Vec<String>>,
    script: Option<String>,
    env: Option<BTreeMap<String, String>>,
    workdir: Option<String>,
    noop: Option<bool>,
    foreach: Option<RawForeach>,
    child: Option<String>,
    pub(super) group: Option<Spanned<Vec<String>>>,
    parallelism: Option<u32>,
    params: Option<BTreeMap<String, toml::Value>>,
    retry: Option<RawRetry>,
    max_failures: Option<toml::Value>,
    require: Option<BTreeMap<String, String>>,
    slots: Option<u32>,
    local: Option<bool>,
    continue_on_failure: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForeach {
    range: Option<RawRange>,
    items: Option<Vec<toml::Value>>,
    param: Option<String>,
    rows: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    start: toml::Value,
    end: toml::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    lost_attempts: Option<u32>,
    backoff_s: Option<u64>,
    backoff_max_s: Option<u64>,
    jitter: Option<bool>,
}

/// Upper bound of `parallelism`, so a typo cannot ask for a billion slots.
pub(crate) const MAX_PARALLELISM: u32 = 100_000;
pub const DEFAULT_PARALLELISM: u32 = 64;

/// The fields of a task that only some kinds take.
const KIND_FIELDS: &[(&str, &[&str])] = &[
    ("env", &["exec", "script"]),
    ("workdir", &["exec", "script"]),
    ("params", &["child", "foreach"]),
    ("require", &["child", "foreach"]),
    ("slots", &["child", "foreach"]),
    ("local", &["child"]),
    ("parallelism", &["foreach"]),
    ("max_failures", &["foreach"]),
    ("retry", &["exec", "script", "child", "foreach"]),
];

impl RawTask {
    fn present(&self, field: &str) -> bool {
        match field {
            "env" => self.env.is_some(),
            "workdir" => self.workdir.is_some(),
            "params" => self.params.is_some(),
            "require" => self.require.is_some(),
            "slots" => self.slots.is_some(),
            "local" => self.local.is_some(),
            "parallelism" => self.parallelism.is_some(),
            "max_failures" => self.max_failures.is_some(),
            "retry" => self.retry.is_some(),
            _ => false,
        }
    }
}

/// One task, or `None` after reporting what is wrong with it.
pub(super) fn task(cx: &mut Ctx<'_>, tname: &str, spanned: &Spanned<RawTask>) -> Option<Task> {
    let at = spanned.span().start;
    let t = spanned.get_ref();
    if !valid_ident(tname) {
        cx.report(
            at,
            format!("task name '{tname}': use letters, digits, '_' or '-'"),
        );
        return None;
    }
    let kinds: Vec<&str> = [
        ("exec", t.exec.is_some()),
        ("script", t.script.is_some()),
        ("foreach", t.foreach.is_some()),
        ("group", t.group.is_some()),
        ("noop", t.noop.is_some()),
        ("child", t.child.is_some() && t.foreach.is_none()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    let [keyword] = kinds.as_slice() else {
        cx.report(
            at,
            format!(
                "task '{tname}': expected exactly one of `exec`, `script`, `child`, `foreach`, \
                 `group` or `noop`{}",
                if kinds.is_empty() {
                    String::new()
                } else {
                    format!(", found {}", kinds.join(" and "))
                }
            ),
        );
        return None;
    };
    for (field, kinds) in KIND_FIELDS {
        if t.present(field) && !kinds.contains(keyword) {
            let message = if *keyword == "noop" {
                format!("task '{tname}': a `noop` task cannot have `{field}`")
            } else {
                format!(
                    "task '{tname}': `{field}` belongs to a {} task, not to a `{keyword}` task",
                    kinds
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            };
            cx.report(at, message);
            return None;
        }
    }
    let kind = match *keyword {
        "exec" => {
            let argv = t.exec.clone().unwrap_or_default();
            if argv.is_empty() || argv[0].trim().is_empty() {
                cx.report(
                    at,
                    format!("task '{tname}': `exec` needs a program: [\"prog\", \"arg\", ...]"),
                );
                return None;
            }
            TaskKind::Exec(ExecTask {
                argv,
                env: t.env.clone().unwrap_or_default(),
                workdir: t.workdir.clone(),
            })
        }
        "script" => {
            let script = t.script.clone().unwrap_or_default();
            if script.trim().is_empty() {
                cx.report(at, format!("task '{tname}': `script` is empty"));
                return None;
            }
            TaskKind::Script(ScriptTask {
                script,
                env: t.env.clone().unwrap_or_default(),
                workdir: t.workdir.clone(),
            })
        }
        "child" => TaskKind::Child(ChildTask {
            child: child_path(cx, at, tname, t)?,
            params: child_params(cx, at, tname, t)?,
            require: t.require.clone().unwrap_or_default(),
            slots: slots(cx, at, tname, t)?,
            local: t.local.unwrap_or(false),
        }),
        "foreach" => TaskKind::Foreach(foreach_task(cx, at, tname, t)?),
        "group" => {
            let members = t
                .group
                .as_ref()
                .map(|g| g.get_ref().clone())
                .unwrap_or_default();
            if members.is_empty() {
                cx.report(
                    at,
                    format!("task '{tname}': a `group` needs at least one member"),
                );
                return None;
            }
            TaskKind::Group(GroupTask { members })
        }
        _ => {
            if t.noop != Some(true) {
                cx.report(
                    at,
                    format!(
                        "task '{tname}': `noop` can only be `true` (remove it to give the task \
                         another kind)"
                    ),
                );
                return None;
            }
            TaskKind::Noop
        }
    };
    if t.timeout_s.is_some_and(|s| s > i64::MAX as u64) {
        cx.report(
            at,
            format!("task '{tname}': timeout_s must be at most {}", i64::MAX),
        );
        return None;
    }
    let retry = match (&kind, &t.retry) {
        (TaskKind::Foreach(_), _) | (_, None) => RetryPolicy::default(),
        (_, Some(r)) => retry(cx, at, tname, r)?,
    };
    Some(Task {
        name: tname.to_string(),
        description: t.description.clone(),
        after: after(cx, tname, t)?,
        when: when(cx, tname, t)?,
        timeout_s: t.timeout_s,
        retry,
        continue_on_failure: t.continue_on_failure.unwrap_or(false),
        kind,
    })
}

/// `after = ["a", { task = "b", on = "failure" }]`.
fn after(cx: &mut Ctx<'_>, tname: &str, t: &RawTask) -> Option<Vec<After>> {
    let Some(list) = &t.after else {
        return Some(Vec::new());
    };
    let at = list.span().start;
    let mut out = Vec::new();
    for v in list.get_ref() {
        let parsed = match v {
            toml::Value::String(s) => Ok(After::success(s.clone())),
            toml::Value::Table(tbl) => after_table(tbl),
            _ => Err("expected a task name or { task = \"NAME\", on = \"success\" }".to_string()),
        };
        match parsed {
            Ok(a) => {
                if out.iter().any(|o: &After| o.task == a.task) {
                    cx.report(
                        at,
                        format!("task '{tname}': `after` names '{}' twice", a.task),
                    );
                    return None;
                }
                out.push(a);
            }
            Err(m) => {
                cx.report(at, format!("task '{tname}': `after`: {m}"));
                return None;
            }
        }
    }
    Some(out)
}

fn after_table(tbl: &toml::Table) -> Result<After, String> {
    if let Some(k) = tbl.keys().find(|k| !matches!(k.as_str(), "task" | "on")) {
        return Err(format!("unknown field `{k}`, expected `task` or `on`"));
    }
    let task = tbl
        .get("task")
        .and_then(toml::Value::as_str)
        .ok_or("a constraint needs `task = \"NAME\"`")?;
    let on = match tbl.get("on").map(|v| v.as_str()) {
        None | Some(Some("success")) => On::Success,
        Some(Some("failure")) => On::Failure,
        Some(Some("completion")) => On::Completion,
        Some(_) => return Err("`on` is \"success\", \"failure\" or \"completion\"".to_string()),
    };
    Ok(After {
        task: task.to_string(),
        on,
    })
}

/// `when = "<expr>"`, parsed now; a syntax error points inside the string.
fn when(cx: &mut Ctx<'_>, tname: &str, t: &RawTask) -> Option<Option<Condition>> {
    let Some(src) = &t.when else {
        return Some(None);
    };
    match Condition::parse(src.get_ref()) {
        Ok(c) => Some(Some(c)),
        Err(e) => {
            let offset = cx.offset_in_string(src.span().start, e.column);
            cx.report(offset, format!("task '{tname}': `when`: {}", e.message));
            None
        }
    }
}

fn child_path(cx: &mut Ctx<'_>, at: usize, tname: &str, t: &RawTask) -> Option<String> {
    let child = t.child.clone().unwrap_or_default();
    let catalog = child.strip_prefix(crate::model::CATALOG_PREFIX);
    if child.trim().is_empty() || catalog.is_some_and(|p| !p.starts_with('/') || p.len() < 2) {
        cx.report(
            at,
            format!(
                "task '{tname}': `child` names a package: \"path/to/child.toml\" (relative to \
                 this file) or \"catalog:/folder/name\""
            ),
        );
        return None;
    }
    Some(child)
}

fn child_params(
    cx: &mut Ctx<'_>,
    at: usize,
    tname: &str,
    t: &RawTask,
) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for (k, v) in t.params.iter().flatten() {
        let Some(s) = scalar(v) else {
            cx.report(
                at,
                format!("task '{tname}': param '{k}' must be a scalar or template"),
            );
            return None;
        };
        params.insert(k.clone(), s);
    }
    Some(params)
}

fn foreach_task(cx: &mut Ctx<'_>, at: usize, tname: &str, t: &RawTask) -> Option<ForeachTask> {
    let fe = t.foreach.as_ref()?;
    let over = match (&fe.range, &fe.items, &fe.param, &fe.rows) {
        (Some(r), None, None, None) => match (scalar(&r.start), scalar(&r.end)) {
            (Some(start), Some(end)) => ForeachOver::Range { start, end },
            _ => {
                cx.report(
                    at,
                    format!("task '{tname}': range start and end must be integers or templates"),
                );
                return None;
            }
        },
        (None, Some(items), None, None) => {
            let mut out = Vec::with_capacity(items.len());
            for v in items {
                let Some(s) = scalar(v) else {
                    cx.report(at, format!("task '{tname}': foreach items must be scalars"));
                    return None;
                };
                out.push(s);
            }
            ForeachOver::Items(out)
        }
        (None, None, Some(p), None) => ForeachOver::Param(p.clone()),
        (None, None, None, Some(task)) => ForeachOver::Rows(task.clone()),
        _ => {
            cx.report(
                at,
                format!(
                    "task '{tname}': foreach needs exactly one of `range`, `items`, `param`, `rows`"
                ),
            );
            return None;
        }
    };
    if t.child.is_none() {
        cx.report(
            at,
            format!("task '{tname}': a foreach needs `child = \"path/to/child.toml\"`"),
        );
        return None;
    }
    let child = child_path(cx, at, tname, t)?;
    let parallelism = t.parallelism.unwrap_or(DEFAULT_PARALLELISM);
    if parallelism == 0 || parallelism > MAX_PARALLELISM {
        cx.report(
            at,
            format!("task '{tname}': parallelism must be between 1 and {MAX_PARALLELISM}"),
        );
        return None;
    }
    let max_failures = match &t.max_failures {
        None => MaxFailures::default(),
        Some(toml::Value::String(s)) if s == "all" => MaxFailures::All,
        Some(toml::Value::Integer(-1)) => MaxFailures::All,
        Some(toml::Value::Integer(n)) if (0..=i64::from(u32::MAX)).contains(n) => {
            MaxFailures::Count(*n as u32)
        }
        Some(_) => {
            cx.report(
                at,
                format!(
                    "task '{tname}': max_failures is a count of children (0 = stop at the first \
                     failure) or \"all\" (or -1)"
                ),
            );
            return None;
        }
    };
    let retry = match &t.retry {
        Some(r) => retry(cx, at, tname, r)?,
        None => RetryPolicy::default(),
    };
    Some(ForeachTask {
        over,
        child,
        parallelism,
        params: child_params(cx, at, tname, t)?,
        retry,
        max_failures,
        require: t.require.clone().unwrap_or_default(),
        slots: slots(cx, at, tname, t)?,
    })
}

/// Most agent slots one child may ask for (as `baton run --slots-per-child`).
pub const MAX_SLOTS: u32 = 1024;

/// The `slots` of a child or foreach task: 0 when it names none.
fn slots(cx: &mut Ctx<'_>, at: usize, tname: &str, t: &RawTask) -> Option<u32> {
    match t.slots {
        None => Some(0),
        Some(n) if (1..=MAX_SLOTS).contains(&n) => Some(n),
        Some(_) => {
            cx.report(
                at,
                format!("task '{tname}': slots (per child) must be between 1 and {MAX_SLOTS}"),
            );
            None
        }
    }
}

fn retry(cx: &mut Ctx<'_>, at: usize, tname: &str, r: &RawRetry) -> Option<RetryPolicy> {
    let mut p = RetryPolicy::default();
    if let Some(a) = r.attempts {
        p.attempts = a;
    }
    if let Some(a) = r.lost_attempts {
        p.lost_attempts = a;
    }
    if let Some(b) = r.backoff_s {
        p.backoff_s = b;
        p.backoff_max_s = p.backoff_max_s.max(b);
    }
    if let Some(b) = r.backoff_max_s {
        p.backoff_max_s = b;
    }
    if let Some(j) = r.jitter {
        p.jitter = j;
    }
    let message = if p.attempts == 0 || p.attempts > MAX_ATTEMPTS || p.lost_attempts > MAX_ATTEMPTS
    {
        format!("retry attempts must be 1..={MAX_ATTEMPTS}, lost_attempts 0..={MAX_ATTEMPTS}")
    } else if p.backoff_s > MAX_BACKOFF_S || p.backoff_max_s > MAX_BACKOFF_S {
        format!("retry backoff_s and backoff_max_s must be at most {MAX_BACKOFF_S}")
    } else if p.backoff_max_s < p.backoff_s {
        "retry backoff_max_s must not be below backoff_s".to_string()
    } else {
        return Some(p);
    };
    cx.report(at, format!("task '{tname}': {message}"));
    None
}
