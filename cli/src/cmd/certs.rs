//! `baton certs`: the private CA and the certificates of coordinator, agents and clients.

use std::path::PathBuf;

use baton_coordinator::pki::{self, Identity};

use crate::error::CliError;
use crate::output::{Format, outln};

#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {
    /// Create a CA, the coordinator's certificate and an admin client identity in DIR
    /// (what `baton coordinator` does by itself on first start).
    #[command(after_help = "Example:\n  baton certs init --dir baton-data/tls")]
    Init {
        #[arg(long, default_value = "baton-data/tls")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
    /// Issue a certificate for an agent or a client, signed by the CA in --ca-dir.
    #[command(
        after_help = "Examples:\n  baton certs issue --agent etl-07 --out /var/lib/baton/agent/tls\n  baton certs issue --client alice --out ~/.baton/tls"
    )]
    Issue {
        /// Directory of the CA (a coordinator's TLS dir).
        #[arg(long, default_value = "baton-data/tls")]
        ca_dir: PathBuf,
        /// Issue for this agent (its --name).
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        agent: Option<String>,
        /// Issue for this client principal.
        #[arg(long)]
        client: Option<String>,
        /// Where to write ca.pem, tls.pem, tls.key.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. 24h or 30d. An agent renews its own certificate before
        /// it expires; a client certificate must be issued again.
        #[arg(long, default_value = "24h", value_parser = crate::cmd::duration_arg::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
    },
    /// Refuse a client certificate from now on (agents: `baton agents revoke`).
    /// Give the certificate file or its SHA-256 fingerprint. Needs `manage` on /.
    #[command(
        after_help = "Examples:\n  baton certs revoke --cert ~/.baton/tls/tls.pem\n  baton certs revoke --fingerprint 3f2a…"
    )]
    Revoke {
        /// The certificate (PEM) to revoke.
        #[arg(
            long,
            conflicts_with = "fingerprint",
            required_unless_present = "fingerprint"
        )]
        cert: Option<PathBuf>,
        /// Its hex SHA-256 fingerprint.
        #[arg(long)]
        fingerprint: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: crate::client::CoordinatorOpt,
    },
}

fn pki_err(e: pki::PkiError) -> CliError {
    let exit = if matches!(
        e,
        pki::PkiError::BadName(_) | pki::PkiError::NoCa(_) | pki::PkiError::NotCaDir { .. }
    ) {
        2
    } else {
        4
    };
    CliError::new(e.code(), e.to_string(), exit)
}

pub async fn run(cmd: CertsCmd) -> Result<u8, CliError> {
    match cmd {
        CertsCmd::Revoke {
            cert,
            fingerprint,
            output,
            coordinator,
        } => {
            let fp = match (cert, fingerprint) {
                (Some(path), _) => {
                    let pem = std::fs::read_to_string(&path).map_err(|e| {
                        CliError::invalid("USAGE", format!("cannot read {}: {e}", path.display()))
                    })?;
                    let der = baton_proto::tls::certs_from_pem(&pem).map_err(|e| {
                        CliError::invalid("USAGE", format!("{}: {e}", path.display()))
                    })?;
                    baton_proto::tls::sha256_hex(&der[0])
                }
                (None, Some(fp)) => fp,
                (None, None) => {
                    return Err(CliError::invalid(
                        "USAGE",
                        "say --cert FILE or --fingerprint HEX",
                    ));
                }
            };
            let mut client = coordinator.connect().await?;
            client
                .revoke_certificate(baton_proto::RevokeCertificateRequest {
                    fingerprint: fp.clone(),
                })
                .await
                .map_err(|s| coordinator.status(s))?;
            match output {
                Format::Json => outln!(
                    "{}",
                    serde_json::json!({"fingerprint": fp, "state": "revoked"})
                ),
                Format::Human => outln!("certificate {fp}: revoked"),
            }
            Ok(0)
        }
        CertsCmd::Init { dir, output } => {
            let (_, created) =
                baton_coordinator::live_tls::LiveTls::bootstrap(&dir, pki::DEFAULT_TTL)
                    .map_err(pki_err)?;
            let verb = if created {
                "created"
            } else {
                "already present"
            };
            match output {
                Format::Json => outln!(
                    "{}",
                    serde_json::json!({"created": created, "dir": dir.display().to_string(),
                                       "admin_dir": dir.join("admin").display().to_string()})
                ),
                Format::Human => outln!(
                    "{verb}: CA and coordinator certificate in {}, admin client identity in {}",
                    dir.display(),
                    dir.join("admin").display()
                ),
            }
            Ok(0)
        }
        CertsCmd::Issue {
            ca_dir,
            agent,
            client,
            out,
            ttl,
            output,
        } => {
            let who = match (agent, client) {
                (Some(a), _) => Identity::Agent(a),
                (None, Some(c)) => Identity::Client(c),
                (None, None) => {
                    return Err(CliError::invalid(
                        "USAGE",
                        "say --agent NAME or --client NAME",
                    ));
                }
            };
            pki::issue(&ca_dir, &who, &out, ttl).map_err(pki_err)?;
            match output {
                Format::Json => outln!(
                    "{}",
                    serde_json::json!({"issued": who.dns_name(), "valid_s": ttl.as_secs(),
                                       "dir": out.display().to_string()})
                ),
                Format::Human => outln!(
                    "issued {} (valid {} s) into {}",
                    who.dns_name(),
                    ttl.as_secs(),
                    out.display()
                ),
            }
            Ok(0)
        }
    }
}
