//! Devices, purchases, the settings, and a settled key's days and ledger entries (the
//! [`Sink`] of `store::settle`), as rows.

use super::*;

pub(super) fn add_device(t: &Connection, d: &Device) -> Result<(), StoreError> {
    t.execute(
        "INSERT INTO devices (id, hostname, os, agent_version, token_hash, enrolled_at, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![d.id, d.hostname, d.os, d.agent_version, &d.token_hash[..], d.enrolled_at.to_rfc3339(), d.revoked],
    )
    .map_err(db)?;
    Ok(())
}

/// Gives device `d.id` the token hash, hostname, OS and agent version of `d` and lifts
/// its revocation, provided its token hash is still `proof`: of two re-enrolments with
/// the same old token only the first links. `false` when no row had both.
pub(super) fn reenrol_device(
    t: &Connection,
    d: &Device,
    proof: &[u8; 32],
) -> Result<bool, StoreError> {
    let changed = t
        .execute(
            "UPDATE devices SET token_hash = ?1, hostname = ?2, os = ?3, agent_version = ?4, revoked = 0 WHERE id = ?5 AND token_hash = ?6",
            params![&d.token_hash[..], d.hostname, d.os, d.agent_version, d.id, &proof[..]],
        )
        .map_err(db)?;
    Ok(changed > 0)
}

/// The teams' purchases and what each has paid for: what is committed plus the open
/// transaction's changes. Owned by the writer, the only one that changes them; a team is
/// loaded on first use, and everything is dropped when a transaction is rolled back.
#[derive(Default)]
pub(super) struct Ledgers {
    pub(super) teams: HashMap<String, Ledger>,
    /// The seq of the next ledger entry; read from the database at first use.
    pub(super) next_seq: Option<i64>,
}

impl Ledgers {
    pub(super) fn of(&mut self, t: &Connection, team: &str) -> Result<&mut Ledger, StoreError> {
        if !self.teams.contains_key(team) {
            let ledger = load_ledger(t, team)?;
            self.teams.insert(team.to_owned(), ledger);
        }
        self.teams
            .get_mut(team)
            .ok_or_else(|| corrupt("ledger not loaded"))
    }

    /// Takes `n` ledger seqs: the first of them.
    pub(super) fn take_seqs(&mut self, t: &Connection, n: i64) -> Result<i64, StoreError> {
        let next = match self.next_seq {
            Some(next) => next,
            None => t
                .query_row(
                    "SELECT seq + json_array_length(entries) FROM ledger_batches ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(1),
        };
        self.next_seq = Some(next + n);
        Ok(next)
    }

    /// Forgets what may include changes rolled back.
    pub(super) fn clear(&mut self) {
        self.teams.clear();
        self.next_seq = None;
    }
}

/// Where settling one key goes on this backend (see [`crate::store::settle`]): usage
/// days through the writer's held statements, ledger entries gathered into one
/// `ledger_batches` row per key (their JSON array), and what purchases have paid for.
pub(super) struct SqliteSink<'b, 'c> {
    pub(super) t: &'b Connection,
    pub(super) hot: &'b mut Hot<'c>,
    pub(super) ledgers: &'b mut Ledgers,
    /// Where the report totals' differences gather until the transaction commits.
    pub(super) totals: &'b mut Pending,
    pub(super) key: Key<'b>,
    /// When the entries are booked (RFC 3339).
    pub(super) at: &'b str,
    /// The entries booked so far, as the JSON array `ledger_batches.entries` holds.
    entries: Vec<u8>,
    /// How many.
    booked: i64,
    /// Their tokens that no purchase paid (reversals negative).
    unfunded: i64,
    /// `PutDay` with user and product bound, once a day is written.
    put: Option<rusqlite::CachedStatement<'c>>,
    drop_row: Option<rusqlite::CachedStatement<'c>>,
}

impl<'b, 'c> SqliteSink<'b, 'c> {
    pub(super) fn new(
        t: &'b Connection,
        hot: &'b mut Hot<'c>,
        ledgers: &'b mut Ledgers,
        totals: &'b mut Pending,
        key: Key<'b>,
        at: &'b str,
    ) -> SqliteSink<'b, 'c> {
        SqliteSink {
            t,
            hot,
            ledgers,
            totals,
            key,
            at,
            entries: Vec::new(),
            booked: 0,
            unfunded: 0,
            put: None,
            drop_row: None,
        }
    }
}

impl Sink for SqliteSink<'_, '_> {
    fn ledger(&mut self) -> Result<&mut Ledger, StoreError> {
        self.ledgers.of(self.t, self.key.team)
    }

    fn put_day(&mut self, start: i64, row: &StoredDay) -> Result<(), StoreError> {
        let put = match &mut self.put {
            Some(put) => put,
            None => {
                let mut put = self.hot.take(Sql::PutDay)?;
                // User and product are bound once for the key.
                put.raw_bind_parameter(1, self.key.user).map_err(db)?;
                put.raw_bind_parameter(2, self.key.product).map_err(db)?;
                self.put.insert(put)
            }
        };
        let drawn = serde_json::to_string(&row.drawn).map_err(corrupt)?;
        put.raw_bind_parameter(3, start).map_err(db)?;
        put.raw_bind_parameter(4, row.end).map_err(db)?;
        put.raw_bind_parameter(5, &row.day).map_err(db)?;
        put.raw_bind_parameter(6, &row.plan).map_err(db)?;
        put.raw_bind_parameter(7, row.tokens).map_err(db)?;
        put.raw_bind_parameter(8, row.short).map_err(db)?;
        put.raw_bind_parameter(9, &drawn).map_err(db)?;
        put.raw_bind_parameter(10, row.marks.bits()).map_err(db)?;
        put.raw_execute().map_err(db)?;
        Ok(())
    }

    fn drop_day(&mut self, start: i64) -> Result<(), StoreError> {
        let drop_row = match &mut self.drop_row {
            Some(d) => d,
            None => self.drop_row.insert(self.hot.take(Sql::DropDay)?),
        };
        drop_row
            .execute(params![self.key.user, self.key.product, start])
            .map_err(db)?;
        Ok(())
    }

    fn tally(&mut self, tally: &Tally) -> Result<(), StoreError> {
        self.totals.tally(self.key, tally);
        Ok(())
    }

    fn reach(&mut self, last_end: i64) -> Result<(), StoreError> {
        self.totals.reach(self.key, last_end);
        Ok(())
    }

    fn book(&mut self, e: Entry<'_>) -> Result<(), StoreError> {
        self.entries
            .push(if self.booked == 0 { b'[' } else { b',' });
        serde_json::to_writer(
            &mut self.entries,
            &(e.day, e.window_start, e.purchase, e.tokens, e.reason),
        )
        .map_err(corrupt)?;
        self.booked += 1;
        if e.purchase.is_none() {
            self.unfunded += e.tokens;
        }
        Ok(())
    }

    /// Writes the booked entries (one batch) and what the changed purchases have paid for.
    fn finish(&mut self, changed: &std::collections::BTreeSet<String>) -> Result<(), StoreError> {
        if let Some(put) = self.put.take() {
            self.hot.give_back(Sql::PutDay, put);
        }
        if let Some(drop_row) = self.drop_row.take() {
            self.hot.give_back(Sql::DropDay, drop_row);
        }
        if self.booked > 0 {
            self.entries.push(b']');
            // Bound as text: SQLite's JSON functions read a blob as its binary JSON.
            let entries = std::str::from_utf8(&self.entries).map_err(corrupt)?;
            let seq = self.ledgers.take_seqs(self.t, self.booked)?;
            let mut add = self.hot.take(Sql::AddLedger)?;
            add.execute(params![
                seq,
                self.at,
                self.key.team,
                self.key.user,
                self.key.product,
                entries
            ])
            .map_err(db)?;
            self.hot.give_back(Sql::AddLedger, add);
            self.entries.clear();
            self.booked = 0;
        }
        if self.unfunded != 0 {
            self.totals.unfunded(self.key.team, self.unfunded);
            self.unfunded = 0;
        }
        if changed.is_empty() {
            return Ok(());
        }
        let mut put = self.hot.take(Sql::PutUsed)?;
        let ledger = self.ledgers.of(self.t, self.key.team)?;
        for id in changed {
            let used = ledger.used.get(id).copied().unwrap_or(0);
            put.execute(params![id, used as i64]).map_err(db)?;
        }
        self.hot.give_back(Sql::PutUsed, put);
        Ok(())
    }
}

pub(super) fn load_ledger(t: &Connection, team: &str) -> Result<Ledger, StoreError> {
    let mut ledger = Ledger::default();
    let mut stmt = t
        .prepare_cached("SELECT id, team, tokens, purchased_at, expires_at, used FROM purchases WHERE team = ?1")
        .map_err(db)?;
    let rows = stmt.query_map([team], purchase_row).map_err(db)?;
    for row in rows {
        let (purchase, used) = row.map_err(db)?;
        let purchase = purchase?;
        ledger.used.insert(purchase.id.clone(), used);
        ledger.purchases.push(purchase);
    }
    Ok(ledger)
}

pub(super) type PurchaseRow = (Result<Purchase, StoreError>, u64);

pub(super) fn purchase_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PurchaseRow> {
    let when = |s: String| {
        DateTime::parse_from_rfc3339(&s)
            .map(|d| d.to_utc())
            .map_err(corrupt)
    };
    let (bought, expires): (String, String) = (r.get(3)?, r.get(4)?);
    let purchase = (|| {
        Ok(Purchase {
            id: r.get(0).map_err(db)?,
            team: r.get(1).map_err(db)?,
            tokens: r.get::<_, i64>(2).map_err(db)?.max(0) as u64,
            purchased_at: when(bought)?,
            expires_at: when(expires)?,
        })
    })();
    Ok((purchase, r.get::<_, i64>(5)?.max(0) as u64))
}

pub(super) fn add_purchase(
    t: &Connection,
    p: &Purchase,
    ledgers: &mut Ledgers,
) -> Result<(), StoreError> {
    t.execute(
        "INSERT INTO purchases (id, team, tokens, purchased_at, expires_at, used) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
        params![p.id, p.team, p.tokens as i64, p.purchased_at.to_rfc3339(), p.expires_at.to_rfc3339()],
    )
    .map_err(db)?;
    if let Some(ledger) = ledgers.teams.get_mut(&p.team) {
        ledger.purchases.push(p.clone());
    }
    Ok(())
}

/// Sets a purchase's tokens and expiry anew and records the correction beside it.
/// Days it already paid for stay paid (the ledger is never rewritten); what it can
/// still pay follows the new values. False: no such purchase.
pub(super) fn correct_purchase(
    t: &Connection,
    c: &PurchaseCorrection,
    ledgers: &mut Ledgers,
) -> Result<bool, StoreError> {
    let recorded = t
        .execute(
            "INSERT INTO purchase_corrections
                 (id, purchase, at, tokens_before, tokens_after, expires_before, expires_after, reason)
             SELECT ?1, id, ?3, tokens, ?4, expires_at, ?5, ?6 FROM purchases WHERE id = ?2",
            params![
                c.id,
                c.purchase,
                c.at.to_rfc3339(),
                c.tokens as i64,
                c.expires_at.to_rfc3339(),
                c.reason
            ],
        )
        .map_err(db)?;
    if recorded == 0 {
        return Ok(false);
    }
    t.execute(
        "UPDATE purchases SET tokens = ?2, expires_at = ?3 WHERE id = ?1",
        params![c.purchase, c.tokens as i64, c.expires_at.to_rfc3339()],
    )
    .map_err(db)?;
    for ledger in ledgers.teams.values_mut() {
        for p in ledger.purchases.iter_mut().filter(|p| p.id == c.purchase) {
            p.tokens = c.tokens;
            p.expires_at = c.expires_at;
        }
    }
    Ok(true)
}

pub(super) fn put_settings(
    t: &Connection,
    settings: &Settings,
    ledgers: &mut Ledgers,
    runs: &mut Runs,
    totals: &mut Pending,
    hot: &mut Hot<'_>,
) -> Result<(), StoreError> {
    // Every key is recomputed from the database below: its runs must all be there.
    flush_runs(t, runs)?;
    let mut put = t
        .prepare_cached("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .map_err(db)?;
    put.execute(params![
        "policy",
        serde_json::to_string(&settings.policy).map_err(corrupt)?
    ])
    .map_err(db)?;
    put.execute(params![
        "catalog",
        serde_json::to_string(&settings.catalog).map_err(corrupt)?
    ])
    .map_err(db)?;
    put.execute(params![
        "teams",
        serde_json::to_string(&settings.teams).map_err(corrupt)?
    ])
    .map_err(db)?;
    put.execute(params![
        "entitlements",
        serde_json::to_string(&settings.entitlements).map_err(corrupt)?
    ])
    .map_err(db)?;
    put.execute(params![
        "people",
        serde_json::to_string(&settings.people).map_err(corrupt)?
    ])
    .map_err(db)?;
    put.execute(params![
        "prices",
        serde_json::to_string(&settings.prices).map_err(corrupt)?
    ])
    .map_err(db)?;
    let keys: Vec<(String, String)> = {
        let mut stmt = t
            .prepare("SELECT DISTINCT user, product FROM session_runs")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    let now = Utc::now().to_rfc3339();
    for (user, product) in keys {
        let mut tail = load_tail(t, runs, &user, &product, i64::MIN, &[])?;
        let key = Key::of(settings, &user, &product);
        let mut sink = SqliteSink::new(t, hot, ledgers, totals, key, &now);
        settle(&mut sink, settings, key, Cause::Import, &mut tail, i64::MIN)?;
    }
    // Teams may have changed: each user's days go to their team now, read from the
    // months with this import's differences in them.
    totals.flush(t)?;
    super::backfill::team_days(t, settings)
}

pub(super) fn read_settings(conn: &Connection) -> Result<Settings, StoreError> {
    let mut settings = Settings::default();
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM settings")
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(db)?;
    for row in rows {
        let (key, value) = row.map_err(db)?;
        match key.as_str() {
            "policy" => settings.policy = serde_json::from_str(&value).map_err(corrupt)?,
            "catalog" => settings.catalog = serde_json::from_str(&value).map_err(corrupt)?,
            "entitlements" => {
                settings.entitlements = serde_json::from_str(&value).map_err(corrupt)?
            }
            "teams" => settings.teams = serde_json::from_str(&value).map_err(corrupt)?,
            "people" => settings.people = serde_json::from_str(&value).map_err(corrupt)?,
            "prices" => settings.prices = serde_json::from_str(&value).map_err(corrupt)?,
            _ => {}
        }
    }
    Ok(settings)
}

pub(super) fn day_start_ns(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_nanos_opt().unwrap_or_default())
}
