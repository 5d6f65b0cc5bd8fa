-- PostgreSQL compresses read-model bodies with lz4 from here on
-- (migrations/postgres/0010_lz4_bodies.sql); SQLite does not compress them.
SELECT 1;
