//! Each poll's reminder pass: the facts of every open session gathered from what the
//! agent knows (the licence user's last answer, the catalog, the journal's sessions,
//! the owner's activity), handed to the one rule set in [`crate::reminder::due`], and
//! what is due told to the owner's helpers.

use chrono::{DateTime, Utc};

use daymeter_shared::catalog::Catalog;
use daymeter_shared::entitlement::Plan;

use super::{Agent, State};
use crate::journal::Tracked;
use crate::reminder::due::{Moment, OpenFacts};
use crate::sync::SyncAnswer;

/// A product's plan and day rate for a licence user: the collector's word from the
/// user's last answer, else the catalog's rate as Flex (what an unlisted product
/// would cost), else unknown (no tokens to speak of).
pub(super) fn plan_of(
    answer: Option<&SyncAnswer>,
    catalog: &Catalog,
    product: &str,
) -> (Plan, u64) {
    let listed = answer
        .into_iter()
        .flat_map(|a| a.entitlements.iter())
        .find(|e| e.get("product").and_then(serde_json::Value::as_str) == Some(product));
    if let Some(e) = listed {
        let plan = e
            .get("plan")
            .and_then(|p| serde_json::from_value::<Plan>(p.clone()).ok())
            .unwrap_or(Plan::Flex);
        let tokens = e
            .get("tokens_per_day")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        return (plan, tokens);
    }
    let rate = catalog.get(product).map_or(0, |p| p.tokens_per_day);
    (Plan::Flex, rate)
}

/// The team's balance when the user's last answer said it cannot pay a day of
/// `product`.
fn short_balance(answer: Option<&SyncAnswer>, product: &str) -> Option<u64> {
    answer
        .into_iter()
        .flat_map(|a| a.reminders.iter())
        .find(|r| {
            r.get("kind").and_then(serde_json::Value::as_str) == Some("insufficient_balance")
                && r.get("product").and_then(serde_json::Value::as_str) == Some(product)
        })
        .map(|r| {
            r.get("balance")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        })
}

impl Agent {
    /// Records the idle intervals running now on their sessions, then tells whatever
    /// reminder is due. `launched`: the ids of the sessions opened at this poll.
    pub(super) fn remind(
        &self,
        state: &mut State,
        now: DateTime<Utc>,
        launched: &[String],
        moment: Moment,
    ) {
        let idle_after = state.policy.idle_after;
        for idle in state.activity.running(now, idle_after) {
            state.meter.record_idle(idle.uid, idle.from, idle.to);
        }
        let sessions: Vec<&Tracked> = state.meter.open().chain(state.meter.closed()).collect();
        let fallback = self.config.licence_user(None);
        let mut facts = Vec::new();
        for t in state.meter.open() {
            let user = t.user.as_deref().unwrap_or(&fallback);
            let product = &*t.session.product;
            let answer = state.answers.get(user);
            let of_user: Vec<&Tracked> = sessions
                .iter()
                .copied()
                .filter(|s| s.user.as_deref().unwrap_or(&fallback) == user)
                .collect();
            let window = crate::windows::current(
                answer.map(|a| a.open_windows.as_slice()).unwrap_or(&[]),
                &of_user,
                product,
                &state.policy,
                now,
            );
            let (plan, day_tokens) = plan_of(answer, &state.catalog, product);
            let product_name = state
                .catalog
                .get(product)
                .and_then(|p| p.name.as_deref())
                .unwrap_or(product);
            facts.push(OpenFacts {
                uid: t.owner,
                user,
                product,
                product_name,
                started: t.session.start.to_utc(),
                launched: launched.iter().any(|id| *id == *t.session.id),
                plan,
                day_tokens,
                window,
                idle_since: t
                    .owner
                    .and_then(|uid| state.activity.idle_since(uid, now, idle_after)),
                short_balance: short_balance(answer, product),
            });
        }
        let due = state.due.step(now, &state.policy, &facts, moment);
        drop(facts);
        for (uid, reminder) in due {
            Agent::tell(state, uid, reminder, now);
        }
    }
}
