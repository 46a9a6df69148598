//! The conformance suite: what every [`Store`] must do, whatever holds its data —
//! replay equality under any batch order, copies and restarts; imports ordered with the
//! syncs queued beside them; the ledger holding exactly the usage days; a failing write
//! failing alone; last sync to the minute; mail schedules limited per recipient and kept
//! with their next send and low-balance readings; report totals that follow the days.
//!
//! A backend runs it by giving a [`Harness`] (how to make, reopen and discard one of its
//! stores) to [`conformance_suite!`] in its tests, which instantiates every test below
//! for it: SQLite does so in `sqlite/tests.rs`; PostgreSQL will do the same. What only
//! one backend has (SQLite's batches, runs, migrations, repair) stays in its own tests.

use chrono::{Datelike, NaiveDate, Utc};
use daymeter_shared::catalog::Product;
use daymeter_shared::policy::{Policy, Rollover, ShortSessions};
use daymeter_shared::session::{OwnedSession, RawSession};
use daymeter_shared::time::{Zone, ZoneCache};
use daymeter_shared::usage::UsageDay;

use super::{Device, Ingest, MailSchedule, SessionFilter, Settings, Store};
use crate::mail::kinds::{Export, Kind};
use crate::mail::schedule::{Every, MAX_PER_RECIPIENT};

/// How the suite gets stores of one backend.
pub(crate) trait Harness {
    type Store: Store;
    /// A store over a new, empty database; `name` tells the tests' databases apart.
    fn fresh(&self, name: &str) -> Self::Store;
    /// `store` closed (everything it acknowledged durable) and its database opened again.
    fn reopen(&self, store: Self::Store) -> Self::Store;
    /// `store` closed and its database removed.
    fn discard(&self, store: Self::Store);
}

/// Instantiates every conformance test as a `#[tokio::test]` of the calling module,
/// over the stores `$harness` (an expression of a [`Harness`] type) makes.
macro_rules! conformance_suite {
    ($harness:expr) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn settings_survive_a_reopen_and_price_the_ingests_queued_after_them() {
            $crate::store::conformance::settings_survive_a_reopen_and_price_the_ingests_queued_after_them(&$harness).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn last_sync_is_recorded_to_the_minute() {
            $crate::store::conformance::last_sync_is_recorded_to_the_minute(&$harness).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn a_failing_write_fails_alone_in_its_group() {
            $crate::store::conformance::a_failing_write_fails_alone_in_its_group(&$harness).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn bounded_recomputation_equals_replay_whatever_the_batch_order() {
            $crate::store::conformance::bounded_recomputation_equals_replay_whatever_the_batch_order(&$harness).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn at_most_five_mail_schedules_per_recipient_even_when_asked_at_once() {
            $crate::store::conformance::at_most_five_mail_schedules_per_recipient_even_when_asked_at_once(&$harness).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn mail_schedules_next_runs_and_low_balance_readings_survive_a_reopen() {
            $crate::store::conformance::mail_schedules_next_runs_and_low_balance_readings_survive_a_reopen(&$harness).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn report_totals_stay_exact_under_late_sessions_a_reprice_and_a_restart() {
            $crate::store::conformance::report_totals_stay_exact_under_late_sessions_a_reprice_and_a_restart(&$harness).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn tails_and_the_id_index_equal_replay_across_shuffles_copies_and_a_restart() {
            $crate::store::conformance::tails_and_the_id_index_equal_replay_across_shuffles_copies_and_a_restart(&$harness).await
        }
    };
}
pub(crate) use conformance_suite;

pub(crate) fn session(id: &str, start: &str, end: &str) -> OwnedSession {
    let text = serde_json::json!({
        "id": id, "product": "acad", "start": start, "end": end, "tz": "Europe/Berlin"
    })
    .to_string();
    let raw: RawSession<'_> = serde_json::from_str(&text).unwrap();
    let (mut s, _) = raw.check(&mut ZoneCache::new()).unwrap();
    s.user = Some("sophie".into());
    s.device = Some("ws-1".into());
    s.into_owned()
}

/// Sophie's sessions on ws-1, synced now.
pub(crate) fn ingest_of(sessions: &[OwnedSession]) -> Ingest {
    let with_zones = sessions.iter().map(|s| {
        let zone = Zone::of(s.tz.as_deref(), &s.start).unwrap();
        (s.clone(), zone)
    });
    Ingest::new("sophie".into(), "ws-1".into(), with_zones, Utc::now()).unwrap()
}

pub(crate) fn settings(policy: Policy) -> Settings {
    let mut s = Settings {
        policy,
        ..Settings::default()
    };
    s.catalog.insert(
        "acad".into(),
        Product {
            name: None,
            tokens_per_day: 7,
            matches: vec![],
            rate_confirmed: None,
        },
    );
    s
}

/// What `replay` says for the same sessions.
pub(crate) fn replayed(sessions: &[OwnedSession], settings: &Settings) -> Vec<UsageDay<'static>> {
    let scenario = serde_json::json!({
        "policy": settings.policy, "catalog": settings.catalog, "sessions": sessions,
    });
    daymeter_shared::scenario::replay(scenario.to_string().as_bytes())
        .unwrap()
        .usage_days
}

/// A year of sessions, some over night, some short, sent in batches in an order
/// that exercises resuming: forward, then a late batch from the past.
pub(crate) fn history() -> Vec<OwnedSession> {
    let mut out = Vec::new();
    for day in 1..=60 {
        let d = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(day);
        let at = |h: u32, m: u32| format!("{d}T{h:02}:{m:02}:00+01:00");
        out.push(session(&format!("a{day}"), &at(9, 0), &at(12, 0)));
        out.push(session(&format!("s{day}"), &at(13, 0), &at(13, 3)));
        if day % 7 == 0 {
            let next = d + chrono::Days::new(2);
            out.push(session(
                &format!("n{day}"),
                &at(17, 0),
                &format!("{next}T08:10:00+01:00"),
            ));
        }
    }
    out
}

/// `session` still running halfway through: no end, last seen then.
pub(crate) fn running(s: &OwnedSession) -> OwnedSession {
    let mut open = s.clone();
    let end = s.end.unwrap();
    open.end = None;
    open.last_seen = Some(s.start + (end - s.start) / 2);
    open
}

pub(crate) async fn settings_survive_a_reopen_and_price_the_ingests_queued_after_them<
    H: Harness,
>(
    h: &H,
) {
    let store = h.fresh("settings");
    let mut s = settings(Policy::default());
    s.teams.insert(
        "design".into(),
        daymeter_shared::ledger::Team {
            users: vec!["sophie".into()],
            low_balance: Some(50),
            ..Default::default()
        },
    );
    store.put_settings(s.clone()).await.unwrap();
    let first = session(
        "p1",
        "2026-02-02T09:00:00+01:00",
        "2026-02-02T12:00:00+01:00",
    );
    let ingest = |sessions: Vec<OwnedSession>| ingest_of(&sessions);
    store.ingest(ingest(vec![first])).await.unwrap();
    // A new rate, then a sync queued right behind it: both days at the new rate.
    let mut repriced = s.clone();
    if let Some(p) = repriced.catalog.get_mut("acad") {
        p.tokens_per_day = 9;
    }
    let second = session(
        "p2",
        "2026-02-04T09:00:00+01:00",
        "2026-02-04T12:00:00+01:00",
    );
    let (a, b) = tokio::join!(
        store.put_settings(repriced.clone()),
        store.ingest(ingest(vec![second]))
    );
    a.unwrap();
    b.unwrap();
    let days = store.usage_days(None, None).await.unwrap();
    assert_eq!(days.len(), 2);
    assert!(days.iter().all(|d| d.tokens == 9), "{days:?}");
    let store = h.reopen(store);
    assert_eq!(store.settings().await.unwrap(), repriced);
    let day = |s: &str| s.parse::<NaiveDate>().ok();
    assert_eq!(
        store
            .usage_days(day("2026-02-03"), None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .usage_days(None, day("2026-02-03"))
            .await
            .unwrap()
            .len(),
        1
    );
    h.discard(store);
}

/// A user's last sync is recorded to the minute: a sync less than a minute after
/// the recorded one leaves it, a later one moves it, also after a restart.
pub(crate) async fn last_sync_is_recorded_to_the_minute<H: Harness>(h: &H) {
    let t0 = Utc::now();
    let at = |secs: i64| t0 + chrono::TimeDelta::seconds(secs);
    let sync = |secs: i64| {
        Ingest::new("sophie".into(), "ws-1".into(), std::iter::empty(), at(secs)).unwrap()
    };
    let mut store = h.fresh("last-sync");
    assert_eq!(store.last_sync("sophie".into()).await.unwrap(), None);
    for (secs, recorded) in [(0, 0), (30, 0), (59, 0), (61, 61), (90, 61)] {
        store.ingest(sync(secs)).await.unwrap();
        assert_eq!(
            store.last_sync("sophie".into()).await.unwrap(),
            Some(at(recorded)),
            "after a sync at +{secs} s"
        );
    }
    store = h.reopen(store);
    for (secs, recorded) in [(100, 61), (125, 125)] {
        store.ingest(sync(secs)).await.unwrap();
        assert_eq!(
            store.last_sync("sophie".into()).await.unwrap(),
            Some(at(recorded)),
            "after a restart and a sync at +{secs} s"
        );
    }
}

pub(crate) async fn a_failing_write_fails_alone_in_its_group<H: Harness>(h: &H) {
    let store = h.fresh("fails-alone");
    store
        .put_settings(settings(Policy::default()))
        .await
        .unwrap();
    let device = |id: &str, hash: u8| Device {
        id: id.into(),
        hostname: id.into(),
        os: "linux".into(),
        agent_version: "0".into(),
        token_hash: [hash; 32],
        enrolled_at: Utc::now(),
        revoked: false,
        last_sync: None,
    };
    store.add_device(device("ws-1", 1)).await.unwrap();
    let monday = session(
        "m1",
        "2026-02-02T09:00:00+01:00",
        "2026-02-02T12:00:00+01:00",
    );
    // Queued together: the duplicate device fails, the others are stored.
    let (dup, synced, other) = tokio::join!(
        store.add_device(device("ws-1", 1)),
        store.ingest(ingest_of(&[monday])),
        store.add_device(device("ws-2", 2)),
    );
    assert!(dup.is_err());
    assert_eq!(synced.unwrap().accepted, vec!["m1".to_string()]);
    other.unwrap();
    let devices = store.devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(store.usage_days(None, None).await.unwrap().len(), 1);
    h.discard(store);
}

pub(crate) async fn bounded_recomputation_equals_replay_whatever_the_batch_order<H: Harness>(
    h: &H,
) {
    for policy in [
        Policy::default(),
        Policy {
            short_sessions: ShortSessions::CountFree,
            ..Policy::default()
        },
        Policy {
            rollover: Rollover::Active,
            ..Policy::default()
        },
    ] {
        let store = h.fresh("bounded");
        let settings = settings(policy);
        store.put_settings(settings.clone()).await.unwrap();
        let all = history();
        // Forward in batches of 5, but the first 20 sessions arrive last (late).
        let (early, late) = all.split_at(20);
        for batch in late.chunks(5).chain(early.chunks(5)) {
            let ingest = ingest_of(batch);
            let outcome = store.ingest(ingest).await.unwrap();
            assert_eq!(outcome.accepted.len(), batch.len());
        }
        let stored = store.usage_days(None, None).await.unwrap();
        assert_eq!(stored, replayed(&all, &settings), "{:?}", settings.policy);
        h.discard(store);
    }
}

/// The writer's tails and id index against `replay`: shuffled batches of many sizes,
/// sessions first reported running and later closed, copies sent twice, and a
/// restart halfway (which empties the tails and rebuilds the index from the table).
pub(crate) async fn tails_and_the_id_index_equal_replay_across_shuffles_copies_and_a_restart<
    H: Harness,
>(
    h: &H,
) {
    let all = history();
    for seed in 1..=4u64 {
        let name = format!("tails-{seed}");
        let settings = settings(Policy::default());
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // Mostly forward, with some sessions moved later, and a running copy of every
        // fifth session sent somewhat before the closed one.
        let mut sends: Vec<(u64, OwnedSession)> = Vec::new();
        for (i, s) in all.iter().enumerate() {
            let at = i as u64 * 10 + if next(6) == 0 { next(400) } else { 0 };
            if i % 5 == 0 {
                sends.push((at.saturating_sub(15), running(s)));
            }
            sends.push((at, s.clone()));
            if next(10) == 0 {
                sends.push((at + next(100), s.clone()));
            }
        }
        sends.sort_by_key(|(at, _)| *at);
        let mut store = h.fresh(&name);
        store.put_settings(settings.clone()).await.unwrap();
        let mut sent = 0;
        let half = sends.len() / 2;
        while sent < sends.len() {
            if sent >= half && sent < half + 8 {
                store = h.reopen(store);
                sent = half + 8;
                // The batches that would have gone in between go now.
                let batch: Vec<_> = sends[half..half + 8]
                    .iter()
                    .map(|(_, s)| s.clone())
                    .collect();
                let outcome = store.ingest(ingest_of(&batch)).await.unwrap();
                assert!(outcome.rejected.is_empty(), "{outcome:?}");
                continue;
            }
            let n = (1 + next(8) as usize).min(sends.len() - sent);
            let batch: Vec<_> = sends[sent..sent + n]
                .iter()
                .map(|(_, s)| s.clone())
                .collect();
            let outcome = store.ingest(ingest_of(&batch)).await.unwrap();
            assert!(outcome.rejected.is_empty(), "seed {seed}: {outcome:?}");
            assert_eq!(outcome.accepted.len(), n);
            sent += n;
        }
        let stored = store.usage_days(None, None).await.unwrap();
        assert_eq!(stored, replayed(&all, &settings), "seed {seed}");
        let kept = store.sessions(SessionFilter::default()).await.unwrap();
        assert_eq!(kept.len(), all.len(), "seed {seed}: each id stored once");
        assert!(
            kept.iter().all(|s| s.end.is_some()),
            "seed {seed}: closed copies won"
        );
        assert_totals_follow_the_days(&store, &format!("seed {seed}")).await;
        let charged: i64 = stored.iter().map(|d| d.tokens as i64).sum();
        let booked: i64 = store
            .ledger(None, None, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.tokens)
            .sum();
        assert_eq!(
            booked, charged,
            "seed {seed}: the ledger holds the usage days"
        );
        h.discard(store);
    }
}

/// What the reports' totals must hold, computed here from the days and sessions
/// themselves: each key's months, each product's days, each key's last access, and a
/// page's days and sessions read by user equal to the same read whole.
pub(crate) async fn assert_totals_follow_the_days<S: Store>(store: &S, case: &str) {
    use std::collections::BTreeMap;
    let days = store.usage_days(None, None).await.unwrap();
    let (from, to) = (day("2000-01-01"), day("2100-12-31"));
    let mut want: BTreeMap<(String, String, String), super::tally::Month> = BTreeMap::new();
    let mut by_product: BTreeMap<(NaiveDate, String), (u64, u64)> = BTreeMap::new();
    for d in &days {
        let mut t = super::tally::Tally::default();
        t.count(&d.day.to_string(), d.tokens as i64, 1);
        for (month, m) in t.months {
            want.entry((d.user.to_string(), d.product.to_string(), month))
                .or_default()
                .add(&m);
        }
        let e = by_product
            .entry((d.day, d.product.to_string()))
            .or_default();
        e.0 += d.tokens;
        e.1 += 1;
    }
    let got: BTreeMap<_, _> = store
        .key_months(from, to, None)
        .await
        .unwrap()
        .into_iter()
        .map(|k| {
            (
                (k.user, k.product, super::tally::month_of(k.first)),
                k.month,
            )
        })
        .collect();
    assert_eq!(got, want, "{case}: key months");
    let paged = store
        .key_months(from, to, Some(vec!["sophie".into(), "nobody".into()]))
        .await
        .unwrap();
    assert_eq!(paged.len(), want.len(), "{case}: key months by user");
    let totals = store.key_totals(from, to).await.unwrap();
    let mut summed: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for ((user, product, _), m) in &want {
        let e = summed.entry((user.clone(), product.clone())).or_default();
        e.0 += m.tokens.iter().sum::<i64>() as u64;
        e.1 += m.used_days() as u64;
    }
    let totals: BTreeMap<_, _> = totals
        .into_iter()
        .map(|t| ((t.user, t.product), (t.tokens, t.days_used)))
        .collect();
    assert_eq!(totals, summed, "{case}: key totals");
    // Ranges that cut months, as rolling reports ask, and each month with days whole
    // and cut (the same ranges at every call: a backend that keeps totals between
    // reads must drop them when a month changes): each key's days in the range.
    let mut dates: Vec<NaiveDate> = days.iter().map(|d| d.day).collect();
    dates.sort_unstable();
    dates.dedup();
    let months: std::collections::BTreeSet<NaiveDate> =
        dates.iter().filter_map(|d| d.with_day(1)).collect();
    let mut by_month: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for first in months {
        let next = first + chrono::Months::new(1);
        by_month.push((first, next - chrono::TimeDelta::days(1)));
        by_month.push((
            first + chrono::TimeDelta::days(5),
            first + chrono::TimeDelta::days(19),
        ));
    }
    // The months first and last: the last reads are the ones a backend still keeps at
    // the next call.
    let mut ranges = by_month.clone();
    for (i, &at) in dates.iter().enumerate().step_by(dates.len() / 4 + 1) {
        ranges.push((
            at - chrono::TimeDelta::days(i as i64 % 40),
            at + chrono::TimeDelta::days(17),
        ));
    }
    ranges.extend(by_month);
    for (lo, hi) in ranges {
        let mut want: BTreeMap<(String, String), (u64, std::collections::BTreeSet<NaiveDate>)> =
            BTreeMap::new();
        for d in days.iter().filter(|d| lo <= d.day && d.day <= hi) {
            let e = want
                .entry((d.user.to_string(), d.product.to_string()))
                .or_default();
            e.0 += d.tokens;
            e.1.insert(d.day);
        }
        let want: Vec<_> = want
            .into_iter()
            .map(|((user, product), (tokens, dates))| (user, product, tokens, dates.len() as u64))
            .collect();
        let got: Vec<_> = store
            .key_totals(lo, hi)
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.user, t.product, t.tokens, t.days_used))
            .collect();
        assert_eq!(
            got, want,
            "{case}: key totals from {lo} to {hi}, in key order"
        );
    }
    let products: BTreeMap<_, _> = store
        .product_days(from, to)
        .await
        .unwrap()
        .into_iter()
        .map(|p| ((p.day, p.product), (p.tokens, p.days)))
        .collect();
    assert_eq!(products, by_product, "{case}: product days");
    let settings = store.settings().await.unwrap();
    let teams = crate::reports::Teams::new(&settings.teams);
    let mut by_team: BTreeMap<(String, NaiveDate), (u64, u64)> = BTreeMap::new();
    for d in &days {
        let e = by_team
            .entry((teams.of(&d.user).to_owned(), d.day))
            .or_default();
        e.0 += d.tokens;
        e.1 += 1;
    }
    let got: BTreeMap<_, _> = store
        .team_days(from, to)
        .await
        .unwrap()
        .into_iter()
        .map(|t| ((t.team, t.day), (t.tokens, t.days)))
        .collect();
    assert_eq!(got, by_team, "{case}: team days");
    let sessions = store.sessions(SessionFilter::default()).await.unwrap();
    // Last access is a day: an end on the key's last day of use.
    let last = sessions
        .iter()
        .map(|s| s.effective_end().with_timezone(&Utc).date_naive())
        .max();
    let reaches = store.reaches(None).await.unwrap();
    assert_eq!(
        reaches.iter().map(|r| r.last_end.date_naive()).max(),
        last,
        "{case}: last access"
    );
    assert_eq!(
        store.users_page(None, 10).await.unwrap(),
        if sessions.is_empty() {
            vec![]
        } else {
            vec!["sophie".to_owned()]
        },
        "{case}: users page"
    );
    let mine = store
        .users_days(vec!["sophie".into()], from, to)
        .await
        .unwrap();
    assert_eq!(mine, days, "{case}: a page's days");
    let page = store
        .sessions(SessionFilter {
            users: Some(vec!["sophie".into()]),
            ..SessionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page, sessions, "{case}: a page's sessions");
    assert_waste_follows_the_sessions(store, &days, &sessions, &teams, &ranges_of(&dates), case)
        .await;
    let mut unfunded: BTreeMap<String, i64> = BTreeMap::new();
    for e in store.ledger(None, None, usize::MAX).await.unwrap() {
        if e.purchase.is_none() {
            *unfunded.entry(e.team).or_default() += e.tokens;
        }
    }
    let settings = store.settings().await.unwrap();
    for b in store.balances(Utc::now(), settings).await.unwrap() {
        let want = unfunded.get(&b.team).copied().unwrap_or(0).max(0) as u64;
        assert_eq!(
            b.unfunded, want,
            "{case}: team {}'s unfunded tokens",
            b.team
        );
    }
}

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// April 2026's tokens wasted and what `rollover = active` would have saved.
async fn april_waste<S: Store>(store: &S) -> (u64, u64) {
    let totals = store
        .waste_totals(day("2026-04-01"), day("2026-04-30"), None)
        .await
        .unwrap();
    totals
        .iter()
        .fold((0, 0), |(w, s), t| (w + t.wasted, s + t.saved))
}

/// Whole months and ranges that cut them, over the dates given.
fn ranges_of(dates: &[NaiveDate]) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out = vec![(day("2000-01-01"), day("2100-12-31"))];
    for first in dates
        .iter()
        .filter_map(|d| d.with_day(1))
        .collect::<std::collections::BTreeSet<_>>()
    {
        out.push((
            first,
            first + chrono::Months::new(1) - chrono::TimeDelta::days(1),
        ));
        out.push((
            first + chrono::TimeDelta::days(3),
            first + chrono::TimeDelta::days(16),
        ));
    }
    out
}

/// The waste totals the store keeps against the marks made afresh from every session
/// and day of each key (the settling's marks are made from a tail, a window at a time,
/// and cleared when a later session uses a window marked idle).
async fn assert_waste_follows_the_sessions<S: Store>(
    store: &S,
    days: &[daymeter_shared::usage::UsageDay<'static>],
    sessions: &[OwnedSession],
    teams: &crate::reports::Teams,
    ranges: &[(NaiveDate, NaiveDate)],
    case: &str,
) {
    use std::collections::BTreeMap;
    let min_session = store.settings().await.unwrap().policy.rules().min_session;
    // (day, user, product) → (wasted, saved), from every key's marks made afresh.
    let mut by_day: BTreeMap<(NaiveDate, String, String), (u64, u64)> = BTreeMap::new();
    let mut keys: BTreeMap<(String, String), (Vec<_>, Vec<_>)> = BTreeMap::new();
    for d in days {
        keys.entry((d.user.to_string(), d.product.to_string()))
            .or_default()
            .0
            .push(d.clone());
    }
    for s in sessions {
        let user = s.user.as_deref().unwrap_or_default().to_owned();
        if let Some(k) = keys.get_mut(&(user, s.product.to_string())) {
            k.1.push(s.clone());
        }
    }
    for ((user, product), (mut key_days, key_sessions)) in keys {
        key_days.sort_by_key(|d| d.window_start);
        let w = crate::reports::waste::key_waste(
            &user,
            &product,
            &key_sessions,
            &key_days,
            min_session,
        );
        for idle in &w.idle_windows {
            let rolled = w
                .rollovers
                .iter()
                .any(|r| r.window_start == idle.window_start);
            let e = by_day
                .entry((idle.day, user.clone(), product.clone()))
                .or_default();
            e.0 += idle.tokens;
            e.1 += if rolled { idle.tokens } else { 0 };
        }
    }
    for &(lo, hi) in ranges {
        let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        let mut sophie: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((d, user, product), (wasted, saved)) in
            by_day.range((lo, String::new(), String::new())..)
        {
            if *d > hi {
                break;
            }
            let e = want
                .entry((teams.of(user).to_owned(), product.clone()))
                .or_default();
            e.0 += wasted;
            e.1 += saved;
            if user == "sophie" {
                let e = sophie.entry(product.clone()).or_default();
                e.0 += wasted;
                e.1 += saved;
            }
        }
        let got: BTreeMap<_, _> = store
            .waste_totals(lo, hi, None)
            .await
            .unwrap()
            .into_iter()
            .map(|t| ((t.team, t.product), (t.wasted, t.saved)))
            .collect();
        assert_eq!(got, want, "{case}: waste totals from {lo} to {hi}");
        let got: BTreeMap<_, _> = store
            .waste_totals(lo, hi, Some("sophie".into()))
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.product, (t.wasted, t.saved)))
            .collect();
        assert_eq!(got, sophie, "{case}: sophie's waste from {lo} to {hi}");
    }
}

/// Sophie's acad left open over three April weekends, idle from Friday evening until
/// Monday morning (the Saturday window idle and rolled, the Sunday one rolled and used
/// on Monday); and a Saturday launch left idle at once (an idle window, not rolled).
pub(crate) fn weekends() -> Vec<OwnedSession> {
    let mut out = Vec::new();
    for (fri, mon) in [(3, 6), (10, 13), (17, 20)] {
        let mut s = session(
            &format!("w{fri}"),
            &format!("2026-04-{fri:02}T17:00:00+02:00"),
            &format!("2026-04-{mon:02}T08:10:00+02:00"),
        );
        let idle = |t: String| t.parse::<chrono::DateTime<chrono::FixedOffset>>().unwrap();
        s.idle = vec![[
            idle(format!("2026-04-{fri:02}T17:30:00+02:00")),
            idle(format!("2026-04-{mon:02}T08:00:00+02:00")),
        ]];
        out.push(s);
    }
    let mut sat = session(
        "idle-sat",
        "2026-04-25T10:00:00+02:00",
        "2026-04-25T10:30:00+02:00",
    );
    sat.idle = vec![[sat.start, sat.end.unwrap()]];
    out.push(sat);
    out
}

/// Saturday 25 April's idle window used later that day, in a session synced later.
pub(crate) fn saturday_afternoon() -> OwnedSession {
    session(
        "used-sat",
        "2026-04-25T15:00:00+02:00",
        "2026-04-25T16:00:00+02:00",
    )
}

/// Totals kept by settling equal totals made from the days: late batches, sessions
/// first seen running, a price change that reprices every day, a product dropped from
/// the catalog, and a restart.
pub(crate) async fn report_totals_stay_exact_under_late_sessions_a_reprice_and_a_restart<
    H: Harness,
>(
    h: &H,
) {
    let mut store = h.fresh("totals");
    let mut settings = settings(Policy::default());
    store.put_settings(settings.clone()).await.unwrap();
    assert_totals_follow_the_days(&store, "empty").await;
    let all = history();
    let (early, late) = all.split_at(30);
    for batch in late.chunks(7) {
        let running: Vec<_> = batch.iter().map(running).collect();
        store.ingest(ingest_of(&running)).await.unwrap();
        store.ingest(ingest_of(batch)).await.unwrap();
    }
    assert_totals_follow_the_days(&store, "forward").await;
    for batch in early.chunks(4) {
        store.ingest(ingest_of(batch)).await.unwrap();
    }
    assert_totals_follow_the_days(&store, "late").await;
    settings.catalog.get_mut("acad").unwrap().tokens_per_day = 9;
    store.put_settings(settings.clone()).await.unwrap();
    assert_totals_follow_the_days(&store, "repriced").await;
    settings.teams.insert(
        "civil".into(),
        daymeter_shared::ledger::Team {
            users: vec!["sophie".into()],
            ..Default::default()
        },
    );
    store.put_settings(settings.clone()).await.unwrap();
    assert_totals_follow_the_days(&store, "moved to a team").await;
    let late: Vec<_> = (70..75)
        .map(|d| {
            let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(d);
            session(
                &format!("t{d}"),
                &format!("{day}T09:00:00+01:00"),
                &format!("{day}T10:00:00+01:00"),
            )
        })
        .collect();
    store.ingest(ingest_of(&late)).await.unwrap();
    assert_totals_follow_the_days(&store, "synced in a team").await;
    store.ingest(ingest_of(&weekends())).await.unwrap();
    assert_totals_follow_the_days(&store, "left open over weekends").await;
    // Three idle rolled Saturdays and the idle Saturday launch, at 9 a day (repriced).
    assert_eq!(april_waste(&store).await, (4 * 9, 3 * 9));
    store = h.reopen(store);
    assert_totals_follow_the_days(&store, "reopened").await;
    // After a restart, from a tail read back: the idle launch's window is used now.
    store
        .ingest(ingest_of(&[saturday_afternoon()]))
        .await
        .unwrap();
    assert_totals_follow_the_days(&store, "an idle window used later").await;
    assert_eq!(april_waste(&store).await, (3 * 9, 3 * 9));
    settings.catalog.clear();
    store.put_settings(settings.clone()).await.unwrap();
    assert_totals_follow_the_days(&store, "dropped").await;
    assert!(
        store
            .key_months(day("2000-01-01"), day("2100-12-31"), None)
            .await
            .unwrap()
            .is_empty()
    );
    h.discard(store);
}

/// A weekly token-usage report for `recipient`.
pub(crate) fn mail_schedule(id: &str, recipient: &str) -> MailSchedule {
    let start: chrono::DateTime<Utc> = "2026-12-07T07:00:00Z".parse().unwrap();
    MailSchedule {
        id: id.into(),
        recipient: recipient.into(),
        kind: Kind::Report {
            report: Export::TokenUsage,
            team: Some("civil".into()),
            product: None,
        },
        every: Some(Every::Week),
        start,
        next_run: Some(start),
        created_at: "2026-12-06T10:00:00Z".parse().unwrap(),
    }
}

/// Seven schedules for one recipient asked for at once (two with the address in
/// other case): five are stored, whatever order the writer takes them in; another
/// recipient is not affected.
pub(crate) async fn at_most_five_mail_schedules_per_recipient_even_when_asked_at_once<
    H: Harness,
>(
    h: &H,
) {
    let store = h.fresh("mail-limit");
    let ask = |i: usize| {
        // Two of the seven write the address in other case: the same mailbox.
        let recipient = if i.is_multiple_of(3) {
            "Ana@Firm.example"
        } else {
            "ana@firm.example"
        };
        store.add_mail_schedule(
            mail_schedule(&format!("s{i}"), recipient),
            MAX_PER_RECIPIENT,
        )
    };
    let (a, b, c, d, e, f, g) =
        tokio::join!(ask(0), ask(1), ask(2), ask(3), ask(4), ask(5), ask(6));
    let stored = [a, b, c, d, e, f, g];
    let accepted = stored.iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(accepted, MAX_PER_RECIPIENT);
    assert!(
        store
            .add_mail_schedule(
                mail_schedule("other", "ben@firm.example"),
                MAX_PER_RECIPIENT
            )
            .await
            .unwrap()
    );
    assert_eq!(store.mail_schedules().await.unwrap().len(), 6);
    h.discard(store);
}

pub(crate) async fn mail_schedules_next_runs_and_low_balance_readings_survive_a_reopen<
    H: Harness,
>(
    h: &H,
) {
    let mut store = h.fresh("mail-reopen");
    let report = mail_schedule("r1", "ana@firm.example");
    let alert = MailSchedule {
        id: "a1".into(),
        kind: Kind::LowBalance { team: None },
        every: None,
        next_run: None,
        ..mail_schedule("a1", "ana@firm.example")
    };
    for s in [&report, &alert] {
        assert!(
            store
                .add_mail_schedule(s.clone(), MAX_PER_RECIPIENT)
                .await
                .unwrap()
        );
    }
    let next: chrono::DateTime<Utc> = "2026-12-14T07:00:00Z".parse().unwrap();
    assert!(store.set_mail_next_run("r1".into(), next).await.unwrap());
    assert!(!store.set_mail_next_run("gone".into(), next).await.unwrap());
    store
        .set_low_balance_reading("a1".into(), "civil".into(), 120)
        .await
        .unwrap();
    store
        .set_low_balance_reading("a1".into(), "civil".into(), 90)
        .await
        .unwrap();
    // A reading for a schedule deleted meanwhile is dropped, not an error.
    store
        .set_low_balance_reading("gone".into(), "civil".into(), 90)
        .await
        .unwrap();
    store = h.reopen(store);
    let kept = store.mail_schedules().await.unwrap();
    let expected_report = MailSchedule {
        next_run: Some(next),
        ..report
    };
    assert_eq!(
        kept,
        vec![alert, expected_report],
        "by recipient, creation, id"
    );
    assert_eq!(
        store.low_balance_readings().await.unwrap(),
        vec![("a1".to_owned(), "civil".to_owned(), 90)]
    );
    assert!(store.delete_mail_schedule("a1".into()).await.unwrap());
    assert!(!store.delete_mail_schedule("a1".into()).await.unwrap());
    assert!(store.low_balance_readings().await.unwrap().is_empty());
    h.discard(store);
}
