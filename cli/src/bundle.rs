//! Reads a parent package file and the child packages it references into a
//! bundle for `StartExecution`, validating each on the way. Children named by
//! `foreach` and `child` tasks as files are bundled; `catalog:` ones are not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_package::{ChildRef, Package, TaskKind};

use crate::error::CliError;

/// A parent file and its children, keyed as the parent names them.
pub struct Bundle {
    pub root: String,
    pub files: BTreeMap<String, String>,
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| {
        CliError::invalid(
            "PACKAGE_UNREADABLE",
            format!("cannot read package file {}: {e}", path.display()),
        )
    })
}

/// The child packages a package names by file (`foreach` and `child` tasks),
/// as `(task, path relative to the package's file)`. Catalog references
/// (`catalog:/folder/name`) are resolved by the coordinator, not bundled.
pub fn child_files(p: &Package) -> Vec<(&str, &str)> {
    p.tasks
        .values()
        .filter_map(|t| {
            let child = match &t.kind {
                TaskKind::Foreach(fe) => &fe.child,
                TaskKind::Child(c) => &c.child,
                _ => return None,
            };
            match ChildRef::parse(child) {
                ChildRef::File(_) => Some((t.name.as_str(), child.as_str())),
                ChildRef::Catalog(_) => None,
            }
        })
        .collect()
}

/// Refuses a sensitive value of `parent` flowing into a child parameter that
/// `child` does not declare sensitive, for the task `task` of `parent`.
pub fn check_flow(parent: &Package, task: &str, child: &Package) -> Result<(), CliError> {
    match &parent.tasks[task].kind {
        TaskKind::Foreach(fe) => fe.check_sensitive_flow(task, parent, child)?,
        TaskKind::Child(c) => c.check_sensitive_flow(task, parent, child)?,
        _ => {}
    }
    Ok(())
}

/// Loads `path` and every child it references (relative to its directory).
pub fn load(path: &Path) -> Result<Bundle, CliError> {
    let text = read(path)?;
    let origin = path.display().to_string();
    let parent = Package::parse(&origin, &text)?;
    parent.check_sensitive_use()?;
    let root = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "package.toml".to_string());
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // Children of children too (nested fan-out), every path relative to the
    // root's directory; each file is read once.
    let mut files = BTreeMap::new();
    let mut parsed: BTreeMap<String, Package> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([parent.clone()]);
    while let Some(pkg) = queue.pop_front() {
        for (task, child_name) in child_files(&pkg) {
            if let Some(child) = parsed.get(child_name) {
                check_flow(&pkg, task, child)?;
                continue;
            }
            let child_path = dir.join(child_name);
            let child_text = if child_name == root {
                text.clone()
            } else {
                read(&child_path)?
            };
            let child = Package::parse(&child_path.display().to_string(), &child_text)?;
            child.check_sensitive_use()?;
            check_flow(&pkg, task, &child)?;
            files.insert(child_name.to_string(), child_text);
            parsed.insert(child_name.to_string(), child.clone());
            queue.push_back(child);
        }
    }
    files.insert(root.clone(), text);
    Ok(Bundle { root, files })
}

/// Reads `--params FILE.json`: a JSON object of parameter names to values.
/// Strings are taken as they are, numbers and booleans as their JSON text,
/// arrays (for `list` parameters) as JSON text. Messages never quote a value.
pub fn params_file(path: &Path) -> Result<BTreeMap<String, String>, CliError> {
    let text = read(path)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        CliError::invalid(
            "USAGE",
            format!(
                "{}: not JSON (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            ),
        )
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(CliError::invalid(
            "USAGE",
            format!(
                "{}: must be a JSON object of parameter names to values",
                path.display()
            ),
        ));
    };
    map.into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(_)
                | serde_json::Value::Bool(_)
                | serde_json::Value::Array(_) => v.to_string(),
                serde_json::Value::Null | serde_json::Value::Object(_) => {
                    return Err(CliError::invalid(
                        "USAGE",
                        format!(
                            "{}: parameter '{k}' must be a string, number, boolean or list",
                            path.display()
                        ),
                    ));
                }
            };
            Ok((k, text))
        })
        .collect()
}

/// Parses `-p key=value` pairs.
pub fn params(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    // Messages never quote a value: it may be sensitive.
    for (i, p) in pairs.iter().enumerate() {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            CliError::invalid(
                "USAGE",
                format!("parameter #{} must be written name=value", i + 1),
            )
        })?;
        if k.trim().is_empty() {
            return Err(CliError::invalid(
                "USAGE",
                format!("parameter #{} has no name (write name=value)", i + 1),
            ));
        }
        if out.insert(k.trim().to_string(), v.to_string()).is_some() {
            return Err(CliError::invalid(
                "USAGE",
                format!("parameter '{k}' given twice"),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_params_file_gives_strings_numbers_booleans_and_lists() {
        let (_d, path) = file(r#"{"day": "mon", "n": 8, "dry": true, "regions": ["eu", "us"]}"#);
        let p = params_file(&path).unwrap();
        assert_eq!(p["day"], "mon");
        assert_eq!(p["n"], "8");
        assert_eq!(p["dry"], "true");
        assert_eq!(p["regions"], r#"["eu","us"]"#);
    }

    #[test]
    fn a_bad_params_file_is_a_usage_error_that_quotes_no_value() {
        for bad in [
            "[1, 2]",
            "{\"pw\": {\"x\": \"s3cret\"}}",
            "{nope",
            "{\"a\": null}",
        ] {
            let (_d, path) = file(bad);
            let e = params_file(&path).unwrap_err();
            assert_eq!(e.code, "USAGE", "{bad}");
            assert!(!e.message.contains("s3cret"), "{}", e.message);
        }
    }
}
