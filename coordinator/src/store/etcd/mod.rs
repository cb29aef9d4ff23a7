//! The etcd backend: a [`Store`] on an etcd cluster shared by several
//! coordinators (one leads, `leadership::etcd`).
//!
//! Every key lives under [`EtcdConfig::key_prefix`](crate::store::EtcdConfig)
//! (stripped on the way out). A key's revision is etcd's `mod_revision`, the
//! cluster's revision of its last write; a commit is one etcd transaction
//! (`txn.rs`) and returns the transaction's revision — etcd moves its revision
//! only on a write, so a batch that writes nothing (only checks) returns the
//! current one. Reads page through a prefix at one revision (a consistent
//! snapshot, bounded memory) and are retried with backoff while etcd is
//! unavailable (a few attempts, then `Unavailable`); commits are never
//! retried here: one without an answer within the request timeout may have
//! applied, and is reported `Unavailable` for the caller to decide (its
//! preconditions make a retry safe). The limits are etcd's `--max-txn-ops` and
//! `--max-request-bytes` less a margin for what a batch's own count leaves
//! out: the key prefix, the compares and failure-branch reads, the framing.
//!
//! `connect.rs` makes the one client the store and the leadership share,
//! `classify.rs` sorts etcd's errors, `watch.rs` streams changes.

pub(crate) mod classify;
pub mod connect;
pub mod local;
mod txn;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{GetOptions, KvClient};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::kv::{
    BoxFuture, KeyValue, Limits, Op, Revision, Store, StoreError, WatchStream, check_batch,
};
use classify::Kind;
pub use connect::{Etcd, connect};

/// Operations per commit kept below `--max-txn-ops`: a delete by prefix with
/// puts under it becomes several range deletes.
pub const OPS_MARGIN: usize = 4;
/// Bytes per operation kept below `--max-request-bytes` beyond the batch's
/// own count (keys and values once): the key prefix thrice (compare, write,
/// failure read), the key twice more, the framing.
pub const BYTES_MARGIN_PER_OP: usize = 600;
/// Attempts of a read while etcd is unavailable.
const READ_ATTEMPTS: u32 = 4;
/// Keys per page of a range read (halved while a page is too large to decode).
const PAGE_KEYS: i64 = 256;
/// Revisions of history kept by [`Store::compact`] (watches from older ones lag).
pub const COMPACT_KEEP_REVISIONS: i64 = 10_000;
/// How often the database size is asked of etcd.
const SIZE_EVERY: Duration = Duration::from_secs(30);

/// A [`Store`] on etcd.
pub struct EtcdStore {
    etcd: Etcd,
    kv: KvClient,
    limits: Limits,
    /// etcd's database size (of the member asked), refreshed in the background.
    db_size: Arc<AtomicU64>,
    _stop_size: DropGuard,
}

/// The limits of a store on etcd started with `max_txn_ops` and
/// `max_request_bytes`, under a key prefix of `prefix_len` bytes.
pub fn limits(max_txn_ops: usize, max_request_bytes: usize, prefix_len: usize) -> Limits {
    let ops = max_txn_ops.saturating_sub(OPS_MARGIN).max(1);
    let margin = ops * (3 * prefix_len + BYTES_MARGIN_PER_OP);
    Limits {
        max_ops_per_commit: Some(ops),
        max_bytes_per_commit: Some(
            max_request_bytes
                .saturating_sub(margin)
                .max(max_request_bytes / 2),
        ),
    }
}

impl EtcdStore {
    /// Connects (see [`connect()`]) and opens the store.
    pub async fn open(
        config: &crate::store::config::EtcdConfig,
    ) -> Result<EtcdStore, crate::error::CoordinatorError> {
        Ok(EtcdStore::new(connect(config).await?))
    }

    /// The store on an etcd client already connected (shared with the leadership).
    /// Starts the task that follows etcd's database size: call within a runtime.
    pub fn new(etcd: Etcd) -> EtcdStore {
        let c = &etcd.config;
        // A page of values as large as a request may be must decode.
        let decode = (64 << 20).max(4 * c.max_request_bytes);
        let kv = etcd.client.kv_client().max_decoding_message_size(decode);
        let limits = limits(c.max_txn_ops, c.max_request_bytes, c.key_prefix.len());
        let db_size = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        tokio::spawn(follow_size(etcd.clone(), db_size.clone(), stop.clone()));
        EtcdStore {
            kv,
            limits,
            db_size,
            _stop_size: stop.drop_guard(),
            etcd,
        }
    }

    /// The client this store uses (for the leadership to share).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    fn saw(&self, header: Option<&etcd_client::ResponseHeader>) {
        self.etcd.saw(header);
    }

    /// Runs a read with the request timeout, again with backoff while etcd is
    /// unavailable (at most [`READ_ATTEMPTS`] times, and up to
    /// [`classify::NOT_SENT_ATTEMPTS`] times at once when it was not sent).
    async fn read<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.etcd.config.request_timeout;
        let mut delay = Duration::from_millis(100);
        let (mut attempt, mut unsent) = (1, 0);
        loop {
            let err = match tokio::time::timeout(timeout, call(self.kv.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if classify::not_sent(&e) && unsent < classify::NOT_SENT_ATTEMPTS => {
                    unsent += 1;
                    continue;
                }
                Ok(Err(e)) => match classify::kind(&e) {
                    Kind::Unavailable => classify::store_error(what, e),
                    _ => return Err(classify::store_error(what, e)),
                },
                Err(_) => classify::timed_out(what, timeout),
            };
            if attempt >= READ_ATTEMPTS {
                return Err(err);
            }
            tracing::debug!(what, attempt, error = %err, "etcd read failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    fn decode(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let key = self.etcd.strip_key(kv.key()).ok_or_else(|| {
            StoreError::Backend(format!(
                "etcd returned a key outside the prefix or not UTF-8: {:?}",
                String::from_utf8_lossy(kv.key())
            ))
        })?;
        Ok(KeyValue {
            key,
            value: kv.value().to_vec(),
            mod_revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
        })
    }

    async fn scan_pages(
        &self,
        prefix: &str,
        keep: &mut (dyn FnMut(&KeyValue) -> bool + Send),
    ) -> Result<Vec<KeyValue>, StoreError> {
        let full = self.etcd.full_key(prefix);
        let end = txn::prefix_end(&full);
        let mut out = Vec::new();
        let mut start = full;
        // Every page at the first page's revision: one snapshot.
        let mut at = 0i64;
        let mut page = PAGE_KEYS;
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(page)
                .with_revision(at);
            let key = start.clone();
            let got = self
                .read("range", |mut kv| {
                    let (key, opts) = (key.clone(), opts.clone());
                    async move { kv.get(key, Some(opts)).await }
                })
                .await;
            let resp = match got {
                Err(StoreError::Backend(why)) if why.contains("too large") && page > 1 => {
                    page /= 2;
                    continue;
                }
                other => other?,
            };
            self.saw(resp.header());
            if at == 0 {
                at = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let pair = self.decode(kv)?;
                if keep(&pair) {
                    out.push(pair);
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => start = [last.key(), &[0]].concat(),
                _ => return Ok(out),
            }
        }
    }
}

/// Follows etcd's database size until `stop`.
async fn follow_size(etcd: Etcd, size: Arc<AtomicU64>, stop: CancellationToken) {
    let mut client = etcd.client.maintenance_client();
    loop {
        let timeout = etcd.config.request_timeout;
        if let Ok(Ok(status)) = tokio::time::timeout(timeout, client.status()).await {
            size.store(
                u64::try_from(status.db_size()).unwrap_or(0),
                Ordering::Relaxed,
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SIZE_EVERY) => {}
        }
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        Box::pin(async move {
            let full = self.etcd.full_key(key);
            let resp = self
                .read("get", |mut kv| {
                    let full = full.clone();
                    async move { kv.get(full, None).await }
                })
                .await?;
            self.saw(resp.header());
            resp.kvs().first().map(|kv| self.decode(kv)).transpose()
        })
    }

    fn range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        Box::pin(async move { self.scan_pages(prefix, &mut |_| true).await })
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        mut keep: Box<dyn FnMut(&KeyValue) -> bool + Send + 'static>,
    ) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        Box::pin(async move { self.scan_pages(prefix, &mut *keep).await })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move {
            check_batch(&ops)?;
            self.limits.admit(&ops)?;
            let too_large = || StoreError::TooLarge {
                ops: ops.len(),
                bytes: Limits::batch_bytes(&ops),
                limits: self.limits,
            };
            let plan = txn::plan(&ops, &self.etcd.config.key_prefix)?;
            if plan.ops > self.etcd.config.max_txn_ops
                || plan.bytes > self.etcd.config.max_request_bytes
            {
                return Err(too_large());
            }
            let timeout = self.etcd.config.request_timeout;
            let mut kv = self.kv.clone();
            let mut unsent = 0;
            let resp = loop {
                let sent = tokio::time::timeout(timeout, kv.txn(plan.txn.clone())).await;
                match sent {
                    // Refused before it was sent: it cannot have applied.
                    Ok(Err(e))
                        if classify::not_sent(&e) && unsent < classify::NOT_SENT_ATTEMPTS =>
                    {
                        unsent += 1;
                    }
                    other => break other,
                }
            };
            let resp = match resp {
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd commit: no answer within {} ms; it may or may not have applied",
                        timeout.as_millis()
                    )));
                }
                Ok(Err(e)) => {
                    return Err(match classify::kind(&e) {
                        Kind::TooLarge => too_large(),
                        Kind::Unavailable => StoreError::Unavailable(format!(
                            "etcd commit: {e} (it may or may not have applied)"
                        )),
                        Kind::ResponseTooLarge | Kind::Backend => {
                            StoreError::Backend(format!("etcd commit: {e}"))
                        }
                    });
                }
                Ok(Ok(resp)) => resp,
            };
            self.saw(resp.header());
            if !resp.succeeded() {
                return Err(txn::conflict(&plan, &resp.op_responses()));
            }
            resp.header()
                .and_then(|h| u64::try_from(h.revision()).ok())
                .ok_or_else(|| {
                    StoreError::Backend("etcd commit: an answer without revision".into())
                })
        })
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    /// From `None`: from just after the last revision this store saw in an
    /// answer, so a change committed just before the call may show too.
    fn watch(&self, prefix: &str, from: Option<Revision>) -> WatchStream {
        let start = match from {
            Some(r) => r + 1,
            None => match self.etcd.seen() {
                0 => 0, // nothing seen yet: etcd's "now"
                seen => seen + 1,
            },
        };
        watch::watch(&self.etcd, prefix, start)
    }

    /// etcd's database size as of the last status (every 30 s), of one member.
    fn size_bytes(&self) -> u64 {
        self.db_size.load(Ordering::Relaxed)
    }

    /// Compacts etcd's history older than [`COMPACT_KEEP_REVISIONS`] revisions
    /// (a watch from before then gets `Lagged`); true if it did. It does not
    /// defragment: that blocks a member while it runs, an operator's call
    /// (`etcdctl defrag`), or etcd's own `--auto-compaction-*` settings.
    fn compact(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let current = connect::ping(&self.etcd).await?;
            let upto = current - COMPACT_KEEP_REVISIONS;
            if upto <= 0 {
                return Ok(false);
            }
            let timeout = self.etcd.config.request_timeout;
            let mut kv = self.kv.clone();
            match tokio::time::timeout(timeout, kv.compact(upto, None)).await {
                Err(_) => Err(classify::timed_out("compact", timeout)),
                Ok(Ok(_)) => Ok(true),
                // Already compacted at or past it: nothing to do.
                Ok(Err(e)) if e.to_string().contains("compacted") => Ok(false),
                Ok(Err(e)) => Err(classify::store_error("compact", e)),
            }
        })
    }
}

#[cfg(test)]
mod tests;
