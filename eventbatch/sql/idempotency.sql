-- Idempotency keys (table idempotency_keys, migrations/030): claim, replay, record, purge.

-- idempotency_claim --
-- $1 project, $2 key, $3 retention seconds. True when this request is the first with the key
-- (or the one before it has expired). A concurrent first request that has not committed yet
-- makes this wait for it (the primary key), so exactly one of them creates its object.
INSERT INTO idempotency_keys (project, key, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (project, key) DO UPDATE
SET request_hash = NULL, status = NULL, content_type = NULL, body = NULL,
    created_at = now(), expires_at = EXCLUDED.expires_at
WHERE idempotency_keys.expires_at <= now()
RETURNING true

-- idempotency_wait_briefly --
-- Before the claim: a duplicate waits on a first request that is still running for less than
-- an API call's wait on the database (pool.API_WAIT_SECONDS, 2 s), so that a long first request
-- makes it a 409 "still being processed", not a 503 with its connection cut.
SET LOCAL lock_timeout = '1500ms'

-- idempotency_wait_as_before --
-- After the claim: the rest of the request waits on locks as the pool's profile says.
SET LOCAL lock_timeout TO DEFAULT

-- idempotency_get --
SELECT request_hash, status, content_type, body FROM idempotency_keys WHERE project = $1 AND key = $2

-- idempotency_recorded --
-- The first response under the key, when one is recorded and within its 24 hours (a request
-- known before it runs is answered from it without running: api/idempotency.py).
SELECT request_hash, status, content_type, body FROM idempotency_keys
WHERE project = $1 AND key = $2 AND expires_at > now() AND request_hash IS NOT NULL

-- idempotency_record --
-- The first request's response, in its own transaction (with the object it created).
UPDATE idempotency_keys SET request_hash = $3, status = $4, content_type = $5, body = $6
WHERE project = $1 AND key = $2

-- idempotency_release --
DELETE FROM idempotency_keys WHERE project = $1 AND key = $2

-- idempotency_purge --
-- Keys past their 24 hours, a bounded number at a time (housekeeping: an expired key is
-- already treated as unused by idempotency_claim).
DELETE FROM idempotency_keys
WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))
