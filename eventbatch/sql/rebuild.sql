-- `projections rebuild` and `--verify` (rebuild.py, shadow.py): the log folded into shadow
-- tables beside the views, then swapped in under a short lock.
--
-- Templates: {view} is a table of a view of views.py, {shadow} its shadow table, {recheck} the
-- keys its swap compares, {key} its key column, {fresh} and {live} the columns the fold decides
-- (with s. and v. before each), {views} every view table in the lock order of views.sql.
-- shadow.py fills them from that registry alone, never from input. The shadows are TEMP
-- tables: the role needs no CREATE on the schema, other sessions never see them, and they
-- vanish if a rebuild dies.

-- shadow_drop --
DROP TABLE IF EXISTS pg_temp.{shadow}

-- shadow_create --
-- Same columns in the same order as the view (LIKE): the swap moves whole rows, so a column a
-- migration adds to a view needs no change here, only in its row function (views.py).
CREATE TEMP TABLE {shadow} (LIKE {view} INCLUDING DEFAULTS)

-- shadow_key --
ALTER TABLE pg_temp.{shadow} ADD PRIMARY KEY ({key})

-- shadow_get --
-- A row the fold let go of (it holds a bounded number in memory), read back for its next event.
SELECT * FROM pg_temp.{shadow} WHERE {key} = $1

-- shadow_forget --
-- Rows about to be written again (COPY cannot update).
DELETE FROM pg_temp.{shadow} WHERE {key} = ANY($1::text[])

-- shadow_count --
SELECT count(*) FROM pg_temp.{shadow}

-- work_mem_set --
-- For the comparisons of a whole view with its shadow: a hash join in memory, not in batches on disk.
SELECT set_config('work_mem', $1, true)

-- shadow_differing_keys --
-- Keys whose row differs between the fresh fold and the view, or is only in one of them.
SELECT coalesce(s.{key}, v.{key}) AS key
FROM pg_temp.{shadow} s FULL JOIN {view} v ON v.{key} = s.{key}
WHERE ROW({fresh}) IS DISTINCT FROM ROW({live})

-- shadow_rows --
SELECT * FROM pg_temp.{shadow} WHERE {key} = ANY($1::text[])

-- view_rows --
SELECT * FROM {view} WHERE {key} = ANY($1::text[])

-- recheck_drop --
DROP TABLE IF EXISTS pg_temp.{recheck}

-- recheck_create --
-- The keys the swap compares under its lock: those that differed just before it (a whole-view
-- comparison, made without the lock), and those its last catch-up folded events of. A row in
-- neither had no event since it was found equal, so it still is: the lock is held for a
-- comparison of a few rows, not of every view.
CREATE TEMP TABLE {recheck} (key text PRIMARY KEY)

-- recheck_clear --
TRUNCATE pg_temp.{recheck}

-- recheck_differing --
INSERT INTO pg_temp.{recheck}
SELECT coalesce(s.{key}, v.{key}) FROM pg_temp.{shadow} s FULL JOIN {view} v ON v.{key} = s.{key}
WHERE ROW({fresh}) IS DISTINCT FROM ROW({live})
ON CONFLICT DO NOTHING

-- recheck_add --
INSERT INTO pg_temp.{recheck} SELECT unnest($1::text[]) ON CONFLICT DO NOTHING

-- view_swap_remove --
-- Under the swap's lock, among the keys to recheck: out go the view's rows that the fold does not
-- have as they are (differing, or not in the log); `replaced`: the fold has another version.
WITH gone AS (
    DELETE FROM {view} v USING pg_temp.{recheck} x
    WHERE v.{key} = x.key
      AND NOT EXISTS (SELECT 1 FROM pg_temp.{shadow} s
                      WHERE s.{key} = v.{key} AND ROW({fresh}) IS NOT DISTINCT FROM ROW({live}))
    RETURNING EXISTS (SELECT 1 FROM pg_temp.{shadow} s WHERE s.{key} = v.{key}) AS replaced)
SELECT count(*) FILTER (WHERE replaced) AS replaced, count(*) FILTER (WHERE NOT replaced) AS orphans FROM gone

-- view_swap_add --
-- Then in go the fold's rows, among those keys, that the view lacks: replacements and missing ones.
WITH added AS (
    INSERT INTO {view} SELECT s.* FROM pg_temp.{shadow} s JOIN pg_temp.{recheck} x ON x.key = s.{key}
    WHERE NOT EXISTS (SELECT 1 FROM {view} v WHERE v.{key} = s.{key})
    RETURNING 1)
SELECT count(*) FROM added

-- views_lock_for_rebuild --
-- EXCLUSIVE: readers go on reading the views; every writer waits (each holds a view's lock
-- before it appends, views.sql), so while this is held no append is under way. Taken in the
-- lock order of views.sql, under a lock_timeout shorter than deadlock_timeout: if a writer ever
-- took them in another order, the rebuild gives way, never the writer.
LOCK TABLE {views} IN EXCLUSIVE MODE

-- lock_timeout_set --
SELECT set_config('lock_timeout', $1, true)

-- deadlock_timeout_ms --
SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'

-- event_appenders_in_flight --
-- Other sessions holding the lock an append takes on events: with the views locked, only a
-- writer that appended before it took a view lock (a breach of views.sql's order). Its events
-- are not visible yet but may sit below the log's last position, so a cut now would skip them.
SELECT count(*) FROM pg_locks
WHERE locktype = 'relation' AND relation = 'events'::regclass AND mode = 'RowExclusiveLock'
  AND granted AND pid <> pg_backend_pid()

-- event_last_position --
SELECT coalesce(max(position), 0) FROM events

-- event_range_for_fold --
-- The events in ($1, $2], in position order. A request outcome comes as its summary (no response
-- body, about a kilobyte each: migrations/060); one recorded before summaries, as its data.
SELECT position, stream, type, CASE WHEN summary IS NULL THEN data END AS data, summary
FROM events WHERE position > $1 AND position <= $2 ORDER BY position
