//! The dashboard's HTML: server-rendered with maud (escaped by construction), styled
//! inline, no script. Every number comes from the same report documents the JSON API
//! answers with, so the page and `/v1/reports/…` never disagree.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use super::chart;

/// The ranges offered above the dashboard.
pub const RANGES: &[(&str, &str)] = &[
    ("past-30-days", "Past 30 days"),
    ("past-3-months", "Past 3 months"),
    ("past-6-months", "Past 6 months"),
    ("past-12-months", "Past 12 months"),
];

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem; color: #1d2330; }
header { display: flex; align-items: baseline; gap: 1.5rem; flex-wrap: wrap; }
header h1 { font-size: 1.4rem; margin: 0; }
nav a { margin-right: .8rem; } nav a.current { font-weight: bold; text-decoration: none; color: inherit; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: .8rem; margin: 1rem 0; }
.tile { border: 1px solid #d5dae3; border-radius: 6px; padding: .7rem 1rem; }
.tile .value { font-size: 1.7rem; font-weight: 600; }
.tile .label { color: #5b6475; font-size: .85rem; }
section { margin: 1.5rem 0; }
h2 { font-size: 1.1rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #e6e9ef; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
figure.chart { margin: 0; } figure.chart svg { width: 100%; height: auto; }
figure.chart text { font-size: 11px; fill: #5b6475; }
.axis { stroke: #b5bcc9; } .series { fill: none; stroke: #2563eb; stroke-width: 1.5; } .bar { fill: #2563eb; }
.note { color: #6b7280; font-size: .85rem; margin: .2rem 0 .5rem; }
.exports a, button { display: inline-block; margin-right: .6rem; padding: .35rem .8rem; border: 1px solid #2563eb; border-radius: 4px; color: #2563eb; background: white; text-decoration: none; font: inherit; cursor: pointer; }
.empty { color: #5b6475; }
form.login { max-width: 22rem; margin: 4rem auto; display: grid; gap: .6rem; }
form.login input { padding: .4rem; font: inherit; }
.error { color: #b42318; }
";

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — daymeter" }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

/// The login form (with a password field where an admin password is configured);
/// `error` says why the last attempt failed.
pub fn login(password: bool, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        html! {
            form.login method="post" action="/login" {
                h1 { "daymeter" }
                @if password {
                    label for="password" { "Admin password" }
                    input #password type="password" name="password" autocomplete="current-password";
                    label for="token" { "or the admin token" }
                    input #token type="password" name="token" autocomplete="off";
                } @else {
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required;
                }
                @if let Some(e) = error { p.error { (e) } }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The report documents the dashboard shows, as `/v1/reports/…` answers them.
pub struct Docs {
    pub tokens: Value,
    pub products: Value,
    pub users: Value,
    pub usage: Value,
    pub waste: Value,
    pub forecast: Value,
    pub advice: Value,
}

fn number(v: &Value) -> String {
    match v {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list<'v>(doc: &'v Value, key: &str) -> &'v [Value] {
    doc.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Under a per-user table: which users it covers, when they are more than a page (the
/// dashboard shows each per-user report's first page).
fn page_note(doc: &Value) -> Markup {
    let page = &doc["page"];
    html! {
        @if !page["next"].is_null() {
            p.note { "The first " (number(&page["per_page"])) " of " (number(&page["users"]))
                " users, in user order; the API and the CSV exports hold them all." }
        }
    }
}

pub fn dashboard(range: &str, csrf: &str, d: &Docs) -> Markup {
    let runs_out = list(&d.forecast, "teams")
        .iter()
        .filter_map(|t| t["runs_out_on"].as_str())
        .min()
        .unwrap_or("—");
    let by_day: Vec<(String, u64)> = list(&d.tokens, "by_day")
        .iter()
        .map(|p| (number(&p["day"]), p["tokens"].as_u64().unwrap_or(0)))
        .collect();
    let mut by_product: Vec<(String, u64)> = list(&d.products, "products")
        .iter()
        .map(|p| (number(&p["product"]), p["tokens"].as_u64().unwrap_or(0)))
        .collect();
    by_product.sort_by_key(|p| std::cmp::Reverse(p.1));
    let mut users: Vec<&Value> = list(&d.users, "users").iter().collect();
    users.sort_by_key(|u| std::cmp::Reverse(u["tokens"].as_u64().unwrap_or(0)));
    let inactive: Vec<&Value> = list(&d.usage, "usage")
        .iter()
        .filter(|l| l["status"] == "inactive")
        .collect();
    let exports = ["token-usage", "seat-usage", "usage"];
    layout(
        "Dashboard",
        html! {
            header {
                h1 { "daymeter" }
                nav {
                    @for (value, label) in RANGES {
                        a class=[(*value == range).then_some("current")] href=(format!("/?range={value}")) { (label) }
                    }
                }
                form method="post" action="/logout" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Log out" }
                }
            }
            div.tiles {
                div.tile #tile-used { div.value { (number(&d.tokens["used"])) } div.label { "tokens used" } }
                div.tile #tile-remaining { div.value { (number(&d.tokens["remaining"])) } div.label { "tokens remaining" } }
                div.tile #tile-runs-out { div.value { (runs_out) } div.label { "balance runs out (30-day rate)" } }
                div.tile #tile-wasted { div.value { (number(&d.waste["wasted_tokens"])) } div.label { "tokens charged while idle or asleep" } }
            }
            section { (chart::line("chart-tokens-by-day", "Tokens by day, past year", &by_day)) }
            section { (chart::bars("chart-tokens-by-product", "Tokens by product", &by_product)) }
            section {
                h2 { "Tokens by user" }
                (page_note(&d.users))
                table #table-users {
                    thead { tr { th { "User" } th { "Team" } th { "Products" } th.n { "Tokens" } th.n { "Days used" } } }
                    tbody {
                        @for u in users.iter().take(50) {
                            tr {
                                td { (number(&u["user"])) }
                                td { (number(&u["team"])) }
                                td { (u["products"].as_array().map(|p| p.iter().map(number).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                                td.n { (number(&u["tokens"])) }
                                td.n { (number(&u["days_used"])) }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Waste" }
                (page_note(&d.waste))
                p { "Over every user, " code { "rollover = active" } " would save: " strong #would-save { (number(&d.waste["active_rollover_would_save"])) } " tokens." }
                table #table-waste {
                    thead { tr { th { "User" } th { "Product" } th.n { "Wasted tokens" } th.n { "Rollovers" } th.n { "Active rollover would save" } } }
                    tbody {
                        @for k in list(&d.waste, "keys") {
                            tr {
                                td { (number(&k["user"])) }
                                td { (number(&k["product"])) }
                                td.n { (number(&k["wasted_tokens"])) }
                                td.n { (k["rollovers"].as_array().map_or(0, Vec::len)) }
                                td.n { (number(&k["active_rollover_would_save"])) }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Inactive users" }
                (page_note(&d.usage))
                table #table-inactive {
                    thead { tr { th { "User" } th { "Team" } th { "Product" } th { "Assigned" } th { "Last accessed" } th.n { "Days inactive" } } }
                    tbody {
                        @for l in &inactive {
                            tr {
                                td { (number(&l["user"])) }
                                td { (number(&l["team"])) }
                                td { (number(&l["product"])) }
                                td { (number(&l["assigned_on"])) }
                                td { (number(&l["last_accessed"])) }
                                td.n { (number(&l["days_inactive"])) }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Plan advice, last 12 months" }
                (page_note(&d.advice))
                table #table-advice {
                    thead { tr { th { "User" } th { "Product" } th.n { "Days used" } th.n { "Tokens" } th.n { "Flex cost" } th.n { "Subscription" } th.n { "Break-even days" } th { "Advice" } } }
                    tbody {
                        @for a in list(&d.advice, "advice") {
                            tr {
                                td { (number(&a["user"])) }
                                td { (number(&a["product"])) }
                                td.n { (number(&a["days_used"])) }
                                td.n { (number(&a["tokens"])) }
                                td.n { (number(&a["flex_cost"])) }
                                td.n { (number(&a["subscription_price"])) }
                                td.n { (number(&a["break_even_days"])) }
                                td { (number(&a["recommendation"])) }
                            }
                        }
                    }
                }
            }
            section.exports {
                h2 { "Exports" }
                @for e in exports {
                    a href=(format!("/v1/exports/{e}.csv?range={range}")) download { (e) ".csv" }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_user_table_says_when_it_covers_only_the_first_page() {
        let more =
            serde_json::json!({"page": {"number": 1, "per_page": 100, "users": 250, "next": 2}});
        let all =
            serde_json::json!({"page": {"number": 1, "per_page": 100, "users": 40, "next": null}});
        let note = page_note(&more).into_string();
        assert!(note.contains("The first 100 of 250 users"), "{note}");
        assert!(page_note(&all).into_string().is_empty());
    }
}
