//! What a case sends: valid sessions, imports and purchases, most left as they are and
//! some mutated slightly (a field set to an edge value or to any JSON, a field removed,
//! an unknown one added, the whole record replaced), so that many are accepted and the
//! rest probe the validation; and whole bodies of any JSON or any bytes.

use std::fmt;

use proptest::prelude::*;

use super::json::{J, any_json, edge_duration, edge_instant, field_value, key, leaf};

/// Products of the base catalog, and one that no import names.
pub const PRODUCTS: &[&str] = &["acad", "revit", "dc", "ghost"];
pub const USERS: &[&str] = &["sophie", "marc"];
const ZONES: &[Option<&str>] = &[
    Some("America/New_York"),
    Some("Europe/Berlin"),
    Some("UTC"),
    None,
];
const OFFSETS: &[(&str, i64)] = &[("Z", 0), ("-05:00", -5), ("+01:00", 1), ("+09:00", 9)];

/// A session's keys: the wire record's own, `user` and `device` (replay's) among them.
const SESSION_KEYS: &[&str] = &daymeter_shared::session::FIELDS;
const POLICY_KEYS: &[&str] = daymeter_shared::policy::Policy::KEYS;
const PRODUCT_KEYS: &[&str] = &["name", "tokens_per_day", "match", "rate_confirmed"];
const ENTITLEMENT_KEYS: &[&str] = &["user", "product", "plan", "from", "to"];
const PURCHASE_KEYS: &[&str] = &["team", "tokens", "purchased_at", "expires_at"];
const SYNC_KEYS: &[&str] = &["user", "agent_time", "sessions"];
const IMPORT_KEYS: &[&str] = &["catalog", "entitlements", "teams", "policy", "replace"];

/// A slight change to a record.
#[derive(Clone, Debug)]
pub enum Mutation {
    Keep,
    Set(String, J),
    Remove(String),
    Replace(J),
}

impl Mutation {
    pub fn apply(&self, mut j: J) -> J {
        match self {
            Mutation::Keep => {}
            Mutation::Set(k, v) => j.set(k, v.clone()),
            Mutation::Remove(k) => j.remove(k),
            Mutation::Replace(v) => return v.clone(),
        }
        j
    }
}

/// Mostly nothing; else one of `keys` set to an edge value or removed, an unknown key
/// added, or the record replaced by any JSON.
fn mutation(keys: &'static [&'static str]) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        10 => Just(Mutation::Keep),
        4 => (proptest::sample::select(keys), field_value())
            .prop_map(|(k, v)| Mutation::Set(k.to_owned(), v)),
        1 => proptest::sample::select(keys).prop_map(|k| Mutation::Remove(k.to_owned())),
        1 => (key(), leaf()).prop_map(|(k, v)| Mutation::Set(k, v)),
        1 => any_json().prop_map(Mutation::Replace),
    ]
}

/// A mutation of a policy object, durations leaning to edge durations.
fn policy_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => mutation(POLICY_KEYS),
        3 => (proptest::sample::select(POLICY_KEYS), edge_duration())
            .prop_map(|(k, v)| Mutation::Set(k.to_owned(), v)),
    ]
}

fn stamp(minutes: i64, offset: (&str, i64)) -> String {
    let base = chrono::NaiveDate::from_ymd_opt(2026, 2, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default();
    let local = base + chrono::TimeDelta::minutes(minutes + offset.1 * 60);
    format!("{}{}", local.format("%Y-%m-%dT%H:%M:%S"), offset.0)
}

/// A valid wire session (spec/protocol.md) without its id: in February–March 2026,
/// closed or open, with idle intervals sometimes.
fn valid_session() -> impl Strategy<Value = J> {
    (
        proptest::sample::select(PRODUCTS),
        0i64..(50 * 24 * 60),
        0i64..(3 * 24 * 60),
        proptest::sample::select(OFFSETS),
        proptest::sample::select(ZONES),
        0u8..10,
        proptest::option::of("20[0-9]{2}"),
    )
        .prop_map(|(product, start, len, offset, zone, shape, version)| {
            let mut s = J::obj(vec![
                ("product", J::str(product)),
                ("start", J::Str(stamp(start, offset))),
            ]);
            let end = J::Str(stamp(start + len, offset));
            if shape < 2 {
                s.set("end", J::Null);
                s.set("last_seen", end);
            } else {
                s.set("end", end);
            }
            if shape == 3 && len > 30 {
                let idle = J::Arr(vec![
                    J::Str(stamp(start + 10, offset)),
                    J::Str(stamp(start + len - 5, offset)),
                ]);
                s.set("idle", J::Arr(vec![idle]));
            }
            if let Some(tz) = zone {
                s.set("tz", J::str(tz));
            }
            if let Some(v) = version {
                s.set("version", J::Str(v));
            }
            s
        })
}

/// A session as sent: valid, mutated slightly, or any JSON at all.
fn session() -> impl Strategy<Value = J> {
    prop_oneof![
        12 => (valid_session(), mutation(SESSION_KEYS)).prop_map(|(s, m)| m.apply(s)),
        1 => any_json(),
        // A session written as a list instead of an object, in the order of the wire
        // record's fields (what serde's derived Deserialize reads from a sequence); its
        // leading null becomes an id.
        1 => valid_session().prop_map(|s| {
            let field = |k: &str| s.get(k).cloned().unwrap_or(J::Null);
            J::Arr(vec![
                J::Null,
                J::Null,
                J::Null,
                field("product"),
                field("version"),
                field("start"),
                field("end"),
                field("last_seen"),
                field("tz"),
            ])
        }),
    ]
}

/// The base import: the catalog, entitlements, teams and policy the sessions use.
fn base_import() -> J {
    let product = |name: &str, rate: u64, exe: Option<&str>| {
        let mut p = J::obj(vec![
            ("name", J::str(name)),
            ("tokens_per_day", J::num(rate)),
        ]);
        if let Some(exe) = exe {
            p.set("match", J::Arr(vec![J::obj(vec![("exe", J::str(exe))])]));
        }
        p
    };
    J::obj(vec![
        (
            "catalog",
            J::obj(vec![
                ("acad", product("AutoCAD", 7, Some("acad.exe"))),
                ("revit", product("Revit", 10, Some("Revit.exe"))),
                ("dc", product("Desktop Connector", 0, None)),
            ]),
        ),
        (
            "entitlements",
            J::Arr(vec![
                J::obj(vec![
                    ("user", J::str("sophie")),
                    ("product", J::str("acad")),
                    ("plan", J::str("subscription")),
                    ("from", J::str("2026-02-06T00:00:00Z")),
                    ("to", J::str("2026-02-20T00:00:00Z")),
                ]),
                J::obj(vec![
                    ("user", J::str("marc")),
                    ("product", J::str("revit")),
                    ("plan", J::str("subscription")),
                    ("from", J::str("2026-02-09T00:00:00+01:00")),
                ]),
            ]),
        ),
        (
            "teams",
            J::obj(vec![(
                "design",
                J::obj(vec![
                    ("users", J::Arr(vec![J::str("sophie"), J::str("marc")])),
                    ("low_balance", J::num(100)),
                ]),
            )]),
        ),
        (
            "policy",
            J::obj(vec![
                ("window", J::str("24h")),
                ("min_session", J::str("5m")),
            ]),
        ),
    ])
}

/// An import: the base with its policy, one product, one entitlement, the teams and the
/// document itself each mutated (mostly not), or any JSON.
fn import() -> impl Strategy<Value = J> {
    let parts = (
        policy_mutation(),
        proptest::sample::select(&["acad", "revit", "dc", "ghost"][..]),
        mutation(PRODUCT_KEYS),
        0usize..2,
        mutation(ENTITLEMENT_KEYS),
        mutation(&["users", "low_balance"]),
        mutation(IMPORT_KEYS),
        proptest::option::weighted(0.15, any::<bool>()),
        proptest::option::weighted(0.3, edge_instant()),
    );
    prop_oneof![
        12 => parts.prop_map(
            |(policy, product, product_m, ent, ent_m, team_m, doc_m, replace, from)| {
                let mut doc = base_import();
                if let J::Obj(pairs) = &mut doc {
                    for (k, v) in pairs.iter_mut() {
                        match k.as_str() {
                            "policy" => *v = policy.apply(v.clone()),
                            "catalog" => {
                                let entry = v.get(product).cloned().unwrap_or_else(|| {
                                    J::obj(vec![("tokens_per_day", J::num(3))])
                                });
                                v.set(product, product_m.apply(entry));
                            }
                            "entitlements" => {
                                if let J::Arr(list) = v {
                                    let mut e = ent_m.apply(list[ent].clone());
                                    if let Some(from) = &from {
                                        e.set("from", from.clone());
                                    }
                                    list[ent] = e;
                                }
                            }
                            "teams" => {
                                if let Some(team) = v.get("design").cloned() {
                                    v.set("design", team_m.apply(team));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(replace) = replace {
                    doc.set("replace", J::Bool(replace));
                }
                doc_m.apply(doc)
            }
        ),
        1 => any_json(),
    ]
}

/// A purchase for the team, mutated slightly, or any JSON.
fn purchase() -> impl Strategy<Value = J> {
    (
        1u64..2000,
        proptest::option::of(edge_instant()),
        proptest::option::of(edge_instant()),
        mutation(PURCHASE_KEYS),
    )
        .prop_map(|(tokens, purchased, expires, m)| {
            let mut p = J::obj(vec![("team", J::str("design")), ("tokens", J::num(tokens))]);
            if let Some(at) = purchased {
                p.set("purchased_at", at);
            }
            if let Some(at) = expires {
                p.set("expires_at", at);
            }
            m.apply(p)
        })
}

/// A request body: JSON built by a generator, or bytes.
#[derive(Clone)]
pub enum Body {
    Json(J),
    Bytes(Vec<u8>),
}

impl Body {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Json(j) => j.text().into_bytes(),
            Body::Bytes(b) => b.clone(),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.bytes()).into_owned();
        if text.len() > 2_000 {
            write!(
                f,
                "{}… ({} bytes)",
                &text[..text.floor_char_boundary(2_000)],
                text.len()
            )
        } else {
            f.write_str(&text)
        }
    }
}

/// Bytes that are not quite JSON.
fn odd_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"{\"user\": \"sophie\", \"sessions\": [".to_vec()),
        Just(b"{\"user\": \"sophie\", \"sessions\": [{}]}}".to_vec()),
        Just(vec![0xff, 0xfe, b'{', b'}']),
        Just(b"{\"user\": \"s\xc3\x28\", \"sessions\": []}".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

/// One request of a case.
#[derive(Clone, Debug)]
pub enum Op {
    Import(Body),
    Purchase(Body),
    /// A sync from device `device` (index among the case's enrolled devices).
    Sync {
        device: usize,
        body: Body,
    },
}

impl Op {
    pub fn path(&self) -> &'static str {
        match self {
            Op::Import(_) => "/v1/admin/import",
            Op::Purchase(_) => "/v1/admin/purchases",
            Op::Sync { .. } => "/v1/sync",
        }
    }

    pub fn body(&self) -> &Body {
        match self {
            Op::Import(b) | Op::Purchase(b) | Op::Sync { body: b, .. } => b,
        }
    }
}

/// A sync body: a user, an agent time and sessions, any part mutated; or any JSON or
/// bytes at all.
fn sync_body() -> impl Strategy<Value = Body> {
    let sessions = proptest::collection::vec(session(), 0..6);
    prop_oneof![
        10 => (proptest::sample::select(USERS), sessions, mutation(SYNC_KEYS)).prop_map(
            |(user, sessions, m)| {
                let doc = J::obj(vec![
                    ("user", J::str(user)),
                    ("agent_time", J::str("2026-03-23T09:00:00Z")),
                    ("sessions", J::Arr(sessions)),
                ]);
                Body::Json(m.apply(doc))
            }
        ),
        1 => any_json().prop_map(Body::Json),
        1 => odd_bytes().prop_map(Body::Bytes),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => import().prop_map(|j| Op::Import(Body::Json(j))),
        1 => odd_bytes().prop_map(|b| Op::Import(Body::Bytes(b))),
        2 => purchase().prop_map(|j| Op::Purchase(Body::Json(j))),
        6 => (0usize..2, sync_body()).prop_map(|(device, body)| Op::Sync { device, body }),
    ]
}

/// A case: the base import and a purchase (so that most sessions are accounted and
/// priced), then a few requests of any kind.
#[derive(Clone, Debug)]
pub struct Case {
    pub ops: Vec<Op>,
}

/// Gives every session of the case an id of its own unless a mutation already set one:
/// copies of one id happen on purpose (a resent sync), not by chance.
fn number_sessions(ops: &mut [Op]) {
    let mut n = 0;
    for op in ops {
        if let Op::Sync {
            body: Body::Json(doc),
            ..
        } = op
            && let J::Obj(pairs) = doc
        {
            for (k, v) in pairs.iter_mut() {
                if let (true, J::Arr(list)) = (k == "sessions", v) {
                    for s in list.iter_mut() {
                        if let J::Arr(fields) = s
                            && fields.first() == Some(&J::Null)
                        {
                            n += 1;
                            fields[0] = J::Str(format!("s{n}"));
                        }
                        if matches!(s, J::Obj(_)) && s.get("id").is_none() {
                            n += 1;
                            let mut with_id = J::obj(vec![("id", J::Str(format!("s{n}")))]);
                            if let (J::Obj(head), J::Obj(rest)) = (&mut with_id, s.clone()) {
                                head.extend(rest);
                            }
                            *s = with_id;
                        }
                    }
                }
            }
        }
    }
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        import(),
        purchase(),
        proptest::collection::vec(op(), 1..10),
        proptest::option::weighted(0.3, 0usize..6),
    )
        .prop_map(|(first_import, first_purchase, rest, resend)| {
            let mut ops = vec![
                Op::Import(Body::Json(first_import)),
                Op::Purchase(Body::Json(first_purchase)),
            ];
            ops.extend(rest);
            number_sessions(&mut ops);
            // Send one sync again, as an agent that missed the answer does.
            if let Some(i) = resend {
                let syncs: Vec<Op> = ops
                    .iter()
                    .filter(|o| matches!(o, Op::Sync { .. }))
                    .cloned()
                    .collect();
                if !syncs.is_empty() {
                    ops.push(syncs[i % syncs.len()].clone());
                }
            }
            Case { ops }
        })
}
