//! `child = "catalog:/FOLDER/NAME"`: a parent sent as a bundle may name child
//! packages deployed in the catalog. At start, the latest version of each is
//! read from the catalog (the caller needs `execute` on its folder, checked
//! and audited like the start itself) and added to the bundle under the name
//! the parent uses, so the execution keeps its own copy: a later deploy does
//! not change a running execution. A catalog child must be a single file
//! (its own children would need a bundle of their own).

use std::collections::BTreeMap;

use baton_package::{ChildRef, Package, TaskKind};
use tonic::Status;

use super::error_status::status;
use crate::auth::Principal;
use crate::auth::grants::Permission;
use crate::catalog::model::split_path;
use crate::error::CoordinatorError;

impl super::control_state::ControlApi {
    /// Adds the text of every `catalog:` child the root package names.
    pub(super) async fn add_catalog_children(
        &self,
        who: &Principal,
        root: &str,
        files: &mut BTreeMap<String, String>,
    ) -> Result<(), Status> {
        // Only the catalog provides `catalog:` files: a client cannot pass
        // one off as a catalog package.
        if let Some(name) = files
            .keys()
            .find(|k| k.starts_with(baton_package::CATALOG_PREFIX))
        {
            return Err(status(CoordinatorError::InvalidRequest(format!(
                "the bundle has a file named '{name}': names starting with `catalog:` are \
                 reserved for packages read from the catalog"
            ))));
        }
        let Some(text) = files.get(root).cloned() else {
            return Ok(());
        };
        // Parsing a root of up to 16 MiB is heavy: off the runtime threads,
        // through the planning gate. A package that does not parse is
        // reported by planning, with its location.
        let root = root.to_string();
        let named: Vec<(String, String)> = crate::prepare::gate::run(move || {
            let Ok(pkg) = Package::parse(&root, &text) else {
                return Vec::new();
            };
            pkg.tasks
                .values()
                .filter_map(|t| match &t.kind {
                    TaskKind::Child(ct) => Some((t.name.clone(), ct.child.clone())),
                    TaskKind::Foreach(fe) => Some((t.name.clone(), fe.child.clone())),
                    _ => None,
                })
                .collect()
        })
        .await
        .map_err(status)?;
        for (task, child) in &named {
            let ChildRef::Catalog(path) = ChildRef::parse(child) else {
                continue;
            };
            if files.contains_key(child) {
                continue;
            }
            let (folder, _) = split_path(&path).map_err(status)?;
            self.auth
                .require(who, Permission::Run, &folder, "StartExecution")
                .await
                .map_err(status)?;
            let r = self
                .coordinator
                .catalog()
                .resolve(&path, 0)
                .await
                .map_err(status)?;
            if r.files.len() > 1 {
                return Err(status(CoordinatorError::InvalidRequest(format!(
                    "task '{}' names catalog package {path}, which has child packages of its \
                     own; a catalog child must be a single file",
                    task
                ))));
            }
            let text = r.files.get(&r.version.root).cloned().ok_or_else(|| {
                status(CoordinatorError::ContentNotFound(format!(
                    "the text of {path} version {}",
                    r.version.version
                )))
            })?;
            files.insert(child.clone(), text);
        }
        Ok(())
    }
}
