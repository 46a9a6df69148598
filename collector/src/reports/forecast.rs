//! A team's forecast: how fast it burns tokens, when its balance runs out, and what
//! expires unused before then.
//!
//! The burn rate is the tokens charged over the last 30 (and 90) days, today included,
//! per day. The run-out date plays the future forward day by day at the 30-day rate,
//! drawing as the ledger does (the purchase that expires first pays first) and dropping
//! what a purchase still holds on the day it expires: the first day with nothing left
//! is `runs_out_on`, and what was dropped before it is `expiring_unused`. A team that
//! burns nothing has no run-out date (`None`): all it holds expires unused, which is
//! what `expiring_unused` then says.

use chrono::{NaiveDate, TimeDelta};
use serde::Serialize;

use super::round2;

/// How far ahead the forecast looks: beyond it a balance counts as lasting.
pub const HORIZON_DAYS: i64 = 5 * 366;

/// What a purchase still holds, and the day it expires (UTC; it pays nothing from then).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holding {
    pub remaining: u64,
    pub expires_on: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub team: String,
    pub remaining: u64,
    pub burn_per_day_30: f64,
    pub burn_per_day_90: f64,
    pub runs_out_on: Option<NaiveDate>,
    pub expiring_unused: u64,
}

/// `charged_by_day` is the team's tokens per day for the 90 days ending `today`, oldest
/// first (fewer entries are taken as days without charges).
pub fn forecast(
    team: &str,
    holdings: &[Holding],
    charged_by_day: &[u64],
    today: NaiveDate,
) -> Forecast {
    let last = |n: usize| -> f64 {
        let n_days = charged_by_day.len().min(n);
        let sum: u64 = charged_by_day[charged_by_day.len() - n_days..].iter().sum();
        round2(sum as f64 / n as f64)
    };
    let (burn30, burn90) = (last(30), last(90));
    let mut live: Vec<(NaiveDate, f64)> = holdings
        .iter()
        .filter(|h| h.expires_on > today && h.remaining > 0)
        .map(|h| (h.expires_on, h.remaining as f64))
        .collect();
    live.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let remaining = live.iter().map(|(_, r)| *r as u64).sum();
    if burn30 <= 0.0 {
        return Forecast {
            team: team.to_owned(),
            remaining,
            burn_per_day_30: burn30,
            burn_per_day_90: burn90,
            runs_out_on: None,
            expiring_unused: remaining,
        };
    }
    let mut expiring = 0.0;
    let mut runs_out_on = None;
    for n in 0..=HORIZON_DAYS {
        let day = today + TimeDelta::days(n);
        // What expires today pays nothing from today on.
        live.retain(|(expires_on, left)| {
            let keep = *expires_on > day;
            if !keep {
                expiring += left;
            }
            keep
        });
        if live.is_empty() {
            runs_out_on = Some(day);
            break;
        }
        // Today's charges are already in the balance; burning starts tomorrow.
        if n == 0 {
            continue;
        }
        let mut need = burn30;
        for (_, left) in live.iter_mut() {
            let take = need.min(*left);
            *left -= take;
            need -= take;
            if need <= 0.0 {
                break;
            }
        }
        live.retain(|(_, left)| *left > 1e-9);
        if live.is_empty() {
            runs_out_on = Some(day);
            break;
        }
    }
    Forecast {
        team: team.to_owned(),
        remaining,
        burn_per_day_30: burn30,
        burn_per_day_90: burn90,
        runs_out_on,
        expiring_unused: expiring.round() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().expect("a day")
    }

    #[test]
    fn the_balance_runs_out_at_the_30_day_rate() {
        // 10 a day for the last 30 days; 100 left, expiring in a year.
        let charged = vec![10; 30];
        let f = forecast(
            "civil",
            &[Holding {
                remaining: 100,
                expires_on: day("2027-12-01"),
            }],
            &charged,
            day("2026-12-06"),
        );
        assert_eq!(f.burn_per_day_30, 10.0);
        assert_eq!(f.burn_per_day_90, 3.33);
        assert_eq!(f.runs_out_on, Some(day("2026-12-16")));
        assert_eq!(f.expiring_unused, 0);
    }

    #[test]
    fn what_expires_before_it_is_used_is_counted_and_brings_the_date_forward() {
        // 10 a day; 50 expire in 3 days (only 20 of them used by then), 30 later.
        let f = forecast(
            "civil",
            &[
                Holding {
                    remaining: 50,
                    expires_on: day("2026-12-09"),
                },
                Holding {
                    remaining: 30,
                    expires_on: day("2027-06-01"),
                },
            ],
            &[10; 30],
            day("2026-12-06"),
        );
        assert_eq!(f.remaining, 80);
        assert_eq!(f.expiring_unused, 30);
        // 12-07 and 12-08 from the first; it expires on 12-09; the second lasts 3 days.
        assert_eq!(f.runs_out_on, Some(day("2026-12-11")));
    }

    #[test]
    fn a_team_that_burns_nothing_never_runs_out_and_all_it_holds_expires() {
        let f = forecast(
            "idle",
            &[Holding {
                remaining: 40,
                expires_on: day("2027-01-01"),
            }],
            &[],
            day("2026-12-06"),
        );
        assert_eq!(f.runs_out_on, None);
        assert_eq!(f.expiring_unused, 40);
    }
}
