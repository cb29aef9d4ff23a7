//! One etcd client for the store and the leadership: the endpoints dialled
//! over mutual TLS (etcd's own CA), or in plaintext to loopback only (as
//! every other plaintext connection of Baton, `baton_proto::plaintext`), and
//! a first answer awaited for a bounded time with progress logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use tracing::{info, warn};

use super::classify::{self, Kind};
use crate::error::CoordinatorError;
use crate::store::config::EtcdConfig;
use crate::store::kv::StoreError;

/// A connected etcd client and the settings it was made with. Cheap to
/// clone; the store and the leadership share one.
#[derive(Clone)]
pub struct Etcd {
    pub client: Client,
    pub config: Arc<EtcdConfig>,
    /// The highest revision an answer carried (shared by the clones): a
    /// watch from "now" starts after it.
    seen: Arc<AtomicU64>,
}

impl Etcd {
    /// Notes the revision of an answer.
    pub fn saw(&self, header: Option<&etcd_client::ResponseHeader>) {
        if let Some(rev) = header.and_then(|h| u64::try_from(h.revision()).ok()) {
            self.seen.fetch_max(rev, Ordering::SeqCst);
        }
    }

    /// The highest revision an answer carried so far (0: none yet).
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// `key` under the configured prefix, as etcd stores it.
    pub fn full_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.config.key_prefix.len() + key.len());
        k.extend_from_slice(self.config.key_prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// A key etcd returned, without the prefix; `None` if it is not under it
    /// or not UTF-8 (Baton writes neither).
    pub fn strip_key(&self, full: &[u8]) -> Option<String> {
        let rest = full.strip_prefix(self.config.key_prefix.as_bytes())?;
        String::from_utf8(rest.to_vec()).ok()
    }
}

/// The URLs to dial, refusing plaintext beyond loopback before any connection.
async fn urls(config: &EtcdConfig) -> Result<Vec<String>, CoordinatorError> {
    if config.endpoints.is_empty() {
        return Err(CoordinatorError::Config(
            "no etcd endpoint (--store etcd://host:port,...)".into(),
        ));
    }
    let mut out = Vec::new();
    for ep in &config.endpoints {
        if config.tls.is_some() {
            out.push(format!("https://{ep}"));
        } else {
            let addr = baton_proto::plaintext::loopback_addr(ep)
                .await
                .map_err(|e| {
                    CoordinatorError::PlaintextNotLoopback(format!(
                        "{e} (etcd: give --etcd-ca, --etcd-cert and --etcd-key for mutual TLS)"
                    ))
                })?;
            out.push(format!("http://{addr}"));
        }
    }
    Ok(out)
}

fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, CoordinatorError> {
    std::fs::read(path).map_err(|e| {
        CoordinatorError::Config(format!(
            "cannot read the etcd {what} {}: {e}",
            path.display()
        ))
    })
}

/// The client options: HTTP/2 keep-alive so that a dead connection is seen
/// within the request timeout, and every call asks for a member with a leader
/// (`etcdserver: no leader` at once rather than a hang without quorum).
fn options(config: &EtcdConfig) -> Result<ConnectOptions, CoordinatorError> {
    let t = config.request_timeout;
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(t)
        .with_keep_alive(Duration::from_secs(2).min(t), t)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = &config.tls {
        let ca = read("CA", &tls.ca)?;
        let cert = read("certificate", &tls.cert)?;
        let key = read("key", &tls.key)?;
        opts = opts.with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca))
                .identity(etcd_client::Identity::from_pem(cert, key)),
        );
    }
    Ok(opts)
}

/// Connects to etcd and waits until it answers a read (a quorum exists),
/// retrying for `config.connect_patience` with a log line per attempt;
/// then `STORE_UNAVAILABLE`.
pub async fn connect(config: &EtcdConfig) -> Result<Etcd, CoordinatorError> {
    let urls = urls(config).await?;
    let client = Client::connect(&urls, Some(options(config)?))
        .await
        .map_err(|e| CoordinatorError::Config(format!("etcd endpoints {urls:?}: {e}")))?;
    let etcd = Etcd {
        client,
        config: Arc::new(config.clone()),
        seen: Arc::default(),
    };
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1u32;
    loop {
        match ping(&etcd).await {
            Ok(revision) => {
                info!(endpoints = ?config.endpoints, prefix = %config.key_prefix, revision, "connected to etcd");
                return Ok(etcd);
            }
            Err(StoreError::Unavailable(why)) => {
                let waited = started.elapsed();
                if waited + delay > config.connect_patience {
                    return Err(CoordinatorError::StoreUnavailable(format!(
                        "etcd at {} did not answer within {} s ({attempt} attempts): {why}",
                        config.endpoints.join(","),
                        waited.as_secs()
                    )));
                }
                warn!(endpoints = ?config.endpoints, attempt, waited_ms = waited.as_millis() as u64, error = %why, "etcd not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One linearizable read (it needs a leader); the store's revision.
pub(crate) async fn ping(etcd: &Etcd) -> Result<i64, StoreError> {
    let mut kv = etcd.client.kv_client();
    let timeout = etcd.config.request_timeout;
    let read = kv.get(
        etcd.full_key(""),
        Some(GetOptions::new().with_prefix().with_count_only()),
    );
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(classify::timed_out("read", timeout)),
        Ok(Err(e)) => Err(match classify::kind(&e) {
            Kind::Unavailable => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Backend(format!("etcd refused a read: {e}")),
        }),
        Ok(Ok(resp)) => {
            etcd.saw(resp.header());
            Ok(resp.header().map_or(0, |h| h.revision()))
        }
    }
}
