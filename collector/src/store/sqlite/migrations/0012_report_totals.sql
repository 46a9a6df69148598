-- Totals the reports read instead of a year of usage days (see `store::tally`).
-- `key_months`: one row per key and month (`YYYY-MM`) with its tokens, usage days and
-- days with any (`used_days`), and each day's tokens and count (`by_day`, 155 bytes:
-- 31 tokens as little-endian 32-bit, then 31 counts of one byte). Ordered by month, so
-- that a rolling range's cut months are one range of the table; the index by key,
-- which carries the totals, sums a range of whole months key by key without sorting
-- and without reading the days. (Kept in key order with an index by month instead,
-- a sync's writes were no cheaper in an A/B and a year's sum was ten times slower at
-- 10,000 users: the scan read every row's days.) Filled from the usage days after
-- this migration.
CREATE TABLE key_months (
    month TEXT NOT NULL,
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    days INTEGER NOT NULL,
    used_days INTEGER NOT NULL,
    by_day BLOB NOT NULL,
    PRIMARY KEY (month, user, product)
) WITHOUT ROWID;
-- Each key's months in key order with their totals: a range of whole months summed
-- per key, and a page of users' rows.
CREATE INDEX key_months_by_key ON key_months (user, product, month, tokens, used_days);
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
