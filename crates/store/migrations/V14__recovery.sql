-- Recovery after an outage (POST /v1/webhooks/{id}/recover): when a disabled webhook was last
-- enabled again. Fan-out sends nothing to a disabled webhook, so an event it never got is one
-- accepted before this moment; one accepted after it was fanned out to the webhook, active
-- again, and a recovery must not send it a second time. NULL: never re-enabled.
ALTER TABLE webhooks ADD COLUMN enabled_at timestamptz;
