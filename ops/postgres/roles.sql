-- Run once by the postgres image when it initialises its volume (docker-entrypoint-initdb.d),
-- as POSTGRES_USER: `eventbatch`, the schema owner, whom only `eventbatch migrate` uses.
-- api and worker log in as eventbatch_app, to which migrations/004 grants rows only: it cannot
-- disable, drop or replace the log's triggers (SPEC §14). Use real passwords outside a demo.
CREATE ROLE eventbatch_app LOGIN PASSWORD 'eventbatch_app';
