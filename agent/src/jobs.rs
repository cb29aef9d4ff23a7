//! The table of this agent's jobs: running ones with their cancel handles, and a bounded
//! memory of finished ones for `GetJob`.

use std::collections::{HashMap, VecDeque};

use crate::job::cancel::JobCancel;
use crate::model::{DispatchKey, FinishStatus, KillReason};

/// Finished jobs remembered for `GetJob`.
pub const FINISHED_MAX: usize = 10_000;

/// What the agent knows about one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Unknown,
    Running,
    Finished {
        status: FinishStatus,
        exit_code: i32,
    },
}

#[derive(Default)]
pub struct JobTable {
    running: HashMap<DispatchKey, JobCancel>,
    /// status, exit code, and whether the job left nothing behind (its empty
    /// scratch directory went back to the pool: its logs and rows are empty).
    finished: HashMap<DispatchKey, (FinishStatus, i32, bool)>,
    finished_order: VecDeque<DispatchKey>,
}

impl JobTable {
    pub fn new() -> JobTable {
        JobTable::default()
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// The jobs running now.
    pub fn running_keys(&self) -> Vec<DispatchKey> {
        self.running.keys().cloned().collect()
    }

    /// Registers a running job (it counts against the slots from now on).
    pub fn insert_running(&mut self, key: DispatchKey, cancel: JobCancel) {
        self.running.insert(key, cancel);
    }

    /// Cancels a running job; false if it does not run here.
    pub fn cancel(&self, key: &DispatchKey, reason: KillReason) -> bool {
        match self.running.get(key) {
            Some(c) => {
                c.cancel(reason);
                true
            }
            None => false,
        }
    }

    pub fn cancel_all(&self, reason: KillReason) {
        for c in self.running.values() {
            c.cancel(reason);
        }
    }

    /// Moves a job from running to finished.
    pub fn finish(&mut self, key: DispatchKey, status: FinishStatus, exit_code: i32) {
        self.running.remove(&key);
        if self
            .finished
            .insert(key.clone(), (status, exit_code, false))
            .is_none()
        {
            self.finished_order.push_back(key);
            while self.finished_order.len() > FINISHED_MAX {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
    }

    /// Notes that a finished job left no file behind.
    pub fn mark_left_nothing(&mut self, key: &DispatchKey) {
        if let Some(f) = self.finished.get_mut(key) {
            f.2 = true;
        }
    }

    /// Whether a finished job is known to have left no file behind (false once
    /// it is forgotten, or after a restart).
    pub fn left_nothing(&self, key: &DispatchKey) -> bool {
        self.finished.get(key).is_some_and(|f| f.2)
    }

    pub fn state(&self, key: &DispatchKey) -> JobState {
        if self.running.contains_key(key) {
            return JobState::Running;
        }
        match self.finished.get(key) {
            Some(&(status, exit_code, _)) => JobState::Finished { status, exit_code },
            None => JobState::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> DispatchKey {
        DispatchKey {
            execution_id: "e".into(),
            task_path: "t".into(),
            item_index: i,
            attempt: 1,
        }
    }

    #[test]
    fn lifecycle() {
        let mut t = JobTable::new();
        let c = JobCancel::new();
        t.insert_running(key(1), c.clone());
        assert_eq!(t.state(&key(1)), JobState::Running);
        assert_eq!(t.state(&key(2)), JobState::Unknown);
        assert!(t.cancel(&key(1), KillReason::Cancelled));
        assert!(c.is_cancelled());
        assert!(!t.cancel(&key(2), KillReason::Cancelled));
        t.finish(key(1), FinishStatus::Cancelled, -1);
        assert_eq!(t.running_len(), 0);
        assert_eq!(
            t.state(&key(1)),
            JobState::Finished {
                status: FinishStatus::Cancelled,
                exit_code: -1
            }
        );
        assert!(!t.cancel(&key(1), KillReason::Cancelled));
        assert!(!t.left_nothing(&key(1)));
        t.mark_left_nothing(&key(1));
        assert!(t.left_nothing(&key(1)));
        t.mark_left_nothing(&key(2));
        assert!(!t.left_nothing(&key(2)), "only a finished job is marked");
    }
}
