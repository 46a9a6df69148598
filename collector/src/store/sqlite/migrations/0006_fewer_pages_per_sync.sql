-- Fewer pages written per sync. Every page a commit changes goes to the write-ahead
-- log whole, and before this version a 50-session sync changed about 28 (2 KB of log
-- per session): a page of each b-tree ordered by key or by id, for each key and each
-- calendar day it touched.
--
-- Sessions in arrival order, with no index of their own: each sync appends its rows
-- (one b-tree, written at its end) instead of inserting into three. The writer finds
-- an id in memory (see `ids`), and a key's sessions through `session_runs`: one row per
-- sync and product, naming the consecutive rows that sync added and how far they
-- reach, ordered by user so that one sync's runs share a page. Measured (1M inserts,
-- 1,000 per transaction, development VM): 2.6 µs per session for the table alone
-- against 6.0 µs with the index by id and by key.
CREATE TABLE sessions_arrived (
    id TEXT NOT NULL,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    product TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    body TEXT NOT NULL
);
INSERT INTO sessions_arrived (id, user, device, product, start_ns, end_ns, body)
    SELECT id, user, device, product, start_ns, end_ns, body FROM sessions
    ORDER BY user, product, start_ns, id;
DROP TABLE sessions;
ALTER TABLE sessions_arrived RENAME TO sessions;
-- first_row..=last_row: consecutive rows of one key; start_ns, end_ns: the earliest
-- start and latest end among them.
CREATE TABLE session_runs (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    first_row INTEGER NOT NULL,
    last_row INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    PRIMARY KEY (user, first_row)
) WITHOUT ROWID;
-- The sessions kept so far, in runs of 64 by start.
INSERT INTO session_runs (user, product, first_row, last_row, start_ns, end_ns)
    SELECT user, product, MIN(rowid), MAX(rowid), MIN(start_ns), MAX(end_ns) FROM (
        SELECT rowid, user, product, start_ns, end_ns,
               (row_number() OVER (PARTITION BY user, product ORDER BY rowid) - 1) / 64 AS chunk
        FROM sessions)
    GROUP BY user, product, chunk;
-- Usage days by user, then window start: one sync's new days, whatever their product,
-- are neighbours. The index by day is gone: listing days by date scans the table (the
-- index took a page per calendar day a sync touched).
CREATE TABLE usage_days_by_user (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    day TEXT NOT NULL,
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    short_row INTEGER NOT NULL DEFAULT 0,
    drawn TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (user, window_start_ns, product)
) WITHOUT ROWID;
INSERT INTO usage_days_by_user (user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row, drawn)
    SELECT user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row, drawn FROM usage_days;
DROP TABLE usage_days;
ALTER TABLE usage_days_by_user RENAME TO usage_days;
CREATE INDEX usage_days_short ON usage_days (user, product, window_start_ns) WHERE short_row = 1;
-- The ledger without AUTOINCREMENT, which wrote `sqlite_sequence` on every entry: no
-- entry is ever deleted, so the largest `seq` only grows and a plain rowid never
-- hands out one again.
CREATE TABLE ledger_appended (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    team TEXT NOT NULL,
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    day TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    purchase TEXT,
    tokens INTEGER NOT NULL,
    reason TEXT NOT NULL
);
INSERT INTO ledger_appended (seq, at, team, user, product, day, window_start_ns, purchase, tokens, reason)
    SELECT seq, at, team, user, product, day, window_start_ns, purchase, tokens, reason FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_appended RENAME TO ledger;
