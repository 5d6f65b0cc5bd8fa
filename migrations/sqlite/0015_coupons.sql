-- Read model: coupons (folded state of the Coupon aggregate), listed by code
-- and status. No coupon existed before this table, so it starts empty.
CREATE TABLE IF NOT EXISTS rm_coupons (
    tenant     TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    code       TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS rm_coupons_code_idx ON rm_coupons (tenant, code, id);
CREATE INDEX IF NOT EXISTS rm_coupons_status_idx ON rm_coupons (tenant, status, id);
