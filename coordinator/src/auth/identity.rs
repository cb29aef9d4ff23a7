//! Agent identities: one record per agent name (`r/<agent>`), the single
//! place where revocation, renewal and enrolment of that name are decided.
//!
//! Revocation revokes the *identity* and every certificate issued to it, in
//! one store commit: the record says `revoked`, and each unexpired certificate
//! recorded under `i/<name>/` (and the one the agent registered with) gets a
//! `v/<fingerprint>` record. [`check_certificate`] is the one check of every
//! agent call (`Register`, `ReportEvents`, `FetchPackage`, `Renew`): a revoked
//! certificate is refused `CERT_REVOKED` for ever, and any certificate of a
//! revoked identity `AGENT_REVOKED` until the name enrols again.
//! A renewal records its new certificate in the same store commit as an
//! update of this record, with the record's revision as a precondition, so a
//! renewal and a revocation are one atomic decision: either the renewal
//! committed first (and the revocation, whose commit is conditional on the
//! record too, revokes its certificate) or it fails and its certificate is
//! never handed out.
//!
//! The record also bounds renewals (at most one per [`renew_interval_ms`] per
//! identity) and keeps the labels the enrolment token allowed.
//!
//! The name is freed again by an enrolment with a new token after a
//! revocation, or by `baton agents rm NAME` ([`forget`], which revokes the
//! certificates issued to the name too); the fingerprints revoked before stay
//! refused (`v/<fingerprint>`).

use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;
use crate::store::split::commit_in_chunks;
use crate::store::{Op, Precondition, Store, StoreError};

pub use crate::keys::identity_key;

/// What the coordinator knows of an agent identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// Set by `baton agents revoke`: every certificate of this name is refused.
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub revoked_unix_s: u64,
    /// Labels the agent may register with, as `key=value` or `key=*`;
    /// `None` for an identity not enrolled with a token (unrestricted).
    #[serde(default)]
    pub allowed_labels: Option<Vec<String>>,
    /// The enrolment token that made it (empty: none).
    #[serde(default)]
    pub token_id: String,
    #[serde(default)]
    pub enrolled_unix_s: u64,
    /// When a certificate was last renewed for it.
    #[serde(default)]
    pub last_renew_unix_ms: u64,
    /// Raised at every enrolment and revocation.
    #[serde(default)]
    pub generation: u64,
}

/// The shortest time between two renewals of one identity: a quarter of the
/// certificate lifetime (an agent renews once per two thirds of it).
pub fn renew_interval_ms(cert_ttl_ms: u64) -> u64 {
    (cert_ttl_ms / 4).max(1000)
}

fn encode(v: &AgentIdentity) -> Result<Vec<u8>, CoordinatorError> {
    serde_json::to_vec(v).map_err(|e| CoordinatorError::Store(e.to_string()))
}

fn pre(rev: u64) -> Precondition {
    if rev == 0 {
        Precondition::Absent
    } else {
        Precondition::Revision(rev)
    }
}

/// The record of `name` and its revision (0 when absent).
pub async fn load(
    store: &dyn Store,
    name: &str,
) -> Result<(Option<AgentIdentity>, u64), CoordinatorError> {
    match store.get(&identity_key(name)).await? {
        None => Ok((None, 0)),
        Some(kv) => {
            Ok((
                Some(serde_json::from_slice(&kv.value).map_err(|e| {
                    CoordinatorError::Store(format!("identity record of {name}: {e}"))
                })?),
                kv.mod_revision,
            ))
        }
    }
}

fn revoked_error(name: &str) -> CoordinatorError {
    CoordinatorError::AgentRevoked(format!(
        "agent '{name}' was revoked: no certificate of it is accepted; enrol it again with a new token (`baton token create --agent {name}`), or `baton agents rm {name}` to forget it"
    ))
}

/// The answer to a certificate that was revoked (its `v/` record), shared with
/// the scheduler's in-memory mirror of those records.
pub fn cert_revoked_error(name: &str) -> CoordinatorError {
    CoordinatorError::CertRevoked(format!(
        "this certificate of agent '{name}' was revoked (`baton agents revoke` or `baton agents rm`); it is refused for ever: enrol the machine again with a new token (`baton token create --agent {name}`)"
    ))
}

/// Refuses every certificate of a revoked identity; returns the record.
pub async fn check(
    store: &dyn Store,
    name: &str,
) -> Result<Option<AgentIdentity>, CoordinatorError> {
    let (rec, _) = load(store, name).await?;
    match rec {
        Some(r) if r.revoked => Err(revoked_error(name)),
        other => Ok(other),
    }
}

/// The one revocation check of every agent call: the certificate `fingerprint`
/// presented as agent `name` must not be revoked (`CERT_REVOKED`), nor the
/// identity (`AGENT_REVOKED`). Returns the identity record. An empty
/// fingerprint (no TLS) checks the identity only.
pub async fn check_certificate(
    store: &dyn Store,
    name: &str,
    fingerprint: &str,
) -> Result<Option<AgentIdentity>, CoordinatorError> {
    if !fingerprint.is_empty()
        && store
            .get(&crate::keys::revoked_key(fingerprint))
            .await?
            .is_some()
    {
        return Err(cert_revoked_error(name));
    }
    check(store, name).await
}

/// Whether `labels` are all allowed by `allowed` (`key=value` or `key=*`).
pub fn labels_allowed<'a>(
    allowed: &[String],
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    for (k, v) in labels {
        let ok = allowed.iter().any(|a| match a.split_once('=') {
            Some((ak, "*")) => ak == k,
            Some((ak, av)) => ak == k && av == v,
            None => false,
        });
        if !ok {
            return Err(format!("label {k}={v}"));
        }
    }
    Ok(())
}

/// Checks a registration's labels against what the identity's token allowed.
pub fn check_labels<'a>(
    name: &str,
    rec: Option<&AgentIdentity>,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), CoordinatorError> {
    let Some(allowed) = rec.and_then(|r| r.allowed_labels.as_ref()) else {
        return Ok(());
    };
    labels_allowed(allowed, labels).map_err(|bad| {
        CoordinatorError::LabelNotAllowed(format!(
            "agent '{name}' may not claim {bad}: its enrolment token allowed {}; enrol it with a token that lists it (`baton token create --agent {name} --label k=v`)",
            if allowed.is_empty() {
                "no labels".to_string()
            } else {
                allowed.join(", ")
            }
        ))
    })
}

/// The operations recording a certificate issued to `name`, and deleting the
/// records of its expired ones (`existing`: the keys and values under `i/<name>/`).
fn issued_ops(
    name: &str,
    fingerprint: &str,
    not_after: i64,
    existing: Vec<crate::store::KeyValue>,
    now_s: u64,
) -> Vec<Op> {
    let mut ops: Vec<Op> = existing
        .into_iter()
        .filter(|kv| serde_json::from_slice::<u64>(&kv.value).is_ok_and(|t| t <= now_s))
        .map(|kv| Op::Delete {
            key: kv.key,
            pre: Precondition::Any,
        })
        .collect();
    ops.push(Op::Put {
        key: crate::keys::issued_key(name, fingerprint),
        value: not_after.max(0).to_string().into_bytes(),
        pre: Precondition::Any,
    });
    ops
}

/// A renewal that may go ahead, read before signing (cheap refusals first).
pub async fn may_renew(
    store: &dyn Store,
    name: &str,
    now_ms: u64,
    interval_ms: u64,
) -> Result<(), CoordinatorError> {
    let (rec, _) = load(store, name).await?;
    check_renew(name, rec.as_ref(), now_ms, interval_ms)
}

fn check_renew(
    name: &str,
    rec: Option<&AgentIdentity>,
    now_ms: u64,
    interval_ms: u64,
) -> Result<(), CoordinatorError> {
    let Some(rec) = rec else { return Ok(()) };
    if rec.revoked {
        return Err(revoked_error(name));
    }
    let next = rec.last_renew_unix_ms.saturating_add(interval_ms);
    if rec.last_renew_unix_ms != 0 && now_ms < next {
        return Err(CoordinatorError::RenewTooSoon {
            why: format!(
                "agent '{name}' renewed its certificate {} ms ago; one renewal per {} ms",
                now_ms.saturating_sub(rec.last_renew_unix_ms),
                interval_ms
            ),
            retry_after_s: (next - now_ms).div_ceil(1000),
        });
    }
    Ok(())
}

/// Records a renewed certificate of `name` in one commit with the identity
/// record, conditional on the record as read: refused when the identity is
/// revoked, renewed less than `interval_ms` ago, or changed meanwhile (a
/// concurrent renewal or revocation).
pub async fn record_renewal(
    store: &dyn Store,
    name: &str,
    fingerprint: &str,
    not_after: i64,
    now_ms: u64,
    interval_ms: u64,
) -> Result<(), CoordinatorError> {
    let (rec, rev) = load(store, name).await?;
    check_renew(name, rec.as_ref(), now_ms, interval_ms)?;
    let mut rec = rec.unwrap_or_default();
    rec.last_renew_unix_ms = now_ms;
    let existing = store.range(&crate::keys::issued_prefix(name)).await?;
    let mut ops = vec![Op::Put {
        key: identity_key(name),
        value: encode(&rec)?,
        pre: pre(rev),
    }];
    ops.extend(issued_ops(
        name,
        fingerprint,
        not_after,
        existing,
        now_ms / 1000,
    ));
    match store.commit(ops).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => {
            // Someone else decided first: say what they decided.
            let (now_rec, _) = load(store, name).await?;
            check_renew(name, now_rec.as_ref(), now_ms, interval_ms)?;
            Err(CoordinatorError::RenewTooSoon {
                why: format!("another renewal of agent '{name}' ran at the same time"),
                retry_after_s: interval_ms.div_ceil(1000),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether an enrolment for `name` may take it: refused while an enrolled,
/// unrevoked identity holds the name, or a registered agent does (`registered`).
fn check_free(
    name: &str,
    rec: Option<&AgentIdentity>,
    registered: bool,
) -> Result<(), CoordinatorError> {
    match rec {
        Some(r) if r.revoked => Ok(()),
        Some(_) => Err(CoordinatorError::AgentNameTaken(name.to_string())),
        None if registered => Err(CoordinatorError::AgentNameTaken(name.to_string())),
        None => Ok(()),
    }
}

/// What an enrolment records.
#[derive(Debug, Clone)]
pub struct Enrolment<'a> {
    pub name: &'a str,
    pub token_id: &'a str,
    pub allowed_labels: Vec<String>,
    pub fingerprint: &'a str,
    pub not_after: i64,
    pub now_s: u64,
}

/// The checks and operations of an enrolment, to commit together with the
/// burning of its token: the name must be free, and stays so until then
/// (the record's revision is a precondition).
pub async fn enrolment_ops(
    store: &dyn Store,
    e: &Enrolment<'_>,
) -> Result<Vec<Op>, CoordinatorError> {
    let (rec, rev) = load(store, e.name).await?;
    let registered = store.get(&crate::records::agent_key(e.name)).await?;
    check_free(e.name, rec.as_ref(), registered.is_some())?;
    let new = AgentIdentity {
        revoked: false,
        revoked_unix_s: 0,
        allowed_labels: Some(e.allowed_labels.clone()),
        token_id: e.token_id.to_string(),
        enrolled_unix_s: e.now_s,
        last_renew_unix_ms: 0,
        generation: rec.as_ref().map_or(0, |r| r.generation) + 1,
    };
    let mut ops = vec![Op::Put {
        key: identity_key(e.name),
        value: encode(&new)?,
        pre: pre(rev),
    }];
    let existing = store.range(&crate::keys::issued_prefix(e.name)).await?;
    if rec.as_ref().is_some_and(|r| r.revoked) {
        // Whatever the revocation left unrevoked stays refused after this.
        ops.extend(revoke_ops(e.name, unexpired(&existing, e.now_s)));
    }
    ops.extend(issued_ops(
        e.name,
        e.fingerprint,
        e.not_after,
        existing,
        e.now_s,
    ));
    Ok(ops)
}

/// The fingerprints of the certificates of `issued` (the records under
/// `i/<name>/`) that have not expired at `now_s`.
fn unexpired(issued: &[crate::store::KeyValue], now_s: u64) -> Vec<String> {
    issued
        .iter()
        .filter(|kv| serde_json::from_slice::<u64>(&kv.value).map_or(true, |t| t > now_s))
        .filter_map(|kv| kv.key.rsplit('/').next().map(str::to_string))
        .collect()
}

/// The `v/<fingerprint>` records revoking `fingerprints` of agent `name`.
fn revoke_ops(name: &str, fingerprints: Vec<String>) -> Vec<Op> {
    fingerprints
        .into_iter()
        .filter(|fp| !fp.is_empty())
        .map(|fp| Op::Put {
            key: crate::keys::revoked_key(&fp),
            value: name.as_bytes().to_vec(),
            pre: Precondition::Any,
        })
        .collect()
}

/// The unexpired certificates issued to `name`, and the one its stored
/// registration names (an offline-issued one is not under `i/`).
async fn certificates_of(
    store: &dyn Store,
    name: &str,
    registered: Option<&crate::store::KeyValue>,
    now_s: u64,
) -> Result<Vec<String>, CoordinatorError> {
    let issued = store.range(&crate::keys::issued_prefix(name)).await?;
    let mut fps = unexpired(&issued, now_s);
    if let Some(kv) = registered
        && let Ok(rec) = serde_json::from_slice::<crate::records::AgentRecord>(&kv.value)
        && !rec.cert_fingerprint.is_empty()
        && !fps.contains(&rec.cert_fingerprint)
    {
        fps.push(rec.cert_fingerprint);
    }
    Ok(fps)
}

/// Revokes identity `name` and every unexpired certificate issued to it (and
/// the one its stored registration names), in one commit conditional on the
/// identity record: a renewal that has not committed by then fails, and one
/// that has is among those revoked. Returns their fingerprints.
pub async fn revoke(
    store: &dyn Store,
    name: &str,
    now_s: u64,
) -> Result<Vec<String>, CoordinatorError> {
    // A renewal that commits between the read and the commit makes this one
    // conflict: read again and retry. Renewals are bounded per identity, so
    // in practice this takes one more round; backing off lets a revocation win
    // even against a storm of commits (the test allows unbounded renewals).
    for attempt in 0..64u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(attempt.min(20))).await;
        }
        let (rec, rev) = load(store, name).await?;
        let registered = store.get(&crate::records::agent_key(name)).await?;
        if rec.is_none() && registered.is_none() {
            return Err(CoordinatorError::AgentNotFound(name.to_string()));
        }
        let mut rec = rec.unwrap_or_default();
        if !rec.revoked {
            rec.revoked = true;
            rec.revoked_unix_s = now_s;
            rec.generation += 1;
        }
        let fps = certificates_of(store, name, registered.as_ref(), now_s).await?;
        // The revocations first, the identity last: an agent with more
        // certificates than one commit takes is revoked in several
        // (`store::split`); a conflict on the identity tries again.
        let mut ops = revoke_ops(name, fps.clone());
        ops.push(Op::Put {
            key: identity_key(name),
            value: encode(&rec)?,
            pre: pre(rev),
        });
        match commit_in_chunks(store, ops).await {
            Ok(_) => return Ok(fps),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CoordinatorError::StoreConflict(identity_key(name)))
}

/// Forgets identity `name` (`baton agents rm`): the name may enrol again. The
/// certificates issued to it (and `fingerprint`, the one it registered with,
/// when known) are revoked before the identity goes, so that a removed machine's
/// certificate cannot come back unrestricted (without the record, nothing
/// would bound its labels). Returns the fingerprints revoked.
pub async fn forget(
    store: &dyn Store,
    name: &str,
    fingerprint: &str,
    now_s: u64,
) -> Result<Vec<String>, CoordinatorError> {
    let registered = store.get(&crate::records::agent_key(name)).await?;
    let mut fps = certificates_of(store, name, registered.as_ref(), now_s).await?;
    if !fingerprint.is_empty() && !fps.iter().any(|f| f == fingerprint) {
        fps.push(fingerprint.to_string());
    }
    // The revocations first, in as many commits as needed, then the identity.
    let mut ops = revoke_ops(name, fps.clone());
    ops.push(Op::Delete {
        key: identity_key(name),
        pre: Precondition::Any,
    });
    commit_in_chunks(store, ops).await?;
    Ok(fps)
}

#[cfg(test)]
mod tests;
