//! `daymeter-collector replay` as a user runs it (spec/replay.md): the built binary,
//! spawned with a scenario file or standard input.
//!
//! Success: exit 0, the report on stdout, nothing on stderr. Bad input: exit 2, nothing
//! on stdout, exactly one line on stderr naming the first bad record in file order.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_daymeter-collector");

/// At least this many vectors per directory (guards against testing nothing).
const MIN_VECTORS: &[(&str, usize)] = &[("accounting", 19), ("extra", 26)];

fn vectors_dir(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors")
        .join(dir)
}

fn replay_file(path: &Path) -> Output {
    Command::new(BIN)
        .arg("replay")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running daymeter-collector")
}

fn replay_stdin(input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running daymeter-collector");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Write on a thread so a large input cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        // The child may exit before reading everything (bad input); that is fine.
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .expect("waiting for daymeter-collector");
    writer.join().unwrap();
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit 0, nothing on stderr, and the report on stdout equal (as JSON) to `expected`.
fn assert_report(out: &Output, expected: &Value, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: exit status; stderr: {}",
        text(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{what}: stderr: {}",
        text(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(
        &got,
        expected,
        "{what}: got\n{}",
        serde_json::to_string_pretty(&got).unwrap()
    );
}

/// Exit 2, nothing on stdout, exactly one line on stderr; returns that line.
fn bad_input_line(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit status; stderr: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: stdout: {}",
        text(&out.stdout)
    );
    assert!(
        err.ends_with('\n') && err.matches('\n').count() == 1 && err.trim().len() > 1,
        "{what}: stderr must be exactly one line: {err:?}"
    );
    err.trim_end().to_owned()
}

/// Bad input whose line contains every one of `parts`; returns the line.
fn assert_refused(input: &str, parts: &[&str]) -> String {
    let line = bad_input_line(&replay_stdin(input.as_bytes()), input);
    for part in parts {
        assert!(line.contains(part), "{line:?} does not contain {part:?}");
    }
    line
}

// ------------------------------------------------------------- the vectors

fn run_vector(dir: &str, name: &str) {
    let base = vectors_dir(dir);
    let input = base.join(format!("{name}.json"));
    let err = base.join(format!("{name}.err"));
    let out = replay_file(&input);
    let what = format!("{dir}/{name}");
    if err.exists() {
        let wanted = fs::read_to_string(&err).unwrap();
        let wanted = wanted.trim();
        let line = bad_input_line(&out, &what);
        assert!(
            line.contains(wanted),
            "{what}: {line:?} does not contain {wanted:?}"
        );
    } else {
        let expected: Value =
            serde_json::from_slice(&fs::read(base.join(format!("{name}.out.json"))).unwrap())
                .unwrap();
        assert_report(&out, &expected, &what);
    }
}

macro_rules! vectors {
    ($( $dir:ident { $( $test:ident => $name:literal ),* $(,)? } )*) => {
        $(
            mod $dir {
                $(
                    #[test]
                    fn $test() {
                        super::run_vector(stringify!($dir), $name);
                    }
                )*
            }
        )*

        /// Every vector listed above, as (directory, name).
        const LISTED: &[(&str, &str)] = &[ $( $( (stringify!($dir), $name), )* )* ];
    };
}

vectors! {
    accounting {
        v01_launch_evening_close_next_afternoon => "01-launch-evening-close-next-afternoon",
        v02_relaunches_inside_window => "02-relaunches-inside-window",
        v03_relaunch_after_window => "03-relaunch-after-window",
        v04_short_launch_ignored => "04-short-launch-ignored",
        v05_short_then_long => "05-short-then-long",
        v06_exactly_five_minutes => "06-exactly-five-minutes",
        v07_two_products_same_day => "07-two-products-same-day",
        v08_open_over_suspended_weekend => "08-open-over-suspended-weekend",
        v09_short_tail_past_window => "09-short-tail-past-window",
        v10_long_tail_past_window => "10-long-tail-past-window",
        v11_subscription_user_no_tokens => "11-subscription-user-no-tokens",
        v12_two_devices_one_user => "12-two-devices-one-user",
        v13_local_day_differs_from_utc => "13-local-day-differs-from-utc",
        v14_open_session_under_minimum => "14-open-session-under-minimum",
        v15_open_session_over_minimum => "15-open-session-over-minimum",
        v16_free_product_counts_day => "16-free-product-counts-day",
        v17_idle_aware_rollover => "17-idle-aware-rollover",
        v18_short_sessions_counted_free => "18-short-sessions-counted-free",
        e01_end_before_start => "e01-end-before-start",
    }
    extra {
        x01_relaunch_at_window_end_opens_new_window => "01-relaunch-at-window-end-opens-new-window",
        x02_new_york_spring_forward => "02-new-york-spring-forward",
        x03_new_york_fall_back_25_hour_day => "03-new-york-fall-back-25-hour-day",
        x04_berlin_fall_back_25_hour_day => "04-berlin-fall-back-25-hour-day",
        x05_berlin_spring_forward_zone_versus_fixed_offset => "05-berlin-spring-forward-zone-versus-fixed-offset",
        x06_leap_day => "06-leap-day",
        x07_half_hour_and_45_minute_zones => "07-half-hour-and-45-minute-zones",
        x08_adelaide_dst_end_25_hour_day => "08-adelaide-dst-end-25-hour-day",
        x09_day_basis_utc => "09-day-basis-utc",
        x10_ten_day_session_ten_windows => "10-ten-day-session-ten-windows",
        x11_devices_in_different_zones => "11-devices-in-different-zones",
        x12_same_start_ties_break_on_id => "12-same-start-ties-break-on-id",
        x13_two_users_one_product_independent => "13-two-users-one-product-independent",
        x14_subscription_bounds_switch_plan => "14-subscription-bounds-switch-plan",
        x15_free_entitlement => "15-free-entitlement",
        x16_rollover_active_idle_device_other_in_use => "16-rollover-active-idle-device-other-in-use",
        x17_rollover_active_idle_edges => "17-rollover-active-idle-edges",
        x18_count_free_several_short_sessions => "18-count-free-several-short-sessions",
        x19_idle_ignored_under_rollover_open => "19-idle-ignored-under-rollover-open",
        x20_closed_copy_beats_open_copy_same_effective_end => "20-closed-copy-beats-open-copy-same-effective-end",
        x21_later_effective_end_wins => "21-later-effective-end-wins",
        x22_full_precision_whole_second_output => "22-full-precision-whole-second-output",
        x23_custom_window_and_min_session => "23-custom-window-and-min-session",
        x24_short_session_never_opens_a_window => "24-short-session-never-opens-a-window",
        x25_tail_of_exactly_min_session => "25-tail-of-exactly-min-session",
        e01_entitlement_for_unknown_product => "e01-entitlement-for-unknown-product",
    }
}

#[test]
fn every_vector_on_disk_is_listed() {
    for &(dir, min) in MIN_VECTORS {
        let base = vectors_dir(dir);
        let on_disk: BTreeSet<String> = fs::read_dir(&base)
            .unwrap_or_else(|e| panic!("listing {}: {e}", base.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| !f.ends_with(".out.json"))
            .filter_map(|f| f.strip_suffix(".json").map(str::to_owned))
            .collect();
        assert!(
            on_disk.len() >= min,
            "{dir}: only {} vectors on disk, expected at least {min}",
            on_disk.len()
        );
        let listed: BTreeSet<String> = LISTED
            .iter()
            .filter(|(d, _)| *d == dir)
            .map(|(_, n)| (*n).to_owned())
            .collect();
        assert_eq!(
            on_disk, listed,
            "{dir}: vectors on disk vs listed in vectors!"
        );
    }
}

// ------------------------------------------------------------- input and output

#[test]
fn reads_the_scenario_from_stdin_with_dash() {
    let base = vectors_dir("accounting");
    let input = fs::read(base.join("08-open-over-suspended-weekend.json")).unwrap();
    let expected: Value = serde_json::from_slice(
        &fs::read(base.join("08-open-over-suspended-weekend.out.json")).unwrap(),
    )
    .unwrap();
    assert_report(&replay_stdin(&input), &expected, "stdin");
}

#[test]
fn bad_input_on_stdin_is_refused_the_same_way() {
    let base = vectors_dir("accounting");
    let input = fs::read(base.join("e01-end-before-start.json")).unwrap();
    let line = bad_input_line(&replay_stdin(&input), "stdin");
    assert_eq!(line, "session bad7: end is before start");
}

#[test]
fn missing_file_exits_2_with_one_line() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-scenario.json");
    let _ = fs::remove_file(&path);
    let line = bad_input_line(&replay_file(&path), "missing file");
    assert!(line.contains("no-such-scenario.json"), "{line}");
}

#[test]
fn prints_one_usage_day_per_line() {
    let out = replay_file(&vectors_dir("extra").join("10-ten-day-session-ten-windows.json"));
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    let row_lines = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("{\"user\""))
        .count();
    assert_eq!(row_lines, 10, "{stdout}");
}

#[test]
fn empty_scenario_is_an_empty_report() {
    let out = replay_stdin(b"{}");
    assert_report(
        &out,
        &json!({"usage_days": [], "totals": {"tokens": 0, "days_used": 0}}),
        "{}",
    );
}

// ------------------------------------------------------------- building bad input

fn catalog() -> Value {
    json!({"acad": {"tokens_per_day": 7}, "revit": {"tokens_per_day": 10}})
}

/// A valid closed session.
fn session(id: &str) -> Value {
    json!({
        "id": id, "user": "sophie", "device": "ws-17", "product": "acad",
        "start": "2026-03-02T09:00:00-05:00", "end": "2026-03-02T11:00:00-05:00",
        "tz": "America/New_York",
    })
}

/// `session(id)` with `changes` applied; a `null` in `changes` removes the key.
fn session_with(id: &str, changes: Value) -> Value {
    let mut s = session(id);
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            s.as_object_mut().unwrap().remove(k);
        } else {
            s[k] = v.clone();
        }
    }
    s
}

/// A scenario with its top-level keys in exactly this order (serde_json's own maps
/// sort keys, and file order matters for which error is first).
fn doc(sections: &[(&str, Value)]) -> String {
    let body: Vec<String> = sections
        .iter()
        .map(|(k, v)| format!("{}: {}", json!(k), v))
        .collect();
    format!("{{{}}}", body.join(",\n"))
}

fn sessions_doc(sessions: Vec<Value>) -> String {
    doc(&[("catalog", catalog()), ("sessions", Value::Array(sessions))])
}

fn policy_doc(policy: Value) -> String {
    doc(&[
        ("policy", policy),
        ("catalog", catalog()),
        ("sessions", json!([session("s1")])),
    ])
}

#[test]
fn valid_base_scenario_is_accepted() {
    // The inputs below differ from this one by one bad field.
    let out = replay_stdin(sessions_doc(vec![session("s1"), session("s2")]).as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = replay_stdin(policy_doc(json!({"window": "24h"})).as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

// ------------------------------------------------------------- one test per error kind

#[test]
fn missing_start_is_refused() {
    assert_refused(
        &sessions_doc(vec![session_with("s1", json!({"start": null}))]),
        &["session s1", "missing field start"],
    );
}

#[test]
fn missing_id_is_refused_naming_the_position() {
    assert_refused(
        &sessions_doc(vec![session("s1"), session_with("x", json!({"id": null}))]),
        &["session #2", "missing field id"],
    );
}

#[test]
fn missing_user_is_refused() {
    assert_refused(
        &sessions_doc(vec![session_with("s1", json!({"user": null}))]),
        &["session s1", "missing field user"],
    );
}

/// An empty id names no record: the line should fall back to the position, as for a
/// missing id (spec/replay.md: the line "names the record").
#[test]
fn empty_id_is_refused_naming_the_position() {
    assert_refused(
        &sessions_doc(vec![session_with("", json!({}))]),
        &["session #1", "missing field id"],
    );
}

#[test]
fn product_missing_from_catalog_is_refused() {
    assert_refused(
        &sessions_doc(vec![session_with("s1", json!({"product": "bim360"}))]),
        &["session s1", "bim360", "not in the catalog"],
    );
}

#[test]
fn end_before_start_is_refused() {
    let line = assert_refused(
        &sessions_doc(vec![session_with(
            "s7",
            json!({"end": "2026-03-02T08:59:59-05:00"}),
        )]),
        &[],
    );
    assert_eq!(line, "session s7: end is before start");
}

#[test]
fn last_seen_before_start_is_refused() {
    assert_refused(
        &sessions_doc(vec![session_with(
            "s1",
            json!({"end": null, "last_seen": "2026-03-02T13:00:00Z"}),
        )]),
        &["session s1", "last_seen is before start"],
    );
}

#[test]
fn session_with_neither_end_nor_last_seen_is_refused() {
    let closed_null = session_with("s1", json!({}))
        .as_object()
        .cloned()
        .map(|mut m| {
            m.insert("end".into(), Value::Null);
            Value::Object(m)
        });
    assert_refused(
        &sessions_doc(vec![closed_null.unwrap()]),
        &["session s1", "neither end nor last_seen"],
    );
    assert_refused(
        &sessions_doc(vec![session_with("s2", json!({"end": null}))]),
        &["session s2", "neither end nor last_seen"],
    );
}

#[test]
fn unknown_time_zone_is_refused() {
    assert_refused(
        &sessions_doc(vec![session_with("s1", json!({"tz": "Mars/Olympus_Mons"}))]),
        &["session s1", "Mars/Olympus_Mons", "time zone"],
    );
}

#[test]
fn instant_without_offset_is_refused() {
    assert_refused(
        &sessions_doc(vec![session_with(
            "s1",
            json!({"start": "2026-03-02T09:00:00"}),
        )]),
        &["session s1", "start", "2026-03-02T09:00:00", "offset"],
    );
    assert_refused(
        &sessions_doc(vec![session_with(
            "s2",
            json!({"end": "2026-03-02T11:00:00"}),
        )]),
        &["session s2", "end", "offset"],
    );
}

#[test]
fn conflicting_copies_with_differing_user_are_refused() {
    let line = assert_refused(
        &sessions_doc(vec![
            session("s1"),
            session("s2"),
            session_with("s1", json!({"user": "sam"})),
        ]),
        &["session s1", "conflicting copies", "user"],
    );
    assert!(!line.contains("start"), "{line}");
}

#[test]
fn conflicting_copies_with_differing_start_are_refused() {
    assert_refused(
        &sessions_doc(vec![
            session("s1"),
            session_with("s1", json!({"start": "2026-03-02T09:30:00-05:00"})),
        ]),
        &["session s1", "conflicting copies", "start"],
    );
}

#[test]
fn bad_duration_is_refused() {
    assert_refused(
        &policy_doc(json!({"min_session": "five minutes"})),
        &["policy", "min_session", "five minutes", "not a duration"],
    );
}

#[test]
fn window_of_zero_is_refused() {
    assert_refused(&policy_doc(json!({"window": "0s"})), &["policy", "window"]);
}

#[test]
fn unknown_rollover_is_refused() {
    assert_refused(
        &policy_doc(json!({"rollover": "sometimes"})),
        &["policy", "rollover", "sometimes"],
    );
}

#[test]
fn unknown_day_basis_is_refused() {
    assert_refused(
        &policy_doc(json!({"day_basis": "lunar"})),
        &["policy", "day_basis", "lunar"],
    );
}

#[test]
fn unknown_short_sessions_is_refused() {
    assert_refused(
        &policy_doc(json!({"short_sessions": "bill"})),
        &["policy", "short_sessions", "bill"],
    );
}

#[test]
fn unknown_plan_is_refused() {
    let input = doc(&[
        ("catalog", catalog()),
        (
            "entitlements",
            json!([{"user": "sophie", "product": "acad", "plan": "gold"}]),
        ),
        ("sessions", json!([session("s1")])),
    ]);
    assert_refused(&input, &["entitlement #1 (sophie, acad)", "plan", "gold"]);
}

#[test]
fn wrong_json_type_names_the_session() {
    let line = assert_refused(
        &sessions_doc(vec![session("s0"), session_with("s1", json!({"start": 5}))]),
        &[],
    );
    assert!(line.starts_with("session s1:"), "{line}");
}

#[test]
fn input_that_is_not_json_is_refused_in_one_line() {
    for input in [
        "this is not json",
        "{\"sessions\": [",
        "{\"catalog\": {}} trailing",
        "[1, 2]",
        "",
    ] {
        let line = bad_input_line(&replay_stdin(input.as_bytes()), input);
        assert!(line.starts_with("input:"), "{input:?}: {line}");
    }
}

// ------------------------------------------------------------- first error in file order

fn line_for(input: &str) -> String {
    bad_input_line(&replay_stdin(input.as_bytes()), input)
}

#[test]
fn first_bad_session_in_file_order_is_reported() {
    let line = line_for(&sessions_doc(vec![
        session("ok1"),
        session_with("z", json!({"end": "2026-03-02T08:00:00-05:00"})),
        session("ok2"),
        session_with("a", json!({"tz": "Nowhere/Land"})),
    ]));
    assert!(line.starts_with("session z:"), "{line}");
}

#[test]
fn bad_policy_after_a_bad_session_reports_the_session() {
    let line = line_for(&doc(&[
        ("catalog", catalog()),
        (
            "sessions",
            json!([session_with("s1", json!({"tz": "Nowhere/Land"}))]),
        ),
        ("policy", json!({"rollover": "sometimes"})),
    ]));
    assert!(line.starts_with("session s1:"), "{line}");
}

#[test]
fn bad_policy_before_a_bad_session_reports_the_policy() {
    let line = line_for(&doc(&[
        ("policy", json!({"rollover": "sometimes"})),
        ("catalog", catalog()),
        (
            "sessions",
            json!([session_with("s1", json!({"tz": "Nowhere/Land"}))]),
        ),
    ]));
    assert!(line.starts_with("policy:"), "{line}");
}

#[test]
fn bad_entitlement_after_a_bad_session_reports_the_session() {
    let line = line_for(&doc(&[
        ("catalog", catalog()),
        (
            "sessions",
            json!([session("s0"), session_with("s1", json!({"start": null}))]),
        ),
        (
            "entitlements",
            json!([{"user": "sophie", "product": "acad", "plan": "gold"}]),
        ),
    ]));
    assert!(line.starts_with("session s1:"), "{line}");
}

#[test]
fn conflicting_copy_before_a_bad_session_is_reported_first() {
    let line = line_for(&sessions_doc(vec![
        session("s1"),
        session_with("s1", json!({"device": "laptop"})),
        session_with("s2", json!({"end": "2026-03-02T08:00:00-05:00"})),
    ]));
    assert!(line.starts_with("session s1:"), "{line}");
    assert!(line.contains("conflicting copies"), "{line}");
}

#[test]
fn bad_session_before_a_conflicting_copy_is_reported_first() {
    let line = line_for(&sessions_doc(vec![
        session("s1"),
        session_with("s2", json!({"end": "2026-03-02T08:00:00-05:00"})),
        session_with("s1", json!({"device": "laptop"})),
    ]));
    assert!(line.starts_with("session s2:"), "{line}");
}

/// A session naming a product missing from the catalog is a bad record like any other:
/// a later bad session must not be reported instead.
#[test]
fn unknown_product_before_a_bad_session_is_reported_first() {
    let line = line_for(&sessions_doc(vec![
        session_with("s1", json!({"product": "bim360"})),
        session_with("s2", json!({"end": "2026-03-02T08:00:00-05:00"})),
    ]));
    assert!(line.starts_with("session s1:"), "{line}");
    assert!(line.contains("bim360"), "{line}");
}

/// As above, with a bad policy placed after the sessions.
#[test]
fn unknown_product_before_a_later_bad_policy_is_reported_first() {
    let line = line_for(&doc(&[
        ("catalog", catalog()),
        (
            "sessions",
            json!([session_with("s1", json!({"product": "bim360"}))]),
        ),
        ("policy", json!({"window": "0s"})),
    ]));
    assert!(line.starts_with("session s1:"), "{line}");
}

#[test]
fn bad_policy_before_an_unknown_product_reports_the_policy() {
    let line = line_for(&doc(&[
        ("policy", json!({"window": "0s"})),
        ("catalog", catalog()),
        (
            "sessions",
            json!([session_with("s1", json!({"product": "bim360"}))]),
        ),
    ]));
    assert!(line.starts_with("policy:"), "{line}");
}

// ------------------------------------------------------------- large input

/// A deterministic scenario of `n` sessions (and `n / 50` early copies) over 30 days: 150 users, three products,
/// zones with DST and half hours, some sessions open, some idle, some short, and a
/// copy of every 50th session re-sent open earlier on.
fn large_sessions(n: usize) -> Vec<Value> {
    const ZONES: &[(Option<&str>, &str)] = &[
        (Some("America/New_York"), "-05:00"),
        (Some("Europe/Berlin"), "+01:00"),
        (Some("Asia/Kolkata"), "+05:30"),
        (None, "+09:00"),
        (None, "Z"),
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    let t0 = 1_772_323_200_i64; // 2026-03-01T00:00:00Z
    let stamp = |secs: i64, offset: &str| {
        let off = match offset {
            "Z" => 0,
            o => {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let h: i64 = o[1..3].parse().unwrap();
                let m: i64 = o[4..6].parse().unwrap();
                sign * (h * 3600 + m * 60)
            }
        };
        // Civil time from Unix seconds (days-from-civil inverse), offset applied.
        let local = secs + off;
        let days = local.div_euclid(86_400);
        let rem = local.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{offset}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    };
    let mut out = Vec::with_capacity(n + n / 50);
    for i in 0..n {
        // Zones are fixed per user, so the offset written is the zone's standard one;
        // sessions stay inside March before any DST switch by keeping starts < 7 days
        // for New York and Berlin users.
        let user = next(150) as usize;
        let (tz, offset) = ZONES[user % ZONES.len()];
        let days = if tz.is_some() && user % ZONES.len() < 2 {
            7
        } else {
            30
        };
        let start = t0 + next(days * 86_400) as i64;
        let len = match next(4) {
            0 => next(600) as i64,
            1 => next(8 * 3600) as i64,
            _ => next(2 * 86_400) as i64,
        };
        let product = ["acad", "revit", "connector"][next(3) as usize];
        let mut s = json!({
            "id": format!("{i:08x}-{}", next(1000)),
            "user": format!("user{user:03}"),
            "device": format!("dev{}", next(2)),
            "product": product,
            "start": stamp(start, offset),
        });
        if let Some(tz) = tz {
            s["tz"] = json!(tz);
        }
        if next(5) == 0 {
            s["end"] = Value::Null;
            s["last_seen"] = json!(stamp(start + len, offset));
        } else {
            s["end"] = json!(stamp(start + len, offset));
        }
        if len > 3600 && next(2) == 0 {
            s["idle"] = json!([[
                stamp(start + len / 4, offset),
                stamp(start + len / 2, offset)
            ]]);
        }
        if i % 50 == 0 {
            let mut early = s.clone();
            early["end"] = Value::Null;
            early["last_seen"] = json!(stamp(start + len / 3, offset));
            early.as_object_mut().unwrap().remove("idle");
            out.push(early);
        }
        out.push(s);
    }
    out
}

fn large_doc(sessions: Vec<Value>, policy: Value) -> String {
    doc(&[
        ("policy", policy),
        (
            "catalog",
            json!({"acad": {"tokens_per_day": 7}, "revit": {"tokens_per_day": 10},
                   "connector": {"tokens_per_day": 0}}),
        ),
        (
            "entitlements",
            json!([{"user": "user007", "product": "acad", "plan": "subscription",
                    "from": "2026-03-10T00:00:00Z"}]),
        ),
        ("sessions", Value::Array(sessions)),
    ])
}

/// Over a megabyte the file is mapped and the sessions are checked in parallel chunks;
/// the result must be the library's, whichever way the input comes.
#[test]
fn large_scenario_from_file_and_stdin_equals_the_library_result() {
    for (name, policy) in [
        ("large-open.json", json!({})),
        (
            "large-active.json",
            json!({"rollover": "active", "short_sessions": "count_free"}),
        ),
    ] {
        let input = large_doc(large_sessions(20_000), policy);
        assert!(input.len() > 2 << 20, "{} bytes", input.len());
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        fs::write(&path, &input).unwrap();

        let report = daymeter_shared::scenario::replay(input.as_bytes()).expect("valid");
        let mut lib = Vec::new();
        report.write_json(&mut lib).unwrap();
        let lib: Value = serde_json::from_slice(&lib).unwrap();
        assert!(lib["usage_days"].as_array().unwrap().len() > 1000);

        let from_file = replay_file(&path);
        assert_report(&from_file, &lib, name);
        let from_stdin = replay_stdin(input.as_bytes());
        assert_eq!(from_stdin.status.code(), Some(0));
        assert_eq!(
            text(&from_stdin.stdout),
            text(&from_file.stdout),
            "{name}: same bytes from stdin and file"
        );
    }
}

/// With more sessions than one check chunk, the first bad record in file order is still
/// the one reported, wherever the chunks finish.
#[test]
fn first_error_in_file_order_across_many_sessions() {
    let bad_end = json!("2026-02-01T00:00:00Z");
    let n = 20_000;
    let base = large_sessions(n);
    let id = |s: &Value| s["id"].as_str().unwrap().to_owned();

    // Two bad sessions in different chunks: the earlier one is reported.
    for (first, second) in [(9_000, 18_000), (100, 19_000), (17_000, 17_001)] {
        let mut sessions = base.clone();
        sessions[first]["end"] = bad_end.clone();
        sessions[first]["last_seen"] = Value::Null;
        sessions[second]["tz"] = json!("Nowhere/Land");
        let line = line_for(&large_doc(sessions.clone(), json!({})));
        assert!(
            line.starts_with(&format!("session {}:", id(&sessions[first]))),
            "bad at {first} and {second}: {line}"
        );
    }

    // A conflicting copy before a bad session: the conflict; after it: the session.
    for (copy_at, bad_at, conflict_first) in [(9_000, 19_000, true), (19_000, 9_000, false)] {
        let mut sessions = base.clone();
        let mut copy = sessions[3].clone();
        copy["user"] = json!("someone-else");
        sessions.insert(copy_at, copy);
        sessions[bad_at]["end"] = bad_end.clone();
        sessions[bad_at]["last_seen"] = Value::Null;
        let bad_id = id(&sessions[bad_at]);
        let line = line_for(&large_doc(sessions.clone(), json!({})));
        if conflict_first {
            assert!(line.contains("conflicting copies"), "{line}");
            assert!(
                line.starts_with(&format!("session {}:", id(&sessions[3]))),
                "{line}"
            );
        } else {
            assert!(line.starts_with(&format!("session {bad_id}:")), "{line}");
        }
    }
}
