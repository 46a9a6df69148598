//! Teams' balances from what a backend reads — every purchase with what it has paid
//! for, and each team's unfunded tokens — through `daymeter_shared::ledger`'s rules, so
//! that every backend answers `GET /v1/admin/balances` alike.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use daymeter_shared::ledger::Ledger;

use super::{Balance, PurchaseState, Settings};

/// Every team's balance at `at`: the settings' teams, and every team with a purchase
/// (`purchases`, listed in the order given) or an unfunded charge (`unfunded`, the sum
/// of the team's entries that no purchase paid).
pub fn balances(
    at: DateTime<Utc>,
    settings: &Settings,
    purchases: impl IntoIterator<Item = PurchaseState>,
    unfunded: BTreeMap<String, i64>,
) -> Vec<Balance> {
    let mut teams: BTreeMap<String, Vec<PurchaseState>> = settings
        .teams
        .keys()
        .map(|t| (t.clone(), Vec::new()))
        .collect();
    for p in purchases {
        teams.entry(p.purchase.team.clone()).or_default().push(p);
    }
    for team in unfunded.keys() {
        teams.entry(team.clone()).or_default();
    }
    teams
        .into_iter()
        .map(|(team, purchases)| {
            let ledger = Ledger {
                purchases: purchases.iter().map(|p| p.purchase.clone()).collect(),
                used: purchases
                    .iter()
                    .map(|p| (p.purchase.id.clone(), p.used))
                    .collect(),
            };
            let remaining = ledger.remaining(at);
            let low_balance = settings.teams.get(&team).and_then(|t| t.low_balance);
            Balance {
                unfunded: unfunded.get(&team).copied().unwrap_or(0).max(0) as u64,
                low: low_balance.is_some_and(|l| remaining < l),
                low_balance,
                remaining,
                purchases,
                team,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use daymeter_shared::ledger::{Purchase, Team};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_balance_counts_active_purchases_minus_their_use_and_flags_a_low_team() {
        let mut settings = Settings::default();
        settings.teams.insert(
            "design".into(),
            Team {
                users: vec!["sophie".into()],
                low_balance: Some(50),
                ..Default::default()
            },
        );
        settings.teams.insert("idle".into(), Team::default());
        let bought = |id: &str, tokens, expires: &str, used| PurchaseState {
            purchase: Purchase {
                id: id.into(),
                team: "design".into(),
                tokens,
                purchased_at: at("2026-01-01T00:00:00Z"),
                expires_at: at(expires),
            },
            used,
        };
        let purchases = vec![
            bought("old", 100, "2026-02-01T00:00:00Z", 10),
            bought("new", 60, "2027-01-01T00:00:00Z", 20),
        ];
        let unfunded = BTreeMap::from([("stray".to_owned(), 14)]);
        let b = balances(at("2026-03-01T00:00:00Z"), &settings, purchases, unfunded);
        let teams: Vec<&str> = b.iter().map(|b| b.team.as_str()).collect();
        assert_eq!(teams, ["design", "idle", "stray"]);
        assert_eq!(
            (b[0].remaining, b[0].low, b[0].purchases.len()),
            (40, true, 2)
        );
        assert_eq!((b[1].remaining, b[1].low), (0, false));
        assert_eq!((b[2].unfunded, b[2].low_balance), (14, None));
    }
}
