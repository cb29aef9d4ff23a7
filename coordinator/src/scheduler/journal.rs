//! The journal: which records changed since the last flush, and what to do
//! once they are durable (effects, acknowledgements of agents' events).
//!
//! The other parts of the scheduler only note things here; the scheduler's
//! flush takes the noted records ([`Journal::take_dirty`]) and writes them as
//! one store batch, and the loop performs the effects after the commit
//! ([`Journal::take_effects`]): nothing leaves the coordinator before the
//! state that caused it is durable.

use std::collections::{BTreeMap, HashSet};

use super::model::{ChildRef, Effect};

/// What changed and what to do, between two flushes.
pub(crate) struct Journal {
    children: HashSet<ChildRef>,
    execs: HashSet<u64>,
    agents: HashSet<String>,
    seqs: HashSet<String>,
    revoked: Vec<String>,
    removed_agents: Vec<String>,
    effects: Vec<Effect>,
    /// Per agent, the highest event to acknowledge (acknowledgements are cumulative).
    acks: BTreeMap<String, u64>,
}

/// The records a flush writes (or deletes), taken from the journal.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    /// Revoked certificate fingerprints.
    pub revoked: Vec<String>,
    /// Agents whose records are deleted.
    pub removed_agents: Vec<String>,
    pub agents: Vec<String>,
    pub seqs: Vec<String>,
    pub execs: Vec<u64>,
    /// In order, so that a batch of a million children is written in key order.
    pub children: Vec<ChildRef>,
}

impl Journal {
    /// An empty journal (the epoch is not the scheduler's to write: the
    /// leadership took it before the scheduler was built).
    pub(crate) fn new() -> Journal {
        Journal {
            children: HashSet::new(),
            execs: HashSet::new(),
            agents: HashSet::new(),
            seqs: HashSet::new(),
            revoked: Vec::new(),
            removed_agents: Vec::new(),
            effects: Vec::new(),
            acks: BTreeMap::new(),
        }
    }

    pub(crate) fn child(&mut self, c: ChildRef) {
        self.children.insert(c);
    }

    pub(crate) fn child_is_dirty(&self, c: ChildRef) -> bool {
        self.children.contains(&c)
    }

    /// The child's record need not be written after all (its change is
    /// written with its next durable one).
    pub(crate) fn forget_child(&mut self, c: ChildRef) {
        self.children.remove(&c);
    }

    pub(crate) fn exec(&mut self, slot: u64) {
        self.execs.insert(slot);
    }

    pub(crate) fn exec_is_dirty(&self, slot: u64) -> bool {
        self.execs.contains(&slot)
    }

    pub(crate) fn agent(&mut self, name: &str) {
        if !self.agents.contains(name) {
            self.agents.insert(name.to_string());
        }
    }

    /// An agent's completion-stream record (its outbox and applied sequence).
    pub(crate) fn seq(&mut self, name: &str) {
        if !self.seqs.contains(name) {
            self.seqs.insert(name.to_string());
        }
    }

    /// An agent was forgotten: its records are deleted, not written.
    pub(crate) fn agent_removed(&mut self, name: &str) {
        self.agents.remove(name);
        self.seqs.remove(name);
        self.removed_agents.push(name.to_string());
    }

    /// A certificate was revoked (its fingerprint).
    pub(crate) fn revoked(&mut self, fingerprint: String) {
        self.revoked.push(fingerprint);
    }

    pub(crate) fn effect(&mut self, e: Effect) {
        self.effects.push(e);
    }

    /// Acknowledge `agent`'s events up to `seq` once durable.
    pub(crate) fn ack(&mut self, agent: &str, seq: u64) {
        match self.acks.get_mut(agent) {
            Some(s) => *s = seq,
            None => {
                self.acks.insert(agent.to_string(), seq);
            }
        }
    }

    pub(crate) fn has_dirty(&self) -> bool {
        !self.children.is_empty()
            || !self.execs.is_empty()
            || !self.agents.is_empty()
            || !self.seqs.is_empty()
            || !self.revoked.is_empty()
            || !self.removed_agents.is_empty()
    }

    /// The records to write now; the journal starts afresh.
    pub(crate) fn take_dirty(&mut self) -> Dirty {
        let mut children: Vec<ChildRef> = std::mem::take(&mut self.children).into_iter().collect();
        children.sort_unstable();
        Dirty {
            revoked: std::mem::take(&mut self.revoked),
            removed_agents: std::mem::take(&mut self.removed_agents),
            agents: std::mem::take(&mut self.agents).into_iter().collect(),
            seqs: std::mem::take(&mut self.seqs).into_iter().collect(),
            execs: std::mem::take(&mut self.execs).into_iter().collect(),
            children,
        }
    }

    /// The effects to perform now that the last flush is durable, the
    /// acknowledgements last.
    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        let mut out = std::mem::take(&mut self.effects);
        for (agent, seq) in std::mem::take(&mut self.acks) {
            out.push(Effect::Ack { agent, seq });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cref(child: u32) -> ChildRef {
        ChildRef {
            exec: 1,
            task: 0,
            child,
        }
    }

    #[test]
    fn a_flush_takes_children_in_order_and_starts_afresh() {
        let mut j = Journal::new();
        assert!(!j.has_dirty(), "nothing to write at first");
        for c in [3, 1, 2, 1] {
            j.child(cref(c));
        }
        j.forget_child(cref(2));
        assert!(j.has_dirty());
        let d = j.take_dirty();
        assert_eq!(d.children, [cref(1), cref(3)]);
        assert!(!j.has_dirty());
    }

    #[test]
    fn a_removed_agent_is_deleted_not_written() {
        let mut j = Journal::new();
        j.agent("a");
        j.seq("a");
        j.agent_removed("a");
        let d = j.take_dirty();
        assert!(d.agents.is_empty() && d.seqs.is_empty());
        assert_eq!(d.removed_agents, ["a"]);
    }

    #[test]
    fn acknowledgements_are_cumulative_and_come_after_the_effects() {
        let mut j = Journal::new();
        j.ack("a", 3);
        j.effect(Effect::ResetStream { agent: "b".into() });
        j.ack("a", 5);
        let effects = j.take_effects();
        assert!(matches!(effects[0], Effect::ResetStream { .. }));
        assert!(matches!(&effects[1], Effect::Ack { agent, seq: 5 } if agent == "a"));
        assert_eq!(effects.len(), 2);
        assert!(j.take_effects().is_empty());
    }
}
