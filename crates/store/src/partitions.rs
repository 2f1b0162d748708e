//! The delivery log's time partitions: created ahead, dropped whole once older than the
//! retention, and created on the spot when a write finds none for its row.
//!
//! `deliveries` and `delivery_attempts` are partitioned alike by the time their event was
//! received (`event_received_at`, V8), in ranges of `database.partition_interval` counted
//! from 1970-01-01 UTC, named after their start in UTC (`deliveries_p20261201t000000`).
//! Maintenance ([`Store::maintain_partitions`]) is serialized across processes by an advisory
//! lock (a process that does not get it skips) and runs on a connection of its own, so its
//! session lock and settings end with it whatever happens. It never stalls writers:
//!
//! * a partition is created with `CREATE TABLE … (LIKE …)` and then `ATTACH PARTITION`, which
//!   takes SHARE UPDATE EXCLUSIVE on the parent (inserts and reads go on), where
//!   `CREATE TABLE … PARTITION OF` would take ACCESS EXCLUSIVE;
//! * a partition is dropped with `DETACH PARTITION … CONCURRENTLY` and then `DROP TABLE` of
//!   the detached table, where a plain `DROP TABLE` would take ACCESS EXCLUSIVE on the parent,
//!   and, queued behind one long transaction, block every writer queued behind it;
//! * every statement runs under a short `lock_timeout`: a wait that cannot be had soon fails
//!   the run, which the next one repeats. A detach cut short is left "pending" by
//!   PostgreSQL; the next run finishes it (`FINALIZE`) before anything else, and drops any
//!   detached table a crash left behind.
//!
//! Events stay in one table (idempotency by event id needs a unique index on id alone) and
//! are trimmed in bounded batches, back to the start of the oldest partition kept, so an event
//! and its deliveries expire together.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::{Store, StoreError};

/// The tables partitioned by `event_received_at`, in the order their partitions are
/// dropped: a delivery goes before its attempts, so the log never shows it without them.
const TABLES: [&str; 2] = ["deliveries", "delivery_attempts"];

/// The advisory lock that serializes partition changes across processes ("AIOKA_PA"); in
/// `pg_locks` it shows as classid 1095323467, objid 1096765505.
pub const MAINTENANCE_LOCK: i64 = 0x4149_4f4b_415f_5041;

/// How long one maintenance statement may wait for a lock, and a repair for maintenance.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Events deleted per statement, and statements per run: the rest waits for the next run.
const TRIM_BATCH: i64 = 1000;
const TRIM_BATCHES_PER_RUN: usize = 100;

/// Most partitions the retention may span: lookups by delivery id probe each one's index.
pub const MAX_RETAINED_PARTITIONS: u64 = 1000;

/// How the delivery log is partitioned and how long it is kept (`[database]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPolicy {
    /// Deliveries of events received longer ago than this are dropped, a whole partition at
    /// a time, once the partition's whole range is older.
    pub retention: Duration,
    /// The time range of one partition (whole seconds).
    pub interval: Duration,
    /// Partitions created ahead of the current one.
    pub ahead: u32,
}

impl Default for PartitionPolicy {
    /// The defaults of `config/default.toml`.
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 86_400),
            interval: Duration::from_secs(86_400),
            ahead: 3,
        }
    }
}

/// A `[database]` setting that is not valid: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("database.{key}: {problem}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub problem: String,
}

impl PartitionPolicy {
    /// Checks the policy; the error names the setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key, problem: &str| {
            Err(InvalidSetting {
                key,
                problem: problem.to_owned(),
            })
        };
        if self.interval < Duration::from_secs(1) || self.interval.subsec_nanos() != 0 {
            return invalid(
                "partition_interval",
                "must be a whole number of seconds, at least 1s",
            );
        }
        if self.retention < self.interval {
            return invalid("retention", "must be at least database.partition_interval");
        }
        if self.retention.as_secs() / self.interval.as_secs() > MAX_RETAINED_PARTITIONS {
            return invalid(
                "retention",
                "spans more than 1000 partitions of database.partition_interval; lengthen the interval",
            );
        }
        if !(1..=100).contains(&self.ahead) {
            return invalid("partitions_ahead", "must be 1 to 100");
        }
        Ok(())
    }

    fn interval_secs(&self) -> i64 {
        i64::try_from(self.interval.as_secs())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    fn retention(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX)
    }

    /// The partition range `[from, to)` holding `at`.
    pub fn range_of(&self, at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let step = self.interval_secs();
        let start = at.timestamp().div_euclid(step) * step;
        (utc(start), utc(start.saturating_add(step)))
    }

    /// How often the fanout service runs maintenance: half an interval, at most a minute.
    pub fn maintenance_period(&self) -> Duration {
        (self.interval / 2).clamp(Duration::from_millis(500), Duration::from_secs(60))
    }
}

fn utc(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The name of `table`'s partition starting at `from`.
pub(crate) fn partition_name(table: &str, from: DateTime<Utc>) -> String {
    format!("{table}_p{}", from.format("%Y%m%dt%H%M%S"))
}

/// The parts of `want` that none of `existing` covers, in order.
fn gaps(
    existing: &[(DateTime<Utc>, DateTime<Utc>)],
    want: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut overlapping: Vec<_> = existing
        .iter()
        .filter(|(from, to)| *from < want.1 && *to > want.0)
        .copied()
        .collect();
    overlapping.sort();
    let mut gaps = Vec::new();
    let mut at = want.0;
    for (from, to) in overlapping {
        if from > at {
            gaps.push((at, from));
        }
        at = at.max(to);
    }
    if at < want.1 {
        gaps.push((at, want.1));
    }
    gaps
}

/// One partition of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `deliveries` or `delivery_attempts`.
    pub table: String,
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Left half-detached by a `DETACH … CONCURRENTLY` that was cut short: it takes no rows
    /// and the next maintenance finishes dropping it.
    pub detaching: bool,
}

/// What one [`Store::maintain_partitions`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintained {
    /// Another process held the maintenance lock: nothing was done.
    pub skipped: bool,
    /// Partitions created (names), of both tables.
    pub created: Vec<String>,
    /// Partitions dropped (names), of both tables.
    pub dropped: Vec<String>,
    /// Events deleted because they are older than every partition kept and the retention.
    pub events_trimmed: u64,
    /// How far back the delivery log reaches now (see [`Store::log_window`]).
    pub log_starts_at: Option<DateTime<Utc>>,
}

/// How far back the delivery log reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogWindow {
    /// The start of the oldest partition kept: deliveries of events received since are all
    /// in the log, older ones are gone (now − retention if there is no partition at all).
    pub starts_at: DateTime<Utc>,
    /// `database.retention`.
    pub retention: Duration,
}

/// The partitions of [`TABLES`], with their bounds as PostgreSQL holds them (read back in
/// the same session, so the session's DateStyle and TimeZone cannot skew them). Partitions
/// with bounds of another form (MINVALUE, DEFAULT) were not made here and are left alone.
async fn list_partitions(client: &impl GenericClient) -> Result<Vec<Partition>, StoreError> {
    let rows = client
        .query(
            "SELECT p.relname::text, k.relname::text, i.inhdetachpending,
                    b[1]::timestamptz, b[2]::timestamptz
             FROM pg_inherits i
             JOIN pg_class p ON p.oid = i.inhparent
             JOIN pg_class k ON k.oid = i.inhrelid,
             LATERAL regexp_match(pg_get_expr(k.relpartbound, k.oid),
                                  'FROM \\(''([^'']*)''\\) TO \\(''([^'']*)''\\)') AS b
             WHERE i.inhparent IN ('deliveries'::regclass, 'delivery_attempts'::regclass)
               AND b IS NOT NULL
             ORDER BY 1, 4",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Partition {
                table: r.try_get(0)?,
                name: r.try_get(1)?,
                detaching: r.try_get(2)?,
                from: r.try_get(3)?,
                to: r.try_get(4)?,
            })
        })
        .collect()
}

/// Creates and attaches `table`'s partition for `[from, to)`; returns its name.
async fn create_partition(
    client: &impl GenericClient,
    table: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> Result<String, StoreError> {
    let name = partition_name(table, from);
    // V3: spare room in each page of deliveries, so status updates are HOT updates.
    let storage = if table == "deliveries" {
        " WITH (fillfactor = 70)"
    } else {
        ""
    };
    // One simple query, so one transaction: no table is left unattached if the attach fails.
    client
        .batch_execute(&format!(
            "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){storage};
             ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}')",
            from.to_rfc3339(),
            to.to_rfc3339()
        ))
        .await?;
    Ok(name)
}

/// Creates, in both tables, whatever part of `ranges` no partition covers yet.
async fn ensure_ranges(
    client: &impl GenericClient,
    existing: &[Partition],
    ranges: &BTreeSet<(DateTime<Utc>, DateTime<Utc>)>,
) -> Result<Vec<String>, StoreError> {
    let mut created = Vec::new();
    for table in TABLES {
        let mut have: Vec<_> = existing
            .iter()
            .filter(|p| p.table == table)
            .map(|p| (p.from, p.to))
            .collect();
        for want in ranges {
            for gap in gaps(&have, *want) {
                created.push(create_partition(client, table, gap).await?);
                have.push(gap);
            }
        }
    }
    Ok(created)
}

/// The start of the oldest partition of `deliveries` that takes rows.
fn oldest_start(partitions: &[Partition]) -> Option<DateTime<Utc>> {
    partitions
        .iter()
        .filter(|p| p.table == TABLES[0] && !p.detaching)
        .map(|p| p.from)
        .min()
}

impl Store {
    /// The partition policy this store was opened with.
    pub fn partition_policy(&self) -> &PartitionPolicy {
        &self.policy
    }

    /// The same database under another partition policy (tests and tools).
    pub fn with_partition_policy(&self, policy: PartitionPolicy) -> Store {
        Store {
            pool: self.pool.clone(),
            policy,
        }
    }

    /// Every partition of the delivery log, by table and start.
    #[tracing::instrument(skip_all)]
    pub async fn partitions(&self) -> Result<Vec<Partition>, StoreError> {
        let client = self.pool.get().await?;
        list_partitions(&**client).await
    }

    /// How far back the delivery log reaches, for the API's answers.
    #[tracing::instrument(skip_all)]
    pub async fn log_window(&self) -> Result<LogWindow, StoreError> {
        let client = self.pool.get().await?;
        let partitions = list_partitions(&**client).await?;
        let starts_at = match oldest_start(&partitions) {
            Some(start) => start,
            None => {
                let now: DateTime<Utc> = client.query_one("SELECT now()", &[]).await?.try_get(0)?;
                now - self.policy.retention()
            }
        };
        Ok(LogWindow {
            starts_at,
            retention: self.policy.retention,
        })
    }

    /// [`Store::maintain_partitions_at`] the database's current time (the clock that stamps
    /// `events.received_at`).
    pub async fn maintain_partitions(&self) -> Result<Maintained, StoreError> {
        let now: DateTime<Utc> = {
            let client = self.pool.get().await?;
            client.query_one("SELECT now()", &[]).await?.try_get(0)?
        };
        self.maintain_partitions_at(now).await
    }

    /// Brings the partitions in line with the policy as of `now`: finishes what an earlier
    /// run left half done, creates the partitions from the current interval through
    /// `ahead` intervals later, drops the partitions whose whole range ends at or before
    /// `now − retention`, and trims the events older than both that and the oldest partition
    /// kept. Skips (and says so) when another process is at it.
    #[tracing::instrument(skip_all, fields(%now))]
    pub async fn maintain_partitions_at(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Maintained, StoreError> {
        // A connection of its own, closed afterwards: the session lock and lock_timeout go
        // with it even if a statement fails half-way.
        let client = deadpool_postgres::Object::take(self.pool.get().await?);
        client
            .batch_execute(&format!(
                "SET lock_timeout = '{}ms'",
                LOCK_TIMEOUT.as_millis()
            ))
            .await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
            .await?
            .try_get(0)?;
        if !locked {
            return Ok(Maintained {
                skipped: true,
                ..Maintained::default()
            });
        }
        let mut done = Maintained {
            dropped: finish_detaches(&*client).await?,
            ..Maintained::default()
        };

        let partitions = list_partitions(&*client).await?;
        let (current, _) = self.policy.range_of(now);
        let step = self.policy.interval_secs();
        let wanted: BTreeSet<_> = (0..=i64::from(self.policy.ahead))
            .map(|k| self.policy.range_of(utc(current.timestamp() + k * step)))
            .collect();
        done.created = ensure_ranges(&*client, &partitions, &wanted).await?;

        let cutoff = now - self.policy.retention();
        for table in TABLES {
            for p in partitions
                .iter()
                .filter(|p| p.table == table && p.to <= cutoff)
            {
                // One statement alone: DETACH … CONCURRENTLY cannot run inside a transaction.
                // It waits for the transactions using the partition, never blocking new ones.
                client
                    .batch_execute(&format!(
                        "ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY",
                        p.table, p.name
                    ))
                    .await?;
                client
                    .batch_execute(&format!("DROP TABLE {}", p.name))
                    .await?;
                done.dropped.push(p.name.clone());
            }
        }

        let kept = list_partitions(&*client).await?;
        done.log_starts_at = oldest_start(&kept);
        let trim_before = done.log_starts_at.map_or(cutoff, |start| start.min(cutoff));
        done.events_trimmed = trim_events(&*client, trim_before).await?;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
            .await?;
        Ok(done)
    }

    /// Makes room for the rows of `events` after a write found no partition for them:
    /// creates the missing partitions of events inside the retention, and deletes the events
    /// whose partition would already be past it (their records are then dropped, as those
    /// of any removed event are). Waits for a maintenance run in progress, a few seconds at
    /// most. Returns the partitions created.
    #[tracing::instrument(skip_all, fields(events = events.len()))]
    pub(crate) async fn repair_partitions(
        &self,
        events: &[Uuid],
    ) -> Result<Vec<String>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            LOCK_TIMEOUT.as_millis()
        ))
        .await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MAINTENANCE_LOCK])
            .await?;
        let now: DateTime<Utc> = tx.query_one("SELECT now()", &[]).await?.try_get(0)?;
        let cutoff = now - self.policy.retention();
        let rows = tx
            .query(
                "SELECT id, received_at FROM events WHERE id = ANY($1)",
                &[&events],
            )
            .await?;
        let mut wanted = BTreeSet::new();
        let mut expired: Vec<Uuid> = Vec::new();
        for row in &rows {
            let range = self.policy.range_of(row.try_get(1)?);
            if range.1 <= cutoff {
                expired.push(row.try_get(0)?);
            } else {
                wanted.insert(range);
            }
        }
        let existing = list_partitions(&*tx).await?;
        let created = ensure_ranges(&*tx, &existing, &wanted).await?;
        if !expired.is_empty() {
            tx.execute("DELETE FROM events WHERE id = ANY($1)", &[&expired])
                .await?;
        }
        tx.commit().await?;
        if !created.is_empty() || !expired.is_empty() {
            tracing::warn!(
                created = ?created,
                expired_events = expired.len(),
                "a write found no partition for its rows; created them (is partition maintenance running?)"
            );
        }
        Ok(created)
    }
}

/// Finishes what a run cut off left: completes each detach left pending (`FINALIZE` waits
/// for the transactions the cut-short one was waiting for) and drops the tables that were
/// detached but not dropped (tables with our partitions' names that are no longer
/// partitions). Returns the tables dropped.
async fn finish_detaches(client: &impl GenericClient) -> Result<Vec<String>, StoreError> {
    let mut dropped = Vec::new();
    for p in list_partitions(client)
        .await?
        .iter()
        .filter(|p| p.detaching)
    {
        client
            .batch_execute(&format!(
                "ALTER TABLE {} DETACH PARTITION {} FINALIZE",
                p.table, p.name
            ))
            .await?;
    }
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r' AND NOT c.relispartition
               AND c.relname ~ '^(deliveries|delivery_attempts)_p[0-9]{8}t[0-9]{6}$'
             ORDER BY 1",
            &[],
        )
        .await?;
    for row in &rows {
        let name: String = row.try_get(0)?;
        client.batch_execute(&format!("DROP TABLE {name}")).await?;
        dropped.push(name);
    }
    Ok(dropped)
}

/// Deletes events received before `before`, a bounded batch per statement and a bounded
/// number of batches per run.
async fn trim_events(
    client: &impl GenericClient,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut trimmed = 0;
    for _ in 0..TRIM_BATCHES_PER_RUN {
        let deleted = client
            .execute(
                "DELETE FROM events WHERE id IN (
                     SELECT id FROM events WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
                &[&before, &TRIM_BATCH],
            )
            .await?;
        trimmed += deleted;
        if deleted < TRIM_BATCH.unsigned_abs() {
            break;
        }
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn policy(interval: u64, retention: u64) -> PartitionPolicy {
        PartitionPolicy {
            retention: Duration::from_secs(retention),
            interval: Duration::from_secs(interval),
            ahead: 3,
        }
    }

    #[test]
    fn a_day_partition_starts_at_midnight_utc_and_is_named_after_it() {
        let (from, to) = PartitionPolicy::default().range_of(at("2026-12-01T17:45:12.5Z"));
        assert_eq!(
            (from, to),
            (at("2026-12-01T00:00:00Z"), at("2026-12-02T00:00:00Z"))
        );
        assert_eq!(
            partition_name("deliveries", from),
            "deliveries_p20261201t000000"
        );
        let (from, _) = policy(2, 10).range_of(at("2026-12-01T17:45:13.9Z"));
        assert_eq!(
            partition_name("delivery_attempts", from),
            "delivery_attempts_p20261201t174512"
        );
    }

    #[test]
    fn a_range_boundary_belongs_to_the_later_partition() {
        let p = policy(3600, 7200);
        assert_eq!(
            p.range_of(at("2026-12-01T10:00:00Z")).0,
            at("2026-12-01T10:00:00Z")
        );
        assert_eq!(
            p.range_of(at("2026-12-01T09:59:59.999Z")).0,
            at("2026-12-01T09:00:00Z")
        );
        assert_eq!(
            p.range_of(at("1969-12-31T23:30:00Z")).0,
            at("1969-12-31T23:00:00Z")
        );
    }

    #[test]
    fn gaps_are_what_no_existing_partition_covers() {
        let h = |n: i64| utc(n * 3600);
        assert_eq!(gaps(&[], (h(0), h(2))), vec![(h(0), h(2))]);
        assert_eq!(gaps(&[(h(0), h(24))], (h(3), h(4))), vec![]);
        assert_eq!(
            gaps(&[(h(1), h(2)), (h(3), h(4))], (h(0), h(5))),
            vec![(h(0), h(1)), (h(2), h(3)), (h(4), h(5))]
        );
        assert_eq!(gaps(&[(h(5), h(6))], (h(0), h(2))), vec![(h(0), h(2))]);
    }

    #[test]
    fn each_bad_setting_is_named() {
        assert_eq!(PartitionPolicy::default().validate(), Ok(()));
        let key = |p: PartitionPolicy| p.validate().unwrap_err().key;
        assert_eq!(key(policy(0, 10)), "partition_interval");
        let mut half = policy(1, 10);
        half.interval = Duration::from_millis(1500);
        assert_eq!(key(half), "partition_interval");
        assert_eq!(key(policy(10, 5)), "retention");
        assert_eq!(key(policy(1, 86_400)), "retention");
        let mut none_ahead = policy(1, 10);
        none_ahead.ahead = 0;
        assert_eq!(key(none_ahead), "partitions_ahead");
    }

    #[test]
    fn maintenance_runs_every_half_interval_but_at_least_every_minute() {
        assert_eq!(
            PartitionPolicy::default().maintenance_period(),
            Duration::from_secs(60)
        );
        assert_eq!(policy(2, 10).maintenance_period(), Duration::from_secs(1));
    }
}
