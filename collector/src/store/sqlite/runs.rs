//! Where a key's newest sessions are: the runs of session rows not yet written to the
//! `session_runs` table, held by the writer and written out in bulk.
//!
//! Why: `session_runs` is ordered by user, so that a key's runs are found with one
//! seek; but then each sync wrote a row into its own user's page, and that page went to
//! the write-ahead log whole at the next commit: one page per sync, a third of all the
//! pages a 5-session sync wrote. Held here, the runs of many syncs are written together
//! once [`FLUSH_RUNS`] have gathered, user by user, so that a user's page is written
//! once for all of their syncs since the last flush.
//!
//! Nothing is lost in a crash: `session_runs` covers every session row up to its
//! largest `last_row`, and the rows after it (the runs held here when the process
//! stopped) are gathered again from the session batches when the store opens
//! ([`Runs::gather`]). Changes are journaled until the transaction that made them
//! commits, so that a rolled-back group leaves no run naming rows that were never
//! written, and a rolled-back flush gives its runs back.

use std::collections::HashMap;

/// Runs held before they are written out. A flush costs a few microseconds per run in
/// one group; at this size it stays a few milliseconds. The store's tests flush every
/// few syncs, so that their histories cross many flushes and restarts with runs held.
pub const FLUSH_RUNS: usize = if cfg!(test) { 8 } else { 2048 };

/// Consecutive rows of one key's sessions: `first..=last`, earliest start, latest end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: i64,
    pub last: i64,
    pub start: i64,
    pub end: i64,
}

/// A run with its key, as written to `session_runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRun {
    pub user: String,
    pub product: String,
    pub run: Run,
}

#[derive(Default)]
pub struct Runs {
    /// By user: their runs in row order, each with its product.
    by_user: HashMap<String, Vec<(String, Run)>>,
    held: usize,
    journal: Vec<Change>,
}

enum Change {
    /// A run was added at the end of this user's list.
    Pushed(String),
    /// The run at this place in this user's list ended here before.
    Extended(String, usize, i64),
    /// Every run was taken to be written out.
    Flushed(HashMap<String, Vec<(String, Run)>>, usize),
}

impl Runs {
    /// The runs of `rows` (rowid, user, product, start, end, in rowid order): consecutive
    /// rows of one key make one run.
    pub fn gather(rows: impl IntoIterator<Item = (i64, String, String, i64, i64)>) -> Runs {
        let mut runs = Runs::default();
        let mut open: Option<KeyedRun> = None;
        for (row, user, product, start, end) in rows {
            match &mut open {
                Some(k) if k.user == user && k.product == product && k.run.last + 1 == row => {
                    k.run.last = row;
                    k.run.start = k.run.start.min(start);
                    k.run.end = k.run.end.max(end);
                }
                _ => {
                    if let Some(k) = open.take() {
                        runs.push(k);
                    }
                    open = Some(KeyedRun {
                        user,
                        product,
                        run: Run {
                            first: row,
                            last: row,
                            start,
                            end,
                        },
                    });
                }
            }
        }
        if let Some(k) = open {
            runs.push(k);
        }
        runs.journal.clear();
        runs
    }

    /// Each held run's key and latest end.
    pub fn reaches(&self) -> impl Iterator<Item = (&str, &str, i64)> {
        self.by_user.iter().flat_map(|(user, runs)| {
            runs.iter()
                .map(move |(product, run)| (user.as_str(), product.as_str(), run.end))
        })
    }

    pub fn push(&mut self, k: KeyedRun) {
        self.by_user
            .entry(k.user.clone())
            .or_default()
            .push((k.product, k.run));
        self.held += 1;
        self.journal.push(Change::Pushed(k.user));
    }

    /// The session at `row` of `user` now ends at `end`: if a held run has the row, its
    /// latest end follows and this is true.
    pub fn extend(&mut self, user: &str, row: i64, end: i64) -> bool {
        let Some(runs) = self.by_user.get_mut(user) else {
            return false;
        };
        let Some(at) = runs
            .iter()
            .rposition(|(_, r)| (r.first..=r.last).contains(&row))
        else {
            return false;
        };
        let run = &mut runs[at].1;
        if end > run.end {
            self.journal
                .push(Change::Extended(user.to_owned(), at, run.end));
            run.end = end;
        }
        true
    }

    /// The held runs of one key that reach `bound` (end at or after it).
    pub fn of<'a>(
        &'a self,
        user: &str,
        product: &'a str,
        bound: i64,
    ) -> impl Iterator<Item = Run> + 'a {
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter(move |(p, r)| p == product && r.end >= bound)
            .map(|(_, r)| *r)
    }

    /// Whether enough runs are held to write them out.
    pub fn due(&self) -> bool {
        self.held >= FLUSH_RUNS
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Takes every held run, user by user and in row order within a user, to be written
    /// out in the open transaction.
    pub fn take(&mut self) -> Vec<KeyedRun> {
        let by_user = std::mem::take(&mut self.by_user);
        let mut out = Vec::with_capacity(self.held);
        let mut users: Vec<&String> = by_user.keys().collect();
        users.sort_unstable();
        for user in users {
            for (product, run) in &by_user[user] {
                out.push(KeyedRun {
                    user: user.clone(),
                    product: product.clone(),
                    run: *run,
                });
            }
        }
        self.journal.push(Change::Flushed(by_user, self.held));
        self.held = 0;
        out
    }

    pub fn commit(&mut self) {
        self.journal.clear();
    }

    /// The transaction was rolled back: undo what it changed, latest first.
    pub fn rollback(&mut self) {
        while let Some(change) = self.journal.pop() {
            match change {
                Change::Pushed(user) => {
                    if let Some(runs) = self.by_user.get_mut(&user) {
                        runs.pop();
                        if runs.is_empty() {
                            self.by_user.remove(&user);
                        }
                    }
                    self.held = self.held.saturating_sub(1);
                }
                Change::Extended(user, at, end) => {
                    if let Some((_, run)) = self.by_user.get_mut(&user).and_then(|r| r.get_mut(at))
                    {
                        run.end = end;
                    }
                }
                Change::Flushed(by_user, held) => {
                    // Runs pushed after the flush were undone before this.
                    self.by_user = by_user;
                    self.held = held;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(user: &str, product: &str, first: i64, last: i64) -> KeyedRun {
        KeyedRun {
            user: user.into(),
            product: product.into(),
            run: Run {
                first,
                last,
                start: first * 10,
                end: last * 10 + 5,
            },
        }
    }

    #[test]
    fn gathered_rows_make_one_run_per_consecutive_key() {
        let rows = [
            (5, "ann", "acad", 50, 55),
            (6, "ann", "acad", 40, 70),
            (7, "bob", "acad", 1, 2),
            (8, "ann", "acad", 80, 90),
            (9, "ann", "revit", 80, 90),
        ]
        .map(|(r, u, p, s, e)| (r, u.to_owned(), p.to_owned(), s, e));
        let runs = Runs::gather(rows);
        let ann: Vec<Run> = runs.of("ann", "acad", i64::MIN).collect();
        assert_eq!(
            ann,
            [
                Run {
                    first: 5,
                    last: 6,
                    start: 40,
                    end: 70
                },
                Run {
                    first: 8,
                    last: 8,
                    start: 80,
                    end: 90
                },
            ]
        );
        assert_eq!(
            runs.of("ann", "acad", 71).count(),
            1,
            "the first ends before 71"
        );
        assert_eq!(runs.of("bob", "acad", i64::MIN).count(), 1);
        assert_eq!(runs.of("ann", "revit", i64::MIN).count(), 1);
    }

    #[test]
    fn taken_runs_come_user_by_user_in_row_order() {
        let mut runs = Runs::default();
        for k in [
            keyed("zoe", "acad", 1, 2),
            keyed("ann", "acad", 3, 3),
            keyed("zoe", "revit", 4, 6),
            keyed("ann", "acad", 7, 9),
        ] {
            runs.push(k);
        }
        runs.commit();
        let taken: Vec<(String, i64)> = runs
            .take()
            .into_iter()
            .map(|k| (k.user, k.run.first))
            .collect();
        assert_eq!(
            taken,
            [
                ("ann".into(), 3),
                ("ann".into(), 7),
                ("zoe".into(), 1),
                ("zoe".into(), 4)
            ]
        );
        assert!(runs.is_empty());
    }

    #[test]
    fn a_rollback_undoes_pushes_extensions_and_flushes() {
        let mut runs = Runs::default();
        runs.push(keyed("ann", "acad", 1, 2));
        runs.commit();
        let committed: Vec<Run> = runs.of("ann", "acad", i64::MIN).collect();

        assert!(runs.extend("ann", 2, 1_000));
        assert!(!runs.extend("ann", 3, 1_000), "row 3 is in no held run");
        runs.push(keyed("ann", "acad", 3, 3));
        let _ = runs.take();
        runs.push(keyed("bob", "acad", 4, 4));
        runs.rollback();

        assert_eq!(
            runs.of("ann", "acad", i64::MIN).collect::<Vec<_>>(),
            committed
        );
        assert_eq!(runs.of("bob", "acad", i64::MIN).count(), 0);
        assert!(!runs.due());
        assert_eq!(runs.take().len(), 1);
    }
}
