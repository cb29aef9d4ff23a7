//! Connecting to a coordinator's `ControlService`.
//!
//! `https://` URLs (the default) use TLS: the client verifies that it reached
//! `coordinator.baton` with the CA in `--tls-dir` (`ca.pem`) and proves who it
//! is either with the client certificate there (`tls.pem`, `tls.key`) or, when
//! `--token` / `BATON_TOKEN` is set, with that API token (sent as
//! `authorization: Bearer …`, never printed). `http://` is plaintext, for a
//! coordinator started with `--insecure` on loopback: it is refused before any
//! connection to an address that is not loopback (`PLAINTEXT_NOT_LOOPBACK`,
//! [`baton_proto::plaintext`]), so neither a token nor a request leaves the
//! machine in clear.
//!
//! A TLS failure says that it is one (`TLS_HANDSHAKE_FAILED`): which side
//! refused which certificate, and which CA file the client trusted.
//!
//! `--coordinator` takes one URL or the comma-separated URLs of every coordinator of
//! a highly available cluster. Calls then go over a [`baton_proto::failover::Follow`]
//! channel: a standby's `NOT_LEADER` sends the call on to the leader it names (which
//! must pass the same TLS checks, with the CA in `--tls-dir`) or to the next URL, a URL
//! that refuses the connection is skipped, and a call finds no leader within
//! `--failover-wait` seconds fails with `NO_LEADER`. Each step is told on stderr
//! ("coordinator … is a standby; trying …"). A call that may not be sent twice
//! (`StartExecution`, `CancelExecution`, …) is sent again only when it certainly was
//! not done (see [`baton_proto::failover`]). The leader found is remembered for the
//! rest of the process. Every URL is checked (plaintext only to loopback) before any
//! connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::control_service_client::ControlServiceClient;
use baton_proto::failover::{DialFuture, Dialer, Follow, Policy};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::CliError;

/// Default address when neither `--coordinator` nor `BATON_COORDINATOR` is set.
pub const DEFAULT_COORDINATOR: &str = "https://127.0.0.1:7400";
/// Default client identity: the admin identity a coordinator creates in its default data dir.
pub const DEFAULT_CLIENT_TLS_DIR: &str = "baton-data/tls/admin";

/// Whether a connection setting of the command that runs (URL, TLS dir,
/// token file) came from a context: set once by `main` from the layered settings.
static FROM_CONTEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records whether any connection setting came from a context (see
/// [`crate::config::Source::Context`]); a connection failure then says so.
pub fn set_settings_from_context(yes: bool) {
    FROM_CONTEXT.store(yes, std::sync::atomic::Ordering::Relaxed);
}

/// Shared `--coordinator` / `--tls-dir` options.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorOpt {
    /// Coordinator URL (https:// for TLS; http:// only for an --insecure coordinator on
    /// loopback: plaintext to any other address is refused before connecting). For a
    /// highly available cluster, the URLs of its coordinators separated by commas
    /// (https://c1:7400,https://c2:7400): calls find the leader, following a standby's
    /// hint, and skip a coordinator that is down.
    #[arg(long = "coordinator", env = "BATON_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub url: String,
    /// With several coordinators: how long, in seconds, a call looks for the leader
    /// (during an election) before failing with NO_LEADER.
    #[arg(
        long = "failover-wait",
        env = "BATON_FAILOVER_WAIT",
        value_name = "SECS",
        default_value_t = 30
    )]
    pub failover_wait: u64,
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
    /// The channel of the last `connect`, which knows the URL calls go to now.
    #[arg(skip)]
    pub session: Session,
}

/// The failover channel of the last [`CoordinatorOpt::connect`] (errors name the
/// coordinator that gave them).
#[derive(Clone, Default)]
pub struct Session(Arc<Mutex<Option<Follow>>>);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

impl Session {
    fn set(&self, follow: Follow) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(follow);
    }

    fn current(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Follow::current)
    }
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

/// A connected `ControlService` client (over the coordinators of `--coordinator`).
pub type Control = ControlServiceClient<InterceptedService<Follow, Bearer>>;

fn read(dir: &Path, file: &str) -> Result<String, CliError> {
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

    /// The URLs of `--coordinator`, each checked: plaintext only to loopback.
    pub async fn urls(&self) -> Result<Vec<String>, CliError> {
        let urls = baton_proto::failover::parse_urls(&self.url)
            .map_err(|e| CliError::invalid("USAGE", format!("--coordinator: {e}")))?;
        for url in &urls {
            baton_proto::plaintext::loopback_url(url)
                .await
                .map_err(|e| CliError::invalid(baton_proto::plaintext::CODE, e.to_string()))?;
        }
        Ok(urls)
    }

    /// Whether `--coordinator` names several coordinators.
    pub fn several(&self) -> bool {
        baton_proto::failover::parse_urls(&self.url).is_ok_and(|u| u.len() > 1)
    }

    /// How long a call looks for the leader among several coordinators.
    pub fn policy(&self) -> Policy {
        Policy {
            wait: Duration::from_secs(self.failover_wait),
            ..Policy::default()
        }
    }

    /// The URL errors should name: the coordinator calls go to now.
    pub fn current_url(&self) -> String {
        self.session.current().unwrap_or_else(|| self.url.clone())
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
        // Before anything else: plaintext to another machine is never tried.
        let urls = self.urls().await?;
        let tls_dir = self.tls_dir.clone();
        let with_identity = bearer.is_none();
        let dial: Dialer = Arc::new(move |url: String| {
            let tls_dir = tls_dir.clone();
            Box::pin(async move {
                // A connection error: tonic tells it as UNAVAILABLE with this message.
                dial(&url, &tls_dir, with_identity).await.map_err(|e| {
                    Box::new(tonic::ConnectError(Box::new(e))) as baton_proto::failover::BoxError
                })
            }) as DialFuture
        });
        let several = urls.len() > 1;
        let follow = Follow::new(urls, dial, self.policy())
            .map_err(|e| CliError::invalid("USAGE", format!("--coordinator: {e}")))?
            .on_event(tell);
        if let Err(errors) = follow.connect().await {
            let mut err = self.connect_failure(several, errors);
            if let Some(ctx) = &self.context
                && FROM_CONTEXT.load(std::sync::atomic::Ordering::Relaxed)
            {
                err.message += &format!(
                    "\n  note: the connection settings come from context '{ctx}' where no flag or variable sets them (`baton context show {ctx}`)"
                );
            }
            return Err(err);
        }
        self.session.set(follow.clone());
        Ok(
            ControlServiceClient::with_interceptor(follow, Bearer(bearer))
                .max_decoding_message_size(baton_coordinator::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(baton_coordinator::MAX_MESSAGE_BYTES),
        )
    }

    /// No URL could be connected to: one URL's error as it is; several, each with its own.
    fn connect_failure(
        &self,
        several: bool,
        errors: Vec<(String, baton_proto::failover::BoxError)>,
    ) -> CliError {
        let mut each: Vec<CliError> = errors
            .into_iter()
            .map(|(url, e)| match e.downcast::<tonic::ConnectError>() {
                Ok(c) => match c.0.downcast::<CliError>() {
                    Ok(cli) => *cli,
                    Err(other) => CliError::unavailable(&url, other),
                },
                Err(other) => CliError::unavailable(&url, other),
            })
            .collect();
        if !several && each.len() == 1 {
            return each.remove(0);
        }
        // A refusal no retry will change (TLS, identity) is the one to show.
        if let Some(i) = each
            .iter()
            .position(|e| e.code != "COORDINATOR_UNAVAILABLE")
        {
            return each.remove(i);
        }
        let detail = each
            .iter()
            .map(|e| {
                e.message
                    .split("\n  hint:")
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("cannot reach the coordinator at ")
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("; ");
        CliError::new(
            "COORDINATOR_UNAVAILABLE",
            format!(
                "cannot reach any coordinator of {}: {detail}\n  hint: start one with `baton coordinator`, \
                 or point --coordinator / BATON_COORDINATOR at them",
                self.url
            ),
            crate::error::EXIT_UNAVAILABLE,
        )
    }

    pub fn status(&self, s: tonic::Status) -> CliError {
        if let Some(e) = self.tls_failure(&s) {
            return e;
        }
        if s.metadata().get("baton-code").is_none()
            && matches!(
                s.code(),
                tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::Internal
                    | tonic::Code::Unavailable
            )
            && let Some(e) = self.probe_tls()
        {
            return e;
        }
        CliError::from_status(&self.current_url(), s)
    }

    /// A call that broke without a Baton code may be a TLS refusal that only
    /// the connection saw (TLS 1.3 refuses a client certificate after the
    /// handshake): ask the server again, once, and explain what it says.
    fn probe_tls(&self) -> Option<CliError> {
        let url = self.current_url();
        let authority = url
            .strip_prefix("https://")?
            .split(['/', '?', '#'])
            .next()?;
        let ca = std::fs::read_to_string(self.tls_dir.join("ca.pem")).ok()?;
        let identity = self.probe_identity()?;
        let failure = baton_proto::tls::probe_handshake(
            authority,
            baton_coordinator::pki::COORDINATOR_NAME,
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
            Duration::from_secs(2),
        )?;
        Some(explain_tls(&url, &self.tls_dir, failure))
    }

    /// The client certificate and key a probe presents: none with an API token
    /// (from --token, BATON_TOKEN or --token-file); `None` when they cannot be read.
    #[allow(clippy::type_complexity)]
    fn probe_identity(&self) -> Option<Option<(String, String)>> {
        match self.token() {
            Ok(Some(_)) | Err(_) => Some(None),
            Ok(None) => Some(Some((
                std::fs::read_to_string(self.tls_dir.join("tls.pem")).ok()?,
                std::fs::read_to_string(self.tls_dir.join("tls.key")).ok()?,
            ))),
        }
    }

    /// `TLS_HANDSHAKE_FAILED` with what went wrong, if `err` is a TLS failure.
    fn tls_failure(&self, err: &(dyn std::error::Error + 'static)) -> Option<CliError> {
        let failure = baton_proto::tls::handshake_failure(err)?;
        Some(explain_tls(&self.current_url(), &self.tls_dir, failure))
    }
}

/// Tells a step of the search for the leader on stderr, each distinct line once
/// per process (a long election would otherwise repeat the same lines every round).
fn tell(event: &baton_proto::failover::Event) {
    static TOLD: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let line = event.to_string();
    let mut told = TOLD.lock().unwrap_or_else(|p| p.into_inner());
    if !told.contains(&line) {
        eprintln!("{line}");
        told.push(line);
    }
}

/// Connects to one coordinator `url` (checked, for plaintext, by [`CoordinatorOpt::urls`]
/// or here for a leader a standby named): TLS verified with the CA in `tls_dir`, with
/// the client certificate there unless an API token is used.
async fn dial(url: &str, tls_dir: &Path, with_identity: bool) -> Result<Channel, CliError> {
    let dial = baton_proto::plaintext::loopback_url(url)
        .await
        .map_err(|e| CliError::invalid(baton_proto::plaintext::CODE, e.to_string()))?;
    let mut endpoint = Endpoint::from_shared(dial)
        .map_err(|e| CliError::invalid("USAGE", format!("bad coordinator URL '{url}': {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // A coordinator that froze or whose machine vanished does not close
        // the connection: pings find out, so that a call or a watch moves on
        // (to the next coordinator with several) instead of waiting on TCP.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        // A coordinator renews its local admin identity in place: a read
        // that lands between its two renames sees a certificate and a key
        // that don't match. Reading again a moment later gets a whole pair.
        let mut attempt = 0;
        endpoint = loop {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(tls_dir, "ca.pem")?))
                .domain_name(baton_coordinator::pki::COORDINATOR_NAME);
            if with_identity {
                tls = tls.identity(Identity::from_pem(
                    read(tls_dir, "tls.pem")?,
                    read(tls_dir, "tls.key")?,
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
                        format!("TLS setup with the identity in {}: {e}", tls_dir.display()),
                    ));
                }
            }
        };
    } else if !url.starts_with("http://") {
        return Err(CliError::invalid(
            "USAGE",
            format!("coordinator URL '{url}' must start with https:// or http://"),
        ));
    }
    endpoint
        .connect()
        .await
        .map_err(|e| match baton_proto::tls::handshake_failure(&e) {
            Some(failure) => explain_tls(url, tls_dir, failure),
            None => CliError::unavailable(url, e),
        })
}

/// Says which side refused which certificate, and what to do.
pub fn explain_tls(
    url: &str,
    tls_dir: &std::path::Path,
    failure: baton_proto::tls::HandshakeFailure,
) -> CliError {
    use baton_proto::tls::HandshakeFailure as F;
    let ca = tls_dir.join("ca.pem");
    let cert = tls_dir.join("tls.pem");
    let (what, hint) = match failure {
        F::ServerUnknownIssuer => (
            format!(
                "the coordinator's certificate is not signed by the CA in {} (unknown issuer)",
                ca.display()
            ),
            "this client identity belongs to another CA (another cluster, or a CA made again); \
             point --tls-dir / BATON_TLS_DIR at an identity of this coordinator's CA (its \
             DATA_DIR/tls/admin, or one from `baton certs issue --client NAME`)"
                .to_string(),
        ),
        F::ServerWrongName(names) => (
            format!(
                "the server is not a Baton coordinator: its certificate names {}, not {}",
                if names.is_empty() {
                    "something else".to_string()
                } else {
                    names.join(", ")
                },
                baton_coordinator::pki::COORDINATOR_NAME
            ),
            "check the address in --coordinator / BATON_COORDINATOR".to_string(),
        ),
        F::ServerExpired => (
            "the coordinator's certificate has expired or is not valid yet".to_string(),
            "check the clocks of both machines; a running coordinator renews its own certificate"
                .to_string(),
        ),
        F::ServerCertificate(why) => (
            format!(
                "the coordinator's certificate was refused ({why}) when checked against the CA in {}",
                ca.display()
            ),
            "point --tls-dir / BATON_TLS_DIR at an identity of this coordinator's CA".to_string(),
        ),
        F::OursUnknownCa => (
            format!(
                "the coordinator refused this client's certificate {}: it is not signed by the \
                 coordinator's CA (unknown CA)",
                cert.display()
            ),
            "issue this client an identity from the coordinator's CA (`baton certs issue --client NAME`)"
                .to_string(),
        ),
        F::OursRevoked => (
            format!(
                "the coordinator refused this client's certificate {}: it was revoked",
                cert.display()
            ),
            "ask an administrator for a new identity or an API token".to_string(),
        ),
        F::OursExpired => (
            format!(
                "the coordinator refused this client's certificate {}: it has expired (or is not valid yet)",
                cert.display()
            ),
            "issue a new one (`baton certs issue --client NAME`) or use an API token".to_string(),
        ),
        F::OursMissing => (
            "the coordinator requires a client certificate and got none".to_string(),
            "point --tls-dir / BATON_TLS_DIR at a client identity (ca.pem, tls.pem, tls.key)"
                .to_string(),
        ),
        F::OursRefused(alert) => (
            format!(
                "the coordinator refused the connection (TLS alert {alert}) with this client's \
                 certificate {}",
                cert.display()
            ),
            "check that --tls-dir / BATON_TLS_DIR holds an identity of this coordinator's CA"
                .to_string(),
        ),
        F::NotTls(detail) => (
            format!("the server does not speak TLS ({detail})"),
            "a coordinator started with --insecure serves plaintext: use http:// (loopback only)"
                .to_string(),
        ),
    };
    CliError::other(
        "TLS_HANDSHAKE_FAILED",
        format!("TLS handshake with {url} failed: {what}\n  hint: {hint}"),
    )
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    fn opt(dir: &std::path::Path) -> CoordinatorOpt {
        CoordinatorOpt {
            url: DEFAULT_COORDINATOR.into(),
            tls_dir: dir.to_path_buf(),
            token: None,
            token_file: None,
            context: None,
            failover_wait: 30,
            session: Default::default(),
        }
    }

    #[test]
    fn a_token_file_user_probes_without_a_client_certificate() {
        let d = tempfile::tempdir().unwrap();
        let tf = d.path().join("token");
        std::fs::write(&tf, "btn_api_x").unwrap();
        // Only ca.pem: with a token from a file, the probe needs no certificate.
        let mut o = opt(d.path());
        o.token_file = Some(tf);
        assert_eq!(o.probe_identity(), Some(None));
        // Without a token, the certificate is needed: none here, no probe.
        assert_eq!(opt(d.path()).probe_identity(), None);
        std::fs::write(d.path().join("tls.pem"), "c").unwrap();
        std::fs::write(d.path().join("tls.key"), "k").unwrap();
        assert_eq!(
            opt(d.path()).probe_identity(),
            Some(Some(("c".into(), "k".into())))
        );
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn every_url_of_a_list_is_checked_before_any_connection() {
        let d = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut o = opt(d.path());
            o.url = "https://c1:7400".into();
            assert_eq!(o.urls().await.unwrap(), ["https://c1:7400"]);
            o.url = "https://c1:7400, https://c2:7400".into();
            assert_eq!(o.urls().await.unwrap().len(), 2);
            o.url = "http://127.0.0.1:7400,http://10.255.255.1:7400".into();
            let e = o.urls().await.unwrap_err();
            assert_eq!(e.code, "PLAINTEXT_NOT_LOOPBACK", "{}", e.message);
            o.url = "https://c1:7400,,https://c2:7400".into();
            let e = o.urls().await.unwrap_err();
            assert_eq!(
                (e.code.as_str(), e.exit),
                ("USAGE", crate::error::EXIT_INVALID)
            );
            assert!(e.message.contains("--coordinator"), "{}", e.message);
            // Nothing listens there: refused before anything else was tried.
            o.url = "http://127.0.0.1:7400,http://192.0.2.1:7400".into();
            assert_eq!(
                o.connect().await.unwrap_err().code,
                "PLAINTEXT_NOT_LOOPBACK"
            );
        });
    }

    #[test]
    fn when_no_url_answers_each_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let dead = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (a, b) = (dead(), dead());
        rt().block_on(async {
            let mut o = opt(d.path());
            o.url = a.clone();
            let one = o.connect().await.unwrap_err();
            assert_eq!(one.code, "COORDINATOR_UNAVAILABLE");
            assert!(
                one.message
                    .starts_with(&format!("cannot reach the coordinator at {a}"))
            );
            o.url = format!("{a},{b}");
            let both = o.connect().await.unwrap_err();
            assert_eq!(both.code, "COORDINATOR_UNAVAILABLE");
            assert_eq!(both.exit, crate::error::EXIT_UNAVAILABLE);
            assert!(
                both.message.contains("cannot reach any coordinator of")
                    && both.message.contains(&format!("{a}: "))
                    && both.message.contains(&format!("{b}: ")),
                "{}",
                both.message
            );
        });
    }

    #[test]
    fn no_leader_is_its_own_error() {
        let s = baton_proto::failover::no_leader(
            &["https://c1:7400".to_string(), "https://c2:7400".to_string()],
            Duration::from_secs(30),
        );
        let e = CliError::from_status("https://c1:7400", s);
        assert_eq!(
            (e.code.as_str(), e.exit),
            ("NO_LEADER", crate::error::EXIT_UNAVAILABLE)
        );
        assert!(e.message.contains("within 30 s") && e.message.contains("--failover-wait"));
    }
}
