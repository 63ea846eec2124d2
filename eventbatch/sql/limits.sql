-- Providers' per-minute limits across the deployment (table provider_minutes, migrations/051):
-- see worker/budget.py for how workers take grants from a minute's row.

-- provider_minute_lock --
-- The provider's row of the current minute, made if need be, locked until the grant commits.
INSERT INTO provider_minutes AS m (provider, minute) VALUES ($1, date_trunc('minute', now()))
ON CONFLICT (provider, minute) DO UPDATE SET requests = m.requests
RETURNING requests, tokens, minute, EXTRACT(EPOCH FROM m.minute + interval '1 minute' - now())::float8 AS left_s

-- provider_minute_take --
-- What was granted ($3 requests, $4 tokens, the latter with the settled differences).
UPDATE provider_minutes SET requests = requests + $3, tokens = tokens + $4 WHERE provider = $1 AND minute = $2

-- provider_minute_forget --
DELETE FROM provider_minutes WHERE provider = $1 AND minute < now() - interval '1 hour'
