//! Registration and the completion stream (`ReportEvents`).
//!
//! Loop until stopped: connect → `Register` (raises the agent's epoch, acknowledges the
//! outbox up to the coordinator's `acked_seq`) → open `ReportEvents` and send `Hello`
//! first, then every unacknowledged outbox event in sequence order, then new events as
//! they become durable, and a `Heartbeat` every heartbeat interval. Cumulative
//! `EventAck`s from the coordinator delete events from the outbox.
//!
//! Any failure (connect, register, stream end, send) ends the session: WARN once per
//! change of state, back off (250 ms doubling to 5 s, with jitter), register again and
//! resend from the coordinator's `acked_seq`. The agent never exits because the
//! coordinator is down: jobs keep running and their events pile up in the outbox.
//!
//! With several coordinators (a comma-separated `coordinator_url`), every session
//! connects over a [`baton_proto::failover::Follow`] channel: `Register` follows a
//! standby's `NOT_LEADER` to the leader (or the next URL), a coordinator that is down
//! is skipped, and the stream goes where `Register` was answered. A failover thus
//! looks like a dropped stream: the jobs keep running, the next session registers
//! with the new leader and resends every unacknowledged event from its `acked_seq`.
//! The highest epoch seen is never lowered by a new coordinator
//! ([`crate::admission`]), and survives a restart ([`crate::epoch_file`]).
//!
//! It stops only when the coordinator says it will never take it: the agent was
//! revoked (`AGENT_REVOKED`, or its certificate refused as revoked), its
//! registration was refused (`AGENT_LABEL_NOT_ALLOWED`, `AGENT_NAME_TAKEN`: it
//! becomes `AGENT_REGISTRATION_REFUSED`) or plaintext would leave the machine
//! (`PLAINTEXT_NOT_LOOPBACK`); [`Reporter::run`] then
//! returns that error and the agent shuts down.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::{AgentEvent, EventAck, Heartbeat, Hello, RegisterRequest, agent_event::Body};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::AgentError;
use crate::model::Epoch;
use crate::outbox::{Outbox, now_unix_ms};
use crate::supervisor::Supervisor;
use crate::transport;

/// Capacity of the request stream towards the coordinator.
const STREAM_CAPACITY: usize = 1_024;
/// Most events taken from the outbox mirror at a time.
const SEND_BATCH_MAX: usize = 1_024;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(5);
const HEARTBEAT_MIN: Duration = Duration::from_millis(100);
const HEARTBEAT_MAX: Duration = Duration::from_secs(60);

/// Who this agent is, as told to the coordinator.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub coordinator_url: String,
    pub advertise_addr: String,
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    pub weight: u32,
    /// Random per process start.
    pub boot_id: String,
    /// Mutual TLS material; `None` only with `--insecure`.
    pub tls: Option<Arc<crate::tls::LiveTls>>,
}

pub struct Reporter {
    identity: Identity,
    outbox: Arc<Outbox>,
    supervisor: Arc<Supervisor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Unknown,
    Up,
    Down,
}

impl Reporter {
    pub fn new(identity: Identity, outbox: Arc<Outbox>, supervisor: Arc<Supervisor>) -> Reporter {
        Reporter {
            identity,
            outbox,
            supervisor,
        }
    }

    /// Runs sessions until `stop` is cancelled, or until the coordinator says
    /// this agent was revoked (or plaintext would leave the machine): then it
    /// returns that error, which stops the agent.
    pub async fn run(self, stop: CancellationToken) -> Result<(), AgentError> {
        let mut backoff = Backoff::new();
        let mut link = Link::Unknown;
        while !stop.is_cancelled() {
            let result = tokio::select! {
                r = self.session(&stop, &mut backoff, &mut link) => r,
                () = stop.cancelled() => return Ok(()),
            };
            let Err(e) = result else { return Ok(()) };
            if e.fatal() {
                error!(code = e.code(), error = %e, "the coordinator will not take this agent; stopping");
                return Err(e);
            }
            if link != Link::Down {
                warn!(code = e.code(), error = %e, "coordinator unreachable; will retry");
                link = Link::Down;
            } else {
                debug!(code = e.code(), error = %e, "coordinator still unreachable");
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
        Ok(())
    }

    /// One registration and stream; `Ok` only when stopped.
    async fn session(
        &self,
        stop: &CancellationToken,
        backoff: &mut Backoff,
        link: &mut Link,
    ) -> Result<(), AgentError> {
        let id = &self.identity;
        let tls = id.tls.as_ref().map(|t| t.current());
        // One URL, or the list of a highly available cluster: `Register` finds the
        // leader (following a standby's hint) and the stream then goes to it.
        let follow = transport::connect_follow(&id.coordinator_url, tls.as_ref()).await?;
        let mut client =
            baton_proto::coordinator_service_client::CoordinatorServiceClient::new(follow.clone());
        let reg = client
            .register(RegisterRequest {
                name: id.name.clone(),
                address: id.advertise_addr.clone(),
                labels: id.labels.clone().into_iter().collect(),
                slots: id.slots,
                version: env!("CARGO_PKG_VERSION").to_string(),
                boot_id: id.boot_id.clone(),
                outbox_id: self.outbox.outbox_id().to_string(),
                weight: id.weight,
            })
            .await;
        let reg = match reg {
            Ok(r) => r.into_inner(),
            Err(s) => {
                return Err(self
                    .call_error("register", &s, &follow.current(), tls.as_ref())
                    .await);
            }
        };
        self.supervisor.observe_epoch(Epoch(reg.coordinator_epoch));
        self.outbox.ack(reg.acked_seq).await?;
        info!(
            agent_id = %reg.agent_id,
            epoch = reg.coordinator_epoch,
            coordinator = %follow.current(),
            "registered with coordinator"
        );
        *link = Link::Up;
        backoff.reset();
        backoff.fit_lease(Duration::from_millis(reg.lease_ttl_ms));

        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        let hello = event(Body::Hello(Hello {
            agent_id: reg.agent_id.clone(),
            boot_id: id.boot_id.clone(),
        }));
        tx.send(hello).await.map_err(|_| stream_closed())?;
        let acks = match client.report_events(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                return Err(self
                    .call_error("report_events", &s, &follow.current(), tls.as_ref())
                    .await);
            }
        };
        let mut ack_task = AbortOnDrop(tokio::spawn(read_acks(acks, self.outbox.clone())));

        let mut sent = reg.acked_seq;
        let mut durable = self.outbox.subscribe();
        let mut heartbeat = tokio::time::interval(heartbeat_interval(reg.heartbeat_interval_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            durable.borrow_and_update();
            loop {
                let batch = self.outbox.unacked_batch(sent, SEND_BATCH_MAX);
                let Some(last) = batch.last().map(|e| e.seq) else {
                    break;
                };
                for ev in batch {
                    tx.send(ev).await.map_err(|_| stream_closed())?;
                }
                sent = last;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                changed = durable.changed() => {
                    changed.map_err(|_| AgentError::Store("outbox closed".into()))?;
                }
                _ = heartbeat.tick() => {
                    let load = self.supervisor.load();
                    let hb = event(Body::Heartbeat(Heartbeat {
                        slots: load.slots,
                        running: load.running,
                        load1: load1(),
                        draining: load.draining,
                    }));
                    tx.send(hb).await.map_err(|_| stream_closed())?;
                }
                ended = &mut ack_task.0 => {
                    return Err(match ended {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => AgentError::CoordinatorUnreachable("event stream ended".into()),
                        Err(e) => AgentError::CoordinatorUnreachable(format!("ack reader failed: {e}")),
                    });
                }
            }
        }
    }
}

/// Reads cumulative acknowledgements and trims the outbox; returns when the stream ends.
async fn read_acks(
    mut acks: tonic::Streaming<EventAck>,
    outbox: Arc<Outbox>,
) -> Result<(), AgentError> {
    loop {
        match acks.message().await {
            Ok(Some(ack)) => outbox.ack(ack.acked_seq).await?,
            Ok(None) => return Ok(()),
            Err(s) => return Err(unreachable("event stream", &s)),
        }
    }
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn event(body: Body) -> AgentEvent {
    AgentEvent {
        seq: 0,
        at_unix_ms: now_unix_ms(),
        body: Some(body),
    }
}

impl Reporter {
    /// What a failed call means: revoked (stop), a TLS failure (say which
    /// certificate), or the coordinator is unreachable (retry).
    async fn call_error(
        &self,
        what: &str,
        s: &tonic::Status,
        url: &str,
        tls: Option<&crate::tls::TlsPem>,
    ) -> AgentError {
        if let Some(e) = refusal(s) {
            return e;
        }
        if baton_proto::tls::handshake_failure(s).is_some() {
            return transport::connect_error(url, tls, s);
        }
        let broke = s.metadata().get(crate::error::ERROR_CODE_KEY).is_none()
            && matches!(
                s.code(),
                tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::Internal
                    | tonic::Code::Unavailable
            );
        if broke
            && let Some(tls) = tls
            && let Some(e) = transport::probe_refusal(url, tls).await
        {
            return e;
        }
        unreachable(what, s)
    }
}

/// A refusal that no retry will change, told by the coordinator's error code.
fn refusal(s: &tonic::Status) -> Option<AgentError> {
    let code = s
        .metadata()
        .get(crate::error::ERROR_CODE_KEY)?
        .to_str()
        .ok()?;
    match code {
        "AGENT_REVOKED" | "CERT_REVOKED" => Some(AgentError::Revoked(s.message().to_string())),
        "PLAINTEXT_NOT_LOOPBACK" => Some(AgentError::PlaintextNotLoopback(s.message().to_string())),
        "AGENT_LABEL_NOT_ALLOWED" | "AGENT_NAME_TAKEN" => Some(AgentError::RegistrationRefused(
            format!("{code}: {}", s.message()),
        )),
        _ => None,
    }
}

fn unreachable(what: &str, s: &tonic::Status) -> AgentError {
    AgentError::CoordinatorUnreachable(format!("{what}: {:?}: {}", s.code(), s.message()))
}

fn stream_closed() -> AgentError {
    AgentError::CoordinatorUnreachable("event stream closed".into())
}

fn heartbeat_interval(ms: u64) -> Duration {
    if ms == 0 {
        return HEARTBEAT_DEFAULT;
    }
    Duration::from_millis(ms).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX)
}

/// One-minute load average, 0 if unreadable.
fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// 250 ms doubling to 5 s; each delay is jittered to 50–100 % of its nominal value.
struct Backoff {
    next: Duration,
    /// Ceiling: BACKOFF_MAX, lowered to a third of the coordinator's lease once
    /// known, so that after a coordinator restart the agent reconnects within
    /// the grace period and keeps its jobs.
    max: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_MIN,
            max: BACKOFF_MAX,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn fit_lease(&mut self, lease_ttl: Duration) {
        self.max = (lease_ttl / 3).clamp(BACKOFF_MIN, BACKOFF_MAX);
    }

    fn next_delay(&mut self) -> Duration {
        let nominal = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        let r = RandomState::new().hash_one(now_unix_ms()) % 1_000;
        nominal / 2 + nominal * (r as u32) / 2_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_fits_within_the_lease() {
        let mut b = Backoff::new();
        b.fit_lease(Duration::from_millis(2_000));
        let worst = (0..12).map(|_| b.next_delay()).max().unwrap();
        assert!(worst <= Duration::from_millis(667), "{worst:?}");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= BACKOFF_MIN / 2 && delays[0] <= BACKOFF_MIN);
        assert!(delays[7] >= BACKOFF_MAX / 2 && delays[7] <= BACKOFF_MAX);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn a_revocation_is_fatal_and_an_outage_is_not() {
        let with_code = |code: &str| {
            let mut s = tonic::Status::permission_denied("agent 'a1' was revoked");
            s.metadata_mut()
                .insert(crate::error::ERROR_CODE_KEY, code.parse().unwrap());
            s
        };
        for code in ["AGENT_REVOKED", "CERT_REVOKED"] {
            let e = refusal(&with_code(code)).unwrap();
            assert_eq!(e.code(), "AGENT_REVOKED");
            assert!(e.fatal() && e.to_string().contains("revoked"), "{e}");
        }
        assert!(
            refusal(&with_code("PLAINTEXT_NOT_LOOPBACK"))
                .unwrap()
                .fatal()
        );
        for code in ["AGENT_LABEL_NOT_ALLOWED", "AGENT_NAME_TAKEN"] {
            let e = refusal(&with_code(code)).unwrap();
            assert_eq!(e.code(), "AGENT_REGISTRATION_REFUSED");
            assert!(e.fatal() && !e.retryable(), "{e}");
            assert!(
                e.to_string().contains("refused this agent's registration"),
                "{e}"
            );
            assert!(e.to_string().contains(code), "{e}");
        }
        assert!(refusal(&with_code("PERMISSION_DENIED")).is_none());
        assert!(refusal(&tonic::Status::unavailable("down")).is_none());
        assert!(!unreachable("register", &tonic::Status::unavailable("down")).fatal());
    }

    #[test]
    fn heartbeat_interval_is_bounded() {
        assert_eq!(heartbeat_interval(0), HEARTBEAT_DEFAULT);
        assert_eq!(heartbeat_interval(1), HEARTBEAT_MIN);
        assert_eq!(heartbeat_interval(1_000), Duration::from_secs(1));
        assert!(load1() >= 0.0);
    }
}
