//! Who may call the coordinator's `ControlService`, and what they may do.
//!
//! A caller proves a principal with a client certificate (`NAME.client.baton`)
//! or an API token (`authorization: Bearer btn_api_…`, see [`tokens`]).
//! Permissions are granted per folder ([`grants`]); nothing is allowed without
//! a grant. The principal `admin` holds `manage` on "/" from the first start.
//! Every refusal and every change of permissions or tokens goes to the
//! [`audit`] trail.
//!
//! Without TLS (`--insecure`, loopback only) nobody can be identified: every
//! caller is the principal `insecure` and every call is allowed.

pub mod audit;
pub mod audit_file;
pub mod grants;
pub mod identity;
pub mod refusals;
pub mod tokens;

use std::sync::Arc;

use baton_proto::identity::Peer;

use crate::error::CoordinatorError;
use crate::store::{Op, Precondition, Store};
pub use grants::{GrantSet, Permission, normalize_folder};

/// The principal created at init, with `manage` on "/".
pub const ADMIN: &str = "admin";

/// What a caller presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No TLS at all (`--insecure`).
    Plaintext,
    /// A verified certificate of Baton's CA.
    Certificate { peer: Peer, fingerprint: String },
    /// No certificate; maybe a bearer token (never logged).
    Bearer(Option<String>),
}

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Certificate,
    Token,
    Insecure,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Certificate => "certificate",
            Method::Token => "token",
            Method::Insecure => "insecure",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub method: Method,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Authentication and authorization over the store.
#[derive(Clone)]
pub struct Auth {
    store: Arc<dyn Store>,
    pub audit: Arc<audit::Audit>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

pub(crate) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A valid principal name: like an agent name (it can be a certificate's DNS label).
pub fn valid_principal(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, audit: Arc<audit::Audit>) -> Auth {
        Auth { store, audit }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Creates the `admin` principal's grant at the first start.
    pub async fn ensure_admin(&self) -> Result<(), CoordinatorError> {
        if self.store.get(&grants::grants_key(ADMIN)).await?.is_some() {
            return Ok(());
        }
        let mut g = GrantSet::default();
        g.grant(Permission::Manage, "/");
        let op = Op::Put {
            key: grants::grants_key(ADMIN),
            value: encode(&g)?,
            pre: Precondition::Absent,
        };
        match self.store.commit(vec![op]).await {
            Ok(_) | Err(crate::store::StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The principal behind `cred`, for `call`. Agents and the coordinator's
    /// own certificate are not principals.
    pub async fn authenticate(
        &self,
        cred: &Credential,
        call: &str,
    ) -> Result<Principal, CoordinatorError> {
        let refuse = |who: &str, e: CoordinatorError| {
            self.audit.denied(who, call, "", e.code());
            Err(e)
        };
        match cred {
            Credential::Plaintext => Ok(Principal {
                name: "insecure".into(),
                method: Method::Insecure,
            }),
            Credential::Certificate {
                peer: Peer::Client(name),
                fingerprint,
            } => {
                if self
                    .store
                    .get(&crate::keys::revoked_key(fingerprint))
                    .await?
                    .is_some()
                {
                    return refuse(
                        name,
                        CoordinatorError::CertRevoked(format!(
                            "the certificate of client '{name}' was revoked"
                        )),
                    );
                }
                Ok(Principal {
                    name: name.clone(),
                    method: Method::Certificate,
                })
            }
            Credential::Certificate { peer, .. } => refuse(
                &peer.to_string(),
                CoordinatorError::PermissionDenied(format!(
                    "{peer} may not call {call}: ControlService is for clients (a client certificate or an API token)"
                )),
            ),
            Credential::Bearer(None) => refuse(
                "anonymous",
                CoordinatorError::Unauthenticated(format!(
                    "{call} needs a client certificate or an API token (authorization: Bearer …)"
                )),
            ),
            Credential::Bearer(Some(token)) => {
                match tokens::authenticate_api(self.store.as_ref(), token, now_s()).await {
                    Ok(name) => Ok(Principal {
                        name,
                        method: Method::Token,
                    }),
                    Err(
                        e @ (CoordinatorError::TokenRevoked(_) | CoordinatorError::TokenExpired(_)),
                    ) => {
                        let who = match &e {
                            CoordinatorError::TokenRevoked(id)
                            | CoordinatorError::TokenExpired(id) => format!("token {id}"),
                            _ => "anonymous".to_string(),
                        };
                        refuse(&who, e)
                    }
                    Err(e) => refuse("anonymous", e),
                }
            }
        }
    }

    /// The grants of `principal`.
    pub async fn grants(&self, principal: &str) -> Result<(GrantSet, u64), CoordinatorError> {
        match self.store.get(&grants::grants_key(principal)).await? {
            None => Ok((GrantSet::default(), 0)),
            Some(kv) => Ok((
                serde_json::from_slice(&kv.value)
                    .map_err(|e| CoordinatorError::Store(format!("grants of {principal}: {e}")))?,
                kv.mod_revision,
            )),
        }
    }

    /// Succeeds if `who` holds `needed` on `folder`; otherwise an audited refusal.
    pub async fn require(
        &self,
        who: &Principal,
        needed: Permission,
        folder: &str,
        call: &str,
    ) -> Result<(), CoordinatorError> {
        if who.method == Method::Insecure {
            return Ok(());
        }
        let (g, _) = self.grants(&who.name).await?;
        if g.allows(needed, folder) {
            return Ok(());
        }
        let e = CoordinatorError::PermissionDenied(format!(
            "{} lacks '{needed}' on {folder} (needed by {call}); ask someone with 'manage' there: baton role grant {} {needed} {folder}",
            who.name, who.name
        ));
        self.audit.denied(&who.name, call, folder, e.code());
        Err(e)
    }

    /// A filter for listings: whether `who` may read a folder.
    pub async fn reader(
        &self,
        who: &Principal,
    ) -> Result<impl Fn(&str) -> bool + Send + Sync + 'static, CoordinatorError> {
        let g = if who.method == Method::Insecure {
            let mut g = GrantSet::default();
            g.grant(Permission::Read, "/");
            g
        } else {
            self.grants(&who.name).await?.0
        };
        Ok(move |folder: &str| g.allows(Permission::Read, folder))
    }

    /// Adds (`add`) or removes a grant; returns whether anything changed.
    pub async fn set_grant(
        &self,
        principal: &str,
        p: Permission,
        folder: &str,
        add: bool,
    ) -> Result<bool, CoordinatorError> {
        if !valid_principal(principal) {
            return Err(CoordinatorError::InvalidRequest(format!(
                "invalid principal '{principal}': 1-63 letters, digits, '-'"
            )));
        }
        for _ in 0..8 {
            let (mut g, rev) = self.grants(principal).await?;
            let changed = if add {
                g.grant(p, folder)
            } else {
                g.revoke(p, folder)
            };
            if !changed {
                return Ok(false);
            }
            if principal == ADMIN && !g.allows(Permission::Manage, "/") {
                return Err(CoordinatorError::InvalidRequest(
                    "the admin principal keeps 'manage' on / (so that someone always can)".into(),
                ));
            }
            let pre = if rev == 0 {
                Precondition::Absent
            } else {
                Precondition::Revision(rev)
            };
            let op = Op::Put {
                key: grants::grants_key(principal),
                value: encode(&g)?,
                pre,
            };
            match self.store.commit(vec![op]).await {
                Ok(_) => return Ok(true),
                Err(crate::store::StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoordinatorError::StoreConflict(grants::grants_key(
            principal,
        )))
    }

    /// Every grant, as (principal, permission, folder), optionally filtered.
    pub async fn list_grants(
        &self,
        folder: &str,
        principal: &str,
    ) -> Result<Vec<(String, Permission, String)>, CoordinatorError> {
        let mut out = Vec::new();
        for kv in self.store.range(grants::GRANTS_PREFIX).await? {
            let name = kv.key[grants::GRANTS_PREFIX.len()..].to_string();
            if !principal.is_empty() && name != principal {
                continue;
            }
            let g: GrantSet = serde_json::from_slice(&kv.value)
                .map_err(|e| CoordinatorError::Store(format!("grants of {name}: {e}")))?;
            for (f, perms) in g.grants {
                if !grants::within(&f, folder) {
                    continue;
                }
                for p in perms {
                    out.push((name.clone(), p, f.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Stores a new token and returns its secret text (shown once).
    pub async fn create_token(
        &self,
        kind: tokens::TokenKind,
        name: &str,
        ttl_s: u64,
        created_by: &str,
        labels: Vec<String>,
    ) -> Result<tokens::NewToken, CoordinatorError> {
        if !labels.is_empty() && kind != tokens::TokenKind::Agent {
            return Err(CoordinatorError::InvalidRequest(
                "labels bound what an enrolled agent may claim: only an --agent token takes them"
                    .into(),
            ));
        }
        if labels.len() > 64 {
            return Err(CoordinatorError::InvalidRequest(
                "at most 64 labels per token".into(),
            ));
        }
        for l in &labels {
            let ok = l.len() <= 256
                && l.split_once('=')
                    .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty());
            if !ok {
                return Err(CoordinatorError::InvalidRequest(format!(
                    "label '{l}' is not key=value (or key=* for any value)"
                )));
            }
        }
        match kind {
            tokens::TokenKind::Api if !valid_principal(name) => {
                return Err(CoordinatorError::InvalidRequest(format!(
                    "an API token needs a principal name (1-63 letters, digits, '-'), not '{name}'"
                )));
            }
            tokens::TokenKind::Agent if !name.is_empty() && !valid_principal(name) => {
                return Err(CoordinatorError::InvalidRequest(format!(
                    "invalid agent name '{name}'"
                )));
            }
            _ => {}
        }
        let mut t = tokens::new_token(kind, name, ttl_s, created_by, now_s())?;
        t.record.labels = labels;
        self.store
            .commit(vec![Op::Put {
                key: tokens::token_key(&t.record.id),
                value: encode(&t.record)?,
                pre: Precondition::Absent,
            }])
            .await?;
        Ok(t)
    }

    pub async fn list_tokens(&self) -> Result<Vec<tokens::TokenRecord>, CoordinatorError> {
        self.store
            .range(tokens::TOKENS_PREFIX)
            .await?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| CoordinatorError::Store(format!("{}: {e}", kv.key)))
            })
            .collect()
    }

    /// Refuses the client certificate with this fingerprint from now on;
    /// false if it already was.
    pub async fn revoke_certificate(&self, fingerprint: &str) -> Result<bool, CoordinatorError> {
        let fp = fingerprint.trim().to_ascii_lowercase().replace(':', "");
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CoordinatorError::InvalidRequest(
                "a fingerprint is the 64 hex digits of the certificate's SHA-256".into(),
            ));
        }
        let key = crate::keys::revoked_key(&fp);
        if self.store.get(&key).await?.is_some() {
            return Ok(false);
        }
        self.store
            .commit(vec![Op::Put {
                key,
                value: b"client".to_vec(),
                pre: Precondition::Any,
            }])
            .await?;
        Ok(true)
    }

    /// Revokes a token by id; false if it was already revoked.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, CoordinatorError> {
        let key = tokens::token_key(id);
        let kv =
            self.store.get(&key).await?.ok_or_else(|| {
                CoordinatorError::InvalidRequest(format!("no token with id '{id}'"))
            })?;
        let mut rec: tokens::TokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| CoordinatorError::Store(format!("{key}: {e}")))?;
        if rec.revoked {
            return Ok(false);
        }
        rec.revoked = true;
        self.store
            .commit(vec![Op::Put {
                key,
                value: encode(&rec)?,
                pre: Precondition::Revision(kv.mod_revision),
            }])
            .await?;
        Ok(true)
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CoordinatorError> {
    serde_json::to_vec(v).map_err(|e| CoordinatorError::Store(e.to_string()))
}
