-- API keys and webhooks: the customer API of the seed page.

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('customer', 'producer')),
    -- Customer keys have a tier; producer keys do not.
    tier        text CHECK (tier IN ('free', 'basic', 'pro', 'enterprise')),
    -- SHA-256 of the key. The key itself is never stored.
    key_hash    bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    -- The key's first characters, to tell keys apart in listings.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((kind = 'customer') = (tier IS NOT NULL))
);

CREATE TABLE webhooks (
    id                    uuid PRIMARY KEY,
    api_key_id            uuid NOT NULL REFERENCES api_keys (id),
    url                   text NOT NULL,
    events                text[] NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 5),
    -- AES-256-GCM of the whsec_ secret, bound to the webhook id (see aioka_core::secret).
    secret_sealed         bytea NOT NULL,
    is_active             boolean NOT NULL DEFAULT true,
    consecutive_failures  integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    disabled_reason       text,
    disabled_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- Deleted webhooks are kept (their deliveries stay referable) but never shown or sent to.
    deleted_at            timestamptz
);

CREATE INDEX webhooks_by_owner ON webhooks (api_key_id, id) WHERE deleted_at IS NULL;
