-- Waste marks on each usage day (see `daymeter_shared::waste`): bit 0 idle (no instant
-- of use in the window), bit 1 rolled (opened at the previous window's end by a session
-- left open). Set when a key settles; a database from before this migration gets them
-- at open, walking every key's sessions once; this row says it is still to do (see
-- `backfill::MARKS_PENDING`).
ALTER TABLE usage_days ADD COLUMN waste INTEGER NOT NULL DEFAULT 0;
INSERT OR REPLACE INTO settings (key, value) VALUES ('waste_marks_pending', 'true');
-- The idle days only (a small part of all days; only they cost anything in waste):
-- one user's waste totals, and the waste columns of `day_totals` rebuilt after an
-- import, without reading every day.
CREATE INDEX usage_days_waste ON usage_days (user, day, product, tokens, waste) WHERE waste & 1 = 1;
-- Tokens of idle windows (`wasted`) and of idle rolled ones (`saved`: what
-- `rollover = active` would not have charged) by day, team and product, kept beside
-- `tokens`: the waste report's totals over every user in a few hundred rows.
ALTER TABLE day_totals ADD COLUMN wasted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE day_totals ADD COLUMN saved INTEGER NOT NULL DEFAULT 0;
