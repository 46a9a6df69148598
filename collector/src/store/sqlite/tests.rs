//! The SQLite backend's own tests: migrations and repair, session batches and runs,
//! ledger batches, the stored form of a session. What every backend must do is the
//! conformance suite (`store::conformance`), instantiated here for SQLite.

use super::*;
use crate::store::Incoming;
use crate::store::conformance::{
    Harness, history, ingest_of, replayed, session, settings, weekends,
};
use daymeter_shared::policy::Policy;
use daymeter_shared::session::OwnedSession;
use daymeter_shared::session::RawSession;
use daymeter_shared::time::ZoneCache;

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("daymeter-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("c.db")
}

/// SQLite stores for the conformance suite, each in a directory of its own.
struct Sqlite;

impl Harness for Sqlite {
    type Store = SqliteStore;

    fn fresh(&self, name: &str) -> SqliteStore {
        SqliteStore::open(&temp_db(name)).unwrap()
    }

    fn reopen(&self, store: SqliteStore) -> SqliteStore {
        let path = store.path.clone();
        store.close();
        drop(store);
        SqliteStore::open(&path).unwrap()
    }

    fn discard(&self, store: SqliteStore) {
        let path = store.path.clone();
        store.close();
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

/// Every conformance test, as `store::sqlite::tests::conformance::…`.
mod conformance {
    crate::store::conformance::conformance_suite!(super::Sqlite);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_shaped_session_stored_by_an_earlier_build_is_repaired_at_open() {
    let path = temp_db("repair-list");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        for sql in &MIGRATIONS[..8] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 8).unwrap();
        let mut batch = Batch::new();
        batch.push(
            r#"["s-list",null,null,"acad",null,"2026-02-02T09:00:00Z","2026-02-02T17:00:00Z"]"#,
        );
        batch.push(r#"{"id":"s-obj","product":"acad","start":"2026-02-03T09:00:00Z","end":"2026-02-03T17:00:00Z"}"#);
        conn.execute(
            "INSERT INTO session_batches (first_row, user, device, product, bodies, ends)
             VALUES (1, 'sophie', 'ws-1', 'acad', ?1, ?2)",
            params![batch.bodies(), batch.ends()],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).expect("opens despite the list-shaped session");
    let stored = store.sessions(SessionFilter::default()).await.unwrap();
    let ids: Vec<&str> = stored.iter().map(|s| &*s.id).collect();
    assert_eq!(ids, ["s-list", "s-obj"]);
    assert_eq!(
        stored[0].end.map(|e| e.to_rfc3339()),
        Some("2026-02-02T17:00:00+00:00".to_owned())
    );
    store.close();
}

/// A database written before usage days recorded what they drew: the migration
/// reads it from the ledger, and a later re-pricing reverses exactly that.
#[tokio::test(flavor = "multi_thread")]
async fn migrated_days_keep_what_they_drew_and_a_repricing_reverses_it() {
    let path = temp_db("migrate-drawn");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let s = session(
        "0193-m",
        "2026-02-02T09:00:00+01:00",
        "2026-02-02T17:00:00+01:00",
    );
    let start = s.start_nanos();
    let day_ns = 24 * 3600 * 1_000_000_000_i64;
    {
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute(
            "INSERT INTO sessions (id, user, device, product, start_ns, end_ns, body)
             VALUES (?1, 'sophie', 'ws-1', 'acad', ?2, ?3, ?4)",
            params![
                &*s.id,
                start,
                s.end_nanos(),
                serde_json::to_string(&s).unwrap()
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO purchases (id, team, tokens, purchased_at, expires_at, used)
             VALUES ('p1', 'default', 4, '2026-01-01T00:00:00+00:00', '2027-01-01T00:00:00+00:00', 4)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO usage_days (user, product, window_start_ns, window_end_ns, day, plan, tokens, short_row)
             VALUES ('sophie', 'acad', ?1, ?2, '2026-02-02', 'flex', 7, 0)",
            params![start, start + day_ns],
        )
        .unwrap();
        // The day drew 4 from p1 and 3 unfunded; an earlier booking was reversed.
        for (purchase, tokens) in [
            (Some("p1"), 2),
            (Some("p1"), -2),
            (Some("p1"), 4),
            (None, 3),
        ] {
            conn.execute(
                "INSERT INTO ledger (at, team, user, product, day, window_start_ns, purchase, tokens, reason)
                 VALUES ('2026-02-03T00:00:00+00:00', 'default', 'sophie', 'acad', '2026-02-02', ?1, ?2, ?3, 'usage')",
                params![start, purchase, tokens],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).unwrap();
    let look = Connection::open(&path).unwrap();
    let drawn: String = look
        .query_row("SELECT drawn FROM usage_days", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        drawn_of(&drawn).unwrap(),
        vec![(None, 3), (Some("p1".into()), 4)]
    );
    let kept = store.sessions(SessionFilter::default()).await.unwrap();
    assert_eq!(kept.len(), 1, "the sessions are kept");
    // The migrated session's id is known: a copy is a copy, another user's is a conflict.
    let again = store.ingest(ingest_of(&kept)).await.unwrap();
    assert_eq!(again.accepted.len(), 1);
    let mut stolen = kept[0].clone();
    stolen.user = Some("tom".into());
    let with_zone = (
        stolen.clone(),
        Zone::of(stolen.tz.as_deref(), &stolen.start).unwrap(),
    );
    let theirs = Ingest::new("tom".into(), "ws-9".into(), [with_zone], Utc::now()).unwrap();
    let refused = store.ingest(theirs).await.unwrap();
    assert_eq!(refused.rejected.len(), 1, "{refused:?}");
    let runs: i64 = look
        .query_row("SELECT COUNT(*) FROM session_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 1, "the migrated session is in a run of its key");

    let mut repriced = settings(Policy::default());
    if let Some(p) = repriced.catalog.get_mut("acad") {
        p.tokens_per_day = 10;
    }
    store.put_settings(repriced).await.unwrap();
    let sum = |filter: &str| -> i64 {
        look.query_row(
            &format!("SELECT COALESCE(SUM(tokens), 0) FROM ledger WHERE window_start_ns = ?1 AND {filter}"),
            [start],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        sum("reason LIKE 'day changed%'"),
        -7,
        "the reversal takes back exactly what the day drew"
    );
    assert_eq!(sum("1"), 10, "the day now holds its new price");
    assert_eq!(
        sum("purchase = 'p1'"),
        4,
        "p1 was given back, then drawn again"
    );
    assert_eq!(sum("purchase IS NULL"), 6);
    let drawn: String = look
        .query_row("SELECT drawn FROM usage_days", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        drawn_of(&drawn).unwrap(),
        vec![(Some("p1".into()), 4), (None, 6)]
    );
    store.close();
}

/// A sync of more sessions than a batch holds, naming one id twice (the running
/// copy, then the closed one) and repeating an id stored earlier: every id is stored
/// once, as its longer copy, across batches and a restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_sent_twice_in_one_sync_is_stored_once_as_its_longer_copy() {
    let path = temp_db("twice");
    let settings = settings(Policy::default());
    let mut store = SqliteStore::open(&path).unwrap();
    store.put_settings(settings.clone()).await.unwrap();
    let all = history();
    let (first, rest) = all.split_at(5);
    store.ingest(ingest_of(first)).await.unwrap();
    let mut sync: Vec<OwnedSession> = rest[..BATCH_MAX + 8].to_vec();
    let running = |s: &OwnedSession| {
        let mut r = s.clone();
        r.end = Some(r.start + chrono::TimeDelta::minutes(1));
        r
    };
    // Closed copy in a later batch than its running copy, then in the same one
    // (not written yet when the closed copy comes).
    let (a, b) = (running(&sync[BATCH_MAX + 2]), running(&sync[BATCH_MAX + 6]));
    sync.insert(3, a);
    sync.insert(BATCH_MAX + 3, b);
    sync.push(first[1].clone());
    let outcome = store.ingest(ingest_of(&sync)).await.unwrap();
    assert_eq!(outcome.accepted.len(), sync.len());
    assert!(outcome.rejected.is_empty());
    let mut expected: Vec<OwnedSession> = first.to_vec();
    expected.extend_from_slice(&rest[..BATCH_MAX + 8]);
    for _ in 0..2 {
        let listed = store.sessions(SessionFilter::default()).await.unwrap();
        let mut ids: Vec<&str> = listed.iter().map(|s| &*s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!((listed.len(), ids.len()), (expected.len(), expected.len()));
        for s in &expected {
            let stored = listed.iter().find(|l| l.id == s.id).unwrap();
            assert_eq!(stored.end, s.end, "{}", s.id);
        }
        assert_eq!(
            store.usage_days(None, None).await.unwrap(),
            replayed(&expected, &settings)
        );
        store.close();
        drop(store);
        store = SqliteStore::open(&path).unwrap();
        // After the restart, the ids come back from the batches: nothing is new.
        let again = store.ingest(ingest_of(&sync)).await.unwrap();
        assert_eq!(again.accepted.len(), sync.len());
    }
}

/// The stored body is the record as the agent sent it (spacing, field order and
/// offsets); user and device come back from the row, and a longer copy sent later
/// replaces the body whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_stored_as_received_and_read_back_with_its_user_and_device() {
    let path = temp_db("as-received");
    let store = SqliteStore::open(&path).unwrap();
    store
        .put_settings(settings(Policy::default()))
        .await
        .unwrap();
    let received = |end: &str| {
        let text = format!(
            r#"{{ "product" : "acad", "id": "0193-r", "start": "2026-02-02T14:15:00+05:45",
                 "end": "{end}", "tz": "Asia/Kathmandu", "extra": [1, 2] }}"#
        );
        let raw: RawSession<'_> = serde_json::from_str(&text).unwrap();
        let (mut session, zone) = raw.check(&mut ZoneCache::new()).unwrap();
        session.user = Some("sophie".into());
        session.device = Some("ws-1".into());
        let session = session.into_owned();
        (
            Incoming {
                session,
                zone,
                body: text,
            },
            end.to_owned(),
        )
    };
    for end in ["2026-02-02T15:00:00+05:45", "2026-02-02T16:00:00+05:45"] {
        let (incoming, _) = received(end);
        let ingest = Ingest::received("sophie".into(), "ws-1".into(), vec![incoming], Utc::now());
        let outcome = store.ingest(ingest).await.unwrap();
        assert_eq!(outcome.accepted, ["0193-r"]);
    }
    let listed = store.sessions(SessionFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    let s = &listed[0];
    assert_eq!(s.user.as_deref(), Some("sophie"));
    assert_eq!(s.device.as_deref(), Some("ws-1"));
    assert_eq!(s.start.to_rfc3339(), "2026-02-02T14:15:00+05:45");
    assert_eq!(
        s.end.map(|e| e.to_rfc3339()).as_deref(),
        Some("2026-02-02T16:00:00+05:45")
    );
    store.close();
    let conn = Connection::open(&path).unwrap();
    let (_, _, _, batch) = find_batch(&mut conn.prepare(FIND_BATCH).unwrap(), 1).unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(
        batch.get(0),
        Some(&*received("2026-02-02T16:00:00+05:45").0.body)
    );
}

/// Runs held by the writer are written out in bulk, and those held when the process
/// stops are gathered again when the store opens: after any restart, every stored
/// session is in exactly one run, written out or held, of its own key.
#[tokio::test(flavor = "multi_thread")]
async fn every_session_is_in_one_run_of_its_key_across_flushes_and_restarts() {
    let all = history();
    let path = temp_db("runs");
    let settings = settings(Policy::default());
    let mut store = SqliteStore::open(&path).unwrap();
    store.put_settings(settings.clone()).await.unwrap();
    for (i, batch) in all.chunks(3).enumerate() {
        store.ingest(ingest_of(batch)).await.unwrap();
        if i % 7 == 3 {
            store.close();
            drop(store);
            store = SqliteStore::open(&path).unwrap();
        }
    }
    // Covered: rows in `session_runs`, and rows the store gathers at open.
    store.close();
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let mut written: Vec<(String, String, i64, i64)> = conn
        .prepare("SELECT user, product, first_row, last_row FROM session_runs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!written.is_empty(), "runs were written out");
    let held = gather_runs(&conn).unwrap();
    let held: Vec<Run> = held.of("sophie", "acad", i64::MIN).collect();
    written.extend(
        held.iter()
            .map(|r| ("sophie".into(), "acad".into(), r.first, r.last)),
    );
    let rows: Vec<(i64, String, String)> = conn
        .prepare("SELECT row, user, product FROM sessions")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), all.len());
    for (row, user, product) in rows {
        let holding: Vec<_> = written
            .iter()
            .filter(|(_, _, first, last)| (*first..=*last).contains(&row))
            .collect();
        assert_eq!(holding.len(), 1, "row {row}: {holding:?}");
        assert_eq!((&holding[0].0, &holding[0].1), (&user, &product));
    }
    let store = SqliteStore::open(&path).unwrap();
    // A session before all the others makes the key load its tail from the runs.
    let early = session(
        "0000-early",
        "2025-01-01T09:00:00+01:00",
        "2025-01-01T17:00:00+01:00",
    );
    store
        .ingest(ingest_of(std::slice::from_ref(&early)))
        .await
        .unwrap();
    let mut everything = all.clone();
    everything.push(early);
    assert_eq!(
        store.usage_days(None, None).await.unwrap(),
        replayed(&everything, &settings)
    );
    store.close();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// Ledger entries are written a batch per recomputed key and read one by one,
/// numbered without a gap across syncs, an import and a restart.
#[tokio::test(flavor = "multi_thread")]
async fn ledger_entries_are_numbered_one_by_one_across_batches_and_a_restart() {
    let all = history();
    let path = temp_db("ledger-batches");
    let mut store = SqliteStore::open(&path).unwrap();
    store
        .put_settings(settings(Policy::default()))
        .await
        .unwrap();
    let (first, rest) = all.split_at(40);
    for batch in first.chunks(5) {
        store.ingest(ingest_of(batch)).await.unwrap();
    }
    store.close();
    drop(store);
    store = SqliteStore::open(&path).unwrap();
    for batch in rest.chunks(7) {
        store.ingest(ingest_of(batch)).await.unwrap();
    }
    let mut repriced = settings(Policy::default());
    if let Some(p) = repriced.catalog.get_mut("acad") {
        p.tokens_per_day = 9;
    }
    store.put_settings(repriced).await.unwrap();
    let entries = store.ledger(None, None, usize::MAX).await.unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=entries.len() as i64).collect::<Vec<_>>());
    assert!(entries.iter().any(|e| e.reason.starts_with("day changed")));
    let charged: i64 = store
        .usage_days(None, None)
        .await
        .unwrap()
        .iter()
        .map(|d| d.tokens as i64)
        .sum();
    assert_eq!(entries.iter().map(|e| e.tokens).sum::<i64>(), charged);
    store.close();
    let conn = Connection::open(&path).unwrap();
    let batches: i64 = conn
        .query_row("SELECT COUNT(*) FROM ledger_batches", [], |r| r.get(0))
        .unwrap();
    assert!(
        batches < entries.len() as i64 / 2,
        "{batches} batches for {} entries",
        entries.len()
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A database error keeps SQLite's own as its source, so that a caller can tell its
/// kind (here a constraint, not a busy or full database).
#[tokio::test(flavor = "multi_thread")]
async fn a_database_error_keeps_sqlites_own_as_its_source() {
    let path = temp_db("error-source");
    let store = SqliteStore::open(&path).unwrap();
    let device = Device {
        id: "ws-1".into(),
        hostname: "ws-1".into(),
        os: "linux".into(),
        agent_version: "0".into(),
        token_hash: [1; 32],
        enrolled_at: Utc::now(),
        revoked: false,
        last_sync: None,
    };
    store.add_device(device.clone()).await.unwrap();
    let e = store.add_device(device).await.unwrap_err();
    let source = std::error::Error::source(&e).expect("a source");
    let sqlite = source
        .downcast_ref::<rusqlite::Error>()
        .expect("SQLite's error");
    assert!(
        matches!(sqlite, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation),
        "{sqlite:?}"
    );
    store.close();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_before_the_report_totals_gets_them_built_at_open() {
    let path = temp_db("totals-backfill");
    let store = SqliteStore::open(&path).unwrap();
    store
        .put_settings(settings(Policy::default()))
        .await
        .unwrap();
    for batch in history().chunks(9) {
        store.ingest(ingest_of(batch)).await.unwrap();
    }
    store.close();
    drop(store);
    {
        // As an earlier build left it: no totals, the version before theirs.
        let conn = Connection::open(&path).unwrap();
        // Every table the totals' migration creates (its indexes go with them).
        let migration = MIGRATIONS[backfill::TOTALS_VERSION as usize - 1];
        for table in migration
            .split("CREATE TABLE ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
        {
            conn.execute_batch(&format!("DROP TABLE {table}")).unwrap();
        }
        // And the indexes and the columns (of tables kept) of the migrations after
        // it, which run again.
        for later in &MIGRATIONS[backfill::TOTALS_VERSION as usize..] {
            for index in later
                .split("CREATE INDEX ")
                .skip(1)
                .filter_map(|rest| rest.split_whitespace().next())
            {
                conn.execute_batch(&format!("DROP INDEX {index}")).unwrap();
            }
            for added in later.split("ALTER TABLE ").skip(1) {
                let words: Vec<&str> = added.split_whitespace().collect();
                if let [table, "ADD", "COLUMN", column, ..] = words[..]
                    && !migration.contains(&format!("CREATE TABLE {table} "))
                {
                    conn.execute_batch(&format!("ALTER TABLE {table} DROP COLUMN {column}"))
                        .unwrap();
                }
            }
        }
        conn.pragma_update(None, "user_version", backfill::TOTALS_VERSION - 1)
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    crate::store::conformance::assert_totals_follow_the_days(&store, "backfilled").await;
    assert!(!store.reaches(None).await.unwrap().is_empty());
    store.close();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_before_the_waste_marks_gets_them_at_open_and_its_ledger_is_untouched() {
    let path = temp_db("marks-backfill");
    let store = SqliteStore::open(&path).unwrap();
    store
        .put_settings(settings(Policy::default()))
        .await
        .unwrap();
    store.ingest(ingest_of(&history())).await.unwrap();
    store.ingest(ingest_of(&weekends())).await.unwrap();
    let ledger = store.ledger(None, None, usize::MAX).await.unwrap();
    store.close();
    drop(store);
    {
        // As migration 14 leaves a database written before it: no marks, no waste
        // totals, and the row that says they are to be made.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "UPDATE usage_days SET waste = 0;
             UPDATE day_totals SET wasted = 0, saved = 0;
             INSERT INTO settings (key, value) VALUES ('waste_marks_pending', 'true');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    crate::store::conformance::assert_totals_follow_the_days(&store, "marked at open").await;
    let april = store
        .waste_totals(
            "2026-04-01".parse().unwrap(),
            "2026-04-30".parse().unwrap(),
            None,
        )
        .await
        .unwrap();
    let wasted: u64 = april.iter().map(|t| t.wasted).sum();
    assert_eq!(
        wasted,
        4 * 7,
        "three idle rolled Saturdays and an idle launch"
    );
    assert_eq!(
        store.ledger(None, None, usize::MAX).await.unwrap(),
        ledger,
        "marking books nothing"
    );
    store.close();
    let conn = Connection::open(&path).unwrap();
    let pending: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM settings WHERE key = 'waste_marks_pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 0, "marked once");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
