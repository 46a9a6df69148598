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
}
