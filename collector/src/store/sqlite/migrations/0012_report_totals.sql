-- Totals the reports read instead of a year of usage days (see `store::tally`).
-- `key_months`: one row per key and month (`YYYY-MM`) with each day's tokens and
-- usage days, `used_days` the days with any (248 bytes: 31 tokens, then 31 counts, little-endian 32-bit), ordered by
-- month so that a range of months is one range of the table; a key's rows are found
-- through the month and the user. Filled from the usage days after this migration.
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
-- Each product's tokens and usage days by day, over all users: the tokens-by-day chart
-- and a year's totals in a few hundred rows.
CREATE TABLE product_days (
    product TEXT NOT NULL,
    day TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    days INTEGER NOT NULL,
    PRIMARY KEY (day, product)
) WITHOUT ROWID;
-- Each team's tokens and usage days by day: a team's burn rate in ninety rows. Keyed by
-- the team a user is in when the day is settled; an import rebuilds it from
-- `key_months`, so a user moved to another team takes their days along.
CREATE TABLE team_days (
    team TEXT NOT NULL,
    day TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    days INTEGER NOT NULL,
    PRIMARY KEY (team, day)
) WITHOUT ROWID;
-- The latest effective end (ns) of each key's sessions: its last access, without
-- reading its sessions.
CREATE TABLE key_reach (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    last_end_ns INTEGER NOT NULL,
    PRIMARY KEY (user, product)
) WITHOUT ROWID;
-- Each key's months in key order, with their totals: a range of whole months summed
-- per key without sorting, and a page of users' rows without scanning every user's.
CREATE INDEX key_months_by_key ON key_months (user, product, month, tokens, used_days);
-- Each team's tokens charged that no purchase could pay: its balance's `unfunded`,
-- which was a sum over every ledger entry's JSON at each request.
CREATE TABLE team_unfunded (
    team TEXT PRIMARY KEY,
    tokens INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO team_unfunded (team, tokens)
    SELECT team, SUM(tokens) FROM ledger WHERE purchase IS NULL GROUP BY team;
