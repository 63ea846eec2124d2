-- The work queue (table work_chunks, migrations/003): the whole lease protocol on one page.
--
-- A running batch's requests are cut into chunks at validation (chunk_enqueue, in the
-- transaction that records the validation: the work exists iff that commits). A worker claims
-- chunks with a lease (owner, expiry) and a new lease_epoch; it renews the lease with
-- heartbeats; its outcomes are recorded only in a transaction that still sees its owner and
-- epoch (lease_lock, the fence); a finished chunk is marked done, an unfinished one released.
-- A worker that dies simply stops renewing: the lease lapses and chunk_claim hands the chunk
-- to someone else with a higher epoch. Rows are always locked in chunk order.
--
-- Status lists come from the domain as parameters (batch.RUNNING etc.).

-- chunk_claim --
-- $1 owner, $2 how many chunks, $3 lease seconds, $4 statuses whose chunks may run.
WITH c AS (
    SELECT w.batch_id, w.chunk_no FROM work_chunks w JOIN batch_view b ON b.id = w.batch_id
    WHERE NOT w.done AND b.status = ANY($4::text[])
      AND (w.lease_expires_at IS NULL OR w.lease_expires_at < now())
    ORDER BY b.seq, w.chunk_no
    LIMIT $2
    FOR UPDATE OF w SKIP LOCKED
)
UPDATE work_chunks w
SET lease_owner = $1, lease_epoch = w.lease_epoch + 1, lease_expires_at = now() + make_interval(secs => $3)
FROM c WHERE w.batch_id = c.batch_id AND w.chunk_no = c.chunk_no
RETURNING w.batch_id, w.chunk_no, w.first_index, w.count, w.byte_start, w.byte_end, w.lease_epoch

-- lease_heartbeat --
-- Renews the leases this worker still holds at the epochs it claimed ($3..$5 in parallel
-- arrays); what comes back is what it still holds.
WITH mine AS (
    SELECT w.batch_id, w.chunk_no FROM work_chunks w
    JOIN unnest($3::text[], $4::int[], $5::int[]) AS h(batch_id, chunk_no, epoch)
      ON w.batch_id = h.batch_id AND w.chunk_no = h.chunk_no AND w.lease_epoch = h.epoch
    WHERE w.lease_owner = $1 AND NOT w.done
    ORDER BY w.batch_id, w.chunk_no
    FOR UPDATE OF w
)
UPDATE work_chunks w SET lease_expires_at = now() + make_interval(secs => $2)
FROM mine WHERE w.batch_id = mine.batch_id AND w.chunk_no = mine.chunk_no
RETURNING w.batch_id, w.chunk_no, w.lease_epoch

-- lease_lock --
-- The fence: a recording transaction locks the lease rows it writes for and keeps only the
-- outcomes of chunks whose owner and epoch are still the recorder's.
SELECT chunk_no, lease_owner, lease_epoch, done FROM work_chunks
WHERE batch_id = $1 AND chunk_no = ANY($2::int[]) ORDER BY chunk_no FOR UPDATE

-- chunk_mark_done --
UPDATE work_chunks SET done = true, lease_owner = NULL, lease_expires_at = NULL
WHERE batch_id = $1 AND chunk_no = ANY($2::int[])

-- lease_release --
UPDATE work_chunks SET lease_owner = NULL, lease_expires_at = NULL
WHERE batch_id = $1 AND chunk_no = ANY($2::int[]) AND lease_owner = $3

-- chunk_any_open --
-- "Is any chunk of this batch still open?" — asked by the recorder and the finalizer.
SELECT EXISTS (SELECT 1 FROM work_chunks WHERE batch_id = $1 AND NOT done)

-- lease_count_live --
SELECT count(*) FROM work_chunks WHERE batch_id = $1 AND NOT done AND lease_expires_at > now()

-- chunk_list_open --
SELECT first_index, count, byte_start, byte_end FROM work_chunks
WHERE batch_id = $1 AND NOT done ORDER BY chunk_no

-- chunk_close_all --
-- At the batch's end: done, and a new epoch that fences off any worker still holding one.
WITH c AS (SELECT batch_id, chunk_no FROM work_chunks WHERE batch_id = $1 AND NOT done ORDER BY chunk_no FOR UPDATE)
UPDATE work_chunks w SET done = true, lease_epoch = w.lease_epoch + 1
FROM c WHERE w.batch_id = c.batch_id AND w.chunk_no = c.chunk_no

-- batch_notify --
-- Wakes the workers at commit (work to claim, requests to stop); polling covers a lost one.
SELECT pg_notify('eventbatch', $1)

-- batch_validation_try_lock --
-- One validation of a batch at a time across processes; the others skip it.
SELECT pg_try_advisory_xact_lock(hashtext('validate/' || $1))
