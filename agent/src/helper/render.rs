//! A reminder's words, from its structured fields, in the zone and clock style of the
//! user who reads it. A pure function of the reminder, the [`Style`] and "now", so every
//! wording is tested here without a desktop.
//!
//! The service sends instants in UTC and never formats a time: it runs as root, in the
//! machine's zone, while the person at the desktop may have set their own `TZ` and
//! locale.

use std::time::Duration;

use chrono::{DateTime, Days, Utc};
use chrono_tz::Tz;

use crate::reminder::{Kind, Reminder};

/// Locales whose people read a 12-hour clock ("7:00 PM"). A short, documented list
/// rather than a locale database: the helper carries no locale data, and these are the
/// English-speaking regions where the 12-hour clock is the everyday one. Any other
/// locale (and C/POSIX) gets "19:00".
const TWELVE_HOUR_LOCALES: [&str; 6] = ["en_US", "en_CA", "en_AU", "en_NZ", "en_PH", "en_IN"];

/// How the reader's clock looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStyle {
    /// `19:00`
    TwentyFourHour,
    /// `7:00 PM`
    TwelveHour,
}

impl ClockStyle {
    /// The style of a POSIX locale name (`en_US.UTF-8`, `de_DE@euro`, `C`).
    pub fn of_locale(locale: &str) -> ClockStyle {
        let name = locale.split(['.', '@']).next().unwrap_or("");
        if TWELVE_HOUR_LOCALES.contains(&name) {
            ClockStyle::TwelveHour
        } else {
            ClockStyle::TwentyFourHour
        }
    }
}

/// The reader's zone and clock style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub zone: Tz,
    pub clock: ClockStyle,
}

impl Style {
    /// From the helper's environment: the zone from `TZ` (an IANA name, with or without
    /// the leading `:`), else the system's, else UTC; the clock style from the first
    /// set of `LC_ALL`, `LC_TIME`, `LANG` (POSIX's precedence for time formats).
    pub fn from_env() -> Style {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let zone = var("TZ")
            .and_then(|tz| tz.trim_start_matches(':').parse::<Tz>().ok())
            .or_else(|| {
                iana_time_zone::get_timezone()
                    .ok()
                    .and_then(|name| name.parse().ok())
            })
            .unwrap_or(Tz::UTC);
        let clock = ["LC_ALL", "LC_TIME", "LANG"]
            .into_iter()
            .find_map(var)
            .map_or(ClockStyle::TwentyFourHour, |l| ClockStyle::of_locale(&l));
        Style { zone, clock }
    }
}

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The product's name (`AutoCAD`).
    pub summary: String,
    pub body: String,
}

/// The reminder's text for a reader with `style` at `now`. A reminder missing a field
/// its kind needs (an older or newer service) shows the collector's `text`, else a
/// generic line naming the product: a reminder is never dropped for want of a field.
pub fn render(reminder: &Reminder, style: &Style, now: DateTime<Utc>) -> Rendered {
    let words = Words { style, now };
    let body = sentence(reminder, &words).unwrap_or_else(|| {
        match reminder.text.as_deref().filter(|t| !t.trim().is_empty()) {
            Some(text) => text.to_owned(),
            None => format!(
                "daymeter has a reminder about {}: `daymeter-agent status` says more.",
                reminder.product_name
            ),
        }
    });
    Rendered {
        summary: reminder.product_name.clone(),
        body,
    }
}

/// The wording of each kind; `None` when a field it needs is missing.
fn sentence(r: &Reminder, w: &Words) -> Option<String> {
    let product = &r.product_name;
    Some(match r.kind {
        Kind::WindowRollover => format!(
            "{product} has been idle {}. A new day — {} — starts {}. Close it to avoid the charge.",
            w.relative("since", r.idle_since?),
            tokens(r.tokens?),
            w.at(r.at?),
        ),
        Kind::Launch => format!(
            "{product} opened a new day ({}). Closing within {} is free.",
            tokens(r.tokens?),
            in_words(r.free_within?),
        ),
        Kind::PreSleep => format!(
            "{product} is still open. A new day — {} — starts {} even while this computer sleeps. \
             Close it before you leave to avoid the charge.",
            tokens(r.tokens?),
            w.at(r.at?),
        ),
        Kind::GraceWarning => format!(
            "{product} may run offline {} ({}). Connect to the network before then to keep working.",
            w.relative("until", r.at?),
            plan(r.plan.as_deref()?),
        ),
        // Without `at` nothing will be closed (`enforce = warn`): the reader is only
        // told to sign in again.
        Kind::GraceExpired => match r.at {
            Some(at) => format!(
                "{product} has been offline too long ({}). It will be asked to close {}: save your work.",
                plan(r.plan.as_deref()?),
                w.at(at),
            ),
            None => format!(
                "{product} has been offline too long ({}). Connect to the network to keep using it.",
                plan(r.plan.as_deref()?),
            ),
        },
        Kind::InsufficientBalance => format!(
            "{product} opened a new day ({}) but your team has only {} left. \
             Ask your licence admin to add tokens.",
            tokens(r.tokens?),
            tokens(r.balance?),
        ),
    })
}

/// Instants in the reader's words.
struct Words<'a> {
    style: &'a Style,
    now: DateTime<Utc>,
}

/// Which local day an instant falls on, seen from today.
enum Day {
    Today,
    Tomorrow,
    Yesterday,
    /// `Mon 7 Dec`
    Other(String),
}

impl Words<'_> {
    /// After a verb: `at 19:00`, `tomorrow at 09:00`, `on Mon 7 Dec at 09:00`.
    fn at(&self, t: DateTime<Utc>) -> String {
        let (day, time) = self.split(t);
        match day {
            Day::Today => format!("at {time}"),
            Day::Tomorrow => format!("tomorrow at {time}"),
            Day::Yesterday => format!("yesterday at {time}"),
            Day::Other(date) => format!("on {date} at {time}"),
        }
    }

    /// After `since` or `until`: `until 19:00`, `until tomorrow at 09:00`,
    /// `since Fri 4 Dec at 14:10`.
    fn relative(&self, preposition: &str, t: DateTime<Utc>) -> String {
        let (day, time) = self.split(t);
        match day {
            Day::Today => format!("{preposition} {time}"),
            Day::Tomorrow => format!("{preposition} tomorrow at {time}"),
            Day::Yesterday => format!("{preposition} yesterday at {time}"),
            Day::Other(date) => format!("{preposition} {date} at {time}"),
        }
    }

    fn split(&self, t: DateTime<Utc>) -> (Day, String) {
        let local = t.with_timezone(&self.style.zone);
        let today = self.now.with_timezone(&self.style.zone).date_naive();
        let date = local.date_naive();
        let day = if date == today {
            Day::Today
        } else if today.checked_add_days(Days::new(1)) == Some(date) {
            Day::Tomorrow
        } else if today.checked_sub_days(Days::new(1)) == Some(date) {
            Day::Yesterday
        } else {
            Day::Other(local.format("%a %-d %b").to_string())
        };
        let time = match self.style.clock {
            ClockStyle::TwentyFourHour => local.format("%H:%M"),
            ClockStyle::TwelveHour => local.format("%-I:%M %p"),
        };
        (day, time.to_string())
    }
}

fn tokens(n: u64) -> String {
    if n == 1 {
        "1 token".to_owned()
    } else {
        format!("{n} tokens")
    }
}

/// `flex` → `Flex`; other plans as the service names them.
fn plan(plan: &str) -> &str {
    match plan {
        "flex" => "Flex",
        other => other,
    }
}

/// A lead in words, in its largest whole unit: `5 minutes`, `1 hour`, `90 seconds`.
fn in_words(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs >= 3600 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saturday 5 December 2026, 15:00 UTC.
    fn now() -> DateTime<Utc> {
        utc("2026-12-05T15:00:00Z")
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn h24() -> Style {
        Style {
            zone: Tz::UTC,
            clock: ClockStyle::TwentyFourHour,
        }
    }

    fn h12() -> Style {
        Style {
            zone: Tz::UTC,
            clock: ClockStyle::TwelveHour,
        }
    }

    fn rollover() -> Reminder {
        let mut r = Reminder::new(Kind::WindowRollover, "acad", "AutoCAD");
        r.at = Some(utc("2026-12-05T19:00:00Z"));
        r.idle_since = Some(utc("2026-12-05T14:10:00Z"));
        r.tokens = Some(7);
        r
    }

    fn launch() -> Reminder {
        let mut r = Reminder::new(Kind::Launch, "revit", "Revit");
        r.tokens = Some(10);
        r.free_within = Some(Duration::from_secs(300));
        r
    }

    fn pre_sleep() -> Reminder {
        let mut r = Reminder::new(Kind::PreSleep, "acad", "AutoCAD");
        r.at = Some(utc("2026-12-05T19:00:00Z"));
        r.tokens = Some(7);
        r
    }

    fn grace(kind: Kind, plan: &str) -> Reminder {
        let mut r = Reminder::new(kind, "acad", "AutoCAD");
        r.at = Some(utc("2026-12-05T19:00:00Z"));
        r.plan = Some(plan.to_owned());
        r
    }

    fn insufficient() -> Reminder {
        let mut r = Reminder::new(Kind::InsufficientBalance, "revit", "Revit");
        r.tokens = Some(10);
        r.balance = Some(3);
        r
    }

    fn body(r: &Reminder, style: &Style) -> String {
        render(r, style, now()).body
    }

    #[test]
    fn window_rollover_says_since_when_idle_and_when_the_next_day_starts() {
        assert_eq!(
            body(&rollover(), &h24()),
            "AutoCAD has been idle since 14:10. A new day — 7 tokens — starts at 19:00. Close it to avoid the charge."
        );
        assert_eq!(
            body(&rollover(), &h12()),
            "AutoCAD has been idle since 2:10 PM. A new day — 7 tokens — starts at 7:00 PM. Close it to avoid the charge."
        );
    }

    #[test]
    fn launch_says_the_free_lead_in_words() {
        assert_eq!(
            body(&launch(), &h24()),
            "Revit opened a new day (10 tokens). Closing within 5 minutes is free."
        );
        // No instant in this wording: the same in both styles.
        assert_eq!(body(&launch(), &h12()), body(&launch(), &h24()));
        let mut r = launch();
        r.free_within = Some(Duration::from_secs(90));
        assert!(body(&r, &h24()).ends_with("within 90 seconds is free."));
        r.free_within = Some(Duration::from_secs(60));
        assert!(body(&r, &h24()).ends_with("within 1 minute is free."));
        r.free_within = Some(Duration::from_secs(7200));
        assert!(body(&r, &h24()).ends_with("within 2 hours is free."));
    }

    #[test]
    fn pre_sleep_says_the_day_starts_even_while_asleep() {
        assert_eq!(
            body(&pre_sleep(), &h24()),
            "AutoCAD is still open. A new day — 7 tokens — starts at 19:00 even while this computer sleeps. Close it before you leave to avoid the charge."
        );
        assert!(body(&pre_sleep(), &h12()).contains("starts at 7:00 PM even"));
    }

    #[test]
    fn grace_warning_names_the_plan_and_the_end_of_the_grace() {
        assert_eq!(
            body(&grace(Kind::GraceWarning, "flex"), &h24()),
            "AutoCAD may run offline until 19:00 (Flex). Connect to the network before then to keep working."
        );
        assert_eq!(
            body(&grace(Kind::GraceWarning, "subscription"), &h12()),
            "AutoCAD may run offline until 7:00 PM (subscription). Connect to the network before then to keep working."
        );
    }

    #[test]
    fn grace_expired_says_when_the_product_is_asked_to_close() {
        assert_eq!(
            body(&grace(Kind::GraceExpired, "flex"), &h24()),
            "AutoCAD has been offline too long (Flex). It will be asked to close at 19:00: save your work."
        );
        assert!(
            body(&grace(Kind::GraceExpired, "flex"), &h12()).contains("asked to close at 7:00 PM:")
        );
    }

    #[test]
    fn grace_expired_without_a_close_only_asks_to_sign_in() {
        let mut g = grace(Kind::GraceExpired, "subscription");
        g.at = None;
        assert_eq!(
            body(&g, &h24()),
            "AutoCAD has been offline too long (subscription). Connect to the network to keep using it."
        );
    }

    #[test]
    fn insufficient_balance_says_what_is_left() {
        assert_eq!(
            body(&insufficient(), &h24()),
            "Revit opened a new day (10 tokens) but your team has only 3 tokens left. Ask your licence admin to add tokens."
        );
        let mut r = insufficient();
        r.balance = Some(1);
        assert!(body(&r, &h12()).contains("only 1 token left"));
    }

    #[test]
    fn the_summary_is_the_product_name() {
        assert_eq!(render(&rollover(), &h24(), now()).summary, "AutoCAD");
    }

    #[test]
    fn times_are_read_in_the_readers_zone() {
        let paris = Style {
            zone: chrono_tz::Europe::Paris,
            clock: ClockStyle::TwentyFourHour,
        };
        assert_eq!(
            body(&rollover(), &paris),
            "AutoCAD has been idle since 15:10. A new day — 7 tokens — starts at 20:00. Close it to avoid the charge."
        );
        let new_york = Style {
            zone: chrono_tz::America::New_York,
            clock: ClockStyle::TwelveHour,
        };
        assert!(body(&pre_sleep(), &new_york).contains("starts at 2:00 PM even"));
    }

    #[test]
    fn an_instant_on_another_day_gets_its_day() {
        let mut r = pre_sleep();
        r.at = Some(utc("2026-12-06T09:00:00Z"));
        assert!(body(&r, &h24()).contains("starts tomorrow at 09:00 even"));
        r.at = Some(utc("2026-12-07T09:00:00Z"));
        assert!(body(&r, &h24()).contains("starts on Mon 7 Dec at 09:00 even"));
        let mut g = grace(Kind::GraceWarning, "flex");
        g.at = Some(utc("2026-12-06T21:30:00Z"));
        assert!(body(&g, &h12()).contains("offline until tomorrow at 9:30 PM (Flex)"));
        let mut idle = rollover();
        idle.idle_since = Some(utc("2026-12-04T23:00:00Z"));
        assert!(body(&idle, &h24()).contains("idle since yesterday at 23:00."));
    }

    #[test]
    fn tomorrow_is_the_readers_tomorrow() {
        // 23:30 UTC on the 5th is already the 6th in Tokyo, so "today" there.
        let tokyo = Style {
            zone: chrono_tz::Asia::Tokyo,
            clock: ClockStyle::TwentyFourHour,
        };
        let mut r = pre_sleep();
        r.at = Some(utc("2026-12-05T23:30:00Z"));
        // Now is 00:00 on the 6th in Tokyo.
        assert!(body(&r, &tokyo).contains("starts at 08:30 even"));
        assert!(body(&r, &h24()).contains("starts at 23:30 even"));
        r.at = Some(utc("2026-12-06T15:30:00Z"));
        assert!(body(&r, &tokyo).contains("starts tomorrow at 00:30 even"));
    }

    #[test]
    fn a_missing_field_falls_back_to_the_collectors_text_then_to_a_generic_line() {
        let mut r = rollover();
        r.tokens = None;
        r.text = Some("AutoCAD will open a new day soon.".to_owned());
        assert_eq!(body(&r, &h24()), "AutoCAD will open a new day soon.");
        r.text = None;
        assert_eq!(
            body(&r, &h24()),
            "daymeter has a reminder about AutoCAD: `daymeter-agent status` says more."
        );
        let mut g = grace(Kind::GraceExpired, "flex");
        g.plan = None;
        g.text = Some("  ".to_owned());
        assert!(body(&g, &h24()).starts_with("daymeter has a reminder about AutoCAD"));
        // The fields win over the text when they are all there.
        let mut full = launch();
        full.text = Some("ignored".to_owned());
        assert!(body(&full, &h24()).starts_with("Revit opened a new day"));
    }

    #[test]
    fn the_clock_style_follows_a_short_list_of_locales() {
        for l in ["en_US.UTF-8", "en_CA", "en_AU.utf8", "en_PH", "en_IN@x"] {
            assert_eq!(ClockStyle::of_locale(l), ClockStyle::TwelveHour, "{l}");
        }
        for l in [
            "C",
            "POSIX",
            "C.UTF-8",
            "en_GB.UTF-8",
            "de_DE.UTF-8",
            "fr_CA",
            "",
        ] {
            assert_eq!(ClockStyle::of_locale(l), ClockStyle::TwentyFourHour, "{l}");
        }
    }
}
