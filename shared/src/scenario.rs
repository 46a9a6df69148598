//! A whole accounting scenario (spec/replay.md): policy, catalog, entitlements and
//! sessions in, usage days and totals out.
//!
//! [`Scenario::parse`] checks every record first and reports the first bad one in file
//! order; [`Scenario::account`] then runs the walk for every (user, product) key. The
//! result is the same as a sequential run, byte for byte, but the work is arranged for
//! a million sessions a second on two cores:
//!
//! - the split of the `sessions` array into raw records streams chunks to worker
//!   threads while it goes on, so splitting and checking overlap;
//! - while a record is hot in cache its worker computes a compact [`Slot`] (key hash,
//!   start, effective end, zone, id), so grouping and walking never chase pointers
//!   back into the big session records or the input text;
//! - copies are found by sorting id hashes, keys by sorting slots; hash collisions are
//!   checked against the strings, so the hashes only speed things up and never decide.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHasher};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::accounting::{Span, Window, walk};
use crate::catalog::{Catalog, Product};
use crate::entitlement::{Entitlement, Pricing};
use crate::policy::{Policy, Rollover, Rules};
use crate::record::{Problem, Record, RecordError};
use crate::session::{IdOnly, Interval, RawSession, Session};
use crate::time::{Nanos, Zone, ZoneCache};
use crate::usage::{Report, RowWriter, Totals, UsageDay, frame, price, priced};

/// Sessions are checked in chunks of this many records (a power of two, so a record's
/// place in the file maps to its chunk by a shift).
const CHUNK_BITS: u32 = 13;
const CHUNK: usize = 1 << CHUNK_BITS;

/// A checked scenario, ready to account.
#[derive(Debug)]
pub struct Scenario<'a> {
    pub policy: Policy,
    pub catalog: Catalog,
    pub entitlements: Vec<Entitlement>,
    /// Every session record in file order, in chunks of [`CHUNK`].
    records: Vec<Vec<Checked<'a>>>,
    /// The winning copy of each id, grouped by key, each key's in walk order.
    slots: Vec<Slot>,
    /// Keys sorted by (user, product), each a range of `slots`.
    keys: Vec<KeyRun>,
}

/// A checked session record: what grouping and the walk need, computed while the record
/// is in cache. The full [`Session`] is parsed again from `raw` in the rare cases that
/// need it (copies of one id), which keeps a million records at ~130 bytes each.
#[derive(Debug)]
struct Checked<'a> {
    /// The record's JSON text.
    raw: &'a str,
    id: Cow<'a, str>,
    user: Cow<'a, str>,
    product: Cow<'a, str>,
    start: Nanos,
    end: Nanos,
    zone: Zone,
    idle: Vec<Interval>,
    key_hash: u64,
    id_hash: u64,
}

impl<'a> Checked<'a> {
    /// The full session again. It passed these same checks once, so this cannot fail;
    /// if it somehow did, the caller treats the record as having no usable copy data.
    fn session(&self) -> Option<Session<'a>> {
        let raw: RawSession<'a> = serde_json::from_str(self.raw).ok()?;
        raw.check(&mut ZoneCache::new()).ok().map(|(s, _)| s)
    }
}

/// The hot part of a winning session: 40 bytes that grouping sorts and the walk reads.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key_hash: u64,
    start: Nanos,
    end: Nanos,
    zone: Zone,
    /// Place of the record in the file (from 0).
    index: u32,
}

/// One (user, product) key: its slots, and a record to read the user and product from.
#[derive(Debug, Clone)]
struct KeyRun {
    first: u32,
    slots: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Policy,
    Catalog,
    Entitlements,
    Sessions,
}

/// What checking one chunk of session records gives: the records up to the chunk's
/// first bad one, and that one's error.
struct ChunkOut<'a> {
    base: usize,
    records: Vec<Checked<'a>>,
    error: Option<(usize, Box<RecordError>)>,
    /// The error is that the text is not one JSON session object (not a bad field).
    unparsable: bool,
}

/// The top level of a scenario: sections in file order, records left raw, sessions
/// already handed to workers.
#[derive(Default)]
struct Document<'a> {
    order: Vec<Section>,
    policy: Option<&'a RawValue>,
    catalog: Vec<(Cow<'a, str>, &'a RawValue)>,
    entitlements: Vec<&'a RawValue>,
}

/// Deserialises the document while spawning session chunks onto `scope`.
struct DocumentSeed<'s, 'scope, 'a> {
    scope: &'s rayon::Scope<'scope>,
    out: &'scope Mutex<Vec<ChunkOut<'a>>>,
    /// Instead of streaming the sessions, record where the `sessions` array starts
    /// (its offset from the given base address); see [`Scenario::parse_by_lines`].
    probe: Option<(usize, &'s OnceLock<usize>)>,
}

impl<'de: 'a, 'a: 'scope, 'scope> DeserializeSeed<'de> for DocumentSeed<'_, 'scope, 'a> {
    type Value = Document<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Document<'a>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a: 'scope, 'scope> Visitor<'de> for DocumentSeed<'_, 'scope, 'a> {
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
                Section::Catalog => doc.catalog = map.next_value::<Entries<'a>>().map_err(named)?.0,
                Section::Entitlements => {
                    doc.entitlements = map
                        .next_value::<Option<_>>()
                        .map_err(named)?
                        .unwrap_or_default()
                }
                Section::Sessions => match self.probe {
                    Some((base, at)) => {
                        let raw: &RawValue = map.next_value().map_err(named)?;
                        let _ = at.set((raw.get().as_ptr() as usize).wrapping_sub(base));
                    }
                    None => map
                        .next_value_seed(SessionsSeed {
                            scope: self.scope,
                            out: self.out,
                        })
                        .map_err(named)?,
                },
            }
        }
        Ok(doc)
    }
}

/// Splits the `sessions` array into raw records and spawns a check per chunk.
struct SessionsSeed<'s, 'scope, 'a> {
    scope: &'s rayon::Scope<'scope>,
    out: &'scope Mutex<Vec<ChunkOut<'a>>>,
}

impl<'de: 'a, 'a: 'scope, 'scope> DeserializeSeed<'de> for SessionsSeed<'_, 'scope, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a: 'scope, 'scope> Visitor<'de> for SessionsSeed<'_, 'scope, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of sessions")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut base = 0;
        let mut chunk: Vec<&'a str> = Vec::with_capacity(CHUNK);
        let out = self.out;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            chunk.push(raw.get());
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                self.scope
                    .spawn(move |_| push_chunk(out, check_chunk(base, &full)));
                base += CHUNK;
            }
        }
        if !chunk.is_empty() {
            push_chunk(out, check_chunk(base, &chunk));
        }
        Ok(())
    }
}

fn push_chunk<'a>(out: &Mutex<Vec<ChunkOut<'a>>>, chunk: ChunkOut<'a>) {
    // A poisoned lock means a checker panicked; its chunk is missing and the scope
    // re-raises the panic, so pushing into the inner value is safe.
    out.lock().unwrap_or_else(|p| p.into_inner()).push(chunk);
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

/// An error with where it stands in the file: (section's place among the top-level
/// keys, record's place in its section).
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

fn session_error(index: usize, id: Option<&str>, problem: Problem) -> RecordError {
    RecordError::new(
        Record::Session {
            // An empty id names nothing: the record is named by its position instead.
            id: id.filter(|i| !i.is_empty()).map(str::to_owned),
            position: index + 1,
        },
        problem,
    )
}

fn key_hash(user: &str, product: &str) -> u64 {
    let mut h = FxHasher::default();
    user.hash(&mut h);
    product.hash(&mut h);
    h.finish()
}

fn id_hash(id: &str) -> u64 {
    let mut h = FxHasher::default();
    id.hash(&mut h);
    h.finish()
}

/// A record's text as the splitter found it: already a `str` (the general path, whose
/// parser checked it), or bytes of one line, checked as UTF-8 here, on all cores, rather
/// than by the splitter on one.
trait RecordText<'a> {
    fn text(&self) -> Option<&'a str>;
}

impl<'a> RecordText<'a> for &'a str {
    fn text(&self) -> Option<&'a str> {
        Some(self)
    }
}

impl<'a> RecordText<'a> for &'a [u8] {
    fn text(&self) -> Option<&'a str> {
        std::str::from_utf8(self).ok()
    }
}

fn check_chunk<'a, T: RecordText<'a>>(base: usize, texts: &[T]) -> ChunkOut<'a> {
    let mut zones = ZoneCache::new();
    let mut records = Vec::with_capacity(texts.len());
    for (offset, text) in texts.iter().enumerate() {
        let checked = match text.text() {
            Some(text) => check_session(text, &mut zones),
            // Not text: the general path parses the file and names the error.
            None => Err((None, Problem::Malformed("not UTF-8".into()), true)),
        };
        match checked {
            Ok(c) => records.push(c),
            Err((id, problem, unparsable)) => {
                let index = base + offset;
                let error = Box::new(session_error(index, id.as_deref(), problem));
                return ChunkOut {
                    base,
                    records,
                    error: Some((index, error)),
                    unparsable,
                };
            }
        }
    }
    ChunkOut {
        base,
        records,
        error: None,
        unparsable: false,
    }
}

/// A session's problem, the id to name it by, and whether the text was not even one
/// JSON session object.
type SessionFailure = (Option<String>, Problem, bool);

fn check_session<'a>(text: &'a str, zones: &mut ZoneCache) -> Result<Checked<'a>, SessionFailure> {
    let parsed: RawSession<'a> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|i| i.id);
            return Err((
                id.map(Cow::into_owned),
                Problem::Malformed(e.to_string()),
                true,
            ));
        }
    };
    let fail = |id: &Option<Cow<'a, str>>, p| (id.as_deref().map(str::to_owned), p, false);
    if parsed.user.is_none() {
        return Err(fail(&parsed.id, Problem::Missing("user")));
    }
    if parsed.device.is_none() {
        return Err(fail(&parsed.id, Problem::Missing("device")));
    }
    let id = parsed.id.clone();
    let (session, zone) = parsed.check(zones).map_err(|p| fail(&id, p))?;
    let (start, end) = (session.start_nanos(), session.end_nanos());
    let Session {
        id,
        user,
        product,
        idle,
        ..
    } = session;
    let user = user.unwrap_or_default();
    Ok(Checked {
        raw: text,
        key_hash: key_hash(&user, &product),
        id_hash: id_hash(&id),
        id,
        user,
        product,
        start,
        end,
        zone,
        idle,
    })
}

impl<'a> Scenario<'a> {
    /// Parses and checks a scenario. Every record is checked before anything is
    /// accounted; the error returned is the first bad record in file order.
    pub fn parse(input: &'a [u8]) -> Result<Scenario<'a>, RecordError> {
        if let Some(result) = Self::parse_by_lines(input) {
            return result;
        }
        let out = Mutex::new(Vec::new());
        let doc = rayon::scope(|scope| {
            let mut de = serde_json::Deserializer::from_slice(input);
            let doc = DocumentSeed {
                scope,
                out: &out,
                probe: None,
            }
            .deserialize(&mut de)?;
            de.end().map(|()| doc)
        })
        .map_err(|e| RecordError::new(Record::Document, Problem::Malformed(e.to_string())))?;
        let mut chunks = out.into_inner().unwrap_or_else(|p| p.into_inner());
        chunks.sort_unstable_by_key(|c| c.base);
        Self::assemble(&doc, chunks)
    }

    /// The fast path for the way machines write a scenario: one session per line.
    ///
    /// JSON strings cannot hold a raw newline, so when every line of the `sessions`
    /// array holds exactly one session object (with its comma), splitting at newlines
    /// splits exactly; then every record is parsed on all cores from the start, instead
    /// of one core first scanning the array to find where records begin. The split is
    /// proven, not assumed: the rest of the document is parsed with the array cut out
    /// (`"sessions": []`), which must put the top-level `sessions` array exactly where
    /// the cut was, and every line must parse as one complete session object. If
    /// anything does not hold, `None`: the general path parses the file (and reports
    /// any error exactly).
    fn parse_by_lines(input: &'a [u8]) -> Option<Result<Scenario<'a>, RecordError>> {
        let (open, close, lines) = split_lines(input)?;
        let mut cut = Vec::with_capacity(input.len() - (close - open) + 2);
        cut.extend_from_slice(&input[..open]);
        cut.extend_from_slice(b"[]");
        cut.extend_from_slice(&input[close..]);
        let at = OnceLock::new();
        let out = Mutex::new(Vec::new());
        let doc = rayon::scope(|scope| {
            let mut de = serde_json::Deserializer::from_slice(&cut);
            let seed = DocumentSeed {
                scope,
                out: &out,
                probe: Some((cut.as_ptr() as usize, &at)),
            };
            let doc = seed.deserialize(&mut de).ok()?;
            de.end().ok().map(|()| doc)
        })?;
        if at.get() != Some(&open) {
            return None;
        }
        let chunks: Vec<ChunkOut<'a>> = lines
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, texts)| check_chunk(c << CHUNK_BITS, texts))
            .collect();
        if chunks.iter().any(|c| c.unparsable) {
            return None;
        }
        Some(Self::assemble(&doc, chunks))
    }

    /// Checks the document's sections and the session records (chunks in file order),
    /// resolves copies and groups keys: the first error in file order, or the scenario.
    fn assemble(
        doc: &Document<'_>,
        chunks: Vec<ChunkOut<'a>>,
    ) -> Result<Scenario<'a>, RecordError> {
        let rank = |s: Section| doc.order.iter().position(|x| *x == s).unwrap_or(usize::MAX);

        let mut found = None;
        let (policy, problem) = parse_policy(doc.policy);
        if let Some(problem) = problem {
            found = earliest(
                found,
                Some(Found {
                    at: (rank(Section::Policy), 0),
                    error: RecordError::new(Record::Policy, problem),
                }),
            );
        }
        let (catalog, bad_product) = parse_catalog(&doc.catalog);
        if let Some((i, error)) = bad_product {
            found = earliest(
                found,
                Some(Found {
                    at: (rank(Section::Catalog), i),
                    error,
                }),
            );
        }
        // A product whose entry is bad is still a product: sessions naming it are not
        // also reported as naming an unknown one.
        let known = |id: &str| catalog.contains_key(id) || doc.catalog.iter().any(|(k, _)| k == id);
        let (entitlements, bad_entitlement) = parse_entitlements(&doc.entitlements, &known);
        if let Some((i, error)) = bad_entitlement {
            found = earliest(
                found,
                Some(Found {
                    at: (rank(Section::Entitlements), i),
                    error,
                }),
            );
        }

        let session_rank = rank(Section::Sessions);
        let mut records: Vec<Vec<Checked<'a>>> = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let stop = chunk.error.is_some();
            if let Some((i, error)) = chunk.error {
                found = earliest(
                    found,
                    Some(Found {
                        at: (session_rank, i),
                        error: *error,
                    }),
                );
            }
            records.push(chunk.records);
            if stop {
                break; // later records cannot hold an earlier error
            }
        }

        let (lost, conflict) = resolve_copies(&records);
        if let Some((i, error)) = conflict {
            found = earliest(
                found,
                Some(Found {
                    at: (session_rank, i),
                    error,
                }),
            );
        }
        // Products are checked once per key; only when some key's product is unknown
        // are the records searched for the first session naming one.
        let (slots, keys, any_unknown) = group(&records, &lost, &known);
        if any_unknown {
            let first = records
                .iter()
                .flatten()
                .enumerate()
                .find(|(_, r)| !known(&r.product));
            if let Some((i, r)) = first {
                let error = session_error(
                    i,
                    Some(&r.id),
                    Problem::UnknownProduct(r.product.to_string()),
                );
                found = earliest(
                    found,
                    Some(Found {
                        at: (session_rank, i),
                        error,
                    }),
                );
            }
        }
        if let Some(found) = found {
            return Err(found.error);
        }
        Ok(Scenario {
            policy,
            catalog,
            entitlements,
            records,
            slots,
            keys,
        })
    }

    /// The winning copy of every id with its zone, grouped by key (parsed again from
    /// the input, so this costs a parse per session).
    pub fn sessions(&self) -> impl Iterator<Item = (Session<'a>, Zone)> + '_ {
        self.slots.iter().filter_map(|s| {
            let c = self.record(s.index as usize);
            c.session().map(|session| (session, c.zone))
        })
    }

    fn record(&self, index: usize) -> &Checked<'a> {
        &self.records[index >> CHUNK_BITS][index & (CHUNK - 1)]
    }

    fn owner(&self, key: &KeyRun) -> (&str, &str) {
        owner(self.record(key.first as usize))
    }

    /// Accounts every (user, product) key: the usage days sorted by user, product and
    /// window start, and their totals.
    pub fn account(&self) -> Report<'_> {
        let rules = self.policy.rules();
        let held = self.held();
        let per_key: Vec<(Vec<UsageDay<'_>>, Totals)> = self
            .keys
            .par_iter()
            .with_min_len(64)
            .map_init(Scratch::default, |scratch, key| {
                let (user, product) = self.owner(key);
                let pricing = pricing(&self.catalog, &held, user, product);
                self.walk_key(key, &rules, scratch);
                let mut rows = Vec::with_capacity(scratch.windows.len());
                price(user, product, &scratch.windows, &rules, &pricing, &mut rows);
                let totals = Totals::of_key(&rows);
                (rows, totals)
            })
            .collect();
        let totals = per_key.iter().fold(Totals::default(), |t, (_, k)| t + *k);
        let mut usage_days = Vec::with_capacity(per_key.iter().map(|(r, _)| r.len()).sum());
        for (rows, _) in per_key {
            usage_days.extend(rows);
        }
        Report { usage_days, totals }
    }

    /// Accounts every key and writes the report to `w` as it goes: the same bytes as
    /// `self.account().write_json(w)`, without holding every usage day in memory.
    /// Keys are walked and formatted on all cores, a bounded batch at a time.
    pub fn write_json<W: Write>(&self, w: &mut W) -> io::Result<Totals> {
        const KEYS_PER_TASK: usize = 256;
        const TASKS_PER_BATCH: usize = 32;
        let rules = self.policy.rules();
        let held = self.held();
        w.write_all(frame::OPEN)?;
        let mut totals = Totals::default();
        let mut any = false;
        // Batches are formatted on a thread of their own while this one writes the
        // previous batch: writing a hundred megabytes is serial work, and it no longer
        // leaves the other cores waiting.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(Vec<u8>, Totals)>>(1);
        let (rules, held) = (&rules, &held);
        std::thread::scope(|scope| {
            // `tx` moves in, so the channel closes when the last batch is sent.
            scope.spawn(move || {
                for batch in self.keys.chunks(KEYS_PER_TASK * TASKS_PER_BATCH) {
                    let parts = batch
                        .par_chunks(KEYS_PER_TASK)
                        .map_init(Scratch::default, |scratch, keys| {
                            self.format_keys(keys, rules, held, scratch)
                        })
                        .collect();
                    if tx.send(parts).is_err() {
                        return; // the writer stopped on an error
                    }
                }
            });
            for parts in rx {
                for (buf, part) in parts {
                    totals = totals + part;
                    if buf.is_empty() {
                        continue;
                    }
                    if any {
                        w.write_all(&buf)?;
                    } else {
                        w.write_all(frame::FIRST)?;
                        w.write_all(&buf[frame::NEXT.len()..])?;
                        any = true;
                    }
                }
            }
            Ok::<(), io::Error>(())
        })?;
        frame::close(w, any, &totals)?;
        Ok(totals)
    }

    /// Walks, prices and formats some keys: their rows (each led by a separator) and
    /// totals.
    fn format_keys<'s>(
        &'s self,
        keys: &[KeyRun],
        rules: &Rules,
        held: &FxHashMap<(&str, &str), Vec<&Entitlement>>,
        scratch: &mut Scratch<'s>,
    ) -> (Vec<u8>, Totals) {
        let mut buf = Vec::with_capacity(keys.len() * 4 * 180);
        let mut part = Totals::default();
        let mut writer = RowWriter::default();
        for key in keys {
            let (user, product) = self.owner(key);
            let pricing = pricing(&self.catalog, held, user, product);
            self.walk_key(key, rules, scratch);
            writer.key(user, product);
            scratch.days.clear();
            for window in &scratch.windows {
                let p = priced(window, rules, &pricing);
                buf.extend_from_slice(frame::NEXT);
                writer.row(&mut buf, &p);
                part.tokens += p.tokens;
                scratch.days.push(p.day);
            }
            scratch.days.sort_unstable();
            scratch.days.dedup();
            part.days_used += scratch.days.len() as u64;
        }
        (buf, part)
    }

    /// Entitlements by (user, product).
    fn held(&self) -> FxHashMap<(&str, &str), Vec<&Entitlement>> {
        let mut held: FxHashMap<(&str, &str), Vec<&Entitlement>> = FxHashMap::default();
        for e in &self.entitlements {
            held.entry((&e.user, &e.product)).or_default().push(e);
        }
        held
    }

    /// Walks one key into `scratch.windows`.
    fn walk_key<'s>(&'s self, key: &KeyRun, rules: &Rules, scratch: &mut Scratch<'s>) {
        scratch.spans.clear();
        scratch
            .spans
            .extend(self.slots[key.slots.clone()].iter().map(|s| Span {
                start: s.start,
                end: s.end,
                zone: s.zone,
                // Idle intervals are only read under `rollover = active`; fetching them
                // costs a trip to the full record.
                idle: if rules.rollover == Rollover::Active {
                    &self.record(s.index as usize).idle
                } else {
                    &[]
                },
            }));
        scratch.windows.clear();
        walk(&scratch.spans, rules, &mut scratch.windows);
    }
}

/// Buffers reused from key to key by one worker.
#[derive(Default)]
struct Scratch<'s> {
    spans: Vec<Span<'s>>,
    windows: Vec<Window>,
    days: Vec<chrono::NaiveDate>,
}

fn pricing<'e, 'k>(
    catalog: &Catalog,
    held: &'e FxHashMap<(&'k str, &'k str), Vec<&'e Entitlement>>,
    user: &'k str,
    product: &'k str,
) -> Pricing<'e> {
    Pricing {
        tokens_per_day: catalog.get(product).map_or(0, |p| p.tokens_per_day),
        entitlements: held.get(&(user, product)).map_or(&[][..], Vec::as_slice),
    }
}

/// Finds the `sessions` array written one session per line: the offsets of its `[` and
/// just past its `]`, and each line's session text. `None` when the array is not laid
/// out that way (the caller then takes the general path). Nothing here is trusted: see
/// [`Scenario::parse_by_lines`] for how the result is proven.
fn split_lines(input: &[u8]) -> Option<(usize, usize, Vec<&[u8]>)> {
    let key = memchr::memmem::find(input, b"\"sessions\"")?;
    let skip_ws = |mut p: usize| {
        while p < input.len() && input[p].is_ascii_whitespace() {
            p += 1;
        }
        p
    };
    let colon = skip_ws(key + b"\"sessions\"".len());
    if input.get(colon) != Some(&b':') {
        return None;
    }
    let open = skip_ws(colon + 1);
    if input.get(open) != Some(&b'[') {
        return None;
    }
    let mut lines = Vec::new();
    let mut needs_comma = false; // the previous element had no comma: only `]` may follow
    let mut start = open + 1;
    loop {
        let end = memchr::memchr(b'\n', &input[start..]).map_or(input.len(), |n| start + n);
        let line = input[start..end].trim_ascii();
        if line.first() == Some(&b']') {
            let at = start + (input[start..end].len() - input[start..end].trim_ascii_start().len());
            return Some((open, at + 1, lines));
        }
        if !line.is_empty() {
            if needs_comma {
                return None;
            }
            let (element, closes) = match line.strip_suffix(b",") {
                Some(e) => (e.trim_ascii_end(), false),
                None => {
                    needs_comma = true;
                    // The last element may carry the closing bracket: `{...}]` or `{...}]}`.
                    if line.last() == Some(&b'}') && !line.ends_with(b"]}") {
                        (line, false)
                    } else {
                        let close = line
                            .iter()
                            .enumerate()
                            .rev()
                            .find(|(p, b)| {
                                **b == b']' && line[..*p].trim_ascii_end().last() == Some(&b'}')
                            })?
                            .0;
                        (line[..close].trim_ascii_end(), true)
                    }
                }
            };
            if element.first() != Some(&b'{') {
                return None;
            }
            lines.push(element);
            if closes {
                let offset = element.as_ptr() as usize - input.as_ptr() as usize + element.len();
                let close = offset + input[offset..end].iter().position(|b| *b == b']')?;
                return Some((open, close + 1, lines));
            }
        }
        if end == input.len() {
            return None;
        }
        start = end + 1;
    }
}

fn parse_policy(raw: Option<&RawValue>) -> (Policy, Option<Problem>) {
    let parsed = match raw.map(|raw| serde_json::from_str(raw.get())) {
        None | Some(Ok(serde_json::Value::Null)) => Ok(Policy::default()),
        Some(Ok(value)) => Policy::from_json(&value),
        Some(Err(e)) => Err(Problem::Malformed(e.to_string())),
    };
    match parsed {
        Ok(p) => (p, None),
        Err(problem) => (Policy::default(), Some(problem)),
    }
}

fn parse_catalog(entries: &[(Cow<'_, str>, &RawValue)]) -> (Catalog, Option<(usize, RecordError)>) {
    let mut catalog = Catalog::new();
    for (i, (id, raw)) in entries.iter().enumerate() {
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
                return (
                    catalog,
                    Some((
                        i,
                        RecordError::new(Record::Product(id.to_string()), problem),
                    )),
                );
            }
        }
    }
    (catalog, None)
}

fn parse_entitlements(
    raws: &[&RawValue],
    known: &dyn Fn(&str) -> bool,
) -> (Vec<Entitlement>, Option<(usize, RecordError)>) {
    let mut entitlements = Vec::with_capacity(raws.len());
    for (i, raw) in raws.iter().enumerate() {
        let value: Result<serde_json::Value, _> = serde_json::from_str(raw.get());
        let checked = match &value {
            Err(e) => Err(Problem::Malformed(e.to_string())),
            Ok(v) => Entitlement::from_json(v).and_then(|e| {
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
                let text = |k: &str| {
                    value
                        .as_ref()
                        .ok()
                        .and_then(|v| v.get(k))
                        .and_then(|x| x.as_str())
                        .map(str::to_owned)
                };
                let record = Record::Entitlement {
                    position: i + 1,
                    user: text("user"),
                    product: text("product"),
                };
                return (entitlements, Some((i, RecordError::new(record, problem))));
            }
        }
    }
    (entitlements, None)
}

/// Finds the copies of each id: marks every copy but the winner as lost, and reports
/// the first copy (in file order) that disagrees with an earlier one.
fn resolve_copies(records: &[Vec<Checked<'_>>]) -> (Vec<bool>, Option<(usize, RecordError)>) {
    let total: usize = records.iter().map(Vec::len).sum();
    let mut by_hash: Vec<(u64, u32)> = records
        .par_iter()
        .enumerate()
        .flat_map_iter(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(move |(o, r)| (r.id_hash, ((c << CHUNK_BITS) + o) as u32))
        })
        .collect();
    by_hash.par_sort_unstable();
    let record = |i: u32| &records[i as usize >> CHUNK_BITS][i as usize & (CHUNK - 1)];
    // Runs of one hash with more than one member, found and settled on all cores: copies
    // are few (a few percent of records), but settling them parses each copy again.
    let n = by_hash.len();
    let runs: Vec<usize> = (0..n)
        .into_par_iter()
        .with_min_len(1 << 14)
        .filter(|&i| {
            i + 1 < n
                && by_hash[i + 1].0 == by_hash[i].0
                && (i == 0 || by_hash[i - 1].0 != by_hash[i].0)
        })
        .collect();
    let settled: Vec<Settled> = runs
        .par_iter()
        .with_min_len(256)
        .map(|&run| {
            let end = by_hash[run..]
                .iter()
                .position(|(h, _)| *h != by_hash[run].0)
                .map_or(n, |len| run + len);
            settle_copies(by_hash[run..end].iter().map(|(_, i)| *i), &record)
        })
        .collect();
    let mut lost = vec![false; total];
    let mut conflict: Option<(usize, RecordError)> = None;
    for (losers, found) in settled {
        for i in losers {
            lost[i as usize] = true;
        }
        if let Some((at, error)) = found
            && conflict.as_ref().is_none_or(|(first, _)| at < *first)
        {
            conflict = Some((at, error));
        }
    }
    (lost, conflict)
}

/// What settling one run of copies gives: the records that lost, and the run's first
/// conflicting copy (its place in the file and the error).
type Settled = (Vec<u32>, Option<(usize, RecordError)>);

/// Settles the records of one hash run (in file order): which lose to another copy of
/// their id, and the first copy that conflicts with the one it met. A hash collision
/// puts two ids in one run; they are told apart by the id itself.
fn settle_copies<'r, 'a: 'r>(
    members: impl Iterator<Item = u32>,
    record: &impl Fn(u32) -> &'r Checked<'a>,
) -> Settled {
    let mut losers = Vec::new();
    let mut conflict: Option<(usize, RecordError)> = None;
    let mut winners: Vec<(u32, Session<'_>)> = Vec::new();
    for i in members {
        let Some(s) = record(i).session() else {
            continue;
        };
        match winners.iter_mut().find(|(_, w)| w.id == s.id) {
            None => winners.push((i, s)),
            Some((w, winner)) => {
                if let Some(field) = s.conflict_with(winner) {
                    if conflict.is_none() {
                        let error = session_error(
                            i as usize,
                            Some(&s.id),
                            Problem::ConflictingCopies(field),
                        );
                        conflict = Some((i as usize, error));
                    }
                    losers.push(i);
                } else if s.copy_order(winner) == Ordering::Greater {
                    losers.push(*w);
                    *w = i;
                    *winner = s;
                } else {
                    losers.push(i);
                }
            }
        }
    }
    (losers, conflict)
}

fn owner<'r>(c: &'r Checked<'_>) -> (&'r str, &'r str) {
    (&c.user, &c.product)
}

/// Slots, keys, and whether some key's product is missing from the catalog.
type Grouped = (Vec<Slot>, Vec<KeyRun>, bool);

/// Groups the winning copies by key, each key's sessions in walk order, keys sorted by
/// (user, product); says whether some key's product is not in the catalog.
fn group(
    records: &[Vec<Checked<'_>>],
    lost: &[bool],
    known: &(dyn Fn(&str) -> bool + Sync),
) -> Grouped {
    let record = |i: u32| &records[i as usize >> CHUNK_BITS][i as usize & (CHUNK - 1)];
    let mut slots: Vec<Slot> = records
        .par_iter()
        .enumerate()
        .flat_map_iter(|(c, chunk)| {
            chunk.iter().enumerate().filter_map(move |(o, r)| {
                let index = (c << CHUNK_BITS) + o;
                (!lost[index]).then_some(Slot {
                    key_hash: r.key_hash,
                    start: r.start,
                    end: r.end,
                    zone: r.zone,
                    index: index as u32,
                })
            })
        })
        .collect();
    // Ties on start (rare) compare ids: the spec's tie rule.
    let walk_order = |a: &Slot, b: &Slot| {
        a.start
            .cmp(&b.start)
            .then_with(|| record(a.index).id.cmp(&record(b.index).id))
    };
    slots.par_sort_unstable_by(|a, b| a.key_hash.cmp(&b.key_hash).then_with(|| walk_order(a, b)));

    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut start = 0;
    for i in 1..=slots.len() {
        if i == slots.len() || slots[i].key_hash != slots[start].key_hash {
            runs.push(start..i);
            start = i;
        }
    }
    // Check each record's strings against its run's first: a run whose members differ
    // is a hash collision and is re-sorted by the strings themselves (never expected,
    // always handled). The records are read in file order, which memory serves far
    // faster than visiting them run by run.
    let first_of: FxHashMap<u64, u32> = runs
        .iter()
        .map(|r| (slots[r.start].key_hash, slots[r.start].index))
        .collect();
    let mut collided_hashes: Vec<u64> = records
        .par_iter()
        .enumerate()
        .flat_map_iter(|(c, chunk)| {
            let first_of = &first_of;
            chunk.iter().enumerate().filter_map(move |(o, r)| {
                let index = (c << CHUNK_BITS) + o;
                let first = *first_of.get(&r.key_hash)?;
                (!lost[index] && index as u32 != first && owner(record(first)) != owner(r))
                    .then_some(r.key_hash)
            })
        })
        .collect();
    collided_hashes.sort_unstable();
    collided_hashes.dedup();
    let collided: Vec<usize> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            collided_hashes
                .binary_search(&slots[r.start].key_hash)
                .is_ok()
        })
        .map(|(k, _)| k)
        .collect();
    let mut keys: Vec<KeyRun> = Vec::with_capacity(runs.len());
    for (k, run) in runs.iter().enumerate() {
        if collided.binary_search(&k).is_ok() {
            let by_owner = |s: &Slot| owner(record(s.index));
            slots[run.clone()]
                .sort_by(|a, b| by_owner(a).cmp(&by_owner(b)).then_with(|| walk_order(a, b)));
            let mut s = run.start;
            for i in run.start + 1..=run.end {
                if i == run.end || by_owner(&slots[i]) != by_owner(&slots[s]) {
                    keys.push(KeyRun {
                        first: slots[s].index,
                        slots: s..i,
                    });
                    s = i;
                }
            }
        } else {
            keys.push(KeyRun {
                first: slots[run.start].index,
                slots: run.clone(),
            });
        }
    }
    keys.par_sort_unstable_by(|a, b| owner(record(a.first)).cmp(&owner(record(b.first))));

    let unknown = keys.iter().any(|k| !known(owner(record(k.first)).1));
    (slots, keys, unknown)
}

/// Accounts one key from its sessions (one copy per id, any order): puts them in walk
/// order, walks them, dates and prices the windows, appending rows to `out`.
pub fn account_key<'a>(
    user: &'a str,
    product: &'a str,
    sessions: &[(&Session<'_>, Zone)],
    rules: &Rules,
    pricing: &Pricing<'_>,
    out: &mut Vec<UsageDay<'a>>,
) {
    let mut ordered: Vec<&(&Session<'_>, Zone)> = sessions.iter().collect();
    ordered.sort_by(|(a, _), (b, _)| {
        a.start_nanos()
            .cmp(&b.start_nanos())
            .then_with(|| a.id.cmp(&b.id))
    });
    let spans: Vec<Span<'_>> = ordered.iter().map(|(s, zone)| Span::of(s, *zone)).collect();
    let mut windows = Vec::new();
    walk(&spans, rules, &mut windows);
    price(user, product, &windows, rules, pricing, out);
}

/// Parses, checks and accounts a scenario in one call, detached from the input.
pub fn replay(input: &[u8]) -> Result<Report<'static>, RecordError> {
    let scenario = Scenario::parse(input)?;
    let report = scenario.account();
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

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = r#"{
      "policy": {"short_sessions": "count_free"},
      "catalog": {"acad": {"tokens_per_day": 7}, "revit": {"tokens_per_day": 10}},
      "entitlements": [{"user": "b\u00e9a \"q\"", "product": "revit", "plan": "subscription"}],
      "sessions": [
        {"id": "3", "user": "b\u00e9a \"q\"", "device": "d", "product": "revit", "start": "2026-03-02T09:00:00+01:00", "end": "2026-03-04T10:00:00+01:00", "tz": "Europe/Berlin"},
        {"id": "1", "user": "ann", "device": "d", "product": "acad", "start": "2026-03-02T09:00:00-05:00", "end": "2026-03-02T09:03:00-05:00"},
        {"id": "2", "user": "ann", "device": "d", "product": "acad", "start": "2026-03-03T09:00:00-05:00", "end": null, "last_seen": "2026-03-03T12:00:00-05:00"},
        {"id": "2", "user": "ann", "device": "d", "product": "acad", "start": "2026-03-03T09:00:00-05:00", "end": "2026-03-03T17:00:00-05:00"}
      ]}"#;

    #[test]
    fn streamed_report_is_byte_for_byte_the_materialised_one() {
        let scenario = Scenario::parse(SCENARIO.as_bytes()).unwrap();
        let mut streamed = Vec::new();
        let totals = scenario.write_json(&mut streamed).unwrap();
        let report = scenario.account();
        let mut materialised = Vec::new();
        report.write_json(&mut materialised).unwrap();
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            String::from_utf8(materialised).unwrap()
        );
        assert_eq!(totals, report.totals);
        assert_eq!(report.usage_days.len(), 5);
        assert_eq!(report.usage_days[0].user, "ann");
    }

    #[test]
    fn sessions_are_the_winning_copies() {
        let scenario = Scenario::parse(SCENARIO.as_bytes()).unwrap();
        let mut ids: Vec<(String, bool)> = scenario
            .sessions()
            .map(|(s, _)| (s.id.to_string(), s.end.is_some()))
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            vec![("1".into(), true), ("2".into(), true), ("3".into(), true)]
        );
    }

    fn one_per_line(sessions: &[&str], tail: &str) -> String {
        format!(
            "{{\"catalog\": {{\"acad\": {{\"tokens_per_day\": 7}}}},\n\"sessions\": [\n{}{tail}",
            sessions.join(",\n")
        )
    }

    const S1: &str = r#"{"id": "a", "user": "u", "device": "d", "product": "acad", "start": "2026-03-02T09:00:00Z", "end": "2026-03-03T10:00:00Z"}"#;
    const S2: &str = r#"{"id": "b", "user": "u", "device": "d", "product": "acad", "start": "2026-03-05T09:00:00Z", "end": "2026-03-05T10:00:00Z"}"#;

    fn report(text: &str) -> String {
        let scenario = Scenario::parse(text.as_bytes()).unwrap();
        let mut out = Vec::new();
        scenario.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_session_per_line_takes_the_line_path_and_agrees_with_the_general_path() {
        for tail in ["\n]}", "]}", "]\n}\n", "\n],\n\"policy\": {}}"] {
            let text = one_per_line(&[S1, S2], tail);
            assert!(
                Scenario::parse_by_lines(text.as_bytes()).is_some(),
                "line path for tail {tail:?}"
            );
            // The same scenario, laid out so that only the general path applies.
            let general = text.replace("{\"id\"", "{\n\"id\"");
            assert!(Scenario::parse_by_lines(general.as_bytes()).is_none());
            assert_eq!(report(&text), report(&general), "tail {tail:?}");
        }
    }

    #[test]
    fn a_sessions_array_that_is_not_the_top_level_one_is_not_taken() {
        // A policy with an unknown "sessions" key comes first; the real array is later.
        let text = format!(
            "{{\"policy\": {{\"sessions\": [\n{S2}\n]}},\n\"catalog\": {{\"acad\": {{\"tokens_per_day\": 7}}}},\n\"sessions\": [\n{S1}\n]}}"
        );
        assert!(Scenario::parse_by_lines(text.as_bytes()).is_none());
        let report = report(&text);
        assert!(report.contains("2026-03-02"), "{report}");
        assert!(
            !report.contains("2026-03-05"),
            "the policy's array is not sessions: {report}"
        );
    }

    #[test]
    fn errors_on_the_line_path_are_the_general_paths() {
        let bad_field = S2.replace("2026-03-05T10:00:00Z", "2026-03-05T08:00:00Z");
        let bad_type = S2.replace("\"2026-03-05T09:00:00Z\"", "5");
        for bad in [bad_field, bad_type] {
            let text = one_per_line(&[S1, &bad], "\n]}");
            let general = text.replace("{\"id\"", "{\n\"id\"");
            let a = Scenario::parse(text.as_bytes()).unwrap_err();
            let b = Scenario::parse(general.as_bytes()).unwrap_err();
            // The same record and problem (a parser's line and column are the record's own).
            assert_eq!(a.record, b.record);
            assert_eq!(a.problem.code(), b.problem.code());
            assert!(a.to_string().starts_with("session b:"), "{a}");
        }
    }

    #[test]
    fn two_sessions_on_one_line_are_not_split_wrongly() {
        let text = format!(
            "{{\"catalog\": {{\"acad\": {{\"tokens_per_day\": 7}}}},\n\"sessions\": [\n{S1}, {S2}\n]}}"
        );
        assert!(Scenario::parse_by_lines(text.as_bytes()).is_none());
        assert!(report(&text).contains("2026-03-05"));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_reported_by_the_general_path_with_its_place() {
        let mut text = one_per_line(&[S1, S2], "\n]}").into_bytes();
        let at = text.windows(3).position(|w| w == b"\"b\"").unwrap() + 1;
        text[at] = 0xff; // session "b"'s id
        assert!(matches!(
            Scenario::parse_by_lines(&text),
            None | Some(Err(_))
        ));
        let error = Scenario::parse(&text).unwrap_err().to_string();
        // Bytes that are not text are a malformed document, placed by line and column.
        assert!(error.contains("line 4 column 9"), "{error}");
    }
}
