-- The delivery write path, tuned with scripts/bench: at 5 000 deliveries/s PostgreSQL was the
-- largest CPU consumer of the whole system (about 140 µs per delivery).
--
-- * seq needs no unique index of its own: an identity column is unique by construction, and
--   the log reads it through deliveries_by_webhook.
-- * Foreign keys from deliveries and attempts run a trigger per row. Every writer already
--   guarantees them: fan-out inserts deliveries of stored events and existing webhooks, the
--   recorder inserts only where the event, webhook and delivery exist, and events and
--   webhooks are never deleted (webhooks are soft-deleted; an unpublished test event is
--   removed with its deliveries in one transaction).
-- * Spare room in each page lets the recorder's status updates be HOT updates, which touch
--   no index.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_seq_key;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_webhook_id_fkey;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_delivery_id_fkey;
ALTER TABLE deliveries SET (fillfactor = 70);
