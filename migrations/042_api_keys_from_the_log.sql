-- API keys become events (streams 'key-<id>': api_key_created, api_key_revoked) and the table
-- api_keys a projection of them, rebuilt by `projections rebuild` like the other views. The
-- hash that authenticates a key is not in the log (an event is read by auditors, replays and
-- backups of the log): it lives in api_key_secrets beside it, with the key's last use (a fact
-- of operation, not of history).
ALTER TABLE api_keys RENAME TO api_keys_before_the_log;

CREATE TABLE api_key_secrets (
    key_id       text PRIMARY KEY,
    key_hash     text NOT NULL UNIQUE,   -- SHA-256 of the key
    last_used_at timestamptz
);

CREATE TABLE api_keys (
    id      text    PRIMARY KEY,
    project text    NOT NULL,
    seq     bigint  NOT NULL,            -- position of the api_key_created event: list order
    revoked boolean NOT NULL,
    version integer NOT NULL,            -- version of stream 'key-<id>' folded so far
    doc     bytea   NOT NULL             -- the msgspec-encoded KeyView (eventbatch/api_keys.py)
);
CREATE INDEX api_keys_by_project ON api_keys (project, seq);

-- Keys made before keys were events get their api_key_created event now (with an id derived
-- from the hash, and no hint: only the hash is known), so the log names every key.
WITH old AS (
    SELECT 'key_' || substr(encode(sha256(convert_to('key-id:' || key_hash, 'UTF8')), 'hex'), 1, 24) AS id,
           key_hash, project, extract(epoch FROM created_at)::float8 AS at
    FROM api_keys_before_the_log
), kept AS (
    INSERT INTO api_key_secrets (key_id, key_hash) SELECT id, key_hash FROM old
), logged AS (
    INSERT INTO events (stream, version, type, data)
    SELECT 'key-' || id, 1, 'api_key_created',
           convert_to(json_build_object('type', 'api_key_created', 'key_id', id, 'project', project,
                                        'at', at)::text, 'UTF8')
    FROM old ORDER BY at
    RETURNING position, stream
)
INSERT INTO api_keys (id, project, seq, revoked, version, doc)
SELECT o.id, o.project, l.position, false, 1,
       convert_to(json_build_object('id', o.id, 'project', o.project, 'created_at', floor(o.at)::bigint,
                                    'version', 1)::text, 'UTF8')
FROM old o JOIN logged l ON l.stream = 'key-' || o.id;

DROP TABLE api_keys_before_the_log;
