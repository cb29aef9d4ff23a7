//! The store's contract: keys with the revision of their last write,
//! compare-and-swap preconditions, batched atomic commits, watches on a
//! prefix, and the [`Store`] trait every backend implements. A leaf of
//! `store/`: the backends (`embedded.rs`, `fake.rs`) and the `conformance`
//! suite implement and check it.

use std::future::Future;
use std::pin::Pin;

use tokio_stream::Stream;

/// A global, monotonically increasing revision: every commit that writes gets
/// a new one (on etcd, a batch that only checks returns the current one).
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
    /// Changes under `prefix`, in revision order: with `from = None`, those
    /// committed after this call; with `Some(r)`, every change with a
    /// revision above `r` (read at `r`, then watch from `r`). A backend
    /// that keeps history (etcd, until it compacts) replays the changes after
    /// `r`; one that does not (embedded, fake) serves `Some(r)` only when `r`
    /// is its current revision or later, and otherwise yields
    /// [`StoreError::Lagged`] first: re-read, then watch again.
    fn watch(&self, prefix: &str, from: Option<Revision>) -> WatchStream;
    /// Bytes the store occupies on disk (for benchmarks and retention).
    fn size_bytes(&self) -> u64;
    /// Gives space freed by deletions back to the file system, if the backend
    /// needs to be asked; true if it did anything.
    fn compact(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
}

/// Changes under a prefix, in revision order ([`Store::watch`]). It ends
/// (`None`) after an error or when the store is gone: watch again, from the
/// last revision seen (or re-read first after [`StoreError::Lagged`]).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// The revision a change was committed at.
pub fn event_revision(event: &WatchEvent) -> Revision {
    match event {
        WatchEvent::Put(kv) => kv.mod_revision,
        WatchEvent::Delete { revision, .. } => *revision,
    }
}

/// The key a change is about.
pub fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put(kv) => &kv.key,
        WatchEvent::Delete { key, .. } => key,
    }
}

/// A stream made by calling `step` on a state until it returns `None`
/// (tokio-stream has no `unfold`).
pub(crate) fn unfold<S, F, Fut, T>(state: S, step: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    S: Send + Unpin + 'static,
    F: FnMut(S) -> Fut + Send + Unpin + 'static,
    Fut: Future<Output = Option<(T, S)>> + Send + 'static,
    T: Send + 'static,
{
    struct Unfold<S, F, Fut> {
        state: Option<S>,
        step: F,
        pending: Option<Pin<Box<Fut>>>,
    }
    impl<S: Unpin, F: Unpin, Fut, T> Stream for Unfold<S, F, Fut>
    where
        F: FnMut(S) -> Fut,
        Fut: Future<Output = Option<(T, S)>>,
    {
        type Item = T;
        fn poll_next(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            // The future is boxed: the struct is Unpin when S and F are.
            let this = self.get_mut();
            if let Some(state) = this.state.take() {
                this.pending = Some(Box::pin((this.step)(state)));
            }
            let Some(fut) = this.pending.as_mut() else {
                return std::task::Poll::Ready(None);
            };
            match fut.as_mut().poll(cx) {
                std::task::Poll::Pending => std::task::Poll::Pending,
                std::task::Poll::Ready(out) => {
                    this.pending = None;
                    std::task::Poll::Ready(out.map(|(item, next)| {
                        this.state = Some(next);
                        item
                    }))
                }
            }
        }
    }
    Box::pin(Unfold {
        state: Some(state),
        step,
        pending: None,
    })
}

/// The watch of a backend that broadcasts each commit's changes in memory
/// (embedded, fake) and keeps no history: changes under `prefix` with a
/// revision above `after` from `rx`, subscribed before `current` (the
/// backend's revision) was read. A `from` behind `current` cannot be replayed:
/// the stream says [`StoreError::Lagged`] and ends.
pub(crate) fn broadcast_watch(
    prefix: &str,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<Vec<WatchEvent>>>,
    from: Option<Revision>,
    current: Revision,
) -> WatchStream {
    use std::collections::VecDeque;
    use tokio::sync::broadcast::error::RecvError;
    struct State {
        prefix: String,
        rx: tokio::sync::broadcast::Receiver<std::sync::Arc<Vec<WatchEvent>>>,
        after: Revision,
        buffered: VecDeque<WatchEvent>,
        /// An error to yield before ending.
        fail: Option<StoreError>,
        done: bool,
    }
    let after = from.unwrap_or(0);
    let fail = match from {
        Some(r) if r < current => Some(StoreError::Lagged(current - r)),
        _ => None,
    };
    let state = State {
        prefix: prefix.to_string(),
        rx,
        after,
        buffered: VecDeque::new(),
        fail,
        done: false,
    };
    unfold(state, |mut st: State| async move {
        if st.done {
            return None;
        }
        if let Some(e) = st.fail.take() {
            st.done = true;
            return Some((Err(e), st));
        }
        loop {
            if let Some(ev) = st.buffered.pop_front() {
                return Some((Ok(ev), st));
            }
            match st.rx.recv().await {
                Ok(batch) => {
                    let (prefix, after) = (&st.prefix, st.after);
                    st.buffered.extend(
                        batch
                            .iter()
                            .filter(|ev| {
                                event_revision(ev) > after && event_key(ev).starts_with(prefix)
                            })
                            .cloned(),
                    );
                }
                Err(RecvError::Lagged(n)) => {
                    st.done = true;
                    return Some((Err(StoreError::Lagged(n)), st));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
