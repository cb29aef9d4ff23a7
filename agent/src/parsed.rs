//! Parsed child packages, by content hash, so that the children of one fan-out
//! (the same package text, thousands of times) are parsed once per agent rather
//! than at every `StartJob`. A hit needs the same text, not only the same hash
//! claimed: a request whose text differs is checked and parsed as if new.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use baton_package::Package;

/// Most packages kept; the cache starts over when full.
const ENTRIES_MAX: usize = 64;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::check_package_with;
    use crate::model::{DispatchKey, Epoch, PackageSource, StartJob};
    use baton_proto::RejectCode;

    fn job(text: &str, hash: String) -> StartJob {
        StartJob {
            dispatch: DispatchKey {
                execution_id: "e".into(),
                task_path: "t".into(),
                item_index: 0,
                attempt: 1,
            },
            package: PackageSource {
                name: "child".into(),
                content_hash: hash,
                content: Some(text.into()),
            },
            parameters: Default::default(),
            epoch: Epoch(1),
            deadline: None,
            traceparent: None,
            folder: "/".into(),
        }
    }

    #[test]
    fn a_package_is_parsed_once_and_a_different_text_is_checked_again() {
        let cache = ParsedPackages::new();
        let text = "name = 'child'\n[tasks.a]\nnoop = true\n";
        let hash = baton_package::content_hash(text);
        let (first, _) = check_package_with(&job(text, hash.clone()), Some(&cache)).unwrap();
        let (again, _) = check_package_with(&job(text, hash.clone()), Some(&cache)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second is the cached parse"
        );

        // Same claimed hash, other text: not taken from the cache; its hash fails.
        let forged = "name = 'forged'\n[tasks.a]\nnoop = true\n";
        let r = check_package_with(&job(forged, hash), Some(&cache)).unwrap_err();
        assert_eq!(r.code, RejectCode::UnknownPackage);

        for i in 0..(ENTRIES_MAX + 1) {
            let t = format!("name = 'p{i}'\n[tasks.a]\nnoop = true\n");
            check_package_with(&job(&t, baton_package::content_hash(&t)), Some(&cache)).unwrap();
        }
        assert!(cache.entries.lock().unwrap().len() <= ENTRIES_MAX);
    }
}
