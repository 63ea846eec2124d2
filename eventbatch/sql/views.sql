-- Views (tables batch_view and file_view, migrations/002): projections of the log, written in
-- the same transaction as the events they come from, rebuilt from the log alone.
-- Status lists are never spelled here: they come from the domain (eventbatch/batch.py) as
-- parameters, so a new status cannot be forgotten in one query.
--
-- LOCK ORDER. A transaction that locks more than one view (a row lock, FOR SHARE, or a write)
-- takes them in this order, and never goes back to an earlier one:
--
--     1. batch_view      2. batch_due      3. file_view      4. api_keys
--     (a view added later: after these, in views.VIEWS, which the rebuild locks in this order)
--
-- So a create, which has no batch row to lock yet, first takes batch_view's table lock
-- (batch_view_lock_for_create) before it share-locks its input file, and a retry takes it
-- before it records its new input file; the finalizer locks its batch, then its input file's
-- row and writes the output files'. `projections rebuild` locks all of
-- them, in this order (views.VIEWS), for its short cut and swap (sql/rebuild.sql).
-- An append to a stream that has a row is made with that row locked (store.py); the first
-- event of a new stream may precede its row's insert, which the rebuild's cut checks for
-- (rebuild.sql, event_appenders_in_flight).

-- batch_view_lock --
-- Every writer of a batch takes this lock first: its events commit in position order.
SELECT doc FROM batch_view WHERE id = $1 FOR UPDATE

-- batch_view_lock_for_create --
-- A create takes batch_view before the input file's row (the lock order above). ROW EXCLUSIVE
-- is what its insert takes anyway: creates do not wait for each other.
LOCK TABLE batch_view IN ROW EXCLUSIVE MODE

-- batch_view_get --
SELECT doc FROM batch_view WHERE id = $1

-- batch_view_get_own --
SELECT doc FROM batch_view WHERE id = $1 AND project = $2

-- batch_view_status --
SELECT status FROM batch_view WHERE id = $1

-- batch_view_statuses --
SELECT id, status FROM batch_view WHERE id = ANY($1::text[])

-- batch_view_upsert --
-- The view alone, when the caller knows its due time did not move (the recorder's flushes).
INSERT INTO batch_view (id, project, seq, status, version, doc) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, version = EXCLUDED.version, doc = EXCLUDED.doc

-- batch_view_upsert_due --
-- The view and its due time in batch_due ($7 = batch.due_at; NULL once nothing will be due):
-- one statement, so the projection and its index cannot part. A new due_at also resets next_at,
-- so a sweeper looks at once when it is past; an unchanged one leaves a sweeper's next_at alone.
WITH v AS (
    INSERT INTO batch_view (id, project, seq, status, version, doc) VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, version = EXCLUDED.version, doc = EXCLUDED.doc
), gone AS (
    DELETE FROM batch_due WHERE batch_id = $1 AND $7::float8 IS NULL
)
INSERT INTO batch_due (batch_id, due_at, next_at) SELECT $1, $7::float8, $7::float8 WHERE $7::float8 IS NOT NULL
ON CONFLICT (batch_id) DO UPDATE SET due_at = EXCLUDED.due_at, next_at = EXCLUDED.next_at
WHERE batch_due.due_at IS DISTINCT FROM EXCLUDED.due_at

-- batch_due_claim --
-- Up to $2 batches due by $1 (now), each to one sweeper: their next look moves to $3 (the
-- sweeper's deadline), so the others skip them while it works, and take them if it is gone by
-- then. An index range scan of what is due: the open batches that are not due cost nothing.
UPDATE batch_due d SET next_at = $3
FROM (SELECT batch_id FROM batch_due WHERE next_at <= $1 ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE d.batch_id = due.batch_id
RETURNING d.batch_id

-- batch_due_again --
-- A due batch that nothing could move yet (a cancel waiting for leases, a validation another
-- process runs): look again at $3, unless its due time moved meanwhile ($2: the claim's deadline).
UPDATE batch_due SET next_at = $3 WHERE batch_id = $1 AND next_at = $2

-- batch_view_with_status --
-- Batches in any of the given statuses ($1: e.g. batch.OPEN), for the sweeper.
SELECT id, status FROM batch_view WHERE status = ANY($1::text[])

-- batch_view_docs_with_status --
SELECT doc FROM batch_view WHERE status = ANY($1::text[])

-- batch_view_project_docs_with_status --
SELECT doc FROM batch_view WHERE project = $1 AND status = ANY($2::text[]) AND id IS DISTINCT FROM $3

-- batch_view_count_by_status --
SELECT status, count(*) AS n FROM batch_view GROUP BY status

-- batch_view_seq_own --
SELECT seq FROM batch_view WHERE id = $1 AND project = $2

-- batch_view_page_own --
-- Newest first; $2 is the seq of the batch to list after (NULL: from the newest).
SELECT doc FROM batch_view WHERE project = $1 AND ($2::bigint IS NULL OR seq < $2)
ORDER BY seq DESC LIMIT $3

-- file_view_upsert --
INSERT INTO file_view (id, project, seq, purpose, deleted, version, expires_at, doc, purge_after)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET deleted = EXCLUDED.deleted, version = EXCLUDED.version,
  expires_at = EXCLUDED.expires_at, doc = EXCLUDED.doc, purge_after = EXCLUDED.purge_after

-- file_view_get_own --
SELECT doc FROM file_view WHERE id = $1 AND project = $2 AND NOT deleted

-- file_view_lock_own --
SELECT doc FROM file_view WHERE id = $1 AND project = $2 AND NOT deleted FOR UPDATE

-- file_view_share_own --
-- FOR SHARE: a concurrent delete of the file waits for the batch being created on it.
SELECT doc FROM file_view WHERE id = $1 AND project = $2 AND NOT deleted FOR SHARE

-- file_view_lock_deleted --
-- An input file's row locked for the decision to free its bytes (files.free_input_if_unused;
-- delete_file holds it by file_view_lock_own): the deciders of one file take turns, so the last
-- batch to end, or the delete after it, sees the others finished. Without the lock two batches
-- ending together at READ COMMITTED each saw the other still running, and the bytes stayed.
SELECT deleted FROM file_view WHERE id = $1 FOR UPDATE

-- file_view_seq_own --
SELECT seq FROM file_view WHERE id = $1 AND project = $2

-- file_view_page_asc --
-- $5: now, in unix seconds. Expired files are left out here, before LIMIT, so a page is full
-- whenever more files follow (a file is expired from its expires_at on, as FileView.expired).
SELECT doc FROM file_view WHERE project = $1 AND NOT deleted
  AND ($2::text IS NULL OR purpose = $2) AND ($3::bigint IS NULL OR seq > $3)
  AND (expires_at IS NULL OR expires_at > $5::float8)
ORDER BY seq ASC LIMIT $4

-- file_view_page_desc --
SELECT doc FROM file_view WHERE project = $1 AND NOT deleted
  AND ($2::text IS NULL OR purpose = $2) AND ($3::bigint IS NULL OR seq < $3)
  AND (expires_at IS NULL OR expires_at > $5::float8)
ORDER BY seq DESC LIMIT $4

-- file_view_purge_due --
-- Input files whose bytes are due to be purged ($1: now, $2: how many), locked and skipped
-- when another process's purge holds them (purge_after: migrations/020).
SELECT doc FROM file_view WHERE purge_after <= $1
ORDER BY purge_after LIMIT $2
FOR UPDATE SKIP LOCKED
