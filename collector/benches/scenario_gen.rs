//! A deterministic replay scenario for the benchmark: a design firm's year of launches.
//!
//! 20,000 users (by default) in six time zones, each on one or two devices, using AutoCAD,
//! Revit and Civil 3D on workdays: one to three launches a day, from a couple of minutes
//! (some under the five-minute minimum) to several hours, a small share left open over
//! night or over a weekend. A few percent of sessions are still open (`end` null,
//! `last_seen` set) and a few percent arrive twice, an open copy and then the closed copy
//! of the same id, so copy resolution is exercised. Every instant carries its zone's real
//! UTC offset for that date (chrono-tz), and records appear in arrival order (the time
//! the collector would have heard of them), interleaving users as a real export does.
//!
//! The output is compact JSON, one session per line. The same parameters always give the
//! same bytes.

use std::io::{self, Write};

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Weekday};
use chrono_tz::Tz;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Session records in the file, copies included.
    pub sessions: usize,
    pub users: usize,
    pub year: i32,
    pub seed: u64,
}

/// What was generated, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub sessions: usize,
    pub distinct_ids: usize,
    pub open: usize,
    pub copies: usize,
    pub short: usize,
    pub overnight: usize,
    pub entitlements: usize,
}

/// (IANA name, weight in percent of users).
const ZONES: [(&str, u32); 6] = [
    ("America/New_York", 30),
    ("Europe/Berlin", 20),
    ("Europe/London", 15),
    ("Asia/Tokyo", 10),
    ("Asia/Kolkata", 10),
    ("Australia/Sydney", 15),
];

/// (product id, tokens per day, weight as a user's main product in percent).
const PRODUCTS: [(&str, u32, u32); 3] = [("acad", 7, 50), ("revit", 10, 30), ("civil3d", 10, 20)];

const POLICY: &str = r#"{"window": "24h", "min_session": "5m", "day_basis": "local", "rollover": "open", "idle_after": "15m", "short_sessions": "ignore"}"#;

/// SplitMix64: tiny, fast and fixed forever, so the file never changes under a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    /// True with probability `p`/1000.
    fn per_mille(&mut self, p: u64) -> bool {
        self.next() % 1000 < p
    }
    fn weighted(&mut self, weights: impl Iterator<Item = u32> + Clone) -> usize {
        let total: u32 = weights.clone().sum();
        let mut pick = (self.next() % u64::from(total)) as u32;
        for (i, w) in weights.enumerate() {
            if pick < w {
                return i;
            }
            pick -= w;
        }
        unreachable!()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `end` set.
    Closed,
    /// `end` null, `last_seen` set: still running, or the agent went quiet.
    Open,
}

/// One line of the file, compact until it is written.
#[derive(Clone, Copy)]
struct Rec {
    /// When the collector heard of it (UTC seconds): the sort key.
    arrival: i64,
    id: u32,
    user: u32,
    kind: Kind,
    device: u8,
    product: u8,
    zone: u8,
    start: i64,
    /// `end` for a closed record, `last_seen` for an open one.
    stop: i64,
}

struct User {
    zone: usize,
    devices: u8,
    main: usize,
    second: Option<usize>,
}

/// Writes the scenario to `w` and says what is in it.
pub fn generate<W: Write>(p: Params, w: &mut W) -> io::Result<Stats> {
    let mut rng = Rng(p.seed);
    let zones: Vec<Tz> = ZONES
        .iter()
        .map(|(n, _)| n.parse().expect("zone"))
        .collect();
    let days: Vec<NaiveDate> = NaiveDate::from_ymd_opt(p.year, 1, 1)
        .expect("year")
        .iter_days()
        .take_while(|d| d.year() == p.year)
        .collect();
    let workdays: Vec<NaiveDate> = days.iter().copied().filter(|d| !weekend(*d)).collect();
    let weekends: Vec<NaiveDate> = days.iter().copied().filter(|d| weekend(*d)).collect();

    let users: Vec<User> = (0..p.users)
        .map(|_| {
            let main = rng.weighted(PRODUCTS.iter().map(|p| p.2));
            let second = rng
                .per_mille(400)
                .then(|| (main + 1 + rng.range(0, 1) as usize) % PRODUCTS.len());
            User {
                zone: rng.weighted(ZONES.iter().map(|z| z.1)),
                devices: if rng.per_mille(350) { 2 } else { 1 },
                main,
                second,
            }
        })
        .collect();

    // Quotas of lines per user, exactly `sessions` in all: an even share, moved by up to
    // 60% between neighbours so some users are busier than others.
    let base = p.sessions / p.users.max(1);
    let extra = p.sessions % p.users.max(1);
    let mut quota: Vec<usize> = (0..p.users)
        .map(|u| base + usize::from(u < extra))
        .collect();
    for pair in quota.chunks_mut(2) {
        if let [a, b] = pair {
            let shift = rng.range(0, (*b * 6 / 10) as i64) as usize;
            *a += shift;
            *b -= shift;
        }
    }

    let mut stats = Stats::default();
    let mut recs: Vec<Rec> = Vec::with_capacity(p.sessions);
    let mut next_id: u32 = 0;
    for (u, user) in users.iter().enumerate() {
        let tz = zones[user.zone];
        let mut left = quota[u];
        while left > 0 {
            let day = if rng.per_mille(30) {
                weekends[rng.range(0, weekends.len() as i64 - 1) as usize]
            } else {
                workdays[rng.range(0, workdays.len() as i64 - 1) as usize]
            };
            let mut product = match user.second {
                Some(s) if rng.per_mille(250) => s,
                _ => user.main,
            };
            let device = if user.devices == 2 && rng.per_mille(250) {
                1
            } else {
                0
            };
            let launches = 1 + usize::from(rng.per_mille(350)) + usize::from(rng.per_mille(120));
            // Minutes after local midnight of the first launch: 07:30 to 10:00.
            let mut at = rng.range(7 * 60 + 30, 10 * 60);
            for _ in 0..launches {
                if left == 0 {
                    break;
                }
                if let Some(s) = user.second
                    && rng.per_mille(150)
                {
                    product = if product == s { user.main } else { s };
                }
                let local_start = day.and_time(NaiveTime::MIN)
                    + Duration::minutes(at)
                    + Duration::seconds(rng.range(0, 59));
                let start = utc(tz, local_start);
                let class = rng.next() % 100;
                let (end, overnight) = if class < 4 {
                    // Left open: closed next workday morning (over a weekend on Friday).
                    let mut next = day.succ_opt().expect("date");
                    while weekend(next) {
                        next = next.succ_opt().expect("date");
                    }
                    let morning = next.and_time(NaiveTime::MIN)
                        + Duration::minutes(rng.range(7 * 60 + 30, 10 * 60 + 30));
                    (utc(tz, morning).max(start + 3600), true)
                } else {
                    let secs = match class {
                        4..=10 => rng.range(45, 299),         // under the 5-minute minimum
                        11..=33 => rng.range(300, 3600),      // 5 min to an hour
                        34..=83 => rng.range(3600, 5 * 3600), // 1 to 5 hours
                        _ => rng.range(5 * 3600, 9 * 3600),   // a long day
                    };
                    if secs < 300 {
                        stats.short += 1;
                    }
                    (start + secs, false)
                };
                stats.overnight += usize::from(overnight);
                let id = next_id;
                next_id += 1;
                let rec = Rec {
                    arrival: end,
                    id,
                    user: u as u32,
                    kind: Kind::Closed,
                    device,
                    product: product as u8,
                    zone: user.zone as u8,
                    start,
                    stop: end,
                };
                let roll = rng.next() % 1000;
                if roll < 30 {
                    // Still open: the agent's last heartbeat somewhere inside the session.
                    let seen = start + rng.range(0, end - start);
                    recs.push(Rec {
                        arrival: seen,
                        kind: Kind::Open,
                        stop: seen,
                        ..rec
                    });
                    stats.open += 1;
                    left -= 1;
                } else if roll < 65 && left >= 2 {
                    // Synced while running, then again once closed: two copies of one id.
                    let seen = start + rng.range(60.min(end - start), end - start);
                    recs.push(Rec {
                        arrival: seen,
                        kind: Kind::Open,
                        stop: seen,
                        ..rec
                    });
                    recs.push(rec);
                    stats.copies += 1;
                    left -= 2;
                } else {
                    recs.push(rec);
                    left -= 1;
                }
                if overnight {
                    break;
                }
                // Next launch: after this one plus a break, while still in the working day.
                let local_end = local_minutes(tz, end, day);
                at = local_end + rng.range(10, 120);
                if at > 19 * 60 {
                    break;
                }
            }
        }
    }
    debug_assert_eq!(recs.len(), p.sessions);
    stats.sessions = recs.len();
    stats.distinct_ids = next_id as usize;
    // Arrival order; the id and kind make the key unique, so the order is fixed.
    recs.sort_unstable_by_key(|r| (r.arrival, r.id, r.kind));

    w.write_all(b"{\"policy\": ")?;
    w.write_all(POLICY.as_bytes())?;
    w.write_all(b",\n\"catalog\": {")?;
    for (i, (id, rate, _)) in PRODUCTS.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        write!(w, "{sep}\"{id}\": {{\"tokens_per_day\": {rate}}}")?;
    }
    // One user in 25 holds a subscription for their main product, from 1 April.
    w.write_all(b"},\n\"entitlements\": [")?;
    let mut first = true;
    for (u, user) in users.iter().enumerate() {
        if u % 25 != 7 {
            continue;
        }
        let sep = if first { "\n" } else { ",\n" };
        first = false;
        write!(
            w,
            "{sep}{{\"user\":\"user-{u:05}\",\"product\":\"{}\",\"plan\":\"subscription\",\"from\":\"{}-04-01T00:00:00Z\"}}",
            PRODUCTS[user.main].0, p.year
        )?;
        stats.entitlements += 1;
    }
    w.write_all(b"],\n\"sessions\": [")?;
    let mut line = Vec::with_capacity(256);
    for (i, r) in recs.iter().enumerate() {
        line.clear();
        line.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        let tz = zones[r.zone as usize];
        let dev = if r.device == 0 { "ws" } else { "lt" };
        write!(
            line,
            "{{\"id\":\"s{:06}\",\"user\":\"user-{:05}\",\"device\":\"{dev}-{:05}\",\"product\":\"{}\",\"start\":\"",
            r.id, r.user, r.user, PRODUCTS[r.product as usize].0
        )?;
        instant(&mut line, tz, r.start)?;
        match r.kind {
            Kind::Closed => line.extend_from_slice(b"\",\"end\":\""),
            Kind::Open => line.extend_from_slice(b"\",\"end\":null,\"last_seen\":\""),
        }
        instant(&mut line, tz, r.stop)?;
        write!(line, "\",\"tz\":\"{}\"}}", ZONES[r.zone as usize].0)?;
        w.write_all(&line)?;
    }
    w.write_all(b"\n]}\n")?;
    Ok(stats)
}

fn weekend(d: NaiveDate) -> bool {
    matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

/// A local wall time to UTC seconds; a time in a spring-forward gap moves an hour on.
fn utc(tz: Tz, local: NaiveDateTime) -> i64 {
    tz.from_local_datetime(&local)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(local + Duration::hours(1)))
                .earliest()
        })
        .expect("local time")
        .timestamp()
}

/// Minutes from local midnight of `day` to UTC second `t` (past 1440 on a later day).
fn local_minutes(tz: Tz, t: i64, day: NaiveDate) -> i64 {
    let local = tz
        .timestamp_opt(t, 0)
        .single()
        .expect("instant")
        .naive_local();
    (local - day.and_time(NaiveTime::MIN)).num_minutes()
}

/// RFC 3339 in the zone's offset for that instant: `2026-03-02T19:00:00-05:00`.
fn instant(out: &mut Vec<u8>, tz: Tz, t: i64) -> io::Result<()> {
    let dt = tz.timestamp_opt(t, 0).single().expect("instant");
    let off = dt.offset().fix().local_minus_utc();
    let (sign, off) = if off < 0 { ('-', -off) } else { ('+', off) };
    let l = dt.naive_local();
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        l.year(),
        l.month(),
        l.day(),
        chrono::Timelike::hour(&l),
        chrono::Timelike::minute(&l),
        chrono::Timelike::second(&l),
        off / 3600,
        off % 3600 / 60
    )
}
