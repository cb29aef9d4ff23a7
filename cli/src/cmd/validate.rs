//! `baton validate`: check package files without running them.

use std::path::PathBuf;

use crate::bundle;
use crate::error::CliError;

/// Check package files (and the child packages they reference) without running anything.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  baton validate examples/fanout/parent.toml")]
pub struct ValidateArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn run(args: ValidateArgs) -> Result<u8, CliError> {
    let mut first_error = None;
    for f in &args.files {
        match bundle::load(f) {
            Ok(b) => println!("ok {} ({} file(s))", f.display(), b.files.len()),
            Err(e) => {
                eprintln!("error[{}]: {}", e.code, e.message);
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Ok(e.exit),
        None => Ok(0),
    }
}
