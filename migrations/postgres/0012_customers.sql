-- Read model: customers (folded state of the Customer aggregate), listed by
-- email. No customer existed before this table, so it starts empty.
CREATE TABLE IF NOT EXISTS rm_customers (
    tenant     TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    email      TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS rm_customers_email_idx ON rm_customers (tenant, email, id);
