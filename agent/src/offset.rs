//! The device clock against the collector's: measuring the offset, and when to believe it.
//!
//! The collector refuses sessions dated after its own time (`clock_ahead`), so a laptop
//! whose clock is days fast would meter nothing. Every sync answer carries the
//! collector's `server_time`; the agent compares it with its own clock around the same
//! exchange and meters with `device clock + offset` from then on.
//!
//! **Which sessions move, and which never do** (copies of one id must agree on `start`,
//! its offset and `tz`, or the collector rejects the later ones as `conflicting_copies`):
//! - every session records the offset its instants were written with
//!   ([`crate::journal::Tracked::clock_offset_ms`]);
//! - a session refused as `clock_ahead` on its **`start`** has never had a copy accepted
//!   (every copy carries that same start, and each was refused), so all its instants are
//!   moved once by the difference between the current offset and its own, rewritten in
//!   the local zone, and it is sent again. A lost answer cannot hide an accepted copy:
//!   that copy would have had the same refused start;
//! - a session refused on a later instant (`end`, `last_seen`, idle…) had an acceptable
//!   start, so a copy may already be stored: its start is never moved; only the
//!   instants past the corrected now are brought back to it (the device clock jumped
//!   while the product ran), and it is sent again;
//! - a change of the measured offset never touches other sessions: an accepted copy's
//!   start stays what the collector holds.

use chrono::{DateTime, TimeDelta, Utc};

/// Offsets smaller than this are ignored, and a new measurement replaces the offset in
/// use only when it differs from it by more. The measurement's own error is half the
/// round trip plus the second `server_time` is truncated to; on a slow link that is
/// seconds, so correcting below a minute would move instants by network noise. A minute
/// is also far inside the collector's 5-minute tolerance and far below anything the
/// day accounting can see.
pub const IGNORE_BELOW: TimeDelta = TimeDelta::minutes(1);

/// A round trip longer than this says nothing reliable about the offset (the answer
/// could have been stamped anywhere within it), so its measurement is dropped.
pub const LONGEST_ROUND_TRIP: TimeDelta = TimeDelta::seconds(30);

/// The largest offset believed: a device clock a decade wrong is broken, not skewed, and
/// a bounded offset keeps every instant it moves inside the calendar.
pub const LARGEST: TimeDelta = TimeDelta::days(3660);

/// An offset kept as milliseconds (journal, session), if it is one to believe.
pub fn from_millis(ms: i64) -> Option<TimeDelta> {
    TimeDelta::try_milliseconds(ms).filter(|d| d.abs() <= LARGEST)
}

/// The offset `collector − device` seen in one exchange: the request left at `sent` and
/// its answer came back at `received` (device clock), stamped `server_time` by the
/// collector. The collector's stamp is taken at the midpoint of the round trip; `None`
/// when the round trip is too long (or negative: the device clock was set meanwhile).
pub fn measure(
    sent: DateTime<Utc>,
    received: DateTime<Utc>,
    server_time: DateTime<Utc>,
) -> Option<TimeDelta> {
    let round_trip = received - sent;
    if round_trip < TimeDelta::zero() || round_trip > LONGEST_ROUND_TRIP {
        return None;
    }
    Some(server_time - (sent + round_trip / 2)).filter(|d| d.abs() <= LARGEST)
}

/// The offset to meter with after measuring `measured` while using `current`: unchanged
/// unless they differ by more than [`IGNORE_BELOW`], and zero when the measurement is
/// itself below it (the clock was fixed).
pub fn next(current: TimeDelta, measured: TimeDelta) -> TimeDelta {
    if (measured - current).abs() <= IGNORE_BELOW {
        current
    } else if measured.abs() <= IGNORE_BELOW {
        TimeDelta::zero()
    } else {
        measured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn the_offset_is_taken_at_the_middle_of_the_round_trip() {
        let m = measure(
            at("2026-03-04T09:00:00Z"),
            at("2026-03-04T09:00:02Z"),
            at("2026-03-02T09:00:01Z"),
        );
        assert_eq!(m, Some(TimeDelta::days(-2)));
    }

    #[test]
    fn a_round_trip_too_long_or_backwards_measures_nothing() {
        let server = at("2026-03-02T09:00:00Z");
        assert_eq!(
            measure(
                at("2026-03-04T09:00:00Z"),
                at("2026-03-04T09:01:00Z"),
                server
            ),
            None
        );
        assert_eq!(
            measure(
                at("2026-03-04T09:00:00Z"),
                at("2026-03-04T08:00:00Z"),
                server
            ),
            None
        );
    }

    #[test]
    fn offsets_under_a_minute_are_ignored_and_a_fixed_clock_returns_to_zero() {
        let zero = TimeDelta::zero();
        assert_eq!(next(zero, TimeDelta::seconds(40)), zero);
        assert_eq!(next(zero, TimeDelta::seconds(-59)), zero);
        assert_eq!(next(zero, TimeDelta::days(-2)), TimeDelta::days(-2));
        let fast = TimeDelta::days(-2);
        assert_eq!(next(fast, fast + TimeDelta::seconds(20)), fast, "noise");
        assert_eq!(next(fast, TimeDelta::seconds(3)), zero, "clock fixed");
        assert_eq!(
            next(fast, TimeDelta::hours(-1)),
            TimeDelta::hours(-1),
            "clock changed"
        );
    }
}
