//! A key's settling on this backend: its tail taken from the writer's memory or read
//! back from the database (sessions through their runs and batches, the usage days
//! stored from the resume point, the walk's state before it), then handed with a
//! [`SqliteSink`] to `store::settle`, which decides the days and ledger entries.

use super::*;

/// Recomputes a key after a sync wrote `fresh` (the earliest of which starts at
/// `since`): from its tail in memory, loaded first if it does not reach back to `since`.
#[allow(clippy::too_many_arguments)]
pub(super) fn sync_key(
    t: &Connection,
    user: &str,
    product: &str,
    settings: &Settings,
    at: &str,
    since: i64,
    fresh: Vec<Held>,
    memory: &mut Memory,
    hot: &mut Hot<'_>,
) -> Result<(), StoreError> {
    let Memory {
        tails,
        ledgers,
        runs,
        totals,
        ..
    } = memory;
    let tail = match tails.covering(user, product, since) {
        Some(tail) => {
            tail.merge(fresh);
            tail
        }
        None => {
            let tail = load_tail(t, runs, user, product, since, &fresh)?;
            tails.put(user, product, tail)
        }
    };
    let from = tail.resume_point(since);
    let key = Key::of(settings, user, product);
    let mut sink = SqliteSink::new(t, hot, ledgers, totals, key, at);
    settle(&mut sink, settings, key, Cause::Sync, tail, from)?;
    tail.trim();
    Ok(())
}

/// The key's sessions that end at or after `bound`, each with its zone; those in
/// `fresh` (written by the sync being applied) are taken from there rather than parsed.
pub(super) fn load_sessions(
    t: &Connection,
    held: &Runs,
    user: &str,
    product: &str,
    bound: i64,
    fresh: &HashMap<&str, &Held>,
) -> Result<Vec<Held>, StoreError> {
    let mut runs: Vec<(i64, i64)> = {
        let mut stmt = t
            .prepare_cached(
                "SELECT first_row, last_row FROM session_runs
                 WHERE user = ?1 AND product = ?2 AND end_ns >= ?3",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![user, product, bound], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    // The newest runs, not written out yet: after every written one.
    runs.extend(held.of(user, product, bound).map(|r| (r.first, r.last)));
    // The batches holding rows first..=last: from the one holding `first` on.
    let mut stmt = t
        .prepare_cached(
            "SELECT first_row, bodies, ends FROM session_batches
             WHERE first_row BETWEEN IFNULL((SELECT MAX(first_row) FROM session_batches WHERE first_row <= ?1), ?1) AND ?2
             ORDER BY first_row",
        )
        .map_err(db)?;
    let mut zones = ZoneCache::new();
    let mut out = Vec::new();
    for (first, last) in runs {
        let mut rows = stmt.query(params![first, last]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let at: i64 = r.get(0).map_err(db)?;
            let batch = stored_batch(at, r.get(1).map_err(db)?, r.get(2).map_err(db)?)?;
            for (row, body) in (at..).zip(batch.iter()) {
                if !(first..=last).contains(&row) {
                    continue;
                }
                let (session, zone) = read_back(body, row, &mut zones)?;
                let held = match fresh.get(&*session.id) {
                    Some(held) => Held::clone(held),
                    None => Held::of(&session, zone),
                };
                if held.end >= bound {
                    out.push(held);
                }
            }
        }
    }
    Ok(out)
}

/// Loads a key's tail from the database for a change at `since` (`i64::MIN`: the
/// whole key): from the resume point, pushed back past every session still open at
/// `since`, so that no session before it reaches it.
pub(super) fn load_tail(
    t: &Connection,
    held: &Runs,
    user: &str,
    product: &str,
    since: i64,
    fresh: &[Held],
) -> Result<Tail, StoreError> {
    let fresh: HashMap<&str, &Held> = fresh.iter().map(|h| (&*h.id, h)).collect();
    let mut bound = since;
    let mut sessions = load_sessions(t, held, user, product, bound, &fresh)?;
    let mut at = since;
    loop {
        let earlier = sessions
            .iter()
            .filter(|s| s.start < at && s.end >= at)
            .map(|s| s.start)
            .min();
        let Some(earlier) = earlier else { break };
        at = earlier;
        if at < bound {
            bound = at;
            sessions = load_sessions(t, held, user, product, bound, &fresh)?;
        }
    }
    sessions.retain(|s| s.start >= at);
    let base = if at == i64::MIN {
        Resume::default()
    } else {
        resume_state(t, user, product, at)?
    };
    let days = stored_days(t, user, product, days_from(&base, at))?;
    Ok(Tail::new(at, base, sessions, days))
}

/// The key's stored usage days that start at or after `from`.
pub(super) fn stored_days(
    t: &Connection,
    user: &str,
    product: &str,
    from: i64,
) -> Result<StoredDays, StoreError> {
    let mut stmt = t
        .prepare_cached(
            "SELECT window_start_ns, window_end_ns, day, plan, tokens, short_row, drawn, waste FROM usage_days
             WHERE user = ?1 AND product = ?2 AND window_start_ns >= ?3",
        )
        .map_err(db)?;
    let found = stmt
        .query_map(params![user, product, from], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })
        .map_err(db)?;
    let mut days = StoredDays::new();
    for row in found {
        let (start, end, day, plan, tokens, short, drawn, marks) = row.map_err(db)?;
        days.insert(
            start,
            StoredDay {
                end,
                day,
                plan,
                tokens,
                short,
                marks: Marks::from_bits(marks),
                drawn: drawn_of(&drawn)?,
            },
        );
    }
    Ok(days)
}

pub(super) fn drawn_of(text: &str) -> Result<Drawn, StoreError> {
    serde_json::from_str(text).map_err(corrupt)
}

/// The walk's state left by the stored usage days that start before `at`.
pub(super) fn resume_state(
    t: &Connection,
    user: &str,
    product: &str,
    at: i64,
) -> Result<Resume, StoreError> {
    let mut resume = Resume::default();
    let mut last = t
        .prepare_cached(
            "SELECT window_start_ns, window_end_ns FROM usage_days
             WHERE user = ?1 AND product = ?2 AND short_row = 0 AND window_start_ns < ?3
             ORDER BY window_start_ns DESC LIMIT 1",
        )
        .map_err(db)?;
    if let Some((start, end)) = last
        .query_row(params![user, product, at], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db)?
    {
        resume.window_start = start;
        resume.window_end = end;
    }
    // The latest end of the count_free rows is the end of the latest of them: a short
    // row starts at or after the end of every row before it (`add_short_rows` in daymeter_shared::accounting).
    let mut reach = t
        .prepare_cached(
            "SELECT window_end_ns FROM usage_days INDEXED BY usage_days_short
             WHERE user = ?1 AND product = ?2 AND short_row = 1 AND window_start_ns < ?3
             ORDER BY window_start_ns DESC LIMIT 1",
        )
        .map_err(db)?;
    if let Some(r) = reach
        .query_row(params![user, product, at], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(db)?
    {
        resume.short_reach = r;
    }
    Ok(resume)
}
