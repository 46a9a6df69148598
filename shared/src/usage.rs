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
        UsageDay {
            user: Cow::Borrowed(user),
            product: Cow::Borrowed(product),
            day,
            window_start,
            window_end: utc_seconds(w.end),
            plan,
            tokens,
        }
    }));
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
    /// Writes the report as JSON, one usage day per line. Rows are serialised on all
    /// cores in chunks; the bytes are the same as a sequential write.
    pub fn write_json<W: Write>(&self, w: &mut W) -> io::Result<()> {
        const CHUNK: usize = 16 * 1024;
        w.write_all(b"{\"usage_days\": [")?;
        let chunks: Vec<io::Result<Vec<u8>>> = self
            .usage_days
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, rows)| {
                let mut buf = Vec::with_capacity(rows.len() * 180);
                for (i, row) in rows.iter().enumerate() {
                    buf.extend_from_slice(if c == 0 && i == 0 { b"\n  " } else { b",\n  " });
                    serde_json::to_writer(&mut buf, row)?;
                }
                Ok(buf)
            })
            .collect();
        for chunk in chunks {
            w.write_all(&chunk?)?;
        }
        if !self.usage_days.is_empty() {
            w.write_all(b"\n")?;
        }
        write!(w, "],\n  \"totals\": ")?;
        serde_json::to_writer(&mut *w, &self.totals)?;
        w.write_all(b"}\n")
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
