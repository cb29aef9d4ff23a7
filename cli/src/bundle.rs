//! Reads a parent package file and the child packages it references into a
//! bundle for `StartExecution`, validating each on the way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_package::{Package, TaskKind};

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
    let mut files = BTreeMap::new();
    for task in parent.tasks.values() {
        if let TaskKind::Foreach(fe) = &task.kind {
            let child_path = dir.join(&fe.child);
            let child_text = match files.get(&fe.child) {
                Some(text) => String::clone(text),
                None => read(&child_path)?,
            };
            let child = Package::parse(&child_path.display().to_string(), &child_text)?;
            child.check_sensitive_use()?;
            fe.check_sensitive_flow(&task.name, &parent, &child)?;
            files.insert(fe.child.clone(), child_text);
        }
    }
    files.insert(root.clone(), text);
    Ok(Bundle { root, files })
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
