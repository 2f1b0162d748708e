-- Ordered delivery, opt-in per webhook ("ordering": "fifo"): one delivery at a time, in the
-- order the events were accepted (events.received_at, then id), a failing one holding those
-- behind it until it succeeds or exhausts its retries.
ALTER TABLE webhooks
    ADD COLUMN ordering text NOT NULL DEFAULT 'unordered'
        CONSTRAINT webhooks_ordering_check CHECK (ordering IN ('unordered', 'fifo'));

-- When the gateway accepted an event (its clock, as the event's message says), for an
-- event that came through it; NULL otherwise (published straight to the broker), when the
-- event's order is when fan-out stored it (received_at). received_at stays the partition key
-- of the log: the time a row was stored, whoever wrote it.
ALTER TABLE events ADD COLUMN accepted_at timestamptz;

-- The line of each ordered webhook: its deliveries waiting or in progress, in the order their
-- events were accepted (accepted_at, or received_at; then the event id). Fan-out adds an
-- entry with the delivery's row (written pending before its task is published); the head's
-- end removes it (an entry left behind by a crash names a delivery no longer pending and is
-- ignored, then removed). A table of its own, not a partial index on deliveries: an index
-- whose predicate names `status` would make every record of a pending delivery a non-HOT
-- update (V11 removed one for that reason).
CREATE TABLE fifo_line (
    webhook_id         uuid NOT NULL,
    accepted_at        timestamptz NOT NULL,
    event_id           uuid NOT NULL,
    delivery_id        uuid NOT NULL,
    event_received_at  timestamptz NOT NULL,
    PRIMARY KEY (webhook_id, accepted_at, event_id)
);
CREATE INDEX fifo_line_by_delivery ON fifo_line (delivery_id);

-- A fifo delivery also waits while an earlier event has not been fanned out past it yet: the
-- events being fanned out, few at any moment.
CREATE INDEX events_being_fanned_out ON events (received_at) WHERE fanned_out_at IS NULL;

-- The delivery service caches the order with the webhook.
DROP TRIGGER webhooks_changed ON webhooks;
CREATE TRIGGER webhooks_changed
    AFTER UPDATE ON webhooks
    FOR EACH ROW
    WHEN (OLD.url IS DISTINCT FROM NEW.url
          OR OLD.events IS DISTINCT FROM NEW.events
          OR OLD.is_active IS DISTINCT FROM NEW.is_active
          OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
          OR OLD.secret_sealed IS DISTINCT FROM NEW.secret_sealed
          OR OLD.previous_secret_sealed IS DISTINCT FROM NEW.previous_secret_sealed
          OR OLD.previous_secret_expires_at IS DISTINCT FROM NEW.previous_secret_expires_at
          OR OLD.ordering IS DISTINCT FROM NEW.ordering)
    EXECUTE FUNCTION aioka_notify_webhook_change();
