//! A small reader for the YAML of `deploy/kubernetes/`, so the deploy tests need no
//! YAML crate (none is in the tree, and one dev-dependency for a few files of our
//! own is not worth a new crate to vet).
//!
//! It reads the subset those files are written in and refuses the rest with the
//! line it stopped at, so a manifest that grows past the subset fails its test
//! instead of being read wrong: documents split by `---`; block mappings and block
//! sequences (a sequence may sit at its key's indentation, as `kubectl` writes it);
//! plain, single- and double-quoted scalars; literal and folded block scalars
//! (`|`, `|-`, `>`); the empty flow collections `{}` and `[]`; comments. Anchors,
//! aliases, tags, other flow collections and multi-line plain scalars are refused.
//! Every scalar is kept as its text: the tests compare strings.

use std::fmt;

/// A YAML node: scalars keep their text (quotes removed, escapes applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Yaml {
    Str(String),
    Seq(Vec<Yaml>),
    /// Entries in file order (keys are unique: a repeated key is an error).
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    /// The value under `key` of a mapping; `None` for a missing key or a non-mapping.
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of mapping keys.
    pub fn at(&self, path: &[&str]) -> Option<&Yaml> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a sequence; empty for anything else.
    pub fn items(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            _ => &[],
        }
    }

    /// The items of a sequence of scalars as strings (non-scalars are skipped).
    pub fn strings(&self) -> Vec<String> {
        self.items()
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect()
    }
}

/// Why a text is not in the subset (1-based line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses every document of `text` (empty documents are dropped).
pub fn parse_documents(text: &str) -> Result<Vec<Yaml>, YamlError> {
    let mut docs = Vec::new();
    let mut current: Vec<(usize, &str)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            docs.push(std::mem::take(&mut current));
        } else {
            current.push((n + 1, line));
        }
    }
    docs.push(current);
    let mut out = Vec::new();
    for lines in docs {
        let mut p = Parser {
            lines: lines
                .into_iter()
                .map(|(n, l)| Line {
                    number: n,
                    raw: l.to_owned(),
                })
                .collect(),
            pos: 0,
        };
        if let Some(doc) = p.document()? {
            out.push(doc);
        }
    }
    Ok(out)
}

struct Line {
    number: usize,
    raw: String,
}

struct Parser {
    lines: Vec<Line>,
    pos: usize,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, YamlError> {
    Err(YamlError {
        line,
        message: message.into(),
    })
}

fn indent_of(s: &str) -> usize {
    s.len() - s.trim_start_matches(' ').len()
}

/// The line without its comment and trailing blanks (a `#` starts a comment at the
/// start or after a blank, outside quotes).
fn strip_comment(s: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && (prev == ' ' || prev == '\t') => return s[..i].trim_end(),
            None => {}
        }
        prev = c;
    }
    s.trim_end()
}

impl Parser {
    fn document(&mut self) -> Result<Option<Yaml>, YamlError> {
        let Some((indent, _)) = self.peek()? else {
            return Ok(None);
        };
        let value = self.block(indent)?;
        if let Some((_, content)) = self.peek()? {
            let line = self.lines[self.pos].number;
            return err(line, format!("unexpected `{content}` after the document"));
        }
        Ok(Some(value))
    }

    /// The next structural line (skipping blanks and comments): its indentation and
    /// content without the comment.
    fn peek(&mut self) -> Result<Option<(usize, String)>, YamlError> {
        while let Some(line) = self.lines.get(self.pos) {
            if line.raw.contains('\t') && line.raw.trim_start().starts_with('\t') {
                return err(line.number, "tab in indentation");
            }
            let content = strip_comment(&line.raw);
            if content.trim().is_empty() {
                self.pos += 1;
                continue;
            }
            return Ok(Some((indent_of(content), content.trim_start().to_owned())));
        }
        Ok(None)
    }

    fn line_number(&self) -> usize {
        self.lines
            .get(self.pos)
            .or_else(|| self.lines.last())
            .map_or(0, |l| l.number)
    }

    /// A block node whose lines start at exactly `indent`.
    fn block(&mut self, indent: usize) -> Result<Yaml, YamlError> {
        let Some((_, content)) = self.peek()? else {
            return err(self.line_number(), "expected a value");
        };
        if content == "-" || content.starts_with("- ") {
            self.sequence(indent)
        } else {
            self.mapping(indent)
        }
    }

    fn sequence(&mut self, indent: usize) -> Result<Yaml, YamlError> {
        let mut items = Vec::new();
        while let Some((i, content)) = self.peek()? {
            if i != indent || !(content == "-" || content.starts_with("- ")) {
                if i > indent {
                    return err(self.line_number(), "bad indentation in a sequence");
                }
                break;
            }
            let number = self.lines[self.pos].number;
            let rest = content[1..].trim_start().to_owned();
            if rest.is_empty() {
                self.pos += 1;
                items.push(self.nested(indent)?);
            } else if split_key(&rest).is_some() {
                // `- key: value`: a mapping whose first entry sits after the dash;
                // rewrite the line so the mapping reads it at its own indentation.
                let item_indent = indent + (content.len() - rest.len());
                self.lines[self.pos].raw = format!("{}{}", " ".repeat(item_indent), rest);
                items.push(self.mapping(item_indent)?);
            } else {
                self.pos += 1;
                items.push(self.scalar_or_block(&rest, indent, number)?);
            }
        }
        Ok(Yaml::Seq(items))
    }

    fn mapping(&mut self, indent: usize) -> Result<Yaml, YamlError> {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while let Some((i, content)) = self.peek()? {
            if i < indent {
                break;
            }
            let number = self.lines[self.pos].number;
            if i > indent {
                return err(number, "bad indentation in a mapping");
            }
            if content == "-" || content.starts_with("- ") {
                break;
            }
            let Some((key, value)) = split_key(&content) else {
                return err(number, format!("expected `key: value`, found `{content}`"));
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return err(number, format!("key `{key}` repeated"));
            }
            self.pos += 1;
            let node = if value.is_empty() {
                self.nested(indent)?
            } else {
                self.scalar_or_block(&value, indent, number)?
            };
            entries.push((key, node));
        }
        Ok(Yaml::Map(entries))
    }

    /// The value of a key or dash with nothing after it: a block on the next lines,
    /// more indented (or a sequence at the same indentation), else an empty scalar.
    fn nested(&mut self, indent: usize) -> Result<Yaml, YamlError> {
        match self.peek()? {
            Some((i, _)) if i > indent => self.block(i),
            Some((i, c)) if i == indent && (c == "-" || c.starts_with("- ")) => {
                self.sequence(indent)
            }
            _ => Ok(Yaml::Str(String::new())),
        }
    }

    fn scalar_or_block(
        &mut self,
        value: &str,
        indent: usize,
        number: usize,
    ) -> Result<Yaml, YamlError> {
        match value {
            "|" | "|-" | "|+" | ">" | ">-" | ">+" => {
                Ok(Yaml::Str(self.block_scalar(value, indent)))
            }
            "{}" => Ok(Yaml::Map(Vec::new())),
            "[]" => Ok(Yaml::Seq(Vec::new())),
            _ => {
                // A plain scalar may not go on over more lines in this subset.
                if let Some((i, _)) = self.peek()?
                    && i > indent
                {
                    return err(
                        self.line_number(),
                        "a scalar continued on the next line is not supported",
                    );
                }
                scalar(value, number).map(Yaml::Str)
            }
        }
    }

    /// The raw lines more indented than `indent` (blank lines included), less the
    /// indentation of the first; `|` keeps line breaks, `>` folds them to spaces.
    fn block_scalar(&mut self, style: &str, indent: usize) -> String {
        let mut lines: Vec<&str> = Vec::new();
        let start = self.pos;
        while let Some(line) = self.lines.get(self.pos) {
            if !line.raw.trim().is_empty() && indent_of(&line.raw) <= indent {
                break;
            }
            self.pos += 1;
        }
        for line in &self.lines[start..self.pos] {
            lines.push(&line.raw);
        }
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        let body_indent = lines
            .iter()
            .find(|l| !l.trim().is_empty())
            .map_or(0, |l| indent_of(l));
        let body: Vec<&str> = lines
            .iter()
            .map(|l| l.get(body_indent..).unwrap_or(""))
            .collect();
        let mut text = if style.starts_with('>') {
            body.join(" ")
        } else {
            body.join("\n")
        };
        if !style.ends_with('-') && !text.is_empty() {
            text.push('\n');
        }
        text
    }
}

/// Splits `key: value` (or `key:`) outside quotes; `None` if the line is not an entry.
fn split_key(content: &str) -> Option<(String, String)> {
    let (key, rest) = if let Some(q) = content.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = content[1..].find(q)? + 1;
        let after = &content[end + 1..];
        let rest = after.strip_prefix(':')?;
        (content[1..end].to_owned(), rest)
    } else {
        let idx = content
            .match_indices(':')
            .map(|(i, _)| i)
            .find(|&i| content[i + 1..].is_empty() || content[i + 1..].starts_with(' '))?;
        (content[..idx].trim_end().to_owned(), &content[idx + 1..])
    };
    if key.is_empty() || (!rest.is_empty() && !rest.starts_with(' ')) {
        return None;
    }
    Some((key, rest.trim().to_owned()))
}

/// A one-line scalar: quotes removed, escapes of double quotes applied.
fn scalar(value: &str, line: usize) -> Result<String, YamlError> {
    let first = value.chars().next().unwrap_or(' ');
    match first {
        '"' => {
            let inner = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .filter(|_| value.len() >= 2);
            let Some(inner) = inner else {
                return err(line, format!("unterminated string {value}"));
            };
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    other => return err(line, format!("unsupported escape \\{other:?}")),
                }
            }
            Ok(out)
        }
        '\'' => {
            let inner = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .filter(|_| value.len() >= 2);
            match inner {
                Some(inner) => Ok(inner.replace("''", "'")),
                None => err(line, format!("unterminated string {value}")),
            }
        }
        '&' | '*' | '!' => err(
            line,
            format!("anchors, aliases and tags are not supported: {value}"),
        ),
        '{' | '[' => err(line, format!("flow collections are not supported: {value}")),
        '|' | '>' => err(line, format!("unsupported block scalar header {value}")),
        _ => Ok(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Yaml {
        let mut docs = parse_documents(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0)
    }

    fn s(v: &str) -> Yaml {
        Yaml::Str(v.to_owned())
    }

    #[test]
    fn mappings_sequences_and_scalars() {
        let doc = one(
            "a: 1 # comment\nb:\n  c: \"x # y\"\n  d: 'it''s'\nlist:\n  - one\n  - k: v\n    m: n\n  -\n    - deep\nsame:\n- x\ne: {}\nf: []\n",
        );
        assert_eq!(doc.get("a"), Some(&s("1")));
        assert_eq!(doc.at(&["b", "c"]), Some(&s("x # y")));
        assert_eq!(doc.at(&["b", "d"]), Some(&s("it's")));
        let list = doc.get("list").unwrap().items();
        assert_eq!(list[0], s("one"));
        assert_eq!(list[1].get("k"), Some(&s("v")));
        assert_eq!(list[1].get("m"), Some(&s("n")));
        assert_eq!(list[2].items(), &[s("deep")]);
        assert_eq!(doc.get("same").unwrap().strings(), vec!["x".to_owned()]);
        assert_eq!(doc.get("e"), Some(&Yaml::Map(Vec::new())));
        assert_eq!(doc.get("f"), Some(&Yaml::Seq(Vec::new())));
    }

    #[test]
    fn block_scalars_keep_their_lines_and_comments() {
        let doc =
            one("args:\n  - |\n    if x; then # not a comment\n        y \\\n    fi\n\n  - next\n");
        let args = doc.get("args").unwrap().strings();
        assert_eq!(
            args,
            vec![
                "if x; then # not a comment\n    y \\\nfi\n".to_owned(),
                "next".to_owned()
            ]
        );
    }

    #[test]
    fn documents_are_split() {
        let docs = parse_documents("kind: A\n---\n# only a comment\n---\nkind: B\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].get("kind"), Some(&s("B")));
    }

    #[test]
    fn what_is_outside_the_subset_is_refused_with_its_line() {
        for (text, line) in [
            ("a: &x 1\n", 1),
            ("a: 1\nb: {c: 2}\n", 2),
            ("a: 1\na: 2\n", 2),
            ("a:\n  b: 1\n   c: 2\n", 3),
            ("a: one\n  two\n", 2),
            ("a: \"open\n", 1),
        ] {
            let e = parse_documents(text).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }
}
