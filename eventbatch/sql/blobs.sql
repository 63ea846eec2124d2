-- File bytes (table file_blobs, migrations/003), in pieces of 1 MiB: content, not state.

-- blob_piece_insert --
INSERT INTO file_blobs (file_id, piece, data) VALUES ($1, $2, $3)

-- blob_pieces_range --
SELECT data FROM file_blobs WHERE file_id = $1 AND piece >= $2 AND piece <= $3 ORDER BY piece

-- blob_delete --
DELETE FROM file_blobs WHERE file_id = $1
