//! The running executions: a table of [`Exec`] by slot (a number this
//! coordinator gives each execution it holds, never reused), with the index
//! from execution id to slot. Its fields are private: the scheduler's topic
//! files go through this small interface, so that the slot and the id of an
//! execution cannot disagree.

use std::collections::HashMap;

use super::child::Child;
use super::exec::Exec;
use super::model::ChildRef;
use crate::domain::ExecutionId;

/// The executions in memory (running, or ended and not yet durable).
pub(crate) struct Executions {
    by_slot: HashMap<u64, Exec>,
    by_id: HashMap<ExecutionId, u64>,
    next_slot: u64,
}

impl Default for Executions {
    fn default() -> Self {
        Executions {
            by_slot: HashMap::new(),
            by_id: HashMap::new(),
            next_slot: 1,
        }
    }
}

impl Executions {
    /// Adds an execution under a new slot, indexed by its id; returns the slot.
    pub(crate) fn insert(&mut self, e: Exec) -> u64 {
        let slot = self.next_slot;
        self.next_slot += 1;
        let earlier = self.by_id.insert(ExecutionId::new(e.rec.id.as_str()), slot);
        debug_assert!(earlier.is_none(), "an execution id inserted twice");
        self.by_slot.insert(slot, e);
        slot
    }

    /// Forgets an execution (its slot and id).
    pub(crate) fn remove(&mut self, slot: u64) -> Option<Exec> {
        let e = self.by_slot.remove(&slot)?;
        // The id's entry goes only if it is this slot's (an id is inserted once
        // today; should that change, a removal must not orphan another slot).
        if self.by_id.get(e.rec.id.as_str()) == Some(&slot) {
            self.by_id.remove(e.rec.id.as_str());
        }
        Some(e)
    }

    pub(crate) fn get(&self, slot: u64) -> Option<&Exec> {
        self.by_slot.get(&slot)
    }

    pub(crate) fn get_mut(&mut self, slot: u64) -> Option<&mut Exec> {
        self.by_slot.get_mut(&slot)
    }

    /// The slot of the execution with this id.
    pub(crate) fn slot_of(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// The execution with this id.
    pub(crate) fn by_id(&self, id: &str) -> Option<&Exec> {
        self.get(self.slot_of(id)?)
    }

    /// A child by reference (`None` if its execution left memory).
    pub(crate) fn child(&self, c: ChildRef) -> Option<&Child> {
        self.get(c.exec)?
            .tasks
            .get(c.task as usize)?
            .children
            .get(c.child as usize)
    }

    pub(crate) fn child_mut(&mut self, c: ChildRef) -> Option<&mut Child> {
        self.get_mut(c.exec)?
            .tasks
            .get_mut(c.task as usize)?
            .children
            .get_mut(c.child as usize)
    }

    /// Every execution with its slot (in no particular order).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Exec)> {
        self.by_slot.iter().map(|(&s, e)| (s, e))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut Exec)> {
        self.by_slot.iter_mut().map(|(&s, e)| (s, e))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Exec> {
        self.by_slot.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_slot.len()
    }
}
