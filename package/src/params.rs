//! Run-time parameter binding: defaults, overrides, type checks, into
//! [`ParamValues`].

use std::collections::BTreeMap;

use crate::error::PackageError;
use crate::model::{Package, ParamType};
use crate::param_values::{ParamValues, parse_list, render_float, render_list, split_commas};

/// Checks `value` against `ty` and returns its canonical form.
pub(crate) fn check_value(name: &str, ty: ParamType, value: &str) -> Result<String, PackageError> {
    let bad = |message: String| PackageError::InvalidParameter {
        name: name.to_string(),
        message,
    };
    match ty {
        ParamType::String | ParamType::Secret => Ok(value.to_string()),
        ParamType::Float => match value.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(render_float(f)),
            _ => Err(bad("expected a finite number".to_string())),
        },
        ParamType::List => {
            let items = if value.trim_start().starts_with('[') {
                parse_list(value).ok_or_else(|| {
                    bad("expected a JSON array of strings or a comma-separated list".to_string())
                })?
            } else {
                split_commas(value)
            };
            if items.len() > crate::model::MAX_FOREACH_ITEMS {
                return Err(bad(format!(
                    "a list holds at most {} items",
                    crate::model::MAX_FOREACH_ITEMS
                )));
            }
            Ok(render_list(&items))
        }
        ParamType::Int => value
            .trim()
            .parse::<i64>()
            .map(|i| i.to_string())
            .map_err(|_| bad("expected an integer".to_string())),
        ParamType::Bool => match value.trim() {
            "true" | "1" | "yes" => Ok("true".to_string()),
            "false" | "0" | "no" => Ok("false".to_string()),
            _ => Err(bad("expected true or false".to_string())),
        },
    }
}

impl Package {
    /// Binds run-time overrides: every override must be declared and well typed;
    /// declared parameters without an override take their default; a required
    /// parameter with neither is an error.
    pub fn bind(&self, overrides: &BTreeMap<String, String>) -> Result<ParamValues, PackageError> {
        for name in overrides.keys() {
            if !self.parameters.contains_key(name) {
                let declared: Vec<&str> = self.parameters.keys().map(String::as_str).collect();
                return Err(PackageError::UnknownParameter {
                    name: name.clone(),
                    declared: if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    },
                });
            }
        }
        let mut values = BTreeMap::new();
        let mut lists = std::collections::BTreeSet::new();
        for (name, def) in &self.parameters {
            if def.ty == ParamType::List {
                lists.insert(name.clone());
            }
            let value = match overrides.get(name) {
                Some(v) => check_value(name, def.ty, v)?,
                None => match &def.default {
                    Some(d) => d.clone(),
                    None if def.required => {
                        return Err(PackageError::MissingParameter { name: name.clone() });
                    }
                    None if def.ty == ParamType::List => render_list(&[]),
                    None => String::new(),
                },
            };
            let sensitive = def.sensitive || def.ty == ParamType::Secret;
            values.insert(name.clone(), (value, sensitive));
        }
        Ok(ParamValues::from_parts(values, lists))
    }
}

#[cfg(test)]
mod tests {
    use crate::Package;
    use std::collections::BTreeMap;

    const PKG: &str = r#"
name = "p"
[parameters.n]
type = "int"
default = 3
[parameters.token]
type = "string"
required = true
sensitive = true
[parameters.flag]
type = "bool"
"#;

    fn ov(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn binds_defaults_and_overrides() {
        let p = Package::parse("p.toml", PKG).unwrap();
        let v = p
            .bind(&ov(&[("token", "s3cret"), ("flag", "yes")]))
            .unwrap();
        assert_eq!(v.get("n"), Some("3"));
        assert_eq!(v.get("flag"), Some("true"));
        assert!(v.is_sensitive("token"));
        assert!(!format!("{v:?}").contains("s3cret"));
    }

    #[test]
    fn floats_lists_and_secrets() {
        let p = Package::parse(
            "p.toml",
            "name='p'\n[parameters.f]\ntype='float'\ndefault=2.50\n\
             [parameters.l]\ntype='list'\ndefault=['a,b', 'c']\n\
             [parameters.s]\ntype='secret'\n",
        )
        .unwrap();
        assert!(p.parameters["s"].sensitive);
        let v = p.bind(&ov(&[("s", "pw")])).unwrap();
        assert_eq!(v.get("f"), Some("2.5"));
        assert_eq!(v.get("l"), Some(r#"["a,b","c"]"#));
        assert_eq!(v.list_items("l"), ["a,b", "c"]);
        assert!(v.is_sensitive("s"));
        let v = p
            .bind(&ov(&[("s", "pw"), ("l", " x, y ,"), ("f", "1e3")]))
            .unwrap();
        assert_eq!(v.list_items("l"), ["x", "y"]);
        assert_eq!(v.get("f"), Some("1000"));
        let v = p.bind(&ov(&[("s", "pw"), ("l", r#"["p,q"]"#)])).unwrap();
        assert_eq!(v.list_items("l"), ["p,q"]);
        for (k, bad) in [
            ("l", "[1, 2]"),
            ("l", "[\"a\""),
            ("f", "NaN"),
            ("f", "inf"),
            ("f", "x"),
        ] {
            assert_eq!(
                p.bind(&ov(&[("s", "pw"), (k, bad)])).unwrap_err().code(),
                "PARAM_INVALID"
            );
        }
        // A canonical value binds to itself (the coordinator rebinds stored values).
        let again = p.bind(&v.to_map()).unwrap();
        assert_eq!(again, v);
    }

    #[test]
    fn rejects_unknown_missing_and_mistyped() {
        let p = Package::parse("p.toml", PKG).unwrap();
        let e = p.bind(&ov(&[("token", "x"), ("nope", "1")])).unwrap_err();
        assert_eq!(e.code(), "PARAM_UNKNOWN");
        assert!(e.to_string().contains("flag, n, token"), "{e}");
        assert_eq!(p.bind(&ov(&[])).unwrap_err().code(), "PARAM_REQUIRED");
        let e = p.bind(&ov(&[("token", "x"), ("n", "ten")])).unwrap_err();
        assert_eq!(e.code(), "PARAM_INVALID");
    }
}
