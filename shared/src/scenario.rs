//! A whole accounting scenario (spec/replay.md): policy, catalog, entitlements and
//! sessions in, usage days and totals out.
//!
//! [`Scenario::parse`] checks every record first and reports the first bad one in file
//! order; [`Scenario::account`] then runs the walk for every (user, product) key. Keys
//! are independent, so both the per-record checks and the per-key walks run on all
//! cores; the result is the same as a sequential run, byte for byte.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use rayon::prelude::*;
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::accounting::{Span, Window, sort_spans, walk};
use crate::catalog::{Catalog, Product};
use crate::entitlement::{Entitlement, Pricing};
use crate::policy::{Policy, Rules};
use crate::record::{Problem, Record, RecordError};
use crate::session::{IdOnly, RawSession, Session};
use crate::time::{Zone, ZoneCache};
use crate::usage::{Report, Totals, UsageDay, price};

/// A checked scenario. Sessions are one copy per id (the winning copy), in the order
/// their ids first appeared.
#[derive(Debug, Clone)]
pub struct Scenario<'a> {
    pub policy: Policy,
    pub catalog: Catalog,
    pub entitlements: Vec<Entitlement>,
    pub sessions: Vec<(Session<'a>, Zone)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Policy,
    Catalog,
    Entitlements,
    Sessions,
}

/// The top level of a scenario, split into raw records without looking inside them.
#[derive(Default)]
struct Document<'a> {
    order: Vec<Section>,
    policy: Option<&'a RawValue>,
    catalog: Vec<(Cow<'a, str>, &'a RawValue)>,
    entitlements: Vec<&'a RawValue>,
    sessions: Vec<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Document<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Document<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scenario object with policy, catalog, entitlements and sessions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document<'a>, A::Error> {
                let mut doc = Document::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let section = match &*key {
                        "policy" => Section::Policy,
                        "catalog" => Section::Catalog,
                        "entitlements" => Section::Entitlements,
                        "sessions" => Section::Sessions,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if doc.order.contains(&section) {
                        return Err(de::Error::custom(format_args!("{key} appears twice")));
                    }
                    doc.order.push(section);
                    let named = |e: A::Error| de::Error::custom(format_args!("{key}: {e}"));
                    match section {
                        Section::Policy => doc.policy = Some(map.next_value().map_err(named)?),
                        Section::Catalog => {
                            doc.catalog = map.next_value::<Entries<'a>>().map_err(named)?.0
                        }
                        Section::Entitlements => {
                            doc.entitlements = nullable(map.next_value().map_err(named)?)
                        }
                        Section::Sessions => {
                            doc.sessions = nullable(map.next_value().map_err(named)?)
                        }
                    }
                }
                Ok(doc)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn nullable<T>(v: Option<Vec<T>>) -> Vec<T> {
    v.unwrap_or_default()
}

/// A JSON object's entries in file order, values left raw.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of products by id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'a>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Entries<'a>, E> {
                Ok(Entries(Vec::new()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The first error found, with where it stands in the file: (section's place among the
/// top-level keys, record's place in its section).
struct Found {
    at: (usize, usize),
    error: RecordError,
}

fn earliest(a: Option<Found>, b: Option<Found>) -> Option<Found> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.at < a.at { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl<'a> Scenario<'a> {
    /// Parses and checks a scenario. Every record is checked before anything is
    /// accounted; the error returned is the first bad record in file order.
    pub fn parse(input: &'a [u8]) -> Result<Scenario<'a>, RecordError> {
        let doc: Document<'a> = serde_json::from_slice(input)
            .map_err(|e| RecordError::new(Record::Document, Problem::Malformed(e.to_string())))?;
        let rank = |s: Section| doc.order.iter().position(|x| *x == s).unwrap_or(usize::MAX);

        let mut found = None;
        let policy = match doc.policy.map(|raw| serde_json::from_str(raw.get())) {
            None | Some(Ok(serde_json::Value::Null)) => Ok(Policy::default()),
            Some(Ok(value)) => Policy::from_json(&value),
            Some(Err(e)) => Err(Problem::Malformed(e.to_string())),
        };
        let policy = policy.unwrap_or_else(|problem| {
            found = earliest(
                found.take(),
                Some(Found {
                    at: (rank(Section::Policy), 0),
                    error: RecordError::new(Record::Policy, problem),
                }),
            );
            Policy::default()
        });

        let mut catalog = Catalog::new();
        for (i, (id, raw)) in doc.catalog.iter().enumerate() {
            let product = serde_json::from_str(raw.get())
                .map_err(|e| Problem::Malformed(e.to_string()))
                .and_then(|v| Product::from_json(&v))
                .and_then(|p| {
                    if catalog.contains_key(&**id) {
                        Err(Problem::Malformed("listed twice".into()))
                    } else {
                        Ok(p)
                    }
                });
            match product {
                Ok(p) => {
                    catalog.insert(id.to_string(), p);
                }
                Err(problem) => {
                    let error = RecordError::new(Record::Product(id.to_string()), problem);
                    found = earliest(
                        found,
                        Some(Found {
                            at: (rank(Section::Catalog), i),
                            error,
                        }),
                    );
                    break;
                }
            }
        }
        // A product whose entry is bad is still a product: sessions naming it are not
        // also reported as naming an unknown one.
        let known = |id: &str| catalog.contains_key(id) || doc.catalog.iter().any(|(k, _)| k == id);

        let mut entitlements = Vec::with_capacity(doc.entitlements.len());
        for (i, raw) in doc.entitlements.iter().enumerate() {
            let value: serde_json::Value = match serde_json::from_str(raw.get()) {
                Ok(v) => v,
                Err(e) => serde_json::Value::String(e.to_string()),
            };
            let checked = match &value {
                serde_json::Value::String(parse_error) => {
                    Err(Problem::Malformed(parse_error.clone()))
                }
                v => Entitlement::from_json(v).and_then(|e| {
                    if known(&e.product) {
                        Ok(e)
                    } else {
                        Err(Problem::UnknownProduct(e.product))
                    }
                }),
            };
            match checked {
                Ok(e) => entitlements.push(e),
                Err(problem) => {
                    let text = |k: &str| value.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                    let record = Record::Entitlement {
                        position: i + 1,
                        user: text("user"),
                        product: text("product"),
                    };
                    found = earliest(
                        found,
                        Some(Found {
                            at: (rank(Section::Entitlements), i),
                            error: RecordError::new(record, problem),
                        }),
                    );
                    break;
                }
            }
        }

        let checked: Vec<Result<(Session<'a>, Zone), Box<RecordError>>> = doc
            .sessions
            .par_iter()
            .enumerate()
            .with_min_len(1024)
            .map_init(ZoneCache::new, |zones, (i, raw)| {
                check_session(raw, i, &known, zones)
            })
            .collect();
        let session_rank = rank(Section::Sessions);
        let first_bad = checked.iter().position(Result::is_err);
        if let Some(i) = first_bad
            && let Some(Err(e)) = checked.get(i)
        {
            found = earliest(
                found,
                Some(Found {
                    at: (session_rank, i),
                    error: (**e).clone(),
                }),
            );
        }

        // Copies: one winner per id; a copy that disagrees on an identity field is an
        // error at that copy. Only copies before the first bad record can matter.
        let limit = first_bad.unwrap_or(checked.len());
        let mut by_id: FxHashMap<&str, u32> =
            FxHashMap::with_capacity_and_hasher(limit, FxBuildHasher);
        let mut conflict = None;
        for (i, entry) in checked[..limit].iter().enumerate() {
            let Ok((s, _)) = entry else { continue };
            match by_id.entry(&s.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i as u32);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let Ok((winner, _)) = &checked[*o.get() as usize] else {
                        continue;
                    };
                    if let Some(field) = s.conflict_with(winner) {
                        let record = Record::Session {
                            id: Some(s.id.to_string()),
                            position: i + 1,
                        };
                        conflict = Some(Found {
                            at: (session_rank, i),
                            error: RecordError::new(record, Problem::ConflictingCopies(field)),
                        });
                        break;
                    }
                    if s.copy_order(winner) == Ordering::Greater {
                        o.insert(i as u32);
                    }
                }
            }
        }
        if let Some(found) = earliest(found, conflict) {
            return Err(found.error);
        }
        let mut wins = vec![false; checked.len()];
        for &i in by_id.values() {
            wins[i as usize] = true;
        }
        drop(by_id);
        let sessions = checked
            .into_iter()
            .zip(wins)
            .filter_map(|(c, w)| if w { c.ok() } else { None })
            .collect();
        Ok(Scenario {
            policy,
            catalog,
            entitlements,
            sessions,
        })
    }

    /// Accounts every (user, product) key: the usage days sorted by user, product and
    /// window start, and their totals.
    pub fn account(&self) -> Report<'_> {
        let rules = self.policy.rules();
        let mut keys: FxHashMap<(&str, &str), u32> = FxHashMap::default();
        let mut members: Vec<Vec<u32>> = Vec::new();
        for (i, (s, _)) in self.sessions.iter().enumerate() {
            let key = (s.user.as_deref().unwrap_or_default(), &*s.product);
            let k = *keys.entry(key).or_insert_with(|| {
                members.push(Vec::new());
                (members.len() - 1) as u32
            });
            members[k as usize].push(i as u32);
        }
        let mut order: Vec<((&str, &str), u32)> = keys.into_iter().collect();
        order.par_sort_unstable();

        let mut held: FxHashMap<(&str, &str), Vec<&Entitlement>> = FxHashMap::default();
        for e in &self.entitlements {
            held.entry((&e.user, &e.product)).or_default().push(e);
        }

        let per_key: Vec<(Vec<UsageDay<'_>>, Totals)> = order
            .par_iter()
            .with_min_len(64)
            .map_init(
                || (Vec::new(), Vec::new()),
                |(spans, windows), &((user, product), k)| {
                    let Some(rate) = self.catalog.get(product).map(|p| p.tokens_per_day) else {
                        return (Vec::new(), Totals::default());
                    };
                    let pricing = Pricing {
                        tokens_per_day: rate,
                        entitlements: held.get(&(user, product)).map_or(&[], Vec::as_slice),
                    };
                    spans.clear();
                    spans.extend(members[k as usize].iter().map(|&i| {
                        let (s, zone) = &self.sessions[i as usize];
                        Span::of(s, *zone)
                    }));
                    let mut rows = Vec::new();
                    account_key(user, product, spans, windows, &rules, &pricing, &mut rows);
                    let totals = Totals::of_key(&rows);
                    (rows, totals)
                },
            )
            .collect();
        let totals = per_key.iter().fold(Totals::default(), |t, (_, k)| t + *k);
        let mut usage_days = Vec::with_capacity(per_key.iter().map(|(r, _)| r.len()).sum());
        for (rows, _) in per_key {
            usage_days.extend(rows);
        }
        Report { usage_days, totals }
    }
}

/// Accounts one key: sorts its spans, walks them, dates and prices the windows.
/// `windows` is scratch space, reused across keys.
pub fn account_key<'a>(
    user: &'a str,
    product: &'a str,
    spans: &mut [Span<'_>],
    windows: &mut Vec<Window>,
    rules: &Rules,
    pricing: &Pricing<'_>,
    out: &mut Vec<UsageDay<'a>>,
) {
    sort_spans(spans);
    windows.clear();
    walk(spans, rules, windows);
    price(user, product, windows, rules, pricing, out);
}

fn check_session<'a>(
    raw: &'a RawValue,
    index: usize,
    known: &dyn Fn(&str) -> bool,
    zones: &mut ZoneCache,
) -> Result<(Session<'a>, Zone), Box<RecordError>> {
    let fail = |id: Option<&str>, problem| {
        Box::new(RecordError::new(
            Record::Session {
                id: id.map(str::to_owned),
                position: index + 1,
            },
            problem,
        ))
    };
    let parsed: RawSession<'a> = match serde_json::from_str(raw.get()) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly<'_>>(raw.get())
                .ok()
                .and_then(|i| i.id);
            return Err(fail(id.as_deref(), Problem::Malformed(e.to_string())));
        }
    };
    let id = parsed.id.clone();
    let id = id.as_deref();
    if parsed.user.is_none() {
        return Err(fail(id, Problem::Missing("user")));
    }
    if parsed.device.is_none() {
        return Err(fail(id, Problem::Missing("device")));
    }
    let (session, zone) = parsed.check(zones).map_err(|p| fail(id, p))?;
    if !known(&session.product) {
        return Err(fail(
            id,
            Problem::UnknownProduct(session.product.to_string()),
        ));
    }
    Ok((session, zone))
}

/// Parses, checks and accounts a scenario in one call, detached from the input.
pub fn replay(input: &[u8]) -> Result<Report<'static>, RecordError> {
    let scenario = Scenario::parse(input)?;
    let report = scenario.account();
    // The report borrows from the scenario; detach the few owned strings it needs.
    Ok(Report {
        usage_days: report
            .usage_days
            .into_iter()
            .map(|r| UsageDay {
                user: Cow::Owned(r.user.into_owned()),
                product: Cow::Owned(r.product.into_owned()),
                ..r
            })
            .collect(),
        totals: report.totals,
    })
}
