//! Zero-touch enrolment: an agent with nothing but a token gets its identity.
//!
//! `baton token create --agent` prints `btn_enr_<id>_<secret>_<ca pin>`. The
//! agent
//! 1. learns the CA from the coordinator's TLS handshake and accepts it only if
//!    its SHA-256 equals the pin ([`baton_proto::tls::fetch_pinned_ca`]);
//! 2. makes a key pair (the private key never leaves this host) and a
//!    certificate signing request for `NAME.agent.baton`;
//! 3. calls `CoordinatorService.Enroll` over TLS verified against that CA,
//!    sending the token without the pin; the coordinator checks and burns the
//!    token and signs the request;
//! 4. writes `ca.pem`, `tls.key` (0600) and `tls.pem` into its TLS directory.
//!
//! The URL may be the comma-separated list of a highly available cluster: the CA
//! is learnt from the first coordinator that answers (every one presents the
//! cluster's CA, checked against the pin), and `Enroll` follows a standby's
//! `NOT_LEADER` to the leader ([`baton_proto::failover`]; it is sent again only when
//! it certainly was not done, as the token is burnt by the first that is).

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use baton_proto::coordinator_service_client::CoordinatorServiceClient;
use baton_proto::failover::{DialFuture, Dialer, Follow, Policy};
use baton_proto::{EnrollRequest, tls};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::error::AgentError;
use crate::tls::{COORDINATOR_NAME, write_file};

/// A new key pair and a signing request for agent `name`: (csr_pem, key_pem).
pub fn new_csr(name: &str) -> Result<(String, String), AgentError> {
    let fail = |e: rcgen::Error| AgentError::ConfigInvalid(format!("making a key pair: {e}"));
    let params =
        rcgen::CertificateParams::new(vec![format!("{name}.agent.baton")]).map_err(fail)?;
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok((csr.pem().map_err(fail)?, key.serialize_pem()))
}

/// The parts of an enrolment token: (what the coordinator checks, the CA pin).
fn split_token(token: &str) -> Result<(&str, &str), AgentError> {
    let bad = || {
        AgentError::ConfigInvalid(
            "the enrolment token is malformed: expected btn_enr_<id>_<secret>_<ca pin>, as printed by `baton token create --agent`".into(),
        )
    };
    let token = token.trim();
    if !token.starts_with("btn_enr_") {
        return Err(bad());
    }
    let (secret, pin) = token.rsplit_once('_').ok_or_else(bad)?;
    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((secret, pin))
}

/// `host:port` of an `https://host:port` URL.
fn authority(url: &str) -> Result<&str, AgentError> {
    url.strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| a.contains(':'))
        .ok_or_else(|| {
            AgentError::ConfigInvalid(format!(
                "enrolment needs an https://host:port coordinator URL, not {url:?}"
            ))
        })
}

/// Enrols agent `name` with `token` at the coordinator `url` (or list of URLs),
/// writing its identity into `dir`.
pub async fn enroll(url: &str, token: &str, name: &str, dir: &Path) -> Result<(), AgentError> {
    let (secret, pin) = split_token(token)?;
    let urls = crate::transport::coordinator_urls(url)?;
    for u in &urls {
        authority(u)?;
    }
    let mut ca = None;
    let mut failures = Vec::new();
    for u in &urls {
        match tls::fetch_pinned_ca(authority(u)?, COORDINATOR_NAME, pin).await {
            Ok(pem) => {
                ca = Some(pem);
                break;
            }
            Err(e) => failures.push(format!("{u}: {e}")),
        }
    }
    let ca = ca.ok_or_else(|| {
        AgentError::CoordinatorUnreachable(format!("enrolment: {}", failures.join("; ")))
    })?;
    let (csr_pem, key_pem) = new_csr(name)?;
    let ca_pem = ca.clone();
    let dial: Dialer = Arc::new(move |u: String| {
        let ca = ca_pem.clone();
        Box::pin(async move {
            authority(&u)?;
            let endpoint = Endpoint::from_shared(u.clone())?
                .connect_timeout(Duration::from_secs(5))
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&ca))
                        .domain_name(COORDINATOR_NAME),
                )?;
            let channel = endpoint.connect().await.map_err(|e| {
                AgentError::CoordinatorUnreachable(format!("connecting to {u}: {e}"))
            })?;
            Ok(channel)
        }) as DialFuture
    });
    let follow = Follow::new(urls, dial, Policy::default())
        .map_err(AgentError::ConfigInvalid)?
        .on_event(|e| tracing::info!(step = %e, "enrolment: looking for the leading coordinator"));
    if let Err(errors) = follow.connect().await {
        let all: Vec<String> = errors.iter().map(|(u, e)| format!("{u}: {e}")).collect();
        return Err(AgentError::CoordinatorUnreachable(format!(
            "enrolment: {}",
            all.join("; ")
        )));
    }
    let resp = CoordinatorServiceClient::new(follow)
        .enroll(EnrollRequest {
            token: secret.to_string(),
            name: name.to_string(),
            csr_pem,
        })
        .await
        .map_err(|s| {
            let code = s
                .metadata()
                .get("baton-code")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            AgentError::EnrolmentRefused(format!("{code}: {}", s.message()))
        })?
        .into_inner();
    write_file(&dir.join("ca.pem"), &ca, false)?;
    write_file(&dir.join("tls.key"), &key_pem, true)?;
    write_file(&dir.join("tls.pem"), &resp.cert_pem, false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_and_bad_ones_are_refused() {
        let pin = "ab".repeat(32);
        let t = format!("btn_enr_0123456789ab_{}_{pin}", "c".repeat(64));
        let (secret, p) = split_token(&t).unwrap();
        assert_eq!(p, pin);
        assert!(secret.starts_with("btn_enr_") && !secret.contains(&pin));
        for bad in [
            "",
            "btn_api_x_y",
            "btn_enr_x_y_zz",
            &t.replace("btn_enr_", "x"),
        ] {
            assert_eq!(
                split_token(bad).unwrap_err().code(),
                "AGENT_CONFIG_INVALID",
                "{bad}"
            );
        }
    }

    #[test]
    fn urls_must_be_https() {
        assert_eq!(
            authority("https://127.0.0.1:7400/").unwrap(),
            "127.0.0.1:7400"
        );
        assert!(authority("http://127.0.0.1:7400").is_err());
        assert!(authority("https://host").is_err());
    }

    #[test]
    fn csr_and_key_are_pem_and_the_key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (csr, key) = new_csr("a1").unwrap();
        assert!(csr.contains("CERTIFICATE REQUEST"));
        assert!(key.contains("PRIVATE KEY"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls/tls.key");
        write_file(&p, &key, true).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
