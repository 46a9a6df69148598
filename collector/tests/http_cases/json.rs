//! JSON as the generators write it: a tree whose numbers and some strings are kept as
//! their text, so that a body can carry what `serde_json::Value` cannot hold (integers
//! past `u64`, `1e400`, lone surrogates, duplicate keys) and still be edited and
//! re-rendered for the replay oracle.

use proptest::prelude::*;

/// A JSON value, rendered exactly as built.
#[derive(Clone, Debug, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    /// A number's text, as written (`-0`, `1e400`, `123456789012345678901234567890`).
    Num(String),
    /// A string, escaped when rendered.
    Str(String),
    /// JSON text put in as it is (`"\ud800"`: a string serde_json refuses).
    Raw(String),
    Arr(Vec<J>),
    /// Key order and duplicate keys are kept.
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn str(s: &str) -> J {
        J::Str(s.to_owned())
    }

    pub fn num(n: impl ToString) -> J {
        J::Num(n.to_string())
    }

    pub fn obj(pairs: Vec<(&str, J)>) -> J {
        J::Obj(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        out
    }

    fn render(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) | J::Raw(n) => out.push_str(n),
            J::Str(s) => out.push_str(&quote(s)),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            J::Obj(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote(k));
                    out.push(':');
                    v.render(out);
                }
                out.push('}');
            }
        }
    }

    /// The value of `key` as serde_json reads an object (the last copy of a key wins).
    pub fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(pairs) => pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` (every copy of it) or appends it; no-op on a non-object.
    pub fn set(&mut self, key: &str, value: J) {
        if let J::Obj(pairs) = self {
            pairs.retain(|(k, _)| k != key);
            pairs.push((key.to_owned(), value));
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let J::Obj(pairs) = self {
            pairs.retain(|(k, _)| k != key);
        }
    }

    /// The JSON string value (`"\u0041"` → `A`), whatever the form it was built in.
    pub fn string_value(&self) -> Option<String> {
        match self {
            J::Str(s) => Some(s.clone()),
            J::Raw(t) => serde_json::from_str::<String>(t).ok(),
            _ => None,
        }
    }
}

fn quote(s: &str) -> String {
    // Escapes control characters and quotes as JSON requires; unicode stays as it is.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Instants at the edges of what the parsers (chrono, the engine's nanosecond line,
/// SQLite text) hold, and a few that are not instants at all.
pub const EDGE_INSTANTS: &[&str] = &[
    "+10000-01-01T00:00:00Z",
    "-0001-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "1677-09-21T00:12:43Z",
    "1677-09-21T00:12:44Z",
    "2262-04-11T23:47:16Z",
    "2262-04-11T23:47:17Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59+14:00",
    "1970-01-01T00:00:00Z",
    "2026-03-08T02:30:00-05:00",
    "2026-02-03T09:00:00.123456789Z",
    "2026-02-03T09:00:00.5+01:00",
    "2026-02-03T09:00:00+23:59",
    "2026-02-03T09:00:00-23:59",
    "2026-02-03T09:00:00+00:30:30",
    "2026-02-03T09:00:00",
    "2026-02-03 09:00:00Z",
    "2026-02-03T24:00:00Z",
    "2026-02-29T09:00:00Z",
    "2026-12-31T23:59:60Z",
    "",
];

/// Durations at the edges of humantime, `Duration` and the engine's nanosecond line.
pub const EDGE_DURATIONS: &[&str] = &[
    "300000y",
    "584542y",
    "292y",
    "293y",
    "1ns",
    "0s",
    "0",
    "",
    "1d",
    "24h",
    "5m",
    "18446744073709551615s",
    "18446744073709551616s",
    "-5m",
    "5 m",
    "1y 2d 3h",
    "99999999999999999999ns",
    "1.5h",
];

/// Numbers past every integer and float type, negative, fractional, and exotic forms.
pub const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "0.0",
    "1.5",
    "-7.25",
    "1e3",
    "7E0",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "1e308",
    "-1e308",
    "1e400",
    "-1e400",
    "5e-324",
    "4294967296",
];

/// Strings that trip parsers, databases and log lines.
pub fn edge_strings() -> Vec<String> {
    vec![
        String::new(),
        "\u{0}".to_owned(),
        "a\u{0}b".to_owned(),
        "\u{1}\u{1f}\u{7f}".to_owned(),
        "line\nbreak\r\ttab".to_owned(),
        "\u{202e}rtl\u{200b}".to_owned(),
        "😀🇫🇷".to_owned(),
        "é".repeat(5_000),
        "x".repeat(70_000),
        "'; DROP TABLE sessions; --".to_owned(),
        "%00%s%n".to_owned(),
        "acad".to_owned(),
        "ACAD".to_owned(),
        " acad ".to_owned(),
        "America/New_York".to_owned(),
        "Not/AZone".to_owned(),
        "UTC".to_owned(),
        "flex".to_owned(),
        "subscription".to_owned(),
        "null".to_owned(),
    ]
}

/// Raw JSON strings serde_json or a strict reader may refuse.
pub const RAW_STRINGS: &[&str] = &[
    r#""\ud800""#,
    r#""\udc00x""#,
    r#""\ud83d\ude00""#,
    r#""\u0000""#,
    r#""\/\b\f""#,
];

fn pick(list: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(list)
}

pub fn edge_instant() -> impl Strategy<Value = J> {
    pick(EDGE_INSTANTS).prop_map(J::str)
}

pub fn edge_duration() -> impl Strategy<Value = J> {
    pick(EDGE_DURATIONS).prop_map(J::str)
}

pub fn edge_number() -> impl Strategy<Value = J> {
    prop_oneof![
        pick(EDGE_NUMBERS).prop_map(J::num),
        any::<i64>().prop_map(J::num),
        any::<u64>().prop_map(J::num),
        proptest::num::f64::NORMAL
            .prop_map(|f| J::Num(serde_json::to_string(&f).unwrap_or_else(|_| "0".into()))),
    ]
}

pub fn any_string() -> impl Strategy<Value = J> {
    prop_oneof![
        3 => proptest::sample::select(edge_strings()).prop_map(J::Str),
        // Any unicode, control characters included.
        2 => "\\PC{0,12}|[\\x00-\\x1f\"\\\\]{0,6}".prop_map(J::Str),
        1 => pick(RAW_STRINGS).prop_map(|s| J::Raw(s.to_owned())),
    ]
}

/// Any scalar: null, booleans, edge numbers, strings, instants and durations.
pub fn leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        3 => edge_number(),
        3 => any_string(),
        2 => edge_instant(),
        2 => edge_duration(),
    ]
}

/// Keys a generator uses: the protocol's, and anything else.
pub const KNOWN_KEYS: &[&str] = &[
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
    "sessions",
    "agent_time",
    "catalog",
    "entitlements",
    "teams",
    "policy",
    "replace",
    "tokens_per_day",
    "name",
    "match",
    "exe",
    "args_contain",
    "plan",
    "from",
    "to",
    "users",
    "low_balance",
    "team",
    "tokens",
    "purchased_at",
    "expires_at",
    "window",
    "min_session",
    "grace_flex",
];

pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => pick(KNOWN_KEYS).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

/// Any JSON value: any shape and nesting over [`leaf`].
pub fn any_json() -> impl Strategy<Value = J> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            proptest::collection::vec((key(), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

/// A value to put in place of a field: mostly an edge scalar, sometimes any JSON.
pub fn field_value() -> impl Strategy<Value = J> {
    prop_oneof![4 => leaf(), 1 => any_json()]
}
