//! Making memory durable: the store operations of what the journal marked
//! dirty ([`Scheduler::flush`]), the revisions recorded once they commit
//! ([`Scheduler::committed`]), and the effects released after that.

use super::model::{ChildRef, Effect};
use super::state::Scheduler;
use crate::store::Revision;

/// What a flush wrote, so that versions can be updated after the commit.
#[derive(Debug)]
pub(crate) enum Written {
    Child(ChildRef),
    Exec(u64),
    Agent(String),
    Seq(String),
    Epoch,
}

impl Scheduler {
    /// The store operations that make memory durable, and what they cover.
    pub(crate) fn flush(&mut self) -> (Vec<crate::store::Op>, Vec<Written>) {
        use crate::records::*;
        use crate::store::{Op, Precondition};
        fn pre(v: Option<Revision>) -> Precondition {
            v.map_or(Precondition::Absent, Precondition::Revision)
        }
        let mut ops = Vec::new();
        let mut written = Vec::new();
        let dirty = self.journal.take_dirty();
        if dirty.epoch {
            ops.push(Op::Put {
                key: EPOCH_KEY.to_string(),
                value: self.epoch.to_string().into_bytes(),
                pre: Precondition::Any,
            });
            written.push(Written::Epoch);
        }
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
                written.push(Written::Agent(name));
            }
        }
        for name in dirty.seqs {
            if let Some(a) = self.registry.get(&name) {
                ops.push(Op::Put {
                    key: seq_key(&name),
                    value: serde_json::to_vec(&a.seq).unwrap_or_default(),
                    pre: pre(a.seq_version),
                });
                written.push(Written::Seq(name));
            }
        }
        for slot in dirty.execs {
            if let Some(e) = self.execs.get(slot) {
                ops.push(Op::Put {
                    key: execution_key(&e.rec.id),
                    value: serde_json::to_vec(&e.rec).unwrap_or_default(),
                    pre: pre(e.version),
                });
                written.push(Written::Exec(slot));
            }
        }
        for cref in dirty.children {
            if let Some(e) = self.execs.get(cref.exec) {
                let c = &e.tasks[cref.task as usize].children[cref.child as usize];
                ops.push(Op::Put {
                    key: child_key(&e.rec.id, &c.rec.task, c.rec.index),
                    value: serde_json::to_vec(&c.rec).unwrap_or_default(),
                    pre: pre(c.version),
                });
                written.push(Written::Child(cref));
            }
        }
        self.trace_commit(&written, ops.len());
        (ops, written)
    }

    /// Records the revision of a successful commit, publishes summaries of the
    /// executions that changed, and forgets executions that have ended.
    pub(crate) fn committed(&mut self, written: Vec<Written>, revision: Revision) {
        for w in written {
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
                Written::Epoch => {}
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
