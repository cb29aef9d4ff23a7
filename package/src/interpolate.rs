//! `${params.NAME}` and `${item}` templates, and foreach item expansion.

use crate::error::PackageError;
use crate::model::{ForeachOver, ForeachTask, MAX_FOREACH_ITEMS, Package, TaskKind};
use crate::params::ParamValues;

impl Package {
    /// Parses and validates a package; `origin` names the file in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Package, PackageError> {
        crate::parse::parse(origin, text)
    }
}

/// Expands `${params.NAME}` and `${item}` in `template`. `$${` is a literal
/// `${`. A reference to an unknown parameter, or to `${item}` outside a
/// foreach, is an error rather than an empty string.
pub fn interpolate(
    template: &str,
    params: &ParamValues,
    item: Option<&str>,
) -> Result<String, PackageError> {
    let err = |message: String| PackageError::Template {
        template: template.to_string(),
        message,
    };
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix("${") {
            let end = inner
                .find('}')
                .ok_or_else(|| err("unterminated '${'".to_string()))?;
            let expr = inner[..end].trim();
            if expr == "item" {
                out.push_str(
                    item.ok_or_else(
                        || err("${item} is only defined inside a foreach".to_string()),
                    )?,
                );
            } else if let Some(name) = expr.strip_prefix("params.") {
                out.push_str(
                    params
                        .get(name)
                        .ok_or_else(|| err(format!("unknown parameter '{name}'")))?,
                );
            } else {
                return Err(err(format!(
                    "unknown reference '{expr}', expected ${{params.NAME}} or ${{item}}"
                )));
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Names that `template` references as `${params.NAME}`, in order (with repeats).
/// Mirrors [`interpolate`]: `$${` is a literal, an unterminated `${` ends the scan.
fn template_params(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix("${") {
            let Some(end) = inner.find('}') else { break };
            if let Some(name) = inner[..end].trim().strip_prefix("params.") {
                out.push(name);
            }
            rest = &inner[end + 1..];
        } else {
            rest = &after[1..];
        }
    }
    out
}

impl Package {
    /// The first sensitive parameter of this package that `template` references.
    fn sensitive_in<'t>(&self, template: &'t str) -> Option<&'t str> {
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
                TaskKind::Noop => {}
            }
        }
        Ok(())
    }
}

impl ForeachTask {
    /// Refuses a child parameter fed from a sensitive parameter of `parent` that
    /// the child does not declare `sensitive` itself: a value stays sensitive
    /// wherever it flows, and the agent only sees the child's declarations.
    pub fn check_sensitive_flow(
        &self,
        task: &str,
        parent: &Package,
        child: &Package,
    ) -> Result<(), PackageError> {
        for (name, template) in &self.params {
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

    /// The items this foreach runs over, for the bound parameters.
    pub fn items(&self, params: &ParamValues) -> Result<Vec<String>, PackageError> {
        let items: Vec<String> = match &self.over {
            ForeachOver::Items(items) => items
                .iter()
                .map(|i| interpolate(i, params, None))
                .collect::<Result<_, _>>()?,
            ForeachOver::Param(name) => params
                .get(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            ForeachOver::Range { start, end } => {
                let num = |t: &str| -> Result<i64, PackageError> {
                    let s = interpolate(t, params, None)?;
                    s.trim().parse::<i64>().map_err(|_| PackageError::Template {
                        template: t.to_string(),
                        // Never quote a value expanded from a sensitive parameter.
                        message: if template_params(t).iter().any(|p| params.is_sensitive(p)) {
                            "range bound is not an integer".to_string()
                        } else {
                            format!("range bound '{s}' is not an integer")
                        },
                    })
                };
                let (a, b) = (num(start)?, num(end)?);
                if b < a {
                    Vec::new()
                } else {
                    // In i128: `b - a` overflows i64 for wide ranges (i64::MIN..=i64::MAX
                    // wrapped to 0 items in release builds and then expanded them all).
                    let n = (i128::from(b) - i128::from(a) + 1) as u128;
                    if n > MAX_FOREACH_ITEMS as u128 {
                        return Err(PackageError::Template {
                            template: format!("{start}..{end}"),
                            message: format!(
                                "range of {n} items exceeds the limit of {MAX_FOREACH_ITEMS}"
                            ),
                        });
                    }
                    (a..=b).map(|i| i.to_string()).collect()
                }
            }
        };
        if items.len() > MAX_FOREACH_ITEMS {
            return Err(PackageError::Template {
                template: String::new(),
                message: format!(
                    "{} items exceed the limit of {MAX_FOREACH_ITEMS}",
                    items.len()
                ),
            });
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn params() -> ParamValues {
        let p = Package::parse(
            "p.toml",
            "name='p'\n[parameters.n]\ntype='int'\ndefault=3\n[parameters.list]\ntype='string'\ndefault='a, b,,c'\n",
        )
        .unwrap();
        p.bind(&BTreeMap::new()).unwrap()
    }

    #[test]
    fn expands_params_items_and_escapes() {
        let p = params();
        assert_eq!(
            interpolate("n=${params.n} i=${item} $${x} $5", &p, Some("7")).unwrap(),
            "n=3 i=7 ${x} $5"
        );
    }

    #[test]
    fn errors_on_unknown_references() {
        let p = params();
        assert_eq!(
            interpolate("${params.zz}", &p, None).unwrap_err().code(),
            "TEMPLATE_INVALID"
        );
        assert!(interpolate("${item}", &p, None).is_err());
        assert!(interpolate("${nope}", &p, None).is_err());
        assert!(interpolate("${params.n", &p, None).is_err());
    }

    fn fe(over: ForeachOver) -> ForeachTask {
        ForeachTask {
            over,
            child: "c.toml".into(),
            parallelism: 1,
            params: BTreeMap::new(),
            retry: Default::default(),
        }
    }

    #[test]
    fn foreach_items_from_range_list_and_param() {
        let p = params();
        let r = fe(ForeachOver::Range {
            start: "1".into(),
            end: "${params.n}".into(),
        });
        assert_eq!(r.items(&p).unwrap(), ["1", "2", "3"]);
        let l = fe(ForeachOver::Param("list".into()));
        assert_eq!(l.items(&p).unwrap(), ["a", "b", "c"]);
        let empty = fe(ForeachOver::Range {
            start: "5".into(),
            end: "1".into(),
        });
        assert!(empty.items(&p).unwrap().is_empty());
        let huge = fe(ForeachOver::Range {
            start: "0".into(),
            end: "99999999999".into(),
        });
        assert!(huge.items(&p).is_err());
    }

    #[test]
    fn template_params_follow_interpolation() {
        assert_eq!(
            template_params("a ${params.x} $${params.y} ${ params.z }${item}${params.w"),
            ["x", "z"]
        );
        assert!(template_params("plain $5").is_empty());
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

    proptest::proptest! {
        /// Interpolation never panics and leaves text without '$' unchanged.
        #[test]
        fn interpolation_total(s in "\\PC{0,64}") {
            let p = params();
            let r = interpolate(&s, &p, Some("x"));
            if !s.contains('$') {
                proptest::prop_assert_eq!(r.unwrap(), s);
            }
        }
    }
}
