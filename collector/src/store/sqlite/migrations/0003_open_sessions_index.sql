-- Bounded recomputation: find the sessions still open at an instant, and tell the
-- count_free rows from charged windows when resuming a walk.
CREATE INDEX sessions_by_key_end ON sessions (user, product, end_ns);
ALTER TABLE usage_days ADD COLUMN short_row INTEGER NOT NULL DEFAULT 0;
