//! Leadership on etcd: the election API on a lease.
//!
//! A campaign grants a lease of the leader lease rounded up to seconds,
//! keeps it alive every third of its TTL, and campaigns with the advertised
//! URL as value on the election `m/leader` under the key prefix; etcd makes
//! the campaigner's key `m/leader/<lease>` and answers once every key created
//! before it is gone. The key's creation revision is the term's epoch (etcd's
//! revisions only grow, so a later term's is larger); the key and its
//! `mod_revision` are the fence, checked by every commit of the term through
//! the store under the same prefix — once the lease ends, the key is gone and
//! such a commit is refused. The term is lost (`Term::lost` cancelled) when
//! etcd says the lease is gone, or when no renewal was confirmed for a whole
//! TTL (counted from the renewal's sending, so this side gives up no later
//! than etcd does). [`EtcdLeadership::leader`] reads the value of the oldest
//! key of the election, as etcd's own `Leader` does.

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{GetOptions, LeaderKey, ResignOptions, SortOrder, SortTarget};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::contract::{Leadership, Term};
use crate::store::etcd::Etcd;
use crate::store::etcd::classify::{store_error as etcd_error, timed_out};
use crate::store::{BoxFuture, StoreError};

/// The election's name under the key prefix; candidates' keys are below it.
pub const ELECTION: &str = "m/leader";

/// The wait before a failed renewal is tried again (within the third of the TTL).
const RETRY_RENEWAL: Duration = Duration::from_millis(150);

/// The term held now, to resign it.
struct Held {
    epoch: u64,
    lease: i64,
    leader: LeaderKey,
    lost: CancellationToken,
}

/// [`Leadership`] on etcd, sharing the store's client.
pub struct EtcdLeadership {
    etcd: Etcd,
    ttl_secs: i64,
    held: Mutex<Option<Held>>,
    /// Cancelled on drop: keep-alives stop (leases then expire, as when the
    /// process dies) and terms are lost.
    stop: CancellationToken,
}

impl Drop for EtcdLeadership {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Seconds of the lease of a `leader_lease_ms` lease: rounded up, at least 1
/// (etcd raises a TTL below its minimum, about 2 s by default, itself).
pub fn lease_ttl_secs(leader_lease_ms: u64) -> i64 {
    i64::try_from(leader_lease_ms.div_ceil(1000).max(1)).unwrap_or(i64::MAX)
}

impl EtcdLeadership {
    /// Leadership with a lease of `leader_lease_ms` (rounded up to seconds).
    pub fn new(etcd: Etcd, leader_lease_ms: u64) -> EtcdLeadership {
        EtcdLeadership {
            etcd,
            ttl_secs: lease_ttl_secs(leader_lease_ms),
            held: Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        let t = self.etcd.config.request_timeout;
        match tokio::time::timeout(t, f).await {
            Err(_) => Err(timed_out(what, t)),
            Ok(r) => r.map_err(|e| etcd_error(what, e)),
        }
    }

    /// One attempt: a lease, a campaign on it, and a check that the key won
    /// is still there and first. `Ok(None)`: the lease was lost meanwhile.
    async fn try_campaign(&self, advertise: &str) -> Result<Option<Term>, StoreError> {
        let mut leases = self.etcd.client.lease_client();
        // etcd counts the lease from when it received the grant: the local
        // deadline counts from before it was sent, never after etcd's.
        let asked = Instant::now();
        let granted = self
            .call("lease grant", leases.grant(self.ttl_secs, None))
            .await?;
        let (lease, ttl) = (granted.id(), granted.ttl().max(1));
        let lost = self.stop.child_token();
        // Until the term is handed out, a failure or a dropped campaign revokes the lease.
        let revoke = RevokeOnDrop {
            etcd: Some(self.etcd.clone()),
            lease,
            lost: lost.clone(),
        };
        tokio::spawn(keep_alive(
            self.etcd.clone(),
            lease,
            (asked, Duration::from_secs(ttl.unsigned_abs())),
            lost.clone(),
        ));
        let name = self.etcd.full_key(ELECTION);
        let mut election = self.etcd.client.election_client();
        // No timeout: a campaign waits for as long as another leads.
        let won = tokio::select! {
            r = election.campaign(name, advertise, lease) => r.map_err(|e| etcd_error("campaign", e))?,
            _ = lost.cancelled() => return Ok(None),
        };
        let Some(leader) = won.leader().cloned() else {
            return Err(StoreError::Backend(
                "etcd campaign: no leader key in the answer".into(),
            ));
        };
        // etcd answers once older keys are gone, without looking at ours again:
        // it must still be there, and first.
        let Some(first) = self.first_candidate().await? else {
            return Ok(None);
        };
        if first.key() != leader.key() || first.create_revision() != leader.rev() {
            return Ok(None);
        }
        let fence_key = self.etcd.strip_key(leader.key()).ok_or_else(|| {
            StoreError::Backend("etcd campaign: a leader key outside the prefix".into())
        })?;
        let term = Term {
            epoch: u64::try_from(leader.rev()).unwrap_or(0),
            fence_key,
            fence_revision: u64::try_from(first.mod_revision()).unwrap_or(0),
            lost: lost.clone(),
        };
        revoke.disarm();
        *self.held() = Some(Held {
            epoch: term.epoch,
            lease,
            leader,
            lost,
        });
        info!(
            epoch = term.epoch,
            lease_ttl_s = ttl,
            "leading (etcd election)"
        );
        Ok(Some(term))
    }

    /// The election's oldest key: the leader's.
    async fn first_candidate(&self) -> Result<Option<etcd_client::KeyValue>, StoreError> {
        let mut prefix = self.etcd.full_key(ELECTION);
        prefix.push(b'/');
        // A read: retried a few times when the member asked is down (the
        // client spreads calls over every endpoint, a dead one too).
        let mut tries = 0;
        loop {
            let mut kv = self.etcd.client.kv_client();
            let opts = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(1);
            match self
                .call("leader", kv.get(prefix.clone(), Some(opts)))
                .await
            {
                Ok(mut resp) => return Ok(resp.take_kvs().into_iter().next()),
                Err(e) if e.retryable() && tries < READ_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 * tries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Retries of a read refused as unavailable.
const READ_RETRIES: u64 = 5;

/// Revokes a lease (in the background) unless disarmed: a campaign that
/// failed or was dropped leaves no candidate behind.
struct RevokeOnDrop {
    etcd: Option<Etcd>,
    lease: i64,
    lost: CancellationToken,
}

impl RevokeOnDrop {
    fn disarm(mut self) {
        self.etcd = None;
    }
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        let Some(etcd) = self.etcd.take() else { return };
        self.lost.cancel();
        let lease = self.lease;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let t = etcd.config.request_timeout;
                let mut leases = etcd.client.lease_client();
                let _ = tokio::time::timeout(t, leases.revoke(lease)).await;
            });
        }
    }
}

/// Renews `lease` every third of `ttl` until `lost` is cancelled; cancels it
/// when etcd says the lease is gone or no renewal was confirmed for `ttl`.
async fn keep_alive(
    etcd: Etcd,
    lease: i64,
    (asked, ttl): (Instant, Duration),
    lost: CancellationToken,
) {
    let every = ttl / 3;
    // A margin before etcd's own expiry: the term ends here first, so that
    // this coordinator has stopped before another can be elected.
    let margin = (ttl / 10).max(Duration::from_millis(500)).min(ttl / 2);
    let mut deadline = asked + ttl.saturating_sub(margin);
    let mut leases = etcd.client.lease_client();
    let mut stream = None;
    let mut failing = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            warn!(
                lease,
                ttl_ms = ttl.as_millis() as u64,
                "no lease renewal confirmed for a whole TTL: leadership lost"
            );
            lost.cancel();
            return;
        }
        let sent = now;
        let renewal = async {
            match stream.as_mut() {
                None => {
                    // Opening the stream renews once (etcd-client waits for the answer).
                    let (keeper, answers) = leases.keep_alive(lease).await?;
                    stream = Some((keeper, answers));
                    Ok(Some(ttl.as_secs() as i64))
                }
                Some((keeper, answers)) => {
                    keeper.keep_alive().await?;
                    Ok::<_, etcd_client::Error>(answers.message().await?.map(|a| a.ttl()))
                }
            }
        };
        let wait = every.min(deadline - now);
        match tokio::time::timeout(wait, renewal).await {
            Ok(Ok(Some(t))) if t > 0 => {
                deadline = sent + Duration::from_secs(t.unsigned_abs()).saturating_sub(margin);
                if failing {
                    info!(lease, "lease renewals confirmed again");
                    failing = false;
                }
            }
            Ok(Ok(Some(_))) => {
                warn!(lease, "etcd says the lease is gone: leadership lost");
                lost.cancel();
                return;
            }
            Ok(Err(e)) if e.to_string().contains("lease not found") => {
                warn!(lease, "etcd says the lease is gone: leadership lost");
                lost.cancel();
                return;
            }
            other => {
                stream = None;
                if !failing {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(None)) => "the keep-alive stream ended".into(),
                        _ => "no answer".into(),
                    };
                    warn!(lease, error = %why, "lease renewal failed; retrying until the TTL runs out");
                    failing = true;
                }
            }
        }
        // After a failure, again soon: the client may have picked a dead
        // member, and the next pick may be a live one.
        let next = if failing {
            (Instant::now() + RETRY_RENEWAL).min(sent + every)
        } else {
            sent + every
        }
        .min(deadline);
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

impl Leadership for EtcdLeadership {
    fn campaign<'a>(&'a self, advertise: &'a str) -> BoxFuture<'a, Result<Term, StoreError>> {
        Box::pin(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match self.try_campaign(advertise).await {
                    Ok(Some(term)) => return Ok(term),
                    Ok(None) => warn!("the lease ended while campaigning; campaigning again"),
                    Err(e) if e.retryable() => {
                        warn!(error = %e, "campaign failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => return Err(e),
                }
                if self.stop.is_cancelled() {
                    return Err(StoreError::Unavailable("leadership stopped".into()));
                }
            }
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .first_candidate()
                .await?
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }

    fn resign<'a>(&'a self, term: &'a Term) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            term.lost.cancel();
            let held = {
                let mut held = self.held();
                match held.as_ref() {
                    Some(h) if h.epoch == term.epoch => held.take(),
                    _ => None,
                }
            };
            let Some(held) = held else {
                return Ok(());
            };
            held.lost.cancel();
            let mut election = self.etcd.client.election_client();
            let resigned = self
                .call(
                    "resign",
                    election.resign(Some(ResignOptions::new().with_leader(held.leader))),
                )
                .await;
            let mut leases = self.etcd.client.lease_client();
            match self.call("lease revoke", leases.revoke(held.lease)).await {
                // Already expired: nothing left to give up.
                Err(StoreError::Backend(why)) if why.contains("not found") => {}
                other => {
                    other?;
                }
            }
            info!(epoch = term.epoch, "resigned");
            // The revoke deleted the key whatever the resign said.
            resigned.map(|_| ()).or(Ok(()))
        })
    }
}

#[cfg(test)]
mod tests;
