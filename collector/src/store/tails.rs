//! The recent past of each key, held by the writer so that a sync reads nothing back.
//!
//! A sync's recomputation needs, for its key, the sessions from the resume point on, the
//! usage days stored from there, and the walk's state before it (see
//! `daymeter_shared::accounting::Resume`). Read from the database, that was four queries
//! per key and sync, a third of the writer's time. A [`Tail`] holds exactly that for one
//! key from an instant `at` on, and stays true because every write of the key's
//! sessions and days goes through the writer, which updates the tail with it:
//! - a sync whose sessions all start at or after `at` is recomputed from the tail alone;
//! - a session that starts before `at` (an agent back from a long offline stretch) makes
//!   the writer load the key's tail again from the database, from further back;
//! - an import or a rolled-back transaction drops every tail.
//!
//! A tail keeps its last [`KEEP`] sessions or so (it moves `at` forward past the older
//! ones), and at most [`MAX_KEYS`] keys are held; the least recently synced are dropped
//! first. A dropped tail is loaded again on the key's next sync.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use daymeter_shared::accounting::{Resume, Span};
use daymeter_shared::session::{Interval, Session};
use daymeter_shared::time::Zone;
use daymeter_shared::waste::Marks;

/// Sessions a tail keeps once it trims itself (it trims at four times as many, so that
/// trimming is not part of every sync).
pub const KEEP: usize = 16;
/// Keys whose tails are held.
pub const MAX_KEYS: usize = 50_000;

/// A stored usage day: window end, day, plan, tokens, whether it is a `count_free` row,
/// its waste marks, and what its ledger entries hold.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDay {
    pub end: i64,
    pub day: String,
    pub plan: String,
    pub tokens: i64,
    pub short: bool,
    pub marks: Marks,
    pub drawn: Drawn,
}

impl StoredDay {
    /// Everything the ledger depends on (all but `marks` and `drawn`): whether a
    /// recomputed day changed its charge.
    pub fn same_day(&self, other: &StoredDay) -> bool {
        (self.end, &self.day, &self.plan, self.tokens, self.short)
            == (
                other.end,
                &other.day,
                &other.plan,
                other.tokens,
                other.short,
            )
    }
}

/// What a usage day's ledger entries hold now, by purchase (`None`: unfunded), as
/// stored in its `drawn` column. Only nonzero holdings are listed.
pub type Drawn = Vec<(Option<String>, i64)>;

/// Stored usage days by window start.
pub type StoredDays = BTreeMap<i64, StoredDay>;

/// What a tail keeps of a session: what the walk reads, and the id (copies replace it,
/// and it breaks ties of start). A whole session would cost a clone of every field.
#[derive(Debug, Clone)]
pub struct Held {
    pub id: Box<str>,
    pub start: i64,
    pub end: i64,
    pub zone: Zone,
    pub idle: Box<[Interval]>,
}

impl Held {
    pub fn of(s: &Session<'_>, zone: Zone) -> Held {
        Held::with(s, s.start_nanos(), s.end_nanos(), zone)
    }

    /// `s`, whose start and end on the engine's time line are known already.
    pub fn with(s: &Session<'_>, start: i64, end: i64, zone: Zone) -> Held {
        Held {
            id: (*s.id).into(),
            start,
            end,
            zone,
            idle: s.idle.as_slice().into(),
        }
    }

    pub fn span(&self) -> Span<'_> {
        Span {
            start: self.start,
            end: self.end,
            zone: self.zone,
            idle: &self.idle,
        }
    }
}

/// One key's sessions and usage days from `at` on.
#[derive(Debug)]
pub struct Tail {
    /// A resume point: no session of the key that starts before it ends at or after it.
    pub at: i64,
    /// The walk's state left by the days before `at`.
    pub base: Resume,
    /// Every session of the key that starts at or after `at`, by start then id.
    pub sessions: Vec<Held>,
    /// Every stored usage day of the key that starts at or after `at`, and those from
    /// the charged window still open at `at` on (a later session may mark it used).
    pub days: StoredDays,
    used: u64,
}

impl Tail {
    pub fn new(at: i64, base: Resume, mut sessions: Vec<Held>, days: StoredDays) -> Tail {
        sessions.sort_by(by_start);
        Tail {
            at,
            base,
            sessions,
            days,
            used: 0,
        }
    }

    /// Adds sessions that start at or after `at`, replacing stored copies of the same id.
    pub fn merge(&mut self, fresh: impl IntoIterator<Item = Held>) {
        for s in fresh {
            // A copy has the same start (one that differs is refused as a conflict), so
            // it sits exactly where the new one goes.
            let at = self.sessions.partition_point(|o| by_start(o, &s).is_lt());
            match self.sessions.get_mut(at) {
                Some(o) if o.id == s.id => *o = s,
                _ => self.sessions.insert(at, s),
            }
        }
    }

    /// The resume point for a change at `since` (at or after `at`): pushed back past
    /// every session still open at it, so that no session before it reaches it.
    pub fn resume_point(&self, since: i64) -> i64 {
        let mut point = since;
        loop {
            let earlier = self
                .sessions
                .iter()
                .take_while(|s| s.start < point)
                .filter(|s| s.end >= point)
                .map(|s| s.start)
                .min();
            match earlier {
                Some(e) => point = e,
                None => return point,
            }
        }
    }

    /// The walk's state left by the days that start before `from` (at or after `at`).
    pub fn resume_at(&self, from: i64) -> Resume {
        let mut resume = self.base;
        let before = self.days.range(..from);
        if let Some((start, d)) = before.clone().rev().find(|(_, d)| !d.short) {
            resume.window_start = *start;
            resume.window_end = d.end;
        }
        if let Some((_, d)) = before.rev().find(|(_, d)| d.short) {
            resume.short_reach = d.end;
        }
        resume
    }

    /// Index of the first session that starts at or after `from`.
    pub fn first_from(&self, from: i64) -> usize {
        self.sessions.partition_point(|s| s.start < from)
    }

    /// Moves `at` forward once the tail holds four times [`KEEP`] sessions, to a resume
    /// point before its last [`KEEP`]; the days before it go into `base`.
    pub fn trim(&mut self) {
        if self.sessions.len() < 4 * KEEP {
            return;
        }
        let candidate = self.sessions[self.sessions.len() - KEEP].start;
        let at = self.resume_point(candidate);
        if at <= self.at {
            return;
        }
        self.base = self.resume_at(at);
        let keep = self.first_from(at);
        self.sessions.drain(..keep);
        self.days = self.days.split_off(&days_from(&self.base, at));
        self.at = at;
    }
}

/// Where a tail at `at` with the walk's state `base` keeps its days from: `at`, or the
/// start of the charged window still open at `at`, whose idle mark a session after
/// `at` can take away (see `store::settle`).
pub fn days_from(base: &Resume, at: i64) -> i64 {
    if base.window_end > at {
        base.window_start.min(at)
    } else {
        at
    }
}

fn by_start(a: &Held, b: &Held) -> std::cmp::Ordering {
    a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id))
}

/// The tails of the keys synced lately, by user then product.
#[derive(Default)]
pub struct Tails {
    by_user: HashMap<String, HashMap<String, Tail>>,
    keys: usize,
    clock: u64,
}

impl Tails {
    /// The key's tail if it covers changes at `since`.
    pub fn covering(&mut self, user: &str, product: &str, since: i64) -> Option<&mut Tail> {
        self.clock += 1;
        let clock = self.clock;
        let tail = self.by_user.get_mut(user)?.get_mut(product)?;
        if since < tail.at {
            return None;
        }
        tail.used = clock;
        Some(tail)
    }

    /// Holds `tail` as the key's (replacing an older one) and returns it.
    pub fn put(&mut self, user: &str, product: &str, mut tail: Tail) -> &mut Tail {
        if self.keys >= MAX_KEYS {
            self.shed();
        }
        self.clock += 1;
        tail.used = self.clock;
        let products = self.by_user.entry(user.to_owned()).or_default();
        match products.entry(product.to_owned()) {
            Entry::Occupied(mut held) => {
                held.insert(tail);
                held.into_mut()
            }
            Entry::Vacant(free) => {
                self.keys += 1;
                free.insert(tail)
            }
        }
    }

    /// Drops the less recently used half of the tails.
    fn shed(&mut self) {
        let mut used: Vec<u64> = self
            .by_user
            .values()
            .flat_map(|p| p.values().map(|t| t.used))
            .collect();
        let mid = used.len() / 2;
        let (_, cut, _) = used.select_nth_unstable(mid);
        let cut = *cut;
        for products in self.by_user.values_mut() {
            products.retain(|_, t| t.used > cut);
        }
        self.by_user.retain(|_, p| !p.is_empty());
        self.keys = self.by_user.values().map(HashMap::len).sum();
    }

    /// Forgets every tail (after an import, or a rollback of changes they hold).
    pub fn clear(&mut self) {
        self.by_user.clear();
        self.keys = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(at: i64) -> Tail {
        Tail::new(at, Resume::default(), Vec::new(), StoredDays::new())
    }

    #[test]
    fn a_tail_covers_changes_from_its_resume_point_on() {
        let mut tails = Tails::default();
        tails.put("sophie", "acad", empty(100));
        assert!(tails.covering("sophie", "acad", 100).is_some());
        assert!(tails.covering("sophie", "acad", 99).is_none());
        assert!(tails.covering("sophie", "revit", 100).is_none());
    }

    #[test]
    fn past_the_key_limit_the_least_recently_synced_tails_go() {
        let mut tails = Tails::default();
        for i in 0..MAX_KEYS {
            tails.put(&format!("u{i}"), "acad", empty(0));
        }
        // u0 is synced again: it is now among the most recent.
        assert!(tails.covering("u0", "acad", 0).is_some());
        tails.put("newcomer", "acad", empty(0));
        assert!(tails.keys <= MAX_KEYS / 2 + 2, "{} kept", tails.keys);
        assert!(tails.covering("u0", "acad", 0).is_some());
        assert!(tails.covering("newcomer", "acad", 0).is_some());
        assert!(tails.covering("u1", "acad", 0).is_none());
    }
}
