//! The report totals (`key_months`, `day_totals`, `key_reach`) of a database written
//! before they existed, built once when the store opens after the migration that made
//! their tables. From then on settling keeps them (see `store::tally`).

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::Tally;
use super::runs::Runs;
use super::{
    Hot, Ledgers, Marks, Month, Pending, Settings, SqliteSink, StoreError, corrupt, db, load_tail,
};
use crate::reports::Teams;
use crate::store::settle::{Key, mark};

/// The version whose migration created the totals' tables.
pub(super) const TOTALS_VERSION: i64 = 12;

/// Fills the totals from the usage days and the sessions' runs (`runs`: those held in
/// memory, not yet in `session_runs`). One transaction: a crash leaves the version
/// before, and the next start builds them again.
pub(super) fn report_totals(
    conn: &mut Connection,
    runs: &Runs,
    settings: &Settings,
) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(db)?;
    let mut by_key: HashMap<(String, String), Tally> = HashMap::new();
    {
        let mut stmt = tx
            .prepare("SELECT user, product, day, tokens FROM usage_days")
            .map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let key = (r.get(0).map_err(db)?, r.get(1).map_err(db)?);
            let day: String = r.get(2).map_err(db)?;
            let tokens: i64 = r.get(3).map_err(db)?;
            by_key.entry(key).or_default().count(&day, tokens, 1);
        }
    }
    tx.execute("DELETE FROM key_months", []).map_err(db)?;
    {
        let mut put = tx
            .prepare(
                "INSERT INTO key_months (month, user, product, tokens, days, used_days, by_day) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(db)?;
        for ((user, product), tally) in &by_key {
            for (month, m) in &tally.months {
                let tokens: i64 = m.tokens.iter().sum();
                let count: i64 = m.days.iter().sum();
                put.execute(params![
                    month,
                    user,
                    product,
                    tokens,
                    count,
                    m.used_days(),
                    m.to_bytes()
                ])
                .map_err(db)?;
            }
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO key_reach (user, product, last_end_ns)
         SELECT user, product, MAX(end_ns) FROM session_runs GROUP BY user, product",
        [],
    )
    .map_err(db)?;
    {
        let mut reach = tx.prepare(super::totals::REACH).map_err(db)?;
        for (user, product, end) in runs.reaches() {
            reach.execute(params![user, product, end]).map_err(db)?;
        }
    }
    team_days(&tx, settings)?;
    tx.commit().map_err(db)?;
    tracing::info!(
        keys = by_key.len(),
        "built the report totals from the stored usage days"
    );
    Ok(())
}

/// Rebuilds the totals by day, team and product from every key's months and marked
/// days, each user's days going to the team `settings` puts them in: at open after the
/// migration, and after each import (which may move users between teams).
pub(super) fn team_days(t: &Connection, settings: &Settings) -> Result<(), StoreError> {
    let teams = Teams::new(&settings.teams);
    // (day, team, product) → tokens, usage days, wasted, saved.
    let mut sums: HashMap<(String, String, String), [i64; 4]> = HashMap::new();
    {
        let mut stmt = t
            .prepare("SELECT month, user, product, by_day FROM key_months")
            .map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let month: String = r.get(0).map_err(db)?;
            let user: String = r.get(1).map_err(db)?;
            let product: String = r.get(2).map_err(db)?;
            let bytes: Vec<u8> = r.get(3).map_err(db)?;
            let m = Month::from_bytes(&bytes)
                .ok_or_else(|| corrupt(format!("key_months {month} {user}")))?;
            let team = teams.of(&user);
            for (i, (&tokens, &days)) in m.tokens.iter().zip(&m.days).enumerate() {
                if tokens != 0 || days != 0 {
                    let day = format!("{month}-{:02}", i + 1);
                    let e = sums
                        .entry((day, team.to_owned(), product.clone()))
                        .or_default();
                    e[0] += tokens;
                    e[1] += days;
                }
            }
        }
    }
    {
        let mut stmt = t
            .prepare(
                "SELECT user, day, product, tokens, waste FROM usage_days INDEXED BY usage_days_waste
                 WHERE waste & 1 = 1",
            )
            .map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let user: String = r.get(0).map_err(db)?;
            let day: String = r.get(1).map_err(db)?;
            let product: String = r.get(2).map_err(db)?;
            let tokens: i64 = r.get(3).map_err(db)?;
            let (wasted, saved) = Marks::from_bits(r.get(4).map_err(db)?).cost(tokens);
            let e = sums
                .entry((day, teams.of(&user).to_owned(), product))
                .or_default();
            e[2] += wasted;
            e[3] += saved;
        }
    }
    t.execute("DELETE FROM day_totals", []).map_err(db)?;
    let mut put = t
        .prepare(
            "INSERT INTO day_totals (day, team, product, tokens, days, wasted, saved)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db)?;
    for ((day, team, product), [tokens, days, wasted, saved]) in &sums {
        put.execute(params![day, team, product, tokens, days, wasted, saved])
            .map_err(db)?;
    }
    Ok(())
}

/// Whether the usage days still wait for their waste marks (see [`MARKS_PENDING`]).
pub(super) fn marks_pending(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM settings WHERE key = ?1)",
        [MARKS_PENDING],
        |r| r.get(0),
    )
    .map_err(db)
}

/// The `settings` row migration 14 leaves until every stored usage day has its waste
/// marks; [`waste_marks`] deletes it in the transaction that writes them, so a crash
/// before its commit leaves it for the next start.
pub(super) const MARKS_PENDING: &str = "waste_marks_pending";

/// Marks the waste of every stored usage day (and adds it to `day_totals`), walking
/// every key's sessions once: at open, for a database from before the marks. Nothing
/// but the marks changes (see `store::settle::mark`). Minutes for a large database;
/// a new one has no key and takes no time.
pub(super) fn waste_marks(
    conn: &mut Connection,
    runs: &Runs,
    settings: &Settings,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let tx = conn.transaction().map_err(db)?;
    let keys: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT DISTINCT user, product FROM usage_days")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    if !keys.is_empty() {
        tracing::info!(
            keys = keys.len(),
            "marking the waste of the stored usage days"
        );
    }
    {
        let mut hot = Hot::new(&tx);
        let mut ledgers = Ledgers::default();
        let mut totals = Pending::default();
        for (user, product) in &keys {
            let mut tail = load_tail(&tx, runs, user, product, i64::MIN, &[])?;
            let key = Key::of(settings, user, product);
            let mut sink = SqliteSink::new(&tx, &mut hot, &mut ledgers, &mut totals, key, "");
            mark(&mut sink, settings, key, &mut tail, i64::MIN)?;
        }
        totals.flush(&tx)?;
    }
    tx.execute("DELETE FROM settings WHERE key = ?1", [MARKS_PENDING])
        .map_err(db)?;
    tx.commit().map_err(db)?;
    if !keys.is_empty() {
        tracing::info!(
            keys = keys.len(),
            seconds = started.elapsed().as_secs_f64(),
            "marked the waste of the stored usage days"
        );
    }
    Ok(())
}
