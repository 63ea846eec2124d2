-- A batch's results (SPEC §12.1, §12.5): its output and error lines are derived from its
-- request outcome events (table `events`), never stored a second time. Pages are bounded by
-- bytes (the sum of the events' JSON sizes: bodies can be megabytes) and by a number of rows; a
-- page holds at least one row, so a body larger than the budget still moves.
-- An event's JSON size is its column `size` (data may be a zstd frame of it, migrations/070),
-- or for an event stored before that its octet_length(): read from the value's header, without
-- detoasting it.

-- result_page_in_input_order --
-- The output file ($3 'request_succeeded') or error file ($3 'request_failed') of batch $1:
-- among the requests of indexes ($2, $2 + $4], the lines while $5 bytes are not reached, and
-- how many lines that window holds in all (n; fewer came back: the bytes cut the page short).
-- A window of indexes, not a LIMIT, bounds the work of each page whatever plan is chosen.
SELECT request_index, data, n FROM (
    SELECT request_index, data, json_bytes, sum(json_bytes) OVER (ORDER BY request_index) AS upto,
           count(*) OVER () AS n
    FROM (SELECT request_index, data, coalesce(size, octet_length(data)) AS json_bytes FROM events
          WHERE batch_id = $1 AND request_index > $2 AND request_index <= $2 + $4 AND type = $3) e
) w
WHERE upto - json_bytes < $5
ORDER BY request_index

-- result_last_index --
-- The highest request index with an outcome: where reading a file in input order ends.
SELECT max(request_index) FROM events WHERE batch_id = $1 AND request_index IS NOT NULL

-- result_page_in_record_order --
-- What /results sends: outcomes of batch $1 recorded after log position $2 up to $3, of type
-- $4 (NULL: both kinds), in log order; $5 rows and $6 bytes at most, as above. Every append
-- to a batch holds its view row lock, so its positions commit in order: a position seen
-- committed has every earlier one of the batch committed too, and a cursor never skips one.
SELECT position, data FROM (
    SELECT position, data, json_bytes, sum(json_bytes) OVER (ORDER BY position) AS upto
    FROM (SELECT position, data, coalesce(size, octet_length(data)) AS json_bytes FROM events
          WHERE batch_id = $1 AND position > $2 AND position <= $3 AND request_index IS NOT NULL
            AND ($4::text IS NULL OR type = $4)
          ORDER BY position LIMIT $5) p
) w
WHERE upto - json_bytes < $6
ORDER BY position

-- result_last_position --
-- The position of the batch's newest event: where a /results answer ends (its cursor).
SELECT max(position) FROM events WHERE batch_id = $1

-- outcome_failed_indexes --
-- The requests of batch $1 that ended in the error file ($2 'request_failed'), in input order.
SELECT coalesce(array_agg(request_index ORDER BY request_index), '{}') FROM events
WHERE batch_id = $1 AND type = $2

-- batch_validated_event --
-- The validation that planned the batch's chunks: where each request's line is in its input file.
SELECT data FROM events WHERE stream = $1 AND type = $2
