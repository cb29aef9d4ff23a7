//! Bundles and names from outside: the root name and the file paths of a
//! `StartExecution` / `DeployPackage` bundle (children are resolved by path
//! inside it), run-time parameter overrides, and catalog paths and names.
//!
//! Input layout: fields separated by NUL bytes: the root's name, then pairs of
//! path and text, then (after an empty field) pairs of override name and value.
//! Contract: no panic, and a bundle either checks or says why with an
//! invalid-input code.
#![no_main]

use std::collections::BTreeMap;

use baton_coordinator::catalog::blobs::{bundle_hash, check_bundle};
use baton_coordinator::catalog::model::{check_name, split_path, valid_hash};
use baton_coordinator::prepare::plan_bundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let root = fields.next().unwrap_or_default().to_string();
    let mut files = BTreeMap::new();
    let mut overrides = BTreeMap::new();
    let mut in_overrides = false;
    while let Some(key) = fields.next() {
        if key.is_empty() && !in_overrides {
            in_overrides = true;
            continue;
        }
        let value = fields.next().unwrap_or_default().to_string();
        if in_overrides {
            overrides.insert(key.to_string(), value);
        } else {
            files.insert(key.to_string(), value);
        }
    }
    let _ = check_name(&root);
    let _ = split_path(&root);
    let _ = valid_hash(&root);
    match check_bundle(&root, &files) {
        Ok(b) => {
            assert_eq!(b.hash, bundle_hash(&b.root, &b.hashes));
            assert!(b.files.keys().all(|p| files.contains_key(p)));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let _ = plan_bundle(&root, &files, &overrides);
});
