//! The budgets of a delivery process's attempts in flight: a fast lane and a slow lane.
//!
//! Every attempt starts with a permit of the fast lane (`delivery.max_in_flight`). One that
//! has not ended after `delivery.slow_after` (an endpoint that hangs, or answers slowly) moves
//! to the slow lane (`delivery.slow_lane_in_flight`) as soon as it has room there, and gives
//! its fast permit back: an endpoint that hangs until the timeout then holds a fast permit
//! for `slow_after`, not for the whole timeout, and healthy attempts keep the fast lane. When
//! the slow lane is full, a slow attempt keeps its fast permit until the slow lane has room
//! (or it ends), so attempts in flight never exceed the two budgets together.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{AcquireError, Semaphore, SemaphorePermit};

pub(crate) struct Lanes {
    fast: Semaphore,
    slow: Semaphore,
    slow_size: usize,
    slow_after: Duration,
}

/// One attempt's room in a lane, given back when dropped.
pub(crate) struct Permit<'a> {
    lanes: &'a Lanes,
    held: Held<'a>,
}

enum Held<'a> {
    Fast(#[allow(dead_code)] SemaphorePermit<'a>),
    Slow(#[allow(dead_code)] SemaphorePermit<'a>),
}

impl Lanes {
    pub fn new(fast: usize, slow: usize, slow_after: Duration) -> Self {
        // Exported from the start, so a dashboard shows an empty slow lane as 0.
        metrics::counter!("aioka_delivery_slow_lane_total").absolute(0);
        metrics::gauge!("aioka_delivery_slow_lane_in_flight").set(0.0);
        Self {
            fast: Semaphore::new(fast),
            slow: Semaphore::new(slow),
            slow_size: slow,
            slow_after,
        }
    }

    /// Room for one attempt in the fast lane, waiting for it.
    pub async fn acquire(&self) -> Result<Permit<'_>, AcquireError> {
        let permit = self.fast.acquire().await?;
        Ok(Permit {
            lanes: self,
            held: Held::Fast(permit),
        })
    }

    /// Runs `attempt` holding `permit`, moving it to the slow lane once it has run for
    /// `slow_after` and the slow lane has room.
    pub async fn run<'a, F: Future>(&'a self, permit: &mut Permit<'a>, attempt: F) -> F::Output {
        tokio::pin!(attempt);
        if matches!(permit.held, Held::Slow(_)) {
            return attempt.await;
        }
        tokio::select! {
            out = &mut attempt => return out,
            () = tokio::time::sleep(self.slow_after) => {}
        }
        tokio::select! {
            out = &mut attempt => return out,
            slow = self.slow.acquire() => {
                if let Ok(slow) = slow {
                    // The fast permit is given back here, as the old value is dropped.
                    permit.held = Held::Slow(slow);
                    metrics::counter!("aioka_delivery_slow_lane_total").increment(1);
                    self.gauge();
                }
            }
        }
        attempt.await
    }

    fn gauge(&self) {
        let taken = self.slow_size.saturating_sub(self.slow.available_permits());
        metrics::gauge!("aioka_delivery_slow_lane_in_flight").set(taken as f64);
    }

    #[cfg(test)]
    fn free(&self) -> (usize, usize) {
        (self.fast.available_permits(), self.slow.available_permits())
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if matches!(self.held, Held::Slow(_)) {
            // The permit itself is released after this body; count it as gone already.
            let taken =
                (self.lanes.slow_size - self.lanes.slow.available_permits()).saturating_sub(1);
            metrics::gauge!("aioka_delivery_slow_lane_in_flight").set(taken as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW_AFTER: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_ends_before_slow_after_keeps_its_fast_permit_to_the_end() {
        let lanes = Lanes::new(2, 2, SLOW_AFTER);
        let mut permit = lanes.acquire().await.unwrap();
        let out = lanes
            .run(&mut permit, async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                7
            })
            .await;
        assert_eq!(out, 7);
        assert_eq!(lanes.free(), (1, 2));
        drop(permit);
        assert_eq!(lanes.free(), (2, 2));
    }

    /// An attempt of `length` holding `permit`, which it gives back when it ends.
    async fn attempt(lanes: &Lanes, mut permit: Permit<'_>, length: Duration) {
        lanes.run(&mut permit, tokio::time::sleep(length)).await;
    }

    /// Lets `running` go on for `length`; it must not end meanwhile.
    async fn for_a_while(running: std::pin::Pin<&mut impl Future<Output = ()>>, length: Duration) {
        tokio::select! {
            () = running => panic!("ended early"),
            () = tokio::time::sleep(length) => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_gives_its_fast_permit_back_and_holds_a_slow_one_until_it_ends() {
        let lanes = Lanes::new(1, 1, SLOW_AFTER);
        let permit = lanes.acquire().await.unwrap();
        let hanging = attempt(&lanes, permit, Duration::from_secs(10));
        tokio::pin!(hanging);
        for_a_while(hanging.as_mut(), Duration::from_millis(150)).await;
        assert_eq!(lanes.free(), (1, 0), "moved to the slow lane");
        // The fast lane is free for a healthy attempt while the slow one hangs.
        let healthy = lanes.acquire().await.unwrap();
        drop(healthy);
        hanging.await;
        assert_eq!(lanes.free(), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_slow_lane_full_a_slow_attempt_keeps_its_fast_permit_until_there_is_room() {
        let lanes = Lanes::new(2, 1, SLOW_AFTER);
        let first = attempt(
            &lanes,
            lanes.acquire().await.unwrap(),
            Duration::from_secs(1),
        );
        let second = attempt(
            &lanes,
            lanes.acquire().await.unwrap(),
            Duration::from_secs(10),
        );
        tokio::pin!(first, second);
        let both = async {
            tokio::join!(
                for_a_while(first.as_mut(), Duration::from_millis(500)),
                for_a_while(second.as_mut(), Duration::from_millis(500)),
            )
        };
        both.await;
        // One moved, the other waits for the slow lane holding its fast permit.
        assert_eq!(lanes.free(), (1, 0));
        first.await;
        for_a_while(second.as_mut(), Duration::from_millis(10)).await;
        // The first ended and gave its slow permit back: the second took it and let go of
        // its fast one.
        assert_eq!(lanes.free(), (2, 0));
        second.await;
        assert_eq!(lanes.free(), (2, 1));
    }
}
