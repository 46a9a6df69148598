//! Instants, zones and durations as the accounting uses them.
//!
//! The engine works on a plain integer time line (nanoseconds since the Unix epoch, UTC):
//! comparisons and window arithmetic on `i64` are what keep a million-session replay
//! fast. Parsing and calendar work are chrono's and chrono-tz's; this module only adapts
//! them and turns their failures into [`Problem`]s that name the field.

use std::time::Duration;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serializer};

use crate::record::Problem;

/// Nanoseconds since 1970-01-01T00:00:00Z. Covers 1677–2262, far beyond any licence.
pub type Nanos = i64;

/// An instant with the offset it was written with: what the wire carries and the
/// collector stores, so that a later recomputation sees exactly what `replay` would.
pub type Instant = DateTime<FixedOffset>;

/// Parses an RFC 3339 instant; one without an offset is refused, because its meaning
/// would depend on the machine that reads it.
pub fn parse_instant(field: &'static str, value: &str) -> Result<Instant, Problem> {
    match DateTime::parse_from_rfc3339(value) {
        Ok(instant) => {
            if instant.timestamp_nanos_opt().is_none() {
                return Err(Problem::OutOfRange { field });
            }
            Ok(instant)
        }
        Err(_) => {
            let naive = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f"));
            if naive.is_ok() {
                Err(Problem::NoOffset {
                    field,
                    value: value.to_owned(),
                })
            } else {
                Err(Problem::BadInstant {
                    field,
                    value: value.to_owned(),
                })
            }
        }
    }
}

/// The engine's view of an instant. Callers validate with [`parse_instant`] first, which
/// refuses instants outside the `i64` nanosecond range, so this cannot fail for them.
pub fn nanos(instant: &Instant) -> Nanos {
    instant
        .timestamp_nanos_opt()
        .unwrap_or(if instant.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        })
}

/// Back from the engine's time line to UTC, truncated to whole seconds as every output
/// instant is.
pub fn utc_seconds(n: Nanos) -> DateTime<Utc> {
    let secs = n.div_euclid(1_000_000_000);
    DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Where a calendar day is read: a named IANA zone (DST-correct) or, for a session that
/// did not say its zone, the fixed offset written in its `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Named(Tz),
    Fixed(FixedOffset),
}

impl Zone {
    /// The calendar date of `n` in this zone.
    pub fn local_date(self, n: Nanos) -> NaiveDate {
        let utc = utc_seconds(n).naive_utc();
        match self {
            Zone::Named(tz) => tz.from_utc_datetime(&utc).date_naive(),
            Zone::Fixed(offset) => offset.from_utc_datetime(&utc).date_naive(),
        }
    }

    /// The zone a session's day is read in: its `tz` if it has one, else its start's offset.
    pub fn of(tz: Option<&str>, start: &Instant) -> Result<Zone, Problem> {
        match tz {
            Some(name) => parse_zone(name).map(Zone::Named),
            None => Ok(Zone::Fixed(*start.offset())),
        }
    }
}

/// Looks up an IANA zone name (`America/New_York`).
pub fn parse_zone(name: &str) -> Result<Tz, Problem> {
    name.parse::<Tz>()
        .map_err(|_| Problem::UnknownZone(name.to_owned()))
}

/// A small cache of zone names already resolved. Sessions of one scenario name a handful
/// of zones a million times; the cache turns a hash lookup of the IANA table into a
/// comparison with the last names seen.
#[derive(Debug, Default)]
pub struct ZoneCache {
    recent: Vec<(Box<str>, Tz)>,
}

impl ZoneCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn resolve(&mut self, tz: Option<&str>, start: &Instant) -> Result<Zone, Problem> {
        let Some(name) = tz else {
            return Ok(Zone::Fixed(*start.offset()));
        };
        if let Some(i) = self.recent.iter().position(|(n, _)| &**n == name) {
            let tz = self.recent[i].1;
            if i > 0 {
                self.recent.swap(i, i - 1);
            }
            return Ok(Zone::Named(tz));
        }
        let tz = parse_zone(name)?;
        if self.recent.len() >= 16 {
            self.recent.pop();
        }
        self.recent.push((name.into(), tz));
        Ok(Zone::Named(tz))
    }
}

/// Parses a humantime duration (`"90s"`, `"5m"`, `"24h"`, `"30d"`).
pub fn parse_duration(field: &'static str, value: &str) -> Result<Duration, Problem> {
    humantime::parse_duration(value).map_err(|e| Problem::BadDuration {
        field,
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

/// Duration on the engine's time line; `None` when it does not fit (longer than ~292 years).
pub fn duration_nanos(d: Duration) -> Option<Nanos> {
    i64::try_from(d.as_nanos()).ok()
}

/// Writes a duration the way people write them in config: the largest whole unit among
/// days-as-hours, minutes, seconds (`"24h"`, `"5m"`, `"90s"`); humantime parses it back.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        return humantime::format_duration(d).to_string().replace(' ', "");
    }
    if secs == 0 {
        "0s".to_owned()
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Serde helpers for durations written as humantime strings.
pub mod humantime_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Hands `2026-03-02T14:00:00Z` to `f`, formatted on the stack: chrono's general
/// formatter costs more than the rest of a usage day's output together. Years outside
/// 0–9999 take chrono's path.
pub fn with_utc_text<R>(dt: &DateTime<Utc>, f: impl FnOnce(&str) -> R) -> R {
    let year = dt.year();
    if !(0..=9999).contains(&year) {
        return f(&dt.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let mut b = *b"0000-00-00T00:00:00Z";
    put_date_time(&mut b, dt);
    f(std::str::from_utf8(&b).unwrap_or_default())
}

/// Hands `2026-03-02` to `f` (see [`with_utc_text`] for why by hand).
pub fn with_date_text<R>(d: &NaiveDate, f: impl FnOnce(&str) -> R) -> R {
    let year = d.year();
    if !(0..=9999).contains(&year) {
        return f(&d.to_string());
    }
    let mut b = *b"0000-00-00";
    put4(&mut b[0..4], year as u32);
    put2(&mut b[5..7], d.month());
    put2(&mut b[8..10], d.day());
    f(std::str::from_utf8(&b).unwrap_or_default())
}

/// Hands an instant to `f` as chrono's serde writes it (RFC 3339 with its own offset,
/// `Z` for none, and 0, 3, 6 or 9 fraction digits as needed), formatted on
/// the stack: every stored session is written this way on the collector's request path,
/// where chrono's general formatter was a tenth of the time. Years outside 0–9999, leap
/// seconds and offsets with seconds take chrono's path.
pub fn with_instant_text<R>(i: &Instant, f: impl FnOnce(&str) -> R) -> R {
    let local = i.naive_local();
    let offset = i.offset().local_minus_utc();
    let nanos = local.nanosecond();
    let year = local.year();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 || offset % 60 != 0 {
        return f(&serde_json::to_value(i)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| i.to_rfc3339()));
    }
    let mut b = [0u8; 35];
    b[..19].copy_from_slice(b"0000-00-00T00:00:00");
    put_date_time(&mut b, &local);
    let mut n = 19;
    let (digits, fraction) = match nanos {
        0 => (0, 0),
        _ if nanos.is_multiple_of(1_000_000) => (3, nanos / 1_000_000),
        _ if nanos.is_multiple_of(1_000) => (6, nanos / 1_000),
        _ => (9, nanos),
    };
    if digits > 0 {
        b[n] = b'.';
        let mut v = fraction;
        for k in (0..digits).rev() {
            b[n + 1 + k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        n += 1 + digits;
    }
    if offset == 0 {
        b[n] = b'Z';
        return f(std::str::from_utf8(&b[..n + 1]).unwrap_or_default());
    }
    let (sign, offset) = if offset < 0 {
        (b'-', -offset)
    } else {
        (b'+', offset)
    };
    b[n] = sign;
    put2(&mut b[n + 1..n + 3], (offset / 3600) as u32);
    b[n + 3] = b':';
    put2(&mut b[n + 4..n + 6], (offset / 60 % 60) as u32);
    n += 6;
    f(std::str::from_utf8(&b[..n]).unwrap_or_default())
}

/// `#[serde(serialize_with)]` helpers writing instants by [`with_instant_text`].
pub mod instant_text {
    use super::{Instant, with_instant_text};
    use serde::Serializer;
    use serde::ser::SerializeSeq;

    pub fn one<S: Serializer>(i: &Instant, s: S) -> Result<S::Ok, S::Error> {
        with_instant_text(i, |t| s.serialize_str(t))
    }

    pub fn option<S: Serializer>(i: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        match i {
            Some(i) => with_instant_text(i, |t| s.serialize_some(t)),
            None => s.serialize_none(),
        }
    }

    /// `[[from, to], …]`.
    pub fn intervals<S: Serializer>(v: &[[Instant; 2]], s: S) -> Result<S::Ok, S::Error> {
        struct Pair<'a>(&'a [Instant; 2]);
        impl serde::Serialize for Pair<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(2))?;
                for i in self.0 {
                    with_instant_text(i, |t| seq.serialize_element(t))?;
                }
                seq.end()
            }
        }
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for pair in v {
            seq.serialize_element(&Pair(pair))?;
        }
        seq.end()
    }
}

/// A date as `YYYY-MM-DD`, as chrono writes it, without its formatter (which writes a
/// character at a time: formatting usage days' dates was a twentieth of the collector's
/// database writer).
pub fn date_text(d: NaiveDate) -> String {
    let year = d.year();
    if !(0..=9999).contains(&year) {
        return d.to_string();
    }
    let mut b = *b"0000-00-00";
    put4(&mut b[0..4], year as u32);
    put2(&mut b[5..7], d.month());
    put2(&mut b[8..10], d.day());
    String::from_utf8_lossy(&b).into_owned()
}

/// Writes `YYYY-MM-DDTHH:MM:SS` over the first 19 bytes of `b`, which holds its
/// separators already (the year is known to be in 0–9999).
fn put_date_time(b: &mut [u8], t: &(impl Datelike + Timelike)) {
    put4(&mut b[0..4], t.year() as u32);
    put2(&mut b[5..7], t.month());
    put2(&mut b[8..10], t.day());
    put2(&mut b[11..13], t.hour());
    put2(&mut b[14..16], t.minute());
    put2(&mut b[17..19], t.second());
}

fn put2(b: &mut [u8], v: u32) {
    b[0] = b'0' + (v / 10 % 10) as u8;
    b[1] = b'0' + (v % 10) as u8;
}

fn put4(b: &mut [u8], v: u32) {
    put2(&mut b[0..2], v / 100);
    put2(&mut b[2..4], v % 100);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_written_as_chrono_writes_it() {
        for (y, m, d) in [
            (2026, 3, 2),
            (1, 1, 1),
            (9999, 12, 31),
            (10_000, 1, 1),
            (-5, 6, 7),
        ] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            assert_eq!(date_text(date), date.to_string());
        }
    }

    #[test]
    fn instant_without_offset_is_refused_by_name() {
        let e = parse_instant("start", "2026-03-02T09:00:00").unwrap_err();
        assert_eq!(
            e,
            Problem::NoOffset {
                field: "start",
                value: "2026-03-02T09:00:00".into()
            }
        );
    }

    #[test]
    fn instant_keeps_its_offset() {
        let i = parse_instant("start", "2026-03-02T09:00:00-05:00").unwrap();
        assert_eq!(i.offset().local_minus_utc(), -5 * 3600);
        assert_eq!(
            utc_seconds(nanos(&i)).to_rfc3339(),
            "2026-03-02T14:00:00+00:00"
        );
    }

    #[test]
    fn output_instants_are_whole_seconds_truncated() {
        let i = parse_instant("end", "2026-03-02T09:00:00.999-05:00").unwrap();
        with_utc_text(&utc_seconds(nanos(&i)), |s| {
            assert_eq!(s, "2026-03-02T14:00:00Z")
        });
        with_date_text(&utc_seconds(nanos(&i)).date_naive(), |s| {
            assert_eq!(s, "2026-03-02")
        });
    }

    #[test]
    fn named_zone_is_dst_correct() {
        let zone = Zone::Named(chrono_tz::America::New_York);
        // 2026-03-08 is the spring-forward day in New York: 04:30Z is 23:30 on the 7th (EST),
        // 07:30Z is 03:30 on the 8th (EDT).
        let a = parse_instant("t", "2026-03-08T04:30:00Z").unwrap();
        let b = parse_instant("t", "2026-03-08T07:30:00Z").unwrap();
        assert_eq!(zone.local_date(nanos(&a)).to_string(), "2026-03-07");
        assert_eq!(zone.local_date(nanos(&b)).to_string(), "2026-03-08");
    }

    #[test]
    fn durations_round_trip_through_their_config_form() {
        for text in ["24h", "5m", "90s", "30d", "0s", "1500ms"] {
            let d = parse_duration("window", text).unwrap();
            assert_eq!(
                parse_duration("window", &format_duration(d)).unwrap(),
                d,
                "{text}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(86400)), "24h");
    }

    #[test]
    fn zone_cache_agrees_with_direct_lookup() {
        let start = parse_instant("start", "2026-03-02T09:00:00+05:30").unwrap();
        let mut cache = ZoneCache::new();
        for name in ["Asia/Kolkata", "Europe/Berlin", "Asia/Kolkata"] {
            assert_eq!(
                cache.resolve(Some(name), &start).unwrap(),
                Zone::of(Some(name), &start).unwrap()
            );
        }
        assert_eq!(
            cache.resolve(None, &start).unwrap(),
            Zone::Fixed(*start.offset())
        );
        assert!(cache.resolve(Some("Mars/Base"), &start).is_err());
    }
}
