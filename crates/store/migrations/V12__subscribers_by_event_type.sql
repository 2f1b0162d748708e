-- Fan-out reads an event's subscribers a chunk at a time, in id order after a cursor:
-- `events @> ARRAY[type] AND id > cursor ORDER BY id LIMIT n`. With only the primary key
-- to walk, each chunk read the index from its start, filtering on the way: O(N) per chunk,
-- O(N²) per event (measured with 100 000 webhooks: 89 ms a chunk on average, 27 s of
-- PostgreSQL CPU for three bursts, the largest single cost of the run), and a rare event
-- type read the whole table for every event (100 ghost.signal subscribers among 100 000
-- webhooks). One partial index per event type holds that type's live subscribers in id
-- order, so a chunk reads its own rows and no others. The query names the type as a
-- constant (the planner matches a partial index's predicate only against one) and the
-- cursor as `id > $n` alone (an `IS NULL OR` around it kept the index from bounding the
-- scan in generic plans).
--
-- The predicates name `events` and `deleted_at`, which the recorder's failure-count
-- updates never change, so those stay HOT-eligible.
CREATE INDEX webhooks_subscribed_verdict_new ON webhooks (id)
    WHERE events @> ARRAY['verdict.new']::text[] AND deleted_at IS NULL;
CREATE INDEX webhooks_subscribed_council_new ON webhooks (id)
    WHERE events @> ARRAY['council.new']::text[] AND deleted_at IS NULL;
CREATE INDEX webhooks_subscribed_regime_change ON webhooks (id)
    WHERE events @> ARRAY['regime.change']::text[] AND deleted_at IS NULL;
CREATE INDEX webhooks_subscribed_ghost_signal ON webhooks (id)
    WHERE events @> ARRAY['ghost.signal']::text[] AND deleted_at IS NULL;
CREATE INDEX webhooks_subscribed_macro_alert ON webhooks (id)
    WHERE events @> ARRAY['macro.alert']::text[] AND deleted_at IS NULL;
