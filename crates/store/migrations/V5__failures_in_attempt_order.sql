-- The consecutive-failure count follows the order attempts were made, not the order their
-- records were committed (several writers commit batches at once; see aioka_core::disable).
-- Each webhook keeps the start time of its latest counted success (or of its re-enabling)
-- and the start times of the failed attempts since; consecutive_failures is their number.
ALTER TABLE webhooks
    ADD COLUMN failures_counted_since timestamptz,
    ADD COLUMN failure_times timestamptz[] NOT NULL DEFAULT '{}';

-- Counts from before this migration have no times; keep the numbers.
UPDATE webhooks SET failure_times = array_fill(now(), ARRAY[consecutive_failures])
WHERE consecutive_failures > 0;
