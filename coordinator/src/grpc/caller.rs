//! Who is calling: the credential a connection presents (a verified
//! certificate, a bearer token, or plaintext) and the check that an agent's
//! call comes from that agent's certificate.

use baton_proto::identity::{Peer, classify};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::error_status::status;
use crate::auth::Credential;
use crate::auth::audit::Audit;
use crate::error::CoordinatorError;

/// What the caller presented: no TLS at all, a verified certificate, or
/// (TLS without a certificate) maybe a bearer token.
pub fn credential<T>(request: &tonic::Request<T>) -> Credential {
    let Some(info) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return Credential::Plaintext;
    };
    match info.peer_certs().and_then(|c| c.first().cloned()) {
        Some(leaf) => Credential::Certificate {
            peer: classify(&leaf),
            fingerprint: baton_proto::tls::sha256_hex(&leaf),
        },
        None => Credential::Bearer(bearer(request.metadata())),
    }
}

/// The token of an `authorization: Bearer …` header.
fn bearer(md: &tonic::metadata::MetadataMap) -> Option<String> {
    let v = md.get("authorization")?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_string())
}

/// Refuses an agent call whose caller is not agent `agent`'s certificate
/// (audited, aggregated per source like every refusal).
pub(crate) fn check_agent(
    audit: &Audit,
    cred: &Credential,
    agent: &str,
    what: &str,
) -> Result<(), tonic::Status> {
    match cred {
        Credential::Plaintext => Ok(()),
        Credential::Certificate {
            peer: Peer::Agent(n),
            ..
        } if n == agent => Ok(()),
        Credential::Certificate { peer, .. } => {
            let e = CoordinatorError::PermissionDenied(format!(
                "{what} as agent '{agent}' refused: the certificate is {peer}"
            ));
            audit.denied(&format!("{peer} (as agent {agent})"), what, "", e.code());
            Err(status(e))
        }
        Credential::Bearer(_) => {
            let e = CoordinatorError::Unauthenticated(format!(
                "{what} needs the agent's certificate; enrol first (baton agent --enroll TOKEN)"
            ));
            audit.denied(&format!("anonymous (as agent {agent})"), what, "", e.code());
            Err(status(e))
        }
    }
}

/// The certificate fingerprint of a credential (empty without one).
pub(crate) fn fingerprint(cred: &Credential) -> String {
    match cred {
        Credential::Certificate { fingerprint, .. } => fingerprint.clone(),
        _ => String::new(),
    }
}
