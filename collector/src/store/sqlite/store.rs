//! The [`Store`] trait on this backend: writes queued to the writer thread, reads on
//! the pool of reader connections.

use super::*;
use crate::store::{KeyTotal, ProductDay, Reach, TeamDay, WasteTotal};

impl Store for SqliteStore {
    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT id, hostname, os, agent_version, token_hash, enrolled_at, revoked, last_sync FROM devices")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, bool>(6)?,
                        r.get::<_, Option<String>>(7)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, hostname, os, agent_version, hash, enrolled_at, revoked, last_sync) =
                    row.map_err(db)?;
                let last_sync = last_sync
                    .map(|t| DateTime::parse_from_rfc3339(&t).map(|t| t.to_utc()))
                    .transpose()
                    .map_err(corrupt)?;
                out.push(Device {
                    id,
                    hostname,
                    os,
                    agent_version,
                    token_hash: hash.try_into().map_err(|_| corrupt("token hash is not 32 bytes"))?,
                    enrolled_at: DateTime::parse_from_rfc3339(&enrolled_at).map_err(corrupt)?.to_utc(),
                    revoked,
                    last_sync,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn add_device(&self, device: Device) -> Result<(), StoreError> {
        self.write(|tx| Job::AddDevice(Box::new(device), tx)).await
    }

    async fn revoke_device(&self, id: String) -> Result<bool, StoreError> {
        self.write(|tx| Job::Revoke(id, tx)).await
    }

    async fn reenrol_device(&self, device: Device, proof: [u8; 32]) -> Result<bool, StoreError> {
        self.write(|tx| Job::Reenrol(Box::new((device, proof)), tx))
            .await
    }

    async fn ingest(&self, ingest: Ingest) -> Result<IngestOutcome, StoreError> {
        self.write(|tx| Job::Ingest(Box::new(ingest), tx)).await
    }

    async fn settings(&self) -> Result<Settings, StoreError> {
        self.read(read_settings).await
    }

    async fn put_settings(&self, settings: Settings) -> Result<(), StoreError> {
        self.write(|tx| Job::PutSettings(Box::new(settings), tx))
            .await
    }

    async fn usage_days(
        &self,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Vec<UsageDay<'static>>, StoreError> {
        // Days are stored as `YYYY-MM-DD`, which sorts as text; a missing bound is NULL
        // (not a sentinel date, whose text form would not sort among them).
        let (from, to) = (from.map(|d| d.to_string()), to.map(|d| d.to_string()));
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT user, product, day, window_start_ns, window_end_ns, plan, tokens FROM usage_days
                     WHERE (?1 IS NULL OR day >= ?1) AND (?2 IS NULL OR day <= ?2)
                     ORDER BY user, product, window_start_ns",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![from, to], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (user, product, day, start, end, plan, tokens) = row.map_err(db)?;
                out.push(UsageDay {
                    user: user.into(),
                    product: product.into(),
                    day: day.parse().map_err(corrupt)?,
                    window_start: DateTime::from_timestamp_nanos(start),
                    window_end: DateTime::from_timestamp_nanos(end),
                    plan: reports::plan_of(&plan)?,
                    tokens: tokens as u64,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn key_months(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        users: Option<Vec<String>>,
    ) -> Result<Vec<KeyMonth>, StoreError> {
        let (first, last) = (month_of(from), month_of(to));
        self.read(move |c| reports::key_months(c, &first, &last, users.as_deref()))
            .await
    }

    async fn key_totals(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<KeyTotal>, StoreError> {
        let kept = self.kept.clone();
        self.read(move |c| reports::key_totals(c, from, to, &kept))
            .await
    }

    async fn product_days(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ProductDay>, StoreError> {
        self.read(move |c| reports::product_days(c, from, to)).await
    }

    async fn team_days(&self, from: NaiveDate, to: NaiveDate) -> Result<Vec<TeamDay>, StoreError> {
        self.read(move |c| reports::team_days(c, from, to)).await
    }

    async fn waste_totals(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        user: Option<String>,
    ) -> Result<Vec<WasteTotal>, StoreError> {
        self.read(move |c| reports::waste_totals(c, from, to, user.as_deref()))
            .await
    }

    async fn reaches(&self, users: Option<Vec<String>>) -> Result<Vec<Reach>, StoreError> {
        self.read(move |c| reports::reaches(c, users.as_deref()))
            .await
    }

    async fn users_page(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |c| reports::users_page(c, after.as_deref(), limit))
            .await
    }

    async fn users_days(
        &self,
        users: Vec<String>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageDay<'static>>, StoreError> {
        self.read(move |c| reports::users_days(c, &users, from, to))
            .await
    }

    async fn sessions(&self, filter: SessionFilter) -> Result<Vec<StoredSession>, StoreError> {
        if let Some(users) = filter.users.clone() {
            // A page of users in two halves on two connections, side by side: parsing
            // a year of a hundred users' sessions is the longest read a report makes.
            if users.len() < 2 {
                return self
                    .read(move |c| reports::users_sessions(c, &filter))
                    .await;
            }
            let (first, second) = users.split_at(users.len() / 2);
            let half = |users: &[String]| SessionFilter {
                users: Some(users.to_vec()),
                ..filter.clone()
            };
            let (a, b) = (half(first), half(second));
            let (mut out, rest) = tokio::try_join!(
                self.read(move |c| reports::users_sessions(c, &a)),
                self.read(move |c| reports::users_sessions(c, &b)),
            )?;
            out.extend(rest);
            if !users.is_sorted() {
                reports::sort_sessions(&mut out);
            }
            return Ok(out);
        }
        self.read(move |c| {
            let from = filter.from.map_or(i64::MIN, day_start_ns);
            let to = filter
                .to
                .and_then(|d| d.succ_opt())
                .map_or(i64::MAX, day_start_ns);
            let mut stmt = c
                .prepare(
                    "SELECT first_row, user, device, bodies, ends FROM session_batches
                     WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR product = ?2)",
                )
                .map_err(db)?;
            let mut rows = stmt
                .query(params![filter.user, filter.product])
                .map_err(db)?;
            let mut zones = ZoneCache::new();
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db)? {
                let first: i64 = r.get(0).map_err(db)?;
                let user: String = r.get(1).map_err(db)?;
                let device: String = r.get(2).map_err(db)?;
                let batch = stored_batch(first, r.get(3).map_err(db)?, r.get(4).map_err(db)?)?;
                for (row, body) in (first..).zip(batch.iter()) {
                    out.extend(reports::read_within(
                        body, row, &mut zones, from, to, &user, &device,
                    )?);
                }
            }
            reports::sort_sessions(&mut out);
            Ok(out)
        })
        .await
    }

    async fn current_windows(
        &self,
        user: String,
        at: DateTime<Utc>,
    ) -> Result<Vec<UsageDay<'static>>, StoreError> {
        let at = at.timestamp_nanos_opt().unwrap_or_default();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT product, day, window_start_ns, window_end_ns, plan, tokens FROM usage_days
                     WHERE user = ?1 AND window_end_ns > ?2 AND window_start_ns <= ?2 ORDER BY product, window_start_ns",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![user, at], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (product, day, start, end, plan, tokens) = row.map_err(db)?;
                out.push(UsageDay {
                    user: user.clone().into(),
                    product: product.into(),
                    day: day.parse().map_err(corrupt)?,
                    window_start: DateTime::from_timestamp_nanos(start),
                    window_end: DateTime::from_timestamp_nanos(end),
                    plan: reports::plan_of(&plan)?,
                    tokens: tokens.max(0) as u64,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn add_purchase(&self, purchase: Purchase) -> Result<(), StoreError> {
        self.write(|tx| Job::AddPurchase(Box::new(purchase), tx))
            .await
    }

    async fn purchase(&self, id: String) -> Result<Option<Purchase>, StoreError> {
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT id, team, tokens, purchased_at, expires_at, used FROM purchases WHERE id = ?1",
                    [&id],
                    purchase_row,
                )
                .optional()
                .map_err(db)?;
            row.map(|(p, _)| p).transpose()
        })
        .await
    }

    async fn correct_purchase(&self, correction: PurchaseCorrection) -> Result<bool, StoreError> {
        self.write(|tx| Job::CorrectPurchase(Box::new(correction), tx))
            .await
    }

    async fn balances(
        &self,
        at: DateTime<Utc>,
        settings: Settings,
    ) -> Result<Vec<Balance>, StoreError> {
        self.read(move |c| {
            let mut purchases = Vec::new();
            let mut stmt = c
                .prepare("SELECT id, team, tokens, purchased_at, expires_at, used FROM purchases ORDER BY expires_at, id")
                .map_err(db)?;
            for row in stmt.query_map([], purchase_row).map_err(db)? {
                let (purchase, used) = row.map_err(db)?;
                purchases.push(PurchaseState { purchase: purchase?, used });
            }
            let mut unfunded: BTreeMap<String, i64> = BTreeMap::new();
            let mut stmt = c.prepare("SELECT team, tokens FROM team_unfunded").map_err(db)?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(db)? {
                let (team, n) = row.map_err(db)?;
                unfunded.insert(team, n);
            }
            Ok(balances(at, &settings, purchases, unfunded))
        })
        .await
    }

    async fn ledger(
        &self,
        team: Option<String>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT seq, at, team, user, product, day, window_start_ns, purchase, tokens, reason FROM ledger
                     WHERE (?1 IS NULL OR team = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(db)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(rusqlite::params![team, after.unwrap_or(i64::MIN), limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, i64>(8)?,
                        r.get::<_, String>(9)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, at, team, user, product, day, start, purchase, tokens, reason) = row.map_err(db)?;
                out.push(LedgerEntry {
                    seq,
                    at: DateTime::parse_from_rfc3339(&at).map_err(corrupt)?.to_utc(),
                    team,
                    user,
                    product,
                    day,
                    window_start: DateTime::from_timestamp_nanos(start),
                    purchase,
                    tokens,
                    reason,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn team_remaining(&self, team: String, at: DateTime<Utc>) -> Result<u64, StoreError> {
        self.read(move |c| Ok(load_ledger(c, &team)?.remaining(at)))
            .await
    }

    async fn longest_session(&self) -> Result<i64, StoreError> {
        // SQLite's julianday reads RFC 3339 with its offset; a scan of every stored
        // body, which only an import that changes the window pays.
        self.read(|c| {
            let days: Option<f64> = c
                .query_row(
                    "SELECT max(julianday(coalesce(e.value ->> 'end', e.value ->> 'last_seen'))
                                - julianday(e.value ->> 'start'))
                     FROM session_batches AS b, json_each(b.bodies) AS e",
                    [],
                    |r| r.get(0),
                )
                .map_err(db)?;
            Ok(days.map_or(0, |d| (d * 86_400.0).ceil() as i64))
        })
        .await
    }

    async fn last_sync(&self, user: String) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(move |c| {
            let at: Option<String> = c
                .query_row(
                    "SELECT last_sync FROM users WHERE user = ?1",
                    [&user],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            at.map(|a| {
                DateTime::parse_from_rfc3339(&a)
                    .map(|d| d.to_utc())
                    .map_err(corrupt)
            })
            .transpose()
        })
        .await
    }

    async fn add_mail_schedule(
        &self,
        schedule: MailSchedule,
        max_per_recipient: usize,
    ) -> Result<bool, StoreError> {
        self.write(|tx| Job::AddMailSchedule(Box::new((schedule, max_per_recipient)), tx))
            .await
    }

    async fn mail_schedules(&self) -> Result<Vec<MailSchedule>, StoreError> {
        self.read(mail::read_schedules).await
    }

    async fn delete_mail_schedule(&self, id: String) -> Result<bool, StoreError> {
        self.write(|tx| Job::DeleteMailSchedule(id, tx)).await
    }

    async fn set_mail_next_run(
        &self,
        id: String,
        next_run: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| Job::SetMailNextRun(Box::new((id, next_run)), tx))
            .await
    }

    async fn low_balance_readings(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.read(mail::read_readings).await
    }

    async fn set_low_balance_reading(
        &self,
        schedule: String,
        team: String,
        remaining: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx| Job::SetLowBalanceReading(Box::new((schedule, team, remaining)), tx))
            .await
    }
}
