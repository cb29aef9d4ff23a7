//! `CoordinatorService.FetchPackage`: package text by content hash, for agents.
//!
//! Catalog packages reach agents by hash only; an agent that lacks one in its
//! cache fetches it here. Any registered agent whose certificate is not
//! revoked may fetch any blob: the content is addressed by its SHA-256, which
//! only a dispatch tells. Without TLS (`--insecure`) nobody can be identified
//! and every caller is served.

use baton_proto as pb;
use baton_proto::identity::Peer;
use tonic::{Response, Status};

use super::error_status::status;
use crate::auth::{Auth, Credential};
use crate::error::CoordinatorError;

const CALL: &str = "FetchPackage";

/// Refuses anyone but a registered, unrevoked agent (audited).
async fn check_caller(auth: &Auth, cred: &Credential) -> Result<(), Status> {
    let (name, fingerprint) = match cred {
        Credential::Plaintext => return Ok(()),
        Credential::Certificate {
            peer: Peer::Agent(name),
            fingerprint,
        } => (name, fingerprint),
        Credential::Certificate { peer, .. } => {
            auth.audit
                .denied(&peer.to_string(), CALL, "", "PERMISSION_DENIED");
            return Err(status(CoordinatorError::PermissionDenied(format!(
                "{CALL} is for agents; {peer} is not one"
            ))));
        }
        Credential::Bearer(_) => {
            auth.audit.denied("anonymous", CALL, "", "UNAUTHENTICATED");
            return Err(status(CoordinatorError::Unauthenticated(format!(
                "{CALL} needs an agent's certificate"
            ))));
        }
    };
    let store = auth.store();
    if let Err(e) = crate::auth::identity::check_certificate(store, name, fingerprint).await {
        auth.audit
            .denied(&format!("agent {name}"), CALL, "", e.code());
        return Err(status(e));
    }
    let registered = store
        .get(&crate::records::agent_key(name))
        .await
        .map_err(|e| status(e.into()))?;
    if registered.is_none() {
        auth.audit
            .denied(&format!("agent {name}"), CALL, "", "PERMISSION_DENIED");
        return Err(status(CoordinatorError::PermissionDenied(format!(
            "agent '{name}' is not registered; only registered agents fetch packages"
        ))));
    }
    Ok(())
}

pub(super) async fn fetch_package(
    auth: &Auth,
    cred: &Credential,
    req: pb::FetchPackageRequest,
) -> Result<Response<pb::FetchPackageResponse>, Status> {
    check_caller(auth, cred).await?;
    let hash = req.content_hash;
    if !crate::catalog::model::valid_hash(&hash) {
        return Err(status(CoordinatorError::InvalidRequest(
            "content_hash must be 64 lower-case hex digits".into(),
        )));
    }
    let text = crate::catalog::blobs::get(auth.store(), &hash)
        .await
        .map_err(status)?
        .ok_or_else(|| status(CoordinatorError::ContentNotFound(hash)))?;
    Ok(Response::new(pb::FetchPackageResponse {
        content: text.into_bytes(),
    }))
}
