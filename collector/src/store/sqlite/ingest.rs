//! A sync's sessions into the database: batches, ids and runs, then each touched key
//! settled (see `settling`).

use super::*;

pub(super) fn ingest_into(
    t: &Connection,
    ingest: &Ingest,
    memory: &mut Memory,
    hot: &mut Hot<'_>,
) -> Result<IngestOutcome, StoreError> {
    let settings = memory.settings.clone();
    let user = ingest.user.as_str();
    // Each session's refusal, by its place in the sync (sessions are applied in
    // product order, answered in the order sent).
    let mut refused: Vec<Option<Problem>> = ingest.sessions.iter().map(|_| None).collect();
    // Per product: the earliest start among the sessions this sync wrote, those
    // sessions, and the rows it added (one run: they are inserted product by product).
    let mut touched: BTreeMap<&str, Touched> = BTreeMap::new();
    // Product by product (a sync names few of them: their ranks, not their names, are
    // compared in the sort).
    let mut products: Vec<&str> = Vec::new();
    for incoming in &ingest.sessions {
        if !products.contains(&&*incoming.session.product) {
            products.push(&incoming.session.product);
        }
    }
    products.sort_unstable();
    let rank = |i: usize| {
        let p = &*ingest.sessions[i].session.product;
        products.iter().position(|q| *q == p).unwrap_or(usize::MAX)
    };
    let mut order: Vec<(usize, usize)> = (0..ingest.sessions.len()).map(|i| (rank(i), i)).collect();
    order.sort_unstable();
    let mut insert = hot.take(Sql::InsertSession)?;
    // Bindings last until rebound.
    insert.raw_bind_parameter(2, user).map_err(db)?;
    insert.raw_bind_parameter(3, &ingest.device).map_err(db)?;
    let mut find = hot.take(Sql::FindSession)?;
    let mut update = hot.take(Sql::UpdateSession)?;
    // The new sessions of the product being applied, written as one batch when the
    // product changes, the batch is full or the sync is done.
    let mut pending = Pending {
        first: 0,
        product: "",
        batch: std::mem::take(&mut memory.batch),
    };
    pending.batch.clear();
    for (_, i) in order {
        let incoming = &ingest.sessions[i];
        let s = &incoming.session;
        // The stored copy of this id, if any; `taken`: its hash is another id's.
        let (found, slot) = memory.ids.find(&s.id);
        let (stored, taken) = match found {
            Lookup::Absent => (None, false),
            Lookup::Found(row) | Lookup::Check(row) => {
                if !pending.batch.is_empty() && row >= pending.first {
                    // Sent twice in this sync: its batch is not written yet.
                    pending.write(&mut insert)?;
                }
                let (first, owner, on, batch) = find_batch(&mut find, row)?;
                let body = batch.session(first, row).ok_or_else(|| {
                    corrupt(format!("session {row} is not in its batch at {first}"))
                })?;
                if stored_id(body, row)? == *s.id {
                    (Some((row, first, owner, on, batch)), false)
                } else {
                    (None, true)
                }
            }
        };
        // Once per session: chrono's conversion to nanoseconds was a twentieth of the
        // writer's instructions when each use made it again.
        let (start, end) = (s.start_nanos(), s.end_nanos());
        let key = touched.entry(&s.product).or_insert_with(|| Touched {
            since: i64::MAX,
            fresh: Vec::new(),
            run: None,
        });
        let wrote = match stored {
            None => {
                if !pending.batch.is_empty()
                    && (pending.product != &*s.product || pending.batch.len() >= BATCH_MAX)
                {
                    pending.write(&mut insert)?;
                }
                let row = match memory.next_row {
                    Some(next) => next,
                    None => next_session_row(t)?,
                };
                if pending.batch.is_empty() {
                    pending.first = row;
                    pending.product = &s.product;
                }
                pending.batch.push(&incoming.body);
                memory.next_row = Some(row + 1);
                memory.ids.insert_at(&s.id, slot, row, taken);
                key.add_row(&mut memory.runs, user, &s.product, row, (start, end));
                true
            }
            Some((row, first, owner, on, mut batch)) => {
                let longer = {
                    let body = batch.session(first, row).unwrap_or_default();
                    let (mut old, _) = read_back(body, row, &mut ZoneCache::new())?;
                    old.user = Some(owner.into());
                    old.device = Some(on.into());
                    if let Some(field) = s.conflict_with(&old) {
                        refused[i] = Some(Problem::ConflictingCopies(field));
                        continue;
                    }
                    s.copy_order(&old).is_gt()
                };
                if longer {
                    batch.replace((row - first) as usize, &incoming.body);
                    update
                        .execute(params![first, batch.bodies(), batch.ends()])
                        .map_err(db)?;
                    key.extend_row(t, &mut memory.runs, user, row, end)?;
                }
                longer
            }
        };
        if wrote {
            key.since = key.since.min(start);
            key.fresh.push(Held::with(s, start, end, incoming.zone));
        }
    }
    if !pending.batch.is_empty() {
        pending.write(&mut insert)?;
    }
    memory.batch = pending.batch;
    hot.give_back(Sql::InsertSession, insert);
    hot.give_back(Sql::FindSession, find);
    hot.give_back(Sql::UpdateSession, update);
    for (product, key) in &mut touched {
        key.close_run(&mut memory.runs, user, product);
    }
    // When the ledger entries are booked, written once for every key.
    let at = ingest.at.to_rfc3339();
    for (product, key) in touched {
        if !key.fresh.is_empty() {
            sync_key(
                t, user, product, &settings, &at, key.since, key.fresh, memory, hot,
            )?;
        }
    }
    let mut outcome = IngestOutcome::default();
    for (incoming, problem) in ingest.sessions.iter().zip(refused) {
        let id = incoming.session.id.to_string();
        match problem {
            None => outcome.accepted.push(id),
            Some(p) => outcome.rejected.push((id, p)),
        }
    }
    outcome.team_remaining = memory
        .ledgers
        .of(t, settings.team_of(user))?
        .remaining(ingest.at);
    // The statement below changes nothing while the recorded last sync is this recent:
    // skipped then (it was a twentieth of a 5-session sync's writer instructions).
    let stale = ingest.at - LAST_SYNC_RESOLUTION;
    if memory.last_syncs.get(user).is_none_or(|at| *at < stale) {
        let mut touch = hot.take(Sql::TouchUser)?;
        let changed = touch
            .execute(params![user, ingest.at.to_rfc3339(), stale.to_rfc3339()])
            .map_err(db)?;
        hot.give_back(Sql::TouchUser, touch);
        // Unchanged: what is recorded is recent, but not known here.
        if changed > 0 {
            memory.last_syncs.insert(user.to_owned(), ingest.at);
        }
    }
    let device = &ingest.device;
    if memory.device_syncs.get(device).is_none_or(|at| *at < stale) {
        let mut touch = hot.take(Sql::TouchDevice)?;
        let changed = touch
            .execute(params![device, ingest.at.to_rfc3339(), stale.to_rfc3339()])
            .map_err(db)?;
        hot.give_back(Sql::TouchDevice, touch);
        if changed > 0 {
            memory.device_syncs.insert(device.clone(), ingest.at);
        }
    }
    Ok(outcome)
}

/// New sessions of one sync and product, not written yet (see `batches`).
pub(super) struct Pending<'s> {
    /// The number of its first session.
    pub(super) first: i64,
    pub(super) product: &'s str,
    pub(super) batch: Batch,
}

impl Pending<'_> {
    /// Writes the batch (`insert` has user and device bound) and empties it.
    pub(super) fn write(
        &mut self,
        insert: &mut rusqlite::CachedStatement<'_>,
    ) -> Result<(), StoreError> {
        insert.raw_bind_parameter(1, self.first).map_err(db)?;
        insert.raw_bind_parameter(4, self.product).map_err(db)?;
        insert
            .raw_bind_parameter(5, self.batch.bodies())
            .map_err(db)?;
        insert
            .raw_bind_parameter(6, self.batch.ends())
            .map_err(db)?;
        insert.raw_execute().map_err(db)?;
        self.batch.clear();
        Ok(())
    }
}

/// The batch holding session `row`: its first number, user, device and sessions.
pub(super) const FIND_BATCH: &str =
    "SELECT first_row, user, device, bodies, ends FROM session_batches
     WHERE first_row <= ?1 ORDER BY first_row DESC LIMIT 1";

pub(super) fn find_batch(
    find: &mut rusqlite::Statement<'_>,
    row: i64,
) -> Result<(i64, String, String, Batch), StoreError> {
    let (first, user, device, bodies, ends): (i64, String, String, String, Vec<u8>) = find
        .query_row([row], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(db)?;
    Ok((first, user, device, stored_batch(first, bodies, ends)?))
}

/// A batch as read from its row, checked (see [`Batch::from_stored`]).
pub(super) fn stored_batch(first: i64, bodies: String, ends: Vec<u8>) -> Result<Batch, StoreError> {
    Batch::from_stored(bodies, ends).map_err(|e| corrupt(format!("batch at {first}: {e}")))
}

/// The id of a stored session body.
pub(super) fn stored_id(body: &str, row: i64) -> Result<String, StoreError> {
    serde_json::from_str::<daymeter_shared::session::IdOnly<'_>>(body)
        .ok()
        .and_then(|i| i.id)
        .map(|id| id.into_owned())
        .ok_or_else(|| corrupt(format!("stored session at row {row} has no id")))
}

/// The number the next stored session gets: after the last one stored.
pub(super) fn next_session_row(t: &Connection) -> Result<i64, StoreError> {
    let last: Option<i64> = t
        .query_row(
            "SELECT first_row + length(ends) / 4 FROM session_batches ORDER BY first_row DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    Ok(last.unwrap_or(1))
}

/// What one sync did to one key.
pub(super) struct Touched {
    /// The earliest start among the sessions it wrote.
    pub(super) since: i64,
    /// The sessions it wrote (new, or longer copies), as a tail holds them.
    pub(super) fresh: Vec<Held>,
    /// The rows it added, not yet handed to the writer's held runs.
    pub(super) run: Option<Run>,
}

impl Touched {
    pub(super) fn add_row(
        &mut self,
        runs: &mut Runs,
        user: &str,
        product: &str,
        row: i64,
        (start, end): (i64, i64),
    ) {
        match &mut self.run {
            Some(run) if run.last + 1 == row => {
                run.last = row;
                run.start = run.start.min(start);
                run.end = run.end.max(end);
            }
            _ => {
                self.close_run(runs, user, product);
                self.run = Some(Run {
                    first: row,
                    last: row,
                    start,
                    end,
                });
            }
        }
    }

    /// A stored session at `row` now ends at `end`: its run's latest end follows,
    /// wherever the run is (this sync's, held by the writer, or written out).
    pub(super) fn extend_row(
        &mut self,
        t: &Connection,
        runs: &mut Runs,
        user: &str,
        row: i64,
        end: i64,
    ) -> Result<(), StoreError> {
        if let Some(run) = &mut self.run
            && (run.first..=run.last).contains(&row)
        {
            run.end = run.end.max(end);
            return Ok(());
        }
        if runs.extend(user, row, end) {
            return Ok(());
        }
        t.prepare_cached(
            // The user's runs partition their rows: the last one to start at or
            // before `row` holds it.
            "UPDATE session_runs SET end_ns = MAX(end_ns, ?3)
             WHERE user = ?1 AND first_row = (
               SELECT MAX(first_row) FROM session_runs WHERE user = ?1 AND first_row <= ?2)",
        )
        .and_then(|mut s| s.execute(params![user, row, end]))
        .map_err(db)?;
        Ok(())
    }

    pub(super) fn close_run(&mut self, runs: &mut Runs, user: &str, product: &str) {
        if let Some(run) = self.run.take() {
            runs.push(KeyedRun {
                user: user.to_owned(),
                product: product.to_owned(),
                run,
            });
        }
    }
}

/// Writes the writer's held runs out once enough have gathered.
pub(super) fn flush_if_due(t: &Connection, runs: &mut Runs) -> Result<(), StoreError> {
    if runs.due() {
        flush_runs(t, runs)?;
    }
    Ok(())
}

/// Writes the writer's held runs to `session_runs` (see `runs`).
pub(super) fn flush_runs(t: &Connection, runs: &mut Runs) -> Result<(), StoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut put = t
        .prepare_cached(
            "INSERT INTO session_runs (user, product, first_row, last_row, start_ns, end_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(db)?;
    for k in runs.take() {
        let r = k.run;
        put.execute(params![k.user, k.product, r.first, r.last, r.start, r.end])
            .map_err(db)?;
    }
    Ok(())
}

/// The runs of the session rows that `session_runs` does not cover yet (those held by
/// the writer when the process last stopped): every row after its largest `last_row`.
pub(super) fn gather_runs(conn: &Connection) -> Result<Runs, StoreError> {
    let covered: i64 = conn
        .query_row(
            "SELECT IFNULL(MAX(last_row), 0) FROM session_runs",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    // From the batch holding the first session not covered on.
    let mut stmt = conn
        .prepare(
            "SELECT first_row, user, product, bodies, ends FROM session_batches
             WHERE first_row >= IFNULL((SELECT MAX(first_row) FROM session_batches WHERE first_row <= ?1 + 1), 0)
             ORDER BY first_row",
        )
        .map_err(db)?;
    let mut found = stmt.query([covered]).map_err(db)?;
    let mut zones = ZoneCache::new();
    let mut rows = Vec::new();
    while let Some(r) = found.next().map_err(db)? {
        let first: i64 = r.get(0).map_err(db)?;
        let user: String = r.get(1).map_err(db)?;
        let product: String = r.get(2).map_err(db)?;
        let batch = stored_batch(first, r.get(3).map_err(db)?, r.get(4).map_err(db)?)?;
        for (row, body) in (first..).zip(batch.iter()) {
            if row <= covered {
                continue;
            }
            let (s, _) = read_back(body, row, &mut zones)?;
            rows.push((
                row,
                user.clone(),
                product.clone(),
                s.start_nanos(),
                s.end_nanos(),
            ));
        }
    }
    Ok(Runs::gather(rows))
}
