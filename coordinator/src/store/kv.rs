//! The store's contract: keys with the revision of their last write,
//! compare-and-swap preconditions, batched atomic commits, watches on a
//! prefix, and the [`Store`] trait every backend implements. A leaf of
//! `store/`: the backends (`embedded.rs`, `fake.rs`) and the `conformance`
//! suite implement and check it.

use std::future::Future;
use std::pin::Pin;

/// A global, monotonically increasing revision: every commit gets a new one.
pub type Revision = u64;

/// A boxed future, so that `Store` can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stored value with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: Revision,
}

/// What must be true of a key for a batch to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No condition.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this revision.
    Revision(Revision),
}

/// One operation of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        pre: Precondition,
    },
    Delete {
        key: String,
        pre: Precondition,
    },
    /// A precondition on `key` that writes nothing: the batch applies only
    /// if it holds (a [`StoreError::Conflict`] on `key` otherwise).
    Check {
        key: String,
        pre: Precondition,
    },
    /// Deletes every key starting with `prefix` (none is an error), in the
    /// same revision as the rest of the batch. No precondition: put a
    /// [`Op::Check`] beside it for one.
    DeletePrefix {
        prefix: String,
    },
}

impl Op {
    /// The key the operation is about (the prefix for [`Op::DeletePrefix`]).
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Check { key, .. } => key,
            Op::DeletePrefix { prefix } => prefix,
        }
    }

    /// The key and precondition to check before the batch applies, if any
    /// ([`Op::DeletePrefix`] has none).
    pub fn precondition(&self) -> Option<(&str, Precondition)> {
        match self {
            Op::Put { key, pre, .. } | Op::Delete { key, pre } | Op::Check { key, pre } => {
                Some((key, *pre))
            }
            Op::DeletePrefix { .. } => None,
        }
    }
}

/// How much one commit may hold, as the backend says ([`Store::limits`]);
/// `None` is unbounded. A layer above can split work into batches that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Operations per batch (an [`Op::DeletePrefix`] counts as one).
    pub max_ops_per_commit: Option<usize>,
    /// Bytes per batch, as [`Limits::batch_bytes`] counts them.
    pub max_bytes_per_commit: Option<usize>,
}

impl Limits {
    /// No limit: the embedded backend's and the fake's by default.
    pub const UNBOUNDED: Limits = Limits {
        max_ops_per_commit: None,
        max_bytes_per_commit: None,
    };

    /// The bytes a batch counts for: every operation's key (or prefix) and value.
    pub fn batch_bytes(ops: &[Op]) -> usize {
        ops.iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.len(),
                other => other.key().len(),
            })
            .sum()
    }

    /// [`StoreError::TooLarge`] if `ops` exceeds these limits.
    pub fn admit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let bytes = Self::batch_bytes(ops);
        let over = |max: Option<usize>, n: usize| max.is_some_and(|m| n > m);
        if over(self.max_ops_per_commit, ops.len()) || over(self.max_bytes_per_commit, bytes) {
            return Err(StoreError::TooLarge {
                ops: ops.len(),
                bytes,
                limits: *self,
            });
        }
        Ok(())
    }
}

/// Refuses a batch no backend may apply whatever the state: a delete by an
/// empty prefix (it would delete every key). Backends call it before anything
/// else.
pub fn check_batch(ops: &[Op]) -> Result<(), StoreError> {
    if ops
        .iter()
        .any(|op| matches!(op, Op::DeletePrefix { prefix } if prefix.is_empty()))
    {
        return Err(StoreError::Backend(
            "a delete by prefix needs a non-empty prefix".into(),
        ));
    }
    Ok(())
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

/// Store failures, classified by what the caller can do ([`StoreError::retryable`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition did not hold; nothing of the batch was applied.
    #[error("precondition failed on key '{key}'")]
    Conflict { key: String },
    /// This writer lost its right to write (another coordinator leads, or
    /// its lease ended); nothing was applied, and nothing it sends will be.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The backend cannot be reached or has no quorum now; the batch may be
    /// retried later (a replicated backend applies a batch at most once per
    /// revision precondition, so a retry with preconditions is safe).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed for good (IO, corruption, a refused request).
    #[error("store backend: {0}")]
    Backend(String),
    /// The batch exceeds the backend's [`Limits`]; nothing was applied. The
    /// same batch is always refused: split it.
    #[error(
        "a batch of {ops} operations and {bytes} bytes exceeds the store's limits ({limits:?})"
    )]
    TooLarge {
        ops: usize,
        bytes: usize,
        limits: Limits,
    },
    /// A watcher fell behind and missed changes; re-read and watch again.
    #[error("watch lagged behind by {0} batches")]
    Lagged(u64),
}

impl StoreError {
    /// Whether the same call may succeed if made again later, unchanged:
    /// - `Unavailable`: yes, the backend may come back;
    /// - `Lagged`: yes, once the watcher re-reads and watches again;
    /// - `Conflict`: no, the precondition is stale: re-read, then decide;
    /// - `Fenced`: no, this writer may not write any more;
    /// - `TooLarge`: no, the same batch is always too large: split it;
    /// - `Backend`: no, the failure is fatal.
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Lagged(_) => true,
            StoreError::Conflict { .. }
            | StoreError::Fenced(_)
            | StoreError::TooLarge { .. }
            | StoreError::Backend(_) => false,
        }
    }
}

/// The store trait. Implementations are cheap to share (`Arc<dyn Store>`).
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>>;
    /// Every key starting with `prefix`, in key order.
    fn range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>>;
    /// Every key starting with `prefix`, in key order, handed to `keep`; only
    /// those it keeps are returned, so that memory stays bounded under a huge
    /// prefix (an execution's million children). Backends without a cursor
    /// may read the whole range first.
    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        mut keep: Box<dyn FnMut(&KeyValue) -> bool + Send + 'static>,
    ) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .range(prefix)
                .await?
                .into_iter()
                .filter(|kv| keep(kv))
                .collect())
        })
    }
    /// Applies `ops` atomically if all preconditions hold; returns the new revision.
    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Revision, StoreError>>;
    /// How much one commit may hold; a larger batch is refused with
    /// [`StoreError::TooLarge`]. Unbounded unless the backend says otherwise.
    fn limits(&self) -> Limits {
        Limits::UNBOUNDED
    }
    /// Changes under `prefix` committed after this call.
    fn watch(&self, prefix: &str) -> Watch;
    /// Bytes the store occupies on disk (for benchmarks and retention).
    fn size_bytes(&self) -> u64;
    /// Gives space freed by deletions back to the file system, if the backend
    /// needs to be asked; true if it did anything.
    fn compact(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
}

/// A watch on a key prefix.
pub struct Watch {
    prefix: String,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<Vec<WatchEvent>>>,
    buffered: std::collections::VecDeque<WatchEvent>,
}

impl Watch {
    pub(crate) fn new(
        prefix: String,
        rx: tokio::sync::broadcast::Receiver<std::sync::Arc<Vec<WatchEvent>>>,
    ) -> Self {
        Watch {
            prefix,
            rx,
            buffered: Default::default(),
        }
    }

    /// The next change under the prefix; `None` when the store is gone.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if let Some(ev) = self.buffered.pop_front() {
                return Some(Ok(ev));
            }
            match self.rx.recv().await {
                Ok(batch) => {
                    for ev in batch.iter() {
                        let key = match ev {
                            WatchEvent::Put(kv) => &kv.key,
                            WatchEvent::Delete { key, .. } => key,
                        };
                        if key.starts_with(&self.prefix) {
                            self.buffered.push_back(ev.clone());
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => return Some(Err(StoreError::Lagged(n))),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
