-- A revoked key stops authenticating; the row stays (its id is in the log's
-- metadata of everything it did). The KeyRevoked event on the key's stream
-- records who revoked it; `tally keys list` and `GET /v1/keys` show it.
ALTER TABLE api_keys ADD COLUMN revoked_at TEXT;
