//! Properties of the accounting over generated scenarios (spec/accounting.md).
//!
//! A scenario is a few users, three products (one free), sessions with random starts over
//! ten days around a daylight-saving switch or a leap day, lengths from 0 to three days,
//! some still open (`last_seen` instead of `end`), random zones (including half-hour and
//! Lord Howe's half-hour DST) or none, random idle intervals, random entitlements and a
//! random policy. Scenarios are built as JSON and run through
//! `daymeter_shared::scenario::replay`, as the replay command does.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use daymeter_shared::entitlement::Plan;
use daymeter_shared::scenario::replay;
use daymeter_shared::usage::{Report, UsageDay};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};

const USERS: &[&str] = &["ana", "ben", "cleo"];
const PRODUCTS: &[(&str, u64)] = &[("acad", 7), ("revit", 10), ("connector", 0)];
const DEVICES: &[&str] = &["ws-1", "laptop"];
/// IANA zones; a session's `tz` is one of these or absent (index `ZONES.len()`).
const ZONES: &[&str] = &[
    "Asia/Kolkata",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
];
/// Offsets written in `start` for sessions without `tz` (seconds east of UTC).
const FIXED: &[i32] = &[
    0,
    -5 * 3600,
    5 * 3600 + 45 * 60,
    9 * 3600,
    -(3 * 3600 + 1800),
];
/// Starts of the ten days the sessions start in: New York's and Berlin's and Lord Howe's
/// DST switches, Berlin's and New York's return to standard time, a leap day.
const BASES: &[&str] = &[
    "2026-03-03T00:00:00Z",
    "2026-03-27T00:00:00Z",
    "2026-10-22T00:00:00Z",
    "2028-02-24T00:00:00Z",
];
const WINDOWS: &[(&str, i64)] = &[("24h", 86_400), ("12h", 43_200)];
const MIN_SESSIONS: &[(&str, i64)] = &[("5m", 300), ("30m", 1800)];
const DAY: i64 = 86_400;

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

#[derive(Debug, Clone)]
struct Sess {
    user: usize,
    product: usize,
    device: usize,
    /// Seconds after the base instant.
    start: i64,
    /// Seconds from start to the effective end.
    len: i64,
    open: bool,
    /// Index into `ZONES`, or `ZONES.len()` for no `tz`.
    tz: usize,
    fixed: usize,
    /// Idle intervals as per-mille positions inside the session.
    idle: Vec<(u16, u16)>,
}

#[derive(Debug, Clone)]
struct Ent {
    user: usize,
    product: usize,
    plan: Plan,
    /// Seconds after the base instant.
    from: Option<i64>,
    to: Option<i64>,
}

#[derive(Debug, Clone)]
struct Pol {
    active: bool,
    count_free: bool,
    utc: bool,
    window: usize,
    min_session: usize,
}

#[derive(Debug, Clone)]
struct World {
    base: usize,
    policy: Pol,
    entitlements: Vec<Ent>,
    sessions: Vec<Sess>,
}

// ---------------------------------------------------------------- generation

fn pol() -> impl Strategy<Value = Pol> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![3 => Just(0usize), 1 => Just(1usize)],
        prop_oneof![3 => Just(0usize), 1 => Just(1usize)],
    )
        .prop_map(|(active, count_free, utc, window, min_session)| Pol {
            active,
            count_free,
            utc,
            window,
            min_session,
        })
}

fn length() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => 0i64..=600,
        1 => (0i64..=72).prop_map(|h| h * 3600),
        3 => 0i64..=3 * DAY,
    ]
}

fn start() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => (0i64..240).prop_map(|h| h * 3600),
        3 => (0i64..14_400).prop_map(|m| m * 60),
        1 => 0i64..10 * DAY,
    ]
}

fn sess_with(len: impl Strategy<Value = i64>) -> impl Strategy<Value = Sess> {
    (
        (0..USERS.len(), 0..PRODUCTS.len(), 0..DEVICES.len()),
        start(),
        len,
        prop::bool::weighted(0.3),
        (0..=ZONES.len(), 0..FIXED.len()),
        prop::collection::vec((0u16..=1000, 0u16..=1000), 0..3),
    )
        .prop_map(
            |((user, product, device), start, len, open, (tz, fixed), idle)| Sess {
                user,
                product,
                device,
                start,
                len,
                open,
                tz,
                fixed,
                idle: idle
                    .into_iter()
                    .map(|(a, b)| (a.min(b), a.max(b)))
                    .collect(),
            },
        )
}

fn ent() -> impl Strategy<Value = Ent> {
    (
        0..USERS.len(),
        0..PRODUCTS.len(),
        prop_oneof![Just(Plan::Subscription), Just(Plan::Free), Just(Plan::Flex)],
        prop::option::of(0i64..12 * DAY),
        prop::option::of(0i64..12 * DAY),
    )
        .prop_map(|(user, product, plan, from, to)| {
            let (from, to) = match (from, to) {
                (Some(f), Some(t)) => (Some(f.min(t)), Some(f.max(t))),
                other => other,
            };
            Ent {
                user,
                product,
                plan,
                from,
                to,
            }
        })
}

fn world() -> impl Strategy<Value = World> {
    (
        0..BASES.len(),
        pol(),
        prop::collection::vec(ent(), 0..3),
        prop::collection::vec(sess_with(length()), 1..12),
    )
        .prop_map(|(base, policy, entitlements, sessions)| World {
            base,
            policy,
            entitlements,
            sessions,
        })
}

// ---------------------------------------------------------------- building JSON

fn base(w: &World) -> i64 {
    DateTime::parse_from_rfc3339(BASES[w.base])
        .unwrap()
        .timestamp()
}

/// `secs` (Unix seconds) written in the session's zone, or its fixed offset.
fn instant(s: &Sess, secs: i64) -> String {
    let utc = DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap()
        .naive_utc();
    match ZONES.get(s.tz) {
        Some(name) => {
            let tz: Tz = name.parse().unwrap();
            tz.from_utc_datetime(&utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        }
        None => FixedOffset::east_opt(FIXED[s.fixed])
            .unwrap()
            .from_utc_datetime(&utc)
            .to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

fn utc_text(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Idle intervals of a session as Unix seconds, clipped to `[start, until]`.
fn idle_secs(w: &World, s: &Sess, until: i64) -> Vec<(i64, i64)> {
    let start = base(w) + s.start;
    s.idle
        .iter()
        .map(|&(a, b)| {
            (
                start + s.len * i64::from(a) / 1000,
                start + s.len * i64::from(b) / 1000,
            )
        })
        .filter(|&(a, _)| a <= until)
        .map(|(a, b)| (a, b.min(until)))
        .collect()
}

/// One copy of session `i`: closed (or open, as generated) with its whole length, or,
/// with `seen = Some(secs)`, an open copy last seen at that instant.
fn session_json(w: &World, i: usize, seen: Option<i64>) -> Value {
    let s = &w.sessions[i];
    let start = base(w) + s.start;
    let end = start + s.len;
    let mut v = json!({
        "id": format!("s{i}"),
        "user": USERS[s.user],
        "device": DEVICES[s.device],
        "product": PRODUCTS[s.product].0,
        "start": instant(s, start),
    });
    let bound = match seen {
        Some(t) => {
            v["end"] = Value::Null;
            v["last_seen"] = json!(instant(s, t));
            t
        }
        None if s.open => {
            v["end"] = Value::Null;
            v["last_seen"] = json!(instant(s, end));
            end
        }
        None => {
            v["end"] = json!(instant(s, end));
            end
        }
    };
    if let Some(name) = ZONES.get(s.tz) {
        v["tz"] = json!(name);
    }
    let idle = idle_secs(w, s, bound);
    if !idle.is_empty() {
        v["idle"] = idle
            .iter()
            .map(|&(a, b)| json!([instant(s, a), instant(s, b)]))
            .collect();
    }
    v
}

fn policy_json(p: &Pol) -> Value {
    json!({
        "window": WINDOWS[p.window].0,
        "min_session": MIN_SESSIONS[p.min_session].0,
        "rollover": if p.active { "active" } else { "open" },
        "short_sessions": if p.count_free { "count_free" } else { "ignore" },
        "day_basis": if p.utc { "utc" } else { "local" },
    })
}

fn scenario(w: &World, sessions: Vec<Value>) -> Value {
    let catalog: serde_json::Map<String, Value> = PRODUCTS
        .iter()
        .map(|(p, rate)| ((*p).to_owned(), json!({ "tokens_per_day": rate })))
        .collect();
    let entitlements: Vec<Value> = w
        .entitlements
        .iter()
        .map(|e| {
            let mut v = json!({
                "user": USERS[e.user],
                "product": PRODUCTS[e.product].0,
                "plan": e.plan.as_str(),
            });
            if let Some(f) = e.from {
                v["from"] = json!(utc_text(base(w) + f));
            }
            if let Some(t) = e.to {
                v["to"] = json!(utc_text(base(w) + t));
            }
            v
        })
        .collect();
    json!({
        "policy": policy_json(&w.policy),
        "catalog": catalog,
        "entitlements": entitlements,
        "sessions": sessions,
    })
}

fn all_sessions(w: &World) -> Vec<Value> {
    (0..w.sessions.len())
        .map(|i| session_json(w, i, None))
        .collect()
}

fn run(doc: &Value) -> Report<'static> {
    let bytes = serde_json::to_vec(doc).unwrap();
    match replay(&bytes) {
        Ok(r) => r,
        Err(e) => panic!("generated scenario refused: {e}\n{doc:#}"),
    }
}

/// A deterministic Fisher–Yates shuffle driven by `seed` (xorshift).
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    seed |= 1;
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config())]

    /// (a) The result does not depend on the order in which sessions arrive.
    #[test]
    fn result_does_not_depend_on_session_order(w in world(), seed in any::<u64>()) {
        let sessions = all_sessions(&w);
        let expected = run(&scenario(&w, sessions.clone()));
        let mut shuffled = sessions;
        shuffle(&mut shuffled, seed);
        prop_assert_eq!(run(&scenario(&w, shuffled)), expected);
    }

    /// (b) Sending every session twice changes nothing.
    #[test]
    fn duplicate_records_change_nothing(w in world(), seed in any::<u64>()) {
        let sessions = all_sessions(&w);
        let expected = run(&scenario(&w, sessions.clone()));
        let mut twice: Vec<Value> = sessions.iter().chain(&sessions).cloned().collect();
        prop_assert_eq!(run(&scenario(&w, twice.clone())), expected.clone());
        shuffle(&mut twice, seed);
        prop_assert_eq!(run(&scenario(&w, twice)), expected);
    }

    /// (c) A session first reported open (last seen before its end) and later closed
    /// gives, in any order in the file, the result of the closed copy alone.
    #[test]
    fn open_copies_then_closed_copy_equal_closed_copy_alone(
        w in world(),
        seen in prop::collection::vec((0u16..1000, 0u16..1000), 12),
        seed in any::<u64>(),
    ) {
        let mut w = w;
        for s in &mut w.sessions {
            s.open = false;
        }
        let closed = all_sessions(&w);
        let expected = run(&scenario(&w, closed.clone()));
        let mut copies = closed;
        for (i, s) in w.sessions.iter().enumerate() {
            let start = base(&w) + s.start;
            // One or two open copies, last seen strictly before the end (or at it, for a
            // session of length 0: a tie the closed copy wins).
            for &p in [seen[i].0, seen[i].1].iter().take(1 + usize::from(seen[i].1 % 2 == 0)) {
                let t = start + s.len * i64::from(p) / 1000;
                prop_assert!(t < start + s.len || s.len == 0);
                copies.push(session_json(&w, i, Some(t)));
            }
            // And an open copy last seen at the very end, idle from a point on (its idle
            // interval still running): a tie on the effective end, which the closed copy
            // wins.
            let end = start + s.len;
            let mut tie = session_json(&w, i, Some(end));
            let from = start + s.len * i64::from(seen[i].0) / 1000;
            let mut idle = tie["idle"].as_array().cloned().unwrap_or_default();
            idle.push(json!([instant(s, from), instant(s, end)]));
            tie["idle"] = Value::Array(idle);
            copies.push(tie);
        }
        let in_order = run(&scenario(&w, copies.clone()));
        prop_assert_eq!(&in_order, &expected);
        copies.reverse();
        prop_assert_eq!(run(&scenario(&w, copies.clone())), expected.clone());
        shuffle(&mut copies, seed);
        prop_assert_eq!(run(&scenario(&w, copies)), expected);
    }

    /// (d) Sanity: rows sorted; charged windows of one key never overlap and open where a
    /// long session of the key is open (and, under `rollover = active`, past a window end,
    /// not idle); each row is priced by its plan and dated by the right zone; short rows
    /// only under `count_free`; totals add up.
    #[test]
    fn invariants_hold(w in world()) {
        let report = run(&scenario(&w, all_sessions(&w)));
        check_invariants(&w, &report)?;
    }

    /// (e) A session shorter than `min_session`, alone, charges nothing (and under
    /// `count_free` is one 0-token row spanning the session).
    #[test]
    fn lone_short_session_is_not_charged(
        s in sess_with(0i64..1800),
        base in 0..BASES.len(),
        policy in pol(),
    ) {
        let min = MIN_SESSIONS[policy.min_session].1;
        prop_assume!(s.len < min);
        let w = World { base, policy, entitlements: Vec::new(), sessions: vec![s] };
        let report = run(&scenario(&w, all_sessions(&w)));
        prop_assert!(report.usage_days.iter().all(|r| r.tokens == 0), "{:?}", report);
        prop_assert_eq!(report.totals.tokens, 0);
        if w.policy.count_free {
            prop_assert_eq!(report.usage_days.len(), 1);
            let row = &report.usage_days[0];
            let start = self::base(&w) + w.sessions[0].start;
            prop_assert_eq!(row.window_start.timestamp(), start);
            prop_assert_eq!(row.window_end.timestamp(), start + w.sessions[0].len);
            prop_assert_eq!(report.totals.days_used, 1);
        } else {
            prop_assert!(report.usage_days.is_empty(), "{:?}", report);
            prop_assert_eq!(report.totals.days_used, 0);
        }
    }

    /// Keys are independent: each user's rows are what that user's sessions give alone.
    #[test]
    fn users_are_accounted_independently(w in world()) {
        let whole = run(&scenario(&w, all_sessions(&w)));
        let mut rows = Vec::new();
        for u in 0..USERS.len() {
            let alone: Vec<Value> = (0..w.sessions.len())
                .filter(|&i| w.sessions[i].user == u)
                .map(|i| session_json(&w, i, None))
                .collect();
            rows.extend(run(&scenario(&w, alone)).usage_days);
        }
        prop_assert_eq!(whole.usage_days, rows);
    }

    /// `short_sessions = count_free` only adds 0-token rows: the charged rows are those
    /// of `ignore` (short sessions are split off before the walk).
    #[test]
    fn count_free_only_adds_free_rows(w in world()) {
        let mut ignore = w.clone();
        ignore.policy.count_free = false;
        let mut free = w;
        free.policy.count_free = true;
        let a = run(&scenario(&ignore, all_sessions(&ignore)));
        let b = run(&scenario(&free, all_sessions(&free)));
        let window = WINDOWS[free.policy.window].1;
        let charged: Vec<_> = b
            .usage_days
            .iter()
            .filter(|r| (r.window_end - r.window_start).num_seconds() == window)
            .cloned()
            .collect();
        prop_assert_eq!(&charged, &a.usage_days);
        prop_assert_eq!(a.totals.tokens, b.totals.tokens);
        prop_assert!(b.usage_days.len() >= a.usage_days.len());
    }

    /// `day_basis` changes the `day` column only.
    #[test]
    fn day_basis_only_changes_the_day(w in world()) {
        let mut local = w.clone();
        local.policy.utc = false;
        let mut utc = w;
        utc.policy.utc = true;
        let a = run(&scenario(&local, all_sessions(&local)));
        let b = run(&scenario(&utc, all_sessions(&utc)));
        let strip = |r: &Report<'_>| -> Vec<(String, String, i64, i64, Plan, u64)> {
            r.usage_days
                .iter()
                .map(|d| (
                    d.user.to_string(),
                    d.product.to_string(),
                    d.window_start.timestamp(),
                    d.window_end.timestamp(),
                    d.plan,
                    d.tokens,
                ))
                .collect()
        };
        prop_assert_eq!(strip(&a), strip(&b));
        for d in &b.usage_days {
            prop_assert_eq!(d.day, d.window_start.date_naive());
        }
    }
}

// ---------------------------------------------------------------- invariant checks

/// A session as the checks see it: Unix seconds, its zone, idle intervals.
struct Seen {
    id: String,
    start: i64,
    end: i64,
    tz: Option<Tz>,
    offset: FixedOffset,
    idle: Vec<(i64, i64)>,
}

impl Seen {
    fn local_date(&self, secs: i64) -> NaiveDate {
        let utc = DateTime::<Utc>::from_timestamp(secs, 0)
            .unwrap()
            .naive_utc();
        match self.tz {
            Some(tz) => tz.from_utc_datetime(&utc).date_naive(),
            None => self.offset.from_utc_datetime(&utc).date_naive(),
        }
    }
}

fn plan_at(w: &World, user: usize, product: usize, t: i64) -> Plan {
    let active = |plan: Plan| {
        w.entitlements.iter().any(|e| {
            e.user == user
                && e.product == product
                && e.plan == plan
                && e.from.is_none_or(|f| base(w) + f <= t)
                && e.to.is_none_or(|to| t < base(w) + to)
        })
    };
    if active(Plan::Subscription) {
        Plan::Subscription
    } else if PRODUCTS[product].1 == 0 || active(Plan::Free) {
        Plan::Free
    } else {
        Plan::Flex
    }
}

fn check_invariants(w: &World, report: &Report<'_>) -> Result<(), TestCaseError> {
    let window = WINDOWS[w.policy.window].1;
    let min = MIN_SESSIONS[w.policy.min_session].1;
    let rows = &report.usage_days;

    // Sorted by user, product, window start.
    let keys: Vec<_> = rows
        .iter()
        .map(|r| (r.user.to_string(), r.product.to_string(), r.window_start))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    prop_assert_eq!(&keys, &sorted, "rows are not sorted");

    // Totals.
    prop_assert_eq!(
        report.totals.tokens,
        rows.iter().map(|r| r.tokens).sum::<u64>()
    );
    let days: BTreeSet<_> = rows.iter().map(|r| (&r.user, &r.product, r.day)).collect();
    prop_assert_eq!(report.totals.days_used, days.len() as u64);

    // Per key.
    let mut by_key: BTreeMap<(usize, usize), Vec<&UsageDay<'_>>> = BTreeMap::new();
    for r in rows {
        let u = USERS.iter().position(|x| *x == r.user).expect("known user");
        let p = PRODUCTS
            .iter()
            .position(|x| x.0 == r.product)
            .expect("known product");
        by_key.entry((u, p)).or_default().push(r);
    }
    for ((u, p), rows) in by_key {
        let sessions: Vec<Seen> = w
            .sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.user == u && s.product == p)
            .map(|(i, s)| {
                let start = base(w) + s.start;
                Seen {
                    id: format!("s{i}"),
                    start,
                    end: start + s.len,
                    tz: ZONES.get(s.tz).map(|n| n.parse().unwrap()),
                    offset: FixedOffset::east_opt(FIXED[s.fixed]).unwrap(),
                    idle: idle_secs(w, s, start + s.len),
                }
            })
            .collect();
        let long: Vec<&Seen> = sessions.iter().filter(|s| s.end - s.start >= min).collect();
        let mut last_end = i64::MIN;
        for r in rows {
            let ws = r.window_start.timestamp();
            let we = r.window_end.timestamp();
            prop_assert_eq!(plan_at(w, u, p, ws), r.plan, "plan of {:?}", r);
            if we - ws == window {
                // A charged window.
                prop_assert!(ws >= last_end, "charged windows overlap at {:?}", r);
                last_end = we;
                let expected_tokens = if r.plan == Plan::Flex {
                    PRODUCTS[p].1
                } else {
                    0
                };
                prop_assert_eq!(r.tokens, expected_tokens, "tokens of {:?}", r);
                if r.plan == Plan::Flex {
                    prop_assert!(PRODUCTS[p].1 > 0);
                }
                let open: Vec<&&Seen> = long
                    .iter()
                    .filter(|s| s.start <= ws && ws < s.end)
                    .collect();
                prop_assert!(!open.is_empty(), "no long session open at {:?}", r);
                let opener = open
                    .iter()
                    .min_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)))
                    .unwrap();
                if w.policy.utc {
                    prop_assert_eq!(r.day, r.window_start.date_naive());
                } else {
                    prop_assert_eq!(r.day, opener.local_date(ws), "day of {:?}", r);
                }
                let launched = long.iter().any(|s| s.start == ws);
                if w.policy.active && !launched {
                    let in_use = open
                        .iter()
                        .any(|s| !s.idle.iter().any(|&(a, b)| a <= ws && ws < b));
                    prop_assert!(in_use, "rollover window opened while idle: {:?}", r);
                }
            } else {
                // A short session's free row.
                prop_assert!(w.policy.count_free, "short row without count_free: {:?}", r);
                prop_assert_eq!(r.tokens, 0);
                let own = sessions.iter().any(|s| {
                    s.start == ws
                        && s.end == we
                        && s.end - s.start < min
                        && (w.policy.utc || s.local_date(ws) == r.day)
                });
                prop_assert!(
                    own,
                    "short row matches no short session (or its day): {:?}",
                    r
                );
                if w.policy.utc {
                    prop_assert_eq!(r.day, r.window_start.date_naive());
                }
            }
        }
    }
    Ok(())
}

proptest! {
    /// Sessions are stored as their serde JSON: the hand-written instant text must be
    /// exactly chrono's, whatever the fraction and offset.
    #[test]
    fn instants_are_written_as_chrono_writes_them(
        secs in -62_000_000_000i64..260_000_000_000,
        nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|m| m * 1_000_000), (0u32..1_000_000).prop_map(|u| u * 1000), 0u32..1_000_000_000],
        offset_minutes in -18 * 60 + 1..18 * 60i32,
        offset_seconds in prop_oneof![9 => Just(0i32), 1 => 1..59i32],
    ) {
        let offset = FixedOffset::east_opt(offset_minutes * 60 + offset_seconds.min(59) * offset_minutes.signum().max(1)).unwrap();
        let instant = DateTime::from_timestamp(secs, nanos).unwrap().with_timezone(&offset);
        let ours = daymeter_shared::time::with_instant_text(&instant, str::to_owned);
        let theirs = serde_json::to_value(instant).unwrap();
        prop_assert_eq!(Some(ours.as_str()), theirs.as_str());
    }
}
