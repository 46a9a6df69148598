CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    enrolled_at TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
-- body: the session as received, offsets kept (before version 7 of the collector:
-- serialized again, with user and device; both forms read back alike).
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    product TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX sessions_by_key ON sessions (user, product, start_ns);
CREATE TABLE usage_days (
    user TEXT NOT NULL,
    product TEXT NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL,
    day TEXT NOT NULL,
    plan TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (user, product, window_start_ns)
);
CREATE INDEX usage_days_by_day ON usage_days (day);
CREATE TABLE users (
    user TEXT PRIMARY KEY,
    last_sync TEXT NOT NULL
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
