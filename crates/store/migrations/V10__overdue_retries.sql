-- Retries the broker never handed back. A retry waits in a TTL queue that dead-letters it back
-- to its shard; RabbitMQ's at-least-once dead-lettering can still strand or drop it when the
-- queue's leader moves while it waits (seen in the cluster chaos rows: a delivery pending
-- after attempt 1 whose attempt 2 never came). The delivery service sweeps pending deliveries
-- whose next attempt is long overdue and publishes that attempt again (claimed like any
-- retry, so a late original is never sent a second time). This partial index holds only
-- pending rows: first attempts that succeed never enter it.
CREATE INDEX deliveries_pending_due ON deliveries (next_attempt_at) WHERE status = 'pending';

-- The attempt the sweep last published again: each attempt is published again once, and once
-- more only if it is still missing ten sweep periods later, so a backlog that merely holds a
-- retry late never multiplies it. NULL: none.
ALTER TABLE deliveries ADD COLUMN swept_attempt integer;

-- The attempt that began the delivery's current series (a manual re-send starts one), so a
-- swept retry is counted against the schedule as the original would be. NULL: 1. Only the
-- re-send writes it; nullable without a default, so adding it rewrites no partition.
ALTER TABLE deliveries ADD COLUMN series_start integer;
