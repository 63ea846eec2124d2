-- Input files past their expires_at have their stored bytes purged by a job (SPEC §12.5), not
-- only hidden. The job finds them by a copy of a view field (the doc stays the truth), like the
-- other lookup columns: purge_after, the expires_at of an input file whose bytes are still
-- stored (not purged, not deleted: a deletion frees them on its own); NULL for every other file.
ALTER TABLE file_view ADD COLUMN purge_after bigint;
UPDATE file_view SET purge_after = (convert_from(doc, 'UTF8')::jsonb ->> 'expires_at')::bigint
WHERE purpose = 'batch' AND NOT deleted;
CREATE INDEX file_view_purge_due ON file_view (purge_after) WHERE purge_after IS NOT NULL;
