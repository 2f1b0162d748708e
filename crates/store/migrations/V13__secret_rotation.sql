-- Secret rotation with overlap (POST /v1/webhooks/{id}/secret/rotate): the secret being
-- replaced is kept, sealed like the current one (bound to the webhook's id), until the
-- overlap ends. While it lasts, deliveries carry a Standard Webhooks signature of each
-- secret and X-AIOKA-Signature keeps the old one, so a receiver holding either verifies.
-- Rotating again during an overlap replaces the kept secret with the one being replaced.
ALTER TABLE webhooks
    ADD COLUMN previous_secret_sealed bytea,
    ADD COLUMN previous_secret_expires_at timestamptz;

-- The delivery service caches both secrets: a change of either notifies it.
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
          OR OLD.previous_secret_expires_at IS DISTINCT FROM NEW.previous_secret_expires_at)
    EXECUTE FUNCTION aioka_notify_webhook_change();
