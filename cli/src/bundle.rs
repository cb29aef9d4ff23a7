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

/// The most bytes of package text one start or deploy may send (the
/// coordinator's limit, checked here so that the answer says so instead of a
/// broken connection).
pub const MAX_BUNDLE_BYTES: usize = baton_coordinator::api::MAX_BUNDLE_BYTES;

fn too_large(what: &str, bytes: u64) -> CliError {
    CliError::invalid(
        "PACKAGE_TOO_LARGE",
        format!(
            "{what} is {bytes} bytes ({:.1} MiB); a coordinator takes at most {MAX_BUNDLE_BYTES} \
             bytes ({} MiB) of package files per run or deploy: keep data out of the package \
             (pass it as parameters, or as files its tasks read)",
            bytes as f64 / (1024.0 * 1024.0),
            MAX_BUNDLE_BYTES >> 20
        ),
    )
}

fn read(path: &Path) -> Result<String, CliError> {
    // Refused before it is read and parsed: a huge file costs nothing.
    if let Ok(meta) = std::fs::metadata(path)
        && meta.len() > MAX_BUNDLE_BYTES as u64
    {
        return Err(too_large(
            &format!("package file {}", path.display()),
            meta.len(),
        ));
    }
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
    // As the coordinator counts: names and texts of every file.
    let bytes: usize = files.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_BUNDLE_BYTES {
        return Err(too_large(
            &format!("the bundle of {} ({} files)", path.display(), files.len()),
            bytes as u64,
        ));
    }
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

    #[test]
    fn a_package_over_the_limit_is_refused_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        // One file just over the limit, and a bundle over it in two files.
        let big = dir.path().join("big.toml");
        let mut text = String::from("name = 'big'\n[tasks.a]\nnoop = true\n");
        text.push_str(&"#".repeat(MAX_BUNDLE_BYTES));
        std::fs::write(&big, &text).unwrap();
        let e = load(&big).err().expect("refused");
        assert_eq!(e.code, "PACKAGE_TOO_LARGE");
        assert_eq!(e.exit, 2);
        assert!(
            e.message.contains(&format!("{} bytes", text.len())),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("at most 16777216 bytes (16 MiB)"),
            "{}",
            e.message
        );

        let half = "#".repeat(MAX_BUNDLE_BYTES / 2 + 10);
        let parent = dir.path().join("p.toml");
        std::fs::write(
            &parent,
            format!("name = 'p'\n[tasks.c]\nchild = 'c.toml'\n{half}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c.toml"),
            format!("name = 'c'\n[tasks.a]\nnoop = true\n{half}\n"),
        )
        .unwrap();
        let e = load(&parent).err().expect("refused");
        assert_eq!(e.code, "PACKAGE_TOO_LARGE");
        assert!(e.message.contains("(2 files)"), "{}", e.message);
    }

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
