//! Usage days: a key's windows, dated and priced, and their totals.

use std::borrow::Cow;
use std::io::{self, Write};

use chrono::{DateTime, NaiveDate, Utc};
use rayon::prelude::*;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize, Serializer};

use crate::accounting::{Window, WindowKind};
use crate::entitlement::{Plan, Pricing};
use crate::policy::{DayBasis, Rules};
use crate::time::{utc_seconds, with_date_text, with_utc_text};

/// One row of the result: a charged window (or a free short-session row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDay<'a> {
    #[serde(borrow)]
    pub user: Cow<'a, str>,
    #[serde(borrow)]
    pub product: Cow<'a, str>,
    /// Calendar date of the window start (local or UTC, per `day_basis`).
    #[serde(serialize_with = "date_text")]
    pub day: NaiveDate,
    #[serde(serialize_with = "utc_text")]
    pub window_start: DateTime<Utc>,
    #[serde(serialize_with = "utc_text")]
    pub window_end: DateTime<Utc>,
    pub plan: Plan,
    pub tokens: u64,
}

fn utc_text<S: Serializer>(dt: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    with_utc_text(dt, |t| s.serialize_str(t))
}

fn date_text<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    with_date_text(d, |t| s.serialize_str(t))
}

/// A window dated and priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    pub day: NaiveDate,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub plan: Plan,
    pub tokens: u64,
}

/// Dates a window (local or UTC per `day_basis`) and prices it at its start.
pub fn priced(w: &Window, rules: &Rules, pricing: &Pricing<'_>) -> Priced {
    let window_start = utc_seconds(w.start);
    let day = match rules.day_basis {
        DayBasis::Utc => window_start.date_naive(),
        DayBasis::Local => w.zone.local_date(w.start),
    };
    let (plan, rate) = pricing.at(w.start);
    let tokens = if w.kind == WindowKind::Charged {
        rate
    } else {
        0
    };
    Priced {
        day,
        window_start,
        window_end: utc_seconds(w.end),
        plan,
        tokens,
    }
}

/// Dates and prices one key's windows, appending rows to `out` in window order.
pub fn price<'a>(
    user: &'a str,
    product: &'a str,
    windows: &[Window],
    rules: &Rules,
    pricing: &Pricing<'_>,
    out: &mut Vec<UsageDay<'a>>,
) {
    out.extend(windows.iter().map(|w| {
        let p = priced(w, rules, pricing);
        UsageDay {
            user: Cow::Borrowed(user),
            product: Cow::Borrowed(product),
            day: p.day,
            window_start: p.window_start,
            window_end: p.window_end,
            plan: p.plan,
            tokens: p.tokens,
        }
    }));
}

/// Writes usage-day rows as compact JSON objects, byte for byte what serde_json writes
/// for a [`UsageDay`], without serde's per-field work: a key's rows share their
/// `{"user":…,"product":…,"day":"` head, which is escaped once per key.
#[derive(Debug, Default)]
pub struct RowWriter {
    head: Vec<u8>,
}

impl RowWriter {
    /// Starts the rows of a (user, product) key.
    pub fn key(&mut self, user: &str, product: &str) {
        self.head.clear();
        self.head.extend_from_slice(b"{\"user\":");
        json_str(&mut self.head, user);
        self.head.extend_from_slice(b",\"product\":");
        json_str(&mut self.head, product);
        self.head.extend_from_slice(b",\"day\":\"");
    }

    /// Appends one row of the current key to `out`.
    pub fn row(&self, out: &mut Vec<u8>, p: &Priced) {
        out.extend_from_slice(&self.head);
        with_date_text(&p.day, |t| out.extend_from_slice(t.as_bytes()));
        out.extend_from_slice(b"\",\"window_start\":\"");
        with_utc_text(&p.window_start, |t| out.extend_from_slice(t.as_bytes()));
        out.extend_from_slice(b"\",\"window_end\":\"");
        with_utc_text(&p.window_end, |t| out.extend_from_slice(t.as_bytes()));
        out.extend_from_slice(b"\",\"plan\":\"");
        out.extend_from_slice(p.plan.as_str().as_bytes());
        out.extend_from_slice(b"\",\"tokens\":");
        out.extend_from_slice(itoa::Buffer::new().format(p.tokens).as_bytes());
        out.push(b'}');
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The report's opening, row separators and closing, shared by every writer of it.
pub mod frame {
    pub const OPEN: &[u8] = b"{\"usage_days\": [";
    pub const FIRST: &[u8] = b"\n  ";
    pub const NEXT: &[u8] = b",\n  ";

    /// Closes the rows and writes the totals.
    pub fn close<W: std::io::Write>(
        w: &mut W,
        any_rows: bool,
        totals: &super::Totals,
    ) -> std::io::Result<()> {
        if any_rows {
            w.write_all(b"\n")?;
        }
        w.write_all(b"],\n  \"totals\": ")?;
        serde_json::to_writer(&mut *w, totals)?;
        w.write_all(b"}\n")
    }
}

/// Tokens over all rows; days used = distinct (user, product, day).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub tokens: u64,
    pub days_used: u64,
}

impl Totals {
    /// Totals over any rows, in any order.
    pub fn of(rows: &[UsageDay<'_>]) -> Totals {
        let days: FxHashSet<(&str, &str, NaiveDate)> = rows
            .iter()
            .map(|r| (&*r.user, &*r.product, r.day))
            .collect();
        Totals {
            tokens: rows.iter().map(|r| r.tokens).sum(),
            days_used: days.len() as u64,
        }
    }

    /// Totals over the rows of one key (one user, one product).
    pub fn of_key(rows: &[UsageDay<'_>]) -> Totals {
        let mut days: Vec<NaiveDate> = rows.iter().map(|r| r.day).collect();
        days.sort_unstable();
        days.dedup();
        Totals {
            tokens: rows.iter().map(|r| r.tokens).sum(),
            days_used: days.len() as u64,
        }
    }
}

impl std::ops::Add for Totals {
    type Output = Totals;

    fn add(self, other: Totals) -> Totals {
        Totals {
            tokens: self.tokens + other.tokens,
            days_used: self.days_used + other.days_used,
        }
    }
}

/// The result of accounting: what `replay` prints and `/v1/admin/usage-days` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report<'a> {
    #[serde(borrow)]
    pub usage_days: Vec<UsageDay<'a>>,
    pub totals: Totals,
}

impl Report<'_> {
    /// Writes the report as JSON, one usage day per line. Rows are formatted on all
    /// cores in chunks; the bytes are the same as a sequential write.
    pub fn write_json<W: Write>(&self, w: &mut W) -> io::Result<()> {
        const CHUNK: usize = 16 * 1024;
        w.write_all(frame::OPEN)?;
        let chunks: Vec<Vec<u8>> = self
            .usage_days
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, rows)| {
                let mut buf = Vec::with_capacity(rows.len() * 180);
                let mut writer = RowWriter::default();
                for (i, row) in rows.iter().enumerate() {
                    buf.extend_from_slice(if c == 0 && i == 0 {
                        frame::FIRST
                    } else {
                        frame::NEXT
                    });
                    writer.key(&row.user, &row.product);
                    let p = Priced {
                        day: row.day,
                        window_start: row.window_start,
                        window_end: row.window_end,
                        plan: row.plan,
                        tokens: row.tokens,
                    };
                    writer.row(&mut buf, &p);
                }
                buf
            })
            .collect();
        for chunk in chunks {
            w.write_all(&chunk)?;
        }
        frame::close(w, !self.usage_days.is_empty(), &self.totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{Zone, nanos, parse_instant};

    fn row(user: &'static str, product: &'static str, day: &str, tokens: u64) -> UsageDay<'static> {
        let t = utc_seconds(nanos(
            &parse_instant("t", &format!("{day}T10:00:00Z")).unwrap(),
        ));
        UsageDay {
            user: user.into(),
            product: product.into(),
            day: t.date_naive(),
            window_start: t,
            window_end: t,
            plan: Plan::Flex,
            tokens,
        }
    }

    #[test]
    fn days_used_counts_distinct_user_product_day() {
        let rows = [
            row("a", "acad", "2026-03-08", 7),
            row("a", "acad", "2026-03-08", 7),
            row("a", "revit", "2026-03-08", 10),
        ];
        assert_eq!(
            Totals::of(&rows),
            Totals {
                tokens: 24,
                days_used: 2
            }
        );
        assert_eq!(
            Totals::of_key(&rows[..2]),
            Totals {
                tokens: 14,
                days_used: 1
            }
        );
    }

    #[test]
    fn report_json_parses_back_to_itself() {
        let rows = vec![
            row("a", "acad", "2026-03-08", 7),
            row("b\"q", "acad", "2026-03-09", 7),
        ];
        let report = Report {
            totals: Totals::of(&rows),
            usage_days: rows,
        };
        let mut out = Vec::new();
        report.write_json(&mut out).unwrap();
        let back: Report<'_> = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, report);
        let mut rows = Vec::new();
        for r in &report.usage_days {
            rows.push(serde_json::to_string(r).unwrap());
        }
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(&rows[1]),
            "hand-written rows equal serde's: {text}"
        );
        let empty = Report::default();
        let mut out = Vec::new();
        empty.write_json(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"usage_days\": [],\n  \"totals\": {\"tokens\":0,\"days_used\":0}}\n"
        );
    }

    #[test]
    fn utc_day_basis_ignores_the_zone() {
        let start = nanos(&parse_instant("t", "2026-03-02T23:00:00Z").unwrap());
        let w = Window {
            start,
            end: start + 1,
            zone: Zone::Named(chrono_tz::Asia::Tokyo),
            kind: WindowKind::Charged,
        };
        let pricing = Pricing {
            tokens_per_day: 7,
            entitlements: &[],
        };
        let mut local = Vec::new();
        price(
            "u",
            "p",
            &[w],
            &crate::policy::Policy::default().rules(),
            &pricing,
            &mut local,
        );
        let utc_rules = Rules {
            day_basis: DayBasis::Utc,
            ..crate::policy::Policy::default().rules()
        };
        let mut utc = Vec::new();
        price("u", "p", &[w], &utc_rules, &pricing, &mut utc);
        assert_eq!(local[0].day.to_string(), "2026-03-03");
        assert_eq!(utc[0].day.to_string(), "2026-03-02");
    }
}
