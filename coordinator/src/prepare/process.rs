//! The one-task package that runs a parent's `exec` or `script` task on an
//! agent: its command rendered with the outputs of the tasks that ended, every
//! parameter of the parent passed through (sensitive ones declared sensitive,
//! so that a secret is never part of a package text).

use std::collections::BTreeMap;

use baton_package::{ExecTask, Package, Scope, interpolate_in, template_refs};

use super::plan::{ChildPackage, invalid, reads_tasks};
use crate::error::CoordinatorError;

/// Literal text for a package template: `${` is written `$${`.
fn literal(s: &str) -> String {
    s.replace("${", "$${")
}

/// A TOML basic string (JSON string escapes are a subset of TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The one-task package that runs a parent's `exec` or `script` task on an
/// agent, and its parameters: every parameter of the parent, so that the
/// process sees `BATON_PARAM_<NAME>` as a child's would. Templates are
/// rendered here, with the outputs of the tasks that ended; a value that
/// reads a sensitive parameter (allowed only in `env`) stays a template, and
/// sensitive parameters are declared sensitive: a secret is never part of a
/// package text.
pub fn process_package(
    parent: &Package,
    task: &str,
    exec: &ExecTask,
    timeout_s: Option<u64>,
    scope: &Scope<'_>,
) -> Result<(ChildPackage, BTreeMap<String, String>), CoordinatorError> {
    let sensitive_refs = |t: &str| -> Vec<String> {
        template_refs(t)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| match r {
                baton_package::Ref::Param(p) if scope.params.is_sensitive(&p) => Some(p),
                _ => None,
            })
            .collect()
    };
    let render =
        |t: &str| -> Result<String, CoordinatorError> { Ok(literal(&interpolate_in(t, scope)?)) };
    let argv: Vec<String> = exec
        .argv
        .iter()
        .map(|a| render(a))
        .collect::<Result<_, _>>()?;
    let passed: BTreeMap<String, String> = scope
        .params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut env = Vec::new();
    for (k, t) in &exec.env {
        let secret = sensitive_refs(t);
        if secret.is_empty() {
            env.push(format!("{} = {}", toml_str(k), toml_str(&render(t)?)));
            continue;
        }
        if reads_tasks(t) {
            return Err(invalid(format!(
                "task '{task}': env {k} reads a sensitive parameter and a task's outputs; \
                 split it in two variables"
            )));
        }
        env.push(format!("{} = {}", toml_str(k), toml_str(t)));
    }
    let mut text = format!(
        "name = {}\n",
        toml_str(&format!("{}.{}", parent.name, task))
    );
    for p in passed.keys() {
        text += &format!(
            "[parameters.{}]\ntype = \"string\"\nsensitive = {}\n",
            toml_str(p),
            scope.params.is_sensitive(p)
        );
    }
    text += &format!("[tasks.{}]\nexec = [", toml_str(task));
    text += &argv
        .iter()
        .map(|a| toml_str(a))
        .collect::<Vec<_>>()
        .join(", ");
    text += "]\n";
    if !env.is_empty() {
        text += &format!("env = {{ {} }}\n", env.join(", "));
    }
    if let Some(w) = &exec.workdir {
        text += &format!("workdir = {}\n", toml_str(&render(w)?));
    }
    if let Some(s) = timeout_s {
        text += &format!("timeout_s = {s}\n");
    }
    // The text must load on the agent: check it here, where the error is clear.
    Package::parse(&format!("{task}.toml"), &text).map_err(|e| {
        invalid(format!(
            "task '{task}' cannot be sent to an agent: {}",
            e.code()
        ))
    })?;
    Ok((
        ChildPackage::from_text(&format!("{}.{task}", parent.name), &text),
        passed,
    ))
}
