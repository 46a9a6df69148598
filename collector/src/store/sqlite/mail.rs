//! Mail schedules and low-balance readings as rows. The limit of schedules per
//! recipient is checked inside the writer's transaction that inserts, so two requests at
//! once cannot both pass it.

use super::*;
use crate::mail::kinds::{Kind, Schedule};
use crate::mail::schedule::Every;

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn instant(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(corrupt)
}

fn every_text(every: Every) -> Result<String, StoreError> {
    match serde_json::to_value(every).map_err(corrupt)? {
        serde_json::Value::String(s) => Ok(s),
        other => Err(corrupt(format!("frequency {other}"))),
    }
}

/// Inserts `s` unless its recipient already has `max` schedules: `false` then.
pub(super) fn add_schedule(t: &Connection, s: &Schedule, max: usize) -> Result<bool, StoreError> {
    let count: i64 = t
        .query_row(
            "SELECT count(*) FROM mail_schedules WHERE lower(recipient) = lower(?1)",
            [&s.recipient],
            |r| r.get(0),
        )
        .map_err(db)?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= max {
        return Ok(false);
    }
    let kind = serde_json::to_string(&s.kind).map_err(corrupt)?;
    let every = s.every.map(every_text).transpose()?;
    t.execute(
        "INSERT INTO mail_schedules (id, recipient, kind, every, start, next_run, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            s.id,
            s.recipient,
            kind,
            every,
            rfc3339(s.start),
            s.next_run.map(rfc3339),
            rfc3339(s.created_at)
        ],
    )
    .map_err(db)?;
    Ok(true)
}

pub(super) fn delete_schedule(t: &Connection, id: &str) -> Result<bool, StoreError> {
    // The readings go with it (ON DELETE CASCADE); said here too for a reader of SQL.
    t.execute("DELETE FROM low_balance_readings WHERE schedule = ?1", [id])
        .map_err(db)?;
    let n = t
        .execute("DELETE FROM mail_schedules WHERE id = ?1", [id])
        .map_err(db)?;
    Ok(n > 0)
}

pub(super) fn set_next_run(
    t: &Connection,
    id: &str,
    next_run: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let n = t
        .execute(
            "UPDATE mail_schedules SET next_run = ?2 WHERE id = ?1",
            params![id, rfc3339(next_run)],
        )
        .map_err(db)?;
    Ok(n > 0)
}

pub(super) fn set_reading(
    t: &Connection,
    schedule: &str,
    team: &str,
    remaining: u64,
) -> Result<(), StoreError> {
    let remaining = i64::try_from(remaining).unwrap_or(i64::MAX);
    t.execute(
        "INSERT INTO low_balance_readings (schedule, team, remaining)
         SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM mail_schedules WHERE id = ?1)
         ON CONFLICT (schedule, team) DO UPDATE SET remaining = excluded.remaining",
        params![schedule, team, remaining],
    )
    .map_err(db)?;
    Ok(())
}

pub(super) fn read_schedules(c: &Connection) -> Result<Vec<Schedule>, StoreError> {
    let mut stmt = c
        .prepare(
            "SELECT id, recipient, kind, every, start, next_run, created_at FROM mail_schedules
             ORDER BY lower(recipient), created_at, id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
            ))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, recipient, kind, every, start, next_run, created_at) = row.map_err(db)?;
        let kind: Kind =
            serde_json::from_str(&kind).map_err(|e| corrupt(format!("mail schedule {id}: {e}")))?;
        let every = every
            .map(|e| serde_json::from_value::<Every>(serde_json::Value::String(e)))
            .transpose()
            .map_err(|e| corrupt(format!("mail schedule {id}: {e}")))?;
        out.push(Schedule {
            recipient,
            kind,
            every,
            start: instant(&start)?,
            next_run: next_run.as_deref().map(instant).transpose()?,
            created_at: instant(&created_at)?,
            id,
        });
    }
    Ok(out)
}

pub(super) fn read_readings(c: &Connection) -> Result<Vec<(String, String, u64)>, StoreError> {
    let mut stmt = c
        .prepare(
            "SELECT schedule, team, remaining FROM low_balance_readings ORDER BY schedule, team",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (schedule, team, remaining) = row.map_err(db)?;
        out.push((schedule, team, remaining.max(0) as u64));
    }
    Ok(out)
}
