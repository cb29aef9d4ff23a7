//! The trace of a store commit: which traced executions a flushed batch
//! wrote records of, noted as a [`TraceEvent::Commit`] effect (performed once
//! the batch is durable, when the span exporter ends the commit's span).

use super::model::{Effect, TraceEvent};
use super::persist::Written;
use super::state::Scheduler;

impl Scheduler {
    /// Notes the commit of `written` (`records` operations) for the
    /// executions among them that have a trace; nothing when none has.
    pub(super) fn trace_commit(&mut self, written: &[(usize, Written)], records: usize) {
        let mut execs: Vec<String> = Vec::new();
        let mut last = None;
        for (_, w) in written {
            let slot = match w {
                Written::Child(c) => c.exec,
                Written::Exec(slot) => *slot,
                _ => continue,
            };
            // Children of one execution come together: one lookup for them.
            if last == Some(slot) {
                continue;
            }
            last = Some(slot);
            if let Some(t) = self.execs.get(slot).and_then(|e| e.rec.trace.as_ref())
                && !execs.contains(&t.traceparent)
            {
                execs.push(t.traceparent.clone());
            }
        }
        if !execs.is_empty() {
            self.journal.effect(Effect::Trace(TraceEvent::Commit {
                execs,
                records,
                unix_ms: self.unix_ms,
            }));
        }
    }
}
