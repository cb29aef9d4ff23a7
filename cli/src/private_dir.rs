//! The daemons' data directories are private to the user that runs them.
//!
//! A coordinator's data directory holds every execution, package, output and
//! token hash (`coordinator.redb`), the audit trail, the sealing key and the CA's
//! key (`tls/`); an agent's holds its outbox and its jobs' logs and rows. Before a
//! daemon starts, [`secure`] makes its data directory (mode 0700, or 0711 for an
//! agent with run-as users, who must pass through it to their job directories)
//! and checks what is already there:
//!
//! - a directory with any group or other bit (`mode & 0o077`) loses them; for an
//!   agent with run-as users only read and write (`0o066`) go, search (`x`) is
//!   kept, as those users need it;
//! - a regular file directly in the data directory (`coordinator.redb`,
//!   `audit.log`, the rotated `audit.log.N`, …) or a listed one below it (keys)
//!   with any group or other bit becomes 0600.
//!
//! Fixed, with a WARN line naming the path and both modes, rather than refused:
//! every data directory made before this check was 0755 with a 0644 store, and
//! an upgrade should close that without a person on every host. When the fix is
//! not possible (the daemon does not own the path) the daemon refuses to start
//! with `DATA_DIR_INSECURE` and the `chmod` to run.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tracing::warn;

use crate::error::CliError;

/// Bits a directory must not have: any for group and others.
const DIR_OPEN_BITS: u32 = 0o077;
/// Bits a directory others must search through (run-as users) must not have:
/// read or write for group and others.
const SEARCH_DIR_OPEN_BITS: u32 = 0o066;
/// Bits a file must not have: any for group and others.
const FILE_OPEN_BITS: u32 = 0o077;

/// What [`secure`] makes and checks.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    /// Run-as users must pass through the data directory: made 0711, not 0700.
    pub others_search: bool,
    /// Files and directories inside the data directory to check when present.
    pub entries: &'a [&'a str],
}

/// The coordinator's data directory.
pub const COORDINATOR: Layout<'static> = Layout {
    others_search: false,
    entries: &[
        "coordinator.redb",
        "audit.log",
        "secrets.key",
        "tls",
        "tls/ca.key",
        "tls/tls.key",
        "tls/admin",
        "tls/admin/tls.key",
    ],
};

/// An agent's data directory (`others_search` when it has run-as users).
pub fn agent(others_search: bool) -> Layout<'static> {
    Layout {
        others_search,
        entries: &["agent.redb", "jobs", "packages", "tls", "tls/tls.key"],
    }
}

/// Makes `dir` private, or checks and fixes it (see the module doc).
pub fn secure(dir: &Path, layout: Layout<'_>) -> Result<(), CliError> {
    let mode = if layout.others_search { 0o711 } else { 0o700 };
    let dir_bits = if layout.others_search {
        SEARCH_DIR_OPEN_BITS
    } else {
        DIR_OPEN_BITS
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|e| io_failed(dir, &e))?;
            // The umask may have taken bits we want (0711's search bits).
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_failed(dir, &e))?;
        }
        Err(e) => return Err(io_failed(dir, &e)),
        Ok(meta) if !meta.is_dir() => {
            return Err(CliError::invalid(
                "USAGE",
                format!("the data directory {} is not a directory", dir.display()),
            ));
        }
        Ok(meta) => fix(dir, &meta, dir_bits)?,
    }
    // Every regular file directly inside (rotated audit logs included).
    let files = std::fs::read_dir(dir).map_err(|e| io_failed(dir, &e))?;
    for entry in files.flatten() {
        // Links are not followed: a link's target is not the daemon's to change.
        if let Ok(meta) = std::fs::symlink_metadata(entry.path())
            && meta.is_file()
        {
            fix(&entry.path(), &meta, FILE_OPEN_BITS)?;
        }
    }
    for name in layout.entries {
        let path = dir.join(name);
        // Links are not followed: a link's target is not the daemon's to change.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            fix(&path, &meta, dir_bits)?;
        } else if meta.is_file() {
            fix(&path, &meta, FILE_OPEN_BITS)?;
        }
    }
    Ok(())
}

/// A TLS directory, which may live outside the data directory (`--tls-dir`):
/// created 0700 when missing; an open one of ours is made private (WARN). One the
/// daemon does not own (provisioned by root, a Kubernetes secret mount) is only
/// warned about: its keys are what matter, and they are its owner's to protect.
pub fn secure_tls_dir(dir: &Path) -> Result<(), CliError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if let Err(e) = fix(dir, &meta, DIR_OPEN_BITS) {
                warn!(path = %dir.display(), "{}", e.message);
            }
            Ok(())
        }
        _ => secure(
            dir,
            Layout {
                others_search: false,
                entries: &[],
            },
        ),
    }
}

/// Takes `open` bits away from `path` (warning), or refuses when they are there and
/// cannot be taken away (the data directory and its entries).
fn fix(path: &Path, meta: &std::fs::Metadata, open: u32) -> Result<(), CliError> {
    fix_as(path, meta, open, nix::unistd::geteuid().as_raw())
}

/// [`fix`] by the user `me`: a path `me` does not own is never changed.
fn fix_as(path: &Path, meta: &std::fs::Metadata, open: u32, me: u32) -> Result<(), CliError> {
    let mode = meta.mode() & 0o7777;
    if mode & open == 0 {
        return Ok(());
    }
    let private = mode & !open;
    let ours = meta.uid() == me;
    let fixed =
        ours && std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)).is_ok();
    if fixed {
        warn!(
            path = %path.display(),
            was = format!("{mode:o}"),
            now = format!("{private:o}"),
            "other users could read or write this; made private"
        );
        return Ok(());
    }
    let who = if meta.is_dir() { "go-rw" } else { "go-rwx" };
    Err(CliError::invalid(
        "DATA_DIR_INSECURE",
        format!(
            "{} (mode {mode:o}, owner uid {}) is open to other users and this process cannot \
             change that; run `chmod {who} {}` as its owner",
            path.display(),
            meta.uid(),
            path.display()
        ),
    ))
}

fn io_failed(path: &Path, e: &std::io::Error) -> CliError {
    CliError::other(
        "IO_FAILED",
        format!("cannot make the data directory {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_data_dir_is_0700_or_0711_for_run_as() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("a").join("data");
        secure(&d, COORDINATOR).unwrap();
        assert_eq!(mode(&d), 0o700);
        let d = root.path().join("agent");
        secure(&d, agent(true)).unwrap();
        assert_eq!(mode(&d), 0o711);
    }

    #[test]
    fn open_dirs_and_files_are_made_private_and_links_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("data");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = d.join("coordinator.redb");
        std::fs::write(&store, b"x").unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir(d.join("tls")).unwrap();
        std::fs::set_permissions(d.join("tls"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"y").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("audit.log")).unwrap();
        let rotated = d.join("audit.log.3");
        std::fs::write(&rotated, b"z").unwrap();
        std::fs::set_permissions(&rotated, std::fs::Permissions::from_mode(0o644)).unwrap();

        secure(&d, COORDINATOR).unwrap();
        assert_eq!(
            mode(&d),
            0o700,
            "a coordinator's data dir keeps no search bit"
        );
        assert_eq!(mode(&store), 0o600);
        assert_eq!(
            mode(&rotated),
            0o600,
            "every file directly inside is private"
        );
        assert_eq!(mode(&d.join("tls")), 0o700);
        assert_eq!(mode(&outside), 0o644, "a link's target is not changed");
        // A private directory is left as it is.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        secure(&d, COORDINATOR).unwrap();
        assert_eq!(mode(&d), 0o700);
        // An agent with run-as users keeps the search bits, not read or write.
        let a = root.path().join("agent");
        std::fs::create_dir(&a).unwrap();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o755)).unwrap();
        secure(&a, agent(true)).unwrap();
        assert_eq!(mode(&a), 0o711);
        secure(&a, agent(false)).unwrap();
        assert_eq!(mode(&a), 0o700);
    }

    #[test]
    fn a_tls_dir_is_made_private_or_made_when_missing() {
        let root = tempfile::tempdir().unwrap();
        let tls = root.path().join("tls");
        secure_tls_dir(&tls).unwrap();
        assert_eq!(mode(&tls), 0o700);
        std::fs::set_permissions(&tls, std::fs::Permissions::from_mode(0o755)).unwrap();
        secure_tls_dir(&tls).unwrap();
        assert_eq!(mode(&tls), 0o700);
    }

    #[test]
    fn a_file_in_place_of_the_data_dir_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("data");
        std::fs::write(&f, b"").unwrap();
        let e = secure(&f, COORDINATOR).unwrap_err();
        assert_eq!(e.code, "USAGE", "{}", e.message);
    }

    #[test]
    fn what_cannot_be_fixed_is_refused_with_the_chmod_to_run() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("coordinator.redb");
        std::fs::write(&f, b"").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        // As a user who does not own the file.
        let e = fix_as(&f, &meta, FILE_OPEN_BITS, meta.uid().wrapping_add(1)).unwrap_err();
        assert_eq!(e.code, "DATA_DIR_INSECURE");
        let chmod = format!("chmod go-rwx {}", f.display());
        assert!(e.message.contains(&chmod), "{}", e.message);
        assert_eq!(mode(&f), 0o644, "nothing changed");
    }
}
