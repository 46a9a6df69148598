//! A sleep announced from outside the agent's tasks (the Windows service's power
//! events; logind has its own watch) is handled as logind's is: the pre-sleep reminder
//! is decided and the journal flushed before the announcer is let go. The real agent
//! loop, a real journal on disk and an injected clock; the process list and the power
//! event are stand-ins (a test cannot suspend the machine), behind the traits the
//! platform's own use. Runs on Linux and, cross-built, under Wine.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, TimeZone, Utc};

use daymeter_agent::config::Config;
use daymeter_agent::journal::{ChosenJournal, Journal, JournalKind, Purpose};
use daymeter_agent::power::announce;
use daymeter_agent::run::Agent;
use daymeter_agent::watch::{ProcessKey, ProcessSource, Running, Seen};
use daymeter_shared::clock::{Clock, ManualClock};

/// One AutoCAD process that runs for the whole test.
struct OneProduct;

const KEY: ProcessKey = ProcessKey {
    pid: 4242,
    started: 1,
};

impl ProcessSource for OneProduct {
    fn poll(
        &mut self,
        classify: &dyn Fn(Seen<'_>) -> Option<String>,
    ) -> std::io::Result<Vec<Running>> {
        let product = classify(Seen {
            exe: "acad.exe",
            args: "",
        });
        Ok(product
            .map(|product| Running {
                key: KEY,
                product,
                owner: Some(1000),
                exe: "acad.exe".to_owned(),
            })
            .into_iter()
            .collect())
    }

    fn forget(&mut self) {}

    fn alive(&self, key: ProcessKey) -> bool {
        key == KEY
    }
}

fn config(dir: &Path) -> Config {
    let path = dir.join("agent.toml");
    // TOML literal strings: a Windows path's backslashes stay as they are.
    let mut text = format!(
        "collector_url = \"http://127.0.0.1:9\"\nuser = \"sophie\"\ndata_dir = '{}'\npoll_interval = \"50ms\"\n",
        dir.join("data").display()
    );
    if cfg!(unix) {
        text.push_str(&format!(
            "socket = '{}'\n",
            dir.join("agent.sock").display()
        ));
    }
    text.push_str(
        "[catalog.acad]\nname = \"AutoCAD\"\ntokens_per_day = 7\nmatch = [{ exe = \"acad.exe\" }]\n",
    );
    std::fs::write(&path, text).expect("write the configuration");
    Config::load(&path).expect("the configuration")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_announced_suspend_sends_the_pre_sleep_reminder_and_flushes_before_it_is_let_go() {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let config = config(dir.path());
    let journal_dir = config.journal_dir();
    let journal: Arc<dyn Journal> = Arc::new(
        ChosenJournal::open(&journal_dir, JournalKind::Redb, Purpose::Run).expect("a journal"),
    );
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap(),
    ));
    let (announcer, announcements) = announce::channel();
    let agent = Arc::new(
        Agent::start(
            config,
            journal.clone(),
            clock.clone() as Arc<dyn Clock>,
            &OneProduct,
            None,
        )
        .expect("the agent starts")
        .with_announcements(announcements),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let agent = agent.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(agent.run(Box::new(OneProduct), async {
                let _ = stopped.await;
            }))
            .expect("the agent runs");
        })
    };

    wait_for("the session to open", || agent.status(None).open.len() == 1);
    // Past the minimum session: the launch is a charged day, whose end is the next
    // charge a pre-sleep reminder names.
    clock.advance(TimeDelta::minutes(30));
    wait_for("the day to be charged", || {
        agent
            .status(None)
            .open
            .first()
            .is_some_and(|o| serde_json::to_value(o).unwrap()["window_end"].is_string())
    });

    assert!(
        announcer.suspending(Duration::from_secs(10)),
        "the agent acknowledges the announcement"
    );
    let status = serde_json::to_value(agent.status(None)).unwrap();
    let kinds: Vec<&str> = status["reminders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"pre_sleep"), "{status:#}");
    // Flushed before the acknowledgement: the journal on disk holds the session as of
    // the announcement (its last_seen at the manual clock's present).
    let stored = journal.sessions().expect("the journal reads");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].session.last_seen.map(|t| t.to_utc()),
        Some(clock.now()),
        "{:?}",
        stored[0].session
    );

    let _ = stop.send(());
    runner.join().expect("the agent stops");
    // Nobody listens any more: the announcer is not held.
    assert!(!announcer.suspending(Duration::from_millis(200)));
}
