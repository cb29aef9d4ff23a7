//! Run-time parameter binding: defaults, overrides, type checks.

use std::collections::BTreeMap;

use crate::error::PackageError;
use crate::model::{Package, ParamType};

/// Bound parameter values of one run. Values are kept as canonical strings;
/// sensitive ones are flagged so that callers can redact them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ParamValues {
    values: BTreeMap<String, (String, bool)>,
}

impl std::fmt::Debug for ParamValues {
    /// Redacts sensitive values: a `{:?}` in a log line must not leak a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, (v, sensitive)) in &self.values {
            if *sensitive {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl ParamValues {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|(v, _)| v.as_str())
    }

    pub fn is_sensitive(&self, name: &str) -> bool {
        self.values.get(name).is_some_and(|(_, s)| *s)
    }

    /// `(name, value)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values
            .iter()
            .map(|(k, (v, _))| (k.as_str(), v.as_str()))
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// Checks `value` against `ty` and returns its canonical form.
pub(crate) fn check_value(name: &str, ty: ParamType, value: &str) -> Result<String, PackageError> {
    let bad = |message: String| PackageError::InvalidParameter {
        name: name.to_string(),
        message,
    };
    match ty {
        ParamType::String => Ok(value.to_string()),
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
        for (name, def) in &self.parameters {
            let value = match overrides.get(name) {
                Some(v) => check_value(name, def.ty, v)?,
                None => match &def.default {
                    Some(d) => d.clone(),
                    None if def.required => {
                        return Err(PackageError::MissingParameter { name: name.clone() });
                    }
                    None => String::new(),
                },
            };
            values.insert(name.clone(), (value, def.sensitive));
        }
        Ok(ParamValues { values })
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
