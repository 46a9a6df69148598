-- Purchase corrections: a purchase's tokens or expiry set anew, with the values before
-- and after and the admin's reason. Append-only, like the ledger: `purchases` holds a
-- purchase as it stands now, this table how it came to.
CREATE TABLE purchase_corrections (
    id TEXT PRIMARY KEY,
    purchase TEXT NOT NULL,
    at TEXT NOT NULL,
    tokens_before INTEGER NOT NULL,
    tokens_after INTEGER NOT NULL,
    expires_before TEXT NOT NULL,
    expires_after TEXT NOT NULL,
    reason TEXT NOT NULL
);
