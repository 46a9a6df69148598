//! Settling a key: its sessions walked into windows, the windows priced into usage
//! days, those compared with the days stored, and the difference booked — a changed or
//! vanished day's entries reversed, a new or changed day charged to its team's
//! purchases, each entry with its reason.
//!
//! Why here, apart from any backend: these are the accounting's rules, and a second
//! backend (PostgreSQL) must apply them exactly as SQLite does. A backend implements
//! [`Sink`] — where the key's days and ledger entries go, and the team's purchases in
//! their current state — and calls [`settle`]; it decides nothing. What the walk needs
//! to start from (the key's sessions and stored days from a resume point on) comes in a
//! [`Tail`], which the backend loads or keeps.

use std::collections::BTreeSet;

use chrono::DateTime;
use daymeter_shared::accounting::{Span, WindowKind, walk_from};
use daymeter_shared::ledger::Ledger;
use daymeter_shared::time::date_text;
use daymeter_shared::usage::priced;
use daymeter_shared::waste::{ByStart, Marks};

use super::tails::{Drawn, Held, StoredDay, Tail};
use super::tally::Tally;
use super::{Cause, Settings, StoreError};

/// One key being settled, and the team whose purchases pay for its days.
#[derive(Debug, Clone, Copy)]
pub struct Key<'k> {
    pub user: &'k str,
    pub product: &'k str,
    pub team: &'k str,
}

impl<'k> Key<'k> {
    /// `user`'s key of `product`, paid by their team under `settings`.
    pub fn of(settings: &'k Settings, user: &'k str, product: &'k str) -> Key<'k> {
        Key {
            user,
            product,
            team: settings.team_of(user),
        }
    }
}

/// One ledger entry of the key being settled: a charge (positive) or a reversal
/// (negative) of part of a day, drawn from `purchase` (`None`: unfunded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'e> {
    pub day: &'e str,
    pub window_start: i64,
    pub purchase: Option<&'e str>,
    pub tokens: i64,
    pub reason: &'e str,
}

/// Where one key's settling goes, inside the backend's open transaction. Every call is
/// about the [`Key`] the sink was made for.
pub trait Sink {
    /// The key's team's purchases and what each has paid for, this transaction's
    /// changes included; [`settle`] draws from it and gives back to it.
    fn ledger(&mut self) -> Result<&mut Ledger, StoreError>;
    /// Writes the usage day whose window starts at `start`, replacing a stored one.
    fn put_day(&mut self, start: i64, day: &StoredDay) -> Result<(), StoreError>;
    /// Deletes the usage day whose window starts at `start`.
    fn drop_day(&mut self, start: i64) -> Result<(), StoreError>;
    /// Adds the key's settling to its monthly totals ([`Tally`]: differences, so a
    /// backend adds them to what it stores, in the same transaction as the days).
    fn tally(&mut self, tally: &Tally) -> Result<(), StoreError>;
    /// Records the latest effective end (ns) among the key's sessions, if later than
    /// the one recorded: its last access, for reports.
    fn reach(&mut self, last_end: i64) -> Result<(), StoreError>;
    /// Books one ledger entry (a backend may hold them until [`Sink::finish`]).
    fn book(&mut self, entry: Entry<'_>) -> Result<(), StoreError>;
    /// Ends the key: writes what is held, and what each purchase in `changed` has now
    /// paid for (as [`Sink::ledger`] says).
    fn finish(&mut self, changed: &BTreeSet<String>) -> Result<(), StoreError>;
}

/// The key's usage days from `from` (a resume point of `tail`) on, as the rules make
/// them from the tail's sessions: walked, dated, priced and marked, by window start.
/// None for a product the catalog does not list (its stored days go).
///
/// The marks need no session before `from`: a charged window from `from` on starts at
/// or after it, and no session that starts before `from` reaches it.
pub fn days(settings: &Settings, key: Key<'_>, tail: &Tail, from: i64) -> Vec<(i64, StoredDay)> {
    if !settings.catalog.contains_key(key.product) {
        return Vec::new();
    }
    let resume = tail.resume_at(from);
    let spans: Vec<Span<'_>> = tail.sessions[tail.first_from(from)..]
        .iter()
        .map(Held::span)
        .collect();
    let rules = settings.policy.rules();
    let mut windows = Vec::new();
    walk_from(&spans, &rules, &resume, &mut windows);
    let pricing = settings.pricing(key.user, key.product);
    let pricing = pricing.rules();
    let by_start = ByStart::new(&spans, rules.min_session);
    windows
        .iter()
        .map(|w| {
            let p = priced(w, &rules, &pricing);
            let short = w.kind == WindowKind::ShortFree;
            let marks = if short {
                Marks::default()
            } else {
                by_start.marks(w.start, w.end)
            };
            let day = StoredDay {
                end: w.end,
                day: date_text(p.day),
                plan: p.plan.as_str().to_owned(),
                tokens: p.tokens as i64,
                short,
                marks,
                drawn: Drawn::new(),
            };
            (w.start, day)
        })
        .collect()
}

/// The charged day before `from` whose window is still open at `from`, if it is marked
/// idle and a session from `from` on is in use before its end: its window start and
/// the day without the idle mark. (Its tokens and its rolled mark depend only on what
/// came before `from`.)
fn used_since(tail: &Tail, from: i64) -> Option<(i64, StoredDay)> {
    let (start, day) = tail.days.range(..from).rev().find(|(_, d)| !d.short)?;
    if day.end <= from || !day.marks.idle() {
        return None;
    }
    let spans: Vec<Span<'_>> = tail.sessions[tail.first_from(from)..]
        .iter()
        .take_while(|s| s.start < day.end)
        .map(Held::span)
        .collect();
    if !ByStart::new(&spans, 0).in_use_within(from, day.end) {
        return None;
    }
    let used = StoredDay {
        marks: day.marks.used(),
        ..day.clone()
    };
    Some((*start, used))
}

/// Recomputes one key's usage days from `from` (a resume point of `tail`) and writes the
/// difference to `sink`, booking it: a changed or vanished day's entries are reversed, a
/// new or changed day draws from its team's purchases. The tail's days follow. `cause`
/// says why, in the entries' reasons.
pub fn settle(
    sink: &mut impl Sink,
    settings: &Settings,
    key: Key<'_>,
    cause: Cause,
    tail: &mut Tail,
    from: i64,
) -> Result<(), StoreError> {
    let fresh = days(settings, key, tail, from);
    let mut stored = tail.days.split_off(&from);
    let mut books = Books {
        sink,
        changed: BTreeSet::new(),
    };
    let mut tally = Tally::default();
    if let Some((start, used)) = used_since(tail, from) {
        let old = &tail.days[&start];
        tally.mark(&old.day, old.tokens, old.marks, -1);
        tally.mark(&used.day, used.tokens, used.marks, 1);
        books.sink.put_day(start, &used)?;
        tail.days.insert(start, used);
    }
    for (start, mut row) in fresh {
        let before = stored.remove(&start);
        if let Some(old) = before.as_ref().filter(|old| old.same_day(&row)) {
            if old.marks != row.marks {
                // Only the marks changed: the day is written again, the ledger is not.
                tally.mark(&old.day, old.tokens, old.marks, -1);
                tally.mark(&row.day, row.tokens, row.marks, 1);
                row.drawn = old.drawn.clone();
                books.sink.put_day(start, &row)?;
                tail.days.insert(start, row);
            } else {
                tail.days.insert(start, old.clone());
            }
            continue;
        }
        if let Some(old) = &before {
            tally.count(&old.day, old.tokens, -1);
            tally.mark(&old.day, old.tokens, old.marks, -1);
        }
        tally.count(&row.day, row.tokens, 1);
        tally.mark(&row.day, row.tokens, row.marks, 1);
        let reason = match &before {
            Some(old) => {
                let why = format!("day changed ({})", cause.as_str());
                books.reverse(start, &old.day, &old.drawn, &why)?;
                format!("day recomputed ({})", cause.as_str())
            }
            None if cause == Cause::Sync => "usage".to_owned(),
            None => format!("day added ({})", cause.as_str()),
        };
        if row.tokens > 0 {
            row.drawn = books.charge(start, &row.day, row.tokens as u64, &reason)?;
        }
        books.sink.put_day(start, &row)?;
        tail.days.insert(start, row);
    }
    for (start, old) in &stored {
        tally.count(&old.day, old.tokens, -1);
        tally.mark(&old.day, old.tokens, old.marks, -1);
        books.sink.drop_day(*start)?;
        let why = format!("day removed ({})", cause.as_str());
        books.reverse(*start, &old.day, &old.drawn, &why)?;
    }
    if !tally.is_empty() {
        books.sink.tally(&tally)?;
    }
    if let Some(last_end) = tail.sessions.iter().map(|s| s.end).max() {
        books.sink.reach(last_end)?;
    }
    books.sink.finish(&books.changed)
}

/// Writes the waste marks of the key's stored days from `from` (a resume point of
/// `tail`) as the rules make them now, and nothing else: a day the walk would now
/// make differently (a repricing not yet imported, say) keeps its row and its ledger
/// entries. For a database whose days were stored before the marks existed.
pub fn mark(
    sink: &mut impl Sink,
    settings: &Settings,
    key: Key<'_>,
    tail: &mut Tail,
    from: i64,
) -> Result<(), StoreError> {
    let mut tally = Tally::default();
    for (start, row) in days(settings, key, tail, from) {
        let Some(old) = tail.days.get_mut(&start) else {
            continue;
        };
        if !old.same_day(&row) || old.marks == row.marks {
            continue;
        }
        tally.mark(&old.day, old.tokens, old.marks, -1);
        tally.mark(&old.day, old.tokens, row.marks, 1);
        old.marks = row.marks;
        sink.put_day(start, old)?;
    }
    if !tally.is_empty() {
        sink.tally(&tally)?;
    }
    sink.finish(&BTreeSet::new())
}

/// Charges and reversals of one key, and the purchases whose use they changed.
struct Books<'s, S> {
    sink: &'s mut S,
    changed: BTreeSet<String>,
}

impl<S: Sink> Books<'_, S> {
    /// Books a day's tokens against the purchases active at its window start; returns
    /// what the day's entries now hold.
    fn charge(
        &mut self,
        start: i64,
        day: &str,
        tokens: u64,
        reason: &str,
    ) -> Result<Drawn, StoreError> {
        let draw = self
            .sink
            .ledger()?
            .draw(DateTime::from_timestamp_nanos(start), tokens);
        let mut drawn = Drawn::with_capacity(draw.parts.len() + 1);
        for (purchase, n) in &draw.parts {
            self.book(day, start, Some(purchase), *n as i64, reason)?;
            self.changed.insert(purchase.clone());
            drawn.push((Some(purchase.clone()), *n as i64));
        }
        if draw.unfunded > 0 {
            self.book(day, start, None, draw.unfunded as i64, reason)?;
            drawn.push((None, draw.unfunded as i64));
        }
        Ok(drawn)
    }

    /// Reverses what a day's entries still hold (`drawn`, from its stored row),
    /// purchase by purchase, under the day they were booked on.
    fn reverse(
        &mut self,
        start: i64,
        day: &str,
        drawn: &Drawn,
        reason: &str,
    ) -> Result<(), StoreError> {
        for (purchase, tokens) in drawn {
            self.book(day, start, purchase.as_deref(), -tokens, reason)?;
            if let Some(p) = purchase {
                self.sink.ledger()?.give_back(p, (*tokens).max(0) as u64);
                self.changed.insert(p.clone());
            }
        }
        Ok(())
    }

    fn book(
        &mut self,
        day: &str,
        window_start: i64,
        purchase: Option<&str>,
        tokens: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.sink.book(Entry {
            day,
            window_start,
            purchase,
            tokens,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tails::StoredDays;
    use chrono::{FixedOffset, Utc};
    use daymeter_shared::accounting::Resume;
    use daymeter_shared::catalog::Product;
    use daymeter_shared::ledger::Purchase;
    use daymeter_shared::time::Zone;

    /// A sink that keeps what it is told: the rules without a database.
    #[derive(Default)]
    struct Recorder {
        ledger: Ledger,
        days: StoredDays,
        entries: Vec<(String, i64, Option<String>, i64, String)>,
        used: Vec<(String, u64)>,
        months: std::collections::BTreeMap<String, crate::store::tally::Month>,
        reach: Option<i64>,
    }

    impl Sink for Recorder {
        fn ledger(&mut self) -> Result<&mut Ledger, StoreError> {
            Ok(&mut self.ledger)
        }
        fn put_day(&mut self, start: i64, day: &StoredDay) -> Result<(), StoreError> {
            self.days.insert(start, day.clone());
            Ok(())
        }
        fn drop_day(&mut self, start: i64) -> Result<(), StoreError> {
            self.days.remove(&start);
            Ok(())
        }
        fn tally(&mut self, tally: &Tally) -> Result<(), StoreError> {
            for (month, delta) in &tally.months {
                self.months.entry(month.clone()).or_default().add(delta);
            }
            Ok(())
        }
        fn reach(&mut self, last_end: i64) -> Result<(), StoreError> {
            self.reach = self.reach.max(Some(last_end));
            Ok(())
        }
        fn book(&mut self, e: Entry<'_>) -> Result<(), StoreError> {
            let purchase = e.purchase.map(str::to_owned);
            let row = (
                e.day.into(),
                e.window_start,
                purchase,
                e.tokens,
                e.reason.into(),
            );
            self.entries.push(row);
            Ok(())
        }
        fn finish(&mut self, changed: &BTreeSet<String>) -> Result<(), StoreError> {
            for id in changed {
                let used = self.ledger.used.get(id).copied().unwrap_or(0);
                self.used.push((id.clone(), used));
            }
            Ok(())
        }
    }

    const HOUR: i64 = 3_600_000_000_000;
    /// 2026-02-02T09:00:00Z.
    const MONDAY_9: i64 = 1_770_022_800_000_000_000;

    fn settings(rate: u64) -> Settings {
        let mut s = Settings::default();
        let product = Product {
            name: None,
            tokens_per_day: rate,
            matches: vec![],
            rate_confirmed: None,
        };
        s.catalog.insert("acad".into(), product);
        s
    }

    /// Sophie's acad Monday 09:00 to 12:00 (UTC), nothing stored yet.
    fn tail() -> Tail {
        let held = Held {
            id: "m1".into(),
            start: MONDAY_9,
            end: MONDAY_9 + 3 * HOUR,
            zone: Zone::Fixed(FixedOffset::east_opt(0).unwrap()),
            idle: Box::new([]),
        };
        Tail::new(i64::MIN, Resume::default(), vec![held], StoredDays::new())
    }

    fn funded() -> Recorder {
        let at = |s: &str| s.parse::<chrono::DateTime<Utc>>().unwrap();
        let mut sink = Recorder::default();
        sink.ledger.purchases.push(Purchase {
            id: "p1".into(),
            team: "default".into(),
            tokens: 100,
            purchased_at: at("2026-01-01T00:00:00Z"),
            expires_at: at("2027-01-01T00:00:00Z"),
        });
        sink
    }

    #[test]
    fn a_new_day_is_charged_to_its_teams_purchase_as_usage() {
        let (s, mut tail, mut sink) = (settings(7), tail(), funded());
        let key = Key::of(&s, "sophie", "acad");
        settle(&mut sink, &s, key, Cause::Sync, &mut tail, i64::MIN).unwrap();
        let day = &sink.days[&MONDAY_9];
        assert_eq!((day.day.as_str(), day.tokens), ("2026-02-02", 7));
        assert_eq!(day.drawn, vec![(Some("p1".to_owned()), 7)]);
        let entry = (
            "2026-02-02".into(),
            MONDAY_9,
            Some("p1".into()),
            7,
            "usage".into(),
        );
        assert_eq!(sink.entries, vec![entry]);
        assert_eq!(sink.used, vec![("p1".to_owned(), 7)]);
        assert_eq!(tail.days, sink.days, "the tail follows what was written");
    }

    #[test]
    fn a_repriced_day_is_reversed_and_charged_again_and_an_unchanged_one_is_left() {
        let (s, mut tail, mut sink) = (settings(7), tail(), funded());
        let key = Key::of(&s, "sophie", "acad");
        settle(&mut sink, &s, key, Cause::Sync, &mut tail, i64::MIN).unwrap();
        settle(&mut sink, &s, key, Cause::Import, &mut tail, i64::MIN).unwrap();
        assert_eq!(sink.entries.len(), 1, "same price: nothing booked");
        let dearer = settings(9);
        settle(&mut sink, &dearer, key, Cause::Import, &mut tail, i64::MIN).unwrap();
        let booked: Vec<(i64, &str)> = sink.entries[1..]
            .iter()
            .map(|e| (e.3, e.4.as_str()))
            .collect();
        assert_eq!(
            booked,
            [(-7, "day changed (import)"), (9, "day recomputed (import)")]
        );
        assert_eq!(sink.ledger.used["p1"], 9);
    }

    #[test]
    fn the_days_of_a_product_gone_from_the_catalog_are_removed_and_given_back() {
        let (s, mut tail, mut sink) = (settings(7), tail(), funded());
        let key = Key::of(&s, "sophie", "acad");
        settle(&mut sink, &s, key, Cause::Sync, &mut tail, i64::MIN).unwrap();
        let none = Settings::default();
        settle(&mut sink, &none, key, Cause::Import, &mut tail, i64::MIN).unwrap();
        assert!(sink.days.is_empty() && tail.days.is_empty());
        let last = sink.entries.last().unwrap();
        assert_eq!((last.3, last.4.as_str()), (-7, "day removed (import)"));
        assert_eq!(sink.ledger.used["p1"], 0);
    }
}
