//! The references that templates (`${…}` in strings) and `when` expressions
//! share: `params.NAME`, `item`, `item.FIELD`, `tasks.TASK.outputs.KEY` and
//! `tasks.TASK.state`.

use std::collections::BTreeMap;

use crate::param_values::ParamValues;

/// One `${…}` reference, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// `${params.NAME}`.
    Param(String),
    /// `${item}`: the current foreach item.
    Item,
    /// `${item.FIELD}`: a field of the current item, a JSON row.
    ItemField(String),
    /// `${tasks.TASK.outputs.KEY}`: an output an earlier task wrote.
    Output { task: String, key: String },
    /// `${tasks.TASK.state}`: `succeeded`, `failed`, `skipped`, …
    State(String),
}

impl Ref {
    /// Parses the text between `${` and `}` (trimmed).
    pub fn parse(inner: &str) -> Result<Ref, String> {
        let inner = inner.trim();
        if inner == "item" {
            return Ok(Ref::Item);
        }
        if let Some(field) = inner.strip_prefix("item.") {
            return nonempty(field, "a field name after `item.`").map(Ref::ItemField);
        }
        if let Some(name) = inner.strip_prefix("params.") {
            return nonempty(name, "a parameter name after `params.`").map(Ref::Param);
        }
        if let Some(rest) = inner.strip_prefix("tasks.") {
            if let Some((task, key)) = rest.split_once(".outputs.") {
                let task = nonempty(task, "a task name")?;
                let key = nonempty(key, "an output key after `outputs.`")?;
                return Ok(Ref::Output { task, key });
            }
            if let Some(task) = rest.strip_suffix(".state")
                && !task.contains('.')
            {
                return nonempty(task, "a task name").map(Ref::State);
            }
            return Err(format!(
                "unknown reference '{inner}', expected tasks.TASK.outputs.KEY or tasks.TASK.state"
            ));
        }
        Err(format!(
            "unknown reference '{inner}', expected params.NAME, item, item.FIELD, \
             tasks.TASK.outputs.KEY or tasks.TASK.state"
        ))
    }

    /// The task this reference reads from, if any.
    pub fn task(&self) -> Option<&str> {
        match self {
            Ref::Output { task, .. } | Ref::State(task) => Some(task),
            _ => None,
        }
    }
}

fn nonempty(s: &str, what: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        Err(format!("expected {what}"))
    } else {
        Ok(s.to_string())
    }
}

/// Task outputs by task name, then key.
pub type Outputs = BTreeMap<String, BTreeMap<String, String>>;

static NO_OUTPUTS: Outputs = BTreeMap::new();
static NO_STATES: BTreeMap<String, String> = BTreeMap::new();

/// What a template or an expression is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub params: &'a ParamValues,
    /// The current foreach item (for a `rows` foreach: the row's JSON text).
    pub item: Option<&'a str>,
    /// Outputs of the tasks that ended so far.
    pub outputs: &'a Outputs,
    /// States of the tasks (`succeeded`, `failed`, …), by name.
    pub states: &'a BTreeMap<String, String>,
}

impl<'a> Scope<'a> {
    /// Parameters only (and an item, for foreach templates).
    pub fn new(params: &'a ParamValues, item: Option<&'a str>) -> Scope<'a> {
        Scope {
            params,
            item,
            outputs: &NO_OUTPUTS,
            states: &NO_STATES,
        }
    }

    /// Resolves a reference to its text, or says why it cannot.
    pub fn resolve(&self, r: &Ref) -> Result<String, String> {
        match r {
            Ref::Param(name) => self
                .params
                .get(name)
                .map(str::to_string)
                .ok_or_else(|| format!("unknown parameter '{name}'")),
            Ref::Item => self
                .item
                .map(str::to_string)
                .ok_or_else(|| "${item} is only defined inside a foreach".to_string()),
            Ref::ItemField(field) => {
                let item = self
                    .item
                    .ok_or_else(|| format!("${{item.{field}}} is only defined inside a foreach"))?;
                item_field(item, field)
            }
            Ref::Output { task, key } => self
                .outputs
                .get(task)
                .and_then(|o| o.get(key))
                .cloned()
                .ok_or_else(|| format!("task '{task}' has no output '{key}'")),
            Ref::State(task) => self
                .states
                .get(task)
                .cloned()
                .ok_or_else(|| format!("unknown task '{task}'")),
        }
    }
}

/// A field of a JSON object row: strings as they are, other values as JSON text.
fn item_field(item: &str, field: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(item)
        .map_err(|_| format!("${{item.{field}}}: the item is not a JSON object"))?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => Err(format!("${{item.{field}}}: the row has no field '{field}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(Ref::parse(" item "), Ok(Ref::Item));
        assert_eq!(Ref::parse("item.id"), Ok(Ref::ItemField("id".into())));
        assert_eq!(Ref::parse("params.n"), Ok(Ref::Param("n".into())));
        assert_eq!(Ref::parse("tasks.a.state"), Ok(Ref::State("a".into())));
        assert_eq!(
            Ref::parse("tasks.a.outputs.rows_total"),
            Ok(Ref::Output {
                task: "a".into(),
                key: "rows_total".into()
            })
        );
        for bad in ["", "params.", "tasks.a", "tasks..state", "nope", "item."] {
            assert!(Ref::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn item_fields_come_from_json_rows() {
        let p = ParamValues::default();
        let s = Scope::new(&p, Some(r#"{"id": 7, "name": "eu"}"#));
        assert_eq!(s.resolve(&Ref::ItemField("id".into())).unwrap(), "7");
        assert_eq!(s.resolve(&Ref::ItemField("name".into())).unwrap(), "eu");
        assert!(s.resolve(&Ref::ItemField("zz".into())).is_err());
    }
}
