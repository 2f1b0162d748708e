//! When a webhook is disabled for failing.
//!
//! The seed page: "A subscription is auto-disabled after 10 consecutive delivery failures."
//! Every failed attempt (first tries and retries alike) adds one to the webhook's count; any
//! success sets it back to 0. A `410 Gone` answer means the receiver asks us to stop, so it
//! disables at once. The delivery service records outcomes in batches, so the rule takes the
//! stored count and the outcomes of one batch in the order they happened.

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

/// The webhook's state after a batch of outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureState {
    pub consecutive_failures: u32,
    /// Set when this batch disabled the webhook.
    pub disable: Option<DisableReason>,
}

impl Default for DisableRule {
    fn default() -> Self {
        Self { threshold: 10 }
    }
}

impl DisableRule {
    /// Applies `outcomes` (oldest first) to a webhook whose stored count is `count`.
    /// Once the threshold is reached the webhook is disabled; later outcomes of the same batch
    /// (attempts already in flight) do not re-enable it, though a success still resets the
    /// count, as it would have had it arrived first.
    pub fn apply(&self, mut count: u32, outcomes: &[Outcome]) -> FailureState {
        let mut disable = None;
        for outcome in outcomes {
            match outcome {
                Outcome::Success => count = 0,
                Outcome::Failure => {
                    count = count.saturating_add(1);
                    if count >= self.threshold && disable.is_none() {
                        disable = Some(DisableReason::ConsecutiveFailures(count));
                    }
                }
                Outcome::Gone => {
                    count = count.saturating_add(1);
                    if disable.is_none() {
                        disable = Some(DisableReason::Gone);
                    }
                }
            }
        }
        FailureState {
            consecutive_failures: count,
            disable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    const RULE: DisableRule = DisableRule { threshold: 10 };

    #[test]
    fn nine_failures_do_not_disable() {
        let state = RULE.apply(0, &[Failure; 9]);
        assert_eq!(state.consecutive_failures, 9);
        assert_eq!(state.disable, None);
    }

    #[test]
    fn the_tenth_consecutive_failure_disables() {
        let state = RULE.apply(9, &[Failure]);
        assert_eq!(state.consecutive_failures, 10);
        assert_eq!(state.disable, Some(DisableReason::ConsecutiveFailures(10)));
        assert_eq!(RULE.apply(0, &[Failure; 10]).disable, state.disable);
    }

    #[test]
    fn a_success_resets_the_count() {
        let state = RULE.apply(8, &[Failure, Success, Failure]);
        assert_eq!(state.consecutive_failures, 1);
        assert_eq!(state.disable, None);
    }

    #[test]
    fn a_threshold_crossed_inside_a_batch_disables_even_if_a_success_follows() {
        let state = RULE.apply(8, &[Failure, Failure, Success]);
        assert_eq!(state.consecutive_failures, 0);
        assert_eq!(state.disable, Some(DisableReason::ConsecutiveFailures(10)));
    }

    #[test]
    fn gone_disables_at_once() {
        let state = RULE.apply(0, &[Gone]);
        assert_eq!(state.disable, Some(DisableReason::Gone));
        assert!(state.disable.unwrap().describe().contains("410"));
    }

    #[test]
    fn an_empty_batch_changes_nothing() {
        assert_eq!(
            RULE.apply(3, &[]),
            FailureState {
                consecutive_failures: 3,
                disable: None
            }
        );
    }
}
