-- The database's own bookkeeping: migrations, probes.

-- migration_lock --
-- Serialises migration runs of processes that start together (any constant will do).
SELECT pg_advisory_lock(7311450001)

-- migration_unlock --
SELECT pg_advisory_unlock(7311450001)

-- migration_table_exists --
-- The table is made by migrations/000_schema_migrations.sql: before that, nothing is applied.
SELECT to_regclass('schema_migrations') IS NOT NULL

-- migration_may_apply --
-- Whether this role may apply migrations: it owns the bookkeeping table (or is superuser), or,
-- before migrations/000, may create tables here. eventbatch_app (migrations/004) may not.
SELECT CASE WHEN to_regclass('schema_migrations') IS NULL
            THEN coalesce(has_schema_privilege(current_schema(), 'CREATE'), false)
            ELSE pg_has_role(current_user,
                             (SELECT relowner FROM pg_class WHERE oid = 'schema_migrations'::regclass), 'USAGE')
       END

-- app_role_may_login --
-- The embedded server's runtime role (migrations/004 makes it NOLOGIN).
SELECT rolcanlogin FROM pg_roles WHERE rolname = 'eventbatch_app'

-- app_role_allow_login --
-- The embedded server trusts its Unix socket (initdb --auth=trust, no TCP): no password.
ALTER ROLE eventbatch_app LOGIN

-- migration_applied --
SELECT name FROM schema_migrations

-- migration_record --
INSERT INTO schema_migrations (name) VALUES ($1)

-- database_ping --
SELECT 1
