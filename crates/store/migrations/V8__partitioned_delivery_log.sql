-- A database that stays small: deliveries and their attempts are partitioned by the time their
-- event was received (RANGE on event_received_at), so the retention drops whole partitions
-- (DETACH ... CONCURRENTLY, then DROP TABLE: no DELETE storm, no dead tuples, no vacuum debt).
--
-- * The key is the event's received_at, not the row's own time: every writer of one delivery
--   reads it from the same event row, so the primary keys (which must include the partition
--   key) still deduplicate exactly, and an event, its deliveries and their attempts expire
--   together.
-- * events stays unpartitioned: idempotency by event id must hold over the whole retention,
--   which needs a unique index on id alone (a partitioned table's unique index must include
--   its key). Events are few beside deliveries; maintenance trims them in bounded batches,
--   through events_by_received_at.
-- * V3's decisions stand: no foreign keys, no unique index on seq, fillfactor 70 on every
--   partition of deliveries (a partitioned parent takes no storage parameters).
-- * seq stays an identity column of the parent (PostgreSQL 15 allows it on a partitioned
--   table; rows must be inserted through the parent, which every writer does) and continues
--   after the old sequence, so cursors and insertion order carry on.
--
-- This migration rewrites both tables in one transaction: plan for the time an
-- INSERT ... SELECT of every delivery and attempt takes, with the services stopped.
-- The partitions for the rows copied are one UTC day wide (the default
-- database.partition_interval); maintenance makes the others at the configured width, around
-- any that exist.

ALTER TABLE deliveries RENAME TO deliveries_v7;
ALTER TABLE deliveries_v7 RENAME CONSTRAINT deliveries_pkey TO deliveries_v7_pkey;
ALTER INDEX deliveries_by_webhook RENAME TO deliveries_v7_by_webhook;
ALTER SEQUENCE deliveries_seq_seq RENAME TO deliveries_v7_seq_seq;
ALTER TABLE delivery_attempts RENAME TO delivery_attempts_v7;
ALTER TABLE delivery_attempts_v7 RENAME CONSTRAINT delivery_attempts_pkey TO delivery_attempts_v7_pkey;

CREATE TABLE deliveries (
    id                 uuid NOT NULL,
    -- Insertion order, for "newest first" and cursor pagination (delivery ids are hashes).
    seq                bigint GENERATED ALWAYS AS IDENTITY,
    event_id           uuid NOT NULL,
    webhook_id         uuid NOT NULL,
    status             text NOT NULL
                       CONSTRAINT deliveries_status_check CHECK (status IN ('pending', 'succeeded', 'failed', 'skipped')),
    attempts           integer NOT NULL DEFAULT 0,
    last_attempt_at    timestamptz,
    next_attempt_at    timestamptz,
    skip_reason        text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- The partition key: events.received_at of event_id.
    event_received_at  timestamptz NOT NULL,
    PRIMARY KEY (id, event_received_at)
) PARTITION BY RANGE (event_received_at);

CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, seq DESC);

CREATE TABLE delivery_attempts (
    delivery_id        uuid NOT NULL,
    attempt            integer NOT NULL CONSTRAINT delivery_attempts_attempt_check CHECK (attempt >= 1),
    attempted_at       timestamptz NOT NULL,
    status_code        integer,
    -- timeout, connect, tls, dns, blocked_address, http_status, request
    error_kind         text,
    latency_ms         integer NOT NULL,
    response_snippet   text,
    next_retry_at      timestamptz,
    recorded_at        timestamptz DEFAULT clock_timestamp(),
    -- The partition key: its delivery's, so both expire together.
    event_received_at  timestamptz NOT NULL,
    PRIMARY KEY (delivery_id, attempt, event_received_at)
) PARTITION BY RANGE (event_received_at);

CREATE INDEX events_by_received_at ON events (received_at);

-- The key of each existing row. A delivery whose event is missing (none should be: events
-- were never deleted before this migration) takes its own created_at, so it is kept for the
-- retention from when it was made; an attempt takes its delivery's key (its own attempted_at
-- if even the delivery is missing).
CREATE TEMPORARY TABLE v8_delivery_keys ON COMMIT DROP AS
    SELECT d.id, COALESCE(e.received_at, d.created_at) AS k
    FROM deliveries_v7 d LEFT JOIN events e ON e.id = d.event_id;

-- One partition per UTC day that holds rows. The current and coming partitions, of the
-- configured width, are made by the maintenance `aioka migrate` runs next (until then a write
-- that finds no partition makes its own).
DO $$
DECLARE
    day timestamptz;
    parent text;
BEGIN
    FOR day IN
        SELECT date_trunc('day', k, 'UTC') FROM v8_delivery_keys
        UNION
        SELECT date_trunc('day', COALESCE(dk.k, a.attempted_at), 'UTC')
        FROM delivery_attempts_v7 a LEFT JOIN v8_delivery_keys dk ON dk.id = a.delivery_id
    LOOP
        FOREACH parent IN ARRAY ARRAY['deliveries', 'delivery_attempts'] LOOP
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)%s',
                parent || '_p' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS'),
                parent, day, day + interval '86400 seconds',
                CASE parent WHEN 'deliveries' THEN ' WITH (fillfactor = 70)' ELSE '' END);
        END LOOP;
    END LOOP;
END
$$;

INSERT INTO deliveries (id, seq, event_id, webhook_id, status, attempts, last_attempt_at,
                        next_attempt_at, skip_reason, created_at, updated_at, event_received_at)
OVERRIDING SYSTEM VALUE
SELECT d.id, d.seq, d.event_id, d.webhook_id, d.status, d.attempts, d.last_attempt_at,
       d.next_attempt_at, d.skip_reason, d.created_at, d.updated_at, dk.k
FROM deliveries_v7 d JOIN v8_delivery_keys dk ON dk.id = d.id;

INSERT INTO delivery_attempts (delivery_id, attempt, attempted_at, status_code, error_kind,
                               latency_ms, response_snippet, next_retry_at, recorded_at,
                               event_received_at)
SELECT a.delivery_id, a.attempt, a.attempted_at, a.status_code, a.error_kind, a.latency_ms,
       a.response_snippet, a.next_retry_at, a.recorded_at, COALESCE(dk.k, a.attempted_at)
FROM delivery_attempts_v7 a LEFT JOIN v8_delivery_keys dk ON dk.id = a.delivery_id;

-- seq continues after both the old sequence (values taken by inserts that conflicted or
-- rows removed since) and the rows copied.
SELECT setval(pg_get_serial_sequence('deliveries', 'seq'), v)
FROM (SELECT GREATEST(CASE WHEN s.is_called THEN s.last_value ELSE 0 END,
                      (SELECT COALESCE(max(seq), 0) FROM deliveries_v7)) AS v
      FROM deliveries_v7_seq_seq s) AS last
WHERE v > 0;

DROP TABLE delivery_attempts_v7;
DROP TABLE deliveries_v7;
