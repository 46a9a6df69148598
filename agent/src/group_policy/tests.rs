use super::*;

fn values(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn every_setting_has_the_value_name_in_its_place() {
    for (i, s) in Setting::ALL.into_iter().enumerate() {
        assert_eq!(s.value_name(), VALUE_NAMES[i]);
        assert_eq!(Setting::from_value_name(VALUE_NAMES[i]), Some(s));
    }
}

#[test]
fn every_value_is_read_and_checked() {
    let s = Settings::parse(
        POLICY_KEY,
        &values(&[
            ("CollectorUrl", "https://c.example:8650/"),
            ("EnrollmentSecret", "s3cret-s3cret-s3cret"),
            ("CaFile", r"C:\ProgramData\daymeter\ca.pem"),
            ("UserMap", "{login}@firm.com"),
            ("PollInterval", "2s"),
            ("RemindBefore", "30m"),
            ("GraceEnforcement", "kill"),
        ]),
    )
    .unwrap();
    assert_eq!(s.collector_url.as_deref(), Some("https://c.example:8650"));
    assert_eq!(
        s.enrollment_secret.as_ref().map(Secret::expose),
        Some("s3cret-s3cret-s3cret")
    );
    assert_eq!(
        s.ca_file,
        Some(PathBuf::from(r"C:\ProgramData\daymeter\ca.pem"))
    );
    assert_eq!(
        s.user_map.as_ref().unwrap().licence_user("sophie"),
        "sophie@firm.com"
    );
    assert_eq!(s.poll_interval, Some(Duration::from_secs(2)));
    assert_eq!(s.remind_before, Some(Duration::from_secs(1800)));
    assert_eq!(s.grace_enforcement, Some(Enforce::Kill));
    assert!(!format!("{s:?}").contains("s3cret"), "the secret leaks");
}

#[test]
fn an_unknown_value_name_is_refused_by_name() {
    let e = Settings::parse(POLICY_KEY, &values(&[("CollectorURI", "https://c")])).unwrap_err();
    let text = e.to_string();
    for named in [r"HKLM\Software\Policies\Daymeter\Agent", "CollectorURI"] {
        assert!(text.contains(named), "{named} missing from: {text}");
    }
}

#[test]
fn names_are_matched_as_the_registry_does_without_case() {
    let s = Settings::parse(POLICY_KEY, &values(&[("collectorurl", "http://h")])).unwrap();
    assert_eq!(s.collector_url.as_deref(), Some("http://h"));
}

#[test]
fn bad_values_are_refused_naming_key_and_value() {
    for (name, text) in [
        ("CollectorUrl", "ftp://h"),
        ("CollectorUrl", "  "),
        ("PollInterval", "soon"),
        ("PollInterval", "1ms"),
        ("RemindBefore", "an hour"),
        ("RemindBefore", "400days"),
        ("GraceEnforcement", "Kill"),
        ("GraceEnforcement", "terminate"),
        ("UserMap", "cad@firm.com"),
    ] {
        let e = Settings::parse(INSTALLER_KEY, &values(&[(name, text)])).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains(&format!(r"HKLM\Software\Daymeter\Agent\{name}")),
            "{name}={text}: {message}"
        );
    }
}

#[test]
fn grace_enforcement_takes_exactly_the_collectors_enforce_values() {
    for name in GRACE_ENFORCEMENT_VALUES {
        let e = enforce_from_name(name).unwrap();
        assert_eq!(serde_json::to_value(e).unwrap(), name, "the wire name");
    }
    for e in [Enforce::Warn, Enforce::Close, Enforce::Kill] {
        let wire = serde_json::to_value(e).unwrap();
        assert!(GRACE_ENFORCEMENT_VALUES.contains(&wire.as_str().unwrap()));
    }
}

#[test]
fn the_first_layer_that_sets_a_value_wins() {
    let chosen = pick([
        (Origin::Policy, None),
        (Origin::Installer, Some(1)),
        (Origin::File, Some(2)),
    ]);
    assert_eq!(chosen, Some((Origin::Installer, 1)));
    assert_eq!(pick::<u8>([(Origin::File, None)]), None);
}

#[test]
fn local_overrides_replace_only_what_they_set() {
    let collector = Policy {
        remind_before: Duration::from_secs(3600),
        enforce: Enforce::Close,
        ..Policy::default()
    };
    let none = LocalPolicy::default();
    assert_eq!(none.over(collector.clone()), collector);
    let both = LocalPolicy {
        remind_before: Some(Duration::from_secs(600)),
        enforce: Some(Enforce::Warn),
    };
    let p = both.over(collector.clone());
    assert_eq!(p.remind_before, Duration::from_secs(600));
    assert_eq!(p.enforce, Enforce::Warn);
    assert_eq!(p.window, collector.window);
}
