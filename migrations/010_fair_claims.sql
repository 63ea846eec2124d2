-- Fair share of the work queue (SPEC §11): when batches wait for one provider, its capacity is
-- shared round-robin across projects, then across a project's batches, earliest expires_at
-- first; and a claim costs the same whatever the backlog.
--
-- Queue state beside work_chunks (not views: like the leases, they are not in the log):
--   work_batches   one row per running batch with chunks in the queue, from the validation that
--                  enqueued them to the batch's end; `turn` is when a claim last took a chunk of it.
--   work_projects  one row per (project, model) with such batches; `turn` likewise. Keyed by model
--                  because the model decides the provider (providers.provider_for), and each
--                  provider's capacity is shared on its own.
-- A claim walks projects by turn, a project's batches by (turn, expires_at), a batch's chunks by
-- chunk_no, each step an index scan that stops at the first hit; it takes one chunk per project
-- and moves that project and batch to the back (a new turn from work_turns).

CREATE SEQUENCE work_turns;

CREATE TABLE work_batches (
    batch_id   text   PRIMARY KEY,
    project    text   NOT NULL,
    model      text   NOT NULL,             -- '' when the file names none
    expires_at double precision NOT NULL,   -- unix seconds ('infinity' without a window)
    turn       bigint NOT NULL DEFAULT 0    -- 0: never claimed, so before every claimed one
);
CREATE INDEX work_batches_turns ON work_batches (project, model, turn, expires_at);

CREATE TABLE work_projects (
    project text   NOT NULL,
    model   text   NOT NULL,
    turn    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project, model)
);
CREATE INDEX work_projects_turns ON work_projects (turn);

-- The first claimable chunk of a batch without walking its finished ones.
DROP INDEX work_chunks_open;
CREATE INDEX work_chunks_open ON work_chunks (batch_id, chunk_no) WHERE NOT done;

-- Batches running when this migration is applied (the status is spelled here once: a migration
-- is a snapshot; the code takes its status lists from the domain).
INSERT INTO work_batches (batch_id, project, model, expires_at)
SELECT b.id, b.project, coalesce(d.doc ->> 'model', ''), coalesce((d.doc ->> 'expires_at')::float8, 'infinity')
FROM batch_view b CROSS JOIN LATERAL (SELECT convert_from(b.doc, 'UTF8')::jsonb AS doc) d
WHERE b.status = 'in_progress' AND EXISTS (SELECT 1 FROM work_chunks w WHERE w.batch_id = b.id AND NOT w.done);
INSERT INTO work_projects (project, model) SELECT DISTINCT project, model FROM work_batches;

-- work_claim(owner, chunks, lease seconds, statuses whose chunks may run, the provider's models,
--            whether it also takes every model no provider names, the models providers name,
--            projects to leave out): up to `chunks` leased chunks, one project at a time.
--
-- Locks, always in this order, so that claimers, recorders and finalizers cannot deadlock: a
-- project row (SKIP LOCKED: concurrent claimers spread over projects; only a claimer that holds
-- nothing yet waits, for the first project in turn, so one busy project is still shared), a
-- chunk row (SKIP LOCKED), then its batch row.
CREATE FUNCTION work_claim(p_owner text, p_chunks int, p_lease float8, p_statuses text[], p_models text[],
                           p_catch_all boolean, p_named text[], p_skip_projects text[])
RETURNS TABLE (batch_id text, chunk_no int, first_index int, count int, byte_start bigint, byte_end bigint,
               lease_epoch int)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    proj record;
    bat record;
    chunk_found int;
    passed text[] := '{}';     -- projects with nothing claimable in this call
    holding boolean := false;  -- some project row is locked by this call
    got int := 0;
    new_turn bigint;
    found_one boolean;
    now_epoch float8 := extract(epoch FROM now());
BEGIN
    WHILE got < p_chunks LOOP
        SELECT wp.project, wp.model INTO proj FROM work_projects wp
        WHERE (wp.model = ANY (p_models) OR (p_catch_all AND wp.model <> ALL (p_named)))
          AND wp.project <> ALL (p_skip_projects)
          AND (wp.project || E'\x1f' || wp.model) <> ALL (passed)
        ORDER BY wp.turn LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            EXIT WHEN holding;
            -- Every candidate is being claimed from right now: wait for the first in turn.
            SELECT wp.project, wp.model INTO proj FROM work_projects wp
            WHERE (wp.model = ANY (p_models) OR (p_catch_all AND wp.model <> ALL (p_named)))
              AND wp.project <> ALL (p_skip_projects)
              AND (wp.project || E'\x1f' || wp.model) <> ALL (passed)
            ORDER BY wp.turn LIMIT 1 FOR UPDATE;
            EXIT WHEN NOT FOUND;
        END IF;
        holding := true;
        found_one := false;
        -- Bounded: a project whose first batches in turn have nothing free (all leased, being
        -- cancelled, past their window) is passed over for this call.
        FOR bat IN SELECT wb.batch_id FROM work_batches wb
                   WHERE wb.project = proj.project AND wb.model = proj.model AND wb.expires_at > now_epoch
                   ORDER BY wb.turn, wb.expires_at LIMIT 32
        LOOP
            PERFORM 1 FROM batch_view v WHERE v.id = bat.batch_id AND v.status = ANY (p_statuses);
            CONTINUE WHEN NOT FOUND;
            SELECT w.chunk_no INTO chunk_found FROM work_chunks w
            WHERE w.batch_id = bat.batch_id AND NOT w.done
              AND (w.lease_expires_at IS NULL OR w.lease_expires_at < now())
            ORDER BY w.chunk_no LIMIT 1 FOR UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            new_turn := nextval('work_turns');
            RETURN QUERY
                UPDATE work_chunks w
                SET lease_owner = p_owner, lease_epoch = w.lease_epoch + 1,
                    lease_expires_at = now() + make_interval(secs => p_lease)
                WHERE w.batch_id = bat.batch_id AND w.chunk_no = chunk_found
                RETURNING w.batch_id, w.chunk_no, w.first_index, w.count, w.byte_start, w.byte_end, w.lease_epoch;
            UPDATE work_batches wb SET turn = new_turn WHERE wb.batch_id = bat.batch_id;
            UPDATE work_projects wp SET turn = new_turn WHERE wp.project = proj.project AND wp.model = proj.model;
            got := got + 1;
            found_one := true;
            EXIT;
        END LOOP;
        IF NOT found_one THEN
            passed := passed || (proj.project || E'\x1f' || proj.model);
            -- A project whose batches have all ended leaves the rotation (its row is ours).
            DELETE FROM work_projects wp WHERE wp.project = proj.project AND wp.model = proj.model
              AND NOT EXISTS (SELECT 1 FROM work_batches wb WHERE wb.project = proj.project AND wb.model = proj.model);
        END IF;
    END LOOP;
END
$$;
