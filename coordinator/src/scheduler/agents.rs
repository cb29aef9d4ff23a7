//! What agents and operators tell the scheduler: registration, the completion
//! stream's events, heartbeats and leases, operator actions and listings. The
//! agents' state is the registry's (`registry.rs`); what becomes of their
//! children is decided by the children's state machine (`executions.rs`).

use std::time::Instant;

use tracing::{debug, info, warn};

use super::child::ChildState;
use super::model::{ChildRef, Effect};
use super::registry::AgentEntry;
use super::state::Scheduler;
use crate::clock::Now;
use crate::domain::{
    AgentReport, CancelSpec, DispatchId, JobStatus, RegisterAnswer, Registration, ReportBody,
};
use crate::error::CoordinatorError;
use crate::placement::AgentView;
use crate::records::{AdminState, AgentRecord, SeqRecord};

/// An agent's state as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Its certificate was revoked: it is refused from now on.
    Revoked,
    /// Silent past its lease.
    Lost,
    /// Draining (by an operator) and nothing runs there any more.
    Drained,
    /// Takes no new work; running work goes on.
    Draining,
    Cordoned,
    /// Not heard from since this coordinator started.
    Unknown,
    Quarantined,
    Ready,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Revoked => "revoked",
            AgentState::Lost => "lost",
            AgentState::Drained => "drained",
            AgentState::Draining => "draining",
            AgentState::Cordoned => "cordoned",
            AgentState::Unknown => "unknown",
            AgentState::Quarantined => "quarantined",
            AgentState::Ready => "ready",
        }
    }
}

/// An agent as listed (`baton agents`).
#[derive(Debug, Clone)]
pub struct AgentSummary {
    pub rec: AgentRecord,
    pub state: AgentState,
    /// Children dispatched to, accepted by or running on it.
    pub running: u32,
    pub load1: f64,
    pub last_heartbeat_unix_ms: u64,
    /// Why it is quarantined and until when (unix ms); `None` when it is not.
    pub quarantine: Option<(String, u64)>,
}

/// What an operator does to an agent (`baton agents cordon|drain|uncordon|revoke|rm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    Cordon,
    Drain,
    Uncordon,
    /// Revokes its certificate ([`Scheduler::revoke`]).
    Revoke,
    /// Forgets a lost agent ([`Scheduler::remove_agent`]).
    Remove,
}

impl std::str::FromStr for AdminAction {
    type Err = CoordinatorError;

    fn from_str(action: &str) -> Result<AdminAction, CoordinatorError> {
        Ok(match action {
            "cordon" => AdminAction::Cordon,
            "drain" => AdminAction::Drain,
            "uncordon" => AdminAction::Uncordon,
            "revoke" => AdminAction::Revoke,
            "remove" => AdminAction::Remove,
            other => {
                return Err(CoordinatorError::InvalidRequest(format!(
                    "action '{other}' is not one of cordon, drain, uncordon, revoke, remove"
                )));
            }
        })
    }
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminAction::Cordon => "cordon",
            AdminAction::Drain => "drain",
            AdminAction::Uncordon => "uncordon",
            AdminAction::Revoke => "revoke",
            AdminAction::Remove => "remove",
        }
    }
}

impl Scheduler {
    /// Registers (or re-registers) an agent. A new `boot_id` means the agent
    /// restarted: whatever it had is gone, so its children are lost.
    pub fn register(
        &mut self,
        reg: Registration,
        now: Now,
    ) -> Result<RegisterAnswer, CoordinatorError> {
        let now = self.at(now);
        self.refuse_revoked(&reg.name, &reg.cert_fingerprint)?;
        let rec = AgentRecord {
            name: reg.name.clone(),
            address: reg.address.clone(),
            labels: reg.labels.clone(),
            slots: reg.slots,
            version: reg.version.clone(),
            boot_id: reg.boot_id.clone(),
            // An operator's cordon or drain outlives the agent's restarts.
            admin: self
                .registry
                .get(&reg.name)
                .map(|a| a.rec.admin)
                .unwrap_or_default(),
            cert_fingerprint: reg.cert_fingerprint.clone(),
            weight: reg.weight,
        };
        let restarted: Vec<ChildRef> = match self.registry.get_mut(&reg.name) {
            Some(a) if a.rec.boot_id != reg.boot_id => {
                info!(agent = %reg.name, "agent restarted; its unfinished children are lost");
                // Its restart ended what it ran before: nothing to stop.
                a.take_superseded();
                a.drop_children()
            }
            _ => Vec::new(),
        };
        let entry = self.registry.get_or_insert(&reg.name, || {
            AgentEntry::new(rec.clone(), SeqRecord::fresh(&reg.outbox_id), now)
        });
        if entry.rec != rec || entry.version.is_none() {
            entry.rec = rec;
            self.journal.agent(&reg.name);
        }
        if entry.seq.outbox_id != reg.outbox_id || entry.seq_version.is_none() {
            entry.seq = SeqRecord::fresh(&reg.outbox_id);
            self.journal.seq(&reg.name);
        }
        entry.seen = true;
        entry.lost = false;
        entry.last_seen = now;
        entry.draining = false;
        self.dispatcher.agent_not_full(&reg.name);
        let acked_seq = entry.seq.applied_seq;
        for effect in stop_superseded(&reg.name, entry) {
            self.journal.effect(effect);
        }
        for cref in restarted {
            self.child_lost(cref, &reg.name, "agent restarted");
        }
        self.dispatcher.capacity_changed();
        info!(agent = %reg.name, address = %reg.address, slots = reg.slots, "agent registered");
        Ok(RegisterAnswer {
            agent_id: reg.name,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            lease_ttl_ms: self.config.lease_ttl.as_millis() as u64,
            coordinator_epoch: self.epoch,
            acked_seq,
        })
    }

    /// Refuses a certificate an operator revoked: the in-memory mirror of the
    /// `v/` records [`crate::auth::identity::check_certificate`] reads (same code).
    fn refuse_revoked(&self, agent: &str, fingerprint: &str) -> Result<(), CoordinatorError> {
        if self.registry.fingerprint_revoked(fingerprint) {
            warn!(agent, "refused: the certificate was revoked");
            return Err(crate::auth::identity::cert_revoked_error(agent));
        }
        Ok(())
    }

    /// Makes an agent's current certificate useless at once: its registration
    /// and streams are refused from now on (even after a restart), and its
    /// children are treated as lost.
    pub fn revoke(&mut self, name: &str, now: Now) -> Result<(), CoordinatorError> {
        self.at(now);
        let a = self
            .registry
            .get_mut(name)
            .ok_or_else(|| CoordinatorError::AgentNotFound(name.to_string()))?;
        let fp = a.rec.cert_fingerprint.clone();
        if fp.is_empty() {
            return Err(CoordinatorError::InvalidRequest(format!(
                "agent '{name}' registered without TLS (--insecure): there is no certificate to revoke"
            )));
        }
        a.lost = true;
        let active = a.drop_children();
        if self.registry.revoke_fingerprint(fp.clone(), name) {
            self.journal.revoked(fp);
            info!(agent = name, "agent certificate revoked");
        }
        self.journal.effect(Effect::ResetStream {
            agent: name.to_string(),
        });
        for cref in active {
            self.child_lost(cref, name, "agent certificate revoked");
        }
        Ok(())
    }

    /// Checks the Hello that opens a completion stream.
    pub fn open_stream(
        &mut self,
        agent: &str,
        boot_id: &str,
        fingerprint: &str,
        now: Now,
    ) -> Result<(), CoordinatorError> {
        let now = self.at(now);
        self.refuse_revoked(agent, fingerprint)?;
        match self.registry.get_mut(agent) {
            Some(a) if a.rec.boot_id == boot_id => {
                a.last_seen = now;
                a.seen = true;
                Ok(())
            }
            Some(_) => Err(CoordinatorError::InvalidRequest(format!(
                "agent '{agent}' opened a stream for another boot; register again"
            ))),
            None => Err(CoordinatorError::AgentNotRegistered(agent.to_string())),
        }
    }

    /// One event from an agent's completion stream.
    pub fn agent_event(&mut self, agent: &str, ev: AgentReport, now: Now) {
        let now = self.at(now);
        let Some(entry) = self.registry.get(agent) else {
            warn!(agent, "event from an unregistered agent ignored");
            return;
        };
        if self.registry.is_revoked(entry) {
            return; // its stream was cut; anything still in flight is ignored
        }
        let Some(entry) = self.registry.get_mut(agent) else {
            return;
        };
        entry.last_seen = now;
        if entry.lost {
            info!(agent = %agent, "lost agent is back");
            entry.lost = false;
            for effect in stop_superseded(agent, entry) {
                self.journal.effect(effect);
            }
        }
        let Some(body) = ev.body else { return };
        match body {
            ReportBody::Hello(_) => {}
            ReportBody::Heartbeat(hb) => {
                // A load that is not a finite non-negative number (NaN from a
                // broken or hostile agent) counts as unknown, shown as 0.
                entry.load1 = if hb.load1.is_finite() && hb.load1 >= 0.0 {
                    hb.load1
                } else {
                    0.0
                };
                entry.running_reported = hb.running;
                entry.draining = hb.draining;
                entry.last_heartbeat_unix_ms = ev.at_unix_ms;
                entry.seen = true;
                if hb.running < hb.slots && self.dispatcher.agent_not_full(agent) {
                    self.dispatcher.capacity_changed();
                }
            }
            durable => {
                let applied = entry.seq.applied_seq;
                if ev.seq <= applied {
                    self.stats.duplicate_events += 1;
                    self.journal.ack(agent, applied);
                    return;
                }
                if ev.seq != applied + 1 {
                    warn!(
                        agent,
                        seq = ev.seq,
                        applied,
                        "gap in event sequence; asking the agent to resend"
                    );
                    self.journal.effect(Effect::ResetStream {
                        agent: agent.to_string(),
                    });
                    return;
                }
                entry.seq.applied_seq = ev.seq;
                self.journal.seq(agent);
                self.journal.ack(agent, ev.seq);
                match durable {
                    ReportBody::Started(s) => self.child_started(agent, s, ev.at_unix_ms),
                    ReportBody::Finished(f) => self.child_finished(agent, f, ev.at_unix_ms, now),
                    ReportBody::Progress(p) => {
                        debug!(agent, dispatch = ?p.dispatch_id, "progress")
                    }
                    ReportBody::Hello(_) | ReportBody::Heartbeat(_) => {}
                }
            }
        }
    }

    /// Lease expiry and dispatch re-sends. Call a few times per second.
    pub fn tick(&mut self, now: Now) {
        let now = self.at(now);
        let ttl = self.config.lease_ttl;
        for (name, active) in self.registry.expire(now, ttl) {
            self.stats.agents_lost += 1;
            warn!(agent = %name, children = active.len(), ttl_ms = ttl.as_millis() as u64, "agent lost: no heartbeat within the lease");
            let given_up: Vec<CancelSpec> = active
                .iter()
                .filter_map(|c| self.attempt_on(*c, name.as_str()))
                .map(|dispatch_id| CancelSpec {
                    dispatch_id,
                    reason: "this attempt was given up when the agent was lost".into(),
                })
                .collect();
            if let Some(entry) = self.registry.get_mut(name.as_str()) {
                entry.note_superseded(given_up);
            }
            for cref in active {
                self.child_lost(cref, name.as_str(), "agent lost (lease expired)");
            }
        }
        let due = self.timers.take_due(now);
        for cref in due.resend {
            self.resend_dispatch(cref, now);
        }
        for cref in due.retry {
            self.retry_due(cref);
        }
        self.end_quarantines(now);
    }

    /// Placement's view of the fleet; in-flight counts are in slots.
    pub(crate) fn agent_views(&self, now: Instant) -> Vec<AgentView> {
        self.registry
            .entries()
            .map(|a| {
                let in_flight: u64 = a
                    .held()
                    .map(|c| {
                        self.execs
                            .get(c.exec)
                            .map_or(1, |e| u64::from(e.slots_of(c.task as usize)))
                    })
                    .sum();
                let not_ready = if a.lost {
                    "lost".to_string()
                } else if !a.seen {
                    "not heard from since the coordinator started".to_string()
                } else if a.draining || a.rec.admin == AdminState::Draining {
                    "draining".to_string()
                } else if a.rec.admin == AdminState::Cordoned {
                    "cordoned".to_string()
                } else if a.quarantine.active(now) {
                    format!(
                        "quarantined: {}",
                        a.quarantine.reason().map_or("", |(r, _)| r)
                    )
                } else if self.dispatcher.is_full(&a.rec.name, now) {
                    "answered at capacity".to_string()
                } else {
                    String::new()
                };
                AgentView {
                    name: a.rec.name.clone(),
                    slots: a.rec.slots,
                    in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
                    load1: a.load1,
                    ready: not_ready.is_empty(),
                    not_ready,
                    labels: a.rec.labels.clone(),
                    weight: a.rec.weight.max(1),
                }
            })
            .collect()
    }

    /// Agents for listings.
    pub fn agent_list(&self) -> Vec<AgentSummary> {
        self.registry
            .entries()
            .map(|a| {
                let state = if self.registry.is_revoked(a) {
                    AgentState::Revoked
                } else if a.lost {
                    AgentState::Lost
                } else if a.rec.admin == AdminState::Draining && a.held_count() == 0 {
                    AgentState::Drained
                } else if a.draining || a.rec.admin == AdminState::Draining {
                    AgentState::Draining
                } else if a.rec.admin == AdminState::Cordoned {
                    AgentState::Cordoned
                } else if !a.seen {
                    AgentState::Unknown
                } else if a.quarantine.reason().is_some() {
                    AgentState::Quarantined
                } else {
                    AgentState::Ready
                };
                AgentSummary {
                    rec: a.rec.clone(),
                    state,
                    running: a.held_count() as u32,
                    load1: a.load1,
                    last_heartbeat_unix_ms: a.last_heartbeat_unix_ms,
                    quarantine: a
                        .quarantine
                        .reason()
                        .map(|(r, until)| (r.to_string(), until)),
                }
            })
            .collect()
    }

    /// Refuses these certificates of agent `name` from now on too (those issued
    /// to it that it may not have registered with yet: a renewal in flight).
    pub fn revoke_certificates(&mut self, name: &str, fingerprints: Vec<String>) {
        for fp in fingerprints {
            if self.registry.revoke_fingerprint(fp.clone(), name) {
                self.journal.revoked(fp);
            }
        }
    }

    /// Forgets a lost agent (`agents rm`): its registration and stream state
    /// are deleted. Refused while it is alive or holds children. If the machine
    /// comes back, it registers as new.
    pub fn remove_agent(&mut self, name: &str) -> Result<(), CoordinatorError> {
        let a = self
            .registry
            .get(name)
            .ok_or_else(|| CoordinatorError::AgentNotFound(name.to_string()))?;
        let revoked = self.registry.is_revoked(a);
        if !(a.lost || !a.seen || revoked) {
            return Err(CoordinatorError::AgentAlive(name.to_string()));
        }
        if a.held_count() > 0 {
            return Err(CoordinatorError::AgentAlive(name.to_string()));
        }
        self.registry.remove(name);
        self.dispatcher.forget_agent(name);
        self.journal.agent_removed(name);
        self.dispatcher.capacity_changed();
        info!(agent = name, "agent removed by an operator");
        Ok(())
    }

    /// Does what an operator asked to an agent: sets its state (`cordon`,
    /// `drain`, `uncordon`), revokes its certificate or forgets it.
    pub fn set_admin(
        &mut self,
        name: &str,
        action: AdminAction,
        now: Now,
    ) -> Result<(), CoordinatorError> {
        let admin = match action {
            AdminAction::Revoke => return self.revoke(name, now),
            AdminAction::Remove => return self.remove_agent(name),
            AdminAction::Cordon => AdminState::Cordoned,
            AdminAction::Drain => AdminState::Draining,
            AdminAction::Uncordon => AdminState::Active,
        };
        let a = self
            .registry
            .get_mut(name)
            .ok_or_else(|| CoordinatorError::AgentNotFound(name.to_string()))?;
        if a.rec.admin != admin {
            a.rec.admin = admin;
            self.journal.agent(name);
            self.dispatcher.capacity_changed();
            info!(
                agent = name,
                action = action.as_str(),
                "agent state set by an operator"
            );
        }
        Ok(())
    }

    /// Restores an agent from the store after a restart. It counts as alive
    /// for one lease (the grace period to reconnect) but gets no new work
    /// until it is heard from.
    pub(crate) fn restore_agent(
        &mut self,
        rec: AgentRecord,
        version: u64,
        seq: Option<(SeqRecord, u64)>,
        now: Now,
    ) {
        let now = self.at(now);
        let (seq, seq_version) = match seq {
            Some((s, v)) => (s, Some(v)),
            None => (SeqRecord::fresh(""), None),
        };
        let mut entry = AgentEntry::new(rec, seq, now);
        entry.version = Some(version);
        entry.seq_version = seq_version;
        entry.seen = false;
        self.registry.insert(entry);
    }

    /// Whether `agent` may still be sent `cref`'s dispatch.
    pub(crate) fn dispatch_target(&self, cref: ChildRef) -> Option<(String, String)> {
        let e = self.execs.get(cref.exec)?;
        let c = &e.tasks[cref.task as usize].children[cref.child as usize];
        let ChildState::Dispatching { agent, .. } = c.state() else {
            return None;
        };
        let a = self.registry.get(agent.as_str())?;
        (!a.lost).then(|| (agent.to_string(), a.rec.address.clone()))
    }
}

impl SeqRecord {
    /// Dedup state of an outbox the coordinator has applied nothing from.
    fn fresh(outbox_id: &str) -> SeqRecord {
        SeqRecord {
            outbox_id: outbox_id.to_string(),
            applied_seq: 0,
        }
    }
}

impl Scheduler {
    /// Counts a child's end against (or for) the agent it ran on, and
    /// quarantines the agent when it fails children quickly — unless half
    /// of the live agents are quarantined already ([`super::quarantine`]).
    pub(crate) fn note_child_end(&mut self, agent: &str, status: JobStatus, now: Instant) {
        let cfg = self.config.quarantine;
        let unix_ms = self.unix_ms;
        if cfg.failures == 0 {
            return;
        }
        let live = self
            .registry
            .entries()
            .filter(|a| a.seen && !a.lost)
            .count();
        let quarantined = self
            .registry
            .entries()
            .filter(|a| a.quarantine.active(now))
            .count();
        let Some(a) = self.registry.get_mut(agent) else {
            return;
        };
        if !a.quarantine.note_end(status, now, &cfg) {
            return;
        }
        if quarantined + 1 > live / 2 {
            warn!(
                agent,
                failures = cfg.failures,
                quarantined,
                live,
                "agent fails children quickly, but so many agents are quarantined already that the package is the likelier cause; not quarantining"
            );
            a.quarantine.forgive();
            return;
        }
        let reason = a.quarantine.begin(now, unix_ms, &cfg);
        warn!(agent, %reason, "agent quarantined");
    }

    /// Ends quarantines whose cool-down is over (call from `tick`).
    pub(crate) fn end_quarantines(&mut self, now: Instant) {
        let mut ended = false;
        for a in self.registry.entries_mut() {
            if a.quarantine.is_over(now) {
                a.quarantine = Default::default();
                ended = true;
                info!(agent = %a.rec.name, "quarantine over; the agent takes children again");
            }
        }
        if ended {
            self.dispatcher.capacity_changed();
        }
    }
}

impl Scheduler {
    /// The dispatch id of `c`'s current attempt, if that attempt is on `agent`.
    fn attempt_on(&self, c: ChildRef, agent: &str) -> Option<DispatchId> {
        let e = self.execs.get(c.exec)?;
        let child = e
            .tasks
            .get(c.task as usize)?
            .children
            .get(c.child as usize)?;
        (child.state().agent().map(|a| a.as_str()) == Some(agent))
            .then(|| child.dispatch_id(&e.rec.id))
    }
}

/// The CancelJob calls that stop, on an agent that came back after it was
/// declared lost, the attempts given up meanwhile (they would hold its slots,
/// and run a second time beside their new attempt, until they ended).
fn stop_superseded(agent: &str, entry: &mut AgentEntry) -> Vec<Effect> {
    let superseded = entry.take_superseded();
    if !superseded.is_empty() {
        info!(
            agent = %agent,
            attempts = superseded.len(),
            "asking the agent that came back to stop the attempts given up while it was lost"
        );
    }
    superseded
        .into_iter()
        .map(|spec| Effect::Cancel {
            agent: agent.to_string(),
            address: entry.rec.address.clone(),
            spec,
        })
        .collect()
}
