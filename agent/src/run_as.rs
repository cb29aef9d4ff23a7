//! Run-as: which OS users this agent may run child packages as, and for which folders.
//!
//! A package may say `run_as = "etl"`; the agent then starts its processes with that
//! user's uid and gid (the SQL Server Agent proxy-account idea). The operator decides
//! which users an agent may use, per catalog folder, with `--allow-run-as USER[:FOLDER]`
//! ([`RunAsRule`]). Admission ([`crate::admission::check_run_as`]) checks every start
//! against the rules and against the host as it is at that moment ([`Host`]): the user
//! must exist, must not be uid 0 (or have the root group as its primary group), and the
//! agent must be root to switch to it (or already be that user).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::AgentError;

/// The most `--allow-run-as` rules an agent takes.
pub const RULES_MAX: usize = 1_000;
/// Longest folder path accepted in a rule or a request.
pub const FOLDER_BYTES_MAX: usize = 1_024;

/// One `--allow-run-as USER[:FOLDER]`: `user` may be used by jobs of `folder` and its
/// sub-folders (every folder when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAsRule {
    user: String,
    /// Normalised (`/a/b`, never a trailing `/`); `None` = every folder.
    folder: Option<String>,
}

impl RunAsRule {
    /// A rule for `user`, limited to `folder` and its sub-folders when given.
    pub fn new(user: &str, folder: Option<&str>) -> Result<RunAsRule, AgentError> {
        let bad = |m: String| Err(AgentError::ConfigInvalid(format!("allow_run_as: {m}")));
        if !baton_package::valid_user_name(user) {
            return bad(format!(
                "{user:?} is not a user name (1 to 32 characters, a letter or '_' first, \
                 then letters, digits, '_', '-' or '.')"
            ));
        }
        let folder = match folder {
            None => None,
            Some("") => return bad(format!("the folder after {user:?} is empty")),
            Some(f) => match normalize_folder(f) {
                Ok(f) if has_dot_segment(&f) => {
                    return bad(format!("folder {f:?} must not have '.' or '..' segments"));
                }
                Ok(f) => Some(f),
                Err(m) => return bad(m),
            },
        };
        Ok(RunAsRule {
            user: user.to_string(),
            folder,
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The folder the rule is limited to; `None` = every folder.
    pub fn folder(&self) -> Option<&str> {
        self.folder.as_deref()
    }

    /// Whether this rule lets `user` run jobs of `folder` (normalised).
    pub fn allows(&self, user: &str, folder: &str) -> bool {
        self.user == user && self.folder.as_deref().is_none_or(|f| within(folder, f))
    }
}

/// `USER` or `USER:FOLDER`.
impl FromStr for RunAsRule {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None => RunAsRule::new(s, None),
            Some((user, folder)) => RunAsRule::new(user, Some(folder)),
        }
    }
}

impl fmt::Display for RunAsRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.folder {
            None => write!(f, "{} (every folder)", self.user),
            Some(folder) => write!(f, "{} for {folder}", self.user),
        }
    }
}

/// A catalog folder in canonical form: `/` for the root (and for an empty string),
/// otherwise `/a/b` without a trailing `/` and without empty segments. Refuses paths
/// that do not start with `/`.
pub fn normalize_folder(folder: &str) -> Result<String, String> {
    if folder.len() > FOLDER_BYTES_MAX {
        return Err(format!("folder is longer than {FOLDER_BYTES_MAX} bytes"));
    }
    if folder.is_empty() {
        return Ok("/".to_string());
    }
    if !folder.starts_with('/') {
        return Err(format!("folder {folder:?} must start with '/'"));
    }
    let segments: Vec<&str> = folder.split('/').filter(|s| !s.is_empty()).collect();
    Ok(format!("/{}", segments.join("/")))
}

fn has_dot_segment(folder: &str) -> bool {
    folder.split('/').any(|s| s == "." || s == "..")
}

/// Whether `folder` is `scope` or below it, on whole path segments (`/etl` holds
/// `/etl` and `/etl/daily`, not `/etlx`). A folder with `.` or `..` segments is
/// within the root only: it cannot climb into (or out of) a narrower scope.
pub fn within(folder: &str, scope: &str) -> bool {
    let segments = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let scope = segments(scope);
    if scope.is_empty() {
        return true;
    }
    if has_dot_segment(folder) {
        return false;
    }
    let folder = segments(folder);
    folder.len() >= scope.len() && folder[..scope.len()] == scope[..]
}

/// An OS user a job runs as, as looked up at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// What admission needs to know about the host. [`RealHost`] asks the system; tests
/// use a fake one.
pub trait Host {
    /// The effective uid of this agent.
    fn euid(&self) -> u32;
    /// The user named `name`, `None` when there is no such user.
    fn user(&self, name: &str) -> Result<Option<RunAsUser>, String>;
}

/// The real host: `geteuid()` and the user database (`getpwnam_r`, NSS included).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn euid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn user(&self, name: &str) -> Result<Option<RunAsUser>, String> {
        nix::unistd::User::from_name(name)
            .map(|u| {
                u.map(|u| RunAsUser {
                    name: u.name,
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                    home: u.dir,
                })
            })
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_refuse_nonsense() {
        let r: RunAsRule = "etl".parse().unwrap();
        assert_eq!((r.user(), r.folder()), ("etl", None));
        let r: RunAsRule = "etl:/etl/daily/".parse().unwrap();
        assert_eq!((r.user(), r.folder()), ("etl", Some("/etl/daily")));
        let r: RunAsRule = "etl:/".parse().unwrap();
        assert_eq!(r.folder(), Some("/"));
        assert_eq!(r.to_string(), "etl for /");
        for bad in [
            "",
            ":/etl",
            "0",
            "bad user",
            "etl:",
            "etl:etl",
            "etl:/a/../b",
            "etl:/a/./b",
        ] {
            let e = bad.parse::<RunAsRule>().unwrap_err();
            assert_eq!(e.code(), "AGENT_CONFIG_INVALID", "{bad:?}");
            assert!(e.to_string().contains("allow_run_as"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn folders_normalise() {
        assert_eq!(normalize_folder("").unwrap(), "/");
        assert_eq!(normalize_folder("/").unwrap(), "/");
        assert_eq!(normalize_folder("//etl//daily/").unwrap(), "/etl/daily");
        assert!(normalize_folder("etl").is_err());
        assert!(normalize_folder(&format!("/{}", "a".repeat(FOLDER_BYTES_MAX))).is_err());
    }

    #[test]
    fn folder_scope_is_a_prefix_of_whole_segments() {
        assert!(within("/etl", "/etl"));
        assert!(within("/etl/daily", "/etl"));
        assert!(within("/etl/daily/x", "/etl/daily"));
        assert!(!within("/etlx", "/etl"));
        assert!(!within("/", "/etl"));
        assert!(!within("/other/etl", "/etl"));
        assert!(!within("/etl", "/etl/daily"));
        assert!(within("/anything", "/"));
        assert!(within("/", "/"));
        assert!(!within("/etl/../hr", "/etl"), "no climbing out of a scope");
        assert!(!within("/etl/./daily", "/etl"));
    }

    #[test]
    fn rules_allow_their_user_in_their_folders_only() {
        let any: RunAsRule = "nobody".parse().unwrap();
        let etl: RunAsRule = "etl:/etl".parse().unwrap();
        assert!(any.allows("nobody", "/"));
        assert!(any.allows("nobody", "/hr/payroll"));
        assert!(!any.allows("etl", "/"));
        assert!(etl.allows("etl", "/etl"));
        assert!(etl.allows("etl", "/etl/daily"));
        assert!(!etl.allows("etl", "/etlx"));
        assert!(!etl.allows("etl", "/"));
        assert!(!etl.allows("nobody", "/etl"));
    }

    #[test]
    fn real_host_knows_root_and_not_a_made_up_user() {
        let root = RealHost.user("root").unwrap().expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(RealHost.user("baton-no-such-user-x").unwrap(), None);
    }
}
