//! Making memory durable: the store operations of what the journal marked
//! dirty ([`Scheduler::flush`]), the revisions recorded once they commit
//! ([`Scheduler::committed_chunks`]), and the effects released after that.
//!
//! A flush may be larger than one commit of the store may hold: the loop
//! then commits it in order, in chunks ([`crate::store::split`]). So the
//! operations come in an order that a crash between two chunks leaves
//! understandable: registrations and new executions first, then children
//! (in key order: a task's children by index, so that a task cut short has
//! its first children stored and recovery makes the rest), then the
//! executions that changed (an end never lands before its children's), and
//! the agents' sequence records (`s/<agent>`, the acknowledgement of the
//! events applied) **last**. A crash before them leaves child records without the
//! acknowledgement of the events that wrote them; the agent resends those
//! events to the next coordinator, which applies them again idempotently (a
//! terminal child stays as recorded; a report of another attempt is stale).

use super::model::{ChildRef, Effect};
use super::state::Scheduler;
use crate::store::Revision;
use crate::store::split::Chunked;

/// What a flush wrote, so that versions can be updated after the commit.
#[derive(Debug)]
pub(crate) enum Written {
    Child(ChildRef),
    Exec(u64),
    Agent(String),
    Seq(String),
}

impl Scheduler {
    /// The store operations that make memory durable, and what they cover
    /// (with the index of the operation that wrote each), in the order the
    /// module doc gives.
    pub(crate) fn flush(&mut self) -> (Vec<crate::store::Op>, Vec<(usize, Written)>) {
        use crate::records::*;
        use crate::store::{Op, Precondition};
        fn pre(v: Option<Revision>) -> Precondition {
            v.map_or(Precondition::Absent, Precondition::Revision)
        }
        let mut ops = Vec::new();
        let mut written = Vec::new();
        let dirty = self.journal.take_dirty();
        for fp in dirty.revoked {
            let name = self
                .registry
                .revoked_owner(&fp)
                .unwrap_or_default()
                .to_string();
            ops.push(Op::Put {
                key: revoked_key(&fp),
                value: name.into_bytes(),
                pre: Precondition::Any,
            });
        }
        for name in dirty.removed_agents {
            for key in [agent_key(&name), seq_key(&name)] {
                ops.push(Op::Delete {
                    key,
                    pre: Precondition::Any,
                });
            }
        }
        for name in dirty.agents {
            if let Some(a) = self.registry.get(&name) {
                ops.push(Op::Put {
                    key: agent_key(&name),
                    value: serde_json::to_vec(&a.rec).unwrap_or_default(),
                    pre: pre(a.version),
                });
                written.push((ops.len() - 1, Written::Agent(name)));
            }
        }
        // New executions before their children (a child is never stored
        // without its execution); changed ones after them (an execution's
        // end never lands before its children's).
        let (new_execs, changed_execs): (Vec<u64>, Vec<u64>) = dirty
            .execs
            .into_iter()
            .partition(|&slot| self.execs.get(slot).is_some_and(|e| e.version.is_none()));
        let put_execs = |slots: Vec<u64>, ops: &mut Vec<Op>, written: &mut Vec<_>| {
            for slot in slots {
                if let Some(e) = self.execs.get(slot) {
                    ops.push(Op::Put {
                        key: execution_key(&e.rec.id),
                        value: serde_json::to_vec(&e.rec).unwrap_or_default(),
                        pre: pre(e.version),
                    });
                    written.push((ops.len() - 1, Written::Exec(slot)));
                }
            }
        };
        put_execs(new_execs, &mut ops, &mut written);
        for cref in dirty.children {
            if let Some(e) = self.execs.get(cref.exec) {
                let c = &e.tasks[cref.task as usize].children[cref.child as usize];
                ops.push(Op::Put {
                    key: child_key(&e.rec.id, &c.rec.task, c.rec.index),
                    value: serde_json::to_vec(&c.rec).unwrap_or_default(),
                    pre: pre(c.version),
                });
                written.push((ops.len() - 1, Written::Child(cref)));
            }
        }
        put_execs(changed_execs, &mut ops, &mut written);
        // Last: the acknowledgements of the events this batch applied.
        for name in dirty.seqs {
            if let Some(a) = self.registry.get(&name) {
                ops.push(Op::Put {
                    key: seq_key(&name),
                    value: serde_json::to_vec(&a.seq).unwrap_or_default(),
                    pre: pre(a.seq_version),
                });
                written.push((ops.len() - 1, Written::Seq(name)));
            }
        }
        self.trace_commit(&written, ops.len());
        (ops, written)
    }

    /// Records the revision of a successful commit, publishes summaries of the
    /// executions that changed, and forgets executions that have ended (a
    /// flush committed whole: the tests' shortcut for [`Self::committed_chunks`]).
    #[cfg(test)]
    pub(crate) fn committed(&mut self, written: Vec<(usize, Written)>, revision: Revision) {
        self.committed_chunks(written, &Chunked::single(usize::MAX, revision));
    }

    /// [`Self::committed`] for a flush committed in chunks: each record gets
    /// the revision of the chunk that held it.
    pub(crate) fn committed_chunks(&mut self, written: Vec<(usize, Written)>, chunks: &Chunked) {
        for (op, w) in written {
            let Some(revision) = chunks.revision_of(op) else {
                continue;
            };
            match w {
                Written::Child(c) => {
                    if let Some(e) = self.execs.get_mut(c.exec) {
                        e.tasks[c.task as usize].children[c.child as usize].version =
                            Some(revision);
                    }
                }
                Written::Exec(slot) => {
                    if let Some(e) = self.execs.get_mut(slot) {
                        e.version = Some(revision);
                    }
                }
                Written::Agent(n) => {
                    if let Some(a) = self.registry.get_mut(&n) {
                        a.version = Some(revision);
                    }
                }
                Written::Seq(n) => {
                    if let Some(a) = self.registry.get_mut(&n) {
                        a.seq_version = Some(revision);
                    }
                }
            }
        }
        self.publish_and_evict();
    }

    /// Effects to perform now that the last flush is durable (acks last).
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.journal.take_effects()
    }

    pub(crate) fn has_dirty(&self) -> bool {
        self.journal.has_dirty()
    }
}
