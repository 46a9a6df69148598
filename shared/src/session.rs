//! Sessions: one product process lifetime on one device, as the wire carries it.
//!
//! Input is parsed in two steps. [`RawSession`] takes any JSON object with the session's
//! fields as strings, so that a bad value becomes a [`Problem`] naming the field rather
//! than a parser error naming a byte offset; [`RawSession::check`] then turns it into a
//! typed [`Session`]. Strings are borrowed from the input where they can be (`Cow`), which
//! keeps a million-session replay free of per-session allocations.

use std::borrow::Cow;
use std::cmp::Ordering;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::record::Problem;
use crate::time::{Instant, Nanos, Zone, ZoneCache, nanos, parse_instant};

/// A session's fields, in the order of [`RawSession`]'s declaration (the order in which
/// builds that took a list for a session read it).
pub const FIELDS: [&str; 11] = [
    "id",
    "user",
    "device",
    "product",
    "version",
    "start",
    "end",
    "last_seen",
    "tz",
    "suspended",
    "idle",
];

/// The longest id, product or version a sync may send, in bytes.
pub const MAX_TEXT: usize = 128;

/// The most charge windows one synced session may span: 2.7 years of 24-hour windows,
/// ten minutes of one-second test windows. Bounds the usage days, and the writer's
/// time, one session can cost.
pub const MAX_WINDOWS: i64 = 1000;

/// A `[from, to)` interval inside a session (idle or suspended).
pub type Interval = [Instant; 2];

/// How far past the collector's clock a session's instants may reach before `/v1/sync`
/// refuses them as `clock_ahead`. A device on NTP is off by well under a second, one
/// without it drifts by seconds a week, and a session's `last_seen` may be written a
/// moment before the request leaves: five minutes accepts all of those, while a session
/// dated hours or days ahead (a wrong clock, which would be charged in advance) is
/// refused until it is re-sent with corrected instants.
pub const CLOCK_TOLERANCE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// A session as the wire and the journal carry it. On the wire `user` and `device` come
/// from the sync request and the device token; in a replay scenario they are fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub user: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub device: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub product: Cow<'a, str>,
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub version: Option<Cow<'a, str>>,
    #[serde(serialize_with = "crate::time::instant_text::one")]
    pub start: Instant,
    /// Absent while the product runs.
    #[serde(default, serialize_with = "crate::time::instant_text::option")]
    pub end: Option<Instant>,
    /// Bounds a running session; informational once `end` is set.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::time::instant_text::option"
    )]
    pub last_seen: Option<Instant>,
    /// IANA zone of the device when the session started.
    #[serde(
        borrow,
        default,
        deserialize_with = "opt_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub tz: Option<Cow<'a, str>>,
    /// Sleep intervals (informational; the engine never reads them).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "crate::time::instant_text::intervals"
    )]
    pub suspended: Vec<Interval>,
    /// Final idle intervals, suspends folded in; read under `rollover = active`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "crate::time::instant_text::intervals"
    )]
    pub idle: Vec<Interval>,
}

/// Owned session, for the journal and the store.
pub type OwnedSession = Session<'static>;

/// Deserialises an [`OwnedSession`] field (`#[serde(deserialize_with = "...")]`): a
/// `Session<'static>` cannot borrow from the input, so it is read borrowed and copied.
pub fn deserialize_owned<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedSession, D::Error> {
    Session::deserialize(d).map(Session::into_owned)
}

/// A session object as it came in: every field optional and textual, checked later.
///
/// Only a JSON object is a session: serde's derived reader also takes a list of the
/// fields in declaration order, and a list-shaped session once passed the checks here
/// and was stored, but nothing that looks for its `id` by key could read it back
/// (the `Deserialize` impls below take objects alone).
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct RawSession<'a> {
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub user: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub device: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub product: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub version: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub start: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub end: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub last_seen: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub tz: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub suspended: Option<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
    #[serde(borrow, default)]
    pub idle: Option<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
}

/// Only the id of a record that failed to parse, so its error can still name it.
#[derive(Debug, Deserialize)]
#[serde(remote = "Self")]
pub struct IdOnly<'a> {
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub id: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawSession<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Object<'a> {
            type Value = RawSession<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a session object")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                RawSession::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for IdOnly<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Object<'a> {
            type Value = IdOnly<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a session object")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                IdOnly::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
    }
}

/// Deserialises an optional string borrowed from the input when it has no escapes.
///
/// serde's `#[serde(borrow)]` borrows a `Cow<str>` field but not an `Option<Cow<str>>`
/// one, which it always copies into a new `String`: eight allocations per session.
fn opt_text<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    struct Text;
    impl<'de> Visitor<'de> for Text {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    struct MaybeText;
    impl<'de> Visitor<'de> for MaybeText {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Text).map(Some)
        }
    }
    d.deserialize_option(MaybeText)
}

impl<'a> RawSession<'a> {
    /// Checks every field and returns the typed session with the zone its days are read
    /// in. `user` and `device` stay optional here; a replay requires them, the wire
    /// supplies them from the request.
    pub fn check(self, zones: &mut ZoneCache) -> Result<(Session<'a>, Zone), Problem> {
        let id = self.id.ok_or(Problem::Missing("id"))?;
        if id.is_empty() {
            return Err(Problem::Missing("id"));
        }
        let product = self.product.ok_or(Problem::Missing("product"))?;
        let start = parse_instant("start", &self.start.ok_or(Problem::Missing("start"))?)?;
        let end = self.end.map(|s| parse_instant("end", &s)).transpose()?;
        let last_seen = self
            .last_seen
            .map(|s| parse_instant("last_seen", &s))
            .transpose()?;
        if let Some(end) = &end
            && end < &start
        {
            return Err(Problem::BeforeStart { field: "end" });
        }
        if let Some(seen) = &last_seen
            && seen < &start
        {
            return Err(Problem::BeforeStart { field: "last_seen" });
        }
        if end.is_none() && last_seen.is_none() {
            return Err(Problem::Unbounded);
        }
        let zone = zones.resolve(self.tz.as_deref(), &start)?;
        let suspended = intervals("suspended", self.suspended)?;
        let idle = intervals("idle", self.idle)?;
        let session = Session {
            id,
            user: self.user,
            device: self.device,
            product,
            version: self.version,
            start,
            end,
            last_seen,
            tz: self.tz,
            suspended,
            idle,
        };
        Ok((session, zone))
    }
}

fn intervals(
    field: &'static str,
    raw: Option<Vec<(Cow<'_, str>, Cow<'_, str>)>>,
) -> Result<Vec<Interval>, Problem> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.iter()
        .enumerate()
        .map(|(index, (from, to))| {
            let from = parse_instant(field, from)?;
            let to = parse_instant(field, to)?;
            if to < from {
                return Err(Problem::BackwardsInterval {
                    field,
                    index: index + 1,
                });
            }
            Ok([from, to])
        })
        .collect()
}

impl<'a> Session<'a> {
    /// `end`, else `last_seen` (a checked session has one of them).
    pub fn effective_end(&self) -> &Instant {
        self.end
            .as_ref()
            .or(self.last_seen.as_ref())
            .unwrap_or(&self.start)
    }

    /// The field in which two copies of one id disagree, if any. Copies must agree on
    /// user, device, product, start (instant and offset) and tz.
    pub fn conflict_with(&self, other: &Session<'_>) -> Option<&'static str> {
        if self.user != other.user {
            Some("user")
        } else if self.device != other.device {
            Some("device")
        } else if self.product != other.product {
            Some("product")
        } else if self.start != other.start || self.start.offset() != other.start.offset() {
            Some("start")
        } else if self.tz != other.tz {
            Some("tz")
        } else {
            None
        }
    }

    /// Refuses a session any of whose instants is later than `latest` (the collector's
    /// now plus [`CLOCK_TOLERANCE`]), naming the first such field in the order `start`,
    /// `end`, `last_seen`, `suspended`, `idle`. Only `/v1/sync` applies it: `replay`
    /// has no "now", and an audit of the past must read what was stored.
    pub fn check_not_later_than(&self, latest: DateTime<Utc>) -> Result<(), Problem> {
        let ahead = |i: &Instant| *i > latest;
        let field = if ahead(&self.start) {
            Some("start")
        } else if self.end.as_ref().is_some_and(ahead) {
            Some("end")
        } else if self.last_seen.as_ref().is_some_and(ahead) {
            Some("last_seen")
        } else if self.suspended.iter().flatten().any(ahead) {
            Some("suspended")
        } else if self.idle.iter().flatten().any(ahead) {
            Some("idle")
        } else {
            None
        };
        match field {
            Some(field) => Err(Problem::ClockAhead { field }),
            None => Ok(()),
        }
    }

    /// The bounds `/v1/sync` keeps on what one session may make the collector do, and
    /// on what it may write into reports and logs: an id, product and version of at
    /// most [`MAX_TEXT`] bytes without control characters, a product that is not empty,
    /// idle and suspended intervals inside the session, in order, not overlapping, and
    /// a span of at most [`MAX_WINDOWS`] charge windows of `window` nanoseconds (a
    /// session from 1677 to 2262 once made 213,502 usage days in one request). `replay`
    /// does not apply them: it accounts whatever its file holds.
    pub fn check_admissible(&self, window: Nanos) -> Result<(), Problem> {
        for (field, text) in [
            ("id", Some(&*self.id)),
            ("product", Some(&*self.product)),
            ("version", self.version.as_deref()),
        ] {
            let Some(text) = text else { continue };
            if !(text.is_empty() && field == "version") {
                check_name(field, text)?;
            }
        }
        let (start, end) = (self.start_nanos(), self.end_nanos());
        for (field, list) in [("suspended", &self.suspended), ("idle", &self.idle)] {
            let mut after = start;
            for [from, to] in list {
                let (from, to) = (nanos(from), nanos(to));
                if from < after || to > end {
                    return Err(Problem::OutOfBounds {
                        field,
                        bounds: "intervals lie inside the session, in order, without overlapping",
                    });
                }
                after = to;
            }
        }
        // In i128: two instants 585 years apart are further than an i64 of nanoseconds.
        let windows = (i128::from(end) - i128::from(start)) / i128::from(window.max(1));
        if windows >= i128::from(MAX_WINDOWS) {
            return Err(Problem::TooManyWindows { max: MAX_WINDOWS });
        }
        Ok(())
    }

    /// Which of two copies of one id wins: the later effective end; on a tie the closed
    /// copy. Further ties are broken on the remaining fields so that the winner never
    /// depends on arrival order (a later `last_seen`, then more idle and suspend
    /// detail, then the version string).
    pub fn copy_order(&self, other: &Session<'_>) -> Ordering {
        let rank = |s: &Session<'_>| {
            (
                nanos(s.effective_end()),
                s.end.is_some(),
                s.last_seen.as_ref().map(nanos),
            )
        };
        rank(self)
            .cmp(&rank(other))
            .then_with(|| interval_order(&self.idle, &other.idle))
            .then_with(|| interval_order(&self.suspended, &other.suspended))
            .then_with(|| self.version.cmp(&other.version))
    }

    /// Detaches the session from the input it borrows from.
    pub fn into_owned(self) -> OwnedSession {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        Session {
            id: own(self.id),
            user: self.user.map(own),
            device: self.device.map(own),
            product: own(self.product),
            version: self.version.map(own),
            start: self.start,
            end: self.end,
            last_seen: self.last_seen,
            tz: self.tz.map(own),
            suspended: self.suspended,
            idle: self.idle,
        }
    }

    /// Start on the engine's time line.
    pub fn start_nanos(&self) -> Nanos {
        nanos(&self.start)
    }

    /// Effective end on the engine's time line.
    pub fn end_nanos(&self) -> Nanos {
        nanos(self.effective_end())
    }
}

/// A name or id a client gives (user, team, product, session id): not empty, at most
/// [`MAX_TEXT`] bytes, no control characters (they would forge lines in a log or a CSV).
pub fn check_name(field: &'static str, text: &str) -> Result<(), Problem> {
    if text.is_empty() {
        return Err(Problem::Missing(field));
    }
    check_text(field, text, MAX_TEXT)
}

/// Text a client gives that may be empty: at most `max` bytes, no control characters.
pub fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), Problem> {
    if text.len() > max {
        return Err(Problem::TooLong { field });
    }
    if text.chars().any(char::is_control) {
        return Err(Problem::WrongType {
            field,
            expected: "text without control characters",
        });
    }
    Ok(())
}

fn interval_order(a: &[Interval], b: &[Interval]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (nanos(&x[0]), nanos(&x[1])).cmp(&(nanos(&y[0]), nanos(&y[1]))))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawSession<'_> {
        serde_json::from_str(json).unwrap()
    }

    fn checked(json: &str) -> Result<Session<'_>, Problem> {
        raw(json).check(&mut ZoneCache::new()).map(|(s, _)| s)
    }

    #[test]
    fn a_session_sent_as_a_list_is_refused() {
        let list = r#"["s1",null,null,"acad",null,"2026-04-02T09:00:00Z","2026-04-02T17:00:00Z"]"#;
        assert!(serde_json::from_str::<RawSession<'_>>(list).is_err());
        assert!(serde_json::from_str::<IdOnly<'_>>(list).is_err());
        assert!(serde_json::from_str::<RawSession<'_>>(r#"{"id":"s1"}"#).is_ok());
    }

    #[test]
    fn a_session_over_the_window_cap_is_refused() {
        let hour = 3_600_000_000_000;
        let s = checked(r#"{"id":"s","product":"a","start":"1677-09-22T00:00:00Z","end":"2262-04-10T00:00:00Z"}"#).unwrap();
        assert_eq!(
            s.check_admissible(24 * hour),
            Err(Problem::TooManyWindows { max: MAX_WINDOWS })
        );
        let s = checked(r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","end":"2026-03-12T09:00:00Z"}"#).unwrap();
        assert_eq!(s.check_admissible(24 * hour), Ok(()));
    }

    #[test]
    fn an_empty_product_or_overlapping_idle_is_refused() {
        let hour = 3_600_000_000_000;
        let s = checked(r#"{"id":"s","product":"","start":"2026-03-02T09:00:00Z","end":"2026-03-02T12:00:00Z"}"#).unwrap();
        assert_eq!(s.check_admissible(hour), Err(Problem::Missing("product")));
        let s = checked(
            r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","end":"2026-03-02T12:00:00Z",
                "idle":[["2026-03-02T10:00:00Z","2026-03-02T11:00:00Z"],["2026-03-02T10:30:00Z","2026-03-02T10:40:00Z"]]}"#,
        )
        .unwrap();
        assert_eq!(s.check_admissible(hour).unwrap_err().field(), Some("idle"));
        let s = checked(
            r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","end":"2026-03-02T12:00:00Z",
                "suspended":[["2026-03-02T11:00:00Z","2026-03-02T13:00:00Z"]]}"#,
        )
        .unwrap();
        assert_eq!(
            s.check_admissible(hour).unwrap_err().field(),
            Some("suspended")
        );
    }

    #[test]
    fn session_with_neither_end_nor_last_seen_is_invalid() {
        let e = checked(r#"{"id":"s","product":"acad","start":"2026-03-02T09:00:00Z","end":null}"#);
        assert_eq!(e, Err(Problem::Unbounded));
    }

    #[test]
    fn end_before_start_is_invalid() {
        let e = checked(
            r#"{"id":"s","product":"acad","start":"2026-03-02T09:00:00Z","end":"2026-03-02T08:00:00Z"}"#,
        );
        assert_eq!(e, Err(Problem::BeforeStart { field: "end" }));
    }

    #[test]
    fn last_seen_before_start_is_invalid() {
        let e = checked(
            r#"{"id":"s","product":"acad","start":"2026-03-02T09:00:00Z","last_seen":"2026-03-02T08:00:00Z"}"#,
        );
        assert_eq!(e, Err(Problem::BeforeStart { field: "last_seen" }));
    }

    #[test]
    fn unknown_zone_is_invalid() {
        let e = checked(
            r#"{"id":"s","product":"acad","start":"2026-03-02T09:00:00Z","end":"2026-03-02T10:00:00Z","tz":"Mars/Olympus"}"#,
        );
        assert_eq!(e, Err(Problem::UnknownZone("Mars/Olympus".into())));
    }

    #[test]
    fn backwards_idle_interval_is_invalid() {
        let e = checked(
            r#"{"id":"s","product":"acad","start":"2026-03-02T09:00:00Z","end":"2026-03-02T12:00:00Z",
                "idle":[["2026-03-02T10:00:00Z","2026-03-02T09:30:00Z"]]}"#,
        );
        assert_eq!(
            e,
            Err(Problem::BackwardsInterval {
                field: "idle",
                index: 1
            })
        );
    }

    #[test]
    fn session_round_trips_through_the_wire_form() {
        let s = checked(
            r#"{"id":"s","product":"acad","start":"2026-03-02T09:00:00-05:00","last_seen":"2026-03-02T09:30:00-05:00",
                "tz":"America/New_York","idle":[["2026-03-02T09:10:00-05:00","2026-03-02T09:20:00-05:00"]]}"#,
        )
        .unwrap();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""end":null"#), "{text}");
        assert!(text.contains("09:00:00-05:00"), "offset kept: {text}");
        let back: Session<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn later_effective_end_wins_and_closed_wins_a_tie() {
        let open = checked(r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","last_seen":"2026-03-02T10:00:00Z"}"#).unwrap();
        let closed = checked(r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","end":"2026-03-02T10:00:00Z"}"#).unwrap();
        let later = checked(r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","last_seen":"2026-03-02T11:00:00Z"}"#).unwrap();
        assert_eq!(closed.copy_order(&open), Ordering::Greater);
        assert_eq!(later.copy_order(&closed), Ordering::Greater);
    }

    fn limit(text: &str) -> DateTime<Utc> {
        parse_instant("limit", text).unwrap().to_utc()
    }

    #[test]
    fn a_session_within_the_limit_passes_the_clock_check() {
        let s = checked(r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00-05:00","end":"2026-03-02T10:00:00-05:00",
            "idle":[["2026-03-02T09:10:00-05:00","2026-03-02T09:20:00-05:00"]]}"#).unwrap();
        assert_eq!(
            s.check_not_later_than(limit("2026-03-02T15:00:00Z")),
            Ok(())
        );
        assert_eq!(
            s.check_not_later_than(limit("2026-03-02T14:59:59Z")),
            Err(Problem::ClockAhead { field: "end" }),
            "the limit compares instants, not the offsets they are written with"
        );
    }

    #[test]
    fn the_clock_check_names_the_first_instant_past_the_limit() {
        let s = checked(r#"{"id":"s","product":"a","start":"2026-03-04T09:00:00Z","end":"2026-03-04T10:00:00Z"}"#).unwrap();
        assert_eq!(
            s.check_not_later_than(limit("2026-03-02T09:05:00Z")),
            Err(Problem::ClockAhead { field: "start" })
        );
        let running = checked(r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","last_seen":"2026-03-04T09:00:00Z"}"#).unwrap();
        assert_eq!(
            running.check_not_later_than(limit("2026-03-02T09:05:00Z")),
            Err(Problem::ClockAhead { field: "last_seen" })
        );
    }

    #[test]
    fn idle_and_suspended_bounds_past_the_limit_are_refused_too() {
        let idle = checked(
            r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","end":"2026-03-02T09:30:00Z",
            "idle":[["2026-03-02T09:10:00Z","2026-03-02T11:00:00Z"]]}"#,
        )
        .unwrap();
        assert_eq!(
            idle.check_not_later_than(limit("2026-03-02T10:00:00Z")),
            Err(Problem::ClockAhead { field: "idle" })
        );
        let asleep = checked(
            r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00Z","end":"2026-03-02T09:30:00Z",
            "suspended":[["2026-03-02T11:00:00Z","2026-03-02T11:30:00Z"]]}"#,
        )
        .unwrap();
        assert_eq!(
            asleep.check_not_later_than(limit("2026-03-02T10:00:00Z")),
            Err(Problem::ClockAhead { field: "suspended" })
        );
    }

    #[test]
    fn a_clock_ahead_refusal_says_how_to_be_accepted_with_its_own_code() {
        let p = Problem::ClockAhead { field: "end" };
        assert_eq!(p.code(), "clock_ahead");
        assert_eq!(p.field(), Some("end"));
        let text = p.to_string();
        assert!(text.contains("device clock seems ahead"), "{text}");
        assert!(text.contains("accepted when re-sent"), "{text}");
        assert!(
            text.contains(&format!("{} minutes", CLOCK_TOLERANCE.num_minutes())),
            "the message states the tolerance: {text}"
        );
    }

    #[test]
    fn copies_must_agree_on_start_offset() {
        let a = checked(r#"{"id":"s","product":"a","start":"2026-03-02T09:00:00-05:00","end":"2026-03-02T10:00:00-05:00"}"#).unwrap();
        let b = checked(r#"{"id":"s","product":"a","start":"2026-03-02T14:00:00Z","end":"2026-03-02T15:00:00Z"}"#).unwrap();
        assert_eq!(a.conflict_with(&b), Some("start"));
    }
}
