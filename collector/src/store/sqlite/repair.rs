//! Repairs of what earlier builds stored and later builds cannot read back.
//!
//! Builds before the session reader took objects alone accepted a session sent as a
//! JSON list (serde's derived reader takes a struct's fields in declaration order) and
//! stored it as sent; nothing that looks a session's `id` up by key could read it back,
//! so the next start failed ("stored session at row 1 has no id") and no API could
//! remove the row. At open, such a session is rewritten as the object it was read as
//! when it was accepted — the same fields, so its accounting does not change — and the
//! repair is logged.

use rusqlite::{Connection, params};
use serde_json::{Map, Value};

use daymeter_shared::session::FIELDS;

use super::batches::Batch;
use super::{StoreError, corrupt, db};

/// Rewrites every stored list-shaped session as an object; returns how many.
pub fn list_sessions(conn: &mut Connection) -> Result<usize, StoreError> {
    let tx = conn.transaction().map_err(db)?;
    let damaged: Vec<(i64, String, Vec<u8>)> = {
        let mut stmt = tx
            .prepare(
                "SELECT first_row, bodies, ends FROM session_batches AS b
                 WHERE EXISTS (SELECT 1 FROM json_each(b.bodies) WHERE type = 'array')",
            )
            .map_err(db)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
    };
    let mut repaired = 0;
    for (first, bodies, ends) in damaged {
        let batch = Batch::from_stored(bodies, ends)
            .map_err(|e| corrupt(format!("batch at {first}: {e}")))?;
        let mut fixed = Batch::new();
        for body in batch.iter() {
            match serde_json::from_str::<Value>(body) {
                Ok(Value::Array(items)) => {
                    let object: Map<String, Value> = FIELDS
                        .iter()
                        .zip(items)
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| ((*k).to_owned(), v))
                        .collect();
                    fixed.push(&Value::Object(object).to_string());
                    repaired += 1;
                }
                _ => fixed.push(body),
            }
        }
        tx.execute(
            "UPDATE session_batches SET bodies = ?2, ends = ?3 WHERE first_row = ?1",
            params![first, fixed.bodies(), fixed.ends()],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)?;
    if repaired > 0 {
        tracing::warn!(
            sessions = repaired,
            "stored sessions sent as JSON lists by an earlier build were rewritten as the objects they were accepted as"
        );
    }
    Ok(repaired)
}
