//! What each mail says: subject, a plain-text body with the key numbers, and for a
//! scheduled report its CSV attached. Pure functions over what the reports answer (the
//! API's documents and the export's file), so a mail never says a number the API would
//! not: the body's totals are read back from the very file it attaches.
//!
//! Users appear as the reports show them — a team that hashes its people shows the same
//! keyed pseudonym here as in every report and export.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::kinds::{Export, InactiveFor};
use crate::reports::Filter;
use crate::reports::range::ReportRange;

/// One mail, before it is addressed by SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub to: String,
    pub subject: String,
    pub body: String,
    pub attachment: Option<Attachment>,
}

/// A CSV file attached to a mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub file: String,
    pub csv: Vec<u8>,
}

/// The last lines of every mail: why it came, and how to stop it.
fn footer(schedule: &str) -> String {
    format!(
        "\n-- \nSent by the daymeter collector for mail schedule {schedule}.\n\
         To stop it: DELETE /v1/admin/mail/schedules/{schedule}\n"
    )
}

fn span(range: &ReportRange) -> String {
    format!("{} to {}", range.from, range.to)
}

/// Per-column access to an export's rows, by the header's names.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn read(csv: &[u8]) -> Result<Table, csv::Error> {
        let csv = csv.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(csv);
        let mut reader = csv::ReaderBuilder::new().from_reader(csv);
        let header = reader.headers()?.iter().map(str::to_owned).collect();
        let mut rows = Vec::new();
        for record in reader.records() {
            rows.push(record?.iter().map(str::to_owned).collect());
        }
        Ok(Table { header, rows })
    }

    fn column(&self, name: &str) -> impl Iterator<Item = &str> {
        let i = self.header.iter().position(|h| h == name);
        self.rows
            .iter()
            .map(move |r| i.and_then(|i| r.get(i)).map_or("", String::as_str))
    }
}

/// A scheduled report: the export of `range` attached, its totals in the body.
pub fn report(
    schedule: &str,
    to: &str,
    export: Export,
    range: &ReportRange,
    filter: &Filter,
    csv: Vec<u8>,
) -> Result<Letter, csv::Error> {
    let table = Table::read(&csv)?;
    let users: BTreeSet<&str> = table.column("User").collect();
    let mut scope = Vec::new();
    if let Some(t) = &filter.team {
        scope.push(format!("team {t}"));
    }
    if let Some(p) = &filter.product {
        scope.push(format!("product {p}"));
    }
    let scope = if scope.is_empty() {
        String::new()
    } else {
        format!(" ({})", scope.join(", "))
    };
    let mut body = format!("{} report, {}{scope}\n\n", export.title(), span(range));
    match export {
        Export::TokenUsage => {
            let mut by_product: BTreeMap<&str, u64> = BTreeMap::new();
            for (product, tokens) in table.column("Product").zip(table.column("Tokens used")) {
                *by_product.entry(product).or_default() += tokens.parse::<u64>().unwrap_or(0);
            }
            let total: u64 = by_product.values().sum();
            body += &format!(
                "Tokens used: {total}\nDays charged: {}\nUsers: {}\n",
                table.rows.len(),
                users.len()
            );
            if !by_product.is_empty() {
                body += "\nBy product:\n";
                for (product, tokens) in &by_product {
                    body += &format!("  {product}: {tokens} tokens\n");
                }
            }
        }
        Export::SeatUsage => {
            let mut by_product: BTreeMap<&str, usize> = BTreeMap::new();
            for product in table.column("Product") {
                *by_product.entry(product).or_default() += 1;
            }
            body += &format!(
                "Seat days used: {}\nUsers: {}\n",
                table.rows.len(),
                users.len()
            );
            if !by_product.is_empty() {
                body += "\nBy product:\n";
                for (product, days) in &by_product {
                    body += &format!("  {product}: {}\n", plural(*days, "day", "days"));
                }
            }
        }
        Export::Usage => {
            let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
            for status in table.column("Status") {
                *by_status.entry(status).or_default() += 1;
            }
            body += &format!("Users: {}\n", users.len());
            for (status, n) in &by_status {
                body += &format!("{status}: {n}\n");
            }
        }
    }
    let file = format!("{}.csv", export.name());
    body += &format!(
        "\nThe attached {file} has {} rows, as /v1/exports/{file} answers for this range.\n",
        table.rows.len()
    );
    body += &footer(schedule);
    Ok(Letter {
        to: to.to_owned(),
        subject: format!("daymeter: {} report, {}", export.title(), span(range)),
        body,
        attachment: Some(Attachment { file, csv }),
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The users whose assigned products lay unused over `range`: the usage report's
/// `inactive` lines (`usage`, its document).
pub fn inactive_users(
    schedule: &str,
    to: &str,
    inactive_for: InactiveFor,
    range: &ReportRange,
    usage: &Value,
) -> Letter {
    let lines: Vec<&Value> = usage["usage"]
        .as_array()
        .map(|l| l.iter().filter(|l| l["status"] == "inactive").collect())
        .unwrap_or_default();
    let users: BTreeSet<String> = lines.iter().map(|l| text(&l["user"])).collect();
    let mut body = format!(
        "Users with an assigned product unused for {} ({}): {}\n\n",
        inactive_for.words(),
        span(range),
        users.len()
    );
    for l in &lines {
        let last = text(&l["last_accessed"]);
        body += &format!(
            "  {}  team {}  {}  last used {}  unused {} days\n",
            text(&l["user"]),
            text(&l["team"]),
            text(&l["product"]),
            if last.is_empty() { "never" } else { &last },
            text(&l["days_inactive"]),
        );
    }
    if lines.is_empty() {
        body += "  nobody\n";
    }
    body += "\nTheir seats may be taken back; /v1/reports/usage has the details.\n";
    body += &footer(schedule);
    Letter {
        to: to.to_owned(),
        subject: format!(
            "daymeter: {} inactive for {}",
            plural(users.len(), "user", "users"),
            inactive_for.words()
        ),
        body,
        attachment: None,
    }
}

/// The week's waste (`waste`, the waste report's document over `range`).
pub fn waste_digest(schedule: &str, to: &str, range: &ReportRange, waste: &Value) -> Letter {
    let wasted = waste["wasted_tokens"].as_u64().unwrap_or(0);
    let save = waste["active_rollover_would_save"].as_u64().unwrap_or(0);
    let keys = waste["keys"].as_array().cloned().unwrap_or_default();
    let mut body = format!(
        "Waste digest, {}\n\nTokens charged for days nobody worked: {wasted}\n\
         Tokens rollover = active would have saved: {save}\n\n",
        span(range)
    );
    for k in &keys {
        let idle = k["idle_windows"].as_array().map_or(0, Vec::len);
        let rollovers = k["rollovers"].as_array().map_or(0, Vec::len);
        body += &format!(
            "  {}  {}  {} ({} tokens), {}\n",
            text(&k["user"]),
            text(&k["product"]),
            plural(idle, "idle day", "idle days"),
            k["wasted_tokens"].as_u64().unwrap_or(0),
            plural(rollovers, "rollover", "rollovers"),
        );
    }
    if keys.is_empty() {
        body += "  nothing wasted\n";
    }
    body += "\n/v1/reports/waste has each window and the sessions open in it.\n";
    body += &footer(schedule);
    Letter {
        to: to.to_owned(),
        subject: format!(
            "daymeter: waste digest, {}: {wasted} tokens on idle days",
            span(range)
        ),
        body,
        attachment: None,
    }
}

/// A team's balance crossed below its threshold.
pub fn low_balance(
    schedule: &str,
    to: &str,
    team: &str,
    remaining: u64,
    threshold: u64,
    at: DateTime<Utc>,
) -> Letter {
    let body = format!(
        "Team {team} has {remaining} tokens left, below its low-balance threshold of {threshold} \
         (at {}).\n\nBuy tokens before it runs out: charged days beyond the balance are booked as \
         unfunded. This alert comes once per crossing; it comes again only after the balance has \
         been back at or above {threshold}.\n{}",
        at.format("%Y-%m-%d %H:%M UTC"),
        footer(schedule)
    );
    Letter {
        to: to.to_owned(),
        subject: format!(
            "daymeter: team {team} is low on tokens: {remaining} left (threshold {threshold})"
        ),
        body,
        attachment: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn november() -> ReportRange {
        ReportRange {
            from: "2026-11-02".parse().expect("a day"),
            to: "2026-11-08".parse().expect("a day"),
            months: 0.23,
        }
    }

    #[test]
    fn a_token_report_body_states_the_totals_of_the_csv_it_attaches() {
        let csv = "\u{feff}Team,Email,First name,Last name,User,Product,Feature,Day used,Tokens used\n\
                   civil,,,,ana,AutoCAD,acad,2026-11-02,7\n\
                   civil,,,,ana,Revit,revit,2026-11-03,10\n\
                   civil,,,,ben,AutoCAD,acad,2026-11-06,7\n";
        let letter = report(
            "s1",
            "it@firm.example",
            Export::TokenUsage,
            &november(),
            &Filter::default(),
            csv.as_bytes().to_vec(),
        )
        .expect("a letter");
        assert!(letter.body.contains("Tokens used: 24\n"), "{}", letter.body);
        assert!(letter.body.contains("Days charged: 3\n"));
        assert!(letter.body.contains("Users: 2\n"));
        assert!(letter.body.contains("  AutoCAD: 14 tokens\n"));
        assert_eq!(
            letter.subject,
            "daymeter: Token usage report, 2026-11-02 to 2026-11-08"
        );
        assert_eq!(
            letter.attachment.map(|a| a.file),
            Some("token-usage.csv".to_owned())
        );
    }

    #[test]
    fn the_inactive_users_mail_lists_only_the_inactive_lines() {
        let usage = serde_json::json!({"usage": [
            {"user": "cleo", "team": "arch", "product": "acad", "status": "inactive",
             "last_accessed": null, "days_inactive": 30},
            {"user": "ana", "team": "civil", "product": "acad", "status": "active",
             "last_accessed": "2026-11-03", "days_inactive": 5}
        ]});
        let letter = inactive_users(
            "s2",
            "it@firm.example",
            InactiveFor::Days30,
            &november(),
            &usage,
        );
        assert_eq!(letter.subject, "daymeter: 1 user inactive for 30 days");
        assert!(
            letter
                .body
                .contains("cleo  team arch  acad  last used never")
        );
        assert!(!letter.body.contains("ana"));
    }
}
