//! `baton token`: enrolment tokens for agents and API tokens for principals.

use baton_proto as pb;
use serde_json::json;

use crate::client::CoordinatorOpt;
use crate::error::CliError;
use crate::output::{Format, list_json, outln, rfc3339};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Make a token. The secret is printed once and stored only as a hash.
    #[command(after_help = "Examples:\n  \
        baton token create --agent                 # any agent name, valid 1 hour\n  \
        baton token create --agent etl-07 --ttl 15m\n  \
        baton token create --agent etl-08 --label zone=eu --label tier=*\n  \
        BATON_ENROLL_TOKEN=<token> baton agent --name etl-07 --coordinator https://coord:7400\n  \
        baton token create --api alice --ttl 30d   # then: BATON_TOKEN=<token> baton exec list")]
    Create {
        /// A one-time enrolment token for an agent, optionally only for agent NAME.
        #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "", conflicts_with = "api", required_unless_present = "api")]
        agent: Option<String>,
        /// An API token that authenticates as principal NAME.
        #[arg(long, value_name = "NAME")]
        api: Option<String>,
        /// Lifetime, e.g. 15m, 1h, 30d (default: 1h for agents, 30d for API tokens).
        #[arg(long, value_parser = crate::cmd::duration_arg::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// A label (KEY=VALUE, or KEY=* for any value) the agent enrolled with
        /// this token may register with; repeatable. Without any, it may claim none.
        #[arg(long = "label", value_name = "KEY=VALUE", requires = "agent")]
        labels: Vec<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// List tokens (ids, kinds, states; never secrets).
    List {
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
    /// Revoke a token by id: an API token stops working at once, an unused
    /// enrolment token can no longer be used.
    Revoke {
        id: String,
        #[arg(long, value_enum, default_value = "human")]
        output: Format,
        #[command(flatten)]
        coordinator: CoordinatorOpt,
    },
}

pub async fn run(cmd: TokenCmd) -> Result<u8, CliError> {
    match cmd {
        TokenCmd::Create {
            agent,
            api,
            ttl,
            labels,
            output,
            coordinator,
        } => {
            let (kind, name) = match (agent, api) {
                (_, Some(p)) => ("api", p),
                (Some(a), None) => ("agent", a),
                (None, None) => {
                    return Err(CliError::invalid(
                        "USAGE",
                        "say --agent [NAME] or --api NAME",
                    ));
                }
            };
            let mut client = coordinator.connect().await?;
            let t = client
                .create_token(pb::CreateTokenRequest {
                    kind: kind.into(),
                    name: name.clone(),
                    ttl_s: ttl.map_or(0, |d| d.as_secs()),
                    labels,
                })
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner();
            match output {
                Format::Json => outln!(
                    "{}",
                    json!({"token_id": t.token_id, "kind": kind, "name": name,
                           "expires_unix_ms": t.expires_unix_s.saturating_mul(1000), "token": t.token})
                ),
                Format::Human => {
                    // The secret alone on stdout, so that `$(baton token create …)` works;
                    // the explanation on stderr.
                    outln!("{}", t.token);
                    let what = if kind == "agent" {
                        "one-time agent enrolment token: BATON_ENROLL_TOKEN=<token> baton agent ..."
                    } else {
                        "API token: BATON_TOKEN=<token> baton ..."
                    };
                    eprintln!(
                        "token {} ({what}); expires {}; it is shown only now",
                        t.token_id,
                        rfc3339(t.expires_unix_s.saturating_mul(1000))
                    );
                }
            }
            Ok(0)
        }
        TokenCmd::List {
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            let list = client
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(|s| coordinator.status(s))?
                .into_inner()
                .tokens;
            match output {
                Format::Json => {
                    let rows: Vec<_> = list
                        .iter()
                        .map(|t| {
                            json!({"token_id": t.token_id, "kind": t.kind, "name": t.name,
                               "state": t.state, "created_by": t.created_by,
                               "created_unix_ms": t.created_unix_s.saturating_mul(1000),
                               "expires_unix_ms": t.expires_unix_s.saturating_mul(1000)})
                        })
                        .collect();
                    outln!("{}", list_json(rows, None));
                }
                Format::Human => {
                    outln!(
                        "{:<14} {:<6} {:<16} {:<8} {:<12} EXPIRES",
                        "ID",
                        "KIND",
                        "NAME",
                        "STATE",
                        "CREATED BY"
                    );
                    for t in list {
                        let name = if t.name.is_empty() { "*" } else { &t.name };
                        outln!(
                            "{:<14} {:<6} {:<16} {:<8} {:<12} {}",
                            t.token_id,
                            t.kind,
                            name,
                            t.state,
                            t.created_by,
                            rfc3339(t.expires_unix_s.saturating_mul(1000))
                        );
                    }
                }
            }
            Ok(0)
        }
        TokenCmd::Revoke {
            id,
            output,
            coordinator,
        } => {
            let mut client = coordinator.connect().await?;
            client
                .revoke_token(pb::RevokeTokenRequest {
                    token_id: id.clone(),
                })
                .await
                .map_err(|s| coordinator.status(s))?;
            match output {
                Format::Json => outln!(
                    "{}",
                    serde_json::json!({"token_id": id, "state": "revoked"})
                ),
                Format::Human => outln!("token {id}: revoked"),
            }
            Ok(0)
        }
    }
}
