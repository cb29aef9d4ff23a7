//! Leadership of a coordinator alone on its store (the embedded backend, or
//! any [`Store`] without an election): a campaign takes the next epoch with a
//! compare-and-set on `m/epoch` and always wins at once — the store file is
//! locked by one process, so nobody else is campaigning for real. The term's
//! fence is `m/epoch` at the revision of that write: whoever takes a later
//! epoch on the same store moves the key, and every commit of the earlier
//! term is refused from then on ([`crate::store::fenced`]). A watch on the key
//! ends the term as soon as it moves, without waiting for a commit.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::contract::{Leadership, Term};
use crate::records::EPOCH_KEY;
use crate::store::{BoxFuture, Op, Precondition, Store, StoreError, WatchEvent};

/// The term this coordinator holds and the URL it advertised.
struct Held {
    term: Term,
    advertise: String,
}

/// [`Leadership`] over one store, by compare-and-set on `m/epoch`.
pub struct EmbeddedLeadership {
    store: Arc<dyn Store>,
    held: Mutex<Option<Held>>,
}

impl EmbeddedLeadership {
    pub fn new(store: Arc<dyn Store>) -> Self {
        EmbeddedLeadership {
            store,
            held: Mutex::new(None),
        }
    }

    fn held(&self) -> MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The epoch stored in `value`; a value that is not a number is refused
/// rather than read as 0 (a lower epoch would be refused by every agent).
fn parse_epoch(value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            StoreError::Backend(format!(
                "corrupt record '{EPOCH_KEY}': not a number ({} bytes)",
                value.len()
            ))
        })
}

/// Takes the epoch after the stored one, retrying while another writer
/// raises it at the same time; returns the new term.
pub async fn take_epoch(store: &dyn Store) -> Result<Term, StoreError> {
    loop {
        let (old, pre) = match store.get(EPOCH_KEY).await? {
            Some(kv) => (
                parse_epoch(&kv.value)?,
                Precondition::Revision(kv.mod_revision),
            ),
            None => (0, Precondition::Absent),
        };
        let epoch = old + 1;
        let put = Op::Put {
            key: EPOCH_KEY.to_string(),
            value: epoch.to_string().into_bytes(),
            pre,
        };
        match store.commit(vec![put]).await {
            Ok(revision) => {
                return Ok(Term {
                    epoch,
                    fence_key: EPOCH_KEY.to_string(),
                    fence_revision: revision,
                    lost: CancellationToken::new(),
                });
            }
            // Raised meanwhile: read it again and take the next one.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Ends `term` (cancels `lost`) as soon as its fence key moves or goes.
async fn watch_fence(store: Arc<dyn Store>, term: Term) {
    let mut watch = store.watch(&term.fence_key, None);
    // The key may have moved before the watch began: look once first.
    let moved = |kv: &Option<crate::store::KeyValue>| {
        kv.as_ref()
            .is_none_or(|kv| kv.mod_revision != term.fence_revision)
    };
    match store.get(&term.fence_key).await {
        Ok(kv) if moved(&kv) => term.lost.cancel(),
        Ok(_) => {}
        Err(e) => debug!(error = %e, "cannot read the fence key; commits will tell"),
    }
    loop {
        let ev = tokio::select! {
            () = term.lost.cancelled() => return,
            ev = watch.next() => ev,
        };
        let over = match ev {
            None => return, // the store is gone
            Some(Ok(WatchEvent::Put(kv))) => {
                kv.key == term.fence_key && kv.mod_revision != term.fence_revision
            }
            Some(Ok(WatchEvent::Delete { key, .. })) => key == term.fence_key,
            // An error ends a watch: look at the key, then watch again.
            Some(Err(_)) => {
                watch = store.watch(&term.fence_key, None);
                match store.get(&term.fence_key).await {
                    Ok(kv) => moved(&kv),
                    Err(_) => false,
                }
            }
        };
        if over {
            warn!(
                epoch = term.epoch,
                "another coordinator took a later epoch on this store; this term is over"
            );
            term.lost.cancel();
            return;
        }
    }
}

impl Leadership for EmbeddedLeadership {
    fn campaign<'a>(&'a self, advertise: &'a str) -> BoxFuture<'a, Result<Term, StoreError>> {
        Box::pin(async move {
            let term = take_epoch(self.store.as_ref()).await?;
            let earlier = self.held().replace(Held {
                term: term.clone(),
                advertise: advertise.to_string(),
            });
            if let Some(h) = earlier {
                h.term.lost.cancel();
            }
            tokio::spawn(watch_fence(self.store.clone(), term.clone()));
            Ok(term)
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let url = self
            .held()
            .as_ref()
            .filter(|h| !h.term.lost.is_cancelled())
            .map(|h| h.advertise.clone());
        Box::pin(async move { Ok(url) })
    }

    fn resign<'a>(&'a self, term: &'a Term) -> BoxFuture<'a, Result<(), StoreError>> {
        term.lost.cancel();
        let mut held = self.held();
        if held.as_ref().is_some_and(|h| h.term.epoch == term.epoch) {
            *held = None;
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::fake::FakeStore;
    use crate::store::fenced::{Fence, FencedStore};

    fn fence(t: &Term) -> Fence {
        Fence {
            epoch: t.epoch,
            fence_key: t.fence_key.clone(),
            fence_revision: t.fence_revision,
            lost: t.lost.clone(),
        }
    }

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            pre: Precondition::Any,
        }
    }

    #[tokio::test]
    async fn a_campaign_takes_the_next_epoch_and_leads_at_once() {
        let store = FakeStore::new();
        let leadership = EmbeddedLeadership::new(store.clone());
        assert_eq!(leadership.leader().await.unwrap(), None);
        let term = leadership.campaign("https://c1:7400").await.unwrap();
        assert_eq!(term.epoch, 1, "an empty store starts at 1");
        assert_eq!(term.fence_key, EPOCH_KEY);
        assert_eq!(
            store.first_commit_of(EPOCH_KEY).map(|c| c.revision),
            Some(term.fence_revision),
            "the fence is the revision of the epoch's write"
        );
        assert_eq!(store.value(EPOCH_KEY).as_deref(), Some(&b"1"[..]));
        assert_eq!(
            leadership.leader().await.unwrap().as_deref(),
            Some("https://c1:7400")
        );
        leadership.resign(&term).await.unwrap();
        assert!(term.lost.is_cancelled());
        assert_eq!(leadership.leader().await.unwrap(), None);
        let next = leadership.campaign("https://c1:7400").await.unwrap();
        assert_eq!(next.epoch, 2);
    }

    #[tokio::test]
    async fn a_second_campaign_raises_the_epoch_and_fences_the_first_term() {
        let store = FakeStore::new();
        let first = EmbeddedLeadership::new(store.clone());
        let second = EmbeddedLeadership::new(store.clone());
        let t1 = first.campaign("https://c1:7400").await.unwrap();
        let fenced = FencedStore::new(store.clone(), fence(&t1));
        fenced.commit(vec![put("k")]).await.unwrap();

        let t2 = second.campaign("https://c2:7400").await.unwrap();
        assert_eq!((t1.epoch, t2.epoch), (1, 2));
        // The first term ends as the key moves, before it even commits.
        tokio::time::timeout(Duration::from_secs(5), t1.lost.cancelled())
            .await
            .expect("the first term is told it is over");
        assert_eq!(first.leader().await.unwrap(), None);
        let err = fenced.commit(vec![put("late")]).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
        assert!(store.value("late").is_none(), "nothing of it lands");
        // The second term's commits go through.
        FencedStore::new(store.clone(), fence(&t2))
            .commit(vec![put("k2")])
            .await
            .unwrap();
        assert!(!t2.lost.is_cancelled());
    }

    #[tokio::test]
    async fn a_corrupt_epoch_is_refused_rather_than_restarted_from_one() {
        let store = FakeStore::new();
        store
            .commit(vec![Op::Put {
                key: EPOCH_KEY.into(),
                value: b"forty-two".to_vec(),
                pre: Precondition::Any,
            }])
            .await
            .unwrap();
        let err = EmbeddedLeadership::new(store.clone())
            .campaign("https://c1:7400")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err}");
        assert!(err.to_string().contains(EPOCH_KEY), "{err}");
    }

    #[tokio::test]
    async fn concurrent_campaigns_get_distinct_epochs() {
        let store = FakeStore::new();
        let a = EmbeddedLeadership::new(store.clone());
        let b = EmbeddedLeadership::new(store.clone());
        let (ta, tb) = tokio::join!(a.campaign("a"), b.campaign("b"));
        let mut epochs = [ta.unwrap().epoch, tb.unwrap().epoch];
        epochs.sort_unstable();
        assert_eq!(epochs, [1, 2]);
    }
}
