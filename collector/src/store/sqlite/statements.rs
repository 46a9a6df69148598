//! The prepared statements every sync runs, kept for the writer's connection.

use super::*;

/// The statements every sync runs.
#[derive(Clone, Copy)]
pub(super) enum Sql {
    InsertSession,
    FindSession,
    UpdateSession,
    TouchUser,
    TouchDevice,
    PutDay,
    DropDay,
    AddLedger,
    PutUsed,
}

impl Sql {
    const COUNT: usize = 9;

    pub(super) fn text(self) -> &'static str {
        match self {
            Sql::InsertSession => {
                "INSERT INTO session_batches (first_row, user, device, product, bodies, ends) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
            Sql::FindSession => FIND_BATCH,
            Sql::UpdateSession => {
                "UPDATE session_batches SET bodies = ?2, ends = ?3 WHERE first_row = ?1"
            }
            // Recorded to the minute: a user syncing every few seconds does not rewrite
            // this table's page in every group (RFC 3339 in UTC sorts as text).
            Sql::TouchUser => {
                "INSERT INTO users (user, last_sync) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET last_sync = excluded.last_sync WHERE users.last_sync < ?3"
            }
            // To the minute too, for the same reason.
            Sql::TouchDevice => {
                "UPDATE devices SET last_sync = ?2 WHERE id = ?1 AND (last_sync IS NULL OR last_sync < ?3)"
            }
            Sql::PutDay => {
                "INSERT INTO usage_days (user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row, drawn, waste)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (user, window_start_ns, product) DO UPDATE SET window_end_ns = excluded.window_end_ns,
                   day = excluded.day, plan = excluded.plan, tokens = excluded.tokens, short_row = excluded.short_row,
                   drawn = excluded.drawn, waste = excluded.waste"
            }
            Sql::DropDay => {
                "DELETE FROM usage_days WHERE user = ?1 AND product = ?2 AND window_start_ns = ?3"
            }
            Sql::AddLedger => {
                "INSERT INTO ledger_batches (seq, at, team, user, product, entries) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
            Sql::PutUsed => "UPDATE purchases SET used = ?2 WHERE id = ?1",
        }
    }
}

/// The statements of [`Sql`], each taken from the connection's statement cache once per
/// transaction rather than at every use: rusqlite's cache hashes a statement's text to
/// find it and clears its bindings when it gets it back, which was a sixth of the
/// writer's instructions with 5-session syncs (callgrind). A statement is taken out for
/// as long as it is used and handed back; the cache gets them all back at the end.
pub(super) struct Hot<'c> {
    pub(super) t: &'c Connection,
    pub(super) held: [Option<rusqlite::CachedStatement<'c>>; Sql::COUNT],
}

impl<'c> Hot<'c> {
    pub(super) fn new(t: &'c Connection) -> Hot<'c> {
        Hot {
            t,
            held: std::array::from_fn(|_| None),
        }
    }

    pub(super) fn take(&mut self, sql: Sql) -> Result<rusqlite::CachedStatement<'c>, StoreError> {
        match self.held[sql as usize].take() {
            Some(statement) => Ok(statement),
            None => self.t.prepare_cached(sql.text()).map_err(db),
        }
    }

    pub(super) fn give_back(&mut self, sql: Sql, statement: rusqlite::CachedStatement<'c>) {
        self.held[sql as usize] = Some(statement);
    }
}
