//! Turns a start request (a package bundle and parameter overrides) into a
//! validated execution plan, before anything is stored. Pure: no IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_package::{ForeachTask, Package, ParamValues, TaskKind, content_hash, interpolate};

use crate::error::CoordinatorError;
use crate::records::ExecutionRecord;
use crate::secrets::SealingKey;

/// A child package as it is shipped to agents.
#[derive(Debug, Clone)]
pub struct ChildPackage {
    pub name: String,
    pub hash: String,
    pub content: Arc<[u8]>,
    /// Sent inside StartJob; when false (catalog packages) agents fetch the
    /// content by hash and cache it.
    pub inline: bool,
}

/// One foreach task of the parent, ready to run.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    pub name: String,
    pub foreach: ForeachTask,
    pub child: ChildPackage,
    pub items: Vec<String>,
    pub timeout_s: Option<u64>,
}

/// A parent package bound to its parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    pub package: String,
    pub params: ParamValues,
    pub tasks: Vec<PlannedTask>,
}

impl Plan {
    /// Children go to agents by hash only (the catalog's packages).
    pub fn fetch_by_hash(&mut self) {
        for t in &mut self.tasks {
            t.child.inline = false;
        }
    }
}

/// Parses and binds the bundle of a stored `record` (after a restart), opening
/// its sealed sensitive values with `secrets`.
pub fn plan(record: &ExecutionRecord, secrets: &SealingKey) -> Result<Plan, CoordinatorError> {
    let overrides = crate::secrets::open_params(secrets, record)?;
    let mut plan = plan_bundle(&record.root, &record.files, &overrides)?;
    if record.catalog.is_some() {
        plan.fetch_by_hash();
    }
    Ok(plan)
}

/// Parses the root package and its children, binds parameters and expands
/// every foreach. Child parameters are checked for the first item, so that a
/// typo fails the start instead of every child.
pub fn plan_bundle(
    root: &str,
    files: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> Result<Plan, CoordinatorError> {
    let text = files.get(root).ok_or_else(|| {
        CoordinatorError::InvalidRequest(format!("the bundle has no root file '{root}'"))
    })?;
    let parent = Package::parse(root, text)?;
    parent.check_sensitive_use()?;
    let params = parent.bind(overrides)?;
    let mut tasks = Vec::new();
    for task in parent.task_order() {
        let TaskKind::Foreach(fe) = &task.kind else {
            return Err(CoordinatorError::InvalidRequest(format!(
                "task '{}' of parent package '{}' is an exec task; in this version a parent package \
                 runs only foreach tasks (put the exec in a child package)",
                task.name, parent.name
            )));
        };
        let child_text = files.get(&fe.child).ok_or_else(|| {
            CoordinatorError::InvalidRequest(format!(
                "task '{}' runs child package '{}', which is not in the bundle",
                task.name, fe.child
            ))
        })?;
        let child = Package::parse(&fe.child, child_text)?;
        child.check_sensitive_use()?;
        fe.check_sensitive_flow(&task.name, &parent, &child)?;
        let items = fe.items(&params)?;
        if let Some(first) = items.first() {
            child_params(fe, &params, first).and_then(|p| Ok(child.bind(&p)?))?;
        }
        tasks.push(PlannedTask {
            name: task.name.clone(),
            foreach: fe.clone(),
            child: ChildPackage {
                name: child.name.clone(),
                hash: content_hash(child_text),
                content: Arc::from(child_text.as_bytes()),
                inline: true,
            },
            items,
            timeout_s: task.timeout_s,
        });
    }
    Ok(Plan {
        package: parent.name,
        params,
        tasks,
    })
}

/// The parameters of one child: the foreach's templates bound to `item`.
pub fn child_params(
    fe: &ForeachTask,
    params: &ParamValues,
    item: &str,
) -> Result<BTreeMap<String, String>, CoordinatorError> {
    fe.params
        .iter()
        .map(|(k, t)| Ok((k.clone(), interpolate(t, params, Some(item))?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(plan.tasks[0].child.hash, content_hash(CHILD));
        let p = child_params(&plan.tasks[0].foreach, &plan.params, "4").unwrap();
        assert_eq!(p["shard"], "4");
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
}
