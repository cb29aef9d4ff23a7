//! Connecting to a coordinator's `ControlService`.
//!
//! `https://` URLs (the default) use TLS: the client verifies that it reached
//! `coordinator.baton` with the CA in `--tls-dir` (`ca.pem`) and proves who it
//! is either with the client certificate there (`tls.pem`, `tls.key`) or, when
//! `--token` / `BATON_TOKEN` is set, with that API token (sent as
//! `authorization: Bearer …`, never printed). `http://` is plaintext, for a
//! coordinator started with `--insecure` on loopback.

use std::path::PathBuf;
use std::time::Duration;

use baton_proto::control_service_client::ControlServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::CliError;

/// Default address when neither `--coordinator` nor `BATON_COORDINATOR` is set.
pub const DEFAULT_COORDINATOR: &str = "https://127.0.0.1:7400";
/// Default client identity: the admin identity a coordinator creates in its default data dir.
pub const DEFAULT_CLIENT_TLS_DIR: &str = "baton-data/tls/admin";

/// Shared `--coordinator` / `--tls-dir` options.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorOpt {
    /// Coordinator URL (https:// for TLS, http:// for an --insecure coordinator).
    #[arg(long = "coordinator", env = "BATON_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub url: String,
    /// Directory with this client's identity: ca.pem, tls.pem, tls.key.
    #[arg(long = "tls-dir", env = "BATON_TLS_DIR", default_value = DEFAULT_CLIENT_TLS_DIR)]
    pub tls_dir: PathBuf,
    /// API token (from `baton token create --api NAME`) instead of a client
    /// certificate; only ca.pem is then read from --tls-dir. Prefer the
    /// environment variable: a flag shows up in `ps`.
    #[arg(long = "token", env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding an API token (read when --token / BATON_TOKEN is not set):
    /// keeps the token out of `ps` and of the environment.
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The context whose connection settings are the defaults (default: the
    /// current one; `baton context list`).
    #[arg(long = "context", env = "BATON_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
}

/// Adds the API token, if any, to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connected `ControlService` client.
pub type Control = ControlServiceClient<InterceptedService<Channel, Bearer>>;

fn read(dir: &std::path::Path, file: &str) -> Result<String, CliError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| {
        CliError::invalid(
            "TLS_IDENTITY_MISSING",
            format!(
                "cannot read {}: {e}\n  hint: point --tls-dir / BATON_TLS_DIR at a client identity \
                 (a coordinator creates `admin/` in its TLS dir; `baton certs issue --client NAME` makes more)",
                path.display()
            ),
        )
    })
}

impl CoordinatorOpt {
    /// The API token: `--token` / `BATON_TOKEN`, else the `--token-file`.
    fn token(&self) -> Result<Option<String>, CliError> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, None) => Ok(None),
            (None, Some(f)) => std::fs::read_to_string(f).map(Some).map_err(|e| {
                CliError::invalid(
                    "TOKEN_FILE_UNREADABLE",
                    format!("cannot read the token file {}: {e}", f.display()),
                )
            }),
        }
    }

    pub async fn connect(&self) -> Result<Control, CliError> {
        let bearer = match self.token()? {
            None => None,
            Some(t) => {
                let mut v: MetadataValue<Ascii> =
                    format!("Bearer {}", t.trim()).parse().map_err(|_| {
                        CliError::invalid(
                            "USAGE",
                            "the API token has characters a header cannot carry",
                        )
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| {
                CliError::invalid("USAGE", format!("bad coordinator URL '{}': {e}", self.url))
            })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        if self.url.starts_with("https://") {
            // A coordinator renews its local admin identity in place: a read
            // that lands between its two renames sees a certificate and a key
            // that don't match. Reading again a moment later gets a whole pair.
            let mut attempt = 0;
            endpoint = loop {
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&self.tls_dir, "ca.pem")?))
                    .domain_name(baton_coordinator::pki::COORDINATOR_NAME);
                if bearer.is_none() {
                    tls = tls.identity(Identity::from_pem(
                        read(&self.tls_dir, "tls.pem")?,
                        read(&self.tls_dir, "tls.key")?,
                    ));
                }
                match endpoint.clone().tls_config(tls) {
                    Ok(e) => break e,
                    Err(_) if attempt < 3 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(CliError::invalid(
                            "TLS_IDENTITY_INVALID",
                            format!(
                                "TLS setup with the identity in {}: {e}",
                                self.tls_dir.display()
                            ),
                        ));
                    }
                }
            };
        } else if !self.url.starts_with("http://") {
            return Err(CliError::invalid(
                "USAGE",
                format!(
                    "coordinator URL '{}' must start with https:// or http://",
                    self.url
                ),
            ));
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| {
                let mut err = CliError::unavailable(&self.url, e);
                if let Some(ctx) = &self.context {
                    err.message += &format!(
                        "\n  note: the connection settings come from context '{ctx}' where no flag or variable sets them (`baton context show {ctx}`)"
                    );
                }
                err
            })?;
        Ok(
            ControlServiceClient::with_interceptor(channel, Bearer(bearer))
                .max_decoding_message_size(baton_coordinator::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(baton_coordinator::MAX_MESSAGE_BYTES),
        )
    }

    pub fn status(&self, s: tonic::Status) -> CliError {
        CliError::from_status(&self.url, s)
    }
}
