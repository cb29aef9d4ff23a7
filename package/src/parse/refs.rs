//! Checks across tasks, once each task parsed on its own: groups, names in
//! `after`, cycles, what `when` expressions and `${…}` templates refer to, and
//! tasks that can never run.
//!
//! A task may read `${tasks.T…}` (in `when` or a template) or run over the
//! rows of T only when T is decided before it starts: T must be among its
//! predecessors (through `after`, the group it is in, or a group T is in).

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use super::ctx::Ctx;
use super::tasks::RawTask;
use crate::interpolate::template_refs;
use crate::model::{ForeachOver, On, Package, TaskKind};
use crate::order::Graph;
use crate::reference::Ref;

type Spans<'a, 'b> = BTreeMap<&'a str, &'b Spanned<RawTask>>;

pub(super) fn check(cx: &mut Ctx<'_>, p: &Package, spans: &Spans<'_, '_>) {
    let at = |t: &str| spans.get(t).map_or(0, |s| s.span().start);
    let after_at = |t: &str| {
        spans
            .get(t)
            .and_then(|s| s.get_ref().after.as_ref())
            .map_or(at(t), |a| a.span().start)
    };
    let start = cx.errors.len();
    // Groups: members exist, and belong to one group.
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (g, task) in &p.tasks {
        let TaskKind::Group(group) = &task.kind else {
            continue;
        };
        let gat = spans
            .get(g.as_str())
            .and_then(|s| s.get_ref().group.as_ref())
            .map_or(at(g), |s| s.span().start);
        for m in &group.members {
            if m == g {
                cx.report(gat, format!("group '{g}' lists itself as a member"));
            } else if !p.tasks.contains_key(m) {
                cx.report(gat, format!("group '{g}' names unknown task '{m}'"));
            } else if let Some(other) = owner.insert(m, g) {
                cx.report(
                    gat,
                    format!("task '{m}' is a member of two groups, '{other}' and '{g}'"),
                );
            }
        }
    }
    for (tname, task) in &p.tasks {
        for a in &task.after {
            if a.task == *tname {
                cx.report(
                    after_at(tname),
                    format!("task '{tname}': `after` names itself"),
                );
            } else if !p.tasks.contains_key(&a.task) {
                cx.report(
                    after_at(tname),
                    format!("task '{tname}': `after` names unknown task '{}'", a.task),
                );
            }
        }
    }
    // The checks below need an order of the tasks: without the names found
    // wrong above, so that they still report every other finding.
    let cleaned;
    let p = if cx.errors.len() > start {
        cleaned = without_unknown_names(p);
        &cleaned
    } else {
        p
    };
    let order = p.task_order();
    if order.len() != p.tasks.len() {
        let ordered: BTreeSet<&str> = order.iter().map(|t| t.name.as_str()).collect();
        let stuck: Vec<&str> = p
            .tasks
            .keys()
            .map(String::as_str)
            .filter(|n| !ordered.contains(n))
            .collect();
        cx.report(
            at(stuck[0]),
            format!(
                "tasks form a cycle through `after` (or a group and its members): {}",
                stuck.join(", ")
            ),
        );
        return;
    }
    let pairs = decided_before(p);
    for (tname, task) in &p.tasks {
        let before = |x: &str| pairs.contains(&(tname.as_str(), x));
        let anc: &dyn Fn(&str) -> bool = &before;
        let t_at = at(tname);
        if let Some(cond) = &task.when {
            let w = spans[tname.as_str()].get_ref().when.as_ref();
            for (r, col) in cond.expr.refs() {
                let offset = w.map_or(t_at, |w| cx.offset_in_string(w.span().start, col));
                if let Some(m) = check_ref(p, anc, r, Allow::None) {
                    cx.report(offset, format!("task '{tname}': `when`: {m}"));
                }
            }
        }
        for (what, template, allow) in templates(&task.kind) {
            let problem = match template_refs(template) {
                Err(m) => Some(m),
                Ok(refs) => refs.iter().find_map(|r| check_ref(p, anc, r, allow)),
            };
            if let Some(m) = problem {
                cx.report(t_at, format!("task '{tname}': {what} {template:?}: {m}"));
            }
        }
        if let TaskKind::Foreach(fe) = &task.kind {
            match &fe.over {
                ForeachOver::Param(name) if !p.parameters.contains_key(name) => cx.report(
                    t_at,
                    format!("task '{tname}': foreach over unknown parameter '{name}'"),
                ),
                ForeachOver::Rows(src) if !p.tasks.contains_key(src) => cx.report(
                    t_at,
                    format!("task '{tname}': foreach over the rows of unknown task '{src}'"),
                ),
                ForeachOver::Rows(src) if !anc(src.as_str()) => cx.report(
                    t_at,
                    format!(
                        "task '{tname}': foreach over the rows of task '{src}', which does not \
                         run before it: add `after = [\"{src}\"]`"
                    ),
                ),
                _ => {}
            }
        }
    }
    unreachable_tasks(cx, p, &at);
}

/// `p` without the constraints and group members that name a missing task
/// or the task itself, and without a second group's claim on a member.
fn without_unknown_names(p: &Package) -> Package {
    let mut out = p.clone();
    let names: BTreeSet<String> = p.tasks.keys().cloned().collect();
    let mut owned: BTreeSet<String> = BTreeSet::new();
    for (name, task) in out.tasks.iter_mut() {
        task.after
            .retain(|a| a.task != *name && names.contains(&a.task));
        if let TaskKind::Group(g) = &mut task.kind {
            g.members
                .retain(|m| m != name && names.contains(m) && owned.insert(m.clone()));
        }
    }
    out
}

/// Which item references a template may use.
#[derive(Clone, Copy, PartialEq)]
enum Allow {
    None,
    /// `${item}` (a foreach's child parameters).
    Item,
    /// `${item}` and `${item.FIELD}` (child parameters of a foreach over rows).
    Row,
    /// Only `${params.X}` (foreach ranges and item lists, expanded at start).
    ParamsOnly,
}

/// Every template of a task: what it is, its text, which item references it may use.
fn templates(kind: &TaskKind) -> Vec<(&'static str, &str, Allow)> {
    let mut out: Vec<(&'static str, &str, Allow)> = Vec::new();
    match kind {
        TaskKind::Exec(e) => {
            out.extend(
                e.argv
                    .iter()
                    .map(|a| ("exec argument", a.as_str(), Allow::None)),
            );
            out.extend(
                e.env
                    .values()
                    .map(|v| ("env value", v.as_str(), Allow::None)),
            );
            out.extend(
                e.workdir
                    .iter()
                    .map(|w| ("workdir", w.as_str(), Allow::None)),
            );
        }
        TaskKind::Script(s) => {
            out.push(("script", s.script.as_str(), Allow::None));
            out.extend(
                s.env
                    .values()
                    .map(|v| ("env value", v.as_str(), Allow::None)),
            );
            out.extend(
                s.workdir
                    .iter()
                    .map(|w| ("workdir", w.as_str(), Allow::None)),
            );
        }
        TaskKind::Child(c) => {
            out.extend(
                c.params
                    .values()
                    .map(|v| ("param", v.as_str(), Allow::None)),
            );
        }
        TaskKind::Foreach(fe) => {
            let item = match fe.over {
                ForeachOver::Rows(_) => Allow::Row,
                _ => Allow::Item,
            };
            out.extend(fe.params.values().map(|v| ("param", v.as_str(), item)));
            match &fe.over {
                ForeachOver::Range { start, end } => {
                    out.push(("range start", start.as_str(), Allow::ParamsOnly));
                    out.push(("range end", end.as_str(), Allow::ParamsOnly));
                }
                ForeachOver::Items(items) => {
                    out.extend(
                        items
                            .iter()
                            .map(|i| ("item", i.as_str(), Allow::ParamsOnly)),
                    );
                }
                ForeachOver::Param(_) | ForeachOver::Rows(_) => {}
            }
        }
        TaskKind::Group(_) | TaskKind::Noop => {}
    }
    out
}

/// What is wrong with one reference, if anything.
fn check_ref(p: &Package, anc: &dyn Fn(&str) -> bool, r: &Ref, allow: Allow) -> Option<String> {
    match r {
        Ref::Param(name) if !p.parameters.contains_key(name) => {
            Some(format!("unknown parameter '{name}'"))
        }
        Ref::Param(_) => None,
        Ref::Item if matches!(allow, Allow::Item | Allow::Row) => None,
        Ref::ItemField(_) if allow == Allow::Row => None,
        Ref::Item | Ref::ItemField(_) => Some(match allow {
            Allow::Item => "${item.FIELD} needs a foreach over `rows`".to_string(),
            _ => "${item} is only defined in the `params` of a foreach".to_string(),
        }),
        Ref::Output { task, .. } | Ref::State(task) => {
            if allow == Allow::ParamsOnly {
                Some("foreach ranges and items may use only ${params.NAME}".to_string())
            } else if !p.tasks.contains_key(task) {
                Some(format!("unknown task '{task}'"))
            } else if !anc(task.as_str()) {
                Some(format!(
                    "reads task '{task}', which does not run before this task: add \
                     `after = [\"{task}\"]` (or a constraint with `on`)"
                ))
            } else {
                None
            }
        }
    }
}

/// The pairs (task, target) where a task reads `target` (in `when`, a
/// template or as its rows) and `target` is decided before it starts: among
/// its transitive predecessors (see [`Package::task_order`]). Only the pairs
/// asked about are computed, in time linear in the tasks for the usual case.
fn decided_before(p: &Package) -> BTreeSet<(&str, &str)> {
    let mut graph = Graph::new(p);
    let mut queries: Vec<(usize, usize)> = Vec::new();
    for (tname, task) in &p.tasks {
        let ti = graph.index[tname.as_str()];
        let mut ask = |target: &str| {
            if let Some(&xi) = graph.index.get(target) {
                queries.push((ti, xi));
            }
        };
        if let Some(cond) = &task.when {
            for (r, _) in cond.expr.refs() {
                if let Some(t) = r.task() {
                    ask(t);
                }
            }
        }
        for (_, template, _) in templates(&task.kind) {
            for r in template_refs(template).unwrap_or_default() {
                if let Some(t) = r.task() {
                    ask(t);
                }
            }
        }
        if let TaskKind::Foreach(fe) = &task.kind
            && let ForeachOver::Rows(src) = &fe.over
        {
            ask(src);
        }
    }
    let answers = graph.precedes(&queries);
    queries
        .iter()
        .zip(answers)
        .filter(|(_, yes)| *yes)
        .map(|(&(t, x), _)| (graph.names[t], graph.names[x]))
        .collect()
}

/// Reports tasks that can never run, in these clear cases only: a `when`
/// that is constant false; a constraint `on = "failure"` of a `noop` task
/// (which cannot fail); a constraint on a task that never runs; a member of a
/// group that never runs.
fn unreachable_tasks(cx: &mut Ctx<'_>, p: &Package, at: &dyn Fn(&str) -> usize) {
    let graph = Graph::new(p);
    let group_of = |t: &str| graph.group_of[graph.index[t]].map(|g| graph.names[g]);
    let mut never: BTreeMap<&str, String> = BTreeMap::new();
    for t in p.task_order() {
        let why = if t
            .when
            .as_ref()
            .is_some_and(|c| c.expr.constant() == Some(false))
        {
            Some("its `when` is always false".to_string())
        } else if let Some(a) = t
            .after
            .iter()
            .find(|a| a.on == On::Failure && p.tasks[&a.task].kind == TaskKind::Noop)
        {
            Some(format!(
                "it runs on failure of '{}', a noop that cannot fail",
                a.task
            ))
        } else if let Some(a) = t.after.iter().find(|a| never.contains_key(a.task.as_str())) {
            Some(format!("it runs after '{}', which never runs", a.task))
        } else {
            group_of(&t.name)
                .filter(|g| never.contains_key(g))
                .map(|g| format!("its group '{g}' never runs"))
        };
        if let Some(why) = why {
            cx.report(
                at(&t.name),
                format!("task '{}' can never run: {why}", t.name),
            );
            never.insert(t.name.as_str(), why);
        }
    }
}
