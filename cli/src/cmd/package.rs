//! `baton package`: the catalog's packages and their versions.

use std::path::{Path, PathBuf};

use baton_package::{Package, TaskKind};
use baton_proto as pb;
use serde_json::{Value, json};

use crate::bundle;
use crate::client::CoordinatorOpt;
use crate::cmd::exec::ms_to_utc;
use crate::error::CliError;
use crate::output::{Format, list_json, outln};

#[derive(Debug, clap::Subcommand)]
pub enum PackageCmd {
    /// Deploy a parent package and the child packages it references as a new
    /// version. Unchanged content is not a new version (the latest is shown).
    /// FILE is the parent package; a DIR must hold exactly one parent package
    /// (a file no other file of the directory names as its child). Needs
    /// `modify` on the folder.
    #[command(after_help = "Examples:\n  \
        baton package deploy examples/fanout/parent.toml --folder /etl\n  \
        baton package deploy examples/fanout --folder /etl --name load\n  \
        baton run --package /etl/load -p children=10 --wait")]
    Deploy {
        /// The parent package file, or a directory holding it.
        path: PathBuf,
        /// The catalog folder (create it first with `baton folder create`).
        #[arg(long, default_value = "/")]
        folder: String,
        /// The package's name in the catalog (default: the `name` in the file).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// List the packages you may read, in a folder and below (default: all).
    #[command(after_help = "Examples:\n  \
        baton package list\n  \
        baton package list --folder /etl --name load --output json")]
    List {
        #[arg(long, default_value = "/")]
        folder: String,
        /// Only names containing this text.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Show a package: its versions, the parameters of the latest one
    /// (sensitive defaults are never shown) and its last executions. Needs
    /// `read` on its folder.
    #[command(after_help = "Examples:\n  \
        baton package show /etl/load\n  \
        baton package show /etl/load --output json | jq '.versions[0].parameters'")]
    Show {
        /// FOLDER/NAME, e.g. /etl/load.
        path: String,
        /// How many of the newest executions to show (at most 100).
        #[arg(long, default_value_t = 10)]
        executions: u32,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Rename and/or move a package to another folder. Its versions and the
    /// executions that ran them stay attached. Needs `modify` on both folders.
    #[command(after_help = "Examples:\n  \
        baton package mv /etl/load /etl/load-sales\n  \
        baton package mv /staging/load /prod/load")]
    Mv {
        from: String,
        to: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Remove a package and all its versions. Refused while an execution of it
    /// runs, unless --force (running executions then finish with the version
    /// they pinned). Needs `modify` on its folder.
    #[command(after_help = "Examples:\n  \
        baton package rm /etl/old-load\n  \
        baton package rm /etl/load --force")]
    Rm {
        path: String,
        #[arg(long)]
        force: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
}

/// The parent package of a directory: the only `.toml` file there that no
/// other one names as its child.
fn find_root(dir: &Path) -> Result<PathBuf, CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        CliError::invalid(
            "PACKAGE_UNREADABLE",
            format!("cannot read directory {}: {e}", dir.display()),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut children = std::collections::BTreeSet::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        if let Ok(p) = Package::parse(&f.display().to_string(), &text) {
            for t in p.tasks.values() {
                if let TaskKind::Foreach(fe) = &t.kind {
                    children.insert(dir.join(&fe.child));
                }
            }
        }
    }
    let roots: Vec<&PathBuf> = files.iter().filter(|f| !children.contains(*f)).collect();
    match roots.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(CliError::invalid(
            "USAGE",
            format!(
                "{} holds no parent package (.toml file that no other names as its child)\n  \
                 hint: name the parent file instead of the directory",
                dir.display()
            ),
        )),
        many => Err(CliError::invalid(
            "USAGE",
            format!(
                "{} holds {} possible parent packages ({})\n  hint: name the parent file instead of the directory",
                dir.display(),
                many.len(),
                many.iter()
                    .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn summary_json(p: &pb::PackageSummary) -> Value {
    json!({
        "path": p.path,
        "folder": p.folder,
        "name": p.name,
        "id": p.id,
        "latest_version": p.latest_version,
        "latest_hash": p.latest_hash,
        "description": p.description,
        "created_unix_ms": p.created_unix_ms,
        "updated_unix_ms": p.updated_unix_ms,
    })
}

fn version_json(v: &pb::PackageVersion) -> Value {
    let params: Vec<Value> = v
        .parameters
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "type": p.r#type,
                "default": if p.has_default && !p.sensitive { Value::from(p.default.clone()) } else { Value::Null },
                "has_default": p.has_default,
                "required": p.required,
                "sensitive": p.sensitive,
                "description": p.description,
            })
        })
        .collect();
    json!({
        "version": v.version,
        "hash": v.hash,
        "root": v.root,
        "files": v.files,
        "package_name": v.package_name,
        "bytes": v.bytes,
        "deployed_unix_ms": v.deployed_unix_ms,
        "deployed_by": v.deployed_by,
        "parameters": params,
    })
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn print_detail(d: &pb::PackageDetail) {
    let Some(p) = &d.package else { return };
    outln!("package {}  (id {})", p.path, p.id);
    if !p.description.is_empty() {
        outln!("  {}", p.description);
    }
    outln!(
        "latest: version {}  {}",
        p.latest_version,
        short(&p.latest_hash)
    );
    outln!(
        "\n{:<8} {:<12}  {:<20}  {:<16} FILES",
        "VERSION",
        "HASH",
        "DEPLOYED",
        "BY"
    );
    for v in &d.versions {
        outln!(
            "{:<8} {:<12}  {:<20}  {:<16} {}",
            v.version,
            short(&v.hash),
            ms_to_utc(v.deployed_unix_ms),
            v.deployed_by,
            v.files.len()
        );
    }
    if let Some(latest) = d.versions.first() {
        outln!("\nparameters of version {}:", latest.version);
        if latest.parameters.is_empty() {
            outln!("  (none)");
        } else {
            outln!(
                "{:<20} {:<7} {:<20} {:<9} SENSITIVE",
                "NAME",
                "TYPE",
                "DEFAULT",
                "REQUIRED"
            );
            for prm in &latest.parameters {
                let default = match (prm.has_default, prm.sensitive) {
                    (false, _) => "-".to_string(),
                    (true, true) => "(hidden)".to_string(),
                    (true, false) => prm.default.clone(),
                };
                let yes = |b: bool| if b { "yes" } else { "no" };
                outln!(
                    "{:<20} {:<7} {:<20} {:<9} {}",
                    prm.name,
                    prm.r#type,
                    default,
                    yes(prm.required),
                    yes(prm.sensitive)
                );
            }
        }
    }
    outln!("\nexecutions (newest first):");
    if d.executions.is_empty() {
        outln!("  (none)");
        return;
    }
    outln!(
        "{:<34} {:>7}  {:<10} {:<20}  FOLDER",
        "EXECUTION",
        "VERSION",
        "STATE",
        "STARTED"
    );
    for e in &d.executions {
        outln!(
            "{:<34} {:>7}  {:<10} {:<20}  {}",
            e.execution_id,
            e.version,
            e.state,
            ms_to_utc(e.created_unix_ms),
            e.folder
        );
    }
}

pub async fn run(cmd: PackageCmd) -> Result<u8, CliError> {
    match cmd {
        PackageCmd::Deploy {
            path,
            folder,
            name,
            output,
            coordinator,
        } => {
            let file = if path.is_dir() {
                find_root(&path)?
            } else {
                path
            };
            let b = bundle::load(&file)?;
            let mut client = coordinator.connect().await?;
            let r = client
                .deploy_package(pb::DeployPackageRequest {
                    bundle: Some(pb::PackageBundle {
                        root: b.root,
                        files: b.files.into_iter().collect(),
                    }),
                    folder,
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            let (Some(p), Some(v)) = (r.package, r.version) else {
                return Err(CliError::other(
                    "PROTOCOL",
                    "the coordinator sent no package",
                ));
            };
            match output {
                Format::Json => {
                    let mut out = version_json(&v);
                    out["path"] = json!(p.path);
                    out["id"] = json!(p.id);
                    out["unchanged"] = json!(r.unchanged);
                    outln!("{out}");
                }
                Format::Human if r.unchanged => outln!(
                    "unchanged: {} is already version {} ({})",
                    p.path,
                    v.version,
                    short(&v.hash)
                ),
                Format::Human => outln!(
                    "deployed {} version {} ({}, {} file(s))",
                    p.path,
                    v.version,
                    short(&v.hash),
                    v.files.len()
                ),
            }
        }
        PackageCmd::List {
            folder,
            name,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let list = client
                .list_packages(pb::ListPackagesRequest {
                    folder,
                    name_contains: name.unwrap_or_default(),
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner()
                .packages;
            match output {
                Format::Json => {
                    outln!(
                        "{}",
                        list_json(list.iter().map(summary_json).collect(), None)
                    )
                }
                Format::Human => {
                    outln!(
                        "{:<40} {:>7}  {:<12}  UPDATED",
                        "PACKAGE",
                        "VERSION",
                        "HASH"
                    );
                    for p in &list {
                        outln!(
                            "{:<40} {:>7}  {:<12}  {}",
                            p.path,
                            p.latest_version,
                            short(&p.latest_hash),
                            ms_to_utc(p.updated_unix_ms)
                        );
                    }
                }
            }
        }
        PackageCmd::Show {
            path,
            executions,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let d = client
                .get_package(pb::GetPackageRequest { path, executions })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            match output {
                Format::Json => {
                    let runs: Vec<Value> = d
                        .executions
                        .iter()
                        .map(|e| {
                            json!({
                                "execution_id": e.execution_id,
                                "version": e.version,
                                "state": e.state,
                                "created_unix_ms": e.created_unix_ms,
                                "finished_unix_ms": e.finished_unix_ms,
                                "folder": e.folder,
                            })
                        })
                        .collect();
                    let out = json!({
                        "package": d.package.as_ref().map(summary_json),
                        "versions": d.versions.iter().map(version_json).collect::<Vec<_>>(),
                        "executions": runs,
                    });
                    outln!("{out}");
                }
                Format::Human => print_detail(&d),
            }
        }
        PackageCmd::Mv {
            from,
            to,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let p = client
                .move_package(pb::MovePackageRequest {
                    from: from.clone(),
                    to,
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner()
                .package
                .unwrap_or_default();
            match output {
                Format::Json => {
                    outln!("{}", json!({"from": from, "to": p.path, "id": p.id}))
                }
                Format::Human => outln!("moved {from} to {}", p.path),
            }
        }
        PackageCmd::Rm {
            path,
            force,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let r = client
                .delete_package(pb::DeletePackageRequest {
                    path: path.clone(),
                    force,
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            match output {
                Format::Json => outln!(
                    "{}",
                    json!({"removed": path, "versions": r.versions, "running_executions": r.running_executions})
                ),
                Format::Human => {
                    outln!("removed {path} ({} version(s))", r.versions);
                    if !r.running_executions.is_empty() {
                        eprintln!(
                            "{} execution(s) of it still run with the version they pinned: {}",
                            r.running_executions.len(),
                            r.running_executions.join(", ")
                        );
                    }
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_names_its_parent_by_elimination() {
        let dir = tempfile::tempdir().unwrap();
        let child = "name='c'\n[tasks.run]\nexec=['true']\n";
        let parent = "name='p'\n[tasks.fan]\nforeach={items=['a']}\nchild='child.toml'\n";
        std::fs::write(dir.path().join("child.toml"), child).unwrap();
        std::fs::write(dir.path().join("parent.toml"), parent).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a package").unwrap();
        assert_eq!(
            find_root(dir.path()).unwrap(),
            dir.path().join("parent.toml")
        );
        std::fs::write(dir.path().join("other.toml"), parent).unwrap();
        let e = find_root(dir.path()).unwrap_err();
        assert_eq!(e.code, "USAGE");
        assert!(
            e.message.contains("2 possible parent packages"),
            "{}",
            e.message
        );
    }
}
