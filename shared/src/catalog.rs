//! The product catalog: what a product costs per day and how the agent recognises it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::Problem;

/// How the agent recognises a product's process (see the protocol's matching rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchRule {
    /// Executable file name, compared case-insensitively, `.exe` optional.
    pub exe: String,
    /// Case-insensitive substring of the arguments joined by spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_contain: Option<String>,
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Daily token rate; 0 makes the product free (its days count, at no cost).
    pub tokens_per_day: u64,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRule>,
    /// `false` where the rate is not confirmed by a public source (built-in catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_confirmed: Option<bool>,
}

/// Products by id (`acad`, `revit`, …).
pub type Catalog = BTreeMap<String, Product>;

/// The catalog a fresh agent starts with, so that it meters from its first second,
/// before (or without) a first sync; the collector's catalog replaces it afterwards.
///
/// Rates a public source confirms are set; every other rate is 0 with
/// `rate_confirmed: Some(false)` — a day of an unpriced product still counts (free) and
/// the admin sets the price in the collector. Several products share `acad.exe` and are
/// told apart by `/product`; `/product ACAD` is a substring of `/product ACADM`, which the
/// recogniser's "longest `args_contain` wins" rule resolves (see
/// [`crate::recognition`]).
pub fn builtin() -> Catalog {
    fn exe(exe: &str) -> MatchRule {
        MatchRule {
            exe: exe.to_owned(),
            args_contain: None,
        }
    }
    fn exe_with(exe: &str, args: &str) -> MatchRule {
        MatchRule {
            exe: exe.to_owned(),
            args_contain: Some(args.to_owned()),
        }
    }
    // (id, name, rate if confirmed, match rules)
    let entries: [(&str, &str, Option<u64>, Vec<MatchRule>); 10] = [
        (
            "acad",
            "AutoCAD",
            Some(7),
            vec![exe_with("acad.exe", "/product ACAD"), exe("acad.exe")],
        ),
        (
            "acadm",
            "AutoCAD Mechanical",
            None,
            vec![exe_with("acad.exe", "/product ACADM")],
        ),
        (
            "civil3d",
            "Civil 3D",
            None,
            vec![exe_with("acad.exe", "/product C3D")],
        ),
        ("acadlt", "AutoCAD LT", None, vec![exe("acadlt.exe")]),
        ("revit", "Revit", Some(10), vec![exe("Revit.exe")]),
        ("inventor", "Inventor", None, vec![exe("Inventor.exe")]),
        ("3dsmax", "3ds Max", None, vec![exe("3dsmax.exe")]),
        // Maya's rate comes from a reseller source.
        ("maya", "Maya", Some(6), vec![exe("maya.exe")]),
        // Manage and Simulate share Roamer.exe (only the install folder differs), so
        // they are one product here.
        (
            "navisworks",
            "Navisworks Manage / Simulate",
            None,
            vec![exe("Roamer.exe")],
        ),
        ("fusion", "Fusion", None, vec![exe("Fusion360.exe")]),
    ];
    entries
        .into_iter()
        .map(|(id, name, rate, matches)| {
            (
                id.to_owned(),
                Product {
                    name: Some(name.to_owned()),
                    tokens_per_day: rate.unwrap_or(0),
                    matches,
                    rate_confirmed: Some(rate.is_some()),
                },
            )
        })
        .collect()
}

impl Product {
    /// Validates one catalog entry, naming the field at fault.
    pub fn from_json(value: &Value) -> Result<Product, Problem> {
        let Value::Object(map) = value else {
            return Err(Problem::WrongType {
                field: "product",
                expected: "an object",
            });
        };
        let tokens_per_day = match map.get("tokens_per_day") {
            None | Some(Value::Null) => return Err(Problem::Missing("tokens_per_day")),
            Some(v) => v.as_u64().ok_or(Problem::WrongType {
                field: "tokens_per_day",
                expected: "a whole number of tokens, 0 or more",
            })?,
        };
        let name = match map.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Problem::WrongType {
                    field: "name",
                    expected: "a string",
                });
            }
        };
        let matches = match map.get("match") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => Vec::<MatchRule>::deserialize(v).map_err(|_| Problem::WrongType {
                field: "match",
                expected: "a list of {\"exe\": …, \"args_contain\": …}",
            })?,
        };
        let rate_confirmed = match map.get("rate_confirmed") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(Problem::WrongType {
                    field: "rate_confirmed",
                    expected: "true or false",
                });
            }
        };
        Ok(Product {
            name,
            tokens_per_day,
            matches,
            rate_confirmed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn product_needs_a_whole_rate() {
        assert_eq!(
            Product::from_json(&json!({})),
            Err(Problem::Missing("tokens_per_day"))
        );
        assert!(Product::from_json(&json!({"tokens_per_day": 1.5})).is_err());
        assert!(Product::from_json(&json!({"tokens_per_day": -1})).is_err());
        let p = Product::from_json(&json!({"tokens_per_day": 7, "match": [{"exe": "acad.exe"}]}))
            .unwrap();
        assert_eq!(p.tokens_per_day, 7);
        assert_eq!(p.matches[0].exe, "acad.exe");
    }

    #[test]
    fn builtin_catalog_holds_the_ten_products_with_confirmed_rates_only() {
        let c = builtin();
        let ids: Vec<&str> = c.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            [
                "3dsmax",
                "acad",
                "acadlt",
                "acadm",
                "civil3d",
                "fusion",
                "inventor",
                "maya",
                "navisworks",
                "revit"
            ]
        );
        for (id, rate) in [("acad", 7), ("revit", 10), ("maya", 6)] {
            assert_eq!(c[id].tokens_per_day, rate, "{id}");
            assert_eq!(c[id].rate_confirmed, Some(true), "{id}");
        }
        for (id, p) in &c {
            assert!(p.name.is_some(), "{id}");
            assert!(!p.matches.is_empty(), "{id}");
            if p.rate_confirmed == Some(false) {
                assert_eq!(p.tokens_per_day, 0, "{id}");
            }
        }
        assert_eq!(
            c.values()
                .filter(|p| p.rate_confirmed == Some(false))
                .count(),
            7
        );
        // Every entry survives validation as an import would read it.
        for (id, p) in &c {
            let json = serde_json::to_value(p).unwrap();
            assert_eq!(&Product::from_json(&json).unwrap(), p, "{id}");
        }
    }
}
