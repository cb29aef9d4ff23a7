//! The highest coordinator epoch this agent has seen, kept across restarts.
//!
//! An agent refuses a dispatch from an epoch older than the highest it has seen
//! ([`crate::admission`]): a deposed coordinator that still believes it leads
//! cannot start jobs. Kept in memory only, that bar would fall to 0 when the agent
//! restarts, and such a coordinator could dispatch to it before it registers with
//! the new leader. So each rise is written to `DATA_DIR/epoch` (a temporary file,
//! fsync, rename: a crash leaves the old value or the new one) before the dispatch
//! or registration that raised it goes on. It rises once per failover, so this
//! costs nothing on the path of ordinary dispatches.
//!
//! The epoch belongs to one cluster: the file names it (the SHA-256 pin of its CA,
//! or `insecure`), and an agent enrolled into another cluster (a new CA) with the
//! same data directory starts again from 0 instead of refusing the new cluster's
//! dispatches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::AgentError;
use crate::model::Epoch;

/// The file's name in the agent's data directory.
pub const FILE_NAME: &str = "epoch";

/// The epoch file and the value it holds.
#[derive(Debug)]
pub struct EpochFile {
    path: PathBuf,
    cluster: String,
    saved: Mutex<u64>,
}

impl EpochFile {
    /// Opens `data_dir/epoch` for `cluster`: the epoch it holds for that cluster
    /// (0 when there is none yet, or the file is another cluster's).
    pub fn open(data_dir: &Path, cluster: &str) -> Result<(EpochFile, Epoch), AgentError> {
        let path = data_dir.join(FILE_NAME);
        let saved = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut words = text.split_whitespace();
                let epoch = words.next().and_then(|w| w.parse::<u64>().ok());
                match (epoch, words.next()) {
                    (Some(e), Some(c)) if c == cluster => e,
                    (Some(_), _) => 0,
                    (None, _) => {
                        return Err(AgentError::Store(format!(
                            "{} does not hold an epoch (a number): remove it to start from 0",
                            path.display()
                        )));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(AgentError::io(format!("reading {}", path.display()), e)),
        };
        Ok((
            EpochFile {
                path,
                cluster: cluster.to_string(),
                saved: Mutex::new(saved),
            },
            Epoch(saved),
        ))
    }

    /// Writes `epoch` if it is higher than the one kept (durable on return).
    pub fn raise(&self, epoch: Epoch) -> Result<(), AgentError> {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        if epoch.0 <= *saved {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(format!("{} {}\n", epoch.0, self.cluster).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| AgentError::io(format!("writing {}", self.path.display()), e))?;
        *saved = epoch.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_only_rises_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (f, e) = EpochFile::open(dir.path(), "ca:ab").unwrap();
        assert_eq!(e, Epoch(0));
        f.raise(Epoch(7)).unwrap();
        f.raise(Epoch(3)).unwrap();
        drop(f);
        let (f, e) = EpochFile::open(dir.path(), "ca:ab").unwrap();
        assert_eq!(e, Epoch(7), "never lowered, kept across a reopen");
        f.raise(Epoch(9)).unwrap();
        assert_eq!(EpochFile::open(dir.path(), "ca:ab").unwrap().1, Epoch(9));
        std::fs::write(dir.path().join(FILE_NAME), "garbage").unwrap();
        let e = EpochFile::open(dir.path(), "ca:ab").unwrap_err();
        assert!(e.to_string().contains("remove it"), "{e}");
    }

    #[test]
    fn another_cluster_starts_from_zero_and_takes_the_file_over() {
        let dir = tempfile::tempdir().unwrap();
        let (f, _) = EpochFile::open(dir.path(), "ca:old").unwrap();
        f.raise(Epoch(40)).unwrap();
        let (f, e) = EpochFile::open(dir.path(), "ca:new").unwrap();
        assert_eq!(e, Epoch(0));
        f.raise(Epoch(2)).unwrap();
        assert_eq!(EpochFile::open(dir.path(), "ca:new").unwrap().1, Epoch(2));
        assert_eq!(EpochFile::open(dir.path(), "ca:old").unwrap().1, Epoch(0));
    }
}
