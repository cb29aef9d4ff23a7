//! The [`Catalog`] handle over the store, and what the catalog's operations
//! (`folders.rs`, `packages.rs`, `start.rs`) share: records stored as JSON and
//! the retries of a read-modify-write. A leaf of `catalog/`.

use std::sync::Arc;

use crate::error::CoordinatorError;
use crate::store::Store;

/// Attempts of a read-modify-write before giving up with `STORE_CONFLICT`.
pub(crate) const RETRIES: usize = 8;

/// The catalog over a store. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    pub(crate) store: Arc<dyn Store>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Catalog { .. }")
    }
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Catalog {
        Catalog { store }
    }
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CoordinatorError> {
    serde_json::to_vec(v).map_err(|e| CoordinatorError::Store(e.to_string()))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &[u8],
) -> Result<T, CoordinatorError> {
    serde_json::from_slice(value)
        .map_err(|e| CoordinatorError::Store(format!("corrupt record '{key}': {e}")))
}
