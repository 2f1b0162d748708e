-- The event pipeline: events stored once, one delivery per (event, webhook), every attempt.

CREATE TABLE events (
    id             uuid PRIMARY KEY,
    event_type     text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    -- The envelope bytes sent to every receiver, unchanged on every attempt.
    body           text NOT NULL,
    source         text NOT NULL CHECK (source IN ('http', 'amqp', 'test')),
    received_at    timestamptz NOT NULL DEFAULT now(),
    -- Fan-out progress: tasks for subscribed webhooks with id <= cursor are confirmed.
    fanout_cursor  uuid,
    fanout_tasks   bigint NOT NULL DEFAULT 0,
    -- A fanout worker's claim, renewed each step; another worker takes over when it lapses.
    fanout_lease_until timestamptz,
    fanned_out_at  timestamptz
);

CREATE TABLE deliveries (
    id               uuid PRIMARY KEY,
    -- Insertion order, for "newest first" and cursor pagination (delivery ids are hashes).
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    event_id         uuid NOT NULL REFERENCES events (id),
    webhook_id       uuid NOT NULL REFERENCES webhooks (id),
    status           text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'skipped')),
    attempts         integer NOT NULL DEFAULT 0,
    last_attempt_at  timestamptz,
    next_attempt_at  timestamptz,
    skip_reason      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, seq DESC);

CREATE TABLE delivery_attempts (
    delivery_id      uuid NOT NULL REFERENCES deliveries (id),
    attempt          integer NOT NULL CHECK (attempt >= 1),
    attempted_at     timestamptz NOT NULL,
    status_code      integer,
    -- timeout, connect, tls, dns, blocked_address, http_status, request
    error_kind       text,
    latency_ms       integer NOT NULL,
    response_snippet text,
    next_retry_at    timestamptz,
    PRIMARY KEY (delivery_id, attempt)
);

-- Delivery processes cache url, secret and state per webhook; this tells them when to drop
-- an entry. Failure counts change on every attempt and are not cached, so they notify nothing.
CREATE FUNCTION aioka_notify_webhook_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('aioka_webhook_changed', NEW.id::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER webhooks_changed
    AFTER UPDATE ON webhooks
    FOR EACH ROW
    WHEN (OLD.url IS DISTINCT FROM NEW.url
          OR OLD.events IS DISTINCT FROM NEW.events
          OR OLD.is_active IS DISTINCT FROM NEW.is_active
          OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
          OR OLD.secret_sealed IS DISTINCT FROM NEW.secret_sealed)
    EXECUTE FUNCTION aioka_notify_webhook_change();
