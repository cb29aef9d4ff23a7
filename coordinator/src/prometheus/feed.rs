//! A leadership term's part of the metrics: for as long as the term runs, its
//! scheduler's snapshot (`Coordinator::metrics`: counters, latency histograms,
//! children by phase, agents by state) and the store's size are published
//! into the process-wide [`Registry`] every [`EVERY`]. One message a second
//! to the scheduler task, whatever the number of scrapes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use crate::api::Coordinator;
use crate::auth::audit::Audit;
use crate::store::Store;

/// How often a term publishes (a scrape sees counts at most this old).
pub const EVERY: Duration = Duration::from_secs(1);

/// Starts publishing the term of `coordinator` until `stop` is cancelled;
/// the term's counts are then carried by the registry.
pub fn spawn(
    registry: Arc<Registry>,
    coordinator: Coordinator,
    store: Arc<dyn Store>,
    audit: Arc<Audit>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let term = registry.term_begins(audit);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            // An error means the scheduler stopped: the term is ending.
            if let Ok(snapshot) = coordinator.metrics().await {
                registry.publish(term, snapshot);
            }
            registry.set_store_size(store.size_bytes());
        }
        registry.term_ends(term);
    })
}
