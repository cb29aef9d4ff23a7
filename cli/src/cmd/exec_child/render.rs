//! Rows (JSON lines) as CSV or a text table.
//!
//! The columns are the union of the rows' keys, in the order they are first seen
//! (within a row, in the order the row writes them). A string value is shown as is,
//! `null` as nothing, anything else as JSON (`3`, `true`, `{"a":1}`). A line that
//! is JSON but not an object goes in a column named `value`; so does a line that is
//! not JSON at all (counted in [`Table::invalid`]).

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Widest cell of a text table, in characters (longer ones end with `…`).
pub const TABLE_CELL_MAX: usize = 40;
/// The column of rows that are not JSON objects.
pub const VALUE_COLUMN: &str = "value";

/// Rows arranged in columns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<String>,
    /// Cells by column position; shorter than `columns` when later rows added
    /// columns (the missing cells are empty).
    pub rows: Vec<Vec<Option<String>>>,
    /// Lines that were not JSON.
    pub invalid: usize,
    index: HashMap<String, usize>,
}

/// A JSON object with its keys in the order written (serde_json's `Map` sorts them).
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    // A repeated key: the last value wins, at the first key's place.
                    match out.iter_mut().find(|(seen, _)| *seen == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What a cell shows for a value.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    fn column(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.columns.push(name.to_string());
        self.index.insert(name.to_string(), self.columns.len() - 1);
        self.columns.len() - 1
    }

    fn put(&mut self, cells: Vec<(usize, String)>) {
        let mut row = vec![None; cells.iter().map(|(i, _)| i + 1).max().unwrap_or(0)];
        for (i, v) in cells {
            row[i] = Some(v);
        }
        self.rows.push(row);
    }

    /// Adds one row (one JSON line).
    pub fn push(&mut self, line: &str) {
        if let Ok(Ordered(fields)) = serde_json::from_str::<Ordered>(line) {
            let cells = fields
                .iter()
                .map(|(k, v)| (self.column(k), cell(v)))
                .collect();
            self.put(cells);
            return;
        }
        let shown = match serde_json::from_str::<Value>(line) {
            Ok(v) => cell(&v),
            Err(_) => {
                self.invalid += 1;
                line.to_string()
            }
        };
        let i = self.column(VALUE_COLUMN);
        self.put(vec![(i, shown)]);
    }

    fn get(row: &[Option<String>], i: usize) -> &str {
        row.get(i).and_then(|c| c.as_deref()).unwrap_or("")
    }

    /// RFC 4180 CSV with a header line (lines end with `\n`).
    pub fn csv(&self) -> String {
        let mut out = String::new();
        let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
            let fields: Vec<String> = cells.map(csv_field).collect();
            out.push_str(&fields.join(","));
            out.push('\n');
        };
        line(&mut self.columns.iter().map(String::as_str), &mut out);
        for row in &self.rows {
            line(
                &mut (0..self.columns.len()).map(|i| Self::get(row, i)),
                &mut out,
            );
        }
        out
    }

    /// Aligned columns, cells cut at [`TABLE_CELL_MAX`] characters, control
    /// characters shown escaped.
    pub fn text(&self) -> String {
        let shown: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                (0..self.columns.len())
                    .map(|i| fit(Self::get(r, i)))
                    .collect()
            })
            .collect();
        let header: Vec<String> = self.columns.iter().map(|c| fit(c)).collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                shown
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(shown.iter()) {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            out.push_str(padded.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One table cell: control characters escaped, at most [`TABLE_CELL_MAX`] characters.
fn fit(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    if out.chars().count() > TABLE_CELL_MAX {
        out = out.chars().take(TABLE_CELL_MAX - 1).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lines: &[&str]) -> Table {
        let mut t = Table::new();
        for l in lines {
            t.push(l);
        }
        t
    }

    #[test]
    fn columns_are_the_union_of_keys_in_first_seen_order() {
        let t = table(&[
            r#"{"zeta":1,"alpha":"a"}"#,
            r#"{"alpha":"b","mid":null,"zeta":2}"#,
            r#"{"new":true}"#,
        ]);
        assert_eq!(t.columns, ["zeta", "alpha", "mid", "new"]);
        assert_eq!(
            t.csv(),
            "zeta,alpha,mid,new\n1,a,,\n2,b,,\n,,,true\n",
            "missing and null cells are empty"
        );
    }

    #[test]
    fn non_string_values_are_json_and_csv_quotes_what_it_must() {
        let t =
            table(&[r#"{"s":"a,b","q":"say \"hi\"","n":3.5,"o":{"b":1,"a":[1,2]},"l":"x\ny"}"#]);
        assert_eq!(
            t.csv(),
            "s,q,n,o,l\n\"a,b\",\"say \"\"hi\"\"\",3.5,\"{\"\"a\"\":[1,2],\"\"b\"\":1}\",\"x\ny\"\n"
        );
    }

    #[test]
    fn rows_that_are_not_objects_go_in_a_value_column() {
        let t = table(&[r#"{"a":1}"#, "[1,2]", "\"plain\"", "not json {"]);
        assert_eq!(t.columns, ["a", "value"]);
        assert_eq!(t.invalid, 1);
        assert_eq!(t.csv(), "a,value\n1,\n,\"[1,2]\"\n,plain\n,not json {\n");
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value() {
        let t = table(&[r#"{"a":1,"b":2,"a":3}"#]);
        assert_eq!(t.csv(), "a,b\n3,2\n");
    }

    #[test]
    fn the_text_table_aligns_escapes_and_cuts_long_cells() {
        let long = "x".repeat(100);
        let line = format!(r#"{{"id":1,"name":"tab\there","long":"{long}"}}"#);
        let t = table(&[&line, r#"{"id":22,"name":"b"}"#]);
        let text = t.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("id  name       long"), "{text}");
        assert!(lines[1].starts_with("1   tab\\there  xxx"), "{text}");
        assert!(lines[1].ends_with('…'), "{text}");
        assert_eq!(
            lines[1].chars().count(),
            "1   tab\\there  ".chars().count() + TABLE_CELL_MAX
        );
        assert_eq!(lines[2], "22  b", "no trailing blanks");
    }
}
