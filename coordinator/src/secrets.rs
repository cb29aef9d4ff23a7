//! Sensitive parameter values at rest.
//!
//! The coordinator keeps a 32-byte sealing key in `<data-dir>/secrets.key`
//! (created with mode 0600 at first start) and seals every value of a parameter
//! declared `sensitive = true` with AES-256-GCM (`ring::aead`) before the value
//! reaches the store. A sealed value is text:
//!
//! ```text
//! sealed:v1:<base64 of nonce (12 bytes) || ciphertext || tag (16 bytes)>
//! ```
//!
//! The associated data binds a value to its execution and parameter name
//! ([`param_aad`]), so a sealed value copied into another record, or under
//! another name, does not open. Nonces are random (96 bits), one per value.
//!
//! The store remembers which key sealed its values (`m/secrets-key-id`, a hash
//! of the key that reveals nothing of it). The coordinator refuses to start
//! (`SECRET_KEY_INVALID`) when the key file is unreadable, has the wrong size,
//! is missing while the store expects one, or is not the store's key: a new key
//! would make every stored secret unreadable, so it is never replaced silently.
//!
//! What this protects: copies of the store (backups, dumps, a disk read
//! without the data directory's key file). What it does not: anyone who can
//! read the coordinator's data directory or memory (root on its host) — the
//! key lives beside the store. Plaintext exists only in the coordinator's
//! memory (the execution's bound parameters, whose `Debug` redacts them), in
//! `StartJob` requests (mutual TLS), and in the child's environment.

use std::collections::BTreeMap;
use std::path::Path;

use tracing::info;

use crate::error::CoordinatorError;
use crate::records::ExecutionRecord;
use crate::store::{Op, Precondition, Store};

pub mod key;

pub use key::{
    KEY_FILE, KEY_LEN, SEALED_PREFIX, SealingKey, SecretError, create_key_file, param_aad,
    read_key_file, seal_params,
};

/// Store key holding the id of the key that sealed the store's values.
pub const KEY_ID_KEY: &str = crate::keys::SECRETS_KEY_ID_KEY;

/// The parameter overrides of a stored execution, with its sensitive values
/// opened. Sensitivity comes from the root package's declarations, so a value
/// of a sensitive parameter that is not sealed (or sealed for another record)
/// is refused, and a plain value that happens to look sealed is left alone.
pub fn open_params(
    key: &SealingKey,
    rec: &ExecutionRecord,
) -> Result<BTreeMap<String, String>, CoordinatorError> {
    let Some(text) = rec.bundle_files().get(&rec.root) else {
        return Ok(rec.params.clone()); // planning reports the missing root
    };
    let parent = baton_package::Package::parse(&rec.root, text)?;
    rec.params
        .iter()
        .map(|(name, value)| {
            if parent.parameters.get(name).is_some_and(|d| d.sensitive) {
                let plain = key
                    .open(value, &param_aad(&rec.id, name))
                    .map_err(|e| match e {
                        SecretError::Unsealable(why) => {
                            SecretError::Unsealable(format!("parameter '{name}': {why}"))
                        }
                        other => other,
                    })?;
                Ok((name.clone(), plain))
            } else {
                Ok((name.clone(), value.clone()))
            }
        })
        .collect()
}

/// Loads the sealing key of `data_dir`, creating it on first start, and checks
/// it against the key id the store recorded (recording it the first time).
pub async fn load(data_dir: &Path, store: &dyn Store) -> Result<SealingKey, CoordinatorError> {
    let path = data_dir.join(KEY_FILE);
    let expected = store
        .get(KEY_ID_KEY)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string());
    let invalid = |message: String| SecretError::KeyInvalid {
        path: path.display().to_string(),
        message,
    };
    let key = match (read_key_file(&path)?, &expected) {
        (Some(key), _) => key,
        (None, Some(id)) => {
            return Err(invalid(format!(
                "the file is missing, but this store holds values sealed with key {id}; \
                 restore {KEY_FILE} from a backup of this data directory (a new key could \
                 not open them)"
            ))
            .into());
        }
        (None, None) => {
            let key = create_key_file(&path)?;
            info!(path = %path.display(), key_id = key.id(), "sealing key for sensitive parameters created");
            key
        }
    };
    match expected {
        Some(id) if id != key.id() => Err(invalid(format!(
            "this is key {}, but this store's values were sealed with key {id}; \
             restore the original {KEY_FILE} from a backup of this data directory",
            key.id()
        ))
        .into()),
        Some(_) => Ok(key),
        None => {
            store
                .commit(vec![Op::Put {
                    key: KEY_ID_KEY.to_string(),
                    value: key.id().as_bytes().to_vec(),
                    pre: Precondition::Absent,
                }])
                .await?;
            Ok(key)
        }
    }
}

#[cfg(test)]
mod tests;
