//! Where a sensitive value may go: never into an argv, a script, a workdir or
//! foreach items, and only into child parameters the child declares sensitive.

use std::collections::BTreeMap;

use crate::error::PackageError;
use crate::interpolate::template_params;
use crate::model::{ChildTask, ForeachOver, ForeachTask, Package, TaskKind};

impl Package {
    /// The first sensitive parameter of this package that `template` references.
    pub(crate) fn sensitive_in<'t>(&self, template: &'t str) -> Option<&'t str> {
        template_params(template)
            .into_iter()
            .find(|p| self.parameters.get(*p).is_some_and(|d| d.sensitive))
    }

    /// Refuses uses of sensitive parameters that would show their values: in an
    /// `exec` argv or `workdir` (readable by every user of the host through `ps`,
    /// and quoted by error messages) or as `foreach` items (recorded and listed per
    /// child). A sensitive value reaches a process through its environment
    /// (`BATON_PARAM_<NAME>`, or `env = { X = "${params.NAME}" }`).
    pub fn check_sensitive_use(&self) -> Result<(), PackageError> {
        let refuse = |template: &str, message: String| {
            Err(PackageError::Template {
                template: template.to_string(),
                message,
            })
        };
        for (tname, task) in &self.tasks {
            match &task.kind {
                TaskKind::Exec(e) => {
                    for t in e.argv.iter().chain(e.workdir.iter()) {
                        if let Some(p) = self.sensitive_in(t) {
                            return refuse(
                                t,
                                format!(
                                    "task '{tname}' puts sensitive parameter '{p}' in its argv or \
                                     workdir, which other users of the host can read; use its \
                                     environment variable BATON_PARAM_{} instead",
                                    p.to_ascii_uppercase().replace('-', "_")
                                ),
                            );
                        }
                    }
                }
                TaskKind::Foreach(fe) => {
                    let sources: Vec<&str> = match &fe.over {
                        ForeachOver::Param(p) => {
                            if self.parameters.get(p).is_some_and(|d| d.sensitive) {
                                return refuse(
                                    p,
                                    format!(
                                        "task '{tname}' runs a foreach over sensitive parameter \
                                         '{p}': items are recorded and listed per child"
                                    ),
                                );
                            }
                            Vec::new()
                        }
                        ForeachOver::Range { start, end } => vec![start, end],
                        ForeachOver::Items(items) => items.iter().map(String::as_str).collect(),
                        ForeachOver::Rows(_) => Vec::new(),
                    };
                    for t in sources {
                        if let Some(p) = self.sensitive_in(t) {
                            return refuse(
                                t,
                                format!(
                                    "task '{tname}' derives foreach items from sensitive \
                                     parameter '{p}': items are recorded and listed per child"
                                ),
                            );
                        }
                    }
                }
                TaskKind::Script(s) => {
                    for t in std::iter::once(&s.script).chain(s.workdir.iter()) {
                        if let Some(p) = self.sensitive_in(t) {
                            return refuse(
                                t,
                                format!(
                                    "task '{tname}' puts sensitive parameter '{p}' in its script or \
                                     workdir, which other users of the host can read (the script \
                                     is the argv of /bin/sh); read the environment variable \
                                     \"$BATON_PARAM_{}\" in the script instead",
                                    p.to_ascii_uppercase().replace('-', "_")
                                ),
                            );
                        }
                    }
                }
                TaskKind::Noop | TaskKind::Child(_) | TaskKind::Group(_) => {}
            }
        }
        Ok(())
    }
}

/// Refuses a child parameter fed from a sensitive parameter of `parent` that
/// the child does not declare `sensitive` itself: a value stays sensitive
/// wherever it flows, and the agent only sees the child's declarations.
fn check_flow(
    params: &BTreeMap<String, String>,
    task: &str,
    parent: &Package,
    child: &Package,
) -> Result<(), PackageError> {
    for (name, template) in params {
        let Some(def) = child.parameters.get(name) else {
            continue; // binding reports the unknown parameter
        };
        if let Some(p) = parent.sensitive_in(template).filter(|_| !def.sensitive) {
            return Err(PackageError::InvalidParameter {
                name: name.clone(),
                message: format!(
                    "task '{task}' feeds it from sensitive parameter '{p}' of package '{}', \
                     but child package '{}' does not declare it `sensitive = true`",
                    parent.name, child.name
                ),
            });
        }
    }
    Ok(())
}

impl ForeachTask {
    /// See [`ChildTask::check_sensitive_flow`]; checked per foreach child parameter.
    pub fn check_sensitive_flow(
        &self,
        task: &str,
        parent: &Package,
        child: &Package,
    ) -> Result<(), PackageError> {
        check_flow(&self.params, task, parent, child)
    }
}

impl ChildTask {
    /// Refuses a child parameter fed from a sensitive parameter of `parent` that
    /// the child does not declare `sensitive` itself.
    pub fn check_sensitive_flow(
        &self,
        task: &str,
        parent: &Package,
        child: &Package,
    ) -> Result<(), PackageError> {
        check_flow(&self.params, task, parent, child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ForeachOver;

    fn fe(over: ForeachOver) -> ForeachTask {
        ForeachTask {
            over,
            child: "c.toml".into(),
            parallelism: 1,
            params: BTreeMap::new(),
            retry: Default::default(),
            max_failures: Default::default(),
            require: BTreeMap::new(),
            slots: 0,
        }
    }

    const SECRET_PARENT: &str = "name='p'\n[parameters.pw]\ntype='string'\nsensitive=true\n\
        [parameters.n]\ntype='int'\ndefault=2\n";

    fn with_task(task: &str) -> Package {
        Package::parse("p.toml", &format!("{SECRET_PARENT}[tasks.t]\n{task}\n")).unwrap()
    }

    #[test]
    fn sensitive_values_stay_out_of_argv_workdir_and_items() {
        let fe = "child='c.toml'\nparams={x='${params.pw}'}\n";
        for (task, what) in [
            ("exec=['tool', '--pw=${params.pw}']", "argv"),
            ("exec=['tool']\nworkdir='/tmp/${params.pw}'", "argv"),
            (&format!("foreach={{param='pw'}}\n{fe}"), "foreach over"),
            (
                &format!("foreach={{range={{start=1,end='${{params.pw}}'}}}}\n{fe}"),
                "items",
            ),
            (
                &format!("foreach={{items=['a','${{params.pw}}']}}\n{fe}"),
                "items",
            ),
        ] {
            let e = with_task(task).check_sensitive_use().unwrap_err();
            assert_eq!(e.code(), "TEMPLATE_INVALID", "{task}: {e}");
            assert!(e.to_string().contains(what), "{task}: {e}");
            assert!(e.to_string().contains("'pw'"), "{task}: {e}");
        }
        for task in [
            "exec=['sh', '-c', 'tool --pw=\"$BATON_PARAM_PW\"']",
            "exec=['tool', '${params.n}']\nenv={PW='${params.pw}'}",
            "exec=['echo', '$${params.pw}']",
            &format!("foreach={{range={{start=1,end='${{params.n}}'}}}}\n{fe}"),
        ] {
            with_task(task).check_sensitive_use().unwrap();
        }
    }

    #[test]
    fn a_sensitive_value_feeds_only_a_sensitive_child_parameter() {
        let parent = with_task(
            "foreach={items=['a']}\nchild='c.toml'\nparams={x='k=${params.pw}', n='${params.n}'}",
        );
        let TaskKind::Foreach(fe) = &parent.tasks["t"].kind else {
            panic!("foreach")
        };
        let child = |sensitive: bool| {
            Package::parse(
                "c.toml",
                &format!(
                    "name='c'\n[parameters.x]\ntype='string'\nsensitive={sensitive}\n\
                     [parameters.n]\ntype='int'\n[tasks.r]\nexec=['true']\n"
                ),
            )
            .unwrap()
        };
        fe.check_sensitive_flow("t", &parent, &child(true)).unwrap();
        let e = fe
            .check_sensitive_flow("t", &parent, &child(false))
            .unwrap_err();
        assert_eq!(e.code(), "PARAM_INVALID");
        assert!(e.to_string().starts_with("parameter 'x': "), "{e}");
        assert!(e.to_string().contains("sensitive = true"), "{e}");
    }

    #[test]
    fn errors_never_quote_a_sensitive_value() {
        let p = Package::parse(
            "p.toml",
            "name='p'\n[parameters.k]\ntype='int'\nsensitive=true\n\
             [parameters.b]\ntype='bool'\nsensitive=true\n[parameters.s]\ntype='string'\n\
             sensitive=true\ndefault='1'\n",
        )
        .unwrap();
        let secret = "hunter2-xyz";
        for name in ["k", "b"] {
            let e = p
                .bind(&[(name.to_string(), secret.to_string())].into())
                .unwrap_err();
            assert_eq!(e.code(), "PARAM_INVALID");
            assert!(!e.to_string().contains(secret), "{e}");
            assert!(!format!("{e:?}").contains(secret), "{e:?}");
        }
        let v = p
            .bind(&[("s".to_string(), secret.to_string())].into())
            .unwrap();
        let r = fe(ForeachOver::Range {
            start: "1".into(),
            end: "${params.s}".into(),
        });
        let e = r.items(&v).unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(!format!("{v:?}").contains(secret));
    }

    #[test]
    fn scripts_keep_secrets_out() {
        let e = with_task("script='tool --pw=${params.pw}'")
            .check_sensitive_use()
            .unwrap_err();
        assert!(e.to_string().contains("script"), "{e}");
        with_task("script='tool --pw=\"$BATON_PARAM_PW\"'")
            .check_sensitive_use()
            .unwrap();
    }
}
