-- File bytes (table file_blobs, migrations/003), in pieces of 1 MiB: content, not state.

-- blob_piece_insert --
INSERT INTO file_blobs (file_id, piece, data) VALUES ($1, $2, $3)

-- blob_pieces_range --
SELECT data FROM file_blobs WHERE file_id = $1 AND piece >= $2 AND piece <= $3 ORDER BY piece

-- blob_delete --
DELETE FROM file_blobs WHERE file_id = $1

-- blob_orphans_delete --
-- Pieces of uploads that never became a file: no file_view row names their file id (a file
-- exists from the commit of its file_created event, which writes that row) and no piece was
-- added for $1 seconds (a live upload adds one at least every read timeout). Returns the file
-- ids freed.
WITH orphan AS (
    SELECT b.file_id FROM file_blobs b
    WHERE NOT EXISTS (SELECT 1 FROM file_view f WHERE f.id = b.file_id)
    GROUP BY b.file_id
    HAVING max(b.written_at) < now() - make_interval(secs => $1)
)
DELETE FROM file_blobs b USING orphan o WHERE b.file_id = o.file_id
RETURNING b.file_id
