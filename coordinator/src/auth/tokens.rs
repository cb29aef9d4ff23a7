//! Tokens: one-time agent enrolment tokens and API tokens for principals.
//!
//! A token is an id and a random secret. Only the secret's SHA-256 is stored
//! (under `k/<id>`); the secret is shown once, when the token is made.
//!
//! | kind | printed as | used |
//! | --- | --- | --- |
//! | agent enrolment | `btn_enr_<id>_<secret>_<ca pin>` | once, by `baton agent --enroll` |
//! | API | `btn_api_<id>_<secret>` | as `authorization: Bearer …` until revoked or expired |
//!
//! The enrolment token also carries the SHA-256 of the CA certificate, so a
//! new agent can check it reached the right coordinator before it trusts it.
//! Using an enrolment token is a compare-and-swap on its record: two agents
//! racing with one token cannot both enrol.

use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;
use crate::store::{Op, Precondition, Store};

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Agent,
    Api,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Agent => "agent",
            TokenKind::Api => "api",
        }
    }
}

/// The stored part of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub kind: TokenKind,
    /// API: the principal. Agent: the only name it enrols (empty: any).
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub created_unix_s: u64,
    pub expires_unix_s: u64,
    pub created_by: String,
    /// When an enrolment token was used (0: not yet).
    #[serde(default)]
    pub used_unix_s: u64,
    #[serde(default)]
    pub revoked: bool,
    /// Agent: the labels an agent enrolled with it may claim (`key=value` or
    /// `key=*`); none listed allows none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl TokenRecord {
    /// active | used | revoked | expired
    pub fn state(&self, now_s: u64) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.used_unix_s != 0 {
            "used"
        } else if now_s >= self.expires_unix_s {
            "expired"
        } else {
            "active"
        }
    }
}

pub use crate::keys::{TOKENS_PREFIX, token_key};

/// Default lifetime of an enrolment token.
pub const AGENT_TOKEN_TTL_S: u64 = 3600;
/// Default lifetime of an API token.
pub const API_TOKEN_TTL_S: u64 = 30 * 86_400;
/// Longest lifetime of any token.
pub const MAX_TOKEN_TTL_S: u64 = 366 * 86_400;

fn sha256_hex(s: &str) -> String {
    baton_proto::tls::sha256_hex(s.as_bytes())
}

/// Equal-time comparison of two hex digests.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A freshly made token: its record and the secret text to show once.
pub struct NewToken {
    pub record: TokenRecord,
    /// `btn_<kind>_<id>_<secret>` (the CLI appends the CA pin for agents).
    pub secret_text: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewToken {{ id: {}, .. }}", self.record.id)
    }
}

fn prefix(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Agent => "btn_enr_",
        TokenKind::Api => "btn_api_",
    }
}

/// Makes a token (not yet stored).
pub fn new_token(
    kind: TokenKind,
    name: &str,
    ttl_s: u64,
    created_by: &str,
    now_s: u64,
) -> Result<NewToken, CoordinatorError> {
    if ttl_s > MAX_TOKEN_TTL_S {
        return Err(CoordinatorError::InvalidRequest(format!(
            "a token lives at most {MAX_TOKEN_TTL_S} s (366 days)"
        )));
    }
    let ttl_s = match (ttl_s, kind) {
        (0, TokenKind::Agent) => AGENT_TOKEN_TTL_S,
        (0, TokenKind::Api) => API_TOKEN_TTL_S,
        (t, _) => t,
    };
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    Ok(NewToken {
        record: TokenRecord {
            id: id.clone(),
            kind,
            name: name.to_string(),
            secret_sha256: sha256_hex(&secret),
            created_unix_s: now_s,
            expires_unix_s: now_s + ttl_s,
            created_by: created_by.to_string(),
            used_unix_s: 0,
            revoked: false,
            labels: Vec::new(),
        },
        secret_text: format!("{}{id}_{secret}", prefix(kind)),
    })
}

/// Splits `btn_<kind>_<id>_<secret>[_<pin>]` into (id, secret).
fn parse(kind: TokenKind, text: &str) -> Option<(&str, &str)> {
    let rest = text.trim().strip_prefix(prefix(kind))?;
    let mut parts = rest.split('_');
    let id = parts.next().filter(|s| s.len() == 12)?;
    let secret = parts.next().filter(|s| s.len() == 64)?;
    Some((id, secret))
}

fn invalid(why: &str) -> CoordinatorError {
    CoordinatorError::Unauthenticated(format!("token refused: {why}"))
}

async fn load(
    store: &dyn Store,
    kind: TokenKind,
    text: &str,
) -> Result<(TokenRecord, u64), CoordinatorError> {
    let (id, secret) = parse(kind, text).ok_or_else(|| invalid("malformed"))?;
    let kv = store
        .get(&token_key(id))
        .await?
        .ok_or_else(|| invalid("unknown token"))?;
    let rec: TokenRecord = serde_json::from_slice(&kv.value)
        .map_err(|e| CoordinatorError::Store(format!("token record {id}: {e}")))?;
    if rec.kind != kind || !same(&rec.secret_sha256, &sha256_hex(secret)) {
        return Err(invalid("unknown token"));
    }
    Ok((rec, kv.mod_revision))
}

/// The principal an API token authenticates.
pub async fn authenticate_api(
    store: &dyn Store,
    text: &str,
    now_s: u64,
) -> Result<String, CoordinatorError> {
    let (rec, _) = load(store, TokenKind::Api, text).await?;
    match rec.state(now_s) {
        "active" => Ok(rec.name),
        "revoked" => Err(CoordinatorError::TokenRevoked(rec.id)),
        _ => Err(CoordinatorError::TokenExpired(rec.id)),
    }
}

/// Checks an enrolment token for agent `agent` without using it; returns
/// its record and revision for [`burn_op`].
pub async fn check_enrolment(
    store: &dyn Store,
    text: &str,
    agent: &str,
    now_s: u64,
) -> Result<(TokenRecord, u64), CoordinatorError> {
    let (rec, rev) = load(store, TokenKind::Agent, text).await?;
    match rec.state(now_s) {
        "active" => {}
        "used" => return Err(CoordinatorError::TokenUsed(rec.id)),
        "revoked" => return Err(CoordinatorError::TokenRevoked(rec.id)),
        _ => return Err(CoordinatorError::TokenExpired(rec.id)),
    }
    if !rec.name.is_empty() && rec.name != agent {
        return Err(CoordinatorError::PermissionDenied(format!(
            "token {} enrols agent '{}' only, not '{agent}'",
            rec.id, rec.name
        )));
    }
    Ok((rec, rev))
}

/// The compare-and-swap that marks a checked token used: commit it with
/// whatever the enrolment records, so that both happen or neither.
pub fn burn_op(mut rec: TokenRecord, rev: u64, now_s: u64) -> Result<Op, CoordinatorError> {
    rec.used_unix_s = now_s.max(1);
    let value = serde_json::to_vec(&rec).map_err(|e| CoordinatorError::Store(e.to_string()))?;
    Ok(Op::Put {
        key: token_key(&rec.id),
        value,
        pre: Precondition::Revision(rev),
    })
}

/// Uses an enrolment token for agent `agent`: checks and marks it used in one
/// compare-and-swap. Returns the token id.
pub async fn consume_enrolment(
    store: &dyn Store,
    text: &str,
    agent: &str,
    now_s: u64,
) -> Result<String, CoordinatorError> {
    let (rec, rev) = check_enrolment(store, text, agent, now_s).await?;
    let id = rec.id.clone();
    match store.commit(vec![burn_op(rec, rev, now_s)?]).await {
        Ok(_) => Ok(id),
        Err(crate::store::StoreError::Conflict { .. }) => Err(CoordinatorError::TokenUsed(id)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    async fn put(store: &dyn Store, t: &NewToken) {
        store
            .commit(vec![Op::Put {
                key: token_key(&t.record.id),
                value: serde_json::to_vec(&t.record).unwrap(),
                pre: Precondition::Absent,
            }])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn enrolment_tokens_work_once_and_only_for_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let t = new_token(TokenKind::Agent, "a1", 0, "admin", 1000).unwrap();
        assert!(
            !format!("{t:?}").contains(&t.secret_text),
            "Debug hides the secret"
        );
        put(&store, &t).await;
        let e = consume_enrolment(&store, &t.secret_text, "a2", 1001)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "PERMISSION_DENIED");
        consume_enrolment(&store, &t.secret_text, "a1", 1001)
            .await
            .unwrap();
        let e = consume_enrolment(&store, &t.secret_text, "a1", 1002)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "TOKEN_USED");
        // An API token is not an enrolment token, and a forged secret is unknown.
        let e = consume_enrolment(&store, "btn_enr_000000000000_00", "a1", 1)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "UNAUTHENTICATED");
        let forged = format!("{}{}", &t.secret_text[..t.secret_text.len() - 1], "x");
        let e = consume_enrolment(&store, &forged, "a1", 1)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "UNAUTHENTICATED");
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let t = new_token(TokenKind::Agent, "", 10, "admin", 1000).unwrap();
        put(&store, &t).await;
        let e = consume_enrolment(&store, &t.secret_text, "a1", 1010)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "TOKEN_EXPIRED");
        let api = new_token(TokenKind::Api, "alice", 10, "admin", 1000).unwrap();
        put(&store, &api).await;
        assert_eq!(
            authenticate_api(&store, &api.secret_text, 1005)
                .await
                .unwrap(),
            "alice"
        );
        let e = authenticate_api(&store, &api.secret_text, 1010)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "TOKEN_EXPIRED");
        assert!(new_token(TokenKind::Api, "x", MAX_TOKEN_TTL_S + 1, "a", 0).is_err());
    }

    #[test]
    fn token_text_parses() {
        let t = new_token(TokenKind::Api, "alice", 0, "admin", 0).unwrap();
        assert!(t.secret_text.starts_with("btn_api_"));
        let (id, _) = parse(TokenKind::Api, &t.secret_text).unwrap();
        assert_eq!(id, t.record.id);
        assert!(parse(TokenKind::Agent, &t.secret_text).is_none());
        let pinned = format!(
            "{}_{}",
            t.secret_text.replace("btn_api_", "btn_enr_"),
            "ab".repeat(32)
        );
        assert!(
            parse(TokenKind::Agent, &pinned).is_some(),
            "the CA pin is ignored"
        );
    }
}
