-- The schedulers (quota resume, collections) scan subscriptions of every
-- tenant by status; the (tenant, status, id) index cannot serve a scan
-- without a tenant, so each tick read the whole table.
CREATE INDEX IF NOT EXISTS rm_subscriptions_status_all_idx ON rm_subscriptions (status, tenant, id);
