-- Events are immutable: TRUNCATE skips the row triggers of 0001 that refuse
-- UPDATE and DELETE, so a statement-level trigger refuses it too.
DROP TRIGGER IF EXISTS events_refuse_truncate ON events;
CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
