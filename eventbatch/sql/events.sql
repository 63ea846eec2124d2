-- The event log (table `events`, migrations/001): appends and reads.
--
-- Ordering: every append that touches a batch first locks that batch's view row
-- (batch_view_lock), so the events of one batch get positions in commit order and a reader that
-- follows one batch by position (replay, the SSE feed) never skips one.

-- event_append --
-- Batch- and file-level events at consecutive versions of one stream; the unique
-- (stream, version) constraint turns a concurrent writer into a conflict, not a lost update.
INSERT INTO events (stream, version, type, data, size, batch_id)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::bytea[], $5::int[], $6::text[])
RETURNING position

-- outcome_settled_among --
-- Which of these requests already have their terminal outcome (request outcomes are written
-- with COPY into stream 'batch-<id>/<index>' at version 1; see store.append_outcomes).
SELECT request_index FROM events WHERE batch_id = $1 AND request_index = ANY($2::int[])

-- outcome_settled_in_range --
SELECT request_index FROM events
WHERE batch_id = $1 AND request_index >= $2 AND request_index < $3

-- outcome_all_in_input_order --
-- Every terminal outcome of a batch by request index: the output and error files' order.
SELECT data FROM events WHERE batch_id = $1 AND request_index IS NOT NULL ORDER BY request_index

-- batch_events_page --
-- The batch's events after position $2: $3 at most, and while $4 bytes of their JSON are not
-- reached (a page holds at least one; an outcome's body can be megabytes). n: how many the $3
-- would have been (fewer came back: the bytes cut the page short, and more are waiting).
SELECT position, type, data, recorded_at, n FROM (
    SELECT position, type, data, recorded_at, json_bytes, sum(json_bytes) OVER (ORDER BY position) AS upto,
           count(*) OVER () AS n
    FROM (SELECT position, type, data, recorded_at, coalesce(size, octet_length(data)) AS json_bytes FROM events
          WHERE batch_id = $1 AND position > $2 ORDER BY position LIMIT $3) p
) w
WHERE upto - json_bytes < $4
ORDER BY position

-- batch_in_log --
SELECT 1 FROM events WHERE batch_id = $1 LIMIT 1

-- event_count --
SELECT count(*) FROM events

-- event_all_in_order --
-- The whole log, for `projections rebuild` (read with a cursor).
SELECT position, stream, type, data FROM events ORDER BY position
