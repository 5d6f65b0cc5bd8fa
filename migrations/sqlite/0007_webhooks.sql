-- Webhooks: the endpoints a tenant's admin registered, one delivery per
-- (endpoint, event, topic) made by the fan-out consumer, and every attempt to
-- deliver it. Portable types only (text and bigint); the same file for both
-- backends; times are fixed-width RFC 3339 UTC text ('' when unset), so they
-- sort as text.
--
-- These are not read models: endpoints are configuration, and deliveries
-- record what receivers answered, which no replay of the log can reproduce.
-- So they are named webhook_…, not rm_…, and no rebuild empties them.

-- No signing secret is stored: it is derived from a server key and the
-- endpoint's salt (commands/src/webhooks.rs), `secret_key_id` names which key.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    tenant           TEXT   NOT NULL,
    id               TEXT   NOT NULL,
    url              TEXT   NOT NULL,
    topics           TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    secret_salt      TEXT   NOT NULL,
    secret_key_id    TEXT   NOT NULL,
    created_by       TEXT   NOT NULL,
    created_at       TEXT   NOT NULL,
    created_position BIGINT NOT NULL,
    failing_since    TEXT   NOT NULL DEFAULT '',
    disabled_at      TEXT   NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_status_idx ON webhook_endpoints (tenant, status);

-- One row per (endpoint, event, topic): the fan-out consumer inserts with ON
-- CONFLICT DO NOTHING in its checkpoint transaction, so a replayed batch adds
-- nothing. `body` is the envelope as sent, the same bytes on every attempt.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               TEXT   NOT NULL PRIMARY KEY,
    tenant           TEXT   NOT NULL,
    endpoint_id      TEXT   NOT NULL,
    event_id         TEXT   NOT NULL,
    topic            TEXT   NOT NULL,
    subject          TEXT   NOT NULL,
    position         BIGINT NOT NULL,
    ordinal          BIGINT NOT NULL,
    body             TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    attempts_left    BIGINT NOT NULL,
    last_status_code BIGINT,
    last_latency_ms  BIGINT,
    last_error       TEXT,
    last_attempt_at  TEXT   NOT NULL DEFAULT '',
    next_attempt_at  TEXT   NOT NULL DEFAULT '',
    delivered_at     TEXT   NOT NULL DEFAULT '',
    created_at       TEXT   NOT NULL,
    lease_owner      TEXT   NOT NULL DEFAULT '',
    leased_until     TEXT   NOT NULL DEFAULT '',
    UNIQUE (endpoint_id, event_id, topic)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_subject_idx ON webhook_deliveries (endpoint_id, subject, status, position);
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint_idx ON webhook_deliveries (tenant, endpoint_id, id);
CREATE INDEX IF NOT EXISTS webhook_deliveries_created_idx ON webhook_deliveries (status, created_at);

-- The delivery log: one row per attempt that got an outcome.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id  TEXT   NOT NULL,
    attempt      BIGINT NOT NULL,
    tenant       TEXT   NOT NULL,
    attempted_at TEXT   NOT NULL,
    status_code  BIGINT,
    latency_ms   BIGINT NOT NULL,
    outcome      TEXT   NOT NULL,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

-- The signing key used when TALLY_SECRET_KEY is not set (one row, id 'db').
CREATE TABLE IF NOT EXISTS webhook_signing_keys (
    id         TEXT NOT NULL PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
