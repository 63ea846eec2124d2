-- The database's own bookkeeping: migrations, probes.

-- migration_lock --
-- Serialises migration runs of processes that start together (any constant will do).
SELECT pg_advisory_lock(7311450001)

-- migration_unlock --
SELECT pg_advisory_unlock(7311450001)

-- migration_table_exists --
-- The table is made by migrations/000_schema_migrations.sql: before that, nothing is applied.
SELECT to_regclass('schema_migrations') IS NOT NULL

-- migration_applied --
SELECT name FROM schema_migrations

-- migration_record --
INSERT INTO schema_migrations (name) VALUES ($1)

-- database_ping --
SELECT 1
