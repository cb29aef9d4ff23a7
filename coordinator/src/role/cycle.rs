//! The cycle of a coordinator's roles, for the process's lifetime: campaign;
//! on a term, build the leader's state ([`super::leader::lead`]) and switch
//! the gRPC server to it; when the term ends — `Term::lost` cancelled (lease
//! gone, a commit fenced), the scheduler stopping on a store failure that is
//! not fatal or on an agent's `STALE_EPOCH` — stop dispatching at once, tear
//! the term down (its scheduler has ended before the next campaign), answer
//! as a standby, and campaign again. The process never exits for losing a
//! term: only for a shutdown or a fatal error (a store backend failure, a
//! corrupt record, a sealing key that does not fit the store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::leader::{Leader, Process, lead};
use crate::api::Coordinator;
use crate::error::CoordinatorError;
use crate::grpc::role_switch::RoleSwitch;
use crate::leadership::{Leadership, Term};
use crate::store::StoreError;

/// First wait before campaigning again after a short term or a failed
/// campaign; doubled for each one in a row, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A term that lasted this long resets the backoff.
const STEADY: Duration = Duration::from_secs(30);
/// How often a standby refreshes the leader's URL it tells callers.
const HINT_EVERY: Duration = Duration::from_millis(500);

/// A coordinator's roles: what it needs to campaign and to lead.
pub(crate) struct Roles {
    pub process: Process,
    pub leadership: Arc<dyn Leadership>,
    /// The URL this coordinator advertises when it leads.
    pub advertise: String,
    pub switch: RoleSwitch,
    /// The current term's API (`None` while a standby).
    pub current: watch::Sender<Option<Coordinator>>,
}

/// Why a term ended.
enum Ended {
    Shutdown,
    /// The term is over; campaign again.
    Lost(String),
    /// The process must stop.
    Fatal(CoordinatorError),
}

/// Errors after which a coordinator stands by and campaigns again, rather
/// than exit: the store is unreachable for now, or another leads.
fn recoverable(e: &CoordinatorError) -> bool {
    matches!(
        e,
        CoordinatorError::StoreUnavailable(_)
            | CoordinatorError::StoreFenced(_)
            | CoordinatorError::StoreConflict(_)
            | CoordinatorError::LeadershipLost(_)
            // A record too large for the store is a bug to report, but one
            // that the next term may not meet: never a reason for the whole
            // cluster's coordinators to exit one after the other.
            | CoordinatorError::StoreBatchTooLarge(_)
    )
}

/// What the scheduler's loop ending on its own means for the term.
fn scheduler_ended(r: Result<Result<(), CoordinatorError>, tokio::task::JoinError>) -> Ended {
    match r {
        Ok(Ok(())) => Ended::Lost("the scheduler stopped".into()),
        Ok(Err(e)) if recoverable(&e) => Ended::Lost(e.to_string()),
        Ok(Err(e)) => Ended::Fatal(e),
        Err(e) => Ended::Fatal(CoordinatorError::Store(format!(
            "scheduler task failed: {e}"
        ))),
    }
}

/// Waits `d`, or less if `shutdown` comes first (then true).
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Keeps the standby's leader hint fresh (never this coordinator's own URL:
/// while it loads a term it is not serving yet).
async fn refresh_hint(
    leadership: Arc<dyn Leadership>,
    switch: RoleSwitch,
    advertise: String,
    stop: CancellationToken,
) {
    loop {
        if !switch.is_leading() {
            let hint = match leadership.leader().await {
                Ok(url) => url.filter(|u| *u != advertise),
                Err(_) => None,
            };
            switch.set_leader_hint(hint);
        }
        if pause(HINT_EVERY, &stop).await {
            return;
        }
    }
}

/// Runs the roles until `shutdown` (`Ok`) or a fatal error (`Err`).
pub(crate) async fn run(roles: Roles, shutdown: CancellationToken) -> Result<(), CoordinatorError> {
    let hints = shutdown.child_token();
    tokio::spawn(refresh_hint(
        roles.leadership.clone(),
        roles.switch.clone(),
        roles.advertise.clone(),
        hints.clone(),
    ));
    let r = cycle(&roles, &shutdown).await;
    hints.cancel();
    roles.switch.stand_by(None);
    roles.current.send_replace(None);
    r
}

async fn cycle(roles: &Roles, shutdown: &CancellationToken) -> Result<(), CoordinatorError> {
    let mut backoff = MIN_BACKOFF;
    loop {
        let campaign = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            t = roles.leadership.campaign(&roles.advertise) => t,
        };
        let term = match campaign {
            Ok(term) => term,
            Err(e @ StoreError::Backend(_)) => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, "campaign failed; trying again");
                if pause(backoff, shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let began = Instant::now();
        match lead_term(roles, &term, shutdown).await {
            Ended::Shutdown => {
                let _ = roles.leadership.resign(&term).await;
                return Ok(());
            }
            Ended::Fatal(e) => {
                error!(epoch = term.epoch, error = %e, "fatal error; the coordinator stops");
                let _ = roles.leadership.resign(&term).await;
                return Err(e);
            }
            Ended::Lost(why) => {
                warn!(epoch = term.epoch, %why, "leadership lost; this coordinator stands by and campaigns again");
                if let Err(e) = roles.leadership.resign(&term).await {
                    warn!(error = %e, "could not resign the term (it ends with its lease)");
                }
            }
        }
        backoff = if began.elapsed() >= STEADY {
            MIN_BACKOFF
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
        if pause(backoff, shutdown).await {
            return Ok(());
        }
    }
}

/// Leads for one term: builds the leader's state, serves it until the term
/// ends, and tears it down (its scheduler has ended when this returns).
async fn lead_term(roles: &Roles, term: &Term, shutdown: &CancellationToken) -> Ended {
    let built = tokio::select! {
        () = shutdown.cancelled() => return Ended::Shutdown,
        () = term.lost.cancelled() => return Ended::Lost("the term ended while loading".into()),
        l = lead(&roles.process, term) => l,
    };
    let Leader {
        coordinator,
        routes,
        mut scheduler,
        stop,
    } = match built {
        Ok(l) => l,
        Err(e) if recoverable(&e) => return Ended::Lost(e.to_string()),
        Err(e) => return Ended::Fatal(e),
    };
    roles.switch.lead(routes);
    roles.current.send_replace(Some(coordinator));
    info!(epoch = term.epoch, advertise = %roles.advertise, "leading");
    let (ended, finished) = tokio::select! {
        () = shutdown.cancelled() => (Ended::Shutdown, None),
        () = term.lost.cancelled() => (Ended::Lost("the term ended (lease lost or fenced)".into()), None),
        r = &mut scheduler => (scheduler_ended(r), Some(())),
    };
    // Stop dispatching at once, then answer as a standby.
    stop.cancel();
    roles.switch.stand_by(None);
    roles.current.send_replace(None);
    if finished.is_none() {
        match scheduler.await {
            Ok(Err(e)) if !recoverable(&e) && !matches!(ended, Ended::Shutdown) => {
                return Ended::Fatal(e);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "the scheduler task failed while stopping"),
        }
    }
    ended
}
