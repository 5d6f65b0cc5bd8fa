-- Read model: usage records (one row per record) and totals per
-- (subscription, meter, window). Quantities are decimal text.
CREATE TABLE IF NOT EXISTS rm_usage_records (
    tenant          TEXT   NOT NULL,
    id              TEXT   NOT NULL,
    transaction_id  TEXT   NOT NULL,
    subscription_id TEXT   NOT NULL,
    meter           TEXT   NOT NULL,
    ts              TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    version         BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS rm_usage_records_sub_idx ON rm_usage_records (tenant, subscription_id, ts, id);

CREATE TABLE IF NOT EXISTS rm_usage_totals (
    tenant          TEXT   NOT NULL,
    subscription_id TEXT   NOT NULL,
    meter           TEXT   NOT NULL,
    window_start    TEXT   NOT NULL,
    window_end      TEXT,
    total           TEXT   NOT NULL,
    record_count    BIGINT NOT NULL,
    PRIMARY KEY (tenant, subscription_id, meter, window_start)
);
