//! The registry: the agents this coordinator knows (registration, liveness,
//! the children each holds, quarantine) and the certificates revoked.
//!
//! Its state is private. The scheduler asks it questions (is this agent's
//! certificate revoked? which agents' leases expired?) and it answers with
//! values — the agents lost and the children they held — which the
//! scheduler routes to the children's state machine; the registry never
//! touches a child.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::model::ChildRef;
use super::quarantine;
use crate::domain::{AgentId, CancelSpec};
use crate::records::{AgentRecord, SeqRecord};
use crate::store::Revision;

/// One agent, in memory.
pub(crate) struct AgentEntry {
    pub rec: AgentRecord,
    pub version: Option<Revision>,
    pub seq: SeqRecord,
    pub seq_version: Option<Revision>,
    /// Registered or heard from since this coordinator started.
    pub seen: bool,
    pub lost: bool,
    pub last_seen: Instant,
    pub last_heartbeat_unix_ms: u64,
    pub load1: f64,
    pub running_reported: u32,
    pub draining: bool,
    /// Children dispatched to, accepted by or running on this agent (its
    /// slots): changed with the children's states only (`hold`, `release`),
    /// or taken whole when the agent is lost (`drop_children`).
    active: HashSet<ChildRef>,
    /// Recent failures and any quarantine (in memory only).
    pub quarantine: quarantine::Quarantine,
    /// The attempts it held when it was declared lost, which were given up
    /// (run again or ended): should it come back with them still running, its
    /// agent is asked to stop them ([`AgentEntry::take_superseded`]). At most
    /// the children it held; forgotten when it restarts.
    superseded: Vec<CancelSpec>,
}

impl AgentEntry {
    /// A live, ready entry not yet written to the store.
    pub(crate) fn new(rec: AgentRecord, seq: SeqRecord, now: Instant) -> AgentEntry {
        AgentEntry {
            rec,
            version: None,
            seq,
            seq_version: None,
            seen: true,
            lost: false,
            last_seen: now,
            last_heartbeat_unix_ms: 0,
            load1: 0.0,
            running_reported: 0,
            draining: false,
            active: Default::default(),
            quarantine: Default::default(),
            superseded: Vec::new(),
        }
    }
}

impl AgentEntry {
    /// The child now occupies a slot of this agent.
    pub(crate) fn hold(&mut self, c: ChildRef) {
        self.active.insert(c);
    }

    /// Remembers attempts given up when the agent was lost, to stop them
    /// should it come back.
    pub(crate) fn note_superseded(&mut self, requests: Vec<CancelSpec>) {
        self.superseded.extend(requests);
    }

    /// The given-up attempts to stop now that the agent is back (empty when
    /// none, or after a restart, which ended them).
    pub(crate) fn take_superseded(&mut self) -> Vec<CancelSpec> {
        std::mem::take(&mut self.superseded)
    }

    /// The child left this agent.
    pub(crate) fn release(&mut self, c: ChildRef) {
        self.active.remove(&c);
    }

    #[cfg(test)]
    pub(crate) fn holds(&self, c: ChildRef) -> bool {
        self.active.contains(&c)
    }

    /// The children it holds, in no order.
    pub(crate) fn held(&self) -> impl Iterator<Item = &ChildRef> {
        self.active.iter()
    }

    pub(crate) fn held_count(&self) -> usize {
        self.active.len()
    }

    /// The agent is gone (restarted, revoked, lost): it holds nothing any
    /// more, and the children it held are returned to be lost.
    pub(crate) fn drop_children(&mut self) -> Vec<ChildRef> {
        self.active.drain().collect()
    }
}

/// The agents and the revoked certificates.
#[derive(Default)]
pub(crate) struct Registry {
    agents: BTreeMap<AgentId, AgentEntry>,
    /// Revoked certificate fingerprints → the agent they belonged to.
    revoked: HashMap<String, String>,
}

impl Registry {
    pub(crate) fn get(&self, name: &str) -> Option<&AgentEntry> {
        self.agents.get(name)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut AgentEntry> {
        self.agents.get_mut(name)
    }

    /// Every agent, by name.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &AgentEntry> {
        self.agents.values()
    }

    pub(crate) fn entries_mut(&mut self) -> impl Iterator<Item = &mut AgentEntry> {
        self.agents.values_mut()
    }

    /// The agent `name`, made by `make` if it is new.
    pub(crate) fn get_or_insert(
        &mut self,
        name: &str,
        make: impl FnOnce() -> AgentEntry,
    ) -> &mut AgentEntry {
        self.agents.entry(AgentId::new(name)).or_insert_with(make)
    }

    /// Adds (or replaces) an agent, by its record's name.
    pub(crate) fn insert(&mut self, entry: AgentEntry) {
        self.agents
            .insert(AgentId::new(entry.rec.name.as_str()), entry);
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<AgentEntry> {
        self.agents.remove(name)
    }

    /// Whether the agent registered with a certificate revoked since.
    pub(crate) fn is_revoked(&self, a: &AgentEntry) -> bool {
        self.fingerprint_revoked(&a.rec.cert_fingerprint)
    }

    /// Whether this certificate was revoked (no certificate never is).
    pub(crate) fn fingerprint_revoked(&self, fingerprint: &str) -> bool {
        !fingerprint.is_empty() && self.revoked.contains_key(fingerprint)
    }

    /// Records a revoked certificate of `agent`; `true` when it is new.
    pub(crate) fn revoke_fingerprint(&mut self, fingerprint: String, agent: &str) -> bool {
        self.revoked
            .insert(fingerprint, agent.to_string())
            .is_none()
    }

    /// The agent a revoked certificate belonged to.
    pub(crate) fn revoked_owner(&self, fingerprint: &str) -> Option<&str> {
        self.revoked.get(fingerprint).map(String::as_str)
    }

    /// Marks lost the agents silent for longer than `ttl` at `now`, and
    /// returns them with the children they held (now theirs no more).
    pub(crate) fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<(AgentId, Vec<ChildRef>)> {
        let mut lost = Vec::new();
        for (name, a) in self.agents.iter_mut() {
            if !a.lost && now.duration_since(a.last_seen) > ttl {
                a.lost = true;
                lost.push((name.clone(), a.drop_children()));
            }
        }
        lost
    }

    /// An execution left memory: no agent holds its children any more.
    pub(crate) fn forget_execution(&mut self, slot: u64) {
        for a in self.agents.values_mut() {
            a.active.retain(|c| c.exec != slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, fingerprint: &str, last_seen: Instant) -> AgentEntry {
        let rec = AgentRecord {
            name: name.into(),
            address: format!("{name}:1"),
            labels: Default::default(),
            slots: 1,
            version: String::new(),
            boot_id: "b1".into(),
            admin: Default::default(),
            cert_fingerprint: fingerprint.into(),
            weight: 1,
        };
        let seq = SeqRecord {
            outbox_id: "ob".into(),
            applied_seq: 0,
        };
        AgentEntry::new(rec, seq, last_seen)
    }

    #[test]
    fn a_lease_expires_once_and_hands_back_the_children() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.insert(entry("a", "", t0));
        r.insert(entry("b", "", t0 + Duration::from_secs(5)));
        let c = ChildRef {
            exec: 1,
            task: 0,
            child: 0,
        };
        r.get_mut("a").unwrap().hold(c);
        let later = t0 + Duration::from_secs(6);
        let lost = r.expire(later, Duration::from_secs(5));
        assert_eq!(lost, [(AgentId::new("a"), vec![c])]);
        assert!(r.get("a").unwrap().lost && r.get("a").unwrap().held_count() == 0);
        assert!(
            r.expire(later, Duration::from_secs(5)).is_empty(),
            "lost once"
        );
    }

    #[test]
    fn only_a_revoked_certificate_is_revoked() {
        let mut r = Registry::default();
        r.insert(entry("a", "fp-a", Instant::now()));
        r.insert(entry("plain", "", Instant::now()));
        assert!(!r.is_revoked(r.get("a").unwrap()));
        assert!(r.revoke_fingerprint("fp-a".into(), "a"));
        assert!(!r.revoke_fingerprint("fp-a".into(), "a"), "once");
        assert!(r.is_revoked(r.get("a").unwrap()));
        assert_eq!(r.revoked_owner("fp-a"), Some("a"));
        assert!(
            !r.is_revoked(r.get("plain").unwrap()),
            "no certificate, nothing revoked"
        );
    }
}
