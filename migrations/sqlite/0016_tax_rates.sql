-- Read model: tax rates (folded state of the TaxRate aggregate), listed by
-- status. No tax rate existed before this table, so it starts empty.
CREATE TABLE IF NOT EXISTS rm_tax_rates (
    tenant     TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS rm_tax_rates_status_idx ON rm_tax_rates (tenant, status, id);
