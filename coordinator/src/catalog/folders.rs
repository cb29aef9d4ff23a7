//! Folders: explicit, nested records. `/` always exists and has no record.
//!
//! - create: the parent must exist, unless `parents` (then missing ancestors
//!   are created too, like `mkdir -p`); an existing folder is `FOLDER_EXISTS`;
//! - rename: moves the folder with everything below it (sub-folders and
//!   packages) in one commit; the new path must not exist and its parent must;
//! - delete: only an empty folder (no sub-folder, no package): `FOLDER_NOT_EMPTY`.
//!
//! Grants are on paths, not on folder records: renaming a folder does not move
//! the grants on it, and executions keep the folder path they started in.

use super::handle::{Catalog, RETRIES, decode, encode};
use super::model::{
    FolderRecord, PackageRecord, folder_key, name_key, names_prefix, now_ms, package_key,
    subfolders_prefix,
};
use crate::auth::grants::within;
use crate::auth::normalize_folder;
use crate::error::CoordinatorError;
use crate::store::{Op, Precondition, StoreError};

/// A folder as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub record: FolderRecord,
    /// Packages directly in it.
    pub packages: u32,
    /// Folders directly below it.
    pub folders: u32,
}

/// What a rename moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    pub folders: u32,
    pub packages: u32,
}

/// The parent of a normalized folder other than "/".
pub fn parent_of(folder: &str) -> &str {
    match folder.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &folder[..i],
    }
}

impl Catalog {
    /// An op that fails the commit if the folder changed or went away since
    /// `rev` was read (it rewrites the record unchanged); none for "/".
    pub(crate) async fn folder_guard(&self, folder: &str) -> Result<Option<Op>, CoordinatorError> {
        if folder == "/" {
            return Ok(None);
        }
        let kv = self
            .store
            .get(&folder_key(folder))
            .await?
            .ok_or_else(|| CoordinatorError::FolderNotFound(folder.to_string()))?;
        Ok(Some(Op::Put {
            key: kv.key,
            value: kv.value,
            pre: Precondition::Revision(kv.mod_revision),
        }))
    }

    /// Creates `path` (and its missing ancestors with `parents`); returns the
    /// folders created, top-down.
    pub async fn create_folder(
        &self,
        path: &str,
        parents: bool,
        who: &str,
    ) -> Result<Vec<String>, CoordinatorError> {
        let path = normalize_folder(path)?;
        if path == "/" {
            return Err(CoordinatorError::FolderExists(path));
        }
        for _ in 0..RETRIES {
            if self.store.get(&folder_key(&path)).await?.is_some() {
                return Err(CoordinatorError::FolderExists(path));
            }
            let mut missing = vec![path.clone()];
            let mut up = parent_of(&path).to_string();
            while up != "/" && self.store.get(&folder_key(&up)).await?.is_none() {
                if !parents {
                    return Err(CoordinatorError::FolderNotFound(up));
                }
                missing.push(up.clone());
                up = parent_of(&up).to_string();
            }
            missing.reverse();
            let now = now_ms();
            let mut ops = Vec::new();
            for f in &missing {
                let rec = FolderRecord {
                    path: f.clone(),
                    created_unix_ms: now,
                    created_by: who.to_string(),
                };
                ops.push(Op::Put {
                    key: folder_key(f),
                    value: encode(&rec)?,
                    pre: Precondition::Absent,
                });
            }
            // The existing ancestor must still be there when the new ones land.
            ops.extend(self.folder_guard(&up).await?);
            match self.store.commit(ops).await {
                Ok(_) => return Ok(missing),
                Err(StoreError::Conflict { .. }) => continue, // look again
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoordinatorError::StoreConflict(folder_key(&path)))
    }

    /// Whether `folder` exists.
    pub async fn folder_exists(&self, folder: &str) -> Result<bool, CoordinatorError> {
        Ok(folder == "/" || self.store.get(&folder_key(folder)).await?.is_some())
    }

    /// Every folder below `under` ("/" for all), in path order, with counts.
    pub async fn folders(&self, under: &str) -> Result<Vec<FolderInfo>, CoordinatorError> {
        let under = normalize_folder(under)?;
        let records: Vec<FolderRecord> = self
            .store
            .range(&subfolders_prefix(&under))
            .await?
            .iter()
            .map(|kv| decode(&kv.key, &kv.value))
            .collect::<Result<_, _>>()?;
        let packages = self.packages_below(&under).await?;
        let paths: Vec<String> = records.iter().map(|r| r.path.clone()).collect();
        Ok(records
            .into_iter()
            .map(|record| FolderInfo {
                packages: packages.iter().filter(|p| p.folder == record.path).count() as u32,
                folders: paths.iter().filter(|f| parent_of(f) == record.path).count() as u32,
                record,
            })
            .collect())
    }

    /// Renames `from` to `to`, with everything below it.
    pub async fn rename_folder(&self, from: &str, to: &str) -> Result<Renamed, CoordinatorError> {
        let from = normalize_folder(from)?;
        let to = normalize_folder(to)?;
        if from == "/" || to == "/" {
            return Err(CoordinatorError::InvalidRequest(
                "the root folder / cannot be renamed, nor replaced".into(),
            ));
        }
        if within(&to, &from) {
            return Err(CoordinatorError::InvalidRequest(format!(
                "cannot move folder {from} into itself ({to})"
            )));
        }
        for _ in 0..RETRIES {
            let moved = |f: &str| format!("{to}{}", &f[from.len()..]);
            let Some(top) = self.store.get(&folder_key(&from)).await? else {
                return Err(CoordinatorError::FolderNotFound(from));
            };
            if self.store.get(&folder_key(&to)).await?.is_some() {
                return Err(CoordinatorError::FolderExists(to));
            }
            let mut ops = Vec::new();
            let parent = parent_of(&to).to_string();
            ops.extend(self.folder_guard(&parent).await?);
            let mut subtree = vec![top];
            subtree.extend(self.store.range(&subfolders_prefix(&from)).await?);
            let folders = subtree.len() as u32;
            for kv in subtree {
                let mut rec: FolderRecord = decode(&kv.key, &kv.value)?;
                rec.path = moved(&rec.path);
                ops.push(Op::Delete {
                    key: kv.key,
                    pre: Precondition::Revision(kv.mod_revision),
                });
                ops.push(Op::Put {
                    key: folder_key(&rec.path),
                    value: encode(&rec)?,
                    pre: Precondition::Absent,
                });
            }
            let mut packages = 0;
            for name in self.store.range(&names_prefix(&from)).await? {
                let id = String::from_utf8_lossy(&name.value).to_string();
                let kv = self.store.get(&package_key(&id)).await?.ok_or_else(|| {
                    CoordinatorError::Store(format!("{} names missing package {id}", name.key))
                })?;
                let mut rec: PackageRecord = decode(&kv.key, &kv.value)?;
                rec.folder = moved(&rec.folder);
                ops.push(Op::Delete {
                    key: name.key,
                    pre: Precondition::Revision(name.mod_revision),
                });
                ops.push(Op::Put {
                    key: name_key(&rec.folder, &rec.name),
                    value: id.into_bytes(),
                    pre: Precondition::Absent,
                });
                ops.push(Op::Put {
                    key: kv.key,
                    value: encode(&rec)?,
                    pre: Precondition::Revision(kv.mod_revision),
                });
                packages += 1;
            }
            match self.store.commit(ops).await {
                Ok(_) => return Ok(Renamed { folders, packages }),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoordinatorError::StoreConflict(folder_key(&from)))
    }

    /// Deletes an empty folder.
    pub async fn delete_folder(&self, path: &str) -> Result<(), CoordinatorError> {
        let path = normalize_folder(path)?;
        if path == "/" {
            return Err(CoordinatorError::InvalidRequest(
                "the root folder / cannot be removed".into(),
            ));
        }
        let Some(kv) = self.store.get(&folder_key(&path)).await? else {
            return Err(CoordinatorError::FolderNotFound(path));
        };
        let subfolders = self.store.range(&subfolders_prefix(&path)).await?.len();
        let packages = self.store.range(&names_prefix(&path)).await?.len();
        if subfolders + packages > 0 {
            return Err(CoordinatorError::FolderNotEmpty(format!(
                "{path} holds {subfolders} folder(s) and {packages} package(s)"
            )));
        }
        // The revision guards against a package deployed into it meanwhile
        // (a deploy rewrites its folder's record).
        let op = Op::Delete {
            key: kv.key,
            pre: Precondition::Revision(kv.mod_revision),
        };
        match self.store.commit(vec![op]).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => Err(CoordinatorError::FolderNotEmpty(format!(
                "{path} changed while being removed; look again"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
