-- Idempotency keys (SPEC §12.3): per project, the first response to a request sent with an
-- `Idempotency-Key`, kept 24 hours. The row is inserted in the same transaction as the object
-- the request creates, so the primary key makes concurrent duplicates wait for the first
-- (and then answer its response) instead of creating a second object.
CREATE TABLE idempotency_keys (
    project      text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea,                   -- NULL only inside the first request's own transaction
    status       integer,
    content_type text,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (project, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
