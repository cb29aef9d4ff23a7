//! The catalog calls of `ControlService` (the trait impl in
//! [`super::control_api`] delegates here): permission checks, audit, and
//! conversions around [`crate::catalog::Catalog`].
//!
//! | call | needs |
//! | --- | --- |
//! | ListFolders, ListPackages | lists only what the caller may read |
//! | GetPackage | `read` on the package's folder (executions listed: those it may read) |
//! | CreateFolder, DeleteFolder | `modify` on the folder |
//! | RenameFolder | `modify` on the old and the new path |
//! | DeployPackage | `modify` on the target folder |
//! | MovePackage | `modify` on the package's folder and on the target folder |
//! | DeletePackage | `modify` on the package's folder |
//! | StartExecution with `package` | `execute` on the package's folder |
//!
//! A package's folder is part of its path, so permissions are checked before
//! anything is looked up: a refusal tells nothing about what exists. Every
//! change is one line in the audit trail.

use baton_proto as pb;
use tonic::{Request, Response, Status};

use super::control_state::ControlApi;
use super::convert;
use super::error_status::status;
use crate::auth::{Permission, normalize_folder};
use crate::catalog::model::split_path;
use crate::catalog::{Deploy, PackageRecord, VersionRecord};
use crate::error::CoordinatorError;

/// Most executions `GetPackage` returns.
const EXECUTIONS_MAX: usize = 100;

fn summary(p: &PackageRecord) -> pb::PackageSummary {
    pb::PackageSummary {
        path: p.path(),
        folder: p.folder.clone(),
        name: p.name.clone(),
        id: p.id.clone(),
        latest_version: p.latest,
        latest_hash: p.latest_hash.clone(),
        description: p.description.clone(),
        created_unix_ms: p.created_unix_ms,
        updated_unix_ms: p.updated_unix_ms,
    }
}

fn version(v: VersionRecord) -> pb::PackageVersion {
    pb::PackageVersion {
        version: v.version,
        hash: v.hash,
        root: v.root,
        files: v.files.into_iter().collect(),
        deployed_unix_ms: v.deployed_unix_ms,
        deployed_by: v.deployed_by,
        parameters: v
            .parameters
            .into_iter()
            .map(|p| pb::PackageParameter {
                name: p.name,
                r#type: p.ty,
                has_default: p.has_default,
                // Never a sensitive default (the record does not hold one either).
                default: if p.sensitive {
                    String::new()
                } else {
                    p.default.unwrap_or_default()
                },
                required: p.required,
                sensitive: p.sensitive,
                description: p.description,
            })
            .collect(),
        package_name: v.package_name,
        bytes: v.bytes,
    }
}

impl ControlApi {
    pub(super) async fn start_package(
        &self,
        request: Request<pb::StartExecutionRequest>,
    ) -> Result<Response<pb::StartExecutionResponse>, Status> {
        let call = "StartExecution";
        let who = self.who(&request, call).await?;
        let r = request.into_inner();
        if r.bundle.is_some() {
            return Err(status(CoordinatorError::InvalidRequest(
                "give a bundle or a catalog package, not both".into(),
            )));
        }
        // A package's folder is in its path: permissions are checked before
        // anything is looked up, so a refusal says nothing about what exists.
        let (folder, _) = split_path(&r.package).map_err(status)?;
        if !r.folder.is_empty() && normalize_folder(&r.folder).map_err(status)? != folder {
            return Err(status(CoordinatorError::InvalidRequest(format!(
                "package {} is in folder {folder}, and its executions belong there (leave --folder out)",
                r.package
            ))));
        }
        // `run` suffices: a catalog package runs only what was deployed there.
        self.auth
            .require(&who, Permission::Run, &folder, call)
            .await
            .map_err(status)?;
        let placement = convert::placement(&r).map_err(status)?;
        let params: std::collections::BTreeMap<String, String> = r.parameters.into_iter().collect();
        // The execution keeps the version's bundle: counted against the starter.
        let catalog = self.coordinator.catalog();
        let (pkg, _) = catalog.package(&r.package).await.map_err(status)?;
        let v = if r.version == 0 {
            pkg.latest
        } else {
            r.version
        };
        let v = catalog.version(&pkg, v).await.map_err(status)?;
        let bytes =
            v.bytes
                .saturating_add(crate::quota::bundle_bytes("", &Default::default(), &params));
        // Held while it plans (released if the start fails or the caller goes).
        let reservation = self.quota.reserve(&who, bytes).await.map_err(status)?;
        let started = self
            .coordinator
            .start_package(&r.package, r.version, params, placement)
            .await
            .map_err(status)?;
        self.quota
            .record_execution(&started.execution_id, &who, bytes)
            .await;
        drop(reservation);
        Ok(Response::new(pb::StartExecutionResponse {
            execution_id: started.execution_id,
            package_version: started.version,
            package_hash: started.hash,
        }))
    }

    pub(super) async fn catalog_create_folder(
        &self,
        request: Request<pb::CreateFolderRequest>,
    ) -> Result<Response<pb::CreateFolderResponse>, Status> {
        let call = "CreateFolder";
        let path = normalize_folder(&request.get_ref().path).map_err(status)?;
        let who = self
            .allow(&request, call, Permission::Modify, &path)
            .await?;
        let created = self
            .coordinator
            .catalog()
            .create_folder(&path, request.get_ref().parents, &who.name)
            .await
            .map_err(status)?;
        for f in &created {
            self.auth
                .audit
                .changed(&who.name, call, f, "folder created");
        }
        Ok(Response::new(pb::CreateFolderResponse { created }))
    }

    pub(super) async fn catalog_list_folders(
        &self,
        request: Request<pb::ListFoldersRequest>,
    ) -> Result<Response<pb::ListFoldersResponse>, Status> {
        let who = self.who(&request, "ListFolders").await?;
        let readable = self.auth.reader(&who).await.map_err(status)?;
        let folders = self
            .coordinator
            .catalog()
            .folders(&request.get_ref().under)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListFoldersResponse {
            folders: folders
                .into_iter()
                .filter(|f| readable(&f.record.path))
                .map(|f| pb::FolderInfo {
                    path: f.record.path,
                    packages: f.packages,
                    folders: f.folders,
                    created_unix_ms: f.record.created_unix_ms,
                    created_by: f.record.created_by,
                })
                .collect(),
        }))
    }

    pub(super) async fn catalog_rename_folder(
        &self,
        request: Request<pb::RenameFolderRequest>,
    ) -> Result<Response<pb::RenameFolderResponse>, Status> {
        let call = "RenameFolder";
        let who = self.who(&request, call).await?;
        let r = request.into_inner();
        let from = normalize_folder(&r.from).map_err(status)?;
        let to = normalize_folder(&r.to).map_err(status)?;
        for f in [&from, &to] {
            self.auth
                .require(&who, Permission::Modify, f, call)
                .await
                .map_err(status)?;
        }
        let moved = self
            .coordinator
            .catalog()
            .rename_folder(&from, &to)
            .await
            .map_err(status)?;
        self.auth.audit.changed(
            &who.name,
            call,
            &from,
            &format!(
                "renamed to {to} ({} folders, {} packages)",
                moved.folders, moved.packages
            ),
        );
        Ok(Response::new(pb::RenameFolderResponse {
            folders: moved.folders,
            packages: moved.packages,
        }))
    }

    pub(super) async fn catalog_delete_folder(
        &self,
        request: Request<pb::DeleteFolderRequest>,
    ) -> Result<Response<pb::DeleteFolderResponse>, Status> {
        let call = "DeleteFolder";
        let path = normalize_folder(&request.get_ref().path).map_err(status)?;
        let who = self
            .allow(&request, call, Permission::Modify, &path)
            .await?;
        self.coordinator
            .catalog()
            .delete_folder(&path)
            .await
            .map_err(status)?;
        self.auth
            .audit
            .changed(&who.name, call, &path, "folder removed");
        Ok(Response::new(pb::DeleteFolderResponse {}))
    }

    pub(super) async fn catalog_deploy(
        &self,
        request: Request<pb::DeployPackageRequest>,
    ) -> Result<Response<pb::DeployPackageResponse>, Status> {
        let call = "DeployPackage";
        let folder = normalize_folder(&request.get_ref().folder).map_err(status)?;
        let who = self
            .allow(&request, call, Permission::Modify, &folder)
            .await?;
        let r = request.into_inner();
        let bundle = r.bundle.ok_or_else(|| {
            status(CoordinatorError::InvalidRequest(
                "bundle is required".into(),
            ))
        })?;
        let files: std::collections::BTreeMap<String, String> = bundle.files.into_iter().collect();
        // At most this is stored (files the parent does not reference are dropped).
        let bytes = crate::quota::bundle_bytes(&bundle.root, &files, &Default::default());
        // Held until the version is stored (or the deploy fails).
        let reservation = self.quota.reserve(&who, bytes).await.map_err(status)?;
        let d = self
            .coordinator
            .catalog()
            .deploy(Deploy {
                root: bundle.root,
                files,
                folder: folder.clone(),
                name: r.name,
                who: who.name.clone(),
            })
            .await
            .map_err(status)?;
        drop(reservation);
        if !d.unchanged {
            self.auth.audit.changed(
                &who.name,
                call,
                &folder,
                &format!(
                    "{} version {} ({})",
                    d.package.path(),
                    d.version.version,
                    d.version.hash
                ),
            );
        }
        Ok(Response::new(pb::DeployPackageResponse {
            package: Some(summary(&d.package)),
            version: Some(version(d.version)),
            unchanged: d.unchanged,
        }))
    }

    pub(super) async fn catalog_list_packages(
        &self,
        request: Request<pb::ListPackagesRequest>,
    ) -> Result<Response<pb::ListPackagesResponse>, Status> {
        let who = self.who(&request, "ListPackages").await?;
        let readable = self.auth.reader(&who).await.map_err(status)?;
        let r = request.into_inner();
        let packages = self
            .coordinator
            .catalog()
            .list(&r.folder, &r.name_contains)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListPackagesResponse {
            packages: packages
                .iter()
                .filter(|p| readable(&p.folder))
                .map(summary)
                .collect(),
        }))
    }

    pub(super) async fn catalog_get_package(
        &self,
        request: Request<pb::GetPackageRequest>,
    ) -> Result<Response<pb::PackageDetail>, Status> {
        let call = "GetPackage";
        let who = self.who(&request, call).await?;
        let r = request.into_inner();
        let (folder, _) = split_path(&r.path).map_err(status)?;
        self.auth
            .require(&who, Permission::Read, &folder, call)
            .await
            .map_err(status)?;
        let catalog = self.coordinator.catalog();
        let (pkg, _) = catalog.package(&r.path).await.map_err(status)?;
        let readable = self.auth.reader(&who).await.map_err(status)?;
        let versions = catalog.versions(&pkg.id).await.map_err(status)?;
        let limit = match r.executions as usize {
            0 => 10,
            n => n.min(EXECUTIONS_MAX),
        };
        let executions = catalog
            .executions_of(&pkg.id)
            .await
            .map_err(status)?
            .into_iter()
            .filter(|e| readable(e.folder()))
            .take(limit)
            .map(|e| pb::PackageExecution {
                version: e.catalog.as_ref().map_or(0, |c| c.version),
                state: e.state.as_str().to_string(),
                created_unix_ms: e.created_unix_ms,
                finished_unix_ms: e.finished_unix_ms,
                folder: e.folder().to_string(),
                execution_id: e.id,
            })
            .collect();
        Ok(Response::new(pb::PackageDetail {
            package: Some(summary(&pkg)),
            versions: versions.into_iter().map(version).collect(),
            executions,
        }))
    }

    pub(super) async fn catalog_move_package(
        &self,
        request: Request<pb::MovePackageRequest>,
    ) -> Result<Response<pb::MovePackageResponse>, Status> {
        let call = "MovePackage";
        let who = self.who(&request, call).await?;
        let r = request.into_inner();
        let (from_folder, _) = split_path(&r.from).map_err(status)?;
        let (to_folder, _) = split_path(&r.to).map_err(status)?;
        for f in [&from_folder, &to_folder] {
            self.auth
                .require(&who, Permission::Modify, f, call)
                .await
                .map_err(status)?;
        }
        let moved = self
            .coordinator
            .catalog()
            .move_package(&r.from, &r.to)
            .await
            .map_err(status)?;
        self.auth.audit.changed(
            &who.name,
            call,
            &from_folder,
            &format!("{} moved to {}", r.from, moved.path()),
        );
        Ok(Response::new(pb::MovePackageResponse {
            package: Some(summary(&moved)),
        }))
    }

    pub(super) async fn catalog_delete_package(
        &self,
        request: Request<pb::DeletePackageRequest>,
    ) -> Result<Response<pb::DeletePackageResponse>, Status> {
        let call = "DeletePackage";
        let who = self.who(&request, call).await?;
        let r = request.into_inner();
        let (folder, _) = split_path(&r.path).map_err(status)?;
        self.auth
            .require(&who, Permission::Modify, &folder, call)
            .await
            .map_err(status)?;
        let deleted = self
            .coordinator
            .catalog()
            .delete_package(&r.path, r.force)
            .await
            .map_err(status)?;
        let detail = if deleted.running.is_empty() {
            format!("{} removed ({} versions)", r.path, deleted.versions)
        } else {
            format!(
                "{} removed with --force ({} versions, {} executions still running)",
                r.path,
                deleted.versions,
                deleted.running.len()
            )
        };
        self.auth.audit.changed(&who.name, call, &folder, &detail);
        Ok(Response::new(pb::DeletePackageResponse {
            versions: deleted.versions,
            running_executions: deleted.running,
        }))
    }
}
