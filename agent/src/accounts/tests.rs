use std::cell::Cell;

use super::*;
use crate::journal::redb::RedbJournal;

const SOPHIE: &str = "S-1-5-21-1-2-3-1104";
const MARC: &str = "S-1-5-21-1-2-3-1105";

fn journal(dir: &std::path::Path) -> Arc<dyn Journal> {
    Arc::new(RedbJournal::open(dir).expect("a journal"))
}

#[test]
fn local_system_is_id_0_and_other_accounts_count_from_1000() {
    let accounts = Accounts::in_memory();
    assert_eq!(accounts.id_of(SOPHIE, || Some("FIRM\\sophie".into())), 1000);
    assert_eq!(
        accounts.id_of(SYSTEM_SID, || Some("NT AUTHORITY\\SYSTEM".into())),
        0
    );
    assert_eq!(accounts.id_of(MARC, || Some("FIRM\\marc".into())), 1001);
    assert_eq!(accounts.id_of(SOPHIE, || None), 1000);
    assert_eq!(accounts.sid_of(1001).as_deref(), Some(MARC));
}

#[test]
fn the_login_is_the_name_without_its_domain() {
    let accounts = Accounts::in_memory();
    let id = accounts.id_of(SOPHIE, || Some("FIRM\\sophie".into()));
    assert_eq!(accounts.name_of(id).as_deref(), Some("FIRM\\sophie"));
    assert_eq!(accounts.login_of(id).as_deref(), Some("sophie"));
    assert_eq!(login_of_name("sophie"), "sophie");
    assert_eq!(accounts.login_of(4242), None);
}

#[test]
fn a_name_is_looked_up_once_and_never_replaced() {
    let accounts = Accounts::in_memory();
    let lookups = Cell::new(0);
    let lookup = |name: &str| {
        lookups.set(lookups.get() + 1);
        Some(name.to_owned())
    };
    let id = accounts.id_of(SOPHIE, || lookup("FIRM\\sophie"));
    assert_eq!(
        accounts.id_of(SOPHIE, || lookup("FIRM\\sophie.renamed")),
        id
    );
    assert_eq!(lookups.get(), 1);
    assert_eq!(accounts.login_of(id).as_deref(), Some("sophie"));
}

#[test]
fn a_failed_lookup_keeps_the_id_and_is_not_tried_again_at_once() {
    let accounts = Accounts::in_memory();
    let lookups = Cell::new(0);
    let failing = || {
        lookups.set(lookups.get() + 1);
        None
    };
    let id = accounts.id_of(SOPHIE, failing);
    assert_eq!(accounts.id_of(SOPHIE, failing), id);
    assert_eq!(lookups.get(), 1, "tried again within {LOOKUP_AGAIN:?}");
    assert_eq!(accounts.login_of(id), None);
}

#[test]
fn the_table_survives_a_restart_and_names_offline_as_before() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let (sophie, marc) = {
        let accounts = Accounts::load(journal(dir.path())).expect("the table");
        (
            accounts.id_of(SOPHIE, || Some("FIRM\\sophie".into())),
            accounts.id_of(MARC, || Some("FIRM\\marc".into())),
        )
    };
    // The domain controller is away now: lookups fail.
    let accounts = Accounts::load(journal(dir.path())).expect("the table again");
    assert_eq!(accounts.id_of(MARC, || None), marc);
    assert_eq!(accounts.id_of(SOPHIE, || None), sophie);
    assert_eq!(accounts.login_of(sophie).as_deref(), Some("sophie"));
    let third = accounts.id_of("S-1-5-21-1-2-3-1200", || None);
    assert!(third > marc.max(sophie), "ids are never reused");
}
