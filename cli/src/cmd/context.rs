//! `baton context add|use|list|show|rm`: named connection settings kept in
//! [`crate::contexts`].

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::contexts::{self, Context, Store};
use crate::error::CliError;
use crate::output::{Format, list_json, outln};

#[derive(Debug, clap::Subcommand)]
pub enum ContextCmd {
    /// Add (or replace) a context: where a coordinator is and who you are there.
    #[command(
        after_help = "Example:\n  baton context add prod --coordinator https://10.0.0.5:7400 --tls-dir ~/baton/prod-admin\n  baton context use prod"
    )]
    Add {
        name: String,
        /// Coordinator URL (https://HOST:PORT), or the URLs of every coordinator of a
        /// highly available cluster separated by commas (https://c1:7400,https://c2:7400):
        /// calls then find the leader themselves.
        #[arg(long)]
        coordinator: String,
        /// Directory with the client identity: ca.pem, tls.pem, tls.key.
        #[arg(long = "tls-dir")]
        tls_dir: PathBuf,
        /// File holding an API token (`baton token create --api NAME`), used
        /// instead of the client certificate. The token is not copied.
        #[arg(long = "token-file")]
        token_file: Option<PathBuf>,
        /// Make it the current context too.
        #[arg(long = "use")]
        make_current: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
    /// Make a context the current one.
    Use {
        name: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
    /// List the contexts; `*` marks the current one.
    List {
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
    /// Show a context (default: the current one) and where contexts are kept.
    Show {
        name: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
    /// Remove a context (if it was the current one, none is current then).
    Rm {
        name: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
}

fn absolute(p: PathBuf) -> Result<PathBuf, CliError> {
    std::path::absolute(&p)
        .map_err(|e| CliError::invalid("USAGE", format!("path {}: {e}", p.display())))
}

fn context_json(name: &str, c: &Context, current: bool) -> Value {
    json!({
        "name": name,
        "current": current,
        "coordinator": c.coordinator,
        "tls_dir": c.tls_dir,
        "token_file": c.token_file,
    })
}

pub fn run(cmd: ContextCmd) -> Result<u8, CliError> {
    let env = |k: &str| std::env::var_os(k);
    let path = contexts::store_path(&env)?;
    let mut store = Store::load(&path)?;
    match cmd {
        ContextCmd::Add {
            name,
            coordinator,
            tls_dir,
            token_file,
            make_current,
            output,
        } => {
            contexts::check_name(&name)?;
            baton_proto::failover::parse_urls(&coordinator)
                .map_err(|e| CliError::invalid("USAGE", e))?;
            let ctx = Context {
                coordinator,
                tls_dir: absolute(tls_dir)?,
                token_file: token_file.map(absolute).transpose()?,
            };
            if !ctx.tls_dir.join("ca.pem").exists() {
                eprintln!(
                    "warning: {} has no ca.pem yet; calls with this context fail until it does",
                    ctx.tls_dir.display()
                );
            }
            let replaced = store.contexts.insert(name.clone(), ctx.clone()).is_some();
            if make_current {
                store.current = Some(name.clone());
            }
            store.save(&path)?;
            let current = store.current.as_deref() == Some(name.as_str());
            match output {
                Format::Json => {
                    let mut v = context_json(&name, &ctx, current);
                    v["replaced"] = json!(replaced);
                    outln!("{v}");
                }
                Format::Human => outln!(
                    "context {name}: {}{}",
                    if replaced { "replaced" } else { "added" },
                    if current { " (current)" } else { "" }
                ),
            }
        }
        ContextCmd::Use { name, output } => {
            store.get(&name, &path)?;
            store.current = Some(name.clone());
            store.save(&path)?;
            match output {
                Format::Json => outln!("{}", json!({ "current": name })),
                Format::Human => outln!("current context: {name}"),
            }
        }
        ContextCmd::List { output } => {
            let cur = store.current.as_deref();
            match output {
                Format::Json => {
                    let items = store
                        .contexts
                        .iter()
                        .map(|(n, c)| context_json(n, c, cur == Some(n.as_str())))
                        .collect();
                    outln!("{}", list_json(items, None));
                }
                Format::Human => {
                    outln!(
                        "{:<1} {:<16} {:<32} {:<36} TOKEN FILE",
                        "",
                        "NAME",
                        "COORDINATOR",
                        "TLS DIR"
                    );
                    for (n, c) in &store.contexts {
                        outln!(
                            "{:<1} {:<16} {:<32} {:<36} {}",
                            if cur == Some(n.as_str()) { "*" } else { "" },
                            n,
                            c.coordinator,
                            c.tls_dir.display(),
                            c.token_file
                                .as_ref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
        }
        ContextCmd::Show { name, output } => {
            let name = match name.or_else(|| store.current.clone()) {
                Some(n) => n,
                None => {
                    return Err(CliError::invalid(
                        "CONTEXT_NOT_SET",
                        format!(
                            "no current context (in {})\n  hint: `baton context use NAME`, or name one: `baton context show NAME`",
                            path.display()
                        ),
                    ));
                }
            };
            let ctx = store.get(&name, &path)?;
            let current = store.current.as_deref() == Some(name.as_str());
            match output {
                Format::Json => {
                    let mut v = context_json(&name, ctx, current);
                    v["store"] = json!(path);
                    outln!("{v}");
                }
                Format::Human => {
                    outln!("context {name}{}", if current { " (current)" } else { "" });
                    outln!("  coordinator  {}", ctx.coordinator);
                    outln!("  tls-dir      {}", ctx.tls_dir.display());
                    if let Some(f) = &ctx.token_file {
                        outln!("  token-file   {}", f.display());
                    }
                    outln!("  stored in    {}", path.display());
                }
            }
        }
        ContextCmd::Rm { name, output } => {
            store.get(&name, &path)?;
            store.contexts.remove(&name);
            let was_current = store.current.as_deref() == Some(name.as_str());
            if was_current {
                store.current = None;
            }
            store.save(&path)?;
            match output {
                Format::Json => {
                    outln!("{}", json!({ "removed": name, "was_current": was_current }))
                }
                Format::Human => outln!(
                    "context {name}: removed{}",
                    if was_current {
                        " (no context is current now)"
                    } else {
                        ""
                    }
                ),
            }
        }
    }
    Ok(0)
}
