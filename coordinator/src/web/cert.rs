//! The dashboard's own server certificate: issued by Baton's CA for the
//! names a browser uses (`--dashboard-name`; never a Baton identity such as
//! `coordinator.baton`), for server authentication only, kept in memory, and
//! issued again at two thirds of its lifetime (the next handshake presents
//! the new one).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use baton_proto::tls::LiveCert;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::CoordinatorError;
use crate::live_tls::LiveTls;

/// How often the certificate's age is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// The dashboard's certificate while the coordinator runs.
pub struct DashboardCert {
    tls: Arc<LiveTls>,
    names: Vec<String>,
    live: LiveCert,
    /// Unix seconds at which the current certificate is renewed.
    renew_at: AtomicI64,
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Whether `name` can go in the certificate: an IP address, or a DNS name of
/// letters, digits and '-' in dot-separated labels.
fn valid_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Issues a certificate; returns it (chain, key) and when to renew it.
fn issue_now(tls: &LiveTls, names: &[String]) -> Result<(String, String, i64), CoordinatorError> {
    if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
        return Err(CoordinatorError::Config(format!(
            "--dashboard-name '{bad}' is neither a DNS name nor an IP address"
        )));
    }
    if let Some(own) = names.iter().find(|n| crate::pki::is_baton_name(n)) {
        return Err(CoordinatorError::Config(format!(
            "--dashboard-name '{own}' is one of Baton's own identity names (*.baton); name the dashboard as browsers reach it"
        )));
    }
    let ttl = tls.cert_ttl();
    let (issued, key) = tls.authority().issue_web(names, ttl).map_err(|e| {
        CoordinatorError::Config(format!(
            "--dashboard-name: cannot issue the dashboard's certificate for {names:?}: {e}"
        ))
    })?;
    let chain = format!("{}{}", issued.cert_pem, tls.authority().ca_pem());
    let renew_at = issued.not_after - (ttl.as_secs() / 3) as i64;
    Ok((chain, key, renew_at))
}

impl DashboardCert {
    /// Issues the first certificate.
    pub fn issue(
        tls: Arc<LiveTls>,
        names: Vec<String>,
    ) -> Result<Arc<DashboardCert>, CoordinatorError> {
        let (chain, key, renew_at) = issue_now(&tls, &names)?;
        let live = LiveCert::new(&chain, &key)
            .map_err(|e| CoordinatorError::Transport(format!("dashboard TLS: {e}")))?;
        Ok(Arc::new(DashboardCert {
            tls,
            names,
            live,
            renew_at: AtomicI64::new(renew_at),
        }))
    }

    /// A server configuration for browsers: HTTP/2 or HTTP/1.1, no client certificate
    /// (people log in with a token), this certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CoordinatorError> {
        let mut config = rustls::ServerConfig::builder_with_provider(baton_proto::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| CoordinatorError::Transport(format!("dashboard TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.live.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Issues a new certificate if the current one is due; returns whether it did.
    pub fn renew_if_due(&self, now: i64) -> Result<bool, CoordinatorError> {
        if now < self.renew_at.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (chain, key, renew_at) = issue_now(&self.tls, &self.names)?;
        self.live
            .replace(&chain, &key)
            .map_err(|e| CoordinatorError::Transport(format!("dashboard TLS: {e}")))?;
        self.renew_at.store(renew_at, Ordering::Relaxed);
        Ok(true)
    }

    /// Renews the certificate when due until `shutdown`.
    pub async fn renew_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            match self.renew_if_due(unix_now()) {
                Ok(true) => info!("dashboard certificate renewed"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "could not renew the dashboard certificate; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_names_the_browser_s_names_and_is_renewed_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let (tls, _) = LiveTls::bootstrap(dir.path(), Duration::from_secs(3000)).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let c = DashboardCert::issue(tls.clone(), names).unwrap();
        let (chain, _, renew_at) = issue_now(&tls, &c.names).unwrap();
        // The leaf, then the CA.
        assert_eq!(baton_proto::tls::certs_from_pem(&chain).unwrap().len(), 2);
        // Renewed at two thirds of the lifetime, not before.
        let now = unix_now();
        assert!(
            (renew_at - now - 2000).abs() <= 400,
            "renew at {renew_at}, now {now}"
        );
        assert!(!c.renew_if_due(now).unwrap());
        assert!(c.renew_if_due(renew_at + 1).unwrap());
        c.server_config().unwrap();
        // A name that is neither a DNS name nor an address is refused, and
        // so is a Baton identity (the dashboard's key must not pose as one).
        let e = DashboardCert::issue(tls.clone(), vec!["not a name".into()])
            .err()
            .unwrap();
        assert_eq!(e.code(), "CONFIG_INVALID");
        let e = DashboardCert::issue(tls, vec!["coordinator.baton".into()])
            .err()
            .unwrap();
        assert_eq!(e.code(), "CONFIG_INVALID");
    }
}
