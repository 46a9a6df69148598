//! The token ledger's rules (spec/accounting.md, "Token ledger"), as pure functions.
//!
//! Purchases belong to a team and expire (by default a year after purchase). A charged
//! day draws its tokens from the team's purchases active at the window start, the one
//! that expires first before the others (the smaller one first on a tie), spilling
//! into the next when one runs out. What no purchase can pay is booked as unfunded, so
//! the ledger never loses a charge. Entries are never edited: a recomputed day that
//! changes is a reversal of its old entries plus new ones, each with the reason.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};

/// The team of users with no team of their own.
pub const DEFAULT_TEAM: &str = "default";

/// A team: its users, the balance below which admins are alerted, and whether its
/// people are named in reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_balance: Option<u64>,
    #[serde(default, skip_serializing_if = "PersonalData::is_shown")]
    pub personal_data: PersonalData,
}

/// How a team's people appear in reports, exports, mail and the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonalData {
    /// Names and emails as imported.
    #[default]
    Shown,
    /// Replaced by a keyed hash, the same in every report.
    Hashed,
}

impl PersonalData {
    pub fn is_shown(&self) -> bool {
        *self == PersonalData::Shown
    }
}

/// The team a user belongs to (`default` if none lists them).
pub fn team_of<'t>(teams: &'t BTreeMap<String, Team>, user: &str) -> &'t str {
    teams
        .iter()
        .find(|(_, t)| t.users.iter().any(|u| u == user))
        .map_or(DEFAULT_TEAM, |(name, _)| name.as_str())
}

/// A token purchase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub id: String,
    pub team: String,
    pub tokens: u64,
    pub purchased_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The default expiry: a year after purchase.
pub fn default_expiry(purchased_at: DateTime<Utc>) -> DateTime<Utc> {
    purchased_at
        .checked_add_months(Months::new(12))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Purchase {
    /// Active at `t`: purchased, not yet expired.
    pub fn active_at(&self, t: DateTime<Utc>) -> bool {
        self.purchased_at <= t && t < self.expires_at
    }
}

/// How a charge is paid: tokens per purchase, and what nothing could pay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draw {
    pub parts: Vec<(String, u64)>,
    pub unfunded: u64,
}

/// Draws `tokens` at `at` from `purchases`, given what each has already paid for
/// (`used`, by purchase id). Does not change `used`; see [`Ledger::draw`].
pub fn draw(
    purchases: &[Purchase],
    used: &BTreeMap<String, u64>,
    at: DateTime<Utc>,
    tokens: u64,
) -> Draw {
    let mut order: Vec<&Purchase> = purchases.iter().filter(|p| p.active_at(at)).collect();
    order.sort_by(|a, b| {
        a.expires_at
            .cmp(&b.expires_at)
            .then(a.tokens.cmp(&b.tokens))
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut left = tokens;
    let mut parts = Vec::new();
    for p in order {
        if left == 0 {
            break;
        }
        let free = p
            .tokens
            .saturating_sub(used.get(&p.id).copied().unwrap_or(0));
        let take = free.min(left);
        if take > 0 {
            parts.push((p.id.clone(), take));
            left -= take;
        }
    }
    Draw {
        parts,
        unfunded: left,
    }
}

/// Remaining tokens of a team at `t`: active purchases minus what they paid for.
pub fn remaining(purchases: &[Purchase], used: &BTreeMap<String, u64>, t: DateTime<Utc>) -> u64 {
    purchases
        .iter()
        .filter(|p| p.active_at(t))
        .map(|p| {
            p.tokens
                .saturating_sub(used.get(&p.id).copied().unwrap_or(0))
        })
        .sum()
}

/// A team's purchases and what each has paid for, kept in step with its entries.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub purchases: Vec<Purchase>,
    pub used: BTreeMap<String, u64>,
}

impl Ledger {
    /// Draws and records the use.
    pub fn draw(&mut self, at: DateTime<Utc>, tokens: u64) -> Draw {
        let d = draw(&self.purchases, &self.used, at, tokens);
        for (id, n) in &d.parts {
            *self.used.entry(id.clone()).or_default() += n;
        }
        d
    }

    /// Gives back what a reversed entry had drawn from a purchase.
    pub fn give_back(&mut self, purchase: &str, tokens: u64) {
        if let Some(u) = self.used.get_mut(purchase) {
            *u = u.saturating_sub(tokens);
        }
    }

    pub fn remaining(&self, t: DateTime<Utc>) -> u64 {
        remaining(&self.purchases, &self.used, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn purchase(id: &str, tokens: u64, bought: &str, expires: &str) -> Purchase {
        Purchase {
            id: id.into(),
            team: "design".into(),
            tokens,
            purchased_at: t(bought),
            expires_at: t(expires),
        }
    }

    #[test]
    fn default_expiry_is_a_year() {
        assert_eq!(
            default_expiry(t("2026-03-02T10:00:00Z")),
            t("2027-03-02T10:00:00Z")
        );
    }

    #[test]
    fn consumption_draws_from_the_purchase_that_expires_first() {
        let mut l = Ledger {
            purchases: vec![
                purchase("late", 100, "2026-01-01T00:00:00Z", "2027-06-01T00:00:00Z"),
                purchase("early", 10, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            ],
            ..Ledger::default()
        };
        let d = l.draw(t("2026-03-02T10:00:00Z"), 7);
        assert_eq!(d.parts, vec![("early".into(), 7)]);
        let d = l.draw(t("2026-03-03T10:00:00Z"), 7);
        assert_eq!(
            d.parts,
            vec![("early".into(), 3), ("late".into(), 4)],
            "spills into the next"
        );
        assert_eq!(l.remaining(t("2026-03-04T00:00:00Z")), 96);
    }

    #[test]
    fn smaller_purchase_first_on_an_expiry_tie() {
        let l = Ledger {
            purchases: vec![
                purchase("big", 100, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
                purchase("small", 20, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            ],
            ..Ledger::default()
        };
        assert_eq!(
            draw(&l.purchases, &l.used, t("2026-03-02T10:00:00Z"), 7).parts,
            vec![("small".into(), 7)]
        );
    }

    #[test]
    fn expired_purchases_pay_nothing_and_shortfall_is_unfunded() {
        let mut l = Ledger {
            purchases: vec![purchase(
                "old",
                100,
                "2025-01-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            )],
            ..Ledger::default()
        };
        let d = l.draw(t("2026-03-02T10:00:00Z"), 7);
        assert_eq!(
            d,
            Draw {
                parts: vec![],
                unfunded: 7
            }
        );
        assert_eq!(l.remaining(t("2026-03-02T10:00:00Z")), 0);
    }

    #[test]
    fn reversal_gives_tokens_back() {
        let mut l = Ledger {
            purchases: vec![purchase(
                "p",
                10,
                "2026-01-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            )],
            ..Ledger::default()
        };
        l.draw(t("2026-03-02T10:00:00Z"), 7);
        l.give_back("p", 7);
        assert_eq!(l.remaining(t("2026-03-02T10:00:00Z")), 10);
    }
}
