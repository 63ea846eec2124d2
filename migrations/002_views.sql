-- Views: projections of the log, written in the same transaction as the events they come
-- from, disposable (eventbatch projections rebuild). `doc` is the msgspec-encoded view
-- Struct (the fold of the stream); the other columns are copies of it for lookups.
CREATE TABLE file_view (
    id         text    PRIMARY KEY,
    project    text    NOT NULL,
    seq        bigint  NOT NULL,          -- position of the creating event: list order
    purpose    text    NOT NULL,
    deleted    boolean NOT NULL,
    version    integer NOT NULL,
    doc        bytea   NOT NULL
);
CREATE INDEX file_view_list ON file_view (project, seq) WHERE NOT deleted;

CREATE TABLE batch_view (
    id         text    PRIMARY KEY,
    project    text    NOT NULL,
    seq        bigint  NOT NULL,
    status     text    NOT NULL,
    version    integer NOT NULL,          -- version of stream 'batch-<id>' folded so far
    doc        bytea   NOT NULL
);
CREATE INDEX batch_view_list ON batch_view (project, seq);
CREATE INDEX batch_view_status ON batch_view (status);
