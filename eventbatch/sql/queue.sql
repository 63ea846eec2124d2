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
-- Waiting requests (migrations/050): a worker whose chunk has only requests that wait long
-- (a retry minutes away, a paused provider) saves their attempts in request_retries and gives
-- the chunk back held by nobody until the earliest of them is due (lease_owner NULL,
-- lease_expires_at then): a claim takes no chunk before its lease_expires_at, whoever holds it.
--
-- Status lists come from the domain as parameters (batch.RUNNING etc.).

-- chunk_claim --
-- $1 owner, $2 how many chunks, $3 lease seconds, $4 statuses whose chunks may run, $5 the
-- models of the provider claimed for, $6 whether it also takes the models no provider names,
-- $7 the models providers name, $8 projects to leave out. Fair share (round-robin across
-- projects, then a project's batches, earliest expires_at first) is the function's, in
-- migrations/010_fair_claims.sql: one round trip, and a cost that does not grow with the backlog.
SELECT batch_id, chunk_no, first_index, count, byte_start, byte_end, lease_epoch
FROM work_claim($1, $2, $3, $4::text[], $5::text[], $6, $7::text[], $8::text[])

-- work_project_join --
-- At validation, in its transaction: the batch's (project, model) joins the rotation. DO UPDATE,
-- not DO NOTHING: it waits for a claimer that holds the row (and may be removing it as empty),
-- so a new batch never lands in a project that has just left the rotation.
INSERT INTO work_projects (project, model) VALUES ($1, $2)
ON CONFLICT (project, model) DO UPDATE SET turn = work_projects.turn

-- work_batch_join --
INSERT INTO work_batches (batch_id, project, model, expires_at) VALUES ($1, $2, $3, $4)

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

-- lease_release_until --
-- Give chunks back, each claimable again after its delay ($4, seconds; NULL: at once). A chunk
-- whose requests wait is given back this way: held by nobody until they are due.
UPDATE work_chunks w
SET lease_owner = NULL,
    lease_expires_at = CASE WHEN r.delay IS NULL THEN NULL ELSE now() + make_interval(secs => r.delay) END
FROM unnest($2::int[], $4::float8[]) AS r(chunk_no, delay)
WHERE w.batch_id = $1 AND w.chunk_no = r.chunk_no AND w.lease_owner = $3

-- chunk_wake --
-- Chunks given back while their provider was paused are due at once when it answers again.
UPDATE work_chunks w SET lease_expires_at = NULL
FROM unnest($1::text[], $2::int[]) AS k(batch_id, chunk_no)
WHERE w.batch_id = k.batch_id AND w.chunk_no = k.chunk_no AND w.lease_owner IS NULL AND NOT w.done
  AND w.lease_expires_at > now()

-- chunk_read_failed --
-- The chunk's lines could not be read: count it and give the chunk back for a while ($4 s).
-- Returns how many times it has failed so; the caller ends the chunk after a few.
UPDATE work_chunks
SET read_failures = read_failures + 1, lease_owner = NULL, lease_expires_at = now() + make_interval(secs => $4)
WHERE batch_id = $1 AND chunk_no = $2 AND lease_owner = $3 AND lease_epoch = $5 AND NOT done
RETURNING read_failures

-- chunk_read_failures --
SELECT read_failures FROM work_chunks WHERE batch_id = $1 AND chunk_no = $2

-- retry_save --
-- Requests waiting for their next attempt ($3.. in parallel arrays), written by the recorder in
-- the fenced transaction that gives their chunk back.
INSERT INTO request_retries (batch_id, request_index, attempts, counted, next_attempt_at)
SELECT $1, r.request_index, r.attempts, r.counted, now() + make_interval(secs => r.delay)
FROM unnest($2::int[], $3::bytea[], $4::int[], $5::float8[]) AS r(request_index, attempts, counted, delay)
ON CONFLICT (batch_id, request_index) DO UPDATE
SET attempts = EXCLUDED.attempts, counted = EXCLUDED.counted, next_attempt_at = EXCLUDED.next_attempt_at

-- retry_list_in_range --
-- The waiting requests of one chunk: what they tried so far, and in how many seconds they are due.
SELECT request_index, attempts, counted,
       EXTRACT(EPOCH FROM next_attempt_at - now())::float8 AS due_in
FROM request_retries WHERE batch_id = $1 AND request_index >= $2 AND request_index < $3

-- retry_delete_batch --
-- With the batch's end: what they tried is in their outcome events by then.
DELETE FROM request_retries WHERE batch_id = $1

-- chunk_any_open --
-- "Is any chunk of this batch still open?" — asked by the recorder and the finalizer.
SELECT EXISTS (SELECT 1 FROM work_chunks WHERE batch_id = $1 AND NOT done)

-- lease_count_live --
-- Chunks a worker holds now (one given back to wait is held by nobody: not counted).
SELECT count(*) FROM work_chunks WHERE batch_id = $1 AND NOT done AND lease_owner IS NOT NULL
  AND lease_expires_at > now()

-- chunk_list_open --
SELECT first_index, count, byte_start, byte_end FROM work_chunks
WHERE batch_id = $1 AND NOT done ORDER BY chunk_no

-- chunk_close_all --
-- At the batch's end: done, and a new epoch that fences off any worker still holding one.
WITH c AS (SELECT batch_id, chunk_no FROM work_chunks WHERE batch_id = $1 AND NOT done ORDER BY chunk_no FOR UPDATE)
UPDATE work_chunks w SET done = true, lease_epoch = w.lease_epoch + 1
FROM c WHERE w.batch_id = c.batch_id AND w.chunk_no = c.chunk_no

-- work_batch_leave --
-- After chunk_close_all (chunk rows before the batch row, the order claims lock them in).
DELETE FROM work_batches WHERE batch_id = $1

-- batch_notify --
-- Wakes the workers at commit (work to claim, requests to stop); polling covers a lost one.
SELECT pg_notify('eventbatch', $1)

-- batch_validation_try_lock --
-- One validation of a batch at a time across processes; the others skip it.
SELECT pg_try_advisory_xact_lock(hashtext('validate/' || $1))
