-- Tables shared by both backends (portable types only: text and bigint).
-- Times are RFC 3339 UTC text with a fixed width, so they sort as text.

-- One row per named consumer (projector or policy): how far it has read the log.
CREATE TABLE IF NOT EXISTS consumer_checkpoints (
    name       TEXT   NOT NULL PRIMARY KEY,
    position   BIGINT NOT NULL,
    status     TEXT   NOT NULL,
    updated_at TEXT   NOT NULL
);

CREATE TABLE IF NOT EXISTS tenants (
    id         TEXT NOT NULL PRIMARY KEY,
    created_at TEXT NOT NULL
);

-- API keys are stored as the SHA-256 of the key; the key itself is shown once.
CREATE TABLE IF NOT EXISTS api_keys (
    id         TEXT NOT NULL PRIMARY KEY,
    tenant     TEXT NOT NULL REFERENCES tenants (id),
    role       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

-- Idempotency-Key records: reserved before the command runs, completed with
-- the response it produced.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant          TEXT   NOT NULL,
    idem_key        TEXT   NOT NULL,
    request_hash    TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    response_status BIGINT,
    response_body   TEXT,
    response_headers TEXT,
    created_at      TEXT   NOT NULL,
    PRIMARY KEY (tenant, idem_key)
);

-- Read model: plans. `body` is the folded plan state (JSON text).
CREATE TABLE IF NOT EXISTS rm_plans (
    tenant     TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    code       TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- Read model: subscriptions.
CREATE TABLE IF NOT EXISTS rm_subscriptions (
    tenant      TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    customer_id TEXT   NOT NULL,
    plan_id     TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    body        TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS rm_subscriptions_status_idx ON rm_subscriptions (tenant, status, id);
CREATE INDEX IF NOT EXISTS rm_subscriptions_customer_idx ON rm_subscriptions (tenant, customer_id, id);
