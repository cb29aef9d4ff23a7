//! The dispatcher's timers: dispatches to send again after an unknown
//! outcome, and failed children waiting for their retry's backoff (in memory
//! only: a restart re-sends and retries at once).
//!
//! The scheduler arms them while handling an input and asks for the due ones
//! on every tick ([`Timers::take_due`]); what to do with a due child is the
//! scheduler's decision, not the timer's.

use std::time::Instant;

use super::model::ChildRef;

#[derive(Debug, Default)]
pub(crate) struct Timers {
    resend: Vec<(Instant, ChildRef)>,
    retry: Vec<(Instant, ChildRef)>,
}

/// The children whose timers are due.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// Dispatches to send again (same dispatch id).
    pub resend: Vec<ChildRef>,
    /// Children whose retry backoff is over.
    pub retry: Vec<ChildRef>,
}

impl Timers {
    /// Send the child's dispatch again at `at`.
    pub(crate) fn resend_at(&mut self, at: Instant, c: ChildRef) {
        self.resend.push((at, c));
    }

    /// Queue the child again at `at` (its retry's backoff).
    pub(crate) fn retry_at(&mut self, at: Instant, c: ChildRef) {
        self.retry.push((at, c));
    }

    /// Drops the timers of an execution that left memory.
    pub(crate) fn forget_execution(&mut self, slot: u64) {
        self.resend.retain(|(_, c)| c.exec != slot);
        self.retry.retain(|(_, c)| c.exec != slot);
    }

    /// Takes the timers due at `now`, each kind in the order it was armed.
    pub(crate) fn take_due(&mut self, now: Instant) -> Due {
        fn split(timers: &mut Vec<(Instant, ChildRef)>, now: Instant) -> Vec<ChildRef> {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(timers)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            *timers = later;
            due.into_iter().map(|(_, c)| c).collect()
        }
        Due {
            resend: split(&mut self.resend, now),
            retry: split(&mut self.retry, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn c(exec: u64, child: u32) -> ChildRef {
        ChildRef {
            exec,
            task: 0,
            child,
        }
    }

    #[test]
    fn timers_fire_once_when_due_in_the_order_they_were_armed() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.resend_at(t0 + Duration::from_secs(2), c(1, 0));
        t.resend_at(t0, c(1, 1));
        t.retry_at(t0 + Duration::from_secs(1), c(1, 2));
        t.resend_at(t0, c(2, 0));
        t.forget_execution(2);
        assert_eq!(
            t.take_due(t0),
            Due {
                resend: vec![c(1, 1)],
                retry: vec![]
            }
        );
        let later = t.take_due(t0 + Duration::from_secs(2));
        assert_eq!(later.resend, [c(1, 0)]);
        assert_eq!(later.retry, [c(1, 2)]);
        assert_eq!(t.take_due(t0 + Duration::from_secs(9)), Due::default());
    }
}
