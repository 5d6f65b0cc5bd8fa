-- Invoices, the customer balance journal, and what the billing scheduler
-- scans. Portable types only (text and bigint); the same file for both
-- backends. Amounts are decimal text at the currency's minor-unit scale;
-- times are fixed-width RFC 3339 UTC text, so they sort as text.

-- Read model: invoices (folded state with lines and payments, plus the
-- columns lists and the collections scan filter on; `due_at` is '' until issued).
CREATE TABLE IF NOT EXISTS rm_invoices (
    tenant          TEXT   NOT NULL,
    id              TEXT   NOT NULL,
    customer_id     TEXT   NOT NULL,
    subscription_id TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    number          TEXT   NOT NULL,
    due_at          TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    version         BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS rm_invoices_status_idx ON rm_invoices (tenant, status, id);
CREATE INDEX IF NOT EXISTS rm_invoices_customer_idx ON rm_invoices (tenant, customer_id, id);
CREATE INDEX IF NOT EXISTS rm_invoices_subscription_idx ON rm_invoices (tenant, subscription_id, id);
CREATE INDEX IF NOT EXISTS rm_invoices_due_idx ON rm_invoices (status, due_at);

-- Read model: the accounts-receivable journal, double entry. Every invoice
-- event that moves money writes one debit row and one credit row of the same
-- amount, keyed by the event, so debits equal credits at all times.
CREATE TABLE IF NOT EXISTS rm_journal (
    tenant      TEXT   NOT NULL,
    event_id    TEXT   NOT NULL,
    leg         TEXT   NOT NULL,
    position    BIGINT NOT NULL,
    customer_id TEXT   NOT NULL,
    currency    TEXT   NOT NULL,
    invoice_id  TEXT   NOT NULL,
    account     TEXT   NOT NULL,
    debit       TEXT   NOT NULL,
    credit      TEXT   NOT NULL,
    recorded_at TEXT   NOT NULL,
    PRIMARY KEY (tenant, event_id, leg)
);
CREATE INDEX IF NOT EXISTS rm_journal_customer_idx ON rm_journal (tenant, customer_id, position);

-- Read model: balance per customer and currency, folded from the journal.
CREATE TABLE IF NOT EXISTS rm_balances (
    tenant      TEXT   NOT NULL,
    customer_id TEXT   NOT NULL,
    currency    TEXT   NOT NULL,
    body        TEXT   NOT NULL,
    PRIMARY KEY (tenant, customer_id, currency)
);

-- The billing scheduler looks for subscriptions whose period has ended.
ALTER TABLE rm_subscriptions ADD COLUMN period_end TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS rm_subscriptions_period_end_idx ON rm_subscriptions (period_end);
-- The new column is derived from events: rebuild the subscription read model.
DELETE FROM rm_subscriptions;
UPDATE consumer_checkpoints SET position = 0 WHERE name = 'subscriptions';
