-- The event log: the one source of truth. Every view is a projection of it.
--
-- (stream, version) is unique, so two writers that read the same stream version and both
-- try to append get a unique violation instead of a silent lost update (optimistic
-- concurrency). Batch-level transitions live in stream 'batch-<id>'; each request's
-- terminal outcome lives in its own stream 'batch-<id>/<index>' at version 1, so the
-- constraint also makes "exactly one terminal outcome per request" a database fact while
-- many workers record outcomes of one batch at once without contending on one counter.
CREATE TABLE events (
    position      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream        text        NOT NULL,
    version       integer     NOT NULL CHECK (version > 0),
    type          text        NOT NULL,
    data          bytea       NOT NULL,   -- msgspec-encoded JSON of the event Struct
    batch_id      text,                   -- every event of a batch, for replay and the SSE feed
    request_index integer,                -- set on request outcome events only
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_stream_version UNIQUE (stream, version)
);

CREATE INDEX events_by_batch ON events (batch_id, position) WHERE batch_id IS NOT NULL;
CREATE UNIQUE INDEX events_one_outcome_per_request
    ON events (batch_id, request_index) WHERE request_index IS NOT NULL;

-- Append-only at the database, not by convention.
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_refuse_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_refuse_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
