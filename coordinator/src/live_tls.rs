//! The coordinator's TLS identity while it runs.
//!
//! The coordinator holds Baton's CA (in its TLS directory), so it renews its
//! own short-lived certificate — and the local `admin/` client identity — from
//! it, at two thirds of their lifetime, without a restart: the server presents
//! the new certificate from the next handshake on ([`baton_proto::tls::LiveCert`])
//! and agent connections dialled afterwards use it ([`LiveTls::material`]).
//! The same CA signs agents' certificate requests ([`LiveTls::authority`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use baton_proto::tls::{ClientAuth, LiveCert};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::CoordinatorError;
use crate::pki::{self, Authority, Identity, PkiError, TlsMaterial};

/// The running coordinator's TLS state.
pub struct LiveTls {
    dir: PathBuf,
    authority: Authority,
    cert_ttl: Duration,
    server_cert: LiveCert,
    material: RwLock<TlsMaterial>,
    generation: AtomicU64,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveTls {{ dir: {:?}, .. }}", self.dir)
    }
}

fn chain(m: &TlsMaterial) -> String {
    format!("{}{}", m.cert_pem, m.ca_pem)
}

fn tls_err(e: baton_proto::tls::TlsError) -> CoordinatorError {
    CoordinatorError::Transport(format!("TLS: {e}"))
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Whether the certificate in `dir/tls.pem` is missing, unreadable or due for renewal.
fn needs_cert(dir: &Path, now: i64) -> bool {
    match std::fs::read_to_string(dir.join("tls.pem")) {
        Err(_) => true,
        Ok(pem) => pki::validity(&pem).is_none_or(|v| pki::renewal_due(v, now)),
    }
}

impl LiveTls {
    /// Makes sure `dir` holds a CA, the coordinator's certificate and an
    /// `admin/` client identity, creating or renewing what is missing or due
    /// (zero-configuration TLS). Returns the state and whether anything was created.
    pub fn bootstrap(dir: &Path, cert_ttl: Duration) -> Result<(Arc<LiveTls>, bool), PkiError> {
        let mut created = false;
        if !pki::has_ca(dir) {
            pki::init_ca(dir)?;
            created = true;
        }
        let authority = Authority::load(dir)?;
        let now = unix_now();
        if needs_cert(dir, now) {
            authority.issue_files(&Identity::Coordinator, dir, cert_ttl)?;
            created = true;
        }
        let admin = dir.join("admin");
        if needs_cert(&admin, now) {
            authority.issue_files(
                &Identity::Client(crate::auth::ADMIN.into()),
                &admin,
                cert_ttl,
            )?;
            created = true;
        }
        let material = pki::load(dir)?;
        let server_cert = LiveCert::new(&chain(&material), &material.key_pem)
            .map_err(|e| PkiError::BadCsr(format!("own certificate: {e}")))?;
        Ok((
            Arc::new(LiveTls {
                dir: dir.to_path_buf(),
                authority,
                cert_ttl,
                server_cert,
                material: RwLock::new(material),
                generation: AtomicU64::new(1),
            }),
            created,
        ))
    }

    /// The rustls server configuration (client certificates optional: enrolment
    /// and API tokens come without one; each handler checks what it needs).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CoordinatorError> {
        let ca = self.material().1.ca_pem;
        baton_proto::tls::server_config(&ca, self.server_cert.clone(), ClientAuth::Optional)
            .map_err(tls_err)
    }

    /// The current material and its generation (which changes at each renewal).
    pub fn material(&self) -> (u64, TlsMaterial) {
        let m = self
            .material
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.generation.load(Ordering::Acquire), m)
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Lifetime of the certificates this coordinator issues.
    pub fn cert_ttl(&self) -> Duration {
        self.cert_ttl
    }

    /// Hex SHA-256 of the CA certificate (what enrolment tokens pin).
    pub fn ca_pin(&self) -> String {
        baton_proto::tls::ca_pin(self.authority.ca_pem()).unwrap_or_default()
    }

    /// Renews the coordinator's certificate and the local admin identity if
    /// due; returns whether the coordinator's own changed.
    pub fn renew_if_due(&self) -> Result<bool, CoordinatorError> {
        let now = unix_now();
        let admin = self.dir.join("admin");
        if needs_cert(&admin, now) {
            self.authority
                .issue_files(
                    &Identity::Client(crate::auth::ADMIN.into()),
                    &admin,
                    self.cert_ttl,
                )
                .map_err(|e| CoordinatorError::Transport(e.to_string()))?;
            info!(dir = %admin.display(), "renewed the admin client certificate");
        }
        if !needs_cert(&self.dir, now) {
            return Ok(false);
        }
        self.authority
            .issue_files(&Identity::Coordinator, &self.dir, self.cert_ttl)
            .map_err(|e| CoordinatorError::Transport(e.to_string()))?;
        let m = pki::load(&self.dir).map_err(|e| CoordinatorError::Transport(e.to_string()))?;
        self.server_cert
            .replace(&chain(&m), &m.key_pem)
            .map_err(tls_err)?;
        *self.material.write().unwrap_or_else(|p| p.into_inner()) = m;
        self.generation.fetch_add(1, Ordering::AcqRel);
        info!("renewed the coordinator certificate");
        Ok(true)
    }

    /// Checks for due renewals until `shutdown`, often enough for short lifetimes.
    pub async fn renew_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let every = (self.cert_ttl / 20).clamp(Duration::from_millis(200), Duration::from_secs(60));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.renew_if_due()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "certificate renewal failed; will retry"),
                Err(e) => warn!(error = %e, "certificate renewal task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ca_is_made_over_a_client_identity() {
        let dir = tempfile::tempdir().unwrap();
        LiveTls::bootstrap(dir.path(), Duration::from_secs(86_400)).unwrap();
        let admin = dir.path().join("admin");
        let before = std::fs::read(admin.join("ca.pem")).unwrap();
        // The mistake of issue 14: the coordinator pointed at the admin's identity.
        let e = LiveTls::bootstrap(&admin, Duration::from_secs(86_400)).unwrap_err();
        assert_eq!(e.code(), "PKI_NOT_A_CA_DIR");
        let text = e.to_string();
        assert!(
            text.contains("tls.pem") && text.contains("ca.pem"),
            "{text}"
        );
        assert!(text.contains("BATON_COORDINATOR_TLS_DIR"), "{text}");
        assert_eq!(
            std::fs::read(admin.join("ca.pem")).unwrap(),
            before,
            "the identity's trust root is untouched"
        );
        assert!(!admin.join("ca.key").exists());
        // A lone ca.pem (a directory that only trusts a CA) is refused too.
        let trust_only = dir.path().join("trust");
        std::fs::create_dir_all(&trust_only).unwrap();
        std::fs::write(trust_only.join("ca.pem"), &before).unwrap();
        let e = LiveTls::bootstrap(&trust_only, Duration::from_secs(86_400)).unwrap_err();
        assert_eq!(e.code(), "PKI_NOT_A_CA_DIR");
        // An empty or missing directory still gets a CA.
        assert!(LiveTls::bootstrap(&dir.path().join("fresh"), Duration::from_secs(86_400)).is_ok());
    }

    #[test]
    fn bootstrap_creates_then_reuses_and_renews_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let (live, created) = LiveTls::bootstrap(dir.path(), Duration::from_secs(86_400)).unwrap();
        assert!(created);
        assert!(dir.path().join("admin/tls.pem").exists());
        let (g1, m1) = live.material();
        assert!(
            !live.renew_if_due().unwrap(),
            "a fresh certificate is not due"
        );
        let (_, again) = LiveTls::bootstrap(dir.path(), Duration::from_secs(86_400)).unwrap();
        assert!(!again, "a second start reuses everything");
        // A 3-second certificate is due after two thirds of its lifetime.
        live.authority
            .issue_files(&Identity::Coordinator, dir.path(), Duration::from_secs(3))
            .unwrap();
        std::thread::sleep(Duration::from_millis(2_300));
        assert!(live.renew_if_due().unwrap());
        let (g2, m2) = live.material();
        assert!(
            g2 > g1,
            "the generation moves so that agent clients are rebuilt"
        );
        assert_ne!(m1.cert_pem, m2.cert_pem);
        assert!(pki::renewal_due((0, 300), 200));
        assert!(!pki::renewal_due((0, 300), 199));
    }
}
