//! Devices, purchases and their ledger booking, and the settings, as rows.

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

/// Ledger bookings of one key's recomputation.
pub(super) struct Books<'b, 'c> {
    pub(super) t: &'b Connection,
    pub(super) hot: &'b mut Hot<'c>,
    /// The entries booked so far, as the JSON array `ledger_batches.entries` holds.
    pub(super) entries: Vec<u8>,
    /// How many.
    pub(super) booked: i64,
    pub(super) team: &'b str,
    pub(super) user: &'b str,
    pub(super) product: &'b str,
    /// When the entries are booked (RFC 3339).
    pub(super) at: &'b str,
    pub(super) ledgers: &'b mut Ledgers,
    /// Purchases whose use changed, to write back.
    pub(super) changed: std::collections::BTreeSet<String>,
}

impl Books<'_, '_> {
    pub(super) fn ledger(&mut self) -> Result<&mut Ledger, StoreError> {
        self.ledgers.of(self.t, self.team)
    }

    /// Books an entry; [`Books::save`] writes them all in one batch.
    pub(super) fn entry(
        &mut self,
        day: &str,
        start: i64,
        purchase: Option<&str>,
        tokens: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.entries
            .push(if self.booked == 0 { b'[' } else { b',' });
        serde_json::to_writer(&mut self.entries, &(day, start, purchase, tokens, reason))
            .map_err(corrupt)?;
        self.booked += 1;
        Ok(())
    }

    /// Books a day's tokens against the purchases active at its window start; returns
    /// what the day's entries now hold.
    pub(super) fn charge(
        &mut self,
        start: i64,
        day: &str,
        window_start: DateTime<Utc>,
        tokens: u64,
        reason: &str,
    ) -> Result<Drawn, StoreError> {
        let draw = self.ledger()?.draw(window_start, tokens);
        let mut drawn = Drawn::with_capacity(draw.parts.len() + 1);
        for (purchase, n) in &draw.parts {
            self.entry(day, start, Some(purchase), *n as i64, reason)?;
            self.changed.insert(purchase.clone());
            drawn.push((Some(purchase.clone()), *n as i64));
        }
        if draw.unfunded > 0 {
            self.entry(day, start, None, draw.unfunded as i64, reason)?;
            drawn.push((None, draw.unfunded as i64));
        }
        Ok(drawn)
    }

    /// Reverses what a day's entries still hold (`drawn`, from its stored row),
    /// purchase by purchase, under the day they were booked on.
    pub(super) fn reverse(
        &mut self,
        start: i64,
        day: &str,
        drawn: &Drawn,
        reason: &str,
    ) -> Result<(), StoreError> {
        for (purchase, tokens) in drawn {
            self.entry(day, start, purchase.as_deref(), -tokens, reason)?;
            if let Some(p) = purchase {
                self.ledger()?.give_back(p, (*tokens).max(0) as u64);
                self.changed.insert(p.clone());
            }
        }
        Ok(())
    }

    /// Writes the booked entries (one batch) and what the purchases have paid for.
    pub(super) fn save(mut self) -> Result<(), StoreError> {
        if self.booked > 0 {
            self.entries.push(b']');
            // Bound as text: SQLite's JSON functions read a blob as its binary JSON.
            let entries = std::str::from_utf8(&self.entries).map_err(corrupt)?;
            let seq = self.ledgers.take_seqs(self.t, self.booked)?;
            let mut add = self.hot.take(Sql::AddLedger)?;
            add.execute(params![
                seq,
                self.at,
                self.team,
                self.user,
                self.product,
                entries
            ])
            .map_err(db)?;
            self.hot.give_back(Sql::AddLedger, add);
        }
        if self.changed.is_empty() {
            return Ok(());
        }
        let changed = std::mem::take(&mut self.changed);
        let mut put = self.hot.take(Sql::PutUsed)?;
        let ledger = self.ledgers.of(self.t, self.team)?;
        for id in &changed {
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
        settle(
            t,
            &user,
            &product,
            settings,
            (Cause::Import, &now),
            &mut tail,
            i64::MIN,
            ledgers,
            hot,
        )?;
    }
    Ok(())
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
            _ => {}
        }
    }
    Ok(settings)
}

pub(super) fn day_start_ns(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_nanos_opt().unwrap_or_default())
}
