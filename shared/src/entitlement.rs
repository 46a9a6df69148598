//! Plans and entitlements: who pays for a day, and how much.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::Problem;
use crate::time::{Instant, Nanos, nanos, parse_instant};

/// How a usage day is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// Daily tokens at the catalog rate.
    Flex,
    /// A single-user subscription: the day counts, 0 tokens.
    Subscription,
    /// A product with rate 0 (or a free assignment): the day counts, 0 tokens.
    Free,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Flex => "flex",
            Plan::Subscription => "subscription",
            Plan::Free => "free",
        }
    }

    /// The plan [`Plan::as_str`] names, as stored.
    pub fn parse(text: &str) -> Option<Plan> {
        [Plan::Flex, Plan::Subscription, Plan::Free]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// A user's plan for a product over `[from, to)`; a missing bound is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    pub user: String,
    pub product: String,
    pub plan: Plan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Instant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Instant>,
}

impl Entitlement {
    /// Validates one entitlement, naming the field at fault.
    pub fn from_json(value: &Value) -> Result<Entitlement, Problem> {
        let Value::Object(map) = value else {
            return Err(Problem::WrongType {
                field: "entitlement",
                expected: "an object",
            });
        };
        let text = |field: &'static str| -> Result<Option<&str>, Problem> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(Problem::WrongType {
                    field,
                    expected: "a string",
                }),
            }
        };
        let user = text("user")?.ok_or(Problem::Missing("user"))?.to_owned();
        let product = text("product")?
            .ok_or(Problem::Missing("product"))?
            .to_owned();
        let plan_text = text("plan")?.ok_or(Problem::Missing("plan"))?;
        let plan = serde_json::from_value(Value::String(plan_text.to_owned())).map_err(|_| {
            Problem::UnknownValue {
                field: "plan",
                value: plan_text.to_owned(),
                allowed: "flex, subscription, free",
            }
        })?;
        let from = text("from")?
            .map(|s| parse_instant("from", s))
            .transpose()?;
        let to = text("to")?.map(|s| parse_instant("to", s)).transpose()?;
        if let (Some(f), Some(t)) = (&from, &to)
            && t < f
        {
            return Err(Problem::BeforeStart { field: "to" });
        }
        Ok(Entitlement {
            user,
            product,
            plan,
            from,
            to,
        })
    }

    /// Active at `t`: `from` ≤ t < `to`.
    pub fn active_at(&self, t: Nanos) -> bool {
        self.from.as_ref().is_none_or(|f| nanos(f) <= t)
            && self.to.as_ref().is_none_or(|e| t < nanos(e))
    }
}

/// Everything that decides the price of one (user, product) key's days.
#[derive(Debug, Clone, Copy)]
pub struct Pricing<'e> {
    /// The catalog's daily rate.
    pub tokens_per_day: u64,
    /// This user's entitlements for this product.
    pub entitlements: &'e [&'e Entitlement],
}

impl Pricing<'_> {
    /// The plan at `t` and the tokens a window opening then costs.
    ///
    /// Any active subscription wins; then a free assignment or a catalog rate of 0;
    /// otherwise Flex at the catalog rate (everyone is on Flex unless told otherwise).
    pub fn at(&self, t: Nanos) -> (Plan, u64) {
        let active = |plan: Plan| {
            self.entitlements
                .iter()
                .any(|e| e.plan == plan && e.active_at(t))
        };
        if active(Plan::Subscription) {
            (Plan::Subscription, 0)
        } else if self.tokens_per_day == 0 || active(Plan::Free) {
            (Plan::Free, 0)
        } else {
            (Plan::Flex, self.tokens_per_day)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Nanos {
        nanos(&parse_instant("t", s).unwrap())
    }

    #[test]
    fn subscription_is_active_from_inclusive_to_exclusive() {
        let e = Entitlement::from_json(
            &json!({"user": "sophie", "product": "acad", "plan": "subscription",
            "from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}),
        )
        .unwrap();
        let pricing = Pricing {
            tokens_per_day: 7,
            entitlements: &[&e],
        };
        assert_eq!(pricing.at(at("2026-02-28T23:59:59Z")), (Plan::Flex, 7));
        assert_eq!(
            pricing.at(at("2026-03-01T00:00:00Z")),
            (Plan::Subscription, 0)
        );
        assert_eq!(pricing.at(at("2026-04-01T00:00:00Z")), (Plan::Flex, 7));
    }

    #[test]
    fn subscription_wins_over_flex_entitlement() {
        let sub =
            Entitlement::from_json(&json!({"user": "u", "product": "p", "plan": "subscription"}))
                .unwrap();
        let flex =
            Entitlement::from_json(&json!({"user": "u", "product": "p", "plan": "flex"})).unwrap();
        let pricing = Pricing {
            tokens_per_day: 7,
            entitlements: &[&flex, &sub],
        };
        assert_eq!(pricing.at(0), (Plan::Subscription, 0));
    }

    #[test]
    fn rate_zero_is_free() {
        assert_eq!(
            Pricing {
                tokens_per_day: 0,
                entitlements: &[]
            }
            .at(0),
            (Plan::Free, 0)
        );
    }

    #[test]
    fn unknown_plan_is_refused() {
        let e = Entitlement::from_json(&json!({"user": "u", "product": "p", "plan": "gold"}))
            .unwrap_err();
        assert_eq!(e.field(), Some("plan"));
    }
}
