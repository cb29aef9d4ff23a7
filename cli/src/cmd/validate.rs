//! `baton validate`: check package files without running them.
//!
//! Every finding is printed as `error[CODE]: FILE:LINE:COL: message` (a file's
//! parse and validation errors all at once — fields the schema does not know
//! in several tasks, unknown references, bad expressions, cycles — then those
//! of the child packages its tasks name by file, the tasks with errors aside);
//! the exit code is that of the first finding (2 for an invalid package). A
//! valid file prints `ok FILE (N file(s))` as before.

use std::path::{Path, PathBuf};

use baton_package::Package;

use crate::bundle;
use crate::error::CliError;
use crate::output::{Format, errln, outln};

/// Check package files (and the child packages they reference) without running anything.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  baton validate examples/fanout/parent.toml\n  baton validate examples/etl/parent.toml --output json   # one JSON line per file"
)]
pub struct ValidateArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// json: one line per file, `{"file", "ok", "files", "errors": [{"code", "message"}]}`.
    #[arg(long, value_enum, default_value = "human")]
    pub output: Format,
}

pub fn run(args: ValidateArgs) -> Result<u8, CliError> {
    let mut first_error: Option<CliError> = None;
    for f in &args.files {
        let mut findings = check_file(f);
        let mut bundled = 0;
        if findings.is_empty() {
            match bundle::load(f) {
                Ok(b) => bundled = b.files.len(),
                Err(e) => findings.push(e),
            }
        }
        match args.output {
            Format::Json => outln!(
                "{}",
                serde_json::json!({
                    "file": f.display().to_string(),
                    "ok": findings.is_empty(),
                    "files": bundled,
                    "errors": findings
                        .iter()
                        .map(|e| serde_json::json!({"code": e.code, "message": e.message}))
                        .collect::<Vec<_>>(),
                })
            ),
            Format::Human if findings.is_empty() => {
                outln!("ok {} ({bundled} file(s))", f.display());
            }
            Format::Human => {
                for e in &findings {
                    errln!("error[{}]: {}", e.code, e.message);
                }
            }
        }
        if let Some(e) = findings.into_iter().next() {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Ok(e.exit),
        None => Ok(0),
    }
}

/// Every finding in `path` and the children it names by file.
fn check_file(path: &Path) -> Vec<CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return vec![CliError::invalid(
                "PACKAGE_UNREADABLE",
                format!("cannot read package file {}: {e}", path.display()),
            )];
        }
    };
    // With findings, the tasks that could be built are checked on: the
    // child packages they name too (every stage that can run).
    let (parent, errors) = Package::check_partial(&path.display().to_string(), &text);
    let mut out: Vec<CliError> = errors.into_iter().map(CliError::from).collect();
    let Some(parent) = parent else {
        return out;
    };
    if let Err(e) = parent.check_sensitive_use() {
        out.push(e.into());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut seen = std::collections::BTreeSet::new();
    for (task, child) in bundle::child_files(&parent) {
        let child_path = dir.join(child);
        let child_text = match std::fs::read_to_string(&child_path) {
            Ok(t) => t,
            Err(e) => {
                out.push(CliError::invalid(
                    "PACKAGE_UNREADABLE",
                    format!(
                        "{}: task '{task}' names child package {}, which cannot be read: {e}",
                        path.display(),
                        child_path.display()
                    ),
                ));
                continue;
            }
        };
        match Package::check(&child_path.display().to_string(), &child_text) {
            Ok(c) => {
                if seen.insert(child)
                    && let Err(e) = c.check_sensitive_use()
                {
                    out.push(e.into());
                }
                if let Err(e) = bundle::check_flow(&parent, task, &c) {
                    out.push(e);
                }
            }
            Err(errors) if seen.insert(child) => out.extend(errors.into_iter().map(CliError::from)),
            Err(_) => {}
        }
    }
    out
}
