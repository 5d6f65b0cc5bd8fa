-- Payment providers a tenant's admin configured (issue 18). Configuration,
-- not a read model: named payment_…, never rebuilt. The provider's webhook
-- secret and API token are the tenant's, so they cannot be derived like
-- webhook secrets: they are stored sealed (AES-256-GCM under a key derived
-- from the server key `secret_key_id` names; commands/src/secrets.rs), never
-- in clear. `token` is the random last segment of the inbound URL.
CREATE TABLE IF NOT EXISTS payment_providers (
    tenant         TEXT NOT NULL,
    provider       TEXT NOT NULL,
    token          TEXT NOT NULL,
    webhook_secret TEXT NOT NULL,
    access_token   TEXT NOT NULL,
    secret_key_id  TEXT NOT NULL,
    api_base_url   TEXT NOT NULL,
    configured_by  TEXT NOT NULL,
    configured_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, provider)
);
CREATE UNIQUE INDEX IF NOT EXISTS payment_providers_token_idx ON payment_providers (provider, token);
