//! The sealing key and what it does: AES-256-GCM sealing and opening of one
//! value bound to its associated data, the key file (`secrets.key`, mode
//! 0600) and the key's public id. A leaf: no store, no records; checking the
//! key against the store and opening a stored execution's parameters is
//! [`crate::secrets`].

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tracing::warn;

/// Name of the key file in the data directory.
pub const KEY_FILE: &str = "secrets.key";
/// Bytes of a sealing key.
pub const KEY_LEN: usize = 32;
/// Prefix of a sealed value.
pub const SEALED_PREFIX: &str = "sealed:v1:";
const TAG_LEN: usize = 16;

/// Why a key cannot be used or a value cannot be opened. Messages never hold a
/// plaintext or a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file is unusable; the coordinator does not start.
    #[error("sealing key {path}: {message}")]
    KeyInvalid { path: String, message: String },
    /// A sealed value does not open under this key, this execution and this name.
    #[error("a sealed value cannot be opened: {0}")]
    Unsealable(String),
}

impl SecretError {
    /// The stable code (see `docs/errors.md`).
    pub fn code(&self) -> &'static str {
        match self {
            SecretError::KeyInvalid { .. } => "SECRET_KEY_INVALID",
            SecretError::Unsealable(_) => "SECRET_UNSEALABLE",
        }
    }
}

/// The coordinator's sealing key. `Debug` shows only its id.
pub struct SealingKey {
    key: LessSafeKey,
    id: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey").field("id", &self.id).finish()
    }
}

impl SealingKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<SealingKey> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        let mut h = Sha256::new();
        h.update(b"baton secrets key id v1\0");
        h.update(bytes);
        let id = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(SealingKey {
            key: LessSafeKey::new(key),
            id,
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random key (kept only in memory; see [`crate::secrets::load`] for the file).
    pub fn generate() -> Result<SealingKey, SecretError> {
        let mut bytes = random_key_bytes()?;
        let key = SealingKey::from_bytes(&bytes);
        bytes.fill(0);
        key.ok_or_else(|| SecretError::Unsealable("cannot make a key".into()))
    }

    /// A short, public name of the key (a hash; it reveals nothing of the key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext`, bound to `aad`.
    pub fn seal(&self, plaintext: &str, aad: &[u8]) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretError::Unsealable("no randomness for a nonce".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| SecretError::Unsealable("the value is too long to seal".into()))?;
        out.extend_from_slice(&body);
        Ok(format!("{SEALED_PREFIX}{}", base64::encode(&out)))
    }

    /// Opens a value made by [`SealingKey::seal`] with the same key and `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<String, SecretError> {
        let bad = |why: &str| SecretError::Unsealable(why.to_string());
        let body = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or_else(|| bad("it is not sealed (no sealed:v1: prefix)"))?;
        let mut raw = base64::decode(body).ok_or_else(|| bad("it is not valid base64"))?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(bad("it is too short"));
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).map_err(|_| bad("bad nonce"))?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut raw[NONCE_LEN..])
            .map_err(|_| bad("wrong key, or the value was altered or belongs to another record"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad("the plaintext is not UTF-8"))
    }
}

/// The associated data of a parameter value: its execution and its name.
pub fn param_aad(execution_id: &str, name: &str) -> Vec<u8> {
    format!("baton/param/v1\0{execution_id}\0{name}").into_bytes()
}

/// Seals the values of `params` that `is_sensitive` names, for execution `id`.
pub fn seal_params(
    key: &SealingKey,
    id: &str,
    params: BTreeMap<String, String>,
    is_sensitive: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, String>, SecretError> {
    params
        .into_iter()
        .map(|(name, value)| {
            if is_sensitive(&name) {
                let sealed = key.seal(&value, &param_aad(id, &name))?;
                Ok((name, sealed))
            } else {
                Ok((name, value))
            }
        })
        .collect()
}

fn random_key_bytes() -> Result<[u8; KEY_LEN], SecretError> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SecretError::Unsealable("no randomness for a key".into()))?;
    Ok(bytes)
}

/// The key in `path`; `None` if there is no such file. Anything else that is
/// wrong with the file is an error: it is never replaced.
pub fn read_key_file(path: &Path) -> Result<Option<SealingKey>, SecretError> {
    let invalid = |message: String| SecretError::KeyInvalid {
        path: path.display().to_string(),
        message,
    };
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid(format!("cannot be read: {e}"))),
    };
    let key = SealingKey::from_bytes(&bytes);
    let len = bytes.len();
    bytes.fill(0);
    let key = key.ok_or_else(|| {
        invalid(format!(
            "holds {len} bytes, not {KEY_LEN}: it is not a sealing key (restore the original; \
             it is never replaced, or stored secrets would become unreadable)"
        ))
    })?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the sealing key is readable by other users; chmod 600 it");
    }
    Ok(Some(key))
}

/// Creates a new key file (mode 0600) at `path`; fails if one appeared meanwhile.
/// Written beside and then linked into place, so a crash never leaves a short key.
pub fn create_key_file(path: &Path) -> Result<SealingKey, SecretError> {
    let invalid = |message: String| SecretError::KeyInvalid {
        path: path.display().to_string(),
        message,
    };
    let mut bytes = random_key_bytes()?;
    let key = SealingKey::from_bytes(&bytes);
    let tmp: PathBuf = path.with_extension("key.tmp");
    let written = (|| -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        // A hard link fails if the key exists: an existing key is never replaced.
        std::fs::hard_link(&tmp, path)?;
        std::fs::remove_file(&tmp)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    bytes.fill(0);
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        invalid(format!("cannot be created: {e}"))
    })?;
    key.ok_or_else(|| invalid("cannot make a key".into()))
}

/// Standard base64 with padding (RFC 4648 §4): enough for sealed values.
pub(crate) mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let bytes = text.as_bytes();
        if !bytes.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
        let chunks = bytes.len() / 4;
        for (ci, chunk) in bytes.chunks(4).enumerate() {
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && ci + 1 != chunks) {
                return None;
            }
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                let v = ALPHABET.iter().position(|&a| a == c)? as u32;
                n = (n << 6) | v;
            }
            n <<= 6 * pad as u32;
            let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            // Canonical only: the bits a padded chunk drops must be zero.
            if got[3 - pad..].iter().any(|&b| b != 0) {
                return None;
            }
            out.extend_from_slice(&got[..3 - pad]);
        }
        Some(out)
    }
}
