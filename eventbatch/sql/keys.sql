-- API keys (table api_keys, migrations/003), stored as SHA-256 of the key.

-- key_insert --
INSERT INTO api_keys (key_hash, project) VALUES ($1, $2)

-- key_project --
SELECT project FROM api_keys WHERE key_hash = $1
