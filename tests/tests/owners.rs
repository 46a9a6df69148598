//! Whose licence a session draws on, end to end: one agent service meters the products
//! of every account on the machine, charges each session to the owner of its process
//! (login name through `user_map`), and syncs one request per licence user.

#![cfg(target_os = "linux")]

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use daymeter_tests::{Agent, Collector, Product};

#[tokio::test(flavor = "multi_thread")]
async fn each_session_is_charged_to_the_owner_of_its_process_through_user_map() {
    let dir = tempfile::tempdir().expect("scratch folder");
    // Another account must be able to run the product copied in here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the test folder");
    let collector = Collector::start(dir.path());
    collector
        .import_products(
            &[("e2eowner", "e2eowner-one")],
            json!({"min_session": "1s", "sync_interval": "1s", "retry_max": "1s"}),
        )
        .await;
    let config = Agent::configure_with(
        dir.path(),
        &collector.url(),
        "",
        "user_map = \"{login}@firm.test\"\n",
    );
    let _agent = Agent::start(&config);

    let _ours = Product::start(dir.path(), "e2eowner-one");
    let _theirs = Product::start_as(dir.path(), "e2eowner-one", Some(65534));

    let login = |uid: u32| {
        // SAFETY: getpwuid on this process's own thread; the entry is read at once.
        let pw = unsafe { libc::getpwuid(uid) };
        assert!(!pw.is_null(), "uid {uid} has an account");
        // SAFETY: pw_name of an entry getpwuid returned is a NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: geteuid(2) takes nothing and always succeeds.
    let me = format!("{}@firm.test", login(unsafe { libc::geteuid() }));
    let them = format!("{}@firm.test", login(65534));
    let mine = collector.sessions_where(&me, |s| s.len() == 1).await;
    let theirs = collector.sessions_where(&them, |s| s.len() == 1).await;
    assert_eq!(mine[0]["product"], "e2eowner");
    assert_eq!(theirs[0]["product"], "e2eowner");
    assert_ne!(mine[0]["id"], theirs[0]["id"]);
    assert_eq!(
        mine[0]["device"], theirs[0]["device"],
        "one machine, two users"
    );

    // `status` names the licence user of each session.
    let status = Agent::status_where(&config, "two open sessions", |s| {
        s["open"].as_array().is_some_and(|o| o.len() == 2)
    });
    let mut users: Vec<String> = status["open"]
        .as_array()
        .expect("open")
        .iter()
        .filter_map(|o| o["user"].as_str().map(str::to_owned))
        .collect();
    users.sort();
    let mut expected = vec![me, them];
    expected.sort();
    assert_eq!(users, expected, "{status}");
}
