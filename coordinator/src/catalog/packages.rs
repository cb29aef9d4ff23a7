//! Packages and their versions: deploy, list, show, resolve (for a start),
//! move and remove.
//!
//! - **deploy** checks the bundle ([`super::blobs::check_bundle`]) and adds a
//!   version unless the bundle's hash equals the latest version's (then the
//!   latest version is reported, `unchanged`). Versions are numbered 1, 2, 3, …
//!   and never change; redeploying an older content makes a new version, so
//!   "latest" is always what was deployed last.
//! - **move** changes the folder and/or name; the id stays, and so do the
//!   versions and every execution's reference to them.
//! - **remove** is refused while an execution of the package runs
//!   (`PACKAGE_IN_USE`) unless forced; running executions then finish with the
//!   version they pinned, whose content stays stored until they end.
//!
//! Every change also rewrites the record of the folder it lands in, so that it
//! conflicts with a concurrent removal or rename of that folder.

use std::collections::BTreeMap;

use super::blobs::{self, CheckedBundle, check_bundle};
use super::handle::{Catalog, RETRIES, decode, encode};
use super::model::{
    PackageRecord, ParamInfo, VersionRecord, check_name, name_key, names_prefix, now_ms,
    package_key, split_path, version_key, versions_prefix,
};
use crate::auth::normalize_folder;
use crate::error::CoordinatorError;
use crate::records::ExecutionRecord;
use crate::store::split::commit_in_chunks;
use crate::store::{Op, Precondition, StoreError};

/// A deploy request.
#[derive(Debug, Clone)]
pub struct Deploy {
    pub root: String,
    pub files: BTreeMap<String, String>,
    pub folder: String,
    /// The package's name in the catalog; empty: the `name` in the parent file.
    pub name: String,
    pub who: String,
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub package: PackageRecord,
    pub version: VersionRecord,
    /// The content equals the latest version's: nothing was added.
    pub unchanged: bool,
}

/// A package version ready to start.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub package: PackageRecord,
    pub version: VersionRecord,
    /// path → text, from the blobs.
    pub files: BTreeMap<String, String>,
}

/// What a removal did.
#[derive(Debug, Clone, Default)]
pub struct Deleted {
    pub versions: u32,
    /// Executions of it still running (only with `force`).
    pub running: Vec<String>,
    pub blobs_removed: usize,
}

impl Catalog {
    /// Adds a version of a package (creating the package on its first deploy).
    pub async fn deploy(&self, d: Deploy) -> Result<Deployed, CoordinatorError> {
        let folder = normalize_folder(&d.folder)?;
        let (root, files) = (d.root, d.files);
        let b: CheckedBundle =
            crate::prepare::gate::run(move || check_bundle(&root, &files)).await??;
        let name = if d.name.is_empty() {
            b.parent.name.clone()
        } else {
            d.name
        };
        check_name(&name)?;
        // The blobs first (in as many commits as the store needs), pinned
        // until the version that references them is durable (see `blobs`).
        let _pin = blobs::write(self.store.as_ref(), &b.files).await?;
        for _ in 0..RETRIES {
            let mut ops: Vec<Op> = self.folder_guard(&folder).await?.into_iter().collect();
            let nk = name_key(&folder, &name);
            let now = now_ms();
            let (mut pkg, pkg_pre) = match self.store.get(&nk).await? {
                None => {
                    let id = uuid::Uuid::now_v7().simple().to_string();
                    ops.push(Op::Put {
                        key: nk,
                        value: id.clone().into_bytes(),
                        pre: Precondition::Absent,
                    });
                    let rec = PackageRecord {
                        id,
                        folder: folder.clone(),
                        name: name.clone(),
                        latest: 0,
                        latest_hash: String::new(),
                        description: String::new(),
                        created_unix_ms: now,
                        updated_unix_ms: now,
                        created_by: d.who.clone(),
                    };
                    (rec, Precondition::Absent)
                }
                Some(entry) => {
                    let id = String::from_utf8_lossy(&entry.value).to_string();
                    let kv = self.store.get(&package_key(&id)).await?.ok_or_else(|| {
                        CoordinatorError::Store(format!("{} names missing package {id}", entry.key))
                    })?;
                    let rec: PackageRecord = decode(&kv.key, &kv.value)?;
                    if rec.latest_hash == b.hash {
                        let version = self.version(&rec, rec.latest).await?;
                        return Ok(Deployed {
                            package: rec,
                            version,
                            unchanged: true,
                        });
                    }
                    (rec, Precondition::Revision(kv.mod_revision))
                }
            };
            pkg.latest += 1;
            pkg.latest_hash = b.hash.clone();
            pkg.description = b.parent.description.clone();
            pkg.updated_unix_ms = now;
            let version = VersionRecord {
                version: pkg.latest,
                hash: b.hash.clone(),
                root: b.root.clone(),
                files: b.hashes.clone(),
                package_name: b.parent.name.clone(),
                parameters: b.parent.parameters.values().map(ParamInfo::of).collect(),
                bytes: b.bytes,
                deployed_unix_ms: now,
                deployed_by: d.who.clone(),
            };
            ops.push(Op::Put {
                key: version_key(&pkg.id, version.version),
                value: encode(&version)?,
                pre: Precondition::Absent,
            });
            // What the version counts against its deployer's quota.
            ops.push(crate::quota::version_usage_put(&pkg.id, &version)?);
            ops.push(Op::Put {
                key: package_key(&pkg.id),
                value: encode(&pkg)?,
                pre: pkg_pre,
            });
            match self.store.commit(ops).await {
                Ok(_) => {
                    return Ok(Deployed {
                        package: pkg,
                        version,
                        unchanged: false,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoordinatorError::StoreConflict(name_key(&folder, &name)))
    }

    /// The package at `path` and its record's revision.
    pub async fn package(&self, path: &str) -> Result<(PackageRecord, u64), CoordinatorError> {
        let (folder, name) = split_path(path)?;
        let not_found =
            || CoordinatorError::PackageNotFound(super::model::package_path(&folder, &name));
        let entry = self
            .store
            .get(&name_key(&folder, &name))
            .await?
            .ok_or_else(not_found)?;
        let id = String::from_utf8_lossy(&entry.value).to_string();
        let kv = self
            .store
            .get(&package_key(&id))
            .await?
            .ok_or_else(not_found)?;
        Ok((decode(&kv.key, &kv.value)?, kv.mod_revision))
    }

    /// Every package in `folder` and below, in path order.
    pub async fn packages_below(
        &self,
        folder: &str,
    ) -> Result<Vec<PackageRecord>, CoordinatorError> {
        let mut out = Vec::new();
        for entry in self.store.range(&names_prefix(folder)).await? {
            let id = String::from_utf8_lossy(&entry.value).to_string();
            // A package removed between the two reads is simply not listed.
            if let Some(kv) = self.store.get(&package_key(&id)).await? {
                out.push(decode(&kv.key, &kv.value)?);
            }
        }
        Ok(out)
    }

    /// Packages in `folder` and below whose name contains `name_contains`.
    pub async fn list(
        &self,
        folder: &str,
        name_contains: &str,
    ) -> Result<Vec<PackageRecord>, CoordinatorError> {
        let folder = normalize_folder(folder)?;
        let mut all = self.packages_below(&folder).await?;
        all.retain(|p| p.name.contains(name_contains));
        Ok(all)
    }

    /// Every version of a package, newest first.
    pub async fn versions(&self, id: &str) -> Result<Vec<VersionRecord>, CoordinatorError> {
        let mut out: Vec<VersionRecord> = self
            .store
            .range(&versions_prefix(id))
            .await?
            .iter()
            .map(|kv| decode(&kv.key, &kv.value))
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// One version of a package.
    pub async fn version(
        &self,
        pkg: &PackageRecord,
        version: u32,
    ) -> Result<VersionRecord, CoordinatorError> {
        let kv = self
            .store
            .get(&version_key(&pkg.id, version))
            .await?
            .ok_or_else(|| CoordinatorError::VersionNotFound {
                package: pkg.path(),
                version,
                latest: pkg.latest,
            })?;
        decode(&kv.key, &kv.value)
    }

    /// The package at `path`, version `version` (0: the latest), with its files.
    pub async fn resolve(&self, path: &str, version: u32) -> Result<Resolved, CoordinatorError> {
        let (package, _) = self.package(path).await?;
        let v = if version == 0 {
            package.latest
        } else {
            version
        };
        let version = self.version(&package, v).await?;
        let files = blobs::files_of(self.store.as_ref(), &version).await?;
        Ok(Resolved {
            package,
            version,
            files,
        })
    }

    /// Executions started from package `id`, newest first.
    pub async fn executions_of(&self, id: &str) -> Result<Vec<ExecutionRecord>, CoordinatorError> {
        let mut out: Vec<ExecutionRecord> = self
            .store
            .range(crate::keys::EXECUTION_PREFIX)
            .await?
            .into_iter()
            .filter_map(|kv| serde_json::from_slice::<ExecutionRecord>(&kv.value).ok())
            .filter(|e| e.catalog.as_ref().is_some_and(|c| c.package_id == id))
            .collect();
        out.reverse(); // ids are time-ordered (UUIDv7)
        Ok(out)
    }

    /// Renames and/or moves the package at `from` to the path `to`.
    pub async fn move_package(
        &self,
        from: &str,
        to: &str,
    ) -> Result<PackageRecord, CoordinatorError> {
        let (to_folder, to_name) = split_path(to)?;
        for _ in 0..RETRIES {
            let (mut rec, rev) = self.package(from).await?;
            if rec.folder == to_folder && rec.name == to_name {
                return Ok(rec);
            }
            let mut ops: Vec<Op> = self.folder_guard(&to_folder).await?.into_iter().collect();
            let old_key = name_key(&rec.folder, &rec.name);
            let new_key = name_key(&to_folder, &to_name);
            if self.store.get(&new_key).await?.is_some() {
                return Err(CoordinatorError::PackageExists(super::model::package_path(
                    &to_folder, &to_name,
                )));
            }
            rec.folder = to_folder.clone();
            rec.name = to_name.clone();
            rec.updated_unix_ms = now_ms();
            ops.push(Op::Delete {
                key: old_key,
                pre: Precondition::Any,
            });
            ops.push(Op::Put {
                key: new_key,
                value: rec.id.clone().into_bytes(),
                pre: Precondition::Absent,
            });
            ops.push(Op::Put {
                key: package_key(&rec.id),
                value: encode(&rec)?,
                pre: Precondition::Revision(rev),
            });
            match self.store.commit(ops).await {
                Ok(_) => return Ok(rec),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoordinatorError::StoreConflict(from.to_string()))
    }

    /// Removes the package at `path` with all its versions; refused while an
    /// execution of it runs, unless `force`.
    pub async fn delete_package(
        &self,
        path: &str,
        force: bool,
    ) -> Result<Deleted, CoordinatorError> {
        for _ in 0..RETRIES {
            let (rec, rev) = self.package(path).await?;
            let running: Vec<String> = self
                .executions_of(&rec.id)
                .await?
                .into_iter()
                .filter(|e| !e.state.is_terminal())
                .map(|e| e.id)
                .collect();
            if !running.is_empty() && !force {
                return Err(CoordinatorError::PackageInUse {
                    package: rec.path(),
                    running: running.len(),
                    first: running[0].clone(),
                });
            }
            let versions = self.store.range(&versions_prefix(&rec.id)).await?;
            // Versions first, the package and its name last: a removal too
            // large for one commit goes in several (`store::split`), and one
            // cut short leaves the package in place, to be removed again.
            let mut ops: Vec<Op> = Vec::new();
            let count = versions.len() as u32;
            for kv in versions {
                // Its quota usage goes with it.
                let v: VersionRecord = decode(&kv.key, &kv.value)?;
                ops.push(crate::quota::version_usage_delete(&rec.id, &v));
                ops.push(Op::Delete {
                    key: kv.key,
                    pre: Precondition::Revision(kv.mod_revision),
                });
            }
            ops.extend(self.folder_guard(&rec.folder).await?);
            ops.push(Op::Delete {
                key: name_key(&rec.folder, &rec.name),
                pre: Precondition::Any,
            });
            ops.push(Op::Delete {
                key: package_key(&rec.id),
                pre: Precondition::Revision(rev),
            });
            match commit_in_chunks(self.store.as_ref(), ops).await {
                Ok(_) => {
                    let blobs_removed = blobs::sweep(self.store.as_ref()).await?;
                    return Ok(Deleted {
                        versions: count,
                        running,
                        blobs_removed,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoordinatorError::StoreConflict(path.to_string()))
    }
}
