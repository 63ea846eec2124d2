-- When each piece of file bytes was written. Uploads now write their pieces in short
-- transactions of their own as they arrive (a slow client holds no transaction), so the pieces
-- of an upload that never became a file (the client left, the process died) are visible:
-- blob_orphans_delete removes those that no file_view row names and nothing has added to for a
-- while.
ALTER TABLE file_blobs ADD COLUMN written_at timestamptz NOT NULL DEFAULT now();
