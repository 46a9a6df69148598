//! Each key's totals over a piece of a range (its whole months, or the days of a month
//! it cuts), kept from one request to the next until the writer changes one of those
//! months.
//!
//! Why: the token and product reports over whole months (`past-3-months` …
//! `past-12-months` count completed months) sum a row a key and month off the index
//! by key: 360,000 rows for a year of 10,000 users, 75–85 ms each time, where the
//! answer changes only when a late or corrected session reaches a past month; and
//! `past-30-days` slices last month's rows, as fixed. Syncs write the current month,
//! so a piece that reaches into it is read afresh every time (see
//! `reports::key_totals`), not kept.
//!
//! Exact: each month has a generation the writer raises after every commit that
//! changed one of its rows (never before: a reader could otherwise read the old rows
//! under the new generation and keep them). A reader takes the generations of its
//! months before it reads; what it keeps is used only while they have not moved.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::NaiveDate;

use crate::store::KeyTotal;
use crate::store::tally::month_of;

/// Pieces kept: the dashboard's and a few reports' at once.
const KEPT: usize = 8;

#[derive(Default)]
pub struct KeptTotals {
    /// Month (`YYYY-MM`) → how many commits have changed its rows since start.
    generations: Mutex<BTreeMap<String, u64>>,
    /// (first day, last day, stamp, totals), the latest first.
    kept: Mutex<Vec<Kept>>,
}

struct Kept {
    first: NaiveDate,
    last: NaiveDate,
    stamp: u64,
    totals: Vec<KeyTotal>,
}

impl KeptTotals {
    /// After a commit: `months` changed.
    pub fn changed<'m>(&self, months: impl IntoIterator<Item = &'m String>) {
        if let Ok(mut g) = self.generations.lock() {
            for m in months {
                *g.entry(m.clone()).or_default() += 1;
            }
        }
    }

    /// The generations of the months of the days `first..=last`, summed: they only
    /// grow, so an equal stamp means none moved. Taken before reading.
    pub fn stamp(&self, first: NaiveDate, last: NaiveDate) -> Option<u64> {
        let g = self.generations.lock().ok()?;
        Some(
            g.range(month_of(first)..=month_of(last))
                .map(|(_, n)| n)
                .sum(),
        )
    }

    /// The totals kept for the days `first..=last` under `stamp`, if any.
    pub fn get(&self, first: NaiveDate, last: NaiveDate, stamp: u64) -> Option<Vec<KeyTotal>> {
        let kept = self.kept.lock().ok()?;
        kept.iter()
            .find(|k| k.first == first && k.last == last && k.stamp == stamp)
            .map(|k| k.totals.clone())
    }

    pub fn put(&self, first: NaiveDate, last: NaiveDate, stamp: u64, totals: &[KeyTotal]) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.retain(|k| !(k.first == first && k.last == last));
            kept.insert(
                0,
                Kept {
                    first,
                    last,
                    stamp,
                    totals: totals.to_vec(),
                },
            );
            kept.truncate(KEPT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().expect("a day")
    }

    fn total(tokens: u64) -> Vec<KeyTotal> {
        vec![KeyTotal {
            user: "ana".into(),
            product: "acad".into(),
            tokens,
            days_used: 1,
        }]
    }

    #[test]
    fn totals_kept_are_dropped_when_one_of_their_months_changes() {
        let w = KeptTotals::default();
        let (first, last) = (day("2026-01-01"), day("2026-03-31"));
        let stamp = w.stamp(first, last).unwrap();
        w.put(first, last, stamp, &total(7));
        assert_eq!(w.get(first, last, stamp), Some(total(7)));
        w.changed(&["2026-04".to_owned()]);
        assert_eq!(w.stamp(first, last), Some(stamp), "a later month");
        w.changed(&["2026-02".to_owned()]);
        let now = w.stamp(first, last).unwrap();
        assert_ne!(now, stamp);
        assert_eq!(w.get(first, last, now), None);
    }
}
