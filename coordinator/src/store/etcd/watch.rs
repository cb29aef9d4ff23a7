//! An etcd watch on a key prefix as the store's [`WatchStream`]: etcd keeps
//! history, so a watch from a revision replays every change after it, until
//! etcd compacted that revision away (then `Lagged`: re-read and watch
//! again). A lost connection or leader ends the stream with `Unavailable`;
//! the caller watches again from the last revision it saw.

use std::collections::VecDeque;

use etcd_client::{EventType, WatchClient, WatchOptions, WatchStream as EtcdWatch};

use super::classify;
use super::connect::Etcd;
use super::txn::prefix_end;
use crate::store::kv::{KeyValue, Revision, StoreError, WatchEvent, WatchStream, unfold};

struct State {
    etcd: Etcd,
    client: WatchClient,
    prefix: String,
    /// The first revision to see (etcd's `start_revision`).
    start: i64,
    stream: Option<EtcdWatch>,
    buffered: VecDeque<WatchEvent>,
    done: bool,
}

/// Watches `prefix` from `start` (0: from now, as etcd sees it).
pub(crate) fn watch(etcd: &Etcd, prefix: &str, start: Revision) -> WatchStream {
    let state = State {
        client: etcd.client.watch_client(),
        etcd: etcd.clone(),
        prefix: prefix.to_string(),
        start: i64::try_from(start).unwrap_or(i64::MAX),
        stream: None,
        buffered: VecDeque::new(),
        done: false,
    };
    unfold(state, |mut st: State| async move {
        if st.done {
            return None;
        }
        let item = next(&mut st).await;
        if item.is_err() {
            st.done = true;
        }
        Some((item, st))
    })
}

async fn next(st: &mut State) -> Result<WatchEvent, StoreError> {
    loop {
        if let Some(ev) = st.buffered.pop_front() {
            return Ok(ev);
        }
        if st.stream.is_none() {
            let full = st.etcd.full_key(&st.prefix);
            let mut opts = WatchOptions::new().with_range(prefix_end(&full));
            if st.start > 0 {
                opts = opts.with_start_revision(st.start);
            }
            let timeout = st.etcd.config.request_timeout;
            let stream = tokio::time::timeout(timeout, st.client.watch(full, Some(opts)))
                .await
                .map_err(|_| classify::timed_out("watch", timeout))?
                .map_err(|e| classify::store_error("watch", e))?;
            st.stream = Some(stream);
        }
        let Some(stream) = st.stream.as_mut() else {
            continue;
        };
        let resp = stream
            .message()
            .await
            .map_err(|e| classify::store_error("watch", e))?
            .ok_or_else(|| StoreError::Unavailable("etcd watch: the stream ended".into()))?;
        if resp.canceled() {
            let compacted = resp.compact_revision();
            return Err(if compacted > 0 {
                StoreError::Lagged(u64::try_from(compacted - st.start).unwrap_or(1).max(1))
            } else {
                StoreError::Unavailable(format!("etcd watch cancelled: {}", resp.cancel_reason()))
            });
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(key) = st.etcd.strip_key(kv.key()) else {
                continue;
            };
            let revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
            st.start = kv.mod_revision() + 1;
            st.buffered.push_back(match ev.event_type() {
                EventType::Put => WatchEvent::Put(KeyValue {
                    key,
                    value: kv.value().to_vec(),
                    mod_revision: revision,
                }),
                EventType::Delete => WatchEvent::Delete { key, revision },
            });
        }
    }
}
