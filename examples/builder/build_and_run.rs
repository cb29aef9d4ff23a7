//! Build a package in Rust, save it as TOML, load it back, and run it.
//!
//! ```sh
//! cargo run -p baton-package --example build_and_run -- OUT_DIR
//! ```
//!
//! It builds an ETL-like pair — a parent that lists regions as rows, fans out
//! one child per row, and sums the children's outputs in a last task — checks
//! that what it saved loads back equal, then runs `baton run OUT_DIR/parent.toml
//! --wait`: against the coordinator in `BATON_COORDINATOR` (with the client
//! identity of `BATON_TLS_DIR`), or with `--local` when none is set. The
//! `baton` binary is `BATON_BIN`, or `baton` on the `PATH`. The exit code is
//! that of `baton run` (0 when the execution succeeded).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use baton_package::{
    ForeachOver, MaxFailures, On, Package, PackageBuilder, ParamBuilder, ParamType, RetryPolicy,
    TaskBuilder,
};

/// The child: loads one region, says how many rows it loaded.
fn child() -> Result<Package, String> {
    PackageBuilder::new("load-region")
        .description("loads one region")
        .param(ParamBuilder::new("region", ParamType::String).required())
        .param(ParamBuilder::new("size", ParamType::Int).required())
        .task(
            TaskBuilder::exec(
                "load",
                [
                    "sh",
                    "-c",
                    "echo \"loading $BATON_PARAM_REGION\"; echo \"rows=$BATON_PARAM_SIZE\" >> \"$BATON_OUTPUT\"",
                ],
            )
            .timeout_s(60),
        )
        .build()
        .map_err(|errors| format!("child: {errors:?}"))
}

/// The parent: regions as rows → one child per row → a summary of their outputs.
fn parent() -> Result<Package, String> {
    PackageBuilder::new("regions")
        .description("built with the Rust builder API")
        .param(ParamBuilder::new("day", ParamType::String).default("today"))
        .task(TaskBuilder::script(
            "list",
            "printf '{\"region\":\"eu\",\"size\":3}\\n{\"region\":\"us\",\"size\":5}\\n' >> \"$BATON_ROWS\"",
        ))
        .task(
            TaskBuilder::foreach("load", ForeachOver::Rows("list".into()), "load.toml")
                .param("region", "${item.region}")
                .param("size", "${item.size}")
                .parallelism(8)
                .max_failures(MaxFailures::Count(0))
                .retry(RetryPolicy {
                    attempts: 2,
                    ..RetryPolicy::default()
                })
                .after("list"),
        )
        .task(
            TaskBuilder::exec(
                "summary",
                [
                    "sh",
                    "-c",
                    "echo \"loaded $0 rows for $1\"; echo total=$0 >> \"$BATON_OUTPUT\"",
                    "${tasks.load.outputs.rows.sum}",
                    "${params.day}",
                ],
            )
            .after("load"),
        )
        .task(TaskBuilder::noop("alert").after_on("load", On::Failure))
        .build()
        .map_err(|errors| format!("parent: {errors:?}"))
}

/// Writes `pkg` to `dir/file` and checks it loads back equal.
fn save(dir: &Path, file: &str, pkg: &Package) -> Result<PathBuf, String> {
    let path = dir.join(file);
    let text = pkg.to_toml();
    std::fs::write(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    let back = Package::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    if &back != pkg {
        return Err(format!("{} does not load back equal", path.display()));
    }
    Ok(path)
}

fn main() -> ExitCode {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "baton-built".into()),
    );
    let built = (|| -> Result<PathBuf, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        save(&dir, "load.toml", &child()?)?;
        save(&dir, "parent.toml", &parent()?)
    })();
    let parent = match built {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    println!("saved {} and load.toml", parent.display());
    let baton = std::env::var_os("BATON_BIN").unwrap_or_else(|| "baton".into());
    let mut run = Command::new(&baton);
    run.arg("run")
        .arg(&parent)
        .args(["--wait", "--output", "json"]);
    if std::env::var_os("BATON_COORDINATOR").is_none() {
        run.arg("--local");
    }
    match run.status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", Path::new(&baton).display());
            ExitCode::from(3)
        }
    }
}
