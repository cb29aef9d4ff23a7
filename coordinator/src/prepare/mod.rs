//! Turns a start request (a package bundle and parameter overrides) into a
//! validated execution plan, before anything is stored. Pure: no IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_package::{
    ChildTask, Engine, ExecTask, ForeachOver, ForeachTask, MAX_FOREACH_ITEMS, MaxFailures, Package,
    Scope, TaskKind, interpolate_in,
};

use crate::error::CoordinatorError;
use crate::records::ExecutionRecord;
use crate::secrets::SealingKey;

/// Parses and binds the bundle of a stored `record` (after a restart), opening
/// its sealed sensitive values with `secrets`.
pub fn plan(record: &ExecutionRecord, secrets: &SealingKey) -> Result<Plan, CoordinatorError> {
    let overrides = crate::secrets::open_params(secrets, record)?;
    let mut plan = plan_bundle(&record.root, record.bundle_files(), &overrides)?;
    if record.catalog.is_some() {
        plan.fetch_by_hash();
    }
    Ok(plan)
}

/// Most levels of fanning child packages a bundle may nest below its root
/// (a package that runs itself through its children is refused as a cycle).
const MAX_BUNDLE_DEPTH: u32 = 8;

/// Reads the child packages of a bundle, each file parsed and checked once
/// however many tasks name it (a bundle whose packages each run the next
/// one from ten tasks would otherwise cost 10^depth parses).
struct Loader<'a> {
    files: &'a BTreeMap<String, String>,
    /// Child packages parsed so far, by path.
    parsed: BTreeMap<String, (Arc<Package>, ChildPackage)>,
    /// Packages that fan out, by path: being checked (on the current path of
    /// the walk: meeting one again is a cycle) or checked, with the height of
    /// their subtree (how many levels of fanning packages lie below them).
    shaped: BTreeMap<String, Shape>,
    /// Child packages parsed (each at most once).
    parses: u32,
    /// True once the caller went away: planning stops.
    stop: &'a dyn Fn() -> bool,
}

/// Where the walk of a fanning package stands.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Its children are being checked: it is an ancestor of the current package.
    InProgress,
    /// Checked; the number of levels of fanning packages below it.
    Done { height: u32 },
}

impl<'a> Loader<'a> {
    fn new(files: &'a BTreeMap<String, String>, stop: &'a dyn Fn() -> bool) -> Loader<'a> {
        Loader {
            files,
            parsed: BTreeMap::new(),
            shaped: BTreeMap::new(),
            parses: 0,
            stop,
        }
    }

    fn check_stop(&self) -> Result<(), CoordinatorError> {
        if (self.stop)() {
            return Err(invalid(
                "planning stopped: the caller went away".to_string(),
            ));
        }
        Ok(())
    }

    /// Parses, checks and hashes a child package named by a parent task.
    fn child(
        &mut self,
        task: &str,
        path: &str,
    ) -> Result<(Arc<Package>, ChildPackage), CoordinatorError> {
        self.child_at(task, path, 1).map(|(loaded, _)| loaded)
    }

    /// [`Loader::child`] of a package `depth` levels below the root; also
    /// returns the height of its subtree of fanning packages (`None`: it does
    /// not fan out).
    #[allow(clippy::type_complexity)]
    fn child_at(
        &mut self,
        task: &str,
        path: &str,
        depth: u32,
    ) -> Result<((Arc<Package>, ChildPackage), Option<u32>), CoordinatorError> {
        self.check_stop()?;
        let loaded = match self.parsed.get(path) {
            Some(done) => done.clone(),
            None => {
                let files = self.files;
                let text = files.get(path).ok_or_else(|| {
                    invalid(match baton_package::ChildRef::parse(path) {
                        baton_package::ChildRef::Catalog(name) => format!(
                            "task '{task}' names catalog package '{name}': catalog children are read when a \
                             parent sent by the client starts; a package run from the catalog must carry its \
                             children in its own bundle (`baton package deploy DIR`)"
                        ),
                        baton_package::ChildRef::File(_) => {
                            format!("task '{task}' runs child package '{path}', which is not in the bundle")
                        }
                    })
                })?;
                self.parses += 1;
                let child = Package::parse(path, text)?;
                child.check_sensitive_use()?;
                let mut shipped = ChildPackage::from_text(&child.name, text);
                shipped.path = path.to_string();
                shipped.fans_out = child
                    .tasks
                    .values()
                    .any(|t| matches!(t.kind, TaskKind::Child(_) | TaskKind::Foreach(_)));
                let done = (Arc::new(child), shipped);
                self.parsed.insert(path.to_string(), done.clone());
                done
            }
        };
        let height = if loaded.1.fans_out {
            // Its own children must be in the bundle too: plan it now, so that a
            // missing file or a bad package fails the start, not a child later.
            Some(self.shape(path, &loaded.0, depth)?)
        } else {
            None
        };
        Ok((loaded, height))
    }

    /// Checks that a package that fans out has its children in the bundle (its
    /// parameters are bound only when it runs as a sub-execution), that it
    /// does not run itself through its children, and that the fanning packages
    /// below it stay within [`MAX_BUNDLE_DEPTH`]. Returns the height of its
    /// subtree: 0 when none of its children fans out. Each package's subtree
    /// is walked once; a package met again reuses its height.
    fn shape(&mut self, path: &str, pkg: &Package, depth: u32) -> Result<u32, CoordinatorError> {
        let too_deep = || {
            invalid(format!(
                "child packages nest more than {MAX_BUNDLE_DEPTH} levels below the root at '{path}'"
            ))
        };
        let height = match self.shaped.get(path) {
            Some(Shape::InProgress) => {
                return Err(invalid(format!(
                    "child package '{path}' runs itself through its children (a cycle)"
                )));
            }
            Some(Shape::Done { height }) => *height,
            None => {
                if depth >= MAX_BUNDLE_DEPTH {
                    return Err(too_deep());
                }
                self.shaped.insert(path.to_string(), Shape::InProgress);
                let mut height = 0;
                for t in pkg.tasks.values() {
                    let child = match &t.kind {
                        TaskKind::Child(ct) => &ct.child,
                        TaskKind::Foreach(fe) => &fe.child,
                        _ => continue,
                    };
                    if let (_, Some(h)) = self.child_at(&t.name, child, depth + 1)? {
                        height = height.max(h + 1);
                    }
                }
                self.shaped.insert(path.to_string(), Shape::Done { height });
                height
            }
        };
        if depth.saturating_add(height) >= MAX_BUNDLE_DEPTH {
            return Err(too_deep());
        }
        Ok(height)
    }
}

/// Parses the root package and its children, binds parameters and expands
/// every foreach whose items are known now. Child parameters are checked for
/// the first item, so that a typo fails the start instead of every child.
pub fn plan_bundle(
    root: &str,
    files: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> Result<Plan, CoordinatorError> {
    plan_bundle_until(root, files, overrides, &|| false)
}

/// [`plan_bundle`] that gives up as soon as `stop` says so (the caller of a
/// start went away: its plan would be thrown away). It also builds the
/// plan's engine, so that the scheduler's loop gets a plan ready to run.
pub fn plan_bundle_until(
    root: &str,
    files: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
    stop: &dyn Fn() -> bool,
) -> Result<Plan, CoordinatorError> {
    let mut loader = Loader::new(files, stop);
    plan_with(&mut loader, root, overrides)
}

fn plan_with(
    loader: &mut Loader<'_>,
    root: &str,
    overrides: &BTreeMap<String, String>,
) -> Result<Plan, CoordinatorError> {
    let files = loader.files;
    let text = files
        .get(root)
        .ok_or_else(|| invalid(format!("the bundle has no root file '{root}'")))?;
    let parent = Package::parse(root, text)?;
    parent.check_sensitive_use()?;
    let params = parent.bind(overrides)?;
    let mut tasks = Vec::new();
    for task in parent.task_order() {
        loader.check_stop()?;
        let single = |work: Work| PlannedTask {
            name: task.name.clone(),
            work,
            items: vec![String::new()],
            dynamic: false,
            timeout_s: task.timeout_s,
            retry: task.retry,
            parallelism: 1,
            require: BTreeMap::new(),
            slots: 0,
            max_failures: MaxFailures::Count(0),
        };
        let planned = match &task.kind {
            TaskKind::Group(_) => continue,
            TaskKind::Noop => single(Work::Noop),
            TaskKind::Exec(exec) => single(Work::Process { exec: exec.clone() }),
            TaskKind::Script(script) => single(Work::Process {
                exec: ExecTask {
                    argv: script.argv(),
                    env: script.env.clone(),
                    workdir: script.workdir.clone(),
                },
            }),
            TaskKind::Child(ct) => {
                let (child, shipped) = loader.child(&task.name, &ct.child)?;
                ct.check_sensitive_flow(&task.name, &parent, &child)?;
                if !ct.params.values().any(|t| reads_tasks(t)) {
                    let p = render_all(&ct.params, &Scope::new(&params, None))?;
                    child.bind(&p)?;
                }
                let mut t = single(Work::Child {
                    ct: ct.clone(),
                    child: shipped,
                });
                t.require = ct.require.clone();
                t.slots = ct.slots;
                t
            }
            TaskKind::Foreach(fe) => {
                let (child, shipped) = loader.child(&task.name, &fe.child)?;
                fe.check_sensitive_flow(&task.name, &parent, &child)?;
                let dynamic = match &fe.over {
                    ForeachOver::Rows(_) => true,
                    ForeachOver::Param(_) => false,
                    ForeachOver::Items(items) => items.iter().any(|i| reads_tasks(i)),
                    ForeachOver::Range { start, end } => reads_tasks(start) || reads_tasks(end),
                };
                let items = if dynamic {
                    Vec::new()
                } else {
                    fe.items(&params)?
                };
                let params_read_tasks = fe.params.values().any(|t| reads_tasks(t));
                if let Some(first) = items.first()
                    && !params_read_tasks
                    && !matches!(fe.over, ForeachOver::Rows(_))
                {
                    child_params(fe, &Scope::new(&params, Some(first)))
                        .and_then(|p| Ok(child.bind(&p)?))?;
                }
                PlannedTask {
                    name: task.name.clone(),
                    work: Work::Foreach {
                        fe: fe.clone(),
                        child: shipped,
                    },
                    items,
                    dynamic,
                    timeout_s: task.timeout_s,
                    retry: fe.retry,
                    parallelism: fe.parallelism,
                    require: fe.require.clone(),
                    slots: fe.slots,
                    max_failures: fe.max_failures,
                }
            }
        };
        tasks.push(planned);
    }
    loader.check_stop()?;
    let engine = Engine::new(&parent, params.clone());
    Ok(Plan {
        package: parent.name.clone(),
        params,
        parent: Arc::new(parent),
        tasks,
        engine: Some(Box::new(engine)),
    })
}

fn render_all(
    templates: &BTreeMap<String, String>,
    scope: &Scope<'_>,
) -> Result<BTreeMap<String, String>, CoordinatorError> {
    templates
        .iter()
        .map(|(k, t)| Ok((k.clone(), interpolate_in(t, scope)?)))
        .collect()
}

/// The parameters of one child of a foreach: its templates bound to the item
/// (in `scope`), the parameters and the outputs of tasks that ended.
pub fn child_params(
    fe: &ForeachTask,
    scope: &Scope<'_>,
) -> Result<BTreeMap<String, String>, CoordinatorError> {
    render_all(&fe.params, scope)
}

/// The parameters of a `child` task.
pub fn single_child_params(
    ct: &ChildTask,
    scope: &Scope<'_>,
) -> Result<BTreeMap<String, String>, CoordinatorError> {
    render_all(&ct.params, scope)
}

/// The items of a foreach whose items depend on earlier tasks, once they have
/// ended: templates rendered in `scope`; `rows` are those of the task it
/// reads (for `foreach = { rows = … }`).
pub fn dynamic_items(
    fe: &ForeachTask,
    scope: &Scope<'_>,
    rows: &[String],
) -> Result<Vec<String>, CoordinatorError> {
    let items = match &fe.over {
        ForeachOver::Rows(_) => fe.items_from_rows(rows.iter().map(String::as_str))?,
        ForeachOver::Param(_) => fe.items(scope.params)?,
        ForeachOver::Items(items) => items
            .iter()
            .map(|i| interpolate_in(i, scope))
            .collect::<Result<_, _>>()?,
        ForeachOver::Range { start, end } => {
            let num = |t: &str| -> Result<i64, CoordinatorError> {
                let v = interpolate_in(t, scope)?;
                v.trim().parse::<i64>().map_err(|_| {
                    invalid(format!("range bound '{t}' is not an integer once expanded"))
                })
            };
            let (a, b) = (num(start)?, num(end)?);
            if b < a {
                Vec::new()
            } else {
                let n = i128::from(b) - i128::from(a) + 1;
                if n > MAX_FOREACH_ITEMS as i128 {
                    return Err(invalid(format!(
                        "range of {n} items exceeds the limit of {MAX_FOREACH_ITEMS}"
                    )));
                }
                (a..=b).map(|i| i.to_string()).collect()
            }
        }
    };
    if items.len() > MAX_FOREACH_ITEMS {
        return Err(invalid(format!(
            "{} items exceed the limit of {MAX_FOREACH_ITEMS}",
            items.len()
        )));
    }
    Ok(items)
}

pub mod gate;
mod plan;
mod process;

pub use plan::{ChildPackage, Plan, PlannedTask, Work};
use plan::{invalid, reads_tasks};
pub use process::process_package;

#[cfg(test)]
mod tests {
    use super::*;
    use baton_package::content_hash;

    fn bundle(parent: &str, child: &str) -> BTreeMap<String, String> {
        [
            ("p.toml".to_string(), parent.to_string()),
            ("c.toml".to_string(), child.to_string()),
        ]
        .into()
    }

    const PARENT: &str = "name='p'\n[parameters.n]\ntype='int'\ndefault=3\n[tasks.fan]\nforeach={range={start=1,end='${params.n}'}}\nchild='c.toml'\nparams={shard='${item}'}\n";
    const CHILD: &str =
        "name='c'\n[parameters.shard]\ntype='int'\nrequired=true\n[tasks.run]\nexec=['true']\n";

    #[test]
    fn plans_a_fanout() {
        let plan = plan_bundle(
            "p.toml",
            &bundle(PARENT, CHILD),
            &[("n".into(), "5".into())].into(),
        )
        .unwrap();
        assert_eq!(plan.tasks.len(), 1);
        assert_eq!(plan.tasks[0].items.len(), 5);
        let Work::Foreach { fe, child } = &plan.tasks[0].work else {
            panic!("a foreach")
        };
        assert_eq!(child.hash, content_hash(CHILD));
        let p = child_params(fe, &Scope::new(&plan.params, Some("4"))).unwrap();
        assert_eq!(p["shard"], "4");
    }

    #[test]
    fn child_parameters_may_read_outputs_of_earlier_tasks() {
        let parent = "name='p'\n[tasks.count]\nscript='echo n=3 >> $BATON_OUTPUT'\n\
            [tasks.fan]\nforeach={range={start=1,end=2}}\nchild='c.toml'\n\
            params={shard='${tasks.count.outputs.n}'}\nafter=['count']\n";
        let plan = plan_bundle("p.toml", &bundle(parent, CHILD), &BTreeMap::new()).unwrap();
        assert_eq!(plan.tasks.len(), 2);
        assert!(matches!(plan.tasks[0].work, Work::Process { .. }));
        assert_eq!(plan.tasks[0].items, vec![String::new()], "one child");
        assert_eq!(plan.tasks[1].items, ["1", "2"]);
        let Work::Foreach { fe, .. } = &plan.tasks[1].work else {
            panic!("a foreach")
        };
        let outputs: baton_package::Outputs = [(
            "count".to_string(),
            [("n".to_string(), "3".to_string())].into(),
        )]
        .into();
        let states = BTreeMap::new();
        let scope = Scope {
            params: &plan.params,
            item: Some("1"),
            outputs: &outputs,
            states: &states,
        };
        assert_eq!(child_params(fe, &scope).unwrap()["shard"], "3");
        assert_eq!(dynamic_items(fe, &scope, &[]).unwrap(), ["1", "2"]);
    }

    #[test]
    fn a_parent_process_task_becomes_a_one_task_package() {
        let parent = "name='p'\n[parameters.pw]\ntype='string'\nsensitive=true\ndefault='s3cr3t'\n\
            [parameters.day]\ntype='string'\ndefault='mon'\n\
            [tasks.a]\nnoop=true\n\
            [tasks.sum]\nexec=['echo', '${params.day}', '${tasks.a.outputs.k}']\n\
            env={PW='${params.pw}', DAY='${params.day}'}\ntimeout_s=9\nafter=['a']\n";
        let pkg = Package::parse("p.toml", parent).unwrap();
        let params = pkg.bind(&BTreeMap::new()).unwrap();
        let outputs: baton_package::Outputs = [(
            "a".to_string(),
            [("k".to_string(), "v ${x}".to_string())].into(),
        )]
        .into();
        let states = BTreeMap::new();
        let scope = Scope {
            params: &params,
            item: None,
            outputs: &outputs,
            states: &states,
        };
        let TaskKind::Exec(exec) = &pkg.tasks["sum"].kind else {
            panic!()
        };
        let (child, passed) = process_package(&pkg, "sum", exec, Some(9), &scope).unwrap();
        let text = std::str::from_utf8(&child.content).unwrap();
        assert!(
            !text.contains("s3cr3t"),
            "a secret never goes into a package text: {text}"
        );
        assert_eq!(passed.get("pw").map(String::as_str), Some("s3cr3t"));
        assert_eq!(passed.get("day").map(String::as_str), Some("mon"));
        let loaded = Package::parse("x.toml", text).unwrap();
        assert!(loaded.parameters["pw"].sensitive);
        assert!(!loaded.parameters["day"].sensitive);
        let TaskKind::Exec(e) = &loaded.tasks["sum"].kind else {
            panic!()
        };
        let bound = loaded.bind(&passed).unwrap();
        let argv: Vec<String> = e
            .argv
            .iter()
            .map(|a| baton_package::interpolate(a, &bound, None).unwrap())
            .collect();
        assert_eq!(argv, ["echo", "mon", "v ${x}"], "outputs are literal text");
        assert_eq!(loaded.tasks["sum"].timeout_s, Some(9));
    }

    #[test]
    fn missing_child_and_bad_child_params_fail_early() {
        let mut files = bundle(PARENT, CHILD);
        files.remove("c.toml");
        let e = plan_bundle("p.toml", &files, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("not in the bundle"), "{e}");
        let child = "name='c'\n[parameters.other]\ntype='int'\n[tasks.run]\nexec=['true']\n";
        let e = plan_bundle("p.toml", &bundle(PARENT, child), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.code(), "PARAM_UNKNOWN");
        let e = plan_bundle(
            "p.toml",
            &bundle(PARENT, CHILD),
            &[("zz".into(), "1".into())].into(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "PARAM_UNKNOWN");
    }

    #[test]
    fn planning_stops_when_the_caller_went_away() {
        let files = bundle(PARENT, CHILD);
        let e = plan_bundle_until("p.toml", &files, &BTreeMap::new(), &|| true).unwrap_err();
        assert!(e.to_string().contains("the caller went away"), "{e}");
        let plan = plan_bundle_until("p.toml", &files, &BTreeMap::new(), &|| false).unwrap();
        assert!(plan.engine.is_some(), "the plan comes with its engine");
    }

    #[test]
    fn a_package_named_by_many_tasks_is_parsed_once() {
        // Seven levels, each package running the next from ten tasks: 10^7
        // parses if each task's child were planned on its own.
        let mut files = BTreeMap::new();
        for level in 0..7 {
            let mut text = format!("name='l{level}'\n");
            for t in 0..10 {
                text.push_str(&format!("[tasks.t{t}]\nchild='l{}.toml'\n", level + 1));
            }
            files.insert(format!("l{level}.toml"), text);
        }
        files.insert(
            "l7.toml".into(),
            "name='leaf'\n[tasks.run]\nexec=['true']\n".into(),
        );
        let calls = std::cell::Cell::new(0u64);
        let plan = plan_bundle_until("l0.toml", &files, &BTreeMap::new(), &|| {
            calls.set(calls.get() + 1);
            false
        })
        .unwrap();
        assert_eq!(plan.tasks.len(), 10);
        assert!(calls.get() < 200, "{} child loads", calls.get());
    }

    /// A bundle of packages `name.toml`, each running the listed children.
    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, String> {
        edges
            .iter()
            .map(|(name, children)| {
                let mut text = format!("name='{name}'\n");
                for (i, c) in children.iter().enumerate() {
                    text.push_str(&format!("[tasks.t{i}]\nchild='{c}.toml'\n"));
                }
                if children.is_empty() {
                    text.push_str("[tasks.run]\nexec=['true']\n");
                }
                (format!("{name}.toml"), text)
            })
            .collect()
    }

    #[test]
    fn a_package_running_itself_is_refused() {
        let files = graph(&[("root", &["a"]), ("a", &["a"])]);
        let e = plan_bundle("root.toml", &files, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
        // Ten self-referencing tasks: refused as well, not multiplied.
        let files = graph(&[("root", &["a"]), ("a", &["a"; 10])]);
        let e = plan_bundle("root.toml", &files, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    #[test]
    fn two_packages_running_each_other_are_refused() {
        let files = graph(&[("root", &["a"]), ("a", &["b"]), ("b", &["a"])]);
        let e = plan_bundle("root.toml", &files, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
        // The root named again by a child: a cycle too.
        let files = graph(&[("root", &["a"]), ("a", &["root"])]);
        let e = plan_bundle("root.toml", &files, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    /// `l0` runs `l1` … runs `l{levels}`, a leaf.
    fn chain(levels: usize) -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        for level in 0..levels {
            files.insert(
                format!("l{level}.toml"),
                format!("name='l{level}'\n[tasks.t]\nchild='l{}.toml'\n", level + 1),
            );
        }
        files.insert(
            format!("l{levels}.toml"),
            "name='leaf'\n[tasks.run]\nexec=['true']\n".into(),
        );
        files
    }

    #[test]
    fn a_chain_deeper_than_the_limit_is_refused() {
        let n = MAX_BUNDLE_DEPTH as usize;
        assert!(plan_bundle("l0.toml", &chain(n), &BTreeMap::new()).is_ok());
        let e = plan_bundle("l0.toml", &chain(n + 1), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("levels below the root"), "{e}");
    }

    #[test]
    fn a_package_met_again_deeper_is_held_to_the_limit() {
        // `deep` is first met one level down (within the limit), then again
        // from a branch where its subtree would go past the limit.
        let n = MAX_BUNDLE_DEPTH as usize;
        let mut files = chain(n - 1);
        files.insert(
            "root.toml".into(),
            "name='root'\n[tasks.a]\nchild='l0.toml'\n[tasks.b]\nchild='x.toml'\n".into(),
        );
        files.insert(
            "x.toml".into(),
            "name='x'\n[tasks.t]\nchild='l0.toml'\n".into(),
        );
        let e = plan_bundle("root.toml", &files, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("levels below the root"), "{e}");
        files.remove("x.toml");
        files.insert(
            "root.toml".into(),
            "name='root'\n[tasks.a]\nchild='l0.toml'\n".into(),
        );
        assert!(plan_bundle("root.toml", &files, &BTreeMap::new()).is_ok());
    }

    #[test]
    fn a_diamond_is_accepted_and_each_package_parsed_once() {
        let files = graph(&[
            ("root", &["a"]),
            ("a", &["b", "c"]),
            ("b", &["d", "d"]),
            ("c", &["d"]),
            ("d", &[]),
        ]);
        let never = || false;
        let mut loader = Loader::new(&files, &never);
        let plan = plan_with(&mut loader, "root.toml", &BTreeMap::new()).unwrap();
        assert_eq!(plan.tasks.len(), 1);
        assert_eq!(loader.parses, 4, "a, b, c and d, once each");
    }
}
