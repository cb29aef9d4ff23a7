//! What the catalog stores and the rules for names and paths. Its keys
//! (`f/`, `n/`, `p/`, `pv/`, `b/`) are in [`crate::keys`]' table; their
//! functions are re-exported here: [`FolderRecord`] under `f/<folder>`,
//! [`PackageRecord`] under `p/<id>`, [`VersionRecord`] under `pv/<id>/<version>`.
//!
//! A package's id never changes: renaming or moving it rewrites `p/<id>` and
//! its `n/` entry only, so executions (which record the id, the version and
//! the hash) keep referring to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::normalize_folder;
use crate::error::CoordinatorError;

pub use crate::keys::{
    BLOB_PREFIX, FOLDER_PREFIX, NAME_PREFIX, PACKAGE_PREFIX, VERSION_PREFIX, blob_key, folder_key,
    name_key, names_prefix, package_key, subfolders_prefix, version_key, versions_prefix,
};

/// The catalog path of a package: `/etl/load`, or `/load` in the root folder.
pub fn package_path(folder: &str, name: &str) -> String {
    if folder == "/" {
        format!("/{name}")
    } else {
        format!("{folder}/{name}")
    }
}

/// Whether `hash` looks like a content hash (64 lower-case hex digits).
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A package name: 1-64 letters, digits, '-', '_', '.', not "." or "..".
pub fn check_name(name: &str) -> Result<(), CoordinatorError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CoordinatorError::InvalidRequest(format!(
            "invalid package name '{name}': 1-64 letters, digits, '-', '_', '.' \
             (give another with --name)"
        )))
    }
}

/// Splits a package path (`/etl/load`) into its folder (`/etl`) and name (`load`).
pub fn split_path(path: &str) -> Result<(String, String), CoordinatorError> {
    let bad = || {
        CoordinatorError::InvalidRequest(format!(
            "invalid package path '{path}': write FOLDER/NAME, e.g. /etl/load"
        ))
    };
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(bad());
    }
    let (name, parents) = segments.split_last().ok_or_else(bad)?;
    let folder = normalize_folder(&format!("/{}", parents.join("/"))).map_err(|_| bad())?;
    check_name(name).map_err(|_| bad())?;
    Ok((folder, (*name).to_string()))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    crate::records::now_unix_ms()
}

/// An explicit folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderRecord {
    pub path: String,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub created_by: String,
}

/// A package: where it is now and its latest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// Stable across renames and moves.
    pub id: String,
    pub folder: String,
    pub name: String,
    /// Highest version number (versions are 1, 2, 3, …).
    pub latest: u32,
    pub latest_hash: String,
    #[serde(default)]
    pub description: String,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
    #[serde(default)]
    pub created_by: String,
}

impl PackageRecord {
    pub fn path(&self) -> String {
        package_path(&self.folder, &self.name)
    }
}

/// A declared parameter of a version, as shown to users. The default of a
/// sensitive parameter is never kept here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// `None` when there is no default, and always for sensitive parameters.
    pub default: Option<String>,
    /// Whether a default exists (true for a sensitive one whose value is hidden).
    #[serde(default)]
    pub has_default: bool,
    pub required: bool,
    pub sensitive: bool,
    #[serde(default)]
    pub description: String,
}

impl ParamInfo {
    pub fn of(p: &baton_package::ParameterDef) -> ParamInfo {
        ParamInfo {
            name: p.name.clone(),
            ty: p.ty.as_str().to_string(),
            default: if p.sensitive { None } else { p.default.clone() },
            has_default: p.default.is_some(),
            required: p.required,
            sensitive: p.sensitive,
            description: p.description.clone(),
        }
    }
}

/// One immutable version of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u32,
    /// Hash of the whole bundle: [`super::blobs::bundle_hash`].
    pub hash: String,
    /// The parent file's name in `files`.
    pub root: String,
    /// Every file of the bundle (the parent and the children it references)
    /// and the hash of its text, which is the key of its blob.
    pub files: BTreeMap<String, String>,
    /// The `name` inside the parent file.
    pub package_name: String,
    pub parameters: Vec<ParamInfo>,
    pub bytes: u64,
    pub deployed_unix_ms: u64,
    #[serde(default)]
    pub deployed_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_paths() {
        assert_eq!(folder_key("/etl/daily"), "f/etl/daily");
        assert_eq!(subfolders_prefix("/etl"), "f/etl/");
        assert_eq!(subfolders_prefix("/"), "f/");
        assert_eq!(name_key("/etl", "load"), "n/etl/load");
        assert_eq!(name_key("/", "load"), "n/load");
        assert_eq!(names_prefix("/etl"), "n/etl/");
        assert_eq!(version_key("x", 3), "pv/x/0000000003");
        assert_eq!(
            split_path("/etl/daily/load").unwrap(),
            ("/etl/daily".to_string(), "load".to_string())
        );
        assert_eq!(
            split_path("/load").unwrap(),
            ("/".to_string(), "load".to_string())
        );
        for bad in ["load", "/", "", "/etl/", "/etl/a b", "/etl/..", "//x"] {
            assert!(split_path(bad).is_err(), "{bad}");
        }
        assert!(valid_hash(&"a".repeat(64)));
        assert!(!valid_hash(&"A".repeat(64)));
        assert!(!valid_hash("../../etc/passwd"));
    }
}
