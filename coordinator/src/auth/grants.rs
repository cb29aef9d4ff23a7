//! Folders and the permissions principals hold on them — the SSIS catalog's model.
//!
//! A grant gives a principal one [`Permission`] on a folder; it holds for the
//! folder, its sub-folders and everything in them. Nothing is allowed without a
//! grant (deny by default). `manage` implies every other permission; `modify`,
//! `execute` and `run` each imply `read`, and `execute` implies `run`.
//!
//! Grants are stored per principal under `g/<principal>` (one small record), so
//! a check is one read.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;

/// What a principal may do in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// See executions (and, with the catalog, packages).
    Read,
    /// Start catalog packages of the folder (not ad hoc files or bundles) and
    /// cancel executions there: what the folder's packages run, nothing else.
    Run,
    /// Start and cancel executions of any package, ad hoc files included:
    /// whatever command they name runs as the agent's user.
    Execute,
    /// Change packages and folders.
    Modify,
    /// Grant and revoke permissions; fleet and token administration on "/".
    Manage,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::Read,
        Permission::Run,
        Permission::Execute,
        Permission::Modify,
        Permission::Manage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Run => "run",
            Permission::Execute => "execute",
            Permission::Modify => "modify",
            Permission::Manage => "manage",
        }
    }

    /// Whether holding `self` gives `needed`.
    pub fn implies(self, needed: Permission) -> bool {
        self == needed
            || self == Permission::Manage
            || needed == Permission::Read
            || (self == Permission::Execute && needed == Permission::Run)
    }
}

impl std::str::FromStr for Permission {
    type Err = CoordinatorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                CoordinatorError::InvalidRequest(format!(
                    "unknown permission '{s}': use read, run, execute, modify or manage"
                ))
            })
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most segments in a folder path.
const MAX_DEPTH: usize = 16;

/// Checks and normalizes a folder path: "/" or "/a/b" (segments of letters,
/// digits, '-', '_', '.', at most 64 characters, not "." or ".."). Empty means "/".
pub fn normalize_folder(folder: &str) -> Result<String, CoordinatorError> {
    let bad =
        |why: &str| CoordinatorError::InvalidRequest(format!("invalid folder '{folder}': {why}"));
    if folder.is_empty() || folder == "/" {
        return Ok("/".to_string());
    }
    let Some(rest) = folder.strip_prefix('/') else {
        return Err(bad("a folder path starts with '/'"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() > MAX_DEPTH {
        return Err(bad("more than 16 levels"));
    }
    for seg in &segments {
        let ok = !seg.is_empty()
            && seg.len() <= 64
            && *seg != "."
            && *seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(bad(
                "segments are 1-64 letters, digits, '-', '_', '.' (not '.' or '..')",
            ));
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

/// Whether `folder` is `ancestor` or inside it (both normalized).
pub fn within(folder: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || folder == ancestor
        || folder
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Every grant of one principal: folder → permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSet {
    pub grants: BTreeMap<String, BTreeSet<Permission>>,
}

impl GrantSet {
    /// Whether these grants give `needed` on `folder` (normalized).
    pub fn allows(&self, needed: Permission, folder: &str) -> bool {
        self.grants
            .iter()
            .any(|(f, perms)| within(folder, f) && perms.iter().any(|p| p.implies(needed)))
    }

    /// Adds a grant; false if it was already there.
    pub fn grant(&mut self, p: Permission, folder: &str) -> bool {
        self.grants.entry(folder.to_string()).or_default().insert(p)
    }

    /// Removes a grant; false if it wasn't there.
    pub fn revoke(&mut self, p: Permission, folder: &str) -> bool {
        let Some(set) = self.grants.get_mut(folder) else {
            return false;
        };
        let removed = set.remove(&p);
        if set.is_empty() {
            self.grants.remove(folder);
        }
        removed
    }
}

pub use crate::keys::{GRANTS_PREFIX, grants_key};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_normalize_or_are_refused() {
        assert_eq!(normalize_folder("").unwrap(), "/");
        assert_eq!(normalize_folder("/").unwrap(), "/");
        assert_eq!(normalize_folder("/etl/daily/").unwrap(), "/etl/daily");
        for bad in ["etl", "/a//b", "/a/../b", "/a b", "/.", &"/x".repeat(17)] {
            let e = normalize_folder(bad).unwrap_err();
            assert_eq!(e.code(), "INVALID_REQUEST", "{bad}");
        }
    }

    #[test]
    fn grants_inherit_down_not_sideways() {
        let mut g = GrantSet::default();
        g.grant(Permission::Execute, "/etl");
        assert!(g.allows(Permission::Execute, "/etl"));
        assert!(g.allows(Permission::Execute, "/etl/daily"));
        assert!(
            g.allows(Permission::Read, "/etl/daily"),
            "execute implies read"
        );
        assert!(
            !g.allows(Permission::Execute, "/etlx"),
            "prefix is by segment"
        );
        assert!(!g.allows(Permission::Execute, "/"));
        assert!(!g.allows(Permission::Modify, "/etl"));
        assert!(!g.allows(Permission::Manage, "/etl"));
        g.grant(Permission::Manage, "/");
        for p in Permission::ALL {
            assert!(g.allows(p, "/anything/at/all"), "manage on / implies {p}");
        }
        assert!(g.revoke(Permission::Manage, "/"));
        assert!(!g.revoke(Permission::Manage, "/"));
        assert!(!g.allows(Permission::Manage, "/etl"));
    }

    #[test]
    fn run_is_narrower_than_execute() {
        let mut g = GrantSet::default();
        g.grant(Permission::Run, "/etl");
        assert!(g.allows(Permission::Run, "/etl/daily"));
        assert!(g.allows(Permission::Read, "/etl"), "run implies read");
        assert!(!g.allows(Permission::Execute, "/etl"), "run is not execute");
        assert!(!g.allows(Permission::Run, "/finance"));
        let mut e = GrantSet::default();
        e.grant(Permission::Execute, "/etl");
        assert!(e.allows(Permission::Run, "/etl"), "execute implies run");
        let mut m = GrantSet::default();
        m.grant(Permission::Modify, "/etl");
        assert!(!m.allows(Permission::Run, "/etl"));
        assert_eq!("run".parse::<Permission>().unwrap(), Permission::Run);
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let g = GrantSet::default();
        for p in Permission::ALL {
            assert!(!g.allows(p, "/"));
        }
    }

    #[test]
    fn permissions_parse() {
        assert_eq!("manage".parse::<Permission>().unwrap(), Permission::Manage);
        assert!("admin".parse::<Permission>().is_err());
    }
}
