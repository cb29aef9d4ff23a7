//! Parsed child packages, by content hash, so that the children of one fan-out
//! (the same package text, thousands of times) are parsed once per agent rather
//! than at every `StartJob`. A hit needs the same text, not only the same hash
//! claimed: a request whose text differs is checked and parsed as if new.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use baton_package::Package;

/// Most packages kept; the cache starts over when full.
pub(crate) const ENTRIES_MAX: usize = 64;
/// Packages larger than this are parsed every time (not worth the memory).
const TEXT_BYTES_MAX: usize = 64 * 1024;

/// content hash → (text, parsed package).
#[derive(Default)]
pub struct ParsedPackages {
    entries: Mutex<HashMap<String, (String, Arc<Package>)>>,
}

impl ParsedPackages {
    pub fn new() -> ParsedPackages {
        ParsedPackages::default()
    }

    /// The package parsed from exactly `text`, if kept.
    pub fn get(&self, hash: &str, text: &str) -> Option<Arc<Package>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(kept, _)| kept == text)
            .map(|(_, p)| p.clone())
    }

    /// Keeps a package parsed from `text`, whose hash was checked.
    pub fn put(&self, hash: &str, text: &str, package: Arc<Package>) {
        if text.len() > TEXT_BYTES_MAX {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(hash.to_string(), (text.to_string(), package));
    }

    /// Packages kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
