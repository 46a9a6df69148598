-- Totals the reports read instead of a year of usage days (see `store::tally`).
-- `key_months`: one row per key and month (`YYYY-MM`) with its tokens, usage days and
-- days with any (`used_days`), and each day's tokens and count (`by_day`, 155 bytes:
-- 31 tokens as little-endian 32-bit, then 31 counts of one byte). In key order: a
-- range of whole months is summed key by key in one pass without sorting, and a sync
-- that adds a day rewrites one row of one b-tree (the index by month does not change
-- when a row's totals do). Filled from the usage days after this migration.
CREATE TABLE key_months (
    month TEXT NOT NULL,
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    days INTEGER NOT NULL,
    used_days INTEGER NOT NULL,
    by_day BLOB NOT NULL,
    PRIMARY KEY (user, product, month)
) WITHOUT ROWID;
-- Every key's rows of a range of months (a rolling range's cut months).
CREATE INDEX key_months_by_month ON key_months (month);
-- Tokens and usage days by day, team and product: a year's tokens by day, a
-- product's or a team's, and a team's burn rate, in a few hundred rows. Users count in
-- the team they are in when the day is settled; every import rebuilds the table from
-- `key_months`, so a user moved to another team takes their days along.
CREATE TABLE day_totals (
    day TEXT NOT NULL,
    team TEXT NOT NULL,
    product TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    days INTEGER NOT NULL,
    PRIMARY KEY (day, team, product)
) WITHOUT ROWID;
-- The latest effective end (ns) of each key's sessions: its last access, without
-- reading its sessions.
CREATE TABLE key_reach (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    last_end_ns INTEGER NOT NULL,
    PRIMARY KEY (user, product)
) WITHOUT ROWID;
-- Each team's tokens charged that no purchase could pay: its balance's `unfunded`,
-- which was a sum over every ledger entry's JSON at each request.
CREATE TABLE team_unfunded (
    team TEXT PRIMARY KEY,
    tokens INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO team_unfunded (team, tokens)
    SELECT team, SUM(tokens) FROM ledger WHERE purchase IS NULL GROUP BY team;
