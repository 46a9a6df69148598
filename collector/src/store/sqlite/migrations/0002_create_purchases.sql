CREATE TABLE purchases (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    purchased_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
-- Append-only: a changed usage day is a reversal (negative) plus new entries.
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE INDEX ledger_by_window ON ledger (user, product, window_start_ns);
CREATE INDEX ledger_by_team ON ledger (team, seq);
