-- File bytes, in pieces of 1 MiB: content, not state, so not in the log. Input files are
-- uploaded by users; output and error files are materialised from request events and can
-- be written again from the log.
CREATE TABLE file_blobs (
    file_id text    NOT NULL,
    piece   integer NOT NULL,
    data    bytea   NOT NULL,
    PRIMARY KEY (file_id, piece)
);

-- API keys, stored as SHA-256 of the key; a key belongs to one project (the tenant).
CREATE TABLE api_keys (
    key_hash   text PRIMARY KEY,
    project    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The work queue: chunks of a running batch's requests, claimed with leases.
-- lease_epoch fences a worker that lost its lease: outcomes are only recorded while the
-- recording transaction sees the epoch the worker claimed with.
CREATE TABLE work_chunks (
    batch_id         text    NOT NULL,
    chunk_no         integer NOT NULL,
    first_index      integer NOT NULL,
    count            integer NOT NULL,
    byte_start       bigint  NOT NULL,
    byte_end         bigint  NOT NULL,
    done             boolean NOT NULL DEFAULT false,
    lease_owner      text,
    lease_epoch      integer NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    PRIMARY KEY (batch_id, chunk_no)
);
CREATE INDEX work_chunks_open ON work_chunks (batch_id) WHERE NOT done;
