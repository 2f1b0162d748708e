//! Each webhook's share of a delivery process's attempts in flight.
//!
//! One webhook may hold at most `per_webhook` attempts at once. A task past that share waits
//! for one of its webhook's slots to free, at most [`SLOT_WAIT`], if few enough wait already
//! (per webhook a quarter of `max_in_flight` or twice its share, so the tasks of one slow
//! endpoint never hold most of the process's attempts; in all `max_in_flight`, the number of
//! attempt permits a waiter holds one of); otherwise, or when the wait ends, the caller puts
//! the task off through the defer queue. Many events to a few healthy webhooks then flow at
//! the receivers' pace instead of going round the defer queue: a batch of first attempts
//! brings many tasks at once, and each waits its turn here rather than being put off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aioka_core::WebhookId;

/// How long a task waits for a slot before it is put off (the defer queue's delay).
pub const SLOT_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Slots {
    state: Mutex<State>,
    per_webhook: u16,
    /// Waiters allowed per webhook, and in all.
    per_webhook_waiting: usize,
    max_waiting: usize,
    /// `aioka_delivery_in_flight`: raised and lowered by each [`Slot`].
    in_flight: metrics::Gauge,
}

/// The webhooks with attempts in flight or tasks waiting.
#[derive(Default)]
struct State {
    hooks: HashMap<WebhookId, Hook>,
    waiting: usize,
}

#[derive(Default)]
struct Hook {
    in_flight: u16,
    waiting: u16,
    /// Signalled when one of this webhook's slots is given back.
    freed: Arc<tokio::sync::Notify>,
}

impl State {
    /// Forgets a webhook with nothing in flight and nothing waiting.
    fn tidy(&mut self, webhook: WebhookId) {
        if self
            .hooks
            .get(&webhook)
            .is_some_and(|h| h.in_flight == 0 && h.waiting == 0)
        {
            self.hooks.remove(&webhook);
        }
    }
}

impl Slots {
    /// For a process with `max_in_flight` attempts at most.
    pub fn new(max_in_flight: u16, per_webhook: u16, in_flight: metrics::Gauge) -> Self {
        let prefetch = usize::from(max_in_flight);
        Self {
            state: Mutex::default(),
            per_webhook,
            per_webhook_waiting: (prefetch / 4).max(usize::from(per_webhook) * 2),
            max_waiting: prefetch,
            in_flight,
        }
    }

    /// A slot for one attempt to `webhook`, waiting for one at most [`SLOT_WAIT`] as the
    /// module says; `None`: put the task off. The slot is given back when dropped, also when
    /// the attempt is cut off at shutdown.
    pub async fn take(&self, webhook: WebhookId) -> Option<Slot<'_>> {
        self.take_within(webhook, SLOT_WAIT).await
    }

    async fn take_within(&self, webhook: WebhookId, wait: Duration) -> Option<Slot<'_>> {
        let deadline = tokio::time::Instant::now() + wait;
        // Counted among the waiters until dropped: when the slot is had, when the wait ends,
        // and also when this future is dropped mid-wait (a broker session that ends drops its
        // handlers), so no count is left behind.
        let mut waiter: Option<Waiter<'_>> = None;
        loop {
            let freed = {
                let mut guard = self.state.lock().ok()?;
                let state = &mut *guard;
                let hook = state.hooks.entry(webhook).or_default();
                if hook.in_flight < self.per_webhook {
                    hook.in_flight += 1;
                    self.in_flight.increment(1.0);
                    return Some(Slot {
                        slots: self,
                        webhook,
                    });
                }
                if waiter.is_none() {
                    if usize::from(hook.waiting) >= self.per_webhook_waiting
                        || state.waiting >= self.max_waiting
                    {
                        state.tidy(webhook);
                        return None;
                    }
                    hook.waiting += 1;
                    state.waiting += 1;
                    waiter = Some(Waiter {
                        slots: self,
                        webhook,
                    });
                }
                hook.freed.clone()
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            // A wake-up can be missed between the check and the wait: look again often.
            let _ = tokio::time::timeout(
                (deadline - now).min(Duration::from_millis(50)),
                freed.notified(),
            )
            .await;
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.hooks.len(), state.waiting)
    }
}

/// A task counted among those waiting for one of its webhook's slots, until dropped.
struct Waiter<'a> {
    slots: &'a Slots,
    webhook: WebhookId,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Ok(mut state) = self.slots.state.lock() {
            state.waiting -= 1;
            if let Some(hook) = state.hooks.get_mut(&self.webhook) {
                hook.waiting -= 1;
            }
            state.tidy(self.webhook);
        }
    }
}

/// One attempt's share of a webhook's slots.
pub(crate) struct Slot<'a> {
    slots: &'a Slots,
    webhook: WebhookId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.in_flight.decrement(1.0);
        if let Ok(mut state) = self.slots.state.lock() {
            if let Some(hook) = state.hooks.get_mut(&self.webhook) {
                hook.in_flight -= 1;
                hook.freed.notify_one();
            }
            state.tidy(self.webhook);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max_in_flight: u16, per_webhook: u16) -> Slots {
        Slots::new(
            max_in_flight,
            per_webhook,
            metrics::gauge!("test_in_flight"),
        )
    }

    #[tokio::test]
    async fn a_task_past_the_share_gets_the_slot_given_back() {
        let s = slots(64, 2);
        let hook = WebhookId::new();
        let a = s.take(hook).await.unwrap();
        let _b = s.take(hook).await.unwrap();
        let third = s.take(hook);
        tokio::pin!(third);
        // Full: the third waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut third)
                .await
                .is_err()
        );
        assert_eq!(s.counts(), (1, 1));
        drop(a);
        let _c = tokio::time::timeout(Duration::from_millis(500), third)
            .await
            .expect("woken when a slot is given back")
            .unwrap();
        assert_eq!(s.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_wait_that_ends_or_is_dropped_leaves_no_count_behind() {
        let s = slots(64, 1);
        let hook = WebhookId::new();
        let held = s.take(hook).await.unwrap();
        assert!(
            s.take_within(hook, Duration::from_millis(50))
                .await
                .is_none()
        );
        assert_eq!(s.counts(), (1, 0));
        // Dropped mid-wait, as a handler is when its broker session ends.
        let dropped = tokio::time::timeout(Duration::from_millis(50), s.take(hook)).await;
        assert!(dropped.is_err());
        assert_eq!(s.counts(), (1, 0));
        drop(held);
        assert_eq!(s.counts(), (0, 0), "an idle webhook is forgotten");
    }

    #[tokio::test]
    async fn too_many_waiting_are_put_off_at_once() {
        // max_in_flight 8: all 8 may wait in all, a quarter or twice the share (2) per
        // webhook.
        let s = slots(8, 1);
        let hooks: Vec<WebhookId> = (0..5).map(|_| WebhookId::new()).collect();
        let _held: Vec<_> = futures_util::future::join_all(hooks.iter().map(|h| s.take(*h)))
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let wait = Duration::from_millis(300);
        let soon = Duration::from_millis(30);
        // Put off at once, or after the whole wait.
        let at_once = |took: Duration| took < Duration::from_millis(150);
        let s = &s;
        let probe = move |hook, after: Duration| async move {
            tokio::time::sleep(after).await;
            let started = tokio::time::Instant::now();
            let got = s.take_within(hook, wait).await;
            (got.is_none(), started.elapsed())
        };
        // Two wait for each of the first four webhooks, 8 in all: a third for the first is
        // put off at once (its own limit), and so is one for the fifth (the limit in all),
        // which has nobody waiting yet.
        let waiting = futures_util::future::join_all(
            hooks[..4]
                .iter()
                .flat_map(|h| [probe(*h, Duration::ZERO), probe(*h, Duration::ZERO)]),
        );
        let (waited, (third_off, third_took), (fifth_off, fifth_took)) =
            tokio::join!(waiting, probe(hooks[0], soon), probe(hooks[4], soon * 2));
        assert!(waited.iter().all(|(off, _)| *off), "nothing was given back");
        assert!(
            waited.iter().all(|(_, took)| !at_once(*took)),
            "each of the 8 waited its whole wait: {waited:?}"
        );
        assert!(third_off && fifth_off);
        assert!(
            at_once(third_took),
            "a third waiter for one webhook waited {third_took:?}"
        );
        assert!(
            at_once(fifth_took),
            "a ninth waiter in all waited {fifth_took:?}"
        );
        assert_eq!(s.counts(), (5, 0));
    }
}
