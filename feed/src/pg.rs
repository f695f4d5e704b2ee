//! The PostgreSQL store: the ADR 0006 `events` table, read through a pool
//! by id range, appended to per ADR 0005, woken by one LISTEN connection.
//!
//! No event is skipped whatever the commit order: migration V2 makes every
//! inserting statement take one transaction-scoped advisory lock before the
//! identity default runs, so ids are allocated in commit order and a hole
//! below a visible id is a rolled-back transaction, final at once. Reads
//! need no gap tracking: `event_id > after` in one snapshot is enough.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use route_model::{Event, EventBatch};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::store::{AppendError, AppliedReport, Checkpoint, NewEvent, Store, StoreError};

mod listen;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Connections the pool keeps at most (reads, appends, reports).
pub const POOL_SIZE: usize = 16;

/// `lock_timeout` of edge-feed's own appends: a writer that waits longer
/// than this for the append lock fails instead of queueing for ever behind
/// a stuck transaction (see docs/edge-feed.md for other writers).
pub const APPEND_LOCK_TIMEOUT: &str = "5s";

/// The channel the `events_notify` trigger notifies.
pub const CHANNEL: &str = "edge_feed_events";

/// One statement, one snapshot: the head of the served stream and the page.
const PAGE_SQL: &str = "\
SELECT h.head, e.event_id, e.occurred_at, e.aggregate_type, e.aggregate_id, e.aggregate_seq, e.event_type, e.payload
FROM (SELECT coalesce(greatest(
        (SELECT max(event_id) FROM events WHERE aggregate_type = 'env'),
        (SELECT max(event_id) FROM events WHERE aggregate_type = 'route'),
        (SELECT max(event_id) FROM events WHERE aggregate_type = 'instance')), 0) AS head) h
LEFT JOIN LATERAL (
    SELECT event_id,
           to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS occurred_at,
           aggregate_type, aggregate_id, aggregate_seq, event_type, payload
    FROM events
    WHERE event_id > $1 AND aggregate_type IN ('env', 'route', 'instance')
    ORDER BY event_id
    LIMIT $2) e ON true
ORDER BY e.event_id";

const APPEND_SQL: &str = "\
INSERT INTO events (aggregate_type, aggregate_id, aggregate_seq, event_type, payload)
SELECT $1, $2, u.seq, u.event_type, u.payload
FROM unnest($3::int[], $4::text[], $5::jsonb[]) WITH ORDINALITY AS u(seq, event_type, payload, n)
ORDER BY u.n
RETURNING event_id";

/// How the store behaves beyond the URL.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Hold one LISTEN connection for wake-ups (off: the fallback interval
    /// alone paces the feed).
    pub listen: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { listen: true }
    }
}

/// The PostgreSQL event log.
pub struct PgStore {
    pool: Pool,
    feed_id: String,
    wake: Arc<watch::Sender<u64>>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("feed_id", &self.feed_id)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.abort();
        }
    }
}

/// Maps a driver error to its most useful text (the server's message when
/// there is one).
pub(crate) fn db_error(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError(format!("{}: {}", d.code().code(), d.message())),
        None => StoreError(e.to_string()),
    }
}

fn config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    tokio_postgres::Config::from_str(url).map_err(|e| StoreError(format!("{url}: {e}")))
}

/// Creates or upgrades the schema (migrations V1.., kept in
/// `feed/migrations/`); returns the versions applied now.
pub async fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let (mut client, conn) = config(url)?
        .connect(NoTls)
        .await
        .map_err(|e| db_error(&e))?;
    let driver = tokio::spawn(conn);
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(|e| StoreError(format!("migration failed: {e}")))?;
    drop(client);
    let _ = driver.await;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

impl PgStore {
    /// Connects the pool, reads the log's feed_id (the schema must have
    /// been migrated) and starts the LISTEN connection.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let cfg = config(url)?;
        let manager = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError(format!("pool: {e}")))?;
        let client = pool
            .get()
            .await
            .map_err(|e| StoreError(format!("connect: {e}")))?;
        let feed_id: String = client
            .query_one("SELECT feed_id FROM feed_identity", &[])
            .await
            .map_err(|e| {
                StoreError(format!(
                    "reading feed_identity ({}); run `edge-feed migrate` first",
                    db_error(&e).0
                ))
            })?
            .get(0);
        drop(client);
        let wake = Arc::new(watch::channel(0).0);
        let listener = options
            .listen
            .then(|| tokio::spawn(listen::run(cfg, Arc::clone(&wake))));
        Ok(PgStore {
            pool,
            feed_id,
            wake,
            listener,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError(format!("connect: {e}")))
    }
}

fn event_of(row: &tokio_postgres::Row) -> Event {
    Event {
        event_id: row.get::<_, i64>(1) as u64,
        occurred_at: row.get(2),
        aggregate_type: row.get(3),
        aggregate_id: row.get(4),
        aggregate_seq: row.get::<_, i32>(5) as u64,
        event_type: row.get(6),
        payload: row.get(7),
    }
}

#[tonic::async_trait]
impl Store for PgStore {
    fn feed_id(&self) -> &str {
        &self.feed_id
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    async fn page(&self, after: u64, limit: usize) -> Result<EventBatch, StoreError> {
        let client = self.client().await?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(PAGE_SQL, &[&after, &limit])
            .await
            .map_err(|e| db_error(&e))?;
        let head = rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64);
        let events = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .map(event_of)
            .collect();
        Ok(EventBatch {
            head,
            events,
            feed_id: Some(self.feed_id.clone()),
        })
    }

    async fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, AppendError> {
        AppendError::require_events(aggregate_type, aggregate_id, events)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| db_error(&e))?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{APPEND_LOCK_TIMEOUT}'"))
            .await
            .map_err(|e| db_error(&e))?;
        let prev: i32 = tx
            .query_one(
                "SELECT coalesce(max(aggregate_seq), 0) FROM events \
                 WHERE aggregate_type = $1 AND aggregate_id = $2",
                &[&aggregate_type, &aggregate_id],
            )
            .await
            .map_err(|e| db_error(&e))?
            .get(0);
        let seqs: Vec<i32> = (1..=events.len() as i32).map(|i| prev + i).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
        let rows = match tx
            .query(
                APPEND_SQL,
                &[&aggregate_type, &aggregate_id, &seqs, &types, &payloads],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(AppendError::Conflict {
                    aggregate_type: aggregate_type.into(),
                    aggregate_id: aggregate_id.into(),
                    aggregate_seq: prev as u64 + 1,
                })
            }
            Err(e) => return Err(db_error(&e).into()),
        };
        tx.commit().await.map_err(|e| db_error(&e))?;
        let mut ids: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn report_applied(&self, report: &AppliedReport) -> Result<(), StoreError> {
        let client = self.client().await?;
        let projection = format!("edge:{}", report.node_id);
        let event_id = i64::try_from(report.event_id).unwrap_or(i64::MAX);
        let rejected = serde_json::to_value(&report.rejected).unwrap_or_default();
        client
            .execute(
                "INSERT INTO projection_checkpoints (projection, event_id, rejected, updated_at) \
                 VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (projection) DO UPDATE \
                 SET event_id = EXCLUDED.event_id, rejected = EXCLUDED.rejected, updated_at = now()",
                &[&projection, &event_id, &rejected],
            )
            .await
            .map_err(|e| db_error(&e))?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT substr(projection, 6), event_id, \
                        extract(epoch FROM now() - updated_at)::float8 \
                 FROM projection_checkpoints WHERE projection LIKE 'edge:%' ORDER BY projection",
                &[],
            )
            .await
            .map_err(|e| db_error(&e))?;
        Ok(rows
            .iter()
            .map(|r| Checkpoint {
                node_id: r.get(0),
                event_id: r.get::<_, i64>(1) as u64,
                age: Duration::from_secs_f64(r.get::<_, f64>(2).max(0.0)),
            })
            .collect())
    }
}
