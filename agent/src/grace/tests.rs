use super::*;

const H: u64 = HOUR;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
        .unwrap()
        .to_utc()
}

/// A machine whose wall clock and monotonic clock both run; the wall clock can be moved.
struct Machine {
    wall: DateTime<Utc>,
    since_boot: Duration,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            wall: t0(),
            since_boot: Duration::from_secs(100),
        }
    }

    fn now(&self) -> Now {
        Now {
            wall: self.wall,
            since_boot: self.since_boot,
        }
    }

    fn run(&mut self, secs: u64) -> Now {
        self.wall += TimeDelta::seconds(secs as i64);
        self.since_boot += Duration::from_secs(secs);
        self.now()
    }

    /// Moves the wall clock only.
    fn set_wall(&mut self, by_secs: i64) -> Now {
        self.wall += TimeDelta::seconds(by_secs);
        self.now()
    }
}

fn key(pid: u32) -> ProcessKey {
    ProcessKey { pid, started: 1000 }
}

fn session(pid: u32, plan: Option<Plan>, opened_at: DateTime<Utc>) -> GraceSession {
    GraceSession {
        key: key(pid),
        uid: Some(1000),
        product: "acad".into(),
        plan,
        opened_at,
    }
}

fn policy(enforce: Enforce) -> Policy {
    Policy {
        enforce,
        ..Policy::default()
    }
}

fn kinds(actions: &[GraceAction]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            GraceAction::Warn { .. } => "warn",
            GraceAction::Expired { .. } => "expired",
            GraceAction::AskToClose { .. } => "ask",
            GraceAction::Kill { .. } => "kill",
        })
        .collect()
}

/// A keeper signed in at t0 that has seen `running` at its first poll (online).
fn signed_in(m: &Machine, running: &[GraceSession]) -> GraceKeeper {
    let mut k = GraceKeeper::new();
    k.signed_in(m.now());
    assert!(
        k.step(m.now(), false, running, &Policy::default())
            .is_empty()
    );
    k
}

#[test]
fn nothing_is_enforced_before_the_first_sign_in() {
    let mut m = Machine::new();
    let mut k = GraceKeeper::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let p = policy(Enforce::Kill);
    for _ in 0..10 {
        assert!(k.step(m.run(10 * DAY), true, &s, &p).is_empty());
    }
    assert_eq!(k.clock().offline_for(m.wall), None);
}

#[test]
fn offline_for_follows_the_wall_clock_and_the_time_since_boot() {
    let mut m = Machine::new();
    let mut c = OfflineClock::default();
    c.signed_in(m.now());
    c.observe(m.run(3 * H));
    assert_eq!(c.offline_for(m.wall), Some(Duration::from_secs(3 * H)));
}

#[test]
fn a_wall_clock_moved_backwards_does_not_extend_the_grace() {
    let mut m = Machine::new();
    let mut c = OfflineClock::default();
    c.signed_in(m.now());
    c.observe(m.run(20 * H));
    c.observe(m.set_wall(-(20 * H as i64)));
    c.observe(m.run(H));
    assert_eq!(c.offline_for(m.wall), Some(Duration::from_secs(21 * H)));
}

#[test]
fn a_wall_clock_moved_backwards_while_the_agent_was_stopped_is_caught_by_the_high_water_mark() {
    let mut m = Machine::new();
    let mut c = OfflineClock::default();
    c.signed_in(m.now());
    c.observe(m.run(20 * H));
    // Restart: the time since boot starts again; the wall clock is moved back.
    let mut c: OfflineClock = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    m.since_boot = Duration::from_secs(5);
    c.observe(m.set_wall(-(10 * H as i64)));
    assert_eq!(c.offline_for(m.wall), Some(Duration::from_secs(20 * H)));
}

#[test]
fn a_wall_clock_moved_forwards_shortens_the_grace() {
    let mut m = Machine::new();
    let mut c = OfflineClock::default();
    c.signed_in(m.now());
    c.observe(m.run(H));
    c.observe(m.set_wall(30 * H as i64));
    assert_eq!(c.offline_for(m.wall), Some(Duration::from_secs(31 * H)));
    // And moving it back again does not give the time back.
    c.observe(m.set_wall(-(30 * H as i64)));
    assert_eq!(c.offline_for(m.wall), Some(Duration::from_secs(31 * H)));
}

#[test]
fn a_restart_keeps_the_high_water_mark_and_the_memory() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Close);
    assert_eq!(kinds(&k.step(m.run(22 * H), true, &s, &p)), ["warn"]);
    let journaled = serde_json::to_vec(&k).unwrap();
    let mut k: GraceKeeper = serde_json::from_slice(&journaled).unwrap();
    m.since_boot = Duration::from_secs(1);
    // Wall clock put back a day across the restart: neither the 2 h warning again nor
    // a longer grace.
    assert!(
        k.step(m.set_wall(-(24 * H as i64)), true, &s, &p)
            .is_empty()
    );
    assert_eq!(
        k.clock().offline_for(m.wall),
        Some(Duration::from_secs(22 * H))
    );
    assert_eq!(kinds(&k.step(m.run(H + 45 * 60), true, &s, &p)), ["warn"]);
}

#[test]
fn a_flex_product_is_warned_two_hours_and_fifteen_minutes_before_the_end_once_each() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Close);
    assert!(k.step(m.run(21 * H), true, &s, &p).is_empty());
    let a = k.step(m.run(H), true, &s, &p);
    assert_eq!(
        a,
        [GraceAction::Warn {
            key: key(1),
            uid: Some(1000),
            product: "acad".into(),
            plan: Plan::Flex,
            deadline: t0() + TimeDelta::hours(24),
        }]
    );
    assert!(k.step(m.run(60), true, &s, &p).is_empty());
    assert!(k.step(m.run(H + 44 * 60 - 60), true, &s, &p).is_empty());
    assert_eq!(kinds(&k.step(m.run(60), true, &s, &p)), ["warn"]);
    assert!(k.step(m.run(60), true, &s, &p).is_empty());
}

#[test]
fn a_subscription_is_warned_daily_in_its_last_three_days() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Subscription), t0())];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Close);
    let mut warned_on = Vec::new();
    for day in 1..30 {
        if !k.step(m.run(DAY), true, &s, &p).is_empty() {
            warned_on.push(day);
        }
    }
    assert_eq!(warned_on, [27, 28, 29]);
}

#[test]
fn a_subscription_is_warned_at_every_launch_while_offline() {
    let mut m = Machine::new();
    let mut k = signed_in(&m, &[]);
    let p = policy(Enforce::Close);
    m.run(DAY);
    let first = [session(1, Some(Plan::Subscription), m.wall)];
    assert_eq!(kinds(&k.step(m.now(), true, &first, &p)), ["warn"]);
    assert!(
        k.step(m.run(60), true, &first, &p).is_empty(),
        "once per launch"
    );
    let second = [session(2, Some(Plan::Subscription), m.wall)];
    assert_eq!(kinds(&k.step(m.run(60), true, &second, &p)), ["warn"]);
    let third = [session(3, Some(Plan::Subscription), m.wall)];
    assert!(
        k.step(m.run(60), false, &third, &p).is_empty(),
        "not while the collector answers"
    );
}

#[test]
fn two_processes_of_one_product_give_one_warning() {
    let mut m = Machine::new();
    let s = [
        session(1, Some(Plan::Flex), t0()),
        session(2, Some(Plan::Flex), t0()),
    ];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Close);
    assert_eq!(kinds(&k.step(m.run(23 * H), true, &s, &p)), ["warn"]);
}

#[test]
fn a_threshold_as_long_as_the_grace_is_skipped() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let mut k = signed_in(&m, &s);
    let p = Policy {
        grace_flex: Duration::from_secs(H),
        ..policy(Enforce::Close)
    };
    assert!(k.step(m.run(60), true, &s, &p).is_empty());
    assert_eq!(kinds(&k.step(m.run(45 * 60), true, &s, &p)), ["warn"]);
}

#[test]
fn an_unknown_plan_counts_as_flex_and_a_free_product_has_no_limit() {
    let mut m = Machine::new();
    let mut free = session(2, Some(Plan::Free), t0());
    free.product = "viewer".into();
    let s = [session(1, None, t0()), free];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Close);
    let a = k.step(m.run(25 * H), true, &s, &p);
    assert_eq!(kinds(&a), ["expired", "ask"]);
    assert!(matches!(&a[0], GraceAction::Expired { key: k, plan: Plan::Flex, .. } if *k == key(1)));
}

#[test]
fn under_close_a_session_running_at_expiry_is_told_and_asked_once() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Close);
    k.step(m.run(23 * H), true, &s, &p);
    k.step(m.run(50 * 60), true, &s, &p);
    let a = k.step(m.run(10 * 60), true, &s, &p);
    assert_eq!(
        a,
        [
            GraceAction::Expired {
                key: key(1),
                uid: Some(1000),
                product: "acad".into(),
                plan: Plan::Flex,
                close_at: Some(m.wall),
            },
            GraceAction::AskToClose { key: key(1) },
        ]
    );
    for _ in 0..5 {
        assert!(k.step(m.run(H), true, &s, &p).is_empty(), "never a kill");
    }
}

#[test]
fn under_warn_an_expired_session_is_only_told() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Warn);
    let a = k.step(m.run(24 * H), true, &s, &p);
    assert!(matches!(
        a.as_slice(),
        [GraceAction::Expired { close_at: None, .. }]
    ));
    for _ in 0..5 {
        assert!(k.step(m.run(H), true, &s, &p).is_empty());
    }
}

#[test]
fn under_kill_a_session_still_running_close_delay_after_the_ask_is_killed() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Kill);
    assert_eq!(
        kinds(&k.step(m.run(24 * H), true, &s, &p)),
        ["expired", "ask"]
    );
    assert!(k.step(m.run(4 * 60), true, &s, &p).is_empty());
    assert_eq!(
        k.step(m.run(60), true, &s, &p),
        [GraceAction::Kill { key: key(1) }]
    );
    assert!(k.step(m.run(60), true, &s, &p).is_empty());
}

#[test]
fn a_session_that_closed_when_asked_is_not_killed() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Kill);
    k.step(m.run(24 * H), true, &s, &p);
    assert!(k.step(m.run(10 * 60), true, &[], &p).is_empty());
}

#[test]
fn a_launch_past_the_grace_is_told_at_once_and_asked_close_delay_later() {
    let mut m = Machine::new();
    let mut k = signed_in(&m, &[]);
    let p = policy(Enforce::Close);
    assert!(k.step(m.run(30 * H), true, &[], &p).is_empty());
    let s = [session(7, Some(Plan::Flex), m.wall)];
    let a = k.step(m.run(1), true, &s, &p);
    assert_eq!(
        a,
        [GraceAction::Expired {
            key: key(7),
            uid: Some(1000),
            product: "acad".into(),
            plan: Plan::Flex,
            close_at: Some(s[0].opened_at + TimeDelta::minutes(5)),
        }]
    );
    assert!(k.step(m.run(4 * 60), true, &s, &p).is_empty());
    assert_eq!(
        k.step(m.run(60), true, &s, &p),
        [GraceAction::AskToClose { key: key(7) }]
    );
}

#[test]
fn a_wall_clock_moved_back_does_not_put_off_the_ask() {
    let mut m = Machine::new();
    let mut k = signed_in(&m, &[]);
    let p = policy(Enforce::Close);
    k.step(m.run(30 * H), true, &[], &p);
    let s = [session(7, Some(Plan::Flex), m.wall)];
    k.step(m.now(), true, &s, &p);
    m.set_wall(-(DAY as i64));
    assert_eq!(kinds(&k.step(m.run(5 * 60), true, &s, &p)), ["ask"]);
}

#[test]
fn a_sign_in_resets_the_warnings_and_the_asks() {
    let mut m = Machine::new();
    let s = [session(1, Some(Plan::Flex), t0())];
    let mut k = signed_in(&m, &s);
    let p = policy(Enforce::Close);
    assert_eq!(
        kinds(&k.step(m.run(24 * H), true, &s, &p)),
        ["expired", "ask"]
    );
    k.signed_in(m.now());
    assert!(k.step(m.run(21 * H), true, &s, &p).is_empty());
    assert_eq!(kinds(&k.step(m.run(H), true, &s, &p)), ["warn"]);
    assert_eq!(
        kinds(&k.step(m.run(2 * H), true, &s, &p)),
        ["expired", "ask"]
    );
}

#[test]
fn grace_until_is_the_wall_time_the_grace_ends() {
    let mut m = Machine::new();
    let mut k = signed_in(&m, &[]);
    let p = policy(Enforce::Close);
    k.step(m.run(H), true, &[], &p);
    assert_eq!(
        k.grace_until(Plan::Flex, &p, m.now()),
        Some(t0() + TimeDelta::hours(24))
    );
    assert_eq!(k.grace_until(Plan::Free, &p, m.now()), None);
}
