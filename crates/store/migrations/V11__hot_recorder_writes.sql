-- V10's partial index on pending rows named `status` in its predicate, and PostgreSQL counts
-- a predicate's columns as indexed: a record that moves a delivery row from `pending` could
-- no longer be a HOT update (V3 gave the log fillfactor 70 for those), so each such write
-- added an entry to every index of the log. Rows written pending ahead of their first
-- attempt (test events, whose rows the gateway creates) paid it on every first record;
-- measured in isolation (100 000 rows, batches of 200): 38 µs and 650 WAL bytes per update
-- with V10's index, 32 µs and 563 bytes with this one. The warm path does not see it: a
-- delivery's row is created by its first attempt's record.
--
-- The sweep's index now names only `next_attempt_at`, which is set exactly while a delivery
-- waits for a retry (a record that ends it, a skip and a cancel all clear it; a delivery not
-- yet tried has none). The sweep's `next_attempt_at < …` implies IS NOT NULL, so the planner
-- still uses it.
DROP INDEX deliveries_pending_due;
CREATE INDEX deliveries_retry_due ON deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
