-- Views (tables batch_view and file_view, migrations/002): projections of the log, written in
-- the same transaction as the events they come from, rebuilt from the log alone.
-- Status lists are never spelled here: they come from the domain (eventbatch/batch.py) as
-- parameters, so a new status cannot be forgotten in one query.

-- batch_view_lock --
-- Every writer of a batch takes this lock first: its events commit in position order.
SELECT doc FROM batch_view WHERE id = $1 FOR UPDATE

-- batch_view_get --
SELECT doc FROM batch_view WHERE id = $1

-- batch_view_get_own --
SELECT doc FROM batch_view WHERE id = $1 AND project = $2

-- batch_view_status --
SELECT status FROM batch_view WHERE id = $1

-- batch_view_statuses --
SELECT id, status FROM batch_view WHERE id = ANY($1::text[])

-- batch_view_upsert --
INSERT INTO batch_view (id, project, seq, status, version, doc) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, version = EXCLUDED.version, doc = EXCLUDED.doc

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

-- file_view_deleted --
SELECT deleted FROM file_view WHERE id = $1

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

-- view_lock_for_rebuild --
-- Readers go on reading the old views; appends (which all write a view row) wait.
LOCK TABLE batch_view, file_view, api_keys IN EXCLUSIVE MODE

-- batch_view_delete_all --
DELETE FROM batch_view

-- file_view_delete_all --
DELETE FROM file_view

-- batch_view_all --
SELECT id, project, seq, status, version, doc FROM batch_view

-- file_view_all --
SELECT id, project, seq, purpose, deleted, version, expires_at, purge_after, doc FROM file_view

-- file_view_purge_due --
-- Input files whose bytes are due to be purged ($1: now, $2: how many), locked and skipped
-- when another process's purge holds them (purge_after: migrations/020).
SELECT doc FROM file_view WHERE purge_after <= $1
ORDER BY purge_after LIMIT $2
FOR UPDATE SKIP LOCKED
