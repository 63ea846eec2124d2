-- A file's expires_at as a column of its view, so that a list page filters expired files in
-- SQL, before LIMIT: filtered after it, a page could come back short or empty with has_more
-- true, and the SDK's auto-pagination stopped early. Copied from the view's doc, like the
-- other lookup columns (rebuild writes it too).
ALTER TABLE file_view ADD COLUMN expires_at bigint;
UPDATE file_view SET expires_at = (convert_from(doc, 'UTF8')::jsonb ->> 'expires_at')::bigint;
