//! `${params.NAME}` and `${item}` templates, and foreach item expansion.

use crate::error::PackageError;
use crate::model::{ForeachOver, ForeachTask, MAX_FOREACH_ITEMS, Package};
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

impl ForeachTask {
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
                        message: format!("range bound '{s}' is not an integer"),
                    })
                };
                let (a, b) = (num(start)?, num(end)?);
                if b < a {
                    Vec::new()
                } else {
                    let n = (b - a + 1) as u128;
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
