//! Group Policy: the ADMX/ADML templates against the agent's reader (on every
//! platform but Windows, where the repository's paths are not the test's), and the
//! reader against a real registry (on Windows, under Wine in CI).

#[cfg(not(windows))]
mod templates {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use daymeter_agent::group_policy::{GRACE_ENFORCEMENT_VALUES, POLICY_KEY, VALUE_NAMES};
    use roxmltree::{Document, Node};

    fn read(relative: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/windows")
            .join(relative);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn named<'a, 'i>(node: Node<'a, 'i>, tag: &str) -> impl Iterator<Item = Node<'a, 'i>> {
        node.descendants()
            .filter(move |n| n.is_element() && n.tag_name().name() == tag)
    }

    /// Every `$(kind.id)` reference in the document's attributes.
    fn references(doc: &Document<'_>, kind: &str) -> BTreeSet<String> {
        let prefix = format!("$({kind}.");
        doc.descendants()
            .flat_map(|n| n.attributes())
            .filter_map(|a| a.value().strip_prefix(&prefix)?.strip_suffix(')'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_admx_writes_exactly_the_values_the_agent_reads_as_machine_strings() {
        let text = read("daymeter.admx");
        let admx = Document::parse(&text).unwrap();
        let mut written = BTreeSet::new();
        for policy in named(admx.root(), "policy") {
            let name = policy.attribute("name").unwrap();
            assert_eq!(policy.attribute("class"), Some("Machine"), "{name}");
            assert_eq!(policy.attribute("key"), Some(POLICY_KEY), "{name}");
            assert_eq!(
                policy.attribute("valueName"),
                None,
                "{name}: a policy-level value would be a DWORD"
            );
            let elements: Vec<Node> = named(policy, "elements")
                .flat_map(|e| e.children().filter(Node::is_element))
                .collect();
            assert_eq!(elements.len(), 1, "{name}: one value per policy");
            let element = elements[0];
            let kind = element.tag_name().name();
            assert!(kind == "text" || kind == "enum", "{name}: {kind}");
            assert_eq!(element.attribute("key"), None, "{name}: another key");
            assert_ne!(
                element.attribute("expandable"),
                Some("true"),
                "{name}: the agent refuses REG_EXPAND_SZ"
            );
            for value in named(element, "value") {
                let only = value.children().find(Node::is_element).unwrap();
                assert_eq!(only.tag_name().name(), "string", "{name}: REG_SZ only");
            }
            assert!(
                written.insert(element.attribute("valueName").unwrap().to_owned()),
                "{name}: written twice"
            );
        }
        let read_by_agent: BTreeSet<String> = VALUE_NAMES.iter().map(|s| s.to_string()).collect();
        assert_eq!(written, read_by_agent);
    }

    #[test]
    fn grace_enforcement_offers_exactly_the_values_the_agent_accepts() {
        let text = read("daymeter.admx");
        let admx = Document::parse(&text).unwrap();
        let element = named(admx.root(), "enum")
            .find(|e| e.attribute("valueName") == Some("GraceEnforcement"))
            .expect("GraceEnforcement is an enum");
        let offered: Vec<&str> = named(element, "string")
            .map(|s| s.text().unwrap_or(""))
            .collect();
        assert_eq!(offered, GRACE_ENFORCEMENT_VALUES);
    }

    #[test]
    fn every_string_and_presentation_the_admx_names_is_in_the_adml() {
        let admx_text = read("daymeter.admx");
        let adml_text = read("en-US/daymeter.adml");
        let admx = Document::parse(&admx_text).unwrap();
        let adml = Document::parse(&adml_text).unwrap();
        let strings: BTreeSet<String> = named(adml.root(), "string")
            .filter(|s| {
                s.parent()
                    .is_some_and(|p| p.tag_name().name() == "stringTable")
            })
            .map(|s| s.attribute("id").unwrap().to_owned())
            .collect();
        let missing: Vec<String> = references(&admx, "string")
            .difference(&strings)
            .cloned()
            .collect();
        assert!(
            missing.is_empty(),
            "strings missing from the ADML: {missing:?}"
        );

        let presentations: Vec<Node> = named(adml.root(), "presentation").collect();
        for id in references(&admx, "presentation") {
            let presentation = presentations
                .iter()
                .find(|p| p.attribute("id") == Some(id.as_str()))
                .unwrap_or_else(|| panic!("presentation {id} missing from the ADML"));
            // Each control of the dialog must name an element of that policy.
            let policy = named(admx.root(), "policy")
                .find(|p| p.attribute("presentation") == Some(&format!("$(presentation.{id})")))
                .unwrap();
            let element_ids: BTreeSet<&str> = named(policy, "elements")
                .flat_map(|e| e.children().filter(Node::is_element))
                .filter_map(|e| e.attribute("id"))
                .collect();
            let controls: BTreeSet<&str> = presentation
                .children()
                .filter_map(|c| c.attribute("refId"))
                .collect();
            assert_eq!(controls, element_ids, "presentation {id}");
        }
    }
}

#[cfg(windows)]
mod registry {
    use std::path::Path;
    use std::time::Duration;

    use daymeter_agent::config::Config;
    use daymeter_agent::group_policy::{self, Layers, Origin, Setting};
    use daymeter_shared::policy::{Enforce, Policy};
    use winreg::RegKey;
    use winreg::enums::HKEY_LOCAL_MACHINE;

    /// A key of this test's own under HKLM, deleted when dropped. Not the real policy
    /// key: the Wine prefix is shared with every other Windows test, and an agent
    /// started by one of them must not find this test's collector URL.
    struct TestKey(String);

    impl TestKey {
        fn new(name: &str, values: &[(&str, &str)]) -> TestKey {
            let path = format!(
                r"Software\Policies\Daymeter\Test-{name}-{}",
                std::process::id()
            );
            let hklm = RegKey::predef(HKEY_LOCAL_MACHINE);
            let (key, _) = hklm.create_subkey(&path).expect("HKLM is writable");
            for (n, v) in values {
                key.set_value(n, &v.to_string()).unwrap();
            }
            TestKey(path)
        }
    }

    impl Drop for TestKey {
        fn drop(&mut self) {
            let _ = RegKey::predef(HKEY_LOCAL_MACHINE).delete_subkey_all(&self.0);
        }
    }

    #[test]
    fn the_policy_key_is_read_and_wins_over_the_file() {
        let key = TestKey::new(
            "read",
            &[
                ("CollectorUrl", "https://policy.example:8650"),
                ("EnrollmentSecret", "policy-secret-0123456789"),
                ("UserMap", "{login}@firm.com"),
                ("RemindBefore", "20m"),
                ("GraceEnforcement", "kill"),
            ],
        );
        let policy = group_policy::read_key(&key.0).unwrap();
        assert!(!format!("{policy:?}").contains("policy-secret"));
        let layers = Layers {
            policy,
            installer: Default::default(),
        };
        let c = Config::assemble(
            Path::new("agent.toml"),
            Some("collector_url = \"http://file\"\npoll_interval = \"2s\"\ndata_dir = \"C:\\\\d\""),
            None,
            layers,
        )
        .unwrap();
        assert_eq!(c.collector_url, "https://policy.example:8650");
        assert_eq!(
            c.enrollment_secret.as_ref().unwrap().expose(),
            "policy-secret-0123456789"
        );
        assert_eq!(c.licence_user(Some("sophie")), "sophie@firm.com");
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.origins[&Setting::CollectorUrl], Origin::Policy);
        assert_eq!(c.origins[&Setting::PollInterval], Origin::File);
        let p = c.overrides.over(Policy::default());
        assert_eq!(p.remind_before, Duration::from_secs(1200));
        assert_eq!(p.enforce, Enforce::Kill);
    }

    #[test]
    fn a_missing_key_sets_nothing() {
        let s = group_policy::read_key(r"Software\Policies\Daymeter\NoSuchKey").unwrap();
        assert!(s.collector_url.is_none() && s.grace_enforcement.is_none());
    }

    #[test]
    fn an_unknown_value_name_in_the_registry_is_refused_by_name() {
        let key = TestKey::new(
            "unknown",
            &[("CollectorUrl", "http://h"), ("PollIntervall", "2s")],
        );
        let e = group_policy::read_key(&key.0).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("PollIntervall"), "{text}");
        assert!(text.contains(&key.0), "{text}");
    }

    #[test]
    fn a_value_that_is_not_a_string_is_refused() {
        let key = TestKey::new("dword", &[]);
        RegKey::predef(HKEY_LOCAL_MACHINE)
            .open_subkey_with_flags(&key.0, winreg::enums::KEY_WRITE)
            .unwrap()
            .set_value("PollInterval", &2u32)
            .unwrap();
        let e = group_policy::read_key(&key.0).unwrap_err();
        assert!(e.to_string().contains("PollInterval"), "{e}");
        assert!(e.to_string().contains("REG_SZ"), "{e}");
    }
}
