-- The event log, shaped for sqlite-es (its seven columns) plus Tally's own.
-- SQLite has one writer at a time, so positions commit in order and a hole
-- (none are expected: AUTOINCREMENT rolls back with its transaction) is final.
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence >= 1),
    event_type     TEXT    NOT NULL,
    event_version  TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    event_id       TEXT    NOT NULL DEFAULT (lower(hex(randomblob(16)))),
    tenant         TEXT    NOT NULL DEFAULT '',
    recorded_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (aggregate_type, aggregate_id, sequence)
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id_idx ON events (event_id);
CREATE INDEX IF NOT EXISTS events_tenant_position_idx ON events (tenant, position);

CREATE TRIGGER IF NOT EXISTS events_refuse_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are immutable (UPDATE refused)'); END;
CREATE TRIGGER IF NOT EXISTS events_refuse_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are immutable (DELETE refused)'); END;

CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    last_sequence    INTEGER NOT NULL CHECK (last_sequence >= 0),
    current_snapshot INTEGER NOT NULL CHECK (current_snapshot >= 0),
    payload          TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
) STRICT;
