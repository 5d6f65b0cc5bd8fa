-- The sealer's hash chain (projections/src/seal.rs): one link per sealed
-- event, in global position order, where a link is
-- hex(SHA-256(previous link ‖ the event's canonical bytes)). Portable types
-- only; the same file for both backends.
--
-- Not a read model (hence no `rm_` prefix): it is never rebuilt, because
-- resealing from position 0 would bless whatever the log holds by then.
CREATE TABLE IF NOT EXISTS audit_chain (
    position BIGINT PRIMARY KEY,
    hash     TEXT   NOT NULL
);
