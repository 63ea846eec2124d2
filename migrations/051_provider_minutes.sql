-- Providers' rpm and tpm for the whole deployment (SPEC §11): the requests and tokens granted to
-- workers in each minute (database time), per provider. A worker takes a grant in a short
-- transaction that locks the minute's row; rows older than an hour are deleted as minutes pass.
CREATE TABLE provider_minutes (
    provider text        NOT NULL,
    minute   timestamptz NOT NULL,
    requests integer     NOT NULL DEFAULT 0,
    tokens   bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, minute)
);
