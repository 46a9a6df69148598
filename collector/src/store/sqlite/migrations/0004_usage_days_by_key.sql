-- Fewer b-trees to write per sync. usage_days is kept in key order (no rowid table
-- beside its primary key). The sessions of a key are found by end alone: the sessions
-- that start at or after a resume point are those that end at or after it.
CREATE TABLE usage_days_by_key (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    day TEXT NOT NULL,
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    short_row INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, product, window_start_ns)
) WITHOUT ROWID;
INSERT INTO usage_days_by_key (user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row)
    SELECT user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row FROM usage_days;
DROP TABLE usage_days;
ALTER TABLE usage_days_by_key RENAME TO usage_days;
CREATE INDEX usage_days_by_day ON usage_days (day);
-- Resuming a walk reads the last count_free row before an instant: one seek, however
-- long the key's history. Partial: the charged rows (all of them unless the policy
-- counts short sessions free) cost no index writes.
CREATE INDEX usage_days_short ON usage_days (user, product, window_start_ns) WHERE short_row = 1;
DROP INDEX sessions_by_key;
