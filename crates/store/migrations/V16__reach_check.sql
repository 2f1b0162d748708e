-- The reach check (delivery's sweeper, `Store::check_reach`): an unordered webhook's first
-- attempt has no row until it is recorded, so a task the broker loses after confirming it
-- (a cluster node killed while it led the shard queue) left nothing that knew it was
-- missing. Some time after an event is fanned out, every webhook it was fanned out to must
-- have a delivery row; the check writes a pending one, already due, for each that has none,
-- and the retry sweep publishes it. `reach_checked` says the event was checked;
-- `reach_check_until` is the lease of the process checking it now.
--
-- Events stored before this migration count as checked (a fast default: no table rewrite);
-- new ones start unchecked. The index holds only the events waiting for the check, and
-- names no column that fan-out's progress writes change, so those stay HOT.
ALTER TABLE events ADD COLUMN reach_checked boolean NOT NULL DEFAULT true;
ALTER TABLE events ALTER COLUMN reach_checked SET DEFAULT false;
ALTER TABLE events ADD COLUMN reach_check_until timestamptz;
CREATE INDEX events_to_check_reach ON events (fanned_out_at)
    WHERE NOT reach_checked AND fanned_out_at IS NOT NULL;
