//! The schema, as numbered migrations applied in order at open.

use super::*;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran. A
/// migration, once released, is never edited: a change is a new file.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_create_devices.sql"),
    include_str!("migrations/0002_create_purchases.sql"),
    include_str!("migrations/0003_open_sessions_index.sql"),
    include_str!("migrations/0004_usage_days_by_key.sql"),
    include_str!("migrations/0005_drawn_on_usage_days.sql"),
    include_str!("migrations/0006_fewer_pages_per_sync.sql"),
    include_str!("migrations/0007_ledger_batches.sql"),
    include_str!("migrations/0008_session_batches.sql"),
    include_str!("migrations/0009_purchase_corrections.sql"),
    include_str!("migrations/0010_device_last_sync.sql"),
    include_str!("migrations/0011_mail_schedules.sql"),
    include_str!("migrations/0012_report_totals.sql"),
    include_str!("migrations/0013_session_runs_by_last_row.sql"),
    include_str!("migrations/0014_waste_marks.sql"),
];

/// Applies the migrations not yet applied; returns the version the database had.
pub(super) fn migrate(conn: &mut Connection) -> Result<i64, StoreError> {
    let done: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    Ok(done)
}
