//! The agent's book of sessions: which product processes have an open session, which
//! closed sessions still wait for the collector, and what changed at each poll.
//!
//! A session belongs to one process instance ([`ProcessKey`]: pid + start time). It opens
//! the first poll that sees the process and closes the first poll that does not, at that
//! poll's instant: the product ran until at most one poll interval before, so the session
//! may be up to one interval long — the price of never under-reporting a use.
//!
//! After a restart (clean or kill -9) the journal's open sessions are matched against
//! the processes still running: the same instance is adopted into its session, anything
//! else is closed at its `last_seen`, the last instant the agent knew it ran.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use daymeter_shared::session::{OwnedSession, Session};
use daymeter_shared::time::Instant;

use crate::journal::{Stage, Tracked};
use crate::watch::{ProcessKey, Running};

/// What a poll changed; each change is flushed to the journal before anything else.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Opened(Tracked),
    Closed(Tracked),
}

/// The device's time zone, as sessions record it.
#[derive(Debug, Clone)]
pub struct LocalZone {
    pub name: String,
    pub tz: Tz,
}

impl LocalZone {
    /// The system's IANA zone, if it has one chrono-tz knows. Sessions without a zone
    /// are read in UTC by the accounting, so a missing zone is logged, not fatal.
    pub fn system() -> Option<LocalZone> {
        let name = iana_time_zone::get_timezone().ok()?;
        LocalZone::named(&name)
    }

    pub fn named(name: &str) -> Option<LocalZone> {
        let tz: Tz = name.parse().ok()?;
        Some(LocalZone {
            name: name.to_owned(),
            tz,
        })
    }
}

/// Sessions by process (open) and by id (closed, awaiting the collector, or rejected).
#[derive(Debug, Default)]
pub struct Meter {
    open: BTreeMap<ProcessKey, Tracked>,
    closed: BTreeMap<String, Tracked>,
    zone: Option<LocalZone>,
    /// The clock offset new sessions are written with (see [`crate::offset`]).
    offset: TimeDelta,
}

impl Meter {
    pub fn new(zone: Option<LocalZone>) -> Self {
        Meter {
            open: BTreeMap::new(),
            closed: BTreeMap::new(),
            zone,
            offset: TimeDelta::zero(),
        }
    }

    /// The offset the `now`s given from here on are corrected by; recorded in every
    /// session opened from then on.
    pub fn set_offset(&mut self, offset: TimeDelta) {
        self.offset = offset;
    }

    /// Takes the journal's sessions after a start. Open ones whose process instance
    /// still runs are adopted; the others are closed at their `last_seen` and returned,
    /// to be flushed.
    pub fn restore(
        &mut self,
        sessions: Vec<Tracked>,
        alive: impl Fn(ProcessKey) -> bool,
    ) -> Vec<Tracked> {
        let mut closed_now = Vec::new();
        for mut t in sessions {
            let running = t.session.end.is_none();
            if running && alive(t.process) && !self.open.contains_key(&t.process) {
                self.open.insert(t.process, t);
                continue;
            }
            if running {
                let end = t.session.last_seen.unwrap_or(t.session.start);
                t.session.end = Some(end);
                if t.stage == Stage::Open {
                    t.stage = Stage::Closed;
                }
                closed_now.push(t.clone());
            } else if t.stage == Stage::Open {
                t.stage = Stage::Closed;
            }
            self.closed.insert(t.session.id.to_string(), t);
        }
        closed_now
    }

    /// Compares what runs now with the open sessions: opens a session for each new
    /// process instance, closes the sessions whose instance is gone, and moves every
    /// open session's `last_seen` to `now` (in memory; the caller persists it lazily).
    pub fn observe(
        &mut self,
        running: &[Running],
        now: DateTime<Utc>,
        user_of: &mut dyn FnMut(Option<u32>) -> String,
    ) -> Vec<Change> {
        let at = self.instant(now);
        let mut changes = Vec::new();
        let gone: Vec<ProcessKey> = self
            .open
            .keys()
            .filter(|k| !running.iter().any(|r| r.key == **k))
            .copied()
            .collect();
        for key in gone {
            if let Some(mut t) = self.open.remove(&key) {
                let at = not_before_last_seen(&t.session, at);
                t.session.end = Some(at);
                t.session.last_seen = Some(at);
                if t.stage == Stage::Open {
                    t.stage = Stage::Closed;
                }
                changes.push(Change::Closed(t.clone()));
                self.closed.insert(t.session.id.to_string(), t);
            }
        }
        for r in running {
            match self.open.get_mut(&r.key) {
                Some(t) => t.session.last_seen = Some(not_before_last_seen(&t.session, at)),
                None => {
                    let t = Tracked {
                        session: self.new_session(&r.product, at, now),
                        process: r.key,
                        owner: r.owner,
                        user: Some(user_of(r.owner)),
                        exe: Some(r.exe.clone()).filter(|e| !e.is_empty()),
                        stage: Stage::Open,
                        clock_offset_ms: self.offset.num_milliseconds(),
                    };
                    changes.push(Change::Opened(t.clone()));
                    self.open.insert(r.key, t);
                }
            }
        }
        changes
    }

    fn new_session(&self, product: &str, at: Instant, now: DateTime<Utc>) -> OwnedSession {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(now.timestamp()).unwrap_or(0),
            now.timestamp_subsec_nanos(),
        );
        Session {
            id: uuid::Uuid::new_v7(ts).to_string().into(),
            user: None,
            device: None,
            product: product.to_owned().into(),
            version: None,
            start: at,
            end: None,
            last_seen: Some(at),
            tz: self.zone.as_ref().map(|z| z.name.clone().into()),
            suspended: Vec::new(),
            idle: Vec::new(),
        }
    }

    /// `now` written with the local offset, so that audits read local times.
    fn instant(&self, now: DateTime<Utc>) -> Instant {
        local_instant(self.zone.as_ref(), now)
    }

    /// The machine slept from `from` to `to`: every open session records the sleep in
    /// `suspended` and folds it into `idle` (spec/accounting.md), each clipped to the
    /// session. Asleep is idle whether or not a session helper reports the user's input.
    pub fn record_sleep(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) {
        let zone = self.zone.clone();
        for t in self.open.values_mut() {
            let s = &mut t.session;
            let (a, b) = (
                local_instant(zone.as_ref(), from),
                local_instant(zone.as_ref(), to),
            );
            add_interval(&mut s.suspended, s.start, a, b);
            add_interval(&mut s.idle, s.start, a, b);
        }
    }

    /// The user `uid` was idle from `from` to `to` (see [`crate::activity`]): the open
    /// sessions of that account's processes record it, clipped to each session.
    pub fn record_idle(&mut self, uid: u32, from: DateTime<Utc>, to: DateTime<Utc>) {
        let zone = self.zone.clone();
        for t in self.open.values_mut().filter(|t| t.owner == Some(uid)) {
            let s = &mut t.session;
            let (a, b) = (
                local_instant(zone.as_ref(), from),
                local_instant(zone.as_ref(), to),
            );
            add_interval(&mut s.idle, s.start, a, b);
        }
    }

    /// Open sessions, by process.
    pub fn open(&self) -> impl Iterator<Item = &Tracked> {
        self.open.values()
    }

    /// Closed sessions awaiting the collector, and rejected ones.
    pub fn closed(&self) -> impl Iterator<Item = &Tracked> {
        self.closed.values()
    }

    /// Every session the collector still needs: open ones (progress) and closed ones
    /// not yet acknowledged; rejected ones are never resent.
    pub fn to_send(&self) -> Vec<&Tracked> {
        self.open
            .values()
            .chain(self.closed.values())
            .filter(|t| !matches!(t.stage, Stage::Rejected { .. }))
            .collect()
    }

    /// The collector accepted a copy of `id`; `final_copy` says whether that copy carried
    /// the session's end. A final copy's session leaves the book (and must then leave the
    /// journal); an open copy's acceptance only records progress. Returns whether the
    /// session left.
    pub fn accepted(&mut self, id: &str, final_copy: bool) -> bool {
        if !final_copy {
            return false;
        }
        match self.closed.get(id) {
            Some(t) if t.stage == Stage::Closed => {
                self.closed.remove(id);
                true
            }
            _ => false,
        }
    }

    /// The collector refused `id` as `clock_ahead` on `field`, and the meter's offset
    /// is now what it should have been written with. Applies the rule of
    /// [`crate::offset`]: refused on `start`, every instant moves by what its offset
    /// lacks; refused on a later instant, the start stays and instants past `now`
    /// (corrected) come back to it. Returns the session to journal and send again, or
    /// `None` when nothing could be corrected (the offset is not known yet: it is sent
    /// again as it is, and refused until it is).
    pub fn clock_ahead(&mut self, id: &str, field: &str, now: DateTime<Utc>) -> Option<Tracked> {
        let offset = self.offset;
        let at = self.instant(now);
        let zone = self.zone.clone();
        let t = self
            .open
            .values_mut()
            .find(|t| t.session.id == id)
            .or_else(|| self.closed.get_mut(id))?;
        let s = &mut t.session;
        if field == "start" {
            // A session's offset read back from a damaged journal counts as none.
            let by = offset - crate::offset::from_millis(t.clock_offset_ms).unwrap_or_default();
            if by.is_zero() {
                return None;
            }
            let local = |i: Instant| local_instant(zone.as_ref(), i.to_utc() + by);
            s.start = local(s.start);
            s.end = s.end.map(local);
            s.last_seen = s.last_seen.map(local);
            for [from, to] in s.idle.iter_mut().chain(s.suspended.iter_mut()) {
                *from = local(*from);
                *to = local(*to);
            }
            t.clock_offset_ms = offset.num_milliseconds();
        } else {
            let bound = if at > s.start { at } else { s.start };
            let clamp = |i: &mut Instant| {
                if *i > bound {
                    *i = bound;
                }
            };
            let before = s.clone();
            s.end.iter_mut().for_each(clamp);
            s.last_seen.iter_mut().for_each(clamp);
            for [from, to] in s.idle.iter_mut().chain(s.suspended.iter_mut()) {
                clamp(from);
                clamp(to);
            }
            if *s == before {
                return None;
            }
        }
        Some(t.clone())
    }

    /// Drops a rejected session once an admin acknowledged it; `false` when `id` is
    /// not a rejected session.
    pub fn drop_rejected(&mut self, id: &str) -> bool {
        match self.closed.get(id) {
            Some(t) if matches!(t.stage, Stage::Rejected { .. }) => {
                self.closed.remove(id);
                true
            }
            _ => false,
        }
    }

    /// The collector refused `id`: it is kept with the reason and never resent. Returns
    /// the session as it must now be journaled.
    pub fn rejected(&mut self, id: &str, reason: &str) -> Option<Tracked> {
        let t = self
            .open
            .values_mut()
            .find(|t| t.session.id == id)
            .or_else(|| self.closed.get_mut(id))?;
        t.stage = Stage::Rejected {
            reason: reason.to_owned(),
        };
        Some(t.clone())
    }
}

/// Adds `[from, to]` to a sorted list of disjoint intervals, clipped to start at
/// `start` at the earliest, merging what overlaps or touches: the collector refuses
/// intervals outside their session or out of order.
fn add_interval(list: &mut Vec<[Instant; 2]>, start: Instant, from: Instant, to: Instant) {
    let from = if from < start { start } else { from };
    if to <= from {
        return;
    }
    let mut merged = [from, to];
    let mut kept = Vec::with_capacity(list.len() + 1);
    for &[a, b] in list.iter() {
        if b < merged[0] || a > merged[1] {
            kept.push([a, b]);
        } else {
            if a < merged[0] {
                merged[0] = a;
            }
            if b > merged[1] {
                merged[1] = b;
            }
        }
    }
    let at = kept.partition_point(|[a, _]| *a < merged[0]);
    kept.insert(at, merged);
    *list = kept;
}

/// `at`, or the session's `last_seen` if the clock went back behind it: a wall clock
/// set back must not make a session end before it was last seen (or started), which
/// the collector would refuse; the time the clock lost is not metered twice.
fn not_before_last_seen(s: &OwnedSession, at: Instant) -> Instant {
    let floor = s.last_seen.unwrap_or(s.start).max(s.start);
    if at < floor { floor } else { at }
}

fn local_instant(zone: Option<&LocalZone>, at: DateTime<Utc>) -> Instant {
    match zone {
        Some(z) => at.with_timezone(&z.tz).fixed_offset(),
        None => at.fixed_offset(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anyone(_: Option<u32>) -> String {
        "sophie".into()
    }
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, 0).unwrap()
    }

    fn running(pid: u32, product: &str) -> Running {
        Running {
            key: ProcessKey { pid, started: 100 },
            product: product.into(),
            owner: None,
            exe: format!("{product}.exe"),
        }
    }

    #[test]
    fn a_new_process_opens_a_session_in_the_local_zone() {
        let mut m = Meter::new(LocalZone::named("America/New_York"));
        let changes = m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        let [Change::Opened(t)] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!(t.session.product, "acad");
        assert_eq!(t.session.start.to_rfc3339(), "2026-03-02T09:00:00-05:00");
        assert_eq!(t.session.tz.as_deref(), Some("America/New_York"));
        assert_eq!(t.session.end, None);
        assert_eq!(t.stage, Stage::Open);
    }

    #[test]
    fn a_running_process_only_advances_last_seen() {
        let mut m = Meter::new(None);
        m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        assert!(
            m.observe(&[running(7, "acad")], at(14, 1), &mut anyone)
                .is_empty()
        );
        let t = m.open().next().unwrap();
        assert_eq!(t.session.last_seen, Some(at(14, 1).fixed_offset()));
    }

    #[test]
    fn a_gone_process_closes_its_session_at_the_poll_that_missed_it() {
        let mut m = Meter::new(None);
        m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        let changes = m.observe(&[], at(15, 0), &mut anyone);
        let [Change::Closed(t)] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!(t.session.end, Some(at(15, 0).fixed_offset()));
        assert_eq!(t.stage, Stage::Closed);
        assert_eq!(m.to_send().len(), 1);
    }

    #[test]
    fn a_reused_pid_is_a_new_session() {
        let mut m = Meter::new(None);
        m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        let mut again = running(7, "acad");
        again.key.started = 999;
        let changes = m.observe(&[again], at(14, 1), &mut anyone);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(changes[0], Change::Closed(_)));
        assert!(matches!(changes[1], Change::Opened(_)));
    }

    #[test]
    fn restore_adopts_a_live_process_and_closes_a_dead_one_at_last_seen() {
        let mut first = Meter::new(None);
        first.observe(
            &[running(7, "acad"), running(8, "revit")],
            at(14, 0),
            &mut anyone,
        );
        first.observe(
            &[running(7, "acad"), running(8, "revit")],
            at(14, 30),
            &mut anyone,
        );
        let journal: Vec<Tracked> = first.open().cloned().collect();

        let mut m = Meter::new(None);
        let closed = m.restore(journal, |k| k.pid == 7);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].session.product, "revit");
        assert_eq!(closed[0].session.end, Some(at(14, 30).fixed_offset()));
        assert!(
            m.observe(&[running(7, "acad")], at(14, 31), &mut anyone)
                .is_empty()
        );
    }

    #[test]
    fn only_a_final_copy_acknowledgement_removes_a_session() {
        let mut m = Meter::new(None);
        m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        let id = m.open().next().unwrap().session.id.to_string();
        assert!(!m.accepted(&id, false));
        m.observe(&[], at(15, 0), &mut anyone);
        assert!(
            !m.accepted(&id, false),
            "an open copy's ack is progress only"
        );
        assert!(m.accepted(&id, true));
        assert!(m.to_send().is_empty());
    }

    #[test]
    fn a_session_refused_on_its_start_moves_once_by_the_offset_it_lacked() {
        let mut m = Meter::new(LocalZone::named("America/New_York"));
        // Written two days ahead, before any offset was known.
        m.observe(
            &[running(7, "acad")],
            at(14, 0) + TimeDelta::days(2),
            &mut anyone,
        );
        m.observe(&[], at(15, 0) + TimeDelta::days(2), &mut anyone);
        let id = m.closed().next().unwrap().session.id.to_string();
        m.set_offset(TimeDelta::days(-2));
        let t = m.clock_ahead(&id, "start", at(15, 1)).unwrap();
        assert_eq!(t.session.start.to_rfc3339(), "2026-03-02T09:00:00-05:00");
        assert_eq!(t.session.end, Some(at(15, 0).fixed_offset()));
        assert_eq!(t.clock_offset_ms, TimeDelta::days(-2).num_milliseconds());
        assert_eq!(t.stage, Stage::Closed, "still to be sent");
        assert!(
            m.clock_ahead(&id, "start", at(15, 2)).is_none(),
            "moved once, never twice"
        );
    }

    #[test]
    fn a_session_refused_on_a_later_instant_keeps_its_start() {
        let mut m = Meter::new(None);
        m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        // The device clock jumps two days ahead before the product ends.
        m.observe(&[], at(15, 0) + TimeDelta::days(2), &mut anyone);
        let id = m.closed().next().unwrap().session.id.to_string();
        m.set_offset(TimeDelta::days(-2));
        let t = m.clock_ahead(&id, "end", at(15, 1)).unwrap();
        assert_eq!(t.session.start, at(14, 0).fixed_offset());
        assert_eq!(t.session.end, Some(at(15, 1).fixed_offset()));
        assert_eq!(t.session.last_seen, Some(at(15, 1).fixed_offset()));
    }

    #[test]
    fn a_rejected_session_is_kept_but_never_resent() {
        let mut m = Meter::new(None);
        m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        m.observe(&[], at(15, 0), &mut anyone);
        let id = m.closed().next().unwrap().session.id.to_string();
        let t = m.rejected(&id, "conflicting copy").unwrap();
        assert!(matches!(t.stage, Stage::Rejected { .. }));
        assert!(m.to_send().is_empty());
        assert_eq!(m.closed().count(), 1);
    }

    #[test]
    fn a_clock_set_back_never_moves_last_seen_or_the_end_back() {
        let mut m = Meter::new(None);
        m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        m.observe(&[running(7, "acad")], at(14, 30), &mut anyone);
        m.observe(&[running(7, "acad")], at(13, 0), &mut anyone);
        let t = m.open().next().unwrap();
        assert_eq!(t.session.last_seen, Some(at(14, 30).fixed_offset()));
        let changes = m.observe(&[], at(13, 5), &mut anyone);
        let [Change::Closed(t)] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!(t.session.end, Some(at(14, 30).fixed_offset()));
    }

    #[test]
    fn a_sleep_is_recorded_as_suspended_and_folded_into_idle_clipped_to_the_session() {
        let mut m = Meter::new(None);
        m.observe(&[running(7, "acad")], at(14, 0), &mut anyone);
        m.record_sleep(at(13, 0), at(15, 0));
        m.record_sleep(at(16, 0), at(17, 0));
        let s = &m.open().next().unwrap().session;
        let want = vec![
            [at(14, 0).fixed_offset(), at(15, 0).fixed_offset()],
            [at(16, 0).fixed_offset(), at(17, 0).fixed_offset()],
        ];
        assert_eq!(s.suspended, want);
        assert_eq!(s.idle, want);
    }

    #[test]
    fn idle_intervals_merge_when_they_overlap_or_touch_and_stay_in_order() {
        let mut m = Meter::new(None);
        let mut r = running(7, "acad");
        r.owner = Some(1000);
        m.observe(&[r], at(9, 0), &mut anyone);
        m.record_idle(1000, at(12, 0), at(12, 30));
        m.record_idle(1000, at(10, 0), at(10, 30));
        m.record_idle(1000, at(12, 15), at(12, 45));
        m.record_idle(1000, at(12, 45), at(13, 0));
        m.record_idle(1001, at(14, 0), at(15, 0));
        let s = &m.open().next().unwrap().session;
        assert_eq!(
            s.idle,
            vec![
                [at(10, 0).fixed_offset(), at(10, 30).fixed_offset()],
                [at(12, 0).fixed_offset(), at(13, 0).fixed_offset()],
            ],
            "another account's idleness is not this session's"
        );
    }
}
