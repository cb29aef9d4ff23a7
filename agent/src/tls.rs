//! The agent's TLS identity: the PEM material of its directory ([`TlsPem`]: the
//! CA, its certificate and key), the live identity it serves and dials with while
//! it runs ([`LiveTls`], replaced at each renewal), and the atomic writes of
//! those files. A leaf: enrolment ([`crate::enrol`]) writes the first identity,
//! renewal ([`crate::renew`]) replaces it, [`crate::transport`] uses it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use baton_proto::tls::LiveCert;

use crate::error::AgentError;

/// The coordinator's identity name in its certificate.
pub const COORDINATOR_NAME: &str = "coordinator.baton";

/// PEM material: the trust root and this agent's certificate and key.
#[derive(Clone)]
pub struct TlsPem {
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// The directory it was loaded from; renewed certificates are written there.
    pub dir: Option<PathBuf>,
}

impl std::fmt::Debug for TlsPem {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem { .. }")
    }
}

impl TlsPem {
    /// Reads `ca.pem`, `tls.pem` and `tls.key` from `dir`.
    pub fn load(dir: &std::path::Path) -> Result<TlsPem, AgentError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read_to_string(&path)
                .map_err(|e| AgentError::io(format!("reading {}", path.display()), e))
        };
        Ok(TlsPem {
            ca: read("ca.pem")?,
            cert: read("tls.pem")?,
            key: read("tls.key")?,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// Unix seconds `(not_before, not_after)` of the certificate.
    pub fn validity(&self) -> Option<(i64, i64)> {
        let der = baton_proto::tls::certs_from_pem(&self.cert).ok()?;
        baton_proto::identity::validity(&der[0])
    }
}

/// The agent's TLS identity while it runs: replaced at each renewal.
pub struct LiveTls {
    pem: RwLock<TlsPem>,
    server_cert: LiveCert,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveTls { .. }")
    }
}

pub(crate) fn tls_err(e: baton_proto::tls::TlsError) -> AgentError {
    AgentError::Transport(format!("TLS setup: {e}"))
}

impl LiveTls {
    pub fn new(pem: TlsPem) -> Result<Arc<LiveTls>, AgentError> {
        let server_cert = LiveCert::new(&pem.cert, &pem.key).map_err(tls_err)?;
        Ok(Arc::new(LiveTls {
            pem: RwLock::new(pem),
            server_cert,
        }))
    }

    /// The current material.
    pub fn current(&self) -> TlsPem {
        self.pem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes a renewed certificate and its key: written to the TLS directory
    /// (key 0600, atomically), then used from the next connection on.
    pub fn replace(&self, cert: String, key: String) -> Result<(), AgentError> {
        self.server_cert.replace(&cert, &key).map_err(tls_err)?;
        let mut pem = self.pem.write().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = &pem.dir {
            write_file(&dir.join("tls.key"), &key, true)?;
            write_file(&dir.join("tls.pem"), &cert, false)?;
        }
        pem.cert = cert;
        pem.key = key;
        Ok(())
    }
}

impl LiveTls {
    /// The certificate the server presents (it follows renewals).
    pub(crate) fn server_cert(&self) -> LiveCert {
        self.server_cert.clone()
    }
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename); `private`
/// files get mode 0600.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, e| AgentError::io(format!("{what} {}", path.display()), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| io("writing", e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))
}
