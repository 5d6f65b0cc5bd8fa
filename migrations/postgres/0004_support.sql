-- Read model: tickets (folded state with the filter columns).
CREATE TABLE IF NOT EXISTS rm_tickets (
    tenant    TEXT   NOT NULL,
    id        TEXT   NOT NULL,
    status    TEXT   NOT NULL,
    assignee  TEXT   NOT NULL,
    requester TEXT   NOT NULL,
    priority  TEXT   NOT NULL,
    body      TEXT   NOT NULL,
    version   BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS rm_tickets_status_idx ON rm_tickets (tenant, status, id);
CREATE INDEX IF NOT EXISTS rm_tickets_assignee_idx ON rm_tickets (tenant, assignee, id);

-- Read model: inbox items, delivered by the inbox projector; `position` is
-- the causing event's log position (newest first in lists).
CREATE TABLE IF NOT EXISTS rm_inbox_items (
    tenant       TEXT   NOT NULL,
    id           TEXT   NOT NULL,
    recipient    TEXT   NOT NULL,
    severity     TEXT   NOT NULL,
    title        TEXT   NOT NULL,
    body         TEXT   NOT NULL,
    subject_type TEXT   NOT NULL,
    subject_id   TEXT   NOT NULL,
    state        TEXT   NOT NULL,
    created_at   TEXT   NOT NULL,
    position     BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS rm_inbox_items_recipient_idx ON rm_inbox_items (tenant, recipient, position);

-- The inbox projector's own lookup: which customer a subscription belongs to.
CREATE TABLE IF NOT EXISTS rm_inbox_customers (
    tenant          TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    PRIMARY KEY (tenant, subscription_id)
);
