//! A [`Store`] that times its commits: every commit's duration, operations
//! and bytes (keys and values) go to the [`Registry`]; everything else passes
//! straight through. Wrapped around a term's store in `crate::start`, so that
//! the commits of the scheduler, the auth and the catalog are all measured.

use std::sync::Arc;
use std::time::Instant;

use super::registry::Registry;
use crate::store::{BoxFuture, KeyValue, Limits, Op, Revision, Store, StoreError, WatchStream};

/// The store `inner`, measured into `registry`.
pub struct Measured {
    inner: Arc<dyn Store>,
    registry: Arc<Registry>,
}

impl Measured {
    pub fn wrap(inner: Arc<dyn Store>, registry: Arc<Registry>) -> Arc<dyn Store> {
        Arc::new(Measured { inner, registry })
    }
}

/// Bytes of keys and values a batch writes or checks.
fn batch_bytes(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| {
            op.key().len()
                + match op {
                    Op::Put { value, .. } => value.len(),
                    _ => 0,
                }
        })
        .sum()
}

impl Store for Measured {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        self.inner.get(key)
    }

    fn range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        self.inner.range(prefix)
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        keep: Box<dyn FnMut(&KeyValue) -> bool + Send + 'static>,
    ) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        self.inner.scan(prefix, keep)
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let (n, bytes) = (ops.len(), batch_bytes(&ops));
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.commit(ops).await;
            self.registry
                .commit_done(started.elapsed(), n, bytes, r.is_ok());
            r
        })
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    fn watch(&self, prefix: &str, from: Option<Revision>) -> WatchStream {
        self.inner.watch(prefix, from)
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn compact(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Precondition;

    #[tokio::test]
    async fn commits_are_measured_and_pass_through() {
        let registry = Registry::new();
        let inner: Arc<dyn Store> = crate::store::fake::FakeStore::new();
        let store = Measured::wrap(inner, registry.clone());
        store
            .commit(vec![Op::Put {
                key: "k".into(),
                value: b"value".to_vec(),
                pre: Precondition::Absent,
            }])
            .await
            .unwrap();
        let refused = store
            .commit(vec![Op::Put {
                key: "k".into(),
                value: vec![],
                pre: Precondition::Absent,
            }])
            .await;
        assert!(refused.is_err());
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"value");
        let c = registry.read().commits;
        assert_eq!(c.duration_us.count(), 1);
        assert_eq!(c.bytes.sum(), 6);
        assert_eq!(c.failed, 1);
    }
}
