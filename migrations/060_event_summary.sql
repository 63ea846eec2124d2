-- A request outcome's summary beside its data: the event without its response body and its
-- attempts, and the body's length (events.OutcomeSummary). `projections rebuild` folds the views
-- from it (counts, usage, result line sizes) without moving every ~1 kB body: half a rebuild's
-- time went to moving them. Written once, with the event, by store.append_outcomes; the
-- append-only triggers keep it as immutable as the data it summarises. NULL for every other
-- event and for outcomes recorded before this migration (the fold reads their data instead).
-- No default, so no table rewrite.
ALTER TABLE events ADD COLUMN summary bytea;
