//! Fault accounting per entity (an exchange of a plugin type, a filtered consumer, an idempotent
//! queue): the outcomes of its last [`WINDOW_CALLS`] calls, and its quarantine.
//!
//! An entity is quarantined when at least [`QUARANTINE_FAILURES`] of its last calls failed and they
//! are at least half of the calls in the window: a plugin that fails on every message, or on every
//! other one, is stopped; an occasional poison message (fewer than half the calls) only meets the
//! entity's failure policy, each time. A quarantined entity's calls fail fast until its plugin's file
//! is rewritten or touched (the slot's lift count changes). Only calls that handle a message count as
//! successes: the set-up calls that follow every instance replacement (instantiation, `init`, binding
//! replay) succeed even for a plugin that fails on every message; a failed set-up call counts as a
//! failure.

/// How many of an entity's most recent calls its failure rate is computed over.
pub const WINDOW_CALLS: u32 = 64;

/// Failures in the window (and at least half of its calls) that quarantine the entity.
pub const QUARANTINE_FAILURES: u32 = 20;

/// One entity's recent outcomes and quarantine.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// The last calls' outcomes, newest in bit 0; a set bit is a failure.
    outcomes: u64,
    /// How many of the bits hold an outcome (at most [`WINDOW_CALLS`]).
    filled: u32,
    /// The slot's lift count when the entity was quarantined; `None` when it is not.
    quarantined_at: Option<u64>,
}

impl Health {
    /// Records a call's outcome. Returns true when this outcome quarantines the entity.
    pub fn record(&mut self, failed: bool) -> bool {
        if self.quarantined_at.is_some() {
            return false;
        }
        self.outcomes = (self.outcomes << 1) | u64::from(failed);
        if WINDOW_CALLS < 64 {
            self.outcomes &= (1u64 << WINDOW_CALLS) - 1;
        }
        self.filled = (self.filled + 1).min(WINDOW_CALLS);
        failed && self.failures() >= QUARANTINE_FAILURES && 2 * self.failures() >= self.filled
    }

    /// Failures among the calls in the window.
    pub fn failures(&self) -> u32 {
        self.outcomes.count_ones()
    }

    /// Calls in the window.
    pub fn calls(&self) -> u32 {
        self.filled
    }

    /// Marks the entity quarantined at the slot's lift count `lifts`.
    pub fn quarantine(&mut self, lifts: u64) {
        self.quarantined_at = Some(lifts);
    }

    /// The slot's lift count at which the entity was quarantined, if it is.
    pub fn quarantined_at(&self) -> Option<u64> {
        self.quarantined_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcomes: impl IntoIterator<Item = bool>) -> Option<usize> {
        let mut h = Health::default();
        outcomes.into_iter().position(|failed| h.record(failed))
    }

    #[test]
    fn a_run_of_failures_quarantines_at_the_threshold() {
        assert_eq!(run(std::iter::repeat_n(true, 30)), Some(19));
    }

    #[test]
    fn failing_every_other_call_quarantines() {
        let alternating = (0..200).map(|i| i % 2 == 0);
        assert_eq!(run(alternating), Some(38), "20 failures in 39 calls");
    }

    #[test]
    fn an_occasional_poison_message_does_not_quarantine() {
        // One call in three fails, forever: a third of the window.
        assert_eq!(run((0..10_000).map(|i| i % 3 == 0)), None);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut outcomes = vec![true; 19];
        outcomes.extend(std::iter::repeat_n(false, 64));
        outcomes.extend(std::iter::repeat_n(true, 19));
        assert_eq!(run(outcomes), None, "19 + 19 failures, 64 successes apart");
    }

    #[test]
    fn a_quarantined_entity_records_nothing_more() {
        let mut h = Health::default();
        for _ in 0..20 {
            h.record(true);
        }
        h.quarantine(7);
        assert!(!h.record(true));
        assert_eq!(h.quarantined_at(), Some(7));
    }
}
