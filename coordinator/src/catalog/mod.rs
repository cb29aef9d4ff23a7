//! The catalog: folders → packages → immutable versions, in the coordinator's
//! store — the SSIS catalog's model.
//!
//! - [`model`]: the records and their keys, names and paths;
//! - [`folders`]: explicit, nested folders (create, list, rename, remove);
//! - [`packages`]: deploy (a new version unless the content is unchanged),
//!   list, show, move, remove;
//! - [`blobs`]: bundle checks and hashes, file texts stored once per content
//!   hash, and their removal when nothing references them;
//! - [`start`]: starting an execution of a catalog package.
//!
//! A version is the whole bundle: the parent file and the child files it
//! references, identified by [`blobs::bundle_hash`]. An execution started from
//! the catalog records the package id, the version and that hash
//! ([`crate::records::CatalogRef`]) and keeps its own copy of the bundle, so it
//! runs the version it pinned whatever happens to the package later. Its child
//! packages go to agents by hash only: agents fetch them
//! (`CoordinatorService.FetchPackage`) and cache them.
//!
//! Permissions are checked by the gRPC layer (`grpc::catalog_api`), not here.

pub mod blobs;
pub mod folders;
mod handle;
pub mod model;
pub mod packages;
pub mod start;

#[cfg(test)]
mod tests;

pub use folders::{FolderInfo, Renamed};
pub use handle::Catalog;
pub use model::{FolderRecord, PackageRecord, ParamInfo, VersionRecord};
pub use packages::{Deleted, Deploy, Deployed, Resolved};
