//! `baton folder`: the catalog's folders.

use baton_proto as pb;
use serde_json::json;

use crate::client::CoordinatorOpt;
use crate::cmd::exec::ms_to_utc;
use crate::error::CliError;
use crate::output::{Format, list_json, outln};

#[derive(Debug, clap::Subcommand)]
pub enum FolderCmd {
    /// Create a folder. Its parent must exist (or use --parents). Needs `modify`
    /// on the folder (inherited from a parent).
    #[command(after_help = "Examples:\n  \
        baton folder create /etl\n  \
        baton folder create /etl/daily/sales --parents")]
    Create {
        path: String,
        /// Create missing parent folders too.
        #[arg(long, short = 'p')]
        parents: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// List folders below FOLDER (default: all) that you may read, with how
    /// many packages and sub-folders each holds.
    #[command(after_help = "Examples:\n  \
        baton folder list\n  \
        baton folder list /etl --output json")]
    List {
        #[arg(default_value = "/")]
        folder: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Rename or move a folder with everything in it. Grants stay on their
    /// paths: grant again on the new path. Needs `modify` on both paths.
    #[command(after_help = "Examples:\n  \
        baton folder rename /etl/dayly /etl/daily\n  \
        baton folder rename /staging/etl /prod/etl")]
    Rename {
        from: String,
        to: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Remove an empty folder. Needs `modify` on it.
    #[command(after_help = "Example:\n  baton folder rm /etl/old")]
    Rm {
        path: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
}

pub async fn run(cmd: FolderCmd) -> Result<u8, CliError> {
    match cmd {
        FolderCmd::Create {
            path,
            parents,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let created = client
                .create_folder(pb::CreateFolderRequest { path, parents })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner()
                .created;
            match output {
                Format::Json => outln!("{}", json!({ "created": created })),
                Format::Human => {
                    for f in created {
                        outln!("created folder {f}");
                    }
                }
            }
        }
        FolderCmd::List {
            folder,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let folders = client
                .list_folders(pb::ListFoldersRequest { under: folder })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner()
                .folders;
            match output {
                Format::Json => {
                    let rows: Vec<_> = folders
                        .iter()
                        .map(|f| {
                            json!({
                                "path": f.path,
                                "packages": f.packages,
                                "folders": f.folders,
                                "created_unix_ms": f.created_unix_ms,
                                "created_by": f.created_by,
                            })
                        })
                        .collect();
                    outln!("{}", list_json(rows, None));
                }
                Format::Human => {
                    outln!(
                        "{:<40} {:>8} {:>8}  {:<20}  CREATED BY",
                        "FOLDER",
                        "PACKAGES",
                        "FOLDERS",
                        "CREATED"
                    );
                    for f in &folders {
                        outln!(
                            "{:<40} {:>8} {:>8}  {:<20}  {}",
                            f.path,
                            f.packages,
                            f.folders,
                            ms_to_utc(f.created_unix_ms),
                            f.created_by
                        );
                    }
                }
            }
        }
        FolderCmd::Rename {
            from,
            to,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let moved = client
                .rename_folder(pb::RenameFolderRequest {
                    from: from.clone(),
                    to: to.clone(),
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            match output {
                Format::Json => outln!(
                    "{}",
                    json!({"from": from, "to": to, "folders": moved.folders, "packages": moved.packages})
                ),
                Format::Human => outln!(
                    "renamed {from} to {to} ({} folder(s), {} package(s) moved)",
                    moved.folders,
                    moved.packages
                ),
            }
        }
        FolderCmd::Rm {
            path,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            client
                .delete_folder(pb::DeleteFolderRequest { path: path.clone() })
                .await
                .map_err(|s| coordinator.status(s))?;
            match output {
                Format::Json => outln!("{}", json!({ "removed": path })),
                Format::Human => outln!("removed folder {path}"),
            }
        }
    }
    Ok(0)
}
