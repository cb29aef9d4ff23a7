//! The running executions: a table of [`Exec`] by slot (a number this
//! coordinator gives each execution it holds, never reused), with the index
//! from execution id to slot and the order executions take their turn in
//! the pump. Its fields are private: the scheduler's topic files go through
//! this small interface, so that the slot, the id and the turn of an
//! execution cannot disagree.

use std::collections::{HashMap, VecDeque};

use super::child::Child;
use super::exec::Exec;
use super::ids::ExecutionId;
use super::model::ChildRef;

/// The executions in memory (running, or ended and not yet durable).
pub(crate) struct Executions {
    by_slot: HashMap<u64, Exec>,
    by_id: HashMap<ExecutionId, u64>,
    /// The order in which executions take their turn in the pump (rotated
    /// by one at each pump, new executions last).
    turns: VecDeque<u64>,
    next_slot: u64,
}

impl Default for Executions {
    fn default() -> Self {
        Executions {
            by_slot: HashMap::new(),
            by_id: HashMap::new(),
            turns: VecDeque::new(),
            next_slot: 1,
        }
    }
}

impl Executions {
    /// Adds an execution under a new slot, indexed by its id, last in turn.
    pub(crate) fn insert(&mut self, e: Exec) -> u64 {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.by_id.insert(ExecutionId::new(e.rec.id.as_str()), slot);
        self.turns.push_back(slot);
        self.by_slot.insert(slot, e);
        slot
    }

    /// Forgets an execution (its slot, id and turn).
    pub(crate) fn remove(&mut self, slot: u64) -> Option<Exec> {
        let e = self.by_slot.remove(&slot)?;
        self.by_id.remove(e.rec.id.as_str());
        self.turns.retain(|s| *s != slot);
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

    /// The executions in the order they take their turn in this pump; the
    /// next pump starts one further (so that each is first in turn).
    pub(crate) fn take_turns(&mut self) -> Vec<u64> {
        let order = self.turns.iter().copied().collect();
        self.turns.rotate_left(usize::from(!self.turns.is_empty()));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_rotate_and_new_executions_come_last() {
        // (Slots pushed as `insert` does; an `Exec` needs a whole plan.)
        let mut t = Executions::default();
        assert!(t.take_turns().is_empty());
        t.turns.extend([1, 2, 3]);
        assert_eq!(t.take_turns(), [1, 2, 3]);
        assert_eq!(t.take_turns(), [2, 3, 1]);
        t.turns.push_back(4);
        assert_eq!(t.take_turns(), [3, 1, 2, 4]);
        assert_eq!(t.take_turns(), [1, 2, 4, 3]);
    }
}
