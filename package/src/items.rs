//! Foreach item expansion: ranges, fixed lists, parameters and rows.

use crate::error::PackageError;
use crate::interpolate::{interpolate, template_params};
use crate::model::{ForeachOver, ForeachTask, MAX_FOREACH_ITEMS};
use crate::param_values::ParamValues;

impl ForeachTask {
    /// The items this foreach runs over, for the bound parameters.
    pub fn items(&self, params: &ParamValues) -> Result<Vec<String>, PackageError> {
        let items: Vec<String> = match &self.over {
            ForeachOver::Items(items) => items
                .iter()
                .map(|i| interpolate(i, params, None))
                .collect::<Result<_, _>>()?,
            ForeachOver::Param(name) => params.list_items(name),
            ForeachOver::Rows(task) => {
                return Err(PackageError::Template {
                    template: format!("rows of {task}"),
                    message: format!(
                        "a foreach over the rows of task '{task}' is expanded when that task \
                         ends: use items_from_rows"
                    ),
                });
            }
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

    /// The items of a `foreach = { rows = "TASK" }`: one per row (JSON text)
    /// that TASK wrote, empty lines dropped, at most [`MAX_FOREACH_ITEMS`].
    pub fn items_from_rows<'r>(
        &self,
        rows: impl IntoIterator<Item = &'r str>,
    ) -> Result<Vec<String>, PackageError> {
        let mut out = Vec::new();
        for row in rows {
            let row = row.trim();
            if row.is_empty() {
                continue;
            }
            if out.len() == MAX_FOREACH_ITEMS {
                return Err(PackageError::Template {
                    template: String::new(),
                    message: format!("rows exceed the limit of {MAX_FOREACH_ITEMS} items"),
                });
            }
            out.push(row.to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Package;
    use std::collections::BTreeMap;

    fn params() -> ParamValues {
        let p = Package::parse(
            "p.toml",
            "name='p'\n[parameters.n]\ntype='int'\ndefault=3\n[parameters.list]\ntype='string'\ndefault='a, b,,c'\n\
             [parameters.l2]\ntype='list'\ndefault=['x,1', 'y']\n",
        )
        .unwrap();
        p.bind(&BTreeMap::new()).unwrap()
    }

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
        let l2 = fe(ForeachOver::Param("l2".into()));
        assert_eq!(l2.items(&p).unwrap(), ["x,1", "y"]);
        let rows = fe(ForeachOver::Rows("extract".into()));
        assert!(rows.items(&p).is_err());
        assert_eq!(
            rows.items_from_rows(["{\"a\":1}", "", "{\"a\":2}\r"])
                .unwrap(),
            ["{\"a\":1}", "{\"a\":2}"]
        );
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
}
