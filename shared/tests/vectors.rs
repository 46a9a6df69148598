//! The accounting vectors (`tests/vectors/accounting`, the spec's worked examples, and
//! `tests/vectors/extra`, hand-worked edge cases) run through the library.
//!
//! A vector is `NAME.json` (a replay scenario) with either `NAME.out.json` (the expected
//! report) or `NAME.err` (a substring of the expected error line). Every vector has its
//! own test, listed in the macro below; `every_vector_on_disk_is_listed` keeps that list
//! and the directories in step, and the count guards fail if the files go missing.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use daymeter_shared::scenario::replay;
use serde_json::Value;

/// At least this many vectors must be on disk in each directory (guards against a
/// moved folder silently testing nothing).
const MIN_VECTORS: &[(&str, usize)] = &[("accounting", 19), ("extra", 26)];

fn vectors_dir(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("vectors")
        .join(dir)
}

fn read(path: &PathBuf) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The report as the replay command prints it, parsed back into JSON.
fn report_json(input: &[u8]) -> Result<Value, String> {
    let report = replay(input).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    report.write_json(&mut out).expect("writing to a Vec");
    Ok(serde_json::from_slice(&out).expect("the report is JSON"))
}

fn run_vector(dir: &str, name: &str) {
    let base = vectors_dir(dir);
    let input = read(&base.join(format!("{name}.json")));
    let err_path = base.join(format!("{name}.err"));
    let out_path = base.join(format!("{name}.out.json"));
    if err_path.exists() {
        let wanted = String::from_utf8(read(&err_path)).expect("UTF-8 .err");
        let wanted = wanted.trim();
        assert!(!wanted.is_empty(), "{name}.err is empty");
        match replay(&input) {
            Ok(report) => {
                panic!("{dir}/{name}: expected an error containing {wanted:?}, got {report:?}")
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains(wanted),
                    "{dir}/{name}: error {text:?} does not contain {wanted:?}"
                );
                assert!(
                    !text.contains('\n'),
                    "{dir}/{name}: error spans lines: {text:?}"
                );
            }
        }
    } else {
        let expected: Value =
            serde_json::from_slice(&read(&out_path)).expect("expected output is JSON");
        let got = report_json(&input).unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
        assert_eq!(
            got,
            expected,
            "{dir}/{name}: got\n{}\nexpected\n{}",
            serde_json::to_string_pretty(&got).unwrap(),
            serde_json::to_string_pretty(&expected).unwrap()
        );
    }
}

/// The vector names (file stems) found on disk in `dir`, checking each is complete.
fn vectors_on_disk(dir: &str) -> BTreeSet<String> {
    let base = vectors_dir(dir);
    let entries = fs::read_dir(&base).unwrap_or_else(|e| panic!("listing {}: {e}", base.display()));
    let mut names = BTreeSet::new();
    for entry in entries {
        let file = entry
            .unwrap()
            .file_name()
            .into_string()
            .expect("UTF-8 file name");
        if file.ends_with(".out.json") || file.ends_with(".err") {
            continue;
        }
        let Some(name) = file.strip_suffix(".json") else {
            panic!("{dir}/{file}: not a vector file (NAME.json, NAME.out.json or NAME.err)");
        };
        let has_out = base.join(format!("{name}.out.json")).exists();
        let has_err = base.join(format!("{name}.err")).exists();
        assert!(
            has_out != has_err,
            "{dir}/{name}: needs exactly one of .out.json and .err"
        );
        names.insert(name.to_owned());
    }
    // Every expectation belongs to an input.
    for entry in fs::read_dir(&base).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let stem = file
            .strip_suffix(".out.json")
            .or_else(|| file.strip_suffix(".err"));
        if let Some(stem) = stem {
            assert!(names.contains(stem), "{dir}/{file} has no {stem}.json");
        }
    }
    names
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
        let on_disk = vectors_on_disk(dir);
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
        let unlisted: Vec<_> = on_disk.difference(&listed).collect();
        let missing: Vec<_> = listed.difference(&on_disk).collect();
        assert!(
            unlisted.is_empty(),
            "{dir}: vectors not listed in vectors!: {unlisted:?}"
        );
        assert!(
            missing.is_empty(),
            "{dir}: listed vectors not on disk: {missing:?}"
        );
    }
    let dirs: BTreeSet<&str> = LISTED.iter().map(|(d, _)| *d).collect();
    let guarded: BTreeSet<&str> = MIN_VECTORS.iter().map(|(d, _)| *d).collect();
    assert_eq!(dirs, guarded, "every vector directory has a count guard");
}
