//! What reports read: the monthly totals, products by day, each key's last access, and
//! a page of users' days and sessions — a few thousand rows, where the days themselves
//! are millions.

use chrono::Datelike;
use daymeter_shared::entitlement::Plan;

use super::kept_totals::KeptTotals;
use super::*;
use crate::store::{KeyTotal, ProductDay, Reach, SessionFilter, TeamDay, WasteTotal};

/// A day's window may start up to a day before or after its date (its zone's offset),
/// so a page's days are looked for two days either side, then kept by date.
const DAY_SLACK_NS: i64 = 2 * 86_400 * 1_000_000_000;

pub(super) fn key_months(
    c: &Connection,
    first: &str,
    last: &str,
    users: Option<&[String]>,
) -> Result<Vec<KeyMonth>, StoreError> {
    let mut out = Vec::new();
    let mut push = |r: &rusqlite::Row<'_>| -> Result<(), StoreError> {
        let month: String = r.get(0).map_err(db)?;
        let bytes: Vec<u8> = r.get(3).map_err(db)?;
        let first = format!("{month}-01")
            .parse()
            .map_err(|_| corrupt(format!("key_months month {month:?}")))?;
        out.push(KeyMonth {
            user: r.get(1).map_err(db)?,
            product: r.get(2).map_err(db)?,
            first,
            month: Month::from_bytes(&bytes)
                .ok_or_else(|| corrupt(format!("key_months {month} by_day")))?,
        });
        Ok(())
    };
    match users {
        None => {
            let mut stmt = c
                .prepare_cached(
                    "SELECT month, user, product, by_day FROM key_months
                     WHERE month BETWEEN ?1 AND ?2",
                )
                .map_err(db)?;
            let mut rows = stmt.query(params![first, last]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                push(r)?;
            }
        }
        Some(users) => {
            let mut stmt = c
                .prepare_cached(
                    "SELECT month, user, product, by_day FROM key_months INDEXED BY key_months_by_key
                     WHERE user = ?3 AND month BETWEEN ?1 AND ?2",
                )
                .map_err(db)?;
            for user in users {
                let mut rows = stmt.query(params![first, last, user]).map_err(db)?;
                while let Some(r) = rows.next().map_err(db)? {
                    push(r)?;
                }
            }
        }
    }
    out.sort_unstable_by(|a, b| {
        (&a.user, &a.product, a.first).cmp(&(&b.user, &b.product, b.first))
    });
    Ok(out)
}

pub(super) fn key_totals(
    c: &Connection,
    from: NaiveDate,
    to: NaiveDate,
    kept: &KeptTotals,
) -> Result<Vec<KeyTotal>, StoreError> {
    let split = super::super::tally::split(from, to);
    let mut out = match split.whole {
        Some((first, last)) => kept_or(kept, first, last, || {
            whole_months(c, &month_of(first), &month_of(last))
        })?,
        None => Vec::new(),
    };
    for (first, last) in split.cut {
        let cut = kept_or(kept, first, last, || cut_month(c, first, last))?;
        out = merge(out, cut);
    }
    Ok(out)
}

/// The totals of the days `first..=last` as kept, else read (and kept, unless they
/// reach into this month, which syncs write all the time).
fn kept_or(
    kept: &KeptTotals,
    first: NaiveDate,
    last: NaiveDate,
    read: impl FnOnce() -> Result<Vec<KeyTotal>, StoreError>,
) -> Result<Vec<KeyTotal>, StoreError> {
    if month_of(last) >= month_of(Utc::now().date_naive()) {
        return read();
    }
    let stamp = kept.stamp(first, last);
    if let Some(totals) = stamp.and_then(|s| kept.get(first, last, s)) {
        return Ok(totals);
    }
    let totals = read()?;
    if let Some(s) = stamp {
        kept.put(first, last, s, &totals);
    }
    Ok(totals)
}

/// Each key's totals over the whole months `first..=last` (`YYYY-MM`), in key order:
/// summed off the covering index by key, without reading the days.
fn whole_months(c: &Connection, first: &str, last: &str) -> Result<Vec<KeyTotal>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT user, product, SUM(tokens), SUM(used_days) FROM key_months INDEXED BY key_months_by_key
             WHERE month BETWEEN ?1 AND ?2 GROUP BY user, product ORDER BY user, product",
        )
        .map_err(db)?;
    let mut rows = stmt.query(params![first, last]).map_err(db)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db)? {
        out.push(KeyTotal {
            user: r.get(0).map_err(db)?,
            product: r.get(1).map_err(db)?,
            tokens: r.get::<_, i64>(2).map_err(db)?.max(0) as u64,
            days_used: r.get::<_, i64>(3).map_err(db)?.max(0) as u64,
        });
    }
    Ok(out)
}

/// Each key's totals over `[first, last]`, days of one month, in key order (the
/// table's order within a month): each row's days sliced from `by_day`.
fn cut_month(
    c: &Connection,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<Vec<KeyTotal>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT user, product, by_day FROM key_months WHERE month = ?1 ORDER BY user, product",
        )
        .map_err(db)?;
    let month = month_of(first);
    let (lo, hi) = (first.day(), last.day());
    let mut rows = stmt.query([&month]).map_err(db)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db)? {
        let bytes = r.get_ref(2).map_err(db)?.as_blob().map_err(corrupt)?;
        let m = Month::from_bytes(bytes)
            .ok_or_else(|| corrupt(format!("key_months {month} by_day")))?;
        let days_used = m.used_between(lo, hi);
        if days_used > 0 {
            out.push(KeyTotal {
                user: r.get(0).map_err(db)?,
                product: r.get(1).map_err(db)?,
                tokens: m.tokens_between(lo, hi).max(0) as u64,
                days_used: days_used as u64,
            });
        }
    }
    Ok(out)
}

/// Two lists of totals in key order as one, a key in both summed.
fn merge(a: Vec<KeyTotal>, b: Vec<KeyTotal>) -> Vec<KeyTotal> {
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => (&x.user, &x.product).cmp(&(&y.user, &y.product)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return out,
        };
        match order {
            std::cmp::Ordering::Less => out.extend(a.next()),
            std::cmp::Ordering::Greater => out.extend(b.next()),
            std::cmp::Ordering::Equal => {
                if let (Some(mut x), Some(y)) = (a.next(), b.next()) {
                    x.tokens += y.tokens;
                    x.days_used += y.days_used;
                    out.push(x);
                }
            }
        }
    }
}

pub(super) fn product_days(
    c: &Connection,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<ProductDay>, StoreError> {
    let sums = day_sums(c, "product", from, to)?;
    Ok(sums
        .into_iter()
        .map(|(product, day, tokens, days)| ProductDay {
            product,
            day,
            tokens,
            days,
        })
        .collect())
}

pub(super) fn team_days(
    c: &Connection,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<TeamDay>, StoreError> {
    let sums = day_sums(c, "team", from, to)?;
    Ok(sums
        .into_iter()
        .map(|(team, day, tokens, days)| TeamDay {
            team,
            day,
            tokens,
            days,
        })
        .collect())
}

pub(super) fn waste_totals(
    c: &Connection,
    from: NaiveDate,
    to: NaiveDate,
    user: Option<&str>,
) -> Result<Vec<WasteTotal>, StoreError> {
    let mut out = Vec::new();
    let (from, to) = (from.to_string(), to.to_string());
    match user {
        None => {
            let mut stmt = c
                .prepare_cached(
                    "SELECT team, product, SUM(wasted), SUM(saved) FROM day_totals
                     WHERE day BETWEEN ?1 AND ?2 GROUP BY team, product
                     HAVING SUM(wasted) != 0 OR SUM(saved) != 0",
                )
                .map_err(db)?;
            let mut rows = stmt.query(params![from, to]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                out.push(WasteTotal {
                    team: r.get(0).map_err(db)?,
                    product: r.get(1).map_err(db)?,
                    wasted: r.get::<_, i64>(2).map_err(db)?.max(0) as u64,
                    saved: r.get::<_, i64>(3).map_err(db)?.max(0) as u64,
                });
            }
        }
        Some(user) => {
            let mut stmt = c
                .prepare_cached(
                    "SELECT product, tokens, waste FROM usage_days INDEXED BY usage_days_waste
                     WHERE waste & 1 = 1 AND user = ?1 AND day BETWEEN ?2 AND ?3",
                )
                .map_err(db)?;
            let mut rows = stmt.query(params![user, from, to]).map_err(db)?;
            let mut by_product: BTreeMap<String, (i64, i64)> = BTreeMap::new();
            while let Some(r) = rows.next().map_err(db)? {
                let tokens: i64 = r.get(1).map_err(db)?;
                let (wasted, saved) = Marks::from_bits(r.get(2).map_err(db)?).cost(tokens);
                let e = by_product.entry(r.get(0).map_err(db)?).or_default();
                e.0 += wasted;
                e.1 += saved;
            }
            by_product.retain(|_, &mut (w, s)| w != 0 || s != 0);
            out.extend(by_product.into_iter().map(|(product, (w, s))| WasteTotal {
                team: String::new(),
                product,
                wasted: w.max(0) as u64,
                saved: s.max(0) as u64,
            }));
        }
    }
    Ok(out)
}

/// `day_totals` in `[from, to]` summed by day and `by` (`product` or `team`, a column
/// name from this file, never from a request): (by, day, tokens, usage days).
fn day_sums(
    c: &Connection,
    by: &'static str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<(String, NaiveDate, u64, u64)>, StoreError> {
    let sql = format!(
        "SELECT {by}, day, SUM(tokens), SUM(days) FROM day_totals
         WHERE day BETWEEN ?1 AND ?2 GROUP BY day, {by} HAVING SUM(days) != 0"
    );
    let mut stmt = c.prepare_cached(&sql).map_err(db)?;
    let mut rows = stmt
        .query(params![from.to_string(), to.to_string()])
        .map_err(db)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db)? {
        let day: String = r.get(1).map_err(db)?;
        out.push((
            r.get(0).map_err(db)?,
            day.parse().map_err(corrupt)?,
            r.get::<_, i64>(2).map_err(db)?.max(0) as u64,
            r.get::<_, i64>(3).map_err(db)?.max(0) as u64,
        ));
    }
    Ok(out)
}

pub(super) fn reaches(c: &Connection, users: Option<&[String]>) -> Result<Vec<Reach>, StoreError> {
    let mut out = Vec::new();
    let mut push = |r: &rusqlite::Row<'_>| -> Result<(), StoreError> {
        out.push(Reach {
            user: r.get(0).map_err(db)?,
            product: r.get(1).map_err(db)?,
            last_end: DateTime::from_timestamp_nanos(r.get(2).map_err(db)?),
        });
        Ok(())
    };
    match users {
        None => {
            let mut stmt = c
                .prepare_cached("SELECT user, product, last_end_ns FROM key_reach")
                .map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                push(r)?;
            }
        }
        Some(users) => {
            let mut stmt = c
                .prepare_cached("SELECT user, product, last_end_ns FROM key_reach WHERE user = ?1")
                .map_err(db)?;
            for user in users {
                let mut rows = stmt.query([user]).map_err(db)?;
                while let Some(r) = rows.next().map_err(db)? {
                    push(r)?;
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn users_page(
    c: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT DISTINCT user FROM key_reach WHERE (?1 IS NULL OR user > ?1) ORDER BY user LIMIT ?2",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![after, limit as i64], |r| r.get(0))
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

pub(super) fn users_days(
    c: &Connection,
    users: &[String],
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<UsageDay<'static>>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT product, day, window_start_ns, window_end_ns, plan, tokens FROM usage_days
             WHERE user = ?1 AND window_start_ns BETWEEN ?2 AND ?3 AND day BETWEEN ?4 AND ?5",
        )
        .map_err(db)?;
    let (lo, hi) = (
        day_start_ns(from) - DAY_SLACK_NS,
        day_start_ns(to) + DAY_SLACK_NS,
    );
    let (first, last) = (from.to_string(), to.to_string());
    let mut out = Vec::new();
    for user in users {
        let mut rows = stmt.query(params![user, lo, hi, first, last]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let day: String = r.get(1).map_err(db)?;
            let plan: String = r.get(4).map_err(db)?;
            out.push(UsageDay {
                user: user.clone().into(),
                product: r.get::<_, String>(0).map_err(db)?.into(),
                day: day.parse().map_err(corrupt)?,
                window_start: DateTime::from_timestamp_nanos(r.get(2).map_err(db)?),
                window_end: DateTime::from_timestamp_nanos(r.get(3).map_err(db)?),
                plan: plan_of(&plan)?,
                tokens: r.get::<_, i64>(5).map_err(db)?.max(0) as u64,
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.user, &a.product, a.window_start).cmp(&(&b.user, &b.product, b.window_start))
    });
    Ok(out)
}

/// A stored day's plan, as [`Plan::as_str`] wrote it.
pub(super) fn plan_of(text: &str) -> Result<Plan, StoreError> {
    Plan::parse(text).ok_or_else(|| corrupt(format!("usage day plan {text:?}")))
}

/// The sessions of `filter.users` overlapping its days, found through their runs
/// (`session_runs`) and the batches written since the runs were last written out,
/// rather than by reading every batch.
///
/// Why the tail is listed once: the batches after the last run written out (up to a
/// flush's worth, [`super::runs::FLUSH_RUNS`]) belong to every user; looked for user by
/// user, a page of 100 users read them 100 times, bodies and all.
pub(super) fn users_sessions(
    c: &Connection,
    filter: &SessionFilter,
) -> Result<Vec<StoredSession>, StoreError> {
    let from = filter.from.map_or(i64::MIN, day_start_ns);
    let to = filter
        .to
        .and_then(|d| d.succ_opt())
        .map_or(i64::MAX, day_start_ns);
    let users = filter.users.as_deref().unwrap_or_default();
    // The last row any run written out covers (an index keeps this a seek).
    let covered: i64 = c
        .query_row(
            "SELECT IFNULL(MAX(last_row), 0) FROM session_runs",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let wanted: std::collections::HashSet<&str> = users.iter().map(String::as_str).collect();
    let mut tail: HashMap<String, Vec<i64>> = HashMap::new();
    {
        let mut stmt = c
            .prepare_cached(
                "SELECT first_row, user FROM session_batches WHERE first_row >=
                   IFNULL((SELECT MAX(first_row) FROM session_batches WHERE first_row <= ?1), 0)",
            )
            .map_err(db)?;
        let mut rows = stmt.query([covered + 1]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let user: String = r.get(1).map_err(db)?;
            if wanted.contains(user.as_str()) {
                tail.entry(user).or_default().push(r.get(0).map_err(db)?);
            }
        }
    }
    let mut runs = c
        .prepare_cached(
            "SELECT first_row, last_row, start_ns >= ?3 AND end_ns < ?4 FROM session_runs
             WHERE user = ?1 AND (?2 IS NULL OR product = ?2) AND end_ns >= ?3 AND start_ns < ?4",
        )
        .map_err(db)?;
    // The batches holding a run: from the one its first row is in, to its last row.
    let mut batches = c
        .prepare_cached(
            "SELECT first_row, device, product, bodies, ends FROM session_batches
             WHERE user = ?1 AND first_row BETWEEN
               IFNULL((SELECT MAX(first_row) FROM session_batches WHERE first_row <= ?2), 0) AND ?3",
        )
        .map_err(db)?;
    let mut one_batch = c
        .prepare_cached(
            "SELECT first_row, device, product, bodies, ends FROM session_batches
             WHERE first_row = ?1",
        )
        .map_err(db)?;
    let mut zones = ZoneCache::new();
    let mut seen = std::collections::HashSet::new();
    // `inside`: the run lies within the range, so each of its sessions does (a year's
    // report then parses each session once, not its instants first).
    let mut read = |r: &rusqlite::Row<'_>,
                    user: &str,
                    (lo, hi, inside): (i64, i64, bool),
                    out: &mut Vec<StoredSession>|
     -> Result<(), StoreError> {
        let first: i64 = r.get(0).map_err(db)?;
        let device: String = r.get(1).map_err(db)?;
        let product: String = r.get(2).map_err(db)?;
        if filter.product.as_deref().is_some_and(|p| p != product) {
            return Ok(());
        }
        let batch = stored_batch(first, r.get(3).map_err(db)?, r.get(4).map_err(db)?)?;
        for (row, body) in (first..).zip(batch.iter()) {
            if row < lo || row > hi || !seen.insert(row) {
                continue;
            }
            if inside {
                let (mut s, _) = read_back(body, row, &mut zones)?;
                s.user = Some(user.to_owned().into());
                s.device = Some(device.clone().into());
                out.push(s.into_owned());
            } else {
                out.extend(read_within(body, row, &mut zones, from, to, user, &device)?);
            }
        }
        Ok(())
    };
    let mut out = Vec::new();
    let mut sorted = true;
    for (i, user) in users.iter().enumerate() {
        sorted &= i == 0 || users[i - 1] < *user;
        let wanted: Vec<(i64, i64, bool)> = runs
            .query_map(params![user, filter.product, from, to], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        let mut theirs = Vec::new();
        for (lo, hi, inside) in wanted {
            let mut rows = batches.query(params![user, lo, hi]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                read(r, user, (lo, hi, inside), &mut theirs)?;
            }
        }
        // Rows not yet in any run written out.
        for first in tail.get(user).into_iter().flatten() {
            let mut rows = one_batch.query([first]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                read(r, user, (covered + 1, i64::MAX, false), &mut theirs)?;
            }
        }
        // User by user: a sort of one user's sessions, not of the page's.
        sort_sessions(&mut theirs);
        out.append(&mut theirs);
    }
    if !sorted {
        sort_sessions(&mut out);
    }
    Ok(out)
}

/// The stored session at `row` with its user and device, if it reaches into
/// `[from, to)` (ns).
pub(super) fn read_within(
    body: &str,
    row: i64,
    zones: &mut ZoneCache,
    from: i64,
    to: i64,
    user: &str,
    device: &str,
) -> Result<Option<StoredSession>, StoreError> {
    if outside(body, from, to) {
        return Ok(None);
    }
    let (mut s, _) = read_back(body, row, zones)?;
    if s.start_nanos() >= to || s.end_nanos() < from {
        return Ok(None);
    }
    s.user = Some(user.to_owned().into());
    s.device = Some(device.to_owned().into());
    Ok(Some(s.into_owned()))
}

/// Sessions in the order every read returns them: user, product, start, id.
pub(super) fn sort_sessions(sessions: &mut [StoredSession]) {
    sessions.sort_by(|a, b| {
        (&a.user, &a.product, a.start_nanos(), &a.id).cmp(&(
            &b.user,
            &b.product,
            b.start_nanos(),
            &b.id,
        ))
    });
}

/// A session's instants only, read without its idle intervals or its checks.
#[derive(serde::Deserialize)]
struct Instants<'a> {
    #[serde(borrow)]
    start: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    end: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    last_seen: Option<std::borrow::Cow<'a, str>>,
}

/// Whether a stored session surely lies outside `[from, to)` (it starts at or after
/// `to`, or its effective end is before `from`), judged from its instants alone: a
/// page's sessions are parsed whole only when they may reach into the range. Anything
/// it cannot tell leaves the session to the full read.
fn outside(body: &str, from: i64, to: i64) -> bool {
    let Ok(i) = serde_json::from_str::<Instants<'_>>(body) else {
        return false;
    };
    let at = |t: &Option<std::borrow::Cow<'_, str>>| {
        t.as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| t.timestamp_nanos_opt())
    };
    let Some(start) = at(&i.start) else {
        return false;
    };
    let end = match (&i.end, &i.last_seen) {
        (Some(_), _) => at(&i.end),
        (None, Some(_)) => at(&i.last_seen),
        (None, None) => Some(start),
    };
    let Some(end) = end else {
        return false;
    };
    start >= to || end < from
}
