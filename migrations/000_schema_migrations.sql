-- The migration runner's bookkeeping: one row per applied file, written in the same transaction
-- as the file itself (eventbatch/db.py). It is a migration like any other, not a table code
-- creates at start, so that a role that may not CREATE starts against a migrated database.
-- IF NOT EXISTS: databases migrated before this file have the table already (the runner of
-- those releases created it), and for them this file changes nothing.
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
