//! The bound parameter values of one run and the canonical text of a value
//! (floats, lists). A leaf: templates, expressions and the engine read these
//! values; binding them against a package's declarations is `params.rs`.

use std::collections::BTreeMap;

/// Bound parameter values of one run. Values are kept as canonical strings;
/// sensitive ones are flagged so that callers can redact them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ParamValues {
    values: BTreeMap<String, (String, bool)>,
    /// Parameters of type `list`, whose values are JSON arrays.
    lists: std::collections::BTreeSet<String>,
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
    /// Values already checked and in canonical form (`Package::bind` makes
    /// them): `(value, sensitive)` by name, and the names of `list` parameters.
    pub(crate) fn from_parts(
        values: BTreeMap<String, (String, bool)>,
        lists: std::collections::BTreeSet<String>,
    ) -> ParamValues {
        ParamValues { values, lists }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|(v, _)| v.as_str())
    }

    pub fn is_sensitive(&self, name: &str) -> bool {
        self.values.get(name).is_some_and(|(_, s)| *s)
    }

    /// Whether `name` is a `list` parameter (its value a JSON array of strings).
    pub fn is_list(&self, name: &str) -> bool {
        self.lists.contains(name)
    }

    /// The items of a parameter: a `list` parameter's elements, or the
    /// comma-separated parts of any other (trimmed, empty parts dropped).
    pub fn list_items(&self, name: &str) -> Vec<String> {
        let value = self.get(name).unwrap_or_default();
        if self.is_list(name) {
            parse_list(value).unwrap_or_default()
        } else {
            split_commas(value)
        }
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

/// The canonical text of a float: the shortest form that reads back the same.
pub(crate) fn render_float(f: f64) -> String {
    let f = if f == 0.0 { 0.0 } else { f }; // no "-0"
    f.to_string()
}

/// The canonical text of a list: a JSON array of strings.
pub(crate) fn render_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

/// A JSON array of strings, or `None`.
pub(crate) fn parse_list(value: &str) -> Option<Vec<String>> {
    serde_json::from_str::<Vec<String>>(value).ok()
}

pub(crate) fn split_commas(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
