//! Concurrent use: one user's sessions of one product that overlap on two devices — the
//! shared login that makes per-device vendor reports wrong. Listed so an admin can ask
//! about it; never charged twice (accounting pools a key's devices into one window).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Filter, Teams};

/// A stored session as the report needs it: start to effective end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub id: String,
    pub user: String,
    pub product: String,
    pub device: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overlap {
    pub user: String,
    pub product: String,
    pub first: Side,
    pub second: Side,
    /// The time both ran, `[from, to)`.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub session: String,
    pub device: String,
    /// The device's hostname, where the caller names it ([`name_devices`]).
    pub hostname: Option<String>,
}

/// Puts each side's hostname, as `hostname_of` knows it.
pub fn name_devices(overlaps: &mut [Overlap], hostname_of: impl Fn(&str) -> Option<String>) {
    for o in overlaps {
        for side in [&mut o.first, &mut o.second] {
            side.hostname = hostname_of(&side.device);
        }
    }
}

/// Every pair of the key's sessions on different devices that share time, the earlier
/// started first; sorted by user, product, start.
pub fn overlaps(spans: &[Span], filter: &Filter, teams: &Teams) -> Vec<Overlap> {
    let mut keys: BTreeMap<(&str, &str), Vec<&Span>> = BTreeMap::new();
    for s in spans
        .iter()
        .filter(|s| s.end > s.start && filter.keeps(teams, &s.user, &s.product))
    {
        keys.entry((&s.user, &s.product)).or_default().push(s);
    }
    let mut out = Vec::new();
    for ((user, product), mut list) in keys {
        list.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
        // Sessions still running at the current start, swept in start order.
        let mut open: Vec<&Span> = Vec::new();
        for s in list {
            open.retain(|o| o.end > s.start);
            for o in &open {
                if o.device != s.device {
                    out.push(Overlap {
                        user: user.to_owned(),
                        product: product.to_owned(),
                        first: Side {
                            session: o.id.clone(),
                            device: o.device.clone(),
                            hostname: None,
                        },
                        second: Side {
                            session: s.id.clone(),
                            device: s.device.clone(),
                            hostname: None,
                        },
                        from: s.start,
                        to: o.end.min(s.end),
                    });
                }
            }
            open.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, device: &str, start: &str, end: &str) -> Span {
        Span {
            id: id.to_owned(),
            user: "ana".to_owned(),
            product: "acad".to_owned(),
            device: device.to_owned(),
            start: format!("2026-11-02T{start}:00Z")
                .parse()
                .expect("an instant"),
            end: format!("2026-11-02T{end}:00Z").parse().expect("an instant"),
        }
    }

    #[test]
    fn sessions_of_one_user_on_two_devices_at_once_are_listed_with_their_overlap() {
        let found = overlaps(
            &[
                span("a", "laptop", "09:00", "11:00"),
                span("b", "desktop", "10:00", "12:00"),
            ],
            &Filter::default(),
            &Teams::default(),
        );
        assert_eq!(found.len(), 1);
        let o = &found[0];
        assert_eq!(
            (o.first.session.as_str(), o.second.session.as_str()),
            ("a", "b")
        );
        assert_eq!(o.from.to_rfc3339(), "2026-11-02T10:00:00+00:00");
        assert_eq!(o.to.to_rfc3339(), "2026-11-02T11:00:00+00:00");
    }

    #[test]
    fn one_device_relaunching_or_sessions_that_only_touch_are_not_concurrent() {
        let found = overlaps(
            &[
                span("a", "laptop", "09:00", "11:00"),
                span("b", "laptop", "10:00", "12:00"),
                span("c", "desktop", "12:00", "13:00"),
            ],
            &Filter::default(),
            &Teams::default(),
        );
        assert!(found.is_empty(), "{found:?}");
    }
}
