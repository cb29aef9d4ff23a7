//! Certificate renewal without a restart.
//!
//! Agent certificates are short-lived (a day by default). At two thirds of its
//! certificate's lifetime the agent makes a new key pair and asks the
//! coordinator to sign it (`CoordinatorService.Renew`, authenticated by the
//! current certificate), then swaps it in ([`LiveTls::replace`]): the next
//! handshake of its server and its next connection to the coordinator use the
//! new one, and nothing running is disturbed. A failed attempt is retried with
//! backoff until the certificate expires; a revoked certificate is refused.

use std::sync::Arc;
use std::time::Duration;

use baton_proto::RenewRequest;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::AgentError;
use crate::tls::LiveTls;
use crate::transport;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Seconds from `now` until renewal is due (0 if due), for validity `(nb, na)`.
pub fn due_in(validity: (i64, i64), now: i64) -> u64 {
    let (nb, na) = validity;
    let due = nb + (na - nb) * 2 / 3;
    u64::try_from(due - now).unwrap_or(0)
}

/// One renewal.
pub async fn renew_once(live: &LiveTls, url: &str, name: &str) -> Result<(), AgentError> {
    let (csr_pem, key_pem) = crate::enrol::new_csr(name)?;
    let current = live.current();
    let mut client = transport::connect_coordinator(url, Some(&current)).await?;
    let resp = client
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(|s| AgentError::CoordinatorUnreachable(format!("Renew: {}", s.message())))?
        .into_inner();
    live.replace(resp.cert_pem, key_pem)
}

/// Renews whenever due, until `stop`.
pub async fn run(live: Arc<LiveTls>, url: String, name: String, stop: CancellationToken) {
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = match live.current().validity() {
            Some(v) => Duration::from_secs(due_in(v, unix_now())),
            None => {
                warn!("cannot read the certificate's validity; not renewing it");
                return;
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match renew_once(&live, &url, &name).await {
            Ok(()) => {
                retry = Duration::from_secs(1);
                let until = live.current().validity().map_or(0, |v| v.1);
                info!(not_after_unix_s = until, "certificate renewed");
            }
            Err(e) => {
                warn!(error = %e, retry_s = retry.as_secs(), "certificate renewal failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds() {
        assert_eq!(due_in((0, 300), 0), 200);
        assert_eq!(due_in((0, 300), 150), 50);
        assert_eq!(due_in((0, 300), 250), 0);
    }
}
