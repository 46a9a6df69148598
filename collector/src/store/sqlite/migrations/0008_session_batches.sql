-- Sessions in batches: the sessions one sync sent for one product go in one row (up to
-- 32; see `batches`). Measured (callgrind, sync_load 50x50): inserting a row per
-- session was a third of the writer's instructions per session. A session keeps its
-- number (`first_row` + its place in `bodies`); `ends` says where each body ends in
-- `bodies` (4 bytes each, big-endian). The sessions stored so far become batches of
-- one. The view `sessions` shows the sessions one by one, under their numbers.
CREATE TABLE session_batches (
    first_row INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    product TEXT NOT NULL,
    bodies TEXT NOT NULL,
    ends BLOB NOT NULL
);
INSERT INTO session_batches (first_row, user, device, product, bodies, ends)
    SELECT rowid, user, device, product, '[' || body || ']',
           unhex(printf('%08X', length(CAST(body AS BLOB)) + 1))
    FROM sessions ORDER BY rowid;
DROP TABLE sessions;
CREATE VIEW sessions (row, id, user, device, product, body) AS
    SELECT b.first_row + e.key, e.value ->> 'id', b.user, b.device, b.product, e.value
    FROM session_batches AS b, json_each(b.bodies) AS e;
