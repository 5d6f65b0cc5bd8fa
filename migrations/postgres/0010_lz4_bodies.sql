-- Read-model bodies are JSON that PostgreSQL compresses once past 2 kB (a
-- subscription collects its pending prorations in its body). pglz took a
-- tenth of the database's CPU under the change-seats load; lz4 compresses
-- several times faster. Existing values keep their compression; the shadow
-- tables of a rebuild copy the setting (LIKE … INCLUDING ALL). A server
-- built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE rm_plans ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE rm_subscriptions ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE rm_usage_records ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE rm_tickets ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE rm_inbox_items ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE rm_invoices ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE rm_balances ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
