//! A sync's body read in one pass: the user, and each session both parsed and as the
//! exact text it arrived as (which is what the store keeps).
//!
//! Why not serde alone: serde_json gives a value's text only through `RawValue`, so the
//! sessions took two passes — the array split into raw values, then each one parsed —
//! and the split alone was a quarter of the request thread's instructions (callgrind,
//! sync_load 50x50: ~3,700 of ~13,500 per session). Here only the punctuation and
//! whitespace between the values of the outer object and of its `sessions` array are
//! walked by hand; every value, keys included, is parsed by serde_json where it starts,
//! and its stream deserializer says where it ends.
//!
//! The body's rules are those of the derived `SyncRequest` it replaces: `user` a string
//! and required, `agent_time` an optional string, `sessions` an array (absent: none),
//! other keys ignored, a key twice refused. A session that is JSON but not a valid
//! session is returned with its error (the sync rejects it alone); a body that is not
//! JSON at all is refused whole.

use std::borrow::Cow;

use daymeter_shared::session::RawSession;
use serde::Deserialize;
use serde::de::{Error as _, IgnoredAny};

/// What a sync body holds.
#[derive(Debug)]
pub struct SyncBody<'a> {
    pub user: Cow<'a, str>,
    pub sessions: Vec<Element<'a>>,
}

/// One element of `sessions`: its text as received, and it parsed as a session.
#[derive(Debug)]
pub struct Element<'a> {
    pub text: &'a str,
    pub parsed: Result<RawSession<'a>, serde_json::Error>,
}

/// Why a body was refused whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, or not the object a sync sends.
    #[error("{0}")]
    Json(String),
    /// More sessions than one sync may carry.
    #[error("over {0} sessions in one sync")]
    TooMany(usize),
}

/// A string that borrows from the body unless it has escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Reads a sync body; more than `max_sessions` sessions is [`BodyError::TooMany`].
pub fn read(text: &str, max_sessions: usize) -> Result<SyncBody<'_>, BodyError> {
    let mut c = Cursor { text, pos: 0 };
    let mut user: Option<Cow<'_, str>> = None;
    let mut sessions: Option<Vec<Element<'_>>> = None;
    let mut agent_time = false;
    c.expect(b'{', "the body to be an object")?;
    if c.peek() == Some(b'}') {
        c.pos += 1;
    } else {
        loop {
            if c.peek() != Some(b'"') {
                return Err(c.refuse("a key"));
            }
            let key: Text<'_> = c.value("a key")?;
            c.expect(b':', "`:` after a key")?;
            match &*key.0 {
                "user" => {
                    let value: Text<'_> = c.value("`user`, a string")?;
                    if user.replace(value.0).is_some() {
                        return Err(duplicate("user"));
                    }
                }
                "sessions" => {
                    let list = c.sessions(max_sessions)?;
                    if sessions.replace(list).is_some() {
                        return Err(duplicate("sessions"));
                    }
                }
                "agent_time" => {
                    let _: Option<Text<'_>> = c.value("`agent_time`, a string")?;
                    if std::mem::replace(&mut agent_time, true) {
                        return Err(duplicate("agent_time"));
                    }
                }
                _ => {
                    let _: IgnoredAny = c.value("a value")?;
                }
            }
            match c.next_byte() {
                Some(b',') => continue,
                Some(b'}') => break,
                Some(_) => {
                    c.pos -= 1; // back to the byte taken, to name it
                    return Err(c.refuse("`,` or `}` after a value"));
                }
                None => return Err(c.refuse("`,` or `}` after a value")),
            }
        }
    }
    if c.peek().is_some() {
        return Err(c.refuse("the end of the body"));
    }
    let user = user.ok_or_else(|| BodyError::Json("missing field `user`".into()))?;
    Ok(SyncBody {
        user,
        sessions: sessions.unwrap_or_default(),
    })
}

fn duplicate(key: &str) -> BodyError {
    BodyError::Json(format!("duplicate field `{key}`"))
}

/// A position in the body.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// The next byte after whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.pos) {
            self.pos += 1;
        }
        bytes.get(self.pos).copied()
    }

    /// The next byte after whitespace, taken.
    fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), BodyError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.refuse(what))
        }
    }

    fn refuse(&self, expected: &str) -> BodyError {
        let found = match self.text[self.pos..].chars().next() {
            Some(c) => format!("`{c}`"),
            None => "the end of the body".into(),
        };
        BodyError::Json(format!(
            "expected {expected} at byte {}, found {found}",
            self.pos
        ))
    }

    /// Parses the value that starts here and moves past it.
    fn parse<T: Deserialize<'a>>(&mut self) -> Result<T, serde_json::Error> {
        let rest = &self.text[self.pos..];
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<T>();
        match stream.next() {
            Some(Ok(value)) => {
                self.pos += stream.byte_offset();
                Ok(value)
            }
            Some(Err(e)) => Err(e),
            None => Err(serde_json::Error::custom("EOF while parsing a value")),
        }
    }

    /// [`Cursor::parse`], refusing the body if it fails.
    fn value<T: Deserialize<'a>>(&mut self, what: &str) -> Result<T, BodyError> {
        let at = self.pos;
        self.parse()
            .map_err(|e| BodyError::Json(format!("expected {what} at byte {at}: {e}")))
    }

    /// The `sessions` array.
    fn sessions(&mut self, max: usize) -> Result<Vec<Element<'a>>, BodyError> {
        let mut out = Vec::new();
        self.expect(b'[', "`sessions` to be an array")?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            if out.len() == max {
                return Err(BodyError::TooMany(max));
            }
            self.peek();
            let start = self.pos;
            let parsed = self.parse::<RawSession<'a>>();
            if parsed.is_err() {
                // Not a session; still JSON? Then it is rejected alone.
                self.pos = start;
                let _: IgnoredAny = self.value("a session")?;
            }
            out.push(Element {
                text: &self.text[start..self.pos],
                parsed,
            });
            match self.next_byte() {
                Some(b',') => continue,
                Some(b']') => return Ok(out),
                Some(_) => {
                    self.pos -= 1; // back to the byte taken, to name it
                    return Err(self.refuse("`,` or `]` after a session"));
                }
                None => return Err(self.refuse("`,` or `]` after a session")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> String {
        match read(body, 500) {
            Err(BodyError::Json(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn each_session_comes_with_its_exact_text_and_other_keys_are_ignored() {
        let body = "{ \"agent_time\": \"2026-01-01T00:00:00Z\", \"extra\": {\"a\": [1, \"]\"]},\n\
                    \"sessions\" : [ {\"id\": \"a\", \"product\": \"acad\"} ,\n{\"id\":\"b\\u00e9\"}],\
                    \"user\": \"so\\\"phie\" }";
        let read = read(body, 500).unwrap();
        assert_eq!(read.user, "so\"phie");
        let texts: Vec<&str> = read.sessions.iter().map(|e| e.text).collect();
        assert_eq!(
            texts,
            [
                "{\"id\": \"a\", \"product\": \"acad\"}",
                "{\"id\":\"b\\u00e9\"}"
            ]
        );
        let ids: Vec<_> = read
            .sessions
            .iter()
            .map(|e| e.parsed.as_ref().unwrap().id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["a", "bé"]);
    }

    #[test]
    fn a_session_that_is_json_but_not_a_session_comes_with_its_error() {
        let body = r#"{"user":"u","sessions":[5, {"id": 7}, [1,{"x":"]"}], {"id":"ok"}]}"#;
        let read = read(body, 500).unwrap();
        let texts: Vec<&str> = read.sessions.iter().map(|e| e.text).collect();
        assert_eq!(
            texts,
            ["5", r#"{"id": 7}"#, r#"[1,{"x":"]"}]"#, r#"{"id":"ok"}"#]
        );
        let bad: Vec<bool> = read.sessions.iter().map(|e| e.parsed.is_err()).collect();
        assert_eq!(bad, [true, true, true, false]);
    }

    #[test]
    fn no_sessions_key_or_an_empty_array_is_no_sessions() {
        assert!(read(r#"{"user":"u"}"#, 500).unwrap().sessions.is_empty());
        assert!(
            read(r#" {"sessions": [ ], "user":"u"} "#, 500)
                .unwrap()
                .sessions
                .is_empty()
        );
    }

    #[test]
    fn a_body_that_is_not_the_object_a_sync_sends_is_refused_saying_where() {
        for (body, says) in [
            ("", "expected the body to be an object at byte 0"),
            ("[]", "expected the body to be an object at byte 0"),
            (r#"{"sessions":[]}"#, "missing field `user`"),
            (r#"{"user":7}"#, "expected `user`, a string at byte 8"),
            (r#"{"user":"u","user":"v"}"#, "duplicate field `user`"),
            (
                r#"{"user":"u","sessions":{}}"#,
                "expected `sessions` to be an array",
            ),
            (
                r#"{"user":"u","sessions":[{"id":"a"}"#,
                "expected `,` or `]` after a session",
            ),
            (
                r#"{"user":"u","sessions":[{"id":"a"]}"#,
                "expected a session at byte 24",
            ),
            (
                r#"{"user":"u"} x"#,
                "expected the end of the body at byte 13",
            ),
            (
                r#"{"user":"u" "x":1}"#,
                "expected `,` or `}` after a value at byte 12",
            ),
            (r#"{user:"u"}"#, "expected a key at byte 1"),
            (r#"{"agent_time":1,"user":"u"}"#, "`agent_time`, a string"),
        ] {
            let message = refused(body);
            assert!(message.contains(says), "{body}: {message}");
        }
    }

    /// Any JSON value, as text with optional spacing.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_owned()),
            any::<i32>().prop_map(|n| n.to_string()),
            "[a-z\\\"\\]\\[{},: é]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            let space = prop_oneof![Just(""), Just(" "), Just("\n  ")];
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..4), space.clone())
                    .prop_map(|(items, sp)| format!("[{sp}{}{sp}]", items.join(&format!(",{sp}")))),
                (prop::collection::vec(("[a-z]{1,6}", inner), 0..4), space).prop_map(
                    |(fields, sp)| {
                        let fields: Vec<String> = fields
                            .into_iter()
                            .map(|(k, v)| format!("{sp}\"{k}\"{sp}:{sp}{v}"))
                            .collect();
                        format!("{{{}{sp}}}", fields.join(","))
                    }
                ),
            ]
        })
    }

    #[derive(serde::Deserialize)]
    struct BySerde<'a> {
        #[serde(borrow)]
        user: Cow<'a, str>,
        #[serde(borrow, default)]
        sessions: Vec<&'a serde_json::value::RawValue>,
    }

    proptest::proptest! {
        /// Whatever the elements and the spacing, the sessions' texts are what serde_json's
        /// raw values give, and a body serde_json refuses is refused.
        #[test]
        fn element_texts_equal_serde_jsons_raw_values(
            elements in proptest::collection::vec(json_text(), 0..6),
            space in "[ \n\t]{0,2}",
            user_first in proptest::bool::ANY,
            cut in proptest::option::of(0usize..200),
        ) {
            let list = format!("[{space}{}{space}]", elements.join(&format!("{space},{space}")));
            let mut body = if user_first {
                format!("{{{space}\"user\":\"u\",\"sessions\":{space}{list}}}")
            } else {
                format!("{{\"sessions\":{list},{space}\"user\"{space}:\"u\"{space}}}")
            };
            if let Some(cut) = cut.filter(|c| *c < body.len() && body.is_char_boundary(*c)) {
                body.truncate(cut);
            }
            let ours = read(&body, 500);
            match serde_json::from_str::<BySerde<'_>>(&body) {
                Ok(theirs) => {
                    let ours = ours.unwrap();
                    proptest::prop_assert_eq!(&ours.user, &theirs.user);
                    let texts: Vec<&str> = ours.sessions.iter().map(|e| e.text).collect();
                    let raw: Vec<&str> = theirs.sessions.iter().map(|r| r.get()).collect();
                    proptest::prop_assert_eq!(texts, raw);
                }
                Err(_) => proptest::prop_assert!(ours.is_err(), "{body}"),
            }
        }
    }

    #[test]
    fn more_sessions_than_allowed_is_too_many() {
        let body = r#"{"user":"u","sessions":[{},{},{}]}"#;
        assert_eq!(read(body, 3).unwrap().sessions.len(), 3);
        assert!(matches!(read(body, 2), Err(BodyError::TooMany(2))));
    }
}
