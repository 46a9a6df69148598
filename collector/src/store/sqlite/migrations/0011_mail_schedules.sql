-- Scheduled mail (docs/collector.md, "Mail"): who gets what, how often, and when next.
-- `kind` is the schedule's kind and parameters as JSON; `recipient` is kept as given and
-- counted lower-cased (at most five schedules a recipient). Instants are RFC 3339, UTC.
CREATE TABLE mail_schedules (
    id TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL,
    every TEXT,          -- NULL: a low-balance alert, sent on the event
    start TEXT NOT NULL,
    next_run TEXT,       -- NULL: a low-balance alert
    created_at TEXT NOT NULL
);
CREATE INDEX mail_schedules_by_recipient ON mail_schedules (lower(recipient));
-- A low-balance schedule's last reading of each team's remaining tokens: the alert goes
-- out when a reading crosses below the threshold, once, and a restart resumes from here.
CREATE TABLE low_balance_readings (
    schedule TEXT NOT NULL REFERENCES mail_schedules (id) ON DELETE CASCADE,
    team TEXT NOT NULL,
    remaining INTEGER NOT NULL,
    PRIMARY KEY (schedule, team)
);
