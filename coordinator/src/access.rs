//! The access layer: what a principal may see and do, checked and audited in
//! one place for every surface that serves people — the gRPC
//! `ControlService` ([`crate::grpc::control_api`]) and the web dashboard
//! ([`crate::web`]) both call it with the caller's [`Principal`].
//!
//! Each method names the permission it needs, reads the folder the object
//! lives in *before* anything else (a refusal reads nothing more), asks
//! [`Auth::require`] (which audits a refusal, aggregated per source) and only
//! then calls the coordinator's domain API ([`Coordinator`]). Listings are
//! filtered to the folders the principal may read instead of refused.
//!
//! | method | needs |
//! | --- | --- |
//! | [`Access::view`], [`Access::view_child`], [`Access::watch`], [`Access::child_folder_check`] | `read` on the execution's folder |
//! | [`Access::list`], [`Access::catalog`] | lists only folders the caller may read |
//! | [`Access::agents`] | `read` on "/" |
//! | [`Access::cancel`] | `run` on the execution's folder |
//! | [`Access::resume`] | `execute` on the execution's folder |

use crate::api::{Coordinator, Watched};
use crate::auth::{Auth, Credential, GrantSet, Method, Permission, Principal};
use crate::catalog::model::{PackageRecord, VersionRecord};
use crate::error::CoordinatorError;
use crate::scheduler::{CancelOutcome, ExecutionView, Summary};
use crate::scheduler_task::AgentListing;

/// The most bytes of a cancellation's reason.
pub const MAX_REASON_BYTES: usize = 1024;

/// The access layer over one term's coordinator.
#[derive(Clone)]
pub struct Access {
    coordinator: Coordinator,
    auth: Auth,
}

/// A folder of the catalog as a reader sees it: its packages with their versions.
#[derive(Debug, Clone)]
pub struct CatalogFolder {
    pub path: String,
    pub packages: Vec<(PackageRecord, Vec<VersionRecord>)>,
}

/// The most packages [`Access::catalog`] lists (with their versions).
pub const MAX_CATALOG_PACKAGES: usize = 1000;

impl Access {
    pub fn new(coordinator: Coordinator, auth: Auth) -> Access {
        Access { coordinator, auth }
    }

    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The principal behind a credential, for `call` (refusals audited).
    pub async fn authenticate(
        &self,
        cred: &Credential,
        call: &str,
    ) -> Result<Principal, CoordinatorError> {
        self.auth.authenticate(cred, call).await
    }

    /// Checks `needed` on the folder of execution `id`; returns that folder.
    pub async fn on_execution(
        &self,
        who: &Principal,
        id: &str,
        needed: Permission,
        call: &str,
    ) -> Result<String, CoordinatorError> {
        let folder = self.coordinator.folder(id).await?;
        self.auth.require(who, needed, &folder, call).await?;
        Ok(folder)
    }

    /// Whether `who` holds `needed` on `folder`, without auditing a "no"
    /// (what a page uses to show or hide a button; the action itself is
    /// checked, and audited, when it is asked for).
    pub async fn holds(
        &self,
        who: &Principal,
        needed: Permission,
        folder: &str,
    ) -> Result<bool, CoordinatorError> {
        if who.method == Method::Insecure {
            return Ok(true);
        }
        let (g, _): (GrantSet, u64) = self.auth.grants(&who.name).await?;
        Ok(g.allows(needed, folder))
    }

    /// An execution with at most `limit` children (those that did not succeed first).
    pub async fn view(
        &self,
        who: &Principal,
        id: &str,
        limit: usize,
        call: &str,
    ) -> Result<ExecutionView, CoordinatorError> {
        self.on_execution(who, id, Permission::Read, call).await?;
        self.coordinator.view_limited(id, limit).await
    }

    /// An execution's counts with one child (`task[index]`) only.
    pub async fn view_child(
        &self,
        who: &Principal,
        id: &str,
        task: &str,
        index: u32,
        call: &str,
    ) -> Result<ExecutionView, CoordinatorError> {
        self.on_execution(who, id, Permission::Read, call).await?;
        self.coordinator.view_child(id, task, index).await
    }

    /// An execution's summaries as it progresses.
    pub async fn watch(
        &self,
        who: &Principal,
        id: &str,
        call: &str,
    ) -> Result<Watched, CoordinatorError> {
        self.on_execution(who, id, Permission::Read, call).await?;
        self.coordinator.watch(id).await
    }

    /// Checks that `who` may read a child's logs and rows in execution `id`.
    pub async fn child_folder_check(
        &self,
        who: &Principal,
        id: &str,
        call: &str,
    ) -> Result<String, CoordinatorError> {
        self.on_execution(who, id, Permission::Read, call).await
    }

    /// Executions newest first, in the folders `who` may read, filtered by
    /// state, package and (when not empty) folder: that folder and below.
    pub async fn list(
        &self,
        who: &Principal,
        state: &str,
        package: &str,
        folder: &str,
        limit: usize,
        page_token: &str,
    ) -> Result<(Vec<Summary>, String), CoordinatorError> {
        let readable = self.auth.reader(who).await?;
        let within = if folder.is_empty() {
            String::new()
        } else {
            crate::auth::normalize_folder(folder)?
        };
        let filter = move |f: &str| readable(f) && in_folder(f, &within);
        self.coordinator
            .list(state, package, limit, page_token, &filter)
            .await
    }

    /// The fleet (`read` on "/").
    pub async fn agents(
        &self,
        who: &Principal,
        call: &str,
    ) -> Result<Vec<AgentListing>, CoordinatorError> {
        self.auth.require(who, Permission::Read, "/", call).await?;
        self.coordinator.agents().await
    }

    /// Cancels an execution (`run` on its folder).
    pub async fn cancel(
        &self,
        who: &Principal,
        id: &str,
        reason: &str,
        call: &str,
    ) -> Result<CancelOutcome, CoordinatorError> {
        let folder = self.on_execution(who, id, Permission::Run, call).await?;
        if reason.len() > MAX_REASON_BYTES {
            return Err(CoordinatorError::InvalidRequest(format!(
                "reason is longer than {MAX_REASON_BYTES} bytes"
            )));
        }
        let done = self.coordinator.cancel(id, reason).await?;
        if !done.already_ended {
            self.auth.audit.changed(
                &who.name,
                call,
                &folder,
                &format!("execution {id} cancelled"),
            );
        }
        Ok(done)
    }

    /// Resumes a failed or cancelled execution (`execute` on its folder);
    /// returns the children that run again and the number of resumes.
    pub async fn resume(
        &self,
        who: &Principal,
        id: &str,
        call: &str,
    ) -> Result<(u64, u32), CoordinatorError> {
        let folder = self
            .on_execution(who, id, Permission::Execute, call)
            .await?;
        let done = self.coordinator.resume(id).await?;
        self.auth
            .audit
            .changed(&who.name, call, &folder, &format!("execution {id} resumed"));
        Ok(done)
    }

    /// The catalog's folders that `who` may read, with their packages and
    /// versions (at most [`MAX_CATALOG_PACKAGES`] packages; `true` when some
    /// were left out). Nothing past the folder list is read for a folder
    /// `who` may not read.
    pub async fn catalog(
        &self,
        who: &Principal,
    ) -> Result<(Vec<CatalogFolder>, bool), CoordinatorError> {
        let readable = self.auth.reader(who).await?;
        let catalog = self.coordinator.catalog();
        let mut paths = vec!["/".to_string()];
        paths.extend(
            catalog
                .folders("/")
                .await?
                .into_iter()
                .map(|f| f.record.path),
        );
        let packages = catalog.packages_below("/").await?;
        let mut out = Vec::new();
        let mut listed = 0;
        let mut truncated = false;
        'folders: for path in paths.into_iter().filter(|p| readable(p)) {
            let mut folder = CatalogFolder {
                path: path.clone(),
                packages: Vec::new(),
            };
            for p in packages.iter().filter(|p| p.folder == path) {
                if listed == MAX_CATALOG_PACKAGES {
                    truncated = true;
                    out.push(folder);
                    break 'folders;
                }
                listed += 1;
                let versions = catalog.versions(&p.id).await?;
                folder.packages.push((p.clone(), versions));
            }
            out.push(folder);
        }
        Ok((out, truncated))
    }
}

/// Whether `folder` is `within` or below it ("" or "/": everything).
fn in_folder(folder: &str, within: &str) -> bool {
    within.is_empty()
        || within == "/"
        || folder == within
        || folder
            .strip_prefix(within)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::in_folder;

    #[test]
    fn a_folder_filter_takes_the_folder_and_below_only() {
        assert!(in_folder("/etl", ""));
        assert!(in_folder("/etl", "/"));
        assert!(in_folder("/etl", "/etl"));
        assert!(in_folder("/etl/daily", "/etl"));
        assert!(!in_folder("/etl2", "/etl"));
        assert!(!in_folder("/", "/etl"));
    }
}
