//! Monthly totals of usage days, kept beside the days themselves so that reports read
//! thousands of rows instead of a year of days.
//!
//! Why per month and per day of the month: token reports cover whole months (one row a
//! key and month answers them), but `past-30-days` and the seat reports are rolling, so
//! a row also keeps each day's tokens and count; a partial month is summed from those.
//! Why counts, not a set of days: a key can have two usage days dated the same day (a
//! short free launch beside a charged window), and taking one away must leave the other.
//!
//! Exact under late and corrected sessions by construction: [`super::settle::settle`]
//! turns every day it writes, rewrites or drops into a [`Tally`] of differences, which
//! the backend adds to its stored [`Month`]s in the same transaction as the days.

use std::collections::BTreeMap;

use chrono::{Datelike, Months, NaiveDate, TimeDelta};
use daymeter_shared::waste::Marks;

/// One key's days in one month: tokens and usage days per day of the month (index 0
/// is the 1st).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Month {
    pub tokens: [i64; 31],
    pub days: [i64; 31],
}

impl Month {
    /// Nothing left: the row can go.
    pub fn is_empty(&self) -> bool {
        self.days.iter().all(|&d| d == 0) && self.tokens.iter().all(|&t| t == 0)
    }

    pub fn add(&mut self, other: &Month) {
        for i in 0..31 {
            self.tokens[i] += other.tokens[i];
            self.days[i] += other.days[i];
        }
    }

    /// The stored form: 31 tokens, each a little-endian i32, then 31 counts of one byte
    /// (155 bytes). A day's tokens fit: a product's daily rate is far below 2³¹; a key
    /// has a few usage days on one date, never 256.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(155);
        for v in &self.tokens {
            out.extend_from_slice(&(*v as i32).to_le_bytes());
        }
        out.extend(self.days.iter().map(|&d| d.clamp(0, 255) as u8));
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Month> {
        if bytes.len() != 155 {
            return None;
        }
        let mut m = Month::default();
        for (i, chunk) in bytes[..124].chunks_exact(4).enumerate() {
            m.tokens[i] = i64::from(i32::from_le_bytes(chunk.try_into().ok()?));
        }
        for (i, &d) in bytes[124..].iter().enumerate() {
            m.days[i] = i64::from(d);
        }
        Some(m)
    }

    /// Tokens of the days `first..=last` of the month (1-based, clamped).
    pub fn tokens_between(&self, first: u32, last: u32) -> i64 {
        slice(&self.tokens, first, last).iter().sum()
    }

    /// The days `first..=last` of the month (1-based, clamped) with any usage day.
    pub fn used_between(&self, first: u32, last: u32) -> i64 {
        slice(&self.days, first, last)
            .iter()
            .filter(|&&d| d > 0)
            .count() as i64
    }

    /// The days with any usage day.
    pub fn used_days(&self) -> i64 {
        self.days.iter().filter(|&&d| d > 0).count() as i64
    }

    /// Whether the day (1-based) has a usage day.
    pub fn used_on(&self, day: u32) -> bool {
        self.days
            .get(day.wrapping_sub(1) as usize)
            .is_some_and(|&d| d > 0)
    }
}

fn slice(values: &[i64; 31], first: u32, last: u32) -> &[i64] {
    let lo = first.max(1) as usize - 1;
    let hi = (last.min(31) as usize).max(lo);
    &values[lo..hi]
}

/// One key's [`Month`] as a store reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMonth {
    pub user: String,
    pub product: String,
    /// The month's first day.
    pub first: NaiveDate,
    pub month: Month,
}

impl KeyMonth {
    /// Each day of the month in `[from, to]` with a usage day: the date, its tokens and
    /// how many usage days are dated on it.
    pub fn days_between(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> impl Iterator<Item = (NaiveDate, u64, u64)> + '_ {
        (0..31u32).filter_map(move |i| {
            let count = self.month.days[i as usize];
            if count <= 0 {
                return None;
            }
            let day = self.first.with_day(i + 1)?;
            (from <= day && day <= to).then(|| {
                let tokens = self.month.tokens[i as usize].max(0) as u64;
                (day, tokens, count as u64)
            })
        })
    }

    /// Whether the whole month lies in `[from, to]`.
    pub fn within(&self, from: NaiveDate, to: NaiveDate) -> bool {
        let last = self
            .first
            .checked_add_months(chrono::Months::new(1))
            .and_then(|d| d.pred_opt())
            .unwrap_or(self.first);
        from <= self.first && last <= to
    }
}

/// How a range reads the totals: the whole months inside it (first day of the first,
/// last day of the last), and the cut months' days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub whole: Option<(NaiveDate, NaiveDate)>,
    /// Day ranges inside one month each, read day by day.
    pub cut: Vec<(NaiveDate, NaiveDate)>,
}

fn month_first(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

fn month_last(day: NaiveDate) -> NaiveDate {
    month_first(day)
        .checked_add_months(Months::new(1))
        .and_then(|d| d.pred_opt())
        .unwrap_or(day)
}

/// Splits `[from, to]` into whole months and the cut ones.
pub fn split(from: NaiveDate, to: NaiveDate) -> Split {
    if from > to {
        return Split {
            whole: None,
            cut: Vec::new(),
        };
    }
    if month_first(from) == month_first(to) {
        let whole = from.day() == 1 && to == month_last(to);
        return if whole {
            Split {
                whole: Some((from, to)),
                cut: Vec::new(),
            }
        } else {
            Split {
                whole: None,
                cut: vec![(from, to)],
            }
        };
    }
    let mut cut = Vec::new();
    let first_whole = if from.day() == 1 {
        from
    } else {
        cut.push((from, month_last(from)));
        month_last(from) + TimeDelta::days(1)
    };
    let last_whole = if to == month_last(to) {
        to
    } else {
        cut.push((month_first(to), to));
        month_first(to) - TimeDelta::days(1)
    };
    Split {
        whole: (first_whole <= last_whole).then_some((first_whole, last_whole)),
        cut,
    }
}

/// `YYYY-MM` of a day: the month a usage day is totalled in.
pub fn month_of(day: NaiveDate) -> String {
    format!("{:04}-{:02}", day.year(), day.month())
}

/// The differences one settling makes to a key's months.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub months: BTreeMap<String, Month>,
    /// Day (`YYYY-MM-DD`) → tokens wasted and tokens `rollover = active` would have
    /// saved (see [`Marks::cost`]).
    pub waste: BTreeMap<String, (i64, i64)>,
}

impl Tally {
    /// Adds (`sign` 1) or takes away (`sign` -1) a usage day dated `day` (`YYYY-MM-DD`)
    /// with `tokens`. A day that does not parse is left out: the days themselves are
    /// checked where they are made.
    pub fn count(&mut self, day: &str, tokens: i64, sign: i64) {
        let Ok(date) = day.parse::<NaiveDate>() else {
            return;
        };
        let m = self.months.entry(month_of(date)).or_default();
        let i = date.day0() as usize;
        m.tokens[i] += sign * tokens;
        m.days[i] += sign;
    }

    /// Adds (`sign` 1) or takes away (`sign` -1) the waste of a day dated `day` with
    /// `tokens` and `marks`.
    pub fn mark(&mut self, day: &str, tokens: i64, marks: Marks, sign: i64) {
        let (wasted, saved) = marks.cost(tokens);
        if wasted == 0 && saved == 0 {
            return;
        }
        let e = self.waste.entry(day.to_owned()).or_default();
        e.0 += sign * wasted;
        e.1 += sign * saved;
    }

    pub fn is_empty(&self) -> bool {
        self.months.values().all(Month::is_empty) && self.waste.values().all(|w| *w == (0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_taken_away_leaves_another_dated_the_same_day() {
        let mut stored = Month::default();
        let mut t = Tally::default();
        t.count("2026-03-05", 6, 1);
        t.count("2026-03-05", 0, 1);
        stored.add(&t.months["2026-03"]);
        let mut t = Tally::default();
        t.count("2026-03-05", 6, -1);
        stored.add(&t.months["2026-03"]);
        assert!(stored.used_on(5));
        assert_eq!(stored.tokens_between(1, 31), 0);
    }

    #[test]
    fn a_range_splits_into_whole_months_and_the_cut_ends() {
        let s = split(d("2026-01-15"), d("2026-04-10"));
        assert_eq!(s.whole, Some((d("2026-02-01"), d("2026-03-31"))));
        assert_eq!(
            s.cut,
            vec![
                (d("2026-01-15"), d("2026-01-31")),
                (d("2026-04-01"), d("2026-04-10"))
            ]
        );
        let s = split(d("2026-02-01"), d("2026-02-28"));
        assert_eq!(s.whole, Some((d("2026-02-01"), d("2026-02-28"))));
        assert!(s.cut.is_empty());
        let s = split(d("2026-02-03"), d("2026-02-05"));
        assert_eq!((s.whole, s.cut.len()), (None, 1));
        let s = split(d("2026-02-03"), d("2026-03-02"));
        assert_eq!((s.whole, s.cut.len()), (None, 2));
    }

    fn d(text: &str) -> NaiveDate {
        text.parse().expect("a day")
    }

    #[test]
    fn a_cut_month_counts_only_its_days_in_the_range() {
        let mut t = Tally::default();
        t.count("2026-01-10", 5, 1);
        t.count("2026-01-20", 7, 1);
        t.count("2026-01-20", 0, 1);
        let m = &t.months["2026-01"];
        assert_eq!((m.tokens_between(15, 31), m.used_between(15, 31)), (7, 1));
        assert_eq!((m.tokens_between(1, 31), m.used_between(1, 31)), (12, 2));
    }

    #[test]
    fn a_month_reads_back_as_written() {
        let mut t = Tally::default();
        t.count("2026-01-31", 8, 1);
        t.count("2026-01-01", 5, 1);
        let m = &t.months["2026-01"];
        assert_eq!(Month::from_bytes(&m.to_bytes()).as_ref(), Some(m));
        assert_eq!(m.tokens_between(2, 31), 8);
        assert_eq!(m.tokens_between(1, 1), 5);
        assert!(!m.used_on(0) && !m.used_on(32));
    }
}
