//! `baton role` and `baton whoami`: permissions per folder.

use baton_proto as pb;
use serde_json::json;

use crate::client::CoordinatorOpt;
use crate::error::CliError;
use crate::output::{Format, list_json, outln};

#[derive(Debug, clap::Subcommand)]
pub enum RoleCmd {
    /// Give PRINCIPAL a permission on FOLDER and everything below it.
    /// Permissions: read (see executions), run (start only the folder's
    /// catalog packages, and cancel; implies read), execute (start anything,
    /// ad hoc files included, and cancel; implies run), modify (change
    /// packages; implies read), manage (everything, including granting).
    /// Needs `manage` on FOLDER.
    #[command(after_help = "Examples:\n  \
        baton role grant alice execute /etl\n  \
        baton role grant bob run /etl/daily     # catalog packages only\n  \
        baton role grant ops manage /\n  \
        baton role list /etl")]
    Grant {
        principal: String,
        permission: String,
        folder: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Take a permission back. Needs `manage` on FOLDER.
    Revoke {
        principal: String,
        permission: String,
        folder: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Grants on FOLDER and below (default: all). Needs `read` on FOLDER.
    List {
        #[arg(default_value = "/")]
        folder: String,
        /// Only this principal's grants.
        #[arg(long)]
        principal: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
}

fn print_grants(grants: &[pb::RoleGrant], output: Format) {
    match output {
        Format::Json => {
            let rows: Vec<_> = grants
                .iter()
                .map(|g| json!({"principal": g.principal, "permission": g.permission, "folder": g.folder}))
                .collect();
            outln!("{}", list_json(rows, None));
        }
        Format::Human => {
            outln!("{:<20} {:<10} FOLDER", "PRINCIPAL", "PERMISSION");
            for g in grants {
                outln!("{:<20} {:<10} {}", g.principal, g.permission, g.folder);
            }
        }
    }
}

pub async fn run(cmd: RoleCmd) -> Result<u8, CliError> {
    match cmd {
        RoleCmd::Grant {
            principal,
            permission,
            folder,
            output,
            coordinator,
        } => {
            let req = pb::RoleRequest {
                principal,
                permission,
                folder,
            };
            let mut client = coordinator.connect().await?;
            client
                .grant_role(req.clone())
                .await
                .map_err(|s| coordinator.status(s))?;
            print_change("granted", &req, output);
            Ok(0)
        }
        RoleCmd::Revoke {
            principal,
            permission,
            folder,
            output,
            coordinator,
        } => {
            let req = pb::RoleRequest {
                principal,
                permission,
                folder,
            };
            let mut client = coordinator.connect().await?;
            client
                .revoke_role(req.clone())
                .await
                .map_err(|s| coordinator.status(s))?;
            print_change("revoked", &req, output);
            Ok(0)
        }
        RoleCmd::List {
            folder,
            principal,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let grants = client
                .list_roles(pb::ListRolesRequest {
                    folder,
                    principal: principal.unwrap_or_default(),
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner()
                .grants;
            print_grants(&grants, output);
            Ok(0)
        }
    }
}

/// `baton whoami`.
#[derive(Debug, clap::Args)]
pub struct WhoAmIArgs {
    #[arg(long, value_enum, default_value = "human")]
    output: Format,
    #[command(flatten)]
    coordinator: CoordinatorOpt,
}

pub async fn whoami(args: WhoAmIArgs) -> Result<u8, CliError> {
    let mut client = args.coordinator.connect().await?;
    let me = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(|s| args.coordinator.status(s))?
        .into_inner();
    match args.output {
        Format::Json => {
            let grants: Vec<_> = me
                .grants
                .iter()
                .map(|g| json!({"permission": g.permission, "folder": g.folder}))
                .collect();
            outln!(
                "{}",
                json!({"principal": me.principal, "method": me.method, "grants": grants})
            );
        }
        Format::Human => {
            outln!("{} (by {})", me.principal, me.method);
            print_grants(&me.grants, Format::Human);
        }
    }
    Ok(0)
}

/// What `role grant` and `role revoke` print.
fn print_change(done: &str, req: &pb::RoleRequest, output: Format) {
    match output {
        Format::Json => outln!(
            "{}",
            serde_json::json!({"principal": req.principal, "permission": req.permission,
                               "folder": req.folder, "change": done})
        ),
        Format::Human => outln!(
            "{done} {} {} on {}",
            req.principal,
            req.permission,
            req.folder
        ),
    }
}
