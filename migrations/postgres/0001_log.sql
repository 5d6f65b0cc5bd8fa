-- The event log, shaped for postgres-es (its seven columns) plus Tally's own:
-- a global position, the writing transaction's id (see ARCHITECTURE.md, "the
-- log's guarantees", point 1), the event id, the tenant and the recording time.
CREATE SEQUENCE IF NOT EXISTS events_position_seq AS bigint CACHE 1;

CREATE TABLE IF NOT EXISTS events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    payload        json        NOT NULL,
    metadata       json        NOT NULL,
    position       bigint      NOT NULL,
    txid           xid8        NOT NULL,
    event_id       text        NOT NULL DEFAULT (gen_random_uuid()::text),
    tenant         text        NOT NULL DEFAULT '',
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE UNIQUE INDEX IF NOT EXISTS events_position_idx ON events (position);
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id_idx ON events (event_id);
CREATE INDEX IF NOT EXISTS events_tenant_position_idx ON events (tenant, position);

-- Position allocation. The transaction id is taken *before* the position, so
-- a transaction holding a position already had its id when any higher
-- position was taken. The reader (projections/src/log.rs) relies on this to
-- decide when a hole in the positions is final.
CREATE OR REPLACE FUNCTION events_assign_position() RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    NEW.txid := pg_current_xact_id();
    NEW.position := nextval('events_position_seq');
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS events_assign_position ON events;
CREATE TRIGGER events_assign_position BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_assign_position();

-- Events are immutable: the log refuses updates and deletes.
CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable (% refused)', TG_OP;
END
$$;
DROP TRIGGER IF EXISTS events_refuse_change ON events;
CREATE TRIGGER events_refuse_change BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
