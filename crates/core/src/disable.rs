//! When a webhook is disabled for failing.
//!
//! The seed page: "A subscription is auto-disabled after 10 consecutive delivery failures."
//! Every failed attempt (first tries and retries alike) adds one to the webhook's count; any
//! success sets it back to 0. A `410 Gone` answer means the receiver asks us to stop, so it
//! disables at once.
//!
//! "Consecutive" is in the order the attempts were made (their start times), not the order
//! their records reach the database: the delivery service records outcomes in batches from
//! several writers at once, and an attempt that started first can be committed last. The rule
//! therefore keeps, per webhook, the start time of its latest success and the start times of
//! the failures since ([`FailureHistory`]), and judges each attempt against that history when
//! its record arrives ([`DisableRule::apply_one`]).

/// The result of one attempt, as far as the disable rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The receiver answered `410 Gone`.
    Gone,
}

/// Why a webhook was disabled; the text is shown to the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisableReason {
    ConsecutiveFailures(u32),
    Gone,
}

impl DisableReason {
    pub fn describe(&self) -> String {
        match self {
            DisableReason::ConsecutiveFailures(n) => {
                format!("disabled after {n} consecutive failed delivery attempts")
            }
            DisableReason::Gone => "disabled because the endpoint answered 410 Gone".to_owned(),
        }
    }
}

/// The rule, with its threshold (`AIOKA__DELIVERY__DISABLE_AFTER`, default 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisableRule {
    pub threshold: u32,
}

impl Default for DisableRule {
    fn default() -> Self {
        Self { threshold: 10 }
    }
}

/// What the rule remembers of one webhook between batches. `T` is an instant (the store
/// uses `DateTime<Utc>`; tests use integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureHistory<T> {
    /// Attempts that started at or before this instant no longer count: the start of the
    /// latest success, or the moment the webhook was re-enabled. `None`: everything counts.
    pub counted_since: Option<T>,
    /// Start times of the failed attempts after `counted_since`, oldest first. Its length is
    /// the webhook's consecutive failure count.
    pub failures: Vec<T>,
}

impl<T> Default for FailureHistory<T> {
    fn default() -> Self {
        Self {
            counted_since: None,
            failures: Vec::new(),
        }
    }
}

impl<T> FailureHistory<T> {
    pub fn consecutive_failures(&self) -> u32 {
        u32::try_from(self.failures.len()).unwrap_or(u32::MAX)
    }
}

/// The webhook's state after a batch of outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureState<T> {
    pub history: FailureHistory<T>,
    /// Set when the merged history reached the threshold (or a 410) with this batch.
    pub disable: Option<DisableReason>,
}

impl DisableRule {
    /// Applies `outcomes` (each with its attempt's start time, in any order; each attempt
    /// given once) to `history`, one at a time in start-time order, each as
    /// [`DisableRule::apply_one`] judges it. A batch therefore comes out as its records would
    /// one by one, whatever batches they were written in, and an audit that replays the
    /// records in the order they were applied finds the same state.
    pub fn apply<T: Ord + Copy>(
        &self,
        history: &FailureHistory<T>,
        outcomes: &[(T, Outcome)],
    ) -> FailureState<T> {
        let mut sorted = outcomes.to_vec();
        // Stable: at equal instants, the order given.
        sorted.sort_by_key(|(t, _)| *t);
        let mut history = history.clone();
        let mut disable = None;
        for (t, outcome) in sorted {
            let reason = self.apply_one(&mut history, t, outcome);
            if disable.is_none() {
                disable = reason;
            }
        }
        FailureState { history, disable }
    }

    /// One outcome, as known when its record arrives. An attempt that started at or before
    /// `counted_since` changes nothing (a later one has already succeeded). A success moves
    /// `counted_since` to its start and keeps only the failures that started after it. A
    /// failure joins the failures since; when they number `threshold`, the webhook is to be
    /// disabled (even if a success that started among them is recorded later: those attempts
    /// were in flight together). A 410 disables at once.
    pub fn apply_one<T: Ord + Copy>(
        &self,
        history: &mut FailureHistory<T>,
        t: T,
        outcome: Outcome,
    ) -> Option<DisableReason> {
        if history.counted_since.is_some_and(|since| t <= since) {
            return None;
        }
        match outcome {
            Outcome::Success => {
                history.counted_since = Some(t);
                history.failures.retain(|f| *f > t);
                None
            }
            Outcome::Failure | Outcome::Gone => {
                let at = history.failures.partition_point(|f| *f <= t);
                history.failures.insert(at, t);
                let count = history.consecutive_failures();
                if outcome == Outcome::Gone {
                    Some(DisableReason::Gone)
                } else if count >= self.threshold {
                    Some(DisableReason::ConsecutiveFailures(count))
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    const RULE: DisableRule = DisableRule { threshold: 10 };

    /// Outcomes at instants 1, 2, 3, …
    fn timed(outcomes: &[Outcome]) -> Vec<(u32, Outcome)> {
        (1..).zip(outcomes.iter().copied()).collect()
    }

    fn fresh() -> FailureHistory<u32> {
        FailureHistory::default()
    }

    #[test]
    fn nine_failures_do_not_disable() {
        let state = RULE.apply(&fresh(), &timed(&[Failure; 9]));
        assert_eq!(state.history.consecutive_failures(), 9);
        assert_eq!(state.disable, None);
    }

    #[test]
    fn the_tenth_consecutive_failure_disables() {
        let nine = RULE.apply(&fresh(), &timed(&[Failure; 9])).history;
        let state = RULE.apply(&nine, &[(10, Failure)]);
        assert_eq!(state.history.consecutive_failures(), 10);
        assert_eq!(state.disable, Some(DisableReason::ConsecutiveFailures(10)));
        assert_eq!(
            RULE.apply(&fresh(), &timed(&[Failure; 10])).disable,
            state.disable
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let state = RULE.apply(&fresh(), &timed(&[Failure, Success, Failure]));
        assert_eq!(state.history.consecutive_failures(), 1);
        assert_eq!(state.history.counted_since, Some(2));
        assert_eq!(state.disable, None);
    }

    #[test]
    fn a_threshold_crossed_inside_a_batch_disables_even_if_a_success_follows() {
        let mut outcomes = timed(&[Failure; 10]);
        outcomes.push((11, Success));
        let state = RULE.apply(&fresh(), &outcomes);
        assert_eq!(state.history.consecutive_failures(), 0);
        assert_eq!(state.disable, Some(DisableReason::ConsecutiveFailures(10)));
    }

    #[test]
    fn a_failure_that_started_before_a_counted_success_does_not_count() {
        // A 500 sent at 1 and a 200 sent at 2; the 200's record is committed first.
        let after_success = RULE.apply(&fresh(), &[(2, Success)]).history;
        let state = RULE.apply(&after_success, &[(1, Failure)]);
        assert_eq!(state.history.consecutive_failures(), 0);
        assert_eq!(state.disable, None);
    }

    #[test]
    fn a_success_that_started_before_counted_failures_keeps_the_later_ones() {
        // Failures at 2 and 3 are committed; a success that started at 1 arrives afterwards.
        let failures = RULE.apply(&fresh(), &[(2, Failure), (3, Failure)]).history;
        let state = RULE.apply(&failures, &[(1, Success)]);
        assert_eq!(state.history.failures, vec![2, 3]);
        // And one that started between them leaves only the failure after it.
        let state = RULE.apply(&failures, &[(2, Failure), (5, Failure), (4, Success)]);
        assert_eq!(state.history.failures, vec![5]);
    }

    #[test]
    fn a_batch_of_successes_older_than_the_failures_does_not_reset_them() {
        let nine = RULE
            .apply(
                &fresh(),
                &(10..19).map(|t| (t, Failure)).collect::<Vec<_>>(),
            )
            .history;
        let state = RULE.apply(&nine, &[(3, Success), (4, Success)]);
        assert_eq!(state.history.consecutive_failures(), 9);
        let state = RULE.apply(&state.history, &[(19, Failure)]);
        assert_eq!(state.disable, Some(DisableReason::ConsecutiveFailures(10)));
    }

    #[test]
    fn the_order_of_the_batch_does_not_matter_only_the_times() {
        let mut outcomes = timed(&[Failure, Failure, Success, Failure]);
        let in_order = RULE.apply(&fresh(), &outcomes);
        outcomes.reverse();
        assert_eq!(RULE.apply(&fresh(), &outcomes), in_order);
        assert_eq!(in_order.history.failures, vec![4]);
    }

    proptest::proptest! {
        /// The audit (`aioka-bench account`) replays records one at a time in the order
        /// they were applied; a batch must come out the same as its records one by one in
        /// start-time order (times distinct, as the delivery service makes them).
        #[test]
        fn a_batch_is_its_records_applied_one_by_one_in_time_order(
            before in proptest::collection::vec((0u32..400, proptest::bool::ANY), 0..30),
            batch in proptest::collection::vec((0u32..400, proptest::bool::ANY), 0..30),
        ) {
            let rule = DisableRule { threshold: 5 };
            let timed = |v: &[(u32, bool)], offset: u32| -> Vec<(u32, Outcome)> {
                let mut seen = std::collections::BTreeMap::new();
                for (t, ok) in v {
                    seen.insert(t * 2 + offset, if *ok { Success } else { Failure });
                }
                seen.into_iter().collect()
            };
            let history = rule.apply(&fresh(), &timed(&before, 0)).history;
            let batch = timed(&batch, 1);
            let whole = rule.apply(&history, &batch);
            let mut one_by_one = history;
            let mut disabled = false;
            for item in &batch {
                let state = rule.apply(&one_by_one, std::slice::from_ref(item));
                disabled |= state.disable.is_some();
                one_by_one = state.history;
            }
            proptest::prop_assert_eq!(&whole.history, &one_by_one);
            proptest::prop_assert_eq!(whole.disable.is_some(), disabled);
        }
    }

    #[test]
    fn gone_disables_at_once() {
        let state = RULE.apply(&fresh(), &[(1, Gone)]);
        assert_eq!(state.disable, Some(DisableReason::Gone));
        assert!(state.disable.unwrap().describe().contains("410"));
    }

    #[test]
    fn an_empty_batch_changes_nothing() {
        let three = RULE.apply(&fresh(), &timed(&[Failure; 3])).history;
        assert_eq!(
            RULE.apply(&three, &[]),
            FailureState {
                history: three.clone(),
                disable: None
            }
        );
    }
}
