//! The settings as one value — policy, catalog, entitlements and teams — and the rules
//! that read them: what prices a key's days ([`Settings::pricing`]), which team pays
//! ([`Settings::team_of`]), and how an import merges into them ([`import`]).
//!
//! Why a module of its own rather than beside the store: the store keeps the settings
//! and the HTTP handlers answer from them, but neither decides what they mean. Pricing
//! was written four times (the store's recomputation, the sync answer's plans, its open
//! windows' next price, and `replay` in `daymeter_shared::scenario`); the three in this
//! crate now call [`Settings::pricing`]. `replay` keeps its own index of entitlements by
//! key, built once for a million sessions, because `daymeter-shared` cannot depend on
//! this crate; both end in the same [`Pricing::at`].

pub mod import;

use std::collections::BTreeMap;

use daymeter_shared::catalog::Catalog;
use daymeter_shared::entitlement::{Entitlement, Plan, Pricing};
use daymeter_shared::ledger::{Team, team_of};
use daymeter_shared::policy::Policy;
use daymeter_shared::time::Nanos;

/// Policy, catalog, entitlements and teams: what accounting needs besides sessions.
/// Small, read on every sync, changed only by imports, so the server keeps a copy in
/// memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub policy: Policy,
    pub catalog: Catalog,
    pub entitlements: Vec<Entitlement>,
    pub teams: BTreeMap<String, Team>,
    /// Who each licence user is, for reports: `"users": {"ana": {"email": …}}` in an
    /// import.
    pub people: BTreeMap<String, Person>,
    /// What tokens and subscriptions cost, for plan advice.
    pub prices: Prices,
}

/// Prices from the import: `token_price` with its `currency` at the top, and per
/// catalog product its `subscription_price` (a year, in the same currency).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prices {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subscription_price: BTreeMap<String, f64>,
}

/// A licence user's name and email, as the import gives them (each optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
}

impl Settings {
    /// What prices `user`'s days of `product`: the catalog's daily rate (0 for a product
    /// the catalog does not list) and the user's entitlements for it.
    pub fn pricing(&self, user: &str, product: &str) -> KeyPricing<'_> {
        KeyPricing {
            tokens_per_day: self.catalog.get(product).map_or(0, |p| p.tokens_per_day),
            entitlements: self
                .entitlements
                .iter()
                .filter(|e| e.user == user && e.product == product)
                .collect(),
        }
    }

    /// The team whose purchases pay for `user`'s days (`default` if no team lists them).
    pub fn team_of(&self, user: &str) -> &str {
        team_of(&self.teams, user)
    }
}

/// One key's [`Pricing`], owning the list of entitlements that [`Pricing`] borrows.
#[derive(Debug, Clone)]
pub struct KeyPricing<'s> {
    tokens_per_day: u64,
    entitlements: Vec<&'s Entitlement>,
}

impl KeyPricing<'_> {
    /// The rules' view, as [`daymeter_shared::usage::priced`] takes it.
    pub fn rules(&self) -> Pricing<'_> {
        Pricing {
            tokens_per_day: self.tokens_per_day,
            entitlements: &self.entitlements,
        }
    }

    /// The plan at `t` and the tokens a window opening then costs.
    pub fn at(&self, t: Nanos) -> (Plan, u64) {
        self.rules().at(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daymeter_shared::catalog::Product;
    use serde_json::json;

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.catalog.insert(
            "acad".into(),
            Product {
                name: None,
                tokens_per_day: 7,
                matches: vec![],
                rate_confirmed: None,
            },
        );
        for e in [
            json!({"user": "sophie", "product": "acad", "plan": "subscription"}),
            json!({"user": "tom", "product": "revit", "plan": "subscription"}),
        ] {
            s.entitlements.push(Entitlement::from_json(&e).unwrap());
        }
        s
    }

    #[test]
    fn pricing_takes_only_the_users_entitlements_for_the_product() {
        let s = settings();
        assert_eq!(s.pricing("sophie", "acad").at(0), (Plan::Subscription, 0));
        assert_eq!(s.pricing("tom", "acad").at(0), (Plan::Flex, 7));
    }

    #[test]
    fn a_product_the_catalog_does_not_list_is_priced_free() {
        assert_eq!(settings().pricing("tom", "civil3d").at(0), (Plan::Free, 0));
    }
}
