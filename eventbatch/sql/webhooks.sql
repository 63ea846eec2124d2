-- Webhooks (tables webhook_endpoints and webhook_deliveries, migrations/031): the endpoints the
-- operator registers, and the outbox of deliveries owed when a batch ends.
--
-- A delivery is owed in the transaction of the batch's terminal event (webhook_delivery_insert,
-- from batches.append). Any worker claims one due delivery at a time (webhook_delivery_claim:
-- SKIP LOCKED, and a lease: next_attempt_at is pushed past the attempt's timeout, so no other
-- worker sends it meanwhile; if the worker dies the lease lapses and it is due again), sends it,
-- then records the attempt under the row's lock (webhook_delivery_lock, webhook_delivery_record).

-- webhook_endpoint_insert --
INSERT INTO webhook_endpoints (id, project, url, event_types, secret) VALUES ($1, $2, $3, $4, $5)

-- webhook_endpoint_list --
-- $1 project or null for all.
SELECT id, project, url, event_types, created_at FROM webhook_endpoints
WHERE removed_at IS NULL AND ($1::text IS NULL OR project = $1)
ORDER BY project, created_at, id

-- webhook_endpoint_remove --
UPDATE webhook_endpoints SET removed_at = now() WHERE id = $1 AND removed_at IS NULL RETURNING project, url

-- webhook_endpoints_of_project --
-- In the transaction of a batch's terminal event. FOR SHARE: a `webhooks remove` running at the
-- same time waits for this transaction, then finds the delivery it owes and drops it; without
-- the lock the removal could miss it, and it went to the endpoint just removed.
SELECT id, url, event_types FROM webhook_endpoints
WHERE project = $1 AND removed_at IS NULL ORDER BY created_at, id
FOR SHARE

-- webhook_delivery_insert --
INSERT INTO webhook_deliveries (id, endpoint_id, batch_id, payload) VALUES ($1, $2, $3, $4)

-- webhook_delivery_claim --
-- $1 lease seconds. One due delivery that no other worker holds; the attempt is counted now.
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $1)
FROM due, webhook_endpoints e
WHERE d.id = due.id AND e.id = d.endpoint_id
RETURNING d.id, d.attempts, d.payload, extract(epoch FROM d.owed_at)::float8 AS owed_at, e.url, e.secret

-- webhook_delivery_lock --
SELECT attempts, state, version FROM webhook_deliveries WHERE id = $1 FOR UPDATE

-- webhook_delivery_record --
-- $1 id, $2 stream version now recorded, $3 state, $4 next attempt (unix seconds; null keeps it).
UPDATE webhook_deliveries
SET version = $2, state = $3, next_attempt_at = coalesce(to_timestamp($4), next_attempt_at)
WHERE id = $1

-- webhook_deliveries_pending_of_endpoint --
SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'pending' ORDER BY id

-- webhook_delivery_streams_of_batch --
-- For `eventbatch replay`: the streams of the batch's deliveries.
SELECT 'webhook-' || id FROM webhook_deliveries WHERE batch_id = $1

-- webhook_events_of_streams --
SELECT position, type, data, recorded_at FROM events WHERE stream = ANY($1::text[]) ORDER BY position
