//! Which delivery shard a webhook's tasks go to.
//!
//! Every task of one webhook goes to one shard, whoever publishes it (fanout, the gateway's
//! test events and re-sends, delivery's retries and put-off tasks), so they must all compute
//! the same answer from the webhook id and the shard count alone. The answer is Lamping and
//! Veach's jump consistent hash ("A Fast, Minimal Memory, Consistent Hash Algorithm", 2014)
//! of the id's last 8 bytes (big-endian): shards are even, and going from `n` to `n + 1`
//! shards moves only about `1 / (n + 1)` of the webhooks, all of them to the new shard.
//! `proto/amqp.md` states the same rule for anyone who publishes tasks.

use crate::WebhookId;

/// The largest shard count a deployment may set.
pub const MAX_SHARDS: u16 = 256;

/// The shard (`0..shards`) of `webhook`'s tasks. `shards` of 0 counts as 1.
pub fn shard_of(webhook: WebhookId, shards: u16) -> u16 {
    let bytes = webhook.as_uuid().into_bytes();
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[8..]);
    jump(u64::from_be_bytes(tail), shards.max(1))
}

/// Jump consistent hash: the bucket of `key` among `buckets`.
fn jump(mut key: u64, buckets: u16) -> u16 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // The paper's formula, in floating point as published: (b + 1) * 2^31 / ((key >> 33) + 1).
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        {
            j = ((b + 1) as f64 * (f64::from(1u32 << 31) / ((key >> 33) + 1) as f64)) as i64;
        }
    }
    u16::try_from(b).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    fn webhook(n: u128) -> WebhookId {
        WebhookId::from_uuid(Uuid::from_u128(n))
    }

    /// Pinned values, computed apart from this code (by a transcription of the paper's
    /// function in Python): a change of the rule would send a running system's retries to
    /// other shards than their first attempts, and `proto/amqp.md` would be wrong.
    #[test]
    fn the_rule_is_pinned() {
        let cases: [(u128, [u16; 5]); 4] = [
            (0x0193_2f3a_6b7c_7d8e_9f10_1112_1314_1516, [0, 0, 0, 0, 249]),
            (0x0193_2f3a_6b7c_7d8e_8000_0000_0000_0001, [1, 2, 3, 8, 73]),
            (0x0193_2f3a_6b7c_7d8e_bfff_ffff_ffff_ffff, [1, 1, 3, 3, 74]),
            (0x0193_2f3a_6b7c_7d8e_a5a5_5a5a_1234_5678, [0, 0, 4, 4, 4]),
        ];
        for (raw, want) in cases {
            let got = [2, 3, 6, 16, 256].map(|n| shard_of(webhook(raw), n));
            assert_eq!(got, want, "shards of {raw:#x} over 2, 3, 6, 16, 256");
        }
        assert_eq!(shard_of(webhook(cases[1].0), 1), 0);
        assert_eq!(shard_of(webhook(cases[1].0), 0), 0, "0 shards count as one");
    }

    #[test]
    fn shards_are_even() {
        let n = 6u16;
        let mut counts = vec![0u32; usize::from(n)];
        for _ in 0..60_000 {
            let id = WebhookId::from_uuid(Uuid::now_v7());
            counts[usize::from(shard_of(id, n))] += 1;
        }
        for c in counts {
            assert!(
                (9_000..11_000).contains(&c),
                "uneven shards: {c} of 60000 in one of 6"
            );
        }
    }

    proptest! {
        #[test]
        fn every_answer_is_a_shard(raw in any::<u128>(), n in 1u16..=MAX_SHARDS) {
            prop_assert!(shard_of(webhook(raw), n) < n);
        }

        /// Adding a shard moves a webhook only to the new shard.
        #[test]
        fn growing_moves_only_to_the_new_shard(raw in any::<u128>(), n in 1u16..MAX_SHARDS) {
            let (before, after) = (shard_of(webhook(raw), n), shard_of(webhook(raw), n + 1));
            prop_assert!(after == before || after == n);
        }
    }
}
