//! The key layout: every key and key prefix the coordinator reads or writes,
//! named in one place. Writers and readers build keys only through these
//! functions and constants, so that the layout below is the whole truth.
//!
//! | key | value |
//! | --- | --- |
//! | `m/epoch` | the coordinator epoch, raised at every start (fencing) |
//! | `m/secrets-key-id` | id of the key that seals sensitive parameters (`crate::secrets`) |
//! | `a/<agent>` | `AgentRecord`: the registration |
//! | `s/<agent>` | `SeqRecord`: the outbox and the highest event applied from it |
//! | `e/<execution>` | `ExecutionRecord`: parameters, state, and its bundle by reference (root name, path → content hash) |
//! | `c/<execution>/<task>/<index>` | `ChildRecord`: one child job, its phase and attempt (10-digit index) |
//! | `v/<fingerprint>` | a revoked certificate (value: the agent's or client's name) |
//! | `i/<agent>/<fingerprint>` | a certificate issued to an agent by `Enroll`/`Renew` (value: its expiry), so that revoking the agent revokes them all |
//! | `r/<agent>` | an agent identity (revoked or not): `crate::auth::identity` |
//! | `k/<token id>` | a token (hash of its secret, kind, expiry, state): `crate::auth::tokens` |
//! | `g/<principal>` | a principal's grants: `crate::auth::grants` |
//! | `f/<folder>` | a catalog folder (`f/etl/daily` for `/etl/daily`; `/` has no record) |
//! | `n/<folder>/<name>` | the id of the catalog package at that path (`n/etl/load`, `n/load` in `/`) |
//! | `p/<package id>` | a catalog package: folder, name, latest version |
//! | `pv/<package id>/<version>` | one immutable version of a package: its files' hashes, parameters (10-digit version) |
//! | `b/<sha256>` | the text of one package file, stored once per content hash: catalog versions and executions point to it |
//! | `q/e/<principal>/<execution>` | what an execution counts against its starter's quota |
//! | `q/v/<principal>/<package id>/<version>` | what a package version counts against its deployer's quota |
//! | `q/v-indexed` | set once every stored version has its usage record |
//!
//! Records are JSON: small, inspectable with any redb or etcd tool, and
//! tolerant of added fields (`#[serde(default)]`). A leaf: it imports nothing
//! from the crate.

/// The coordinator epoch.
pub const EPOCH_KEY: &str = "m/epoch";
/// Id of the key that sealed the store's sensitive values.
pub const SECRETS_KEY_ID_KEY: &str = "m/secrets-key-id";

/// Prefix of every agent registration.
pub const AGENT_PREFIX: &str = "a/";
/// Prefix of every agent's sequence record.
pub const SEQ_PREFIX: &str = "s/";
/// Prefix of every execution record.
pub const EXECUTION_PREFIX: &str = "e/";
/// Prefix of every child record.
pub const CHILD_PREFIX: &str = "c/";
/// Prefix of every revoked certificate.
pub const REVOKED_PREFIX: &str = "v/";
/// Prefix of every issued certificate.
pub const ISSUED_PREFIX: &str = "i/";
/// Prefix of every agent identity.
pub const IDENTITY_PREFIX: &str = "r/";
/// Prefix of every token.
pub const TOKENS_PREFIX: &str = "k/";
/// Prefix of every principal's grants.
pub const GRANTS_PREFIX: &str = "g/";
/// Prefix of every catalog folder.
pub const FOLDER_PREFIX: &str = "f/";
/// Prefix of every catalog name entry.
pub const NAME_PREFIX: &str = "n/";
/// Prefix of every catalog package.
pub const PACKAGE_PREFIX: &str = "p/";
/// Prefix of every catalog package version.
pub const VERSION_PREFIX: &str = "pv/";
/// Prefix of every blob (package file text by content hash).
pub const BLOB_PREFIX: &str = "b/";
/// Prefix of the executions' quota usage records.
pub const USAGE_PREFIX: &str = "q/e/";
/// Prefix of the package versions' quota usage records.
pub const VERSION_USAGE_PREFIX: &str = "q/v/";
/// Set once every version stored has its usage record.
pub const VERSION_USAGE_INDEXED: &str = "q/v-indexed";

pub fn agent_key(name: &str) -> String {
    format!("{AGENT_PREFIX}{name}")
}
pub fn seq_key(name: &str) -> String {
    format!("{SEQ_PREFIX}{name}")
}
pub fn execution_key(id: &str) -> String {
    format!("{EXECUTION_PREFIX}{id}")
}
pub fn children_prefix(id: &str) -> String {
    format!("{CHILD_PREFIX}{id}/")
}
pub fn child_key(id: &str, task: &str, index: u32) -> String {
    format!("{CHILD_PREFIX}{id}/{task}/{index:010}")
}

/// Key of a revoked certificate (value: the agent name it belonged to).
pub fn revoked_key(fingerprint: &str) -> String {
    format!("{REVOKED_PREFIX}{fingerprint}")
}

/// Prefix of the certificates issued to agent `name`.
pub fn issued_prefix(name: &str) -> String {
    format!("{ISSUED_PREFIX}{name}/")
}

/// Key of certificate `fingerprint` issued to agent `name`.
pub fn issued_key(name: &str, fingerprint: &str) -> String {
    format!("{}{fingerprint}", issued_prefix(name))
}

/// Key of agent `name`'s identity record.
pub fn identity_key(name: &str) -> String {
    format!("{IDENTITY_PREFIX}{name}")
}

pub fn token_key(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

/// Store key of a principal's grants.
pub fn grants_key(principal: &str) -> String {
    format!("{GRANTS_PREFIX}{principal}")
}

/// Key of a folder record (`folder` normalized, not "/").
pub fn folder_key(folder: &str) -> String {
    format!("f{folder}")
}

/// Prefix of every folder record strictly below `folder`.
pub fn subfolders_prefix(folder: &str) -> String {
    if folder == "/" {
        FOLDER_PREFIX.to_string()
    } else {
        format!("f{folder}/")
    }
}

/// Key of the name entry of the package at `folder`/`name`.
pub fn name_key(folder: &str, name: &str) -> String {
    if folder == "/" {
        format!("n/{name}")
    } else {
        format!("n{folder}/{name}")
    }
}

/// Prefix of the name entries of every package in `folder` and below.
pub fn names_prefix(folder: &str) -> String {
    if folder == "/" {
        NAME_PREFIX.to_string()
    } else {
        format!("n{folder}/")
    }
}

pub fn package_key(id: &str) -> String {
    format!("{PACKAGE_PREFIX}{id}")
}

pub fn versions_prefix(id: &str) -> String {
    format!("{VERSION_PREFIX}{id}/")
}

pub fn version_key(id: &str, version: u32) -> String {
    format!("{VERSION_PREFIX}{id}/{version:010}")
}

pub fn blob_key(hash: &str) -> String {
    format!("{BLOB_PREFIX}{hash}")
}

/// The usage record of version `version` of package `package_id`.
pub fn version_usage_key(who: &str, package_id: &str, version: u32) -> String {
    format!("{VERSION_USAGE_PREFIX}{who}/{package_id}/{version:010}")
}

/// The usage record of execution `id` started by `who`.
pub fn usage_key(who: &str, id: &str) -> String {
    format!("{USAGE_PREFIX}{who}/{id}")
}

/// The execution id of a usage record's key.
pub fn usage_execution(key: &str) -> Option<&str> {
    key.strip_prefix(USAGE_PREFIX)?
        .rsplit_once('/')
        .map(|(_, id)| id)
}

/// The agent name of a key under [`AGENT_PREFIX`], [`SEQ_PREFIX`] or
/// [`REVOKED_PREFIX`] (whatever follows the prefix).
pub fn name_after<'k>(prefix: &str, key: &'k str) -> &'k str {
    key.strip_prefix(prefix).unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_table() {
        assert_eq!(child_key("000001", "fan", 7), "c/000001/fan/0000000007");
        assert!(child_key("x", "t", 1).starts_with(&children_prefix("x")));
        assert_eq!(folder_key("/etl/daily"), "f/etl/daily");
        assert_eq!(subfolders_prefix("/etl"), "f/etl/");
        assert_eq!(subfolders_prefix("/"), "f/");
        assert_eq!(name_key("/etl", "load"), "n/etl/load");
        assert_eq!(name_key("/", "load"), "n/load");
        assert_eq!(names_prefix("/etl"), "n/etl/");
        assert_eq!(version_key("x", 3), "pv/x/0000000003");
        assert_eq!(issued_key("a1", "ff"), "i/a1/ff");
        assert_eq!(
            usage_execution(&usage_key("alice", "000042")),
            Some("000042")
        );
        assert_eq!(name_after(SEQ_PREFIX, &seq_key("a1")), "a1");
    }
}
