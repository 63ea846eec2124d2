-- Large events are stored compressed by the application (events.stored): events.data holds an
-- event's msgspec JSON, or from 2 kB of it a zstd frame of that JSON (the first bytes tell which:
-- '{' or zstd's magic number). Postgres's own pglz finds only repeats, so the base64 of an
-- embedding, 4 characters for 3 random bytes, did not shrink at all, and text shrank less.
--
-- size: the length of the event's JSON, so that the byte budgets of the result pages
-- (results.sql) count what a page will hold once decompressed, not its frames (a 64 MB answer
-- of one repeated character is a frame of a few kB). NULL for events stored before this
-- migration, whose data is their JSON: octet_length(data) is that length (it reads a pglz
-- value's raw size from its header).
--
-- STORAGE EXTERNAL: pglz is not tried on what zstd already packed (it gives up only after the
-- first kB of each value); data still goes out of line to TOAST when large. Both changes touch
-- only the catalog: no table rewrite, the rows stored before keep their form.
ALTER TABLE events ADD COLUMN size integer;
ALTER TABLE events ALTER COLUMN data SET STORAGE EXTERNAL;
