//! What the calls of `ControlService` share: the coordinator, the
//! authorisation, the coordinator's TLS, the children's outputs and the quota,
//! and the checks every call starts with (who calls, and may it do this on
//! that folder). The calls add their own `impl ControlApi` blocks above this
//! one: `control_api.rs` (the trait impl), `catalog_api.rs`,
//! `catalog_children.rs`.

use std::sync::Arc;

use tonic::{Request, Status};

use super::caller::credential;
use super::child_output::ChildOutputs;
use super::error_status::status;
use crate::api::Coordinator;
use crate::auth::{Auth, Permission, Principal};
use crate::live_tls::LiveTls;

/// The `ControlService` server.
pub struct ControlApi {
    pub(crate) coordinator: Coordinator,
    pub(crate) auth: Auth,
    pub(crate) tls: Option<Arc<LiveTls>>,
    /// Children's logs and rows, from their agents ([`super::child_output`]).
    pub(crate) outputs: ChildOutputs,
    /// Stored bytes per principal ([`crate::quota`]).
    pub(crate) quota: crate::quota::Quota,
}

impl ControlApi {
    /// Authenticates the caller and checks `needed` on `folder`.
    pub(super) async fn allow<T>(
        &self,
        request: &Request<T>,
        call: &str,
        needed: Permission,
        folder: &str,
    ) -> Result<Principal, Status> {
        let who = self.who(request, call).await?;
        self.auth
            .require(&who, needed, folder, call)
            .await
            .map_err(status)?;
        Ok(who)
    }

    pub(super) async fn who<T>(
        &self,
        request: &Request<T>,
        call: &str,
    ) -> Result<Principal, Status> {
        self.auth
            .authenticate(&credential(request), call)
            .await
            .map_err(status)
    }

    /// The access layer over this term's coordinator ([`crate::access`]).
    pub(super) fn access(&self) -> crate::access::Access {
        crate::access::Access::new(self.coordinator.clone(), self.auth.clone())
    }

    /// The folder of an execution (for permission checks).
    pub(super) async fn folder_of(&self, id: &str) -> Result<String, Status> {
        self.coordinator.folder(id).await.map_err(status)
    }
}
