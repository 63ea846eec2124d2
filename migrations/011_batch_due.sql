-- Due work found by its due time (SPEC §11), not by a scan of the open batches.
--
-- batch_due is a projection, like batch_view: one row per open batch, written in the same
-- transaction as the view (views.sql batch_view_upsert_due), with due_at = batch.due_at(state),
-- and rebuilt with the views by `projections rebuild`. next_at is the sweepers' bookkeeping:
-- a sweeper that takes a due batch moves next_at to its deadline, so the others skip it while it
-- works (and take it if it dies); a new due_at puts next_at back to it.
CREATE TABLE batch_due (
    batch_id text PRIMARY KEY,
    due_at   double precision NOT NULL,   -- unix seconds
    next_at  double precision NOT NULL    -- unix seconds
);
CREATE INDEX batch_due_next ON batch_due (next_at);

-- The open batches when this migration is applied, with batch.due_at's rule spelled once in SQL
-- (a migration is a snapshot; from now on the domain computes it).
INSERT INTO batch_due (batch_id, due_at, next_at)
SELECT id, due, due FROM (
    SELECT b.id, CASE b.status
        WHEN 'validating' THEN (d.doc ->> 'created_at')::float8
        WHEN 'cancelling' THEN coalesce((d.doc ->> 'cancelling_at')::float8, (d.doc ->> 'created_at')::float8)
        WHEN 'finalizing' THEN coalesce((d.doc ->> 'finalizing_at')::float8, (d.doc ->> 'created_at')::float8)
        WHEN 'in_progress' THEN CASE
            WHEN coalesce((d.doc #>> '{request_counts,completed}')::int, 0)
               + coalesce((d.doc #>> '{request_counts,failed}')::int, 0)
              >= coalesce((d.doc #>> '{request_counts,total}')::int, 0)
            THEN coalesce((d.doc ->> 'in_progress_at')::float8, (d.doc ->> 'created_at')::float8)
            ELSE (d.doc ->> 'expires_at')::float8 END
        END AS due
    FROM batch_view b CROSS JOIN LATERAL (SELECT convert_from(b.doc, 'UTF8')::jsonb AS doc) d
    WHERE b.status IN ('validating', 'cancelling', 'finalizing', 'in_progress')
) open
WHERE due IS NOT NULL;
