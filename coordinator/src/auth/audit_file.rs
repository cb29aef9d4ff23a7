//! The audit trail's file, bounded: appended line by line and rotated by size
//! (`audit.log` → `audit.log.1` → … → `audit.log.K`; the oldest is dropped), so
//! the trail never holds more than about `(K + 1) × max_bytes`. Every file is
//! created 0600.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Default size at which `audit.log` is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Default number of rotated files kept.
pub const DEFAULT_KEEP: u32 = 4;

/// How large the trail may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `audit.log` is rotated before a line would take it past this.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.K`); 0: the file is emptied.
    pub keep: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// An append-only file rotated at [`Limits::max_bytes`].
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    limits: Limits,
}

fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).mode(0o600);
    if truncate {
        o.write(true).truncate(true);
    } else {
        o.append(true);
    }
    o.open(path)
}

impl RotatingFile {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path, limits: Limits) -> std::io::Result<RotatingFile> {
        let file = open_private(path, false)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            written,
            limits: Limits {
                max_bytes: limits.max_bytes.max(1),
                ..limits
            },
        })
    }

    /// The `n`th rotated file (`audit.log.n`).
    pub fn rotated(path: &Path, n: u32) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Appends one line (with its newline), rotating first when it would not fit.
    pub fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.written > 0 && self.written + len > self.limits.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.limits.keep;
        if keep > 0 {
            for n in (1..keep).rev() {
                match std::fs::rename(
                    Self::rotated(&self.path, n),
                    Self::rotated(&self.path, n + 1),
                ) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, Self::rotated(&self.path, 1))?;
        }
        self.file = open_private(&self.path, true)?;
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rotates_at_the_bound_and_keeps_k_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let limits = Limits {
            max_bytes: 100,
            keep: 2,
        };
        let mut f = RotatingFile::open(&path, limits).unwrap();
        let line = [b'x'; 9].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..100 {
            f.append(&line).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert_eq!(
            size(&path),
            100,
            "1000 bytes written: the last 100 in audit.log"
        );
        assert_eq!(size(&RotatingFile::rotated(&path, 1)), 100);
        assert_eq!(size(&RotatingFile::rotated(&path, 2)), 100);
        assert!(!RotatingFile::rotated(&path, 3).exists(), "only K kept");
        for p in [
            path.clone(),
            RotatingFile::rotated(&path, 1),
            RotatingFile::rotated(&path, 2),
        ] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        // Reopened, it counts what the file holds.
        drop(f);
        let mut f = RotatingFile::open(&path, limits).unwrap();
        f.append(&line).unwrap();
        assert_eq!(size(&path), 10);
    }

    #[test]
    fn keep_zero_empties_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = RotatingFile::open(
            &path,
            Limits {
                max_bytes: 20,
                keep: 0,
            },
        )
        .unwrap();
        for _ in 0..5 {
            f.append(b"0123456789\n").unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 11);
        assert!(!RotatingFile::rotated(&path, 1).exists());
    }
}
