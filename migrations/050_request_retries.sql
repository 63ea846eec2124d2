-- Requests waiting for their next attempt, kept in the database rather than in a worker's
-- memory (river reschedules a job the same way): a request that waits minutes for a retry, or
-- for its paused provider, holds neither a lease nor a concurrency slot, and the attempts it made
-- so far survive the lease changing hands.

-- A chunk whose requests wait is given back held by nobody until the earliest of them is due:
-- lease_owner NULL and lease_expires_at then (every claim already skips a chunk before its
-- lease_expires_at, whoever holds it), so nothing about claiming changes.
-- Times its lines could not be read back from storage: after a few the chunk's requests get a
-- terminal outcome instead of another claim (a poison chunk must not loop or block its batch).
ALTER TABLE work_chunks ADD COLUMN read_failures integer NOT NULL DEFAULT 0;

CREATE TABLE request_retries (
    batch_id        text        NOT NULL,
    request_index   integer     NOT NULL,
    attempts        bytea       NOT NULL,   -- msgspec JSON list of events.Attempt, carried into the outcome event
    counted         integer     NOT NULL,   -- of those, the ones EVENTBATCH_MAX_ATTEMPTS counts
    next_attempt_at timestamptz NOT NULL,
    PRIMARY KEY (batch_id, request_index)
);
