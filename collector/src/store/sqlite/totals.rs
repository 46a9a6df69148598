//! The report totals' differences gathered over one transaction and written once,
//! before it commits.
//!
//! Why: written key by key, every sync paid a read and two writes of its keys' month
//! rows, and upserts of the same days' totals — the same few rows for every
//! sync of a group — which took a third of the writer's throughput (sync_load 50x50,
//! A/B). Gathered, a group of syncs writes each touched row once, in key order. Held
//! in the writer's memory, they go with a rolled-back transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::Datelike;

use super::*;

/// Records a key's latest session end unless a later one is recorded.
pub(super) const REACH: &str =
    "INSERT INTO key_reach (user, product, last_end_ns) VALUES (?1, ?2, ?3)
     ON CONFLICT (user, product) DO UPDATE SET last_end_ns = excluded.last_end_ns
     WHERE excluded.last_end_ns > key_reach.last_end_ns";

/// The UTC day (since the epoch) of an instant in ns.
fn utc_day(ns: i64) -> i64 {
    ns.div_euclid(86_400 * 1_000_000_000)
}

/// A team's product's differences by day: tokens, usage days, tokens wasted, tokens
/// `rollover = active` would have saved (the columns of `day_totals`).
type ByDay = BTreeMap<NaiveDate, [i64; 4]>;

#[derive(Default)]
pub(super) struct Pending {
    /// (month, user, product) → the month's difference.
    months: BTreeMap<(String, String, String), Month>,
    /// team → product → day → tokens, usage days, wasted, saved.
    days: BTreeMap<String, BTreeMap<String, ByDay>>,
    /// (user, product) → latest session end (ns).
    reach: BTreeMap<(String, String), i64>,
    /// user → product → the UTC day (since the epoch) of the last access this writer
    /// wrote: a session extended within that day is not written again (reports read
    /// the day, and every sync of an open product would otherwise rewrite its row).
    /// Forgotten with everything else when a transaction rolls back.
    written: HashMap<String, HashMap<String, i64>>,
    /// team → tokens no purchase paid.
    unfunded: BTreeMap<String, i64>,
    /// The months whose `key_months` rows the open transaction wrote: once it commits,
    /// totals kept for them are out of date ([`super::kept_totals`]).
    touched: BTreeSet<String>,
}

impl Pending {
    pub(super) fn tally(&mut self, key: Key<'_>, tally: &Tally) {
        for (month, delta) in &tally.months {
            self.months
                .entry((month.clone(), key.user.to_owned(), key.product.to_owned()))
                .or_default()
                .add(delta);
        }
        let mut by_day = Vec::new();
        for (month, delta) in &tally.months {
            let Ok(first) = format!("{month}-01").parse::<NaiveDate>() else {
                continue;
            };
            for (i, (&t, &d)) in delta.tokens.iter().zip(&delta.days).enumerate() {
                if (t != 0 || d != 0)
                    && let Some(day) = first.with_day(i as u32 + 1)
                {
                    by_day.push((day, [t, d, 0, 0]));
                }
            }
        }
        for (day, &(wasted, saved)) in &tally.waste {
            if let Ok(day) = day.parse::<NaiveDate>() {
                by_day.push((day, [0, 0, wasted, saved]));
            }
        }
        if by_day.is_empty() {
            return;
        }
        if !self.days.contains_key(key.team) {
            self.days.insert(key.team.to_owned(), BTreeMap::new());
        }
        let Some(team) = self.days.get_mut(key.team) else {
            return;
        };
        if !team.contains_key(key.product) {
            team.insert(key.product.to_owned(), BTreeMap::new());
        }
        let Some(product) = team.get_mut(key.product) else {
            return;
        };
        for (day, delta) in by_day {
            let e = product.entry(day).or_default();
            for (sum, d) in e.iter_mut().zip(delta) {
                *sum += d;
            }
        }
    }

    pub(super) fn reach(&mut self, key: Key<'_>, last_end: i64) {
        let written = self.written.get(key.user).and_then(|p| p.get(key.product));
        if written.is_some_and(|&day| day >= utc_day(last_end)) {
            return;
        }
        let r = self
            .reach
            .entry((key.user.to_owned(), key.product.to_owned()))
            .or_insert(last_end);
        *r = (*r).max(last_end);
    }

    pub(super) fn unfunded(&mut self, team: &str, tokens: i64) {
        *self.unfunded.entry(team.to_owned()).or_default() += tokens;
    }

    pub(super) fn clear(&mut self) {
        *self = Pending::default();
    }

    /// The months written since the last commit, forgotten here.
    pub(super) fn take_touched(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.touched)
    }

    /// Writes what was gathered into the open transaction, and forgets it.
    pub(super) fn flush(&mut self, t: &Connection) -> Result<(), StoreError> {
        let written = std::mem::take(&mut self.written);
        let touched = std::mem::take(&mut self.touched);
        let pending = std::mem::take(self);
        self.written = written;
        self.touched = touched;
        if !pending.months.is_empty() {
            let mut get = t
                .prepare_cached(
                    "SELECT by_day FROM key_months WHERE month = ?1 AND user = ?2 AND product = ?3",
                )
                .map_err(db)?;
            let mut put = t
                .prepare_cached(
                    "INSERT INTO key_months (month, user, product, tokens, days, used_days, by_day)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (month, user, product) DO UPDATE SET tokens = excluded.tokens,
                       days = excluded.days, used_days = excluded.used_days, by_day = excluded.by_day",
                )
                .map_err(db)?;
            let mut drop_month = t
                .prepare_cached(
                    "DELETE FROM key_months WHERE month = ?1 AND user = ?2 AND product = ?3",
                )
                .map_err(db)?;
            for ((month, user, product), delta) in &pending.months {
                if delta.is_empty() {
                    continue;
                }
                if !self.touched.contains(month) {
                    self.touched.insert(month.clone());
                }
                let stored: Option<Vec<u8>> = get
                    .query_row(params![month, user, product], |r| r.get(0))
                    .optional()
                    .map_err(db)?;
                let mut m = match stored {
                    Some(bytes) => Month::from_bytes(&bytes)
                        .ok_or_else(|| corrupt(format!("key_months {month} {user} {product}")))?,
                    None => Month::default(),
                };
                m.add(delta);
                if m.is_empty() {
                    drop_month
                        .execute(params![month, user, product])
                        .map_err(db)?;
                } else {
                    let tokens: i64 = m.tokens.iter().sum();
                    let days: i64 = m.days.iter().sum();
                    put.execute(params![
                        month,
                        user,
                        product,
                        tokens,
                        days,
                        m.used_days(),
                        m.to_bytes()
                    ])
                    .map_err(db)?;
                }
            }
        }
        if !pending.days.is_empty() {
            let mut add = t
                .prepare_cached(
                    "INSERT INTO day_totals (day, team, product, tokens, days, wasted, saved)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (day, team, product) DO UPDATE SET tokens = tokens + excluded.tokens,
                       days = days + excluded.days, wasted = wasted + excluded.wasted,
                       saved = saved + excluded.saved",
                )
                .map_err(db)?;
            for (team, products) in &pending.days {
                for (product, days) in products {
                    for (day, [tokens, count, wasted, saved]) in days {
                        if [tokens, count, wasted, saved].iter().any(|v| **v != 0) {
                            add.execute(params![
                                day.to_string(),
                                team,
                                product,
                                tokens,
                                count,
                                wasted,
                                saved
                            ])
                            .map_err(db)?;
                        }
                    }
                }
            }
        }
        if !pending.reach.is_empty() {
            let mut reach = t.prepare_cached(REACH).map_err(db)?;
            for ((user, product), end) in &pending.reach {
                reach.execute(params![user, product, end]).map_err(db)?;
                let day = self.written.entry(user.clone()).or_default();
                let d = day.entry(product.clone()).or_insert(i64::MIN);
                *d = (*d).max(utc_day(*end));
            }
        }
        if !pending.unfunded.is_empty() {
            let mut add = t
                .prepare_cached(
                    "INSERT INTO team_unfunded (team, tokens) VALUES (?1, ?2)
                     ON CONFLICT (team) DO UPDATE SET tokens = tokens + excluded.tokens",
                )
                .map_err(db)?;
            for (team, tokens) in &pending.unfunded {
                if *tokens != 0 {
                    add.execute(params![team, tokens]).map_err(db)?;
                }
            }
        }
        Ok(())
    }
}
