-- Revoking a key or moving it to the Free tier stops its deliveries, queued and retried ones
-- included: delivery processes cache each webhook's state with its key's, so a change of the
-- key tells them to drop every webhook of that key.
CREATE FUNCTION aioka_notify_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('aioka_webhook_changed', w.id::text)
    FROM webhooks w WHERE w.api_key_id = NEW.id;
    RETURN NEW;
END
$$;

CREATE TRIGGER api_keys_changed
    AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.tier IS DISTINCT FROM NEW.tier)
    EXECUTE FUNCTION aioka_notify_key_change();
