//! The writer thread: owns the write connection, takes the queued jobs in groups,
//! applies each group in one transaction and hands the replies to the durability
//! thread; keeps in memory what a sync would otherwise read back.

use super::*;

/// The writer: owns the write connection and the settings every recomputation uses.
///
/// The settings live here, not with the callers, so that an ingest and an import are
/// ordered by the one queue: an ingest applied after an import is priced by the new
/// settings, and the import reprices every key stored before it.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) memory: Memory,
    /// The write-ahead log, whose size tells whether it has been restarted lately.
    pub(super) wal: PathBuf,
    /// Set by the checkpoint thread when the log is long and has just been checkpointed.
    pub(super) restart_due: Arc<AtomicBool>,
    /// Committed groups' answers, to be sent once the log is on disk.
    pub(super) syncer: Option<(mpsc::Sender<Vec<Reply>>, thread::JoinHandle<()>)>,
    /// Wakes the checkpoint thread after each commit.
    pub(super) checkpoints: Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            self.group(first, &rx);
        }
        // Every committed group is synced and answered before the store reports closed.
        if let Some((tx, handle)) = self.syncer.take() {
            drop(tx);
            let _ = handle.join();
        }
        if let Some((tx, handle)) = self.checkpoints.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Applies `first` and every job waiting behind it in one transaction and commits
    /// once; the answers go to the syncer, which sends them when the commit is durable.
    ///
    /// No savepoint per job (each would copy every page the job touches first): if a
    /// job fails, the group is rolled back and its jobs are applied again one at a time,
    /// each in a transaction of its own, so that the failing one fails alone.
    pub(super) fn group(&mut self, first: Job, rx: &mpsc::Receiver<Job>) {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let before = self.memory.settings.clone();
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let e = e.to_string();
                tracing::error!(error = %e, "could not begin a database transaction; the syncs in this group were not acknowledged and will be retried by their agents");
                for job in jobs {
                    refuse(job, &e).send(&Ok(()));
                }
                return;
            }
        };
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut hot = Hot::new(&tx);
        for job in &jobs {
            let outcome = apply(&tx, job, &mut self.memory, &mut hot);
            if outcome.failed() {
                break;
            }
            outcomes.push(outcome);
        }
        drop(hot);
        let applied = started.elapsed();
        let mut failed = outcomes.len() < jobs.len();
        if !failed && let Err(e) = self.memory.totals.flush(&tx) {
            tracing::warn!(error = %e, "writing the report totals failed");
            failed = true;
        }
        if !failed && let Err(e) = flush_if_due(&tx, &mut self.memory.runs) {
            tracing::warn!(error = %e, "writing out the held session runs failed");
            failed = true;
        }
        if failed {
            drop(tx); // rolled back
            self.memory.rolled_back(before);
            tracing::warn!(
                jobs = jobs.len(),
                "a write failed; applying this group's writes one at a time"
            );
            for job in jobs {
                self.alone(job);
            }
            return;
        }
        let flushed = started.elapsed();
        match tx.commit() {
            Ok(()) => {
                let committed = started.elapsed();
                self.memory.committed();
                let count = jobs.len();
                let replies = jobs.into_iter().zip(outcomes).map(answer).collect();
                let checkpointed = self.deliver(replies);
                let took = started.elapsed();
                if took >= SLOW_GROUP {
                    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
                    tracing::warn!(
                        jobs = count,
                        ms = ms(took),
                        applying_ms = ms(applied),
                        writing_runs_ms = ms(flushed - applied),
                        commit_ms = ms(committed - flushed),
                        checkpoint_ms = ms(took - committed),
                        checkpointed,
                        "a group of writes was slow; the syncs behind it waited"
                    );
                }
            }
            Err(e) => {
                // The group's imports were rolled back with it.
                self.memory.rolled_back(before);
                let e = e.to_string();
                tracing::error!(error = %e, "database commit failed; the syncs in this group were not acknowledged and will be retried by their agents");
                for job in jobs {
                    refuse(job, &e).send(&Ok(()));
                }
            }
        }
    }

    /// Applies one job in a transaction of its own.
    pub(super) fn alone(&mut self, job: Job) {
        let before = self.memory.settings.clone();
        let committed = self.conn.transaction().map_err(db).and_then(|tx| {
            let outcome = apply(&tx, &job, &mut self.memory, &mut Hot::new(&tx));
            if outcome.failed() {
                return Ok(outcome); // dropping `tx` rolls it back
            }
            self.memory.totals.flush(&tx)?;
            flush_if_due(&tx, &mut self.memory.runs)?;
            tx.commit().map(|()| outcome).map_err(db)
        });
        match committed {
            Ok(outcome) if !outcome.failed() => {
                self.memory.committed();
                let reply = answer((job, outcome));
                let _ = self.deliver(vec![reply]);
            }
            Ok(outcome) => {
                self.memory.rolled_back(before);
                answer((job, outcome)).send(&Ok(()));
            }
            Err(e) => {
                self.memory.rolled_back(before);
                refuse(job, &e.to_string()).send(&Ok(()));
            }
        }
    }

    /// Hands committed answers to the syncer; true if the writer then checkpointed.
    pub(super) fn deliver(&mut self, replies: Vec<Reply>) -> bool {
        let queued = match &self.syncer {
            Some((tx, _)) => tx.send(replies).map_err(|e| e.0),
            None => Err(replies),
        };
        // No syncer (it stopped on a failed sync): nothing is acknowledged.
        if let Err(replies) = queued {
            let e = Err("the write-ahead log could not be synced".to_owned());
            for reply in replies {
                reply.send(&e);
            }
        }
        self.after_commit()
    }

    /// Wakes the checkpoint thread, and lets the log start over once it has grown past
    /// [`WAL_LIMIT`]. SQLite restarts the log at a write only if every frame is
    /// checkpointed, which never happens on its own while the writer is never idle: so
    /// the writer checkpoints the rest itself, between two groups, when the checkpoint
    /// thread has left little to copy (a checkpoint of the whole log here stalled every
    /// group behind it by ~100 ms). A log four times the limit (the checkpoint thread
    /// cannot keep up) is checkpointed here whatever it costs.
    pub(super) fn after_commit(&mut self) -> bool {
        if let Some((tx, _)) = &self.checkpoints {
            let _ = tx.send(());
        }
        let due = self.restart_due.swap(false, Ordering::Relaxed)
            || std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > 4 * WAL_LIMIT);
        if due && let Err(e) = checkpoint(&self.conn) {
            tracing::warn!(error = %e, "checkpoint by the writer failed; retried after the next pass");
        }
        due
    }
}

pub(super) fn refuse(job: Job, e: &str) -> Reply {
    fn err<T>(e: &str) -> Result<T, StoreError> {
        Err(StoreError::Database(e.into()))
    }
    match job {
        Job::Ingest(ingest, tx) => Reply::Ingest(tx, err(e), ingest),
        Job::AddDevice(_, tx)
        | Job::PutSettings(_, tx)
        | Job::AddPurchase(_, tx)
        | Job::SetLowBalanceReading(_, tx) => Reply::Unit(tx, err(e)),
        Job::Revoke(_, tx)
        | Job::Reenrol(_, tx)
        | Job::CorrectPurchase(_, tx)
        | Job::AddMailSchedule(_, tx)
        | Job::DeleteMailSchedule(_, tx)
        | Job::SetMailNextRun(_, tx) => Reply::Bool(tx, err(e)),
    }
}

/// What a job did, before its answer is sent.
pub(super) enum Outcome {
    Ingest(Result<IngestOutcome, StoreError>),
    Unit(Result<(), StoreError>),
    Bool(Result<bool, StoreError>),
}

impl Outcome {
    pub(super) fn failed(&self) -> bool {
        match self {
            Outcome::Ingest(r) => r.is_err(),
            Outcome::Unit(r) => r.is_err(),
            Outcome::Bool(r) => r.is_err(),
        }
    }
}

/// A job's answer from what it did.
pub(super) fn answer((job, outcome): (Job, Outcome)) -> Reply {
    match (job, outcome) {
        (Job::Ingest(ingest, tx), Outcome::Ingest(r)) => Reply::Ingest(tx, r, ingest),
        (
            Job::Revoke(_, tx)
            | Job::Reenrol(_, tx)
            | Job::CorrectPurchase(_, tx)
            | Job::AddMailSchedule(_, tx)
            | Job::DeleteMailSchedule(_, tx)
            | Job::SetMailNextRun(_, tx),
            Outcome::Bool(r),
        ) => Reply::Bool(tx, r),
        (
            Job::AddDevice(_, tx)
            | Job::PutSettings(_, tx)
            | Job::AddPurchase(_, tx)
            | Job::SetLowBalanceReading(_, tx),
            Outcome::Unit(r),
        ) => Reply::Unit(tx, r),
        (job, _) => refuse(job, "internal error: a job's outcome is of another kind"),
    }
}

/// What the writer holds in memory beside its connection: the committed database plus
/// the open transaction's changes.
pub(super) struct Memory {
    pub(super) settings: Arc<Settings>,
    pub(super) ledgers: Ledgers,
    pub(super) ids: Ids,
    pub(super) runs: Runs,
    pub(super) tails: Tails,
    /// The number the next new session gets, once read (see `batches`).
    pub(super) next_row: Option<i64>,
    /// The buffer each sync builds its batches in.
    pub(super) batch: Batch,
    /// Each user's last sync as this writer last recorded it in `users`.
    pub(super) last_syncs: HashMap<String, DateTime<Utc>>,
    /// Each device's last sync as this writer last recorded it in `devices`.
    pub(super) device_syncs: HashMap<String, DateTime<Utc>>,
    /// The report totals' differences of the open transaction, written before it
    /// commits.
    pub(super) totals: Pending,
    /// Told which months' totals a commit changed.
    pub(super) kept: Arc<super::kept_totals::KeptTotals>,
}

impl Memory {
    /// The open transaction committed.
    pub(super) fn committed(&mut self) {
        self.ids.commit();
        self.runs.commit();
        self.kept.changed(&self.totals.take_touched());
    }

    /// The open transaction was rolled back: forget what it changed (`settings`: those
    /// before it).
    pub(super) fn rolled_back(&mut self, settings: Arc<Settings>) {
        self.settings = settings;
        self.ledgers.clear();
        self.next_row = None;
        self.last_syncs.clear();
        self.device_syncs.clear();
        self.totals.clear();
        self.ids.rollback();
        self.runs.rollback();
        self.tails.clear();
    }
}

/// Every stored session id, for the writer's index.
pub(super) fn load_ids(conn: &Connection) -> Result<Ids, StoreError> {
    let started = std::time::Instant::now();
    let count: i64 = conn
        .query_row(
            "SELECT IFNULL(SUM(length(ends)), 0) / 4 FROM session_batches",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let mut ids = Ids::with_capacity(count.max(0) as usize);
    let mut stmt = conn
        .prepare("SELECT first_row, bodies, ends FROM session_batches")
        .map_err(db)?;
    let mut find = conn.prepare(FIND_BATCH).map_err(db)?;
    let mut rows = stmt.query([]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let first: i64 = r.get(0).map_err(db)?;
        let batch = stored_batch(first, r.get(1).map_err(db)?, r.get(2).map_err(db)?)?;
        for (row, body) in (first..).zip(batch.iter()) {
            let id = stored_id(body, row)?;
            if let Err(other) = ids.load(&id, row, false) {
                let (at, _, _, theirs) = find_batch(&mut find, other)?;
                let other_id = theirs
                    .session(at, other)
                    .map(|b| stored_id(b, other))
                    .transpose()?;
                if other_id.as_deref() == Some(&*id) {
                    return Err(corrupt(format!(
                        "session {id} is stored twice (rows {other} and {row})"
                    )));
                }
                let _ = ids.load(&id, row, true);
            }
        }
    }
    tracing::info!(
        sessions = ids.len(),
        seconds = started.elapsed().as_secs_f64(),
        "indexed the stored session ids"
    );
    Ok(ids)
}

/// Applies one job in the open transaction. A successful import replaces the settings
/// for the jobs after it.
pub(super) fn apply(t: &Connection, job: &Job, memory: &mut Memory, hot: &mut Hot<'_>) -> Outcome {
    match job {
        Job::Ingest(ingest, _) => Outcome::Ingest(ingest_into(t, ingest, memory, hot)),
        Job::AddDevice(device, _) => Outcome::Unit(add_device(t, device)),
        Job::Revoke(id, _) => Outcome::Bool(
            t.execute("UPDATE devices SET revoked = 1 WHERE id = ?1", [id])
                .map(|n| n > 0)
                .map_err(db),
        ),
        Job::Reenrol(job, _) => Outcome::Bool(reenrol_device(t, &job.0, &job.1)),
        Job::AddPurchase(purchase, _) => {
            Outcome::Unit(add_purchase(t, purchase, &mut memory.ledgers))
        }
        Job::CorrectPurchase(correction, _) => {
            Outcome::Bool(correct_purchase(t, correction, &mut memory.ledgers))
        }
        Job::AddMailSchedule(job, _) => Outcome::Bool(mail::add_schedule(t, &job.0, job.1)),
        Job::DeleteMailSchedule(id, _) => Outcome::Bool(mail::delete_schedule(t, id)),
        Job::SetMailNextRun(job, _) => Outcome::Bool(mail::set_next_run(t, &job.0, job.1)),
        Job::SetLowBalanceReading(job, _) => {
            Outcome::Unit(mail::set_reading(t, &job.0, &job.1, job.2))
        }
        Job::PutSettings(new, _) => {
            let result = put_settings(
                t,
                new,
                &mut memory.ledgers,
                &mut memory.runs,
                &mut memory.totals,
                hot,
            );
            // Every key was recomputed from the database: the tails are stale.
            memory.tails.clear();
            if result.is_ok() {
                memory.settings = Arc::new(Settings::clone(new));
            }
            Outcome::Unit(result)
        }
    }
}
