-- API keys: the view api_keys (migrations/042), a projection of the streams 'key-<id>', and
-- api_key_secrets beside the log: each key's SHA-256 and its last use.

-- key_secret_insert --
INSERT INTO api_key_secrets (key_id, key_hash) VALUES ($1, $2)

-- key_authenticate --
-- The key's id and project when it exists and is not revoked, noting its use (asked once per
-- key every few seconds per API process: the cache in front of it expires that often).
UPDATE api_key_secrets s SET last_used_at = now()
FROM api_keys k
WHERE s.key_hash = $1 AND k.id = s.key_id AND NOT k.revoked
RETURNING k.id, k.project

-- key_view_upsert --
INSERT INTO api_keys (id, project, seq, revoked, version, doc) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET revoked = EXCLUDED.revoked, version = EXCLUDED.version, doc = EXCLUDED.doc

-- key_view_lock --
SELECT doc FROM api_keys WHERE id = $1 FOR UPDATE

-- key_list --
-- Every key ($1 NULL) or one project's, oldest first, with its last use.
SELECT k.doc, s.last_used_at FROM api_keys k LEFT JOIN api_key_secrets s ON s.key_id = k.id
WHERE $1::text IS NULL OR k.project = $1
ORDER BY k.seq

-- key_hashes_usable --
-- The SHA-256 of every key that is not revoked: what an address whose failed tries are used up
-- is checked against, in one statement every few seconds however many keys it sends.
SELECT s.key_hash FROM api_key_secrets s JOIN api_keys k ON k.id = s.key_id WHERE NOT k.revoked

-- key_project_known --
-- Whether any key (revoked ones too) was ever made for project $1: `webhooks add` warns of a
-- project no key belongs to (a typo registers an endpoint that never hears of anything).
SELECT EXISTS (SELECT 1 FROM api_keys WHERE project = $1)
