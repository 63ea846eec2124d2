-- Webhooks (SPEC §12.4). Endpoints are operator configuration (`eventbatch webhooks add`),
-- like API keys: not in the log. Deliveries are the outbox: a row is owed in the transaction
-- that appends the batch's terminal event, beside its `webhook_delivery_owed` event (stream
-- 'webhook-<delivery id>'); every attempt appends `webhook_attempted` to that stream and moves
-- the row on. The row is the work queue's state (what is due when), the stream its history.
CREATE TABLE webhook_endpoints (
    id          text        PRIMARY KEY,          -- whep_…
    project     text        NOT NULL,
    url         text        NOT NULL,
    event_types text[]      NOT NULL,             -- batch.completed, batch.failed, …
    secret      text        NOT NULL,             -- whsec_…: deliveries are signed with it
    created_at  timestamptz NOT NULL DEFAULT now(),
    removed_at  timestamptz
);
CREATE INDEX webhook_endpoints_of_project ON webhook_endpoints (project) WHERE removed_at IS NULL;

CREATE TABLE webhook_deliveries (
    id              text        PRIMARY KEY,      -- msg_…: the webhook-id header, the same at every attempt
    endpoint_id     text        NOT NULL REFERENCES webhook_endpoints (id),
    batch_id        text        NOT NULL,
    payload         bytea       NOT NULL,         -- the body, byte for byte the same at every attempt
    state           text        NOT NULL DEFAULT 'pending',  -- pending | delivered | gave_up | dropped
    attempts        integer     NOT NULL DEFAULT 0,           -- claimed so far (the claim counts it)
    version         integer     NOT NULL DEFAULT 1,           -- of stream 'webhook-<id>' recorded so far
    owed_at         timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_once UNIQUE (endpoint_id, batch_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_of_batch ON webhook_deliveries (batch_id);
