-- The last session row the runs written out cover (`MAX(last_row)`): every page of
-- sessions a report reads starts from it, and without an index it was a scan of every
-- run (400,000 rows at 10,000 users, a third of a waste report's time). The writer adds
-- runs in bulk and in row order, so the index grows at its end.
CREATE INDEX session_runs_by_last_row ON session_runs (last_row);
