//! What the collector answered 2xx to, kept as the replay scenario it adds up to:
//! imports merged by the protocol's rules (product id, (user, product, from), policy key;
//! `"replace": true` starts over), and every accepted session copy with the owner its
//! sync request and device token gave it.

use chrono::DateTime;
use serde_json::Value;

use super::json::J;

#[derive(Debug, Default, Clone)]
pub struct Accepted {
    policy: Vec<(String, J)>,
    catalog: Vec<(String, J)>,
    entitlements: Vec<J>,
    sessions: Vec<J>,
}

/// An entitlement's key as the collector compares them: `from` as an instant.
fn entitlement_key(e: &J) -> (Option<String>, Option<String>, String) {
    let from = match e.get("from") {
        None | Some(J::Null) => String::new(),
        Some(v) => match v.string_value() {
            Some(s) => DateTime::parse_from_rfc3339(&s)
                .map(|t| t.timestamp_nanos_opt().unwrap_or_default().to_string())
                .unwrap_or(s),
            None => v.text(),
        },
    };
    (
        e.get("user").and_then(J::string_value),
        e.get("product").and_then(J::string_value),
        from,
    )
}

fn put(list: &mut Vec<(String, J)>, key: String, value: J) {
    list.retain(|(k, _)| *k != key);
    list.push((key, value));
}

/// The pairs of an object as serde_json keeps them (the last copy of a key wins).
fn pairs(j: &J) -> Vec<(String, J)> {
    let mut out = Vec::new();
    if let J::Obj(p) = j {
        for (k, v) in p {
            put(&mut out, k.clone(), v.clone());
        }
    }
    out
}

impl Accepted {
    /// An import the collector answered 2xx to.
    pub fn import(&mut self, doc: &J) {
        if doc.get("replace") == Some(&J::Bool(true)) {
            *self = Accepted {
                sessions: std::mem::take(&mut self.sessions),
                ..Accepted::default()
            };
        }
        if let Some(policy) = doc.get("policy").filter(|p| **p != J::Null) {
            for (k, v) in pairs(policy) {
                put(&mut self.policy, k, v);
            }
        }
        if let Some(catalog) = doc.get("catalog").filter(|c| **c != J::Null) {
            for (k, v) in pairs(catalog) {
                put(&mut self.catalog, k, v);
            }
        }
        if let Some(J::Arr(list)) = doc.get("entitlements") {
            for e in list {
                let key = entitlement_key(e);
                self.entitlements.retain(|x| entitlement_key(x) != key);
                self.entitlements.push(e.clone());
            }
        }
    }

    /// A session copy the collector listed in `accepted`, owned by `user` on `device`.
    pub fn session(&mut self, session: &J, user: &str, device: &str) {
        let mut s = session.clone();
        s.remove("user");
        s.remove("device");
        s.set("user", J::str(user));
        s.set("device", J::str(device));
        self.sessions.push(s);
    }

    fn known(&self, record: &J) -> bool {
        let product = record.get("product").and_then(J::string_value);
        self.catalog
            .iter()
            .any(|(k, _)| Some(k) == product.as_ref())
    }

    /// The replay scenario (spec/replay.md): the settings, and the sessions and
    /// entitlements of products in the catalog (the others are stored but not
    /// accounted until their product is imported).
    pub fn scenario(&self) -> String {
        let doc = J::obj(vec![
            ("policy", J::Obj(self.policy.clone())),
            ("catalog", J::Obj(self.catalog.clone())),
            (
                "entitlements",
                J::Arr(
                    self.entitlements
                        .iter()
                        .filter(|e| self.known(e))
                        .cloned()
                        .collect(),
                ),
            ),
            (
                "sessions",
                J::Arr(
                    self.sessions
                        .iter()
                        .filter(|s| self.known(s))
                        .cloned()
                        .collect(),
                ),
            ),
        ]);
        doc.text()
    }

    /// What `replay` prints for [`Accepted::scenario`], or why it refuses it.
    pub fn replay(&self) -> Result<Value, String> {
        let input = self.scenario();
        let report = daymeter_shared::scenario::replay(input.as_bytes())
            .map_err(|e| format!("replay refuses the accepted scenario: {e}"))?;
        let mut out = Vec::new();
        report
            .write_json(&mut out)
            .map_err(|e| format!("writing the report: {e}"))?;
        serde_json::from_slice(&out).map_err(|e| format!("the report is not JSON: {e}"))
    }
}

/// A `serde_json::Value` as a [`J`] (for a body sent as bytes that turned out JSON).
pub fn from_value(v: &Value) -> J {
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => J::Num(n.to_string()),
        Value::String(s) => J::Str(s.clone()),
        Value::Array(items) => J::Arr(items.iter().map(from_value).collect()),
        Value::Object(map) => J::Obj(
            map.iter()
                .map(|(k, v)| (k.clone(), from_value(v)))
                .collect(),
        ),
    }
}
