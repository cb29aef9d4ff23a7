//! Which tasks of an execution are worth looking at, so that the scheduler's
//! work per event does not grow with the number of tasks. A leaf: plain
//! marks, no scheduler state.

use std::collections::{BTreeMap, BTreeSet};

/// The tasks of an execution worth looking at (in memory only). Marks are
/// cheap and may be stale: a reader checks the task's state and drops a
/// mark that no longer holds.
#[derive(Debug, Default)]
pub(crate) struct TaskWatch {
    /// Tasks that may have ended (a child became terminal, the task
    /// started, rows arrived) or gone past `max_failures`.
    ending: BTreeSet<u16>,
    /// Every task is to be looked at (a new or restored execution).
    all: bool,
    /// Per task: which kind of placement its children need (same labels
    /// and slots, same kind), so that one finding no room stands for all.
    kinds: Vec<u32>,
    /// Tasks that may have a child waiting in their queue, by kind.
    queued: BTreeMap<u32, BTreeSet<u16>>,
}

impl TaskWatch {
    /// A watch that looks at every task once; `kinds` as above.
    pub(crate) fn new(kinds: Vec<u32>) -> TaskWatch {
        TaskWatch {
            all: true,
            kinds,
            ..Default::default()
        }
    }

    pub(crate) fn may_end(&mut self, ti: usize) {
        self.ending.insert(ti as u16);
    }

    pub(crate) fn queued(&mut self, ti: usize) {
        let kind = self.kinds.get(ti).copied().unwrap_or(0);
        self.queued.entry(kind).or_default().insert(ti as u16);
    }

    /// The tasks to check for an end now (`tasks`: how many there are).
    pub(crate) fn take_ending(&mut self, tasks: usize) -> Vec<usize> {
        if std::mem::take(&mut self.all) {
            self.ending.clear();
            return (0..tasks).collect();
        }
        std::mem::take(&mut self.ending)
            .into_iter()
            .map(usize::from)
            .collect()
    }

    /// The kinds with a task queued, the kind of the first queued task first.
    pub(crate) fn queued_kinds(&self) -> Vec<u32> {
        let mut firsts: Vec<(u16, u32)> = self
            .queued
            .iter()
            .filter_map(|(&k, set)| set.first().map(|&t| (t, k)))
            .collect();
        firsts.sort_unstable();
        firsts.into_iter().map(|(_, k)| k).collect()
    }

    /// The queued task of `kind` after `after` (the first with `None`).
    pub(crate) fn next_queued(&self, kind: u32, after: Option<usize>) -> Option<usize> {
        let set = self.queued.get(&kind)?;
        let next = match after {
            None => set.first(),
            Some(t) => set.range(t as u16 + 1..).next(),
        };
        next.map(|&t| usize::from(t))
    }

    /// The task has no child waiting any more.
    pub(crate) fn unqueue(&mut self, ti: usize) {
        let kind = self.kinds.get(ti).copied().unwrap_or(0);
        if let Some(set) = self.queued.get_mut(&kind) {
            set.remove(&(ti as u16));
            if set.is_empty() {
                self.queued.remove(&kind);
            }
        }
    }
}
