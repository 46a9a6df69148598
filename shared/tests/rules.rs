//! One test per accounting rule (spec/accounting.md), each on a worked example: the
//! spec's own (`tests/vectors/accounting`) or a hand-worked one (`tests/vectors/extra`,
//! whose expected outputs were derived from the spec text by hand). Each test checks the
//! whole expected report, then states the rule's point on it explicitly, and where the
//! rule is about arrival order, runs the scenario in other orders too.
//!
//! Where the spec is silent and the README records a decision, the test says so.

use std::fs;
use std::path::PathBuf;

use daymeter_shared::scenario::replay;
use serde_json::{Value, json};

fn path(dir: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors")
        .join(dir)
        .join(file)
}

fn load(dir: &str, file: &str) -> Value {
    let p = path(dir, file);
    let bytes = fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The scenario's report as `replay` prints it, parsed back.
fn account(input: &Value) -> Value {
    let bytes = serde_json::to_vec(input).unwrap();
    let report = replay(&bytes).unwrap_or_else(|e| panic!("refused: {e}"));
    let mut out = Vec::new();
    report.write_json(&mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

fn error_of(input: &Value) -> String {
    let bytes = serde_json::to_vec(input).unwrap();
    match replay(&bytes) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e.to_string(),
    }
}

/// Runs vector `dir/name`, asserts the expected report, and returns its input and report.
fn vector(dir: &str, name: &str) -> (Value, Value) {
    let input = load(dir, &format!("{name}.json"));
    let expected = load(dir, &format!("{name}.out.json"));
    let got = account(&input);
    assert_eq!(
        got,
        expected,
        "{dir}/{name}: got\n{}",
        serde_json::to_string_pretty(&got).unwrap()
    );
    (input, got)
}

fn rows(report: &Value) -> &Vec<Value> {
    report["usage_days"].as_array().unwrap()
}

fn rows_of<'r>(report: &'r Value, user: &str) -> Vec<&'r Value> {
    rows(report).iter().filter(|r| r["user"] == user).collect()
}

fn field<'r>(rows: &[&'r Value], name: &str) -> Vec<&'r str> {
    rows.iter().map(|r| r[name].as_str().unwrap()).collect()
}

fn tokens(report: &Value) -> u64 {
    report["totals"]["tokens"].as_u64().unwrap()
}

fn days_used(report: &Value) -> u64 {
    report["totals"]["days_used"].as_u64().unwrap()
}

fn sessions_mut(input: &mut Value) -> &mut Vec<Value> {
    input["sessions"].as_array_mut().unwrap()
}

/// The same scenario with its sessions in reverse file order.
fn reversed(input: &Value) -> Value {
    let mut v = input.clone();
    sessions_mut(&mut v).reverse();
    v
}

fn with_policy(input: &Value, policy: Value) -> Value {
    let mut v = input.clone();
    v["policy"] = policy;
    v
}

// ------------------------------------------------------------- windows

#[test]
fn launch_opens_a_window_charged_on_its_local_day() {
    let (_, r) = vector("accounting", "01-launch-evening-close-next-afternoon");
    let all: Vec<&Value> = rows(&r).iter().collect();
    assert_eq!(field(&all, "day"), ["2026-03-02"], "19:00 in New York");
    assert_eq!(field(&all, "window_start"), ["2026-03-03T00:00:00Z"]);
}

#[test]
fn relaunch_inside_window_is_free() {
    let (_, r) = vector("accounting", "02-relaunches-inside-window");
    assert_eq!(rows(&r).len(), 1);
    assert_eq!(tokens(&r), 7);
}

#[test]
fn relaunch_after_window_is_charged_again() {
    let (_, r) = vector("accounting", "03-relaunch-after-window");
    assert_eq!(rows(&r).len(), 2);
    assert_eq!(tokens(&r), 14);
}

#[test]
fn relaunch_exactly_at_window_end_opens_a_new_window() {
    let (_, r) = vector("extra", "01-relaunch-at-window-end-opens-new-window");
    let all: Vec<&Value> = rows(&r).iter().collect();
    assert_eq!(
        field(&all, "window_start"),
        ["2026-03-02T09:00:00Z", "2026-03-03T09:00:00Z"],
        "windows are half-open: a launch at E opens the next"
    );
}

#[test]
fn launch_under_min_session_is_free() {
    let (_, r) = vector("accounting", "04-short-launch-ignored");
    assert!(rows(&r).is_empty());
    assert_eq!(days_used(&r), 0);
}

#[test]
fn short_launch_does_not_shape_the_window() {
    let (_, r) = vector("accounting", "05-short-then-long");
    assert_eq!(rows(&r)[0]["window_start"], "2026-03-02T14:00:00Z");
}

#[test]
fn session_of_exactly_min_session_counts() {
    let (_, r) = vector("accounting", "06-exactly-five-minutes");
    assert_eq!(rows(&r).len(), 1);
}

#[test]
fn products_are_charged_separately() {
    let (_, r) = vector("accounting", "07-two-products-same-day");
    assert_eq!(tokens(&r), 7 + 10);
    assert_eq!(days_used(&r), 2, "days used count (user, product, day)");
}

#[test]
fn product_left_open_is_charged_every_window_suspend_included() {
    let (_, r) = vector("accounting", "08-open-over-suspended-weekend");
    assert_eq!(rows(&r).len(), 3);
}

#[test]
fn short_tail_past_window_end_is_free() {
    let (_, short) = vector("accounting", "09-short-tail-past-window");
    let (_, long) = vector("accounting", "10-long-tail-past-window");
    assert_eq!(rows(&short).len(), 1, "3-minute tail");
    assert_eq!(rows(&long).len(), 2, "6-minute tail");
}

#[test]
fn tail_of_exactly_min_session_is_charged() {
    let (_, r) = vector("extra", "25-tail-of-exactly-min-session");
    assert_eq!(
        rows_of(&r, "sophie").len(),
        2,
        "a tail of 5m opens a window"
    );
    assert_eq!(rows_of(&r, "sam").len(), 1, "a tail of 4m59s does not");
}

#[test]
fn ten_day_session_is_ten_windows() {
    let (_, r) = vector("extra", "10-ten-day-session-ten-windows");
    assert_eq!(rows(&r).len(), 10, "the 4-minute tail on day 11 is free");
    assert_eq!(tokens(&r), 70);
    assert_eq!(days_used(&r), 10);
}

#[test]
fn window_and_min_session_come_from_policy() {
    let (input, r) = vector("extra", "23-custom-window-and-min-session");
    assert_eq!(rows(&r).len(), 2);
    assert_eq!(days_used(&r), 1, "two 12-hour windows on one UTC day");
    // With the default 24h window and 5m minimum, s2 is inside the first window and
    // the 9-minute s3 counts and opens the second.
    let defaults = account(&with_policy(&input, json!({"day_basis": "utc"})));
    let all: Vec<&Value> = rows(&defaults).iter().collect();
    assert_eq!(
        field(&all, "window_start"),
        ["2026-03-02T01:00:00Z", "2026-03-03T03:00:00Z"]
    );
}

#[test]
fn accounting_is_at_full_precision_and_output_in_whole_seconds() {
    let (_, r) = vector("extra", "22-full-precision-whole-second-output");
    // s1 is 4m59.9s (short); s3 starts 0.15s before the window ends and its 4m59.95s
    // past the end is a short tail: one window, its instants truncated (not rounded).
    assert_eq!(rows(&r).len(), 1);
    assert_eq!(rows(&r)[0]["window_start"], "2026-03-02T10:00:00Z");
}

// ------------------------------------------------------------- keys and devices

#[test]
fn devices_of_one_user_share_a_window() {
    let (_, r) = vector("accounting", "12-two-devices-one-user");
    assert_eq!(rows(&r).len(), 1);
}

#[test]
fn users_on_one_product_are_independent() {
    let (_, r) = vector("extra", "13-two-users-one-product-independent");
    assert_eq!(rows_of(&r, "ana").len(), 1);
    assert_eq!(
        rows_of(&r, "ben").len(),
        2,
        "ben's relaunch is past his own window, though inside ana's"
    );
}

// ------------------------------------------------------------- days and zones

#[test]
fn day_is_the_local_date_of_the_window_start() {
    let (_, r) = vector("accounting", "13-local-day-differs-from-utc");
    assert_eq!(rows(&r)[0]["day"], "2026-03-03");
}

#[test]
fn day_basis_utc_dates_by_the_utc_window_start() {
    let (input, r) = vector("extra", "09-day-basis-utc");
    assert_eq!(
        field(&rows_of(&r, "sam"), "day"),
        ["2026-11-01", "2026-11-02"]
    );
    assert_eq!(days_used(&r), 4);
    // The same sessions dated locally: Tokyo and Kolkata move a day, New York's two
    // windows fall on its 25-hour day.
    let local = account(&with_policy(&input, json!({"day_basis": "local"})));
    assert_eq!(field(&rows_of(&local, "sophie"), "day"), ["2026-03-03"]);
    assert_eq!(field(&rows_of(&local, "priya"), "day"), ["2026-03-03"]);
    assert_eq!(
        field(&rows_of(&local, "sam"), "day"),
        ["2026-11-01", "2026-11-01"]
    );
    assert_eq!(days_used(&local), 3);
}

#[test]
fn spring_forward_day_can_be_skipped_by_a_window() {
    let (_, r) = vector("extra", "02-new-york-spring-forward");
    // 23:30 EST + 24h is 00:30 EDT two calendar days later: the 23-hour day 2026-03-08
    // holds no window start.
    assert_eq!(
        field(&rows_of(&r, "sophie"), "day"),
        ["2026-03-07", "2026-03-09"]
    );
    // 01:30 EST + 24h is 02:30 EDT: the next window starts an hour later on the clock.
    assert_eq!(
        field(&rows_of(&r, "sam"), "day"),
        ["2026-03-08", "2026-03-09"]
    );
}

#[test]
fn dst_day_of_25_hours_can_hold_two_charges_but_one_day_used() {
    let (_, r) = vector("extra", "03-new-york-fall-back-25-hour-day");
    assert_eq!(rows(&r).len(), 2);
    assert_eq!(tokens(&r), 14);
    assert_eq!(days_used(&r), 1);
}

#[test]
fn berlin_fall_back_day_holds_two_launches_but_one_day_used() {
    let (_, r) = vector("extra", "04-berlin-fall-back-25-hour-day");
    let all: Vec<&Value> = rows(&r).iter().collect();
    assert_eq!(field(&all, "day"), ["2026-10-25", "2026-10-25"]);
    assert_eq!(tokens(&r), 20);
    assert_eq!(days_used(&r), 1);
}

#[test]
fn adelaide_dst_end_day_holds_two_charges_but_one_day_used() {
    let (_, r) = vector("extra", "08-adelaide-dst-end-25-hour-day");
    assert_eq!(rows(&r).len(), 2);
    assert_eq!(days_used(&r), 1);
}

#[test]
fn session_without_tz_uses_its_start_offset() {
    let (_, r) = vector("extra", "05-berlin-spring-forward-zone-versus-fixed-offset");
    // Same instants; the second window starts at 00:30 CEST (Europe/Berlin) but at
    // 23:30 in the +01:00 written in felix's start.
    assert_eq!(
        field(&rows_of(&r, "berta"), "day"),
        ["2026-03-28", "2026-03-30"]
    );
    assert_eq!(
        field(&rows_of(&r, "felix"), "day"),
        ["2026-03-28", "2026-03-29"]
    );
}

#[test]
fn leap_day_is_a_usage_day() {
    let (_, r) = vector("extra", "06-leap-day");
    let all: Vec<&Value> = rows(&r).iter().collect();
    assert_eq!(
        field(&all, "day"),
        ["2028-02-28", "2028-02-29", "2028-03-01"]
    );
}

#[test]
fn half_hour_and_45_minute_zones_date_by_their_whole_offset() {
    let (_, r) = vector("extra", "07-half-hour-and-45-minute-zones");
    for user in ["priya", "bikash", "chloe"] {
        assert_eq!(
            rows_of(&r, user)[0]["day"],
            "2026-03-03",
            "{user}: 00:10-00:20 local, still the previous day in UTC"
        );
    }
    // bikash's second session straddles his window end at 00:10 local (+05:45).
    assert_eq!(
        rows_of(&r, "bikash")[1]["window_start"],
        "2026-03-03T18:25:00Z"
    );
    assert_eq!(rows_of(&r, "bikash")[1]["day"], "2026-03-04");
}

#[test]
fn earliest_started_open_session_dates_the_day() {
    let (_, r) = vector("extra", "11-devices-in-different-zones");
    // ana: the New York session is still open at the second window start and started
    // first; ben: his New York session has ended by then, so Tokyo dates it.
    assert_eq!(rows_of(&r, "ana")[1]["day"], "2026-03-03");
    assert_eq!(rows_of(&r, "ben")[1]["day"], "2026-03-04");
    assert_eq!(
        account(&reversed(&load(
            "extra",
            "11-devices-in-different-zones.json"
        ))),
        r
    );
}

#[test]
fn same_start_ties_break_on_id() {
    let (input, r) = vector("extra", "12-same-start-ties-break-on-id");
    assert_eq!(
        rows(&r)[0]["day"],
        "2026-03-03",
        "c-1 (Tokyo) sorts before c-2"
    );
    assert_eq!(account(&reversed(&input)), r);
}

// ------------------------------------------------------------- open sessions and copies

#[test]
fn open_session_is_bounded_by_last_seen() {
    let (_, under) = vector("accounting", "14-open-session-under-minimum");
    let (_, over) = vector("accounting", "15-open-session-over-minimum");
    assert!(rows(&under).is_empty());
    assert_eq!(rows(&over).len(), 1);
}

#[test]
fn closed_copy_beats_open_copy_with_same_effective_end() {
    let (input, r) = vector("extra", "20-closed-copy-beats-open-copy-same-effective-end");
    // The closed copy's idle ends at 11:00, the open copy's runs to last_seen: only
    // the closed copy gives the second window.
    assert_eq!(rows(&r).len(), 2);
    assert_eq!(account(&reversed(&input)), r);
    let mut closed_only = input.clone();
    sessions_mut(&mut closed_only).truncate(1);
    assert_eq!(account(&closed_only), r);
}

#[test]
fn later_effective_end_wins() {
    let (input, r) = vector("extra", "21-later-effective-end-wins");
    assert_eq!(
        rows(&r).len(),
        2,
        "the open copy last seen next morning wins"
    );
    let copies = input["sessions"].as_array().unwrap().clone();
    for order in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        let mut v = input.clone();
        v["sessions"] = order.iter().map(|&i| copies[i].clone()).collect();
        assert_eq!(account(&v), r, "order {order:?}");
    }
}

#[test]
fn duplicate_records_change_nothing() {
    let (input, r) = vector("extra", "11-devices-in-different-zones");
    let mut twice = input.clone();
    let copies = sessions_mut(&mut twice).clone();
    sessions_mut(&mut twice).extend(copies);
    assert_eq!(account(&twice), r);
}

#[test]
fn result_does_not_depend_on_session_order() {
    for (dir, name) in [
        ("accounting", "02-relaunches-inside-window"),
        ("accounting", "05-short-then-long"),
        ("extra", "07-half-hour-and-45-minute-zones"),
        ("extra", "13-two-users-one-product-independent"),
        ("extra", "15-free-entitlement"),
        ("extra", "18-count-free-several-short-sessions"),
        ("extra", "24-short-session-never-opens-a-window"),
    ] {
        let (input, r) = vector(dir, name);
        assert_eq!(account(&reversed(&input)), r, "{dir}/{name} reversed");
        let mut rotated = input.clone();
        sessions_mut(&mut rotated).rotate_left(1);
        assert_eq!(account(&rotated), r, "{dir}/{name} rotated");
    }
}

// ------------------------------------------------------------- plans

#[test]
fn subscription_counts_the_day_with_zero_tokens() {
    let (_, r) = vector("accounting", "11-subscription-user-no-tokens");
    assert_eq!(rows(&r)[0]["plan"], "subscription");
    assert_eq!(tokens(&r), 0);
    assert_eq!(days_used(&r), 1);
}

#[test]
fn free_product_counts_the_day_with_zero_tokens() {
    let (_, r) = vector("accounting", "16-free-product-counts-day");
    assert_eq!(rows(&r)[0]["plan"], "free");
    assert_eq!(days_used(&r), 1);
}

#[test]
fn subscription_bounds_switch_plan_mid_run() {
    let (_, r) = vector("extra", "14-subscription-bounds-switch-plan");
    // Plan is read at each window start: `from` ≤ t < `to`; a Flex entitlement does not
    // beat the subscription, and ben's revit subscription does not cover his acad.
    assert_eq!(
        field(&rows_of(&r, "sophie"), "plan"),
        ["flex", "subscription", "subscription", "flex"]
    );
    assert_eq!(field(&rows_of(&r, "ben"), "plan"), ["flex"]);
    assert_eq!(tokens(&r), 21);
}

/// The spec prices `free` by a catalog rate of 0 only; the README decides that an
/// active `free` entitlement also prices days as free (below a subscription).
#[test]
fn free_entitlement_prices_days_free_below_a_subscription() {
    let (_, r) = vector("extra", "15-free-entitlement");
    let acad: Vec<&Value> = rows(&r).iter().filter(|x| x["product"] == "acad").collect();
    assert_eq!(field(&acad, "plan"), ["flex", "free", "subscription"]);
    assert_eq!(tokens(&r), 7);
}

#[test]
fn entitlement_for_product_missing_from_catalog_is_an_error() {
    let input = load("extra", "e01-entitlement-for-unknown-product.json");
    let e = error_of(&input);
    assert!(e.starts_with("entitlement #2 (sophie, bim360)"), "{e}");
    assert!(e.contains("not in the catalog"), "{e}");
}

// ------------------------------------------------------------- rollover = active and idle

#[test]
fn idle_aware_rollover_waits_for_use() {
    let (input, r) = vector("accounting", "17-idle-aware-rollover");
    assert_eq!(rows(&r)[1]["window_start"], "2026-01-19T08:00:00Z");
    let open = account(&with_policy(&input, json!({"rollover": "open"})));
    assert_eq!(
        rows(&open).len(),
        3,
        "the same session under rollover = open"
    );
}

#[test]
fn idle_is_ignored_under_rollover_open() {
    let (input, r) = vector("extra", "19-idle-ignored-under-rollover-open");
    let mut no_idle = input.clone();
    sessions_mut(&mut no_idle)[0]
        .as_object_mut()
        .unwrap()
        .remove("idle");
    assert_eq!(account(&no_idle), r);
}

#[test]
fn rollover_active_opens_when_another_device_is_in_use() {
    let (input, r) = vector("extra", "16-rollover-active-idle-device-other-in-use");
    // The New York workstation is idle; the Tokyo laptop is used from 17:00Z. The
    // window opens then, and is dated by the earliest-started open session (idle or
    // not): New York's 12:00 on 03-03, not Tokyo's 02:00 on 03-04.
    assert_eq!(rows(&r)[1]["window_start"], "2026-03-03T17:00:00Z");
    assert_eq!(rows(&r)[1]["day"], "2026-03-03");
    let open = account(&with_policy(&input, json!({"rollover": "open"})));
    assert_eq!(rows(&open)[1]["window_start"], "2026-03-03T16:00:00Z");
}

#[test]
fn idle_intervals_are_half_open_and_may_come_in_any_order() {
    let (_, r) = vector("extra", "17-rollover-active-idle-edges");
    // ben: idle to the end, nothing more; cara: 4 minutes of use after idle is a
    // short tail; dan: two touching idle intervals, listed out of order, in use at
    // their end; eve: idle ends exactly at the window end, so the next one opens then.
    assert_eq!(rows_of(&r, "ben").len(), 1);
    assert_eq!(rows_of(&r, "cara").len(), 1);
    assert_eq!(
        rows_of(&r, "dan")[1]["window_start"],
        "2026-03-03T10:00:00Z"
    );
    assert_eq!(
        rows_of(&r, "eve")[1]["window_start"],
        "2026-03-03T09:00:00Z"
    );
}

/// The spec splits short sessions off before the walk; the README reads "a session of
/// the key is open and not idle" among the rest, so a short session never opens a
/// window, even under `rollover = active` while the long one is idle.
#[test]
fn short_session_never_opens_a_window() {
    let (_, r) = vector("extra", "24-short-session-never-opens-a-window");
    assert_eq!(rows(&r).len(), 1);
}

// ------------------------------------------------------------- short_sessions = count_free

#[test]
fn count_free_short_session_is_its_own_free_row() {
    let (_, r) = vector("accounting", "18-short-sessions-counted-free");
    assert_eq!(rows(&r)[0]["window_end"], "2026-03-02T14:03:00Z");
    assert_eq!(days_used(&r), 1);
}

#[test]
fn count_free_rows_skip_starts_in_charged_windows_and_earlier_rows() {
    let (input, r) = vector("extra", "18-count-free-several-short-sessions");
    let free: Vec<&Value> = rows(&r).iter().filter(|x| x["tokens"] == 0).collect();
    assert_eq!(
        field(&free, "window_start"),
        [
            "2026-03-02T08:00:00Z", // s1
            "2026-03-02T08:03:00Z", // s3: at the end of s1's row (s2 starts inside it)
            "2026-03-02T08:30:00Z", // s7
            "2026-03-02T08:58:00Z", // s8: before the charged window, overlapping it
            "2026-03-03T09:00:00Z", // s6: at the charged window's end (s5 is inside)
            "2026-03-03T12:00:00Z", // s9: open, last seen 4 minutes in
        ]
    );
    assert_eq!(tokens(&r), 7);
    assert_eq!(days_used(&r), 2, "free rows count their days");
    let ignore = account(&with_policy(&input, json!({"short_sessions": "ignore"})));
    assert_eq!(rows(&ignore).len(), 1, "the charged window alone");
}
