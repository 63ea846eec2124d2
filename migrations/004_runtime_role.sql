-- Least privilege (SPEC §14). Two roles: the schema owner, who runs `eventbatch migrate` and
-- owns every table, trigger and function; and eventbatch_app, the role `serve`, `api` and
-- `worker` can run as. eventbatch_app reads and writes rows and nothing more: it owns nothing,
-- so it cannot ALTER, DROP or DISABLE the log's triggers, nor replace their function (all of
-- which take ownership), and it is no superuser, so it cannot SET session_replication_role
-- either. On the log itself it may only SELECT and INSERT.
--
-- Log in as eventbatch_app (ALTER ROLE eventbatch_app LOGIN PASSWORD '…') or make login roles
-- members of it (CREATE ROLE api LOGIN PASSWORD '…' IN ROLE eventbatch_app). Roles belong to
-- the whole cluster: databases of one cluster share it, each with its own grants.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eventbatch_app') THEN
        CREATE ROLE eventbatch_app NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;   -- a migration of another database of the cluster made it at the same moment
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'the role eventbatch_app does not exist and % may not create it', current_user
            USING HINT = 'Have a role with CREATEROLE run "CREATE ROLE eventbatch_app NOLOGIN", '
                         'then run eventbatch migrate again.';
END
$$;

DO $$
DECLARE
    here text := quote_ident(current_schema());
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA ' || here || ' TO eventbatch_app';
    -- Rows only: no TRUNCATE, REFERENCES or TRIGGER, and never ownership.
    EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ' || here || ' TO eventbatch_app';
    EXECUTE 'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ' || here || ' TO eventbatch_app';
    -- Tables of later migrations (run by this same owner) get the same, whatever their number.
    -- A later table that must be append-only revokes UPDATE and DELETE itself, as below.
    EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA ' || here
         || ' GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO eventbatch_app';
    EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA ' || here
         || ' GRANT USAGE, SELECT ON SEQUENCES TO eventbatch_app';
END
$$;

-- The log: read and append, nothing else (its triggers refuse UPDATE, DELETE and TRUNCATE even
-- to the owner; without the privilege the app role is refused before they run).
REVOKE UPDATE, DELETE ON events FROM eventbatch_app;
-- The migrations' bookkeeping: the app role reads it (is anything pending?), never writes it.
REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM eventbatch_app;
