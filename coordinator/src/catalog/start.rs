//! Starting an execution of a catalog package (`StartExecution` with
//! `package` instead of `bundle`).
//!
//! The version is resolved once, at start (0 = the latest at that moment); the
//! execution records it ([`CatalogRef`]) with its own reference to the
//! bundle's blobs ([`crate::bundles`]), and
//! its children are dispatched by content hash. Every child therefore runs
//! exactly the version the parent pinned, even if a new version is deployed,
//! or the package moved or removed, while it runs.

use std::collections::BTreeMap;

use super::handle::Catalog;
use crate::api::{Bundle, Coordinator};
use crate::error::CoordinatorError;
use crate::records::CatalogRef;

/// An execution started from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedPackage {
    pub execution_id: String,
    /// Where the package was, and its folder (the execution's folder).
    pub path: String,
    pub folder: String,
    pub version: u32,
    pub hash: String,
}

impl Coordinator {
    /// The catalog in this coordinator's store.
    pub fn catalog(&self) -> Catalog {
        Catalog::new(self.store.clone())
    }

    /// Starts version `version` (0: the latest) of the package at `path`; the
    /// execution belongs to the package's folder.
    pub async fn start_package(
        &self,
        path: &str,
        version: u32,
        params: BTreeMap<String, String>,
        placement: crate::placement::PlacementPolicy,
    ) -> Result<StartedPackage, CoordinatorError> {
        let catalog = self.catalog();
        let r = catalog.resolve(path, version).await?;
        let reference = CatalogRef {
            package_id: r.package.id.clone(),
            path: r.package.path(),
            version: r.version.version,
            hash: r.version.hash.clone(),
        };
        let bundle = Bundle {
            root: r.version.root.clone(),
            files: r.files.clone(),
        };
        let folder = r.package.folder.clone();
        let id = self
            .start_bundle(
                bundle,
                params,
                folder.clone(),
                Some(reference.clone()),
                placement,
            )
            .await?;
        Ok(StartedPackage {
            execution_id: id,
            path: reference.path,
            folder,
            version: reference.version,
            hash: reference.hash,
        })
    }
}
