//! The event store: cqrs-es `PersistedEventStore` loading over the postgres-es
//! / sqlite-es repositories (snapshots, then the events after them, through
//! the upcasters), and Tally's own append.
//!
//! Why our own append: postgres-es 0.5 commits a snapshot update *before*
//! checking that it touched a row (`event_repository.rs`, `update`), and then
//! reports an optimistic-lock failure for events that were in fact stored; a
//! retry would then apply the command twice. Our append writes the events and
//! the snapshot upsert in one transaction and only reports a conflict when the
//! transaction rolled back (`tests/store.rs` shows the difference). It also
//! returns the global positions, which the API hands back in `X-Log-Position`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::{Aggregate, DomainEvent, EventStore};
use postgres_es::PostgresEventRepository;
use serde_json::value::RawValue;
use serde_json::Value;
use sqlite_es::SqliteEventRepository;
use tally_projections::db::{sqlite_params, value_rows, Db, DbError, TypedPool};
use tally_projections::time;

use crate::group_commit::GroupCommit;

/// Snapshot every this many events of a stream.
pub const SNAPSHOT_EVERY: usize = 100;

/// The repository of the backend in use; reads delegate to postgres-es /
/// sqlite-es, writes go through [`append`].
#[derive(Clone)]
pub struct LogRepository {
    db: Db,
    inner: Inner,
    /// PostgreSQL: the group committer, started by the first append.
    group: Arc<OnceLock<GroupCommit>>,
}

#[derive(Clone)]
enum Inner {
    Postgres(std::sync::Arc<PostgresEventRepository>),
    Sqlite(std::sync::Arc<SqliteEventRepository>),
}

impl LogRepository {
    pub fn new(db: Db) -> Self {
        let inner = match &db.typed {
            TypedPool::Postgres(p) => {
                Inner::Postgres(std::sync::Arc::new(PostgresEventRepository::new(p.clone())))
            }
            TypedPool::Sqlite(p) => {
                Inner::Sqlite(std::sync::Arc::new(SqliteEventRepository::new(p.clone())))
            }
        };
        Self {
            db,
            inner,
            group: Arc::default(),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// A cqrs-es event store for aggregate `A` over this repository.
    pub fn event_store<A: Aggregate>(&self) -> PersistedEventStore<LogRepository, A> {
        PersistedEventStore::new_snapshot_store(self.clone(), SNAPSHOT_EVERY)
    }

    /// Loads an aggregate: its state and its current sequence (0 when new).
    pub async fn load<A: Aggregate>(&self, stream_key: &str) -> Result<(A, i64), StoreError> {
        let ctx = self
            .event_store::<A>()
            .load_aggregate(stream_key)
            .await
            .map_err(load_error)?;
        Ok((ctx.aggregate, ctx.current_sequence as i64))
    }

    /// [`append`] through the group committer on PostgreSQL.
    pub async fn append(
        &self,
        aggregate_type: &'static str,
        stream_key: &str,
        tenant: &str,
        recorded_at: DateTime<Utc>,
        events: Vec<NewEvent>,
        snapshot: Option<NewSnapshot>,
    ) -> Result<Vec<i64>, StoreError> {
        let stream = StreamAppend {
            aggregate_type,
            key: stream_key.to_string(),
            events,
            snapshot,
        };
        let mut positions = self
            .append_streams(tenant, recorded_at, vec![stream], false)
            .await?;
        Ok(positions.pop().unwrap_or_default())
    }

    /// [`append_many`] through the group committer on PostgreSQL.
    pub async fn append_many(
        &self,
        tenant: &str,
        recorded_at: DateTime<Utc>,
        streams: Vec<StreamAppend>,
    ) -> Result<Vec<i64>, StoreError> {
        let positions = self
            .append_streams(tenant, recorded_at, streams, false)
            .await?;
        Ok(positions
            .iter()
            .map(|p| p.last().copied().unwrap_or_default())
            .collect())
    }

    /// Appends streams that must be new (their events from sequence 1), in
    /// one transaction: per stream the position of its last event, or `None`
    /// when the stream already existed and was left alone. A stream that
    /// only partly went in (another writer raced it) is a `Conflict` and
    /// nothing is stored.
    pub async fn append_new(
        &self,
        tenant: &str,
        recorded_at: DateTime<Utc>,
        streams: Vec<StreamAppend>,
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let positions = self
            .append_streams(tenant, recorded_at, streams, true)
            .await?;
        Ok(positions.iter().map(|p| p.last().copied()).collect())
    }

    /// Per stream the positions of its events, all appended or none (with
    /// `skip_existing`, a stream that already exists is left alone instead).
    async fn append_streams(
        &self,
        tenant: &str,
        recorded_at: DateTime<Utc>,
        streams: Vec<StreamAppend>,
        skip_existing: bool,
    ) -> Result<Vec<Vec<i64>>, StoreError> {
        let counts: Vec<(&'static str, usize)> = streams
            .iter()
            .map(|s| (s.aggregate_type, s.events.len()))
            .collect();
        let streams = match self.group() {
            Some(group) => match group
                .append(tenant, recorded_at, streams, skip_existing)
                .await
            {
                Ok(result) => {
                    let positions = result?;
                    for (aggregate, n) in counts {
                        metrics::counter!("tally_events_appended_total", "aggregate" => aggregate)
                            .increment(n as u64);
                    }
                    return Ok(positions);
                }
                Err(streams) => streams,
            },
            None => streams,
        };
        if let ([one], false) = (streams.as_slice(), skip_existing) {
            let positions = append(
                &self.db,
                one.aggregate_type,
                &one.key,
                tenant,
                recorded_at,
                &one.events,
                one.snapshot.as_ref(),
            )
            .await?;
            return Ok(vec![positions]);
        }
        insert_many(&self.db, tenant, recorded_at, &streams, skip_existing).await
    }

    fn group(&self) -> Option<&GroupCommit> {
        match &self.db.typed {
            TypedPool::Postgres(pool) => Some(
                self.group
                    .get_or_init(|| GroupCommit::start(pool.clone(), self.db.clone())),
            ),
            TypedPool::Sqlite(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another writer appended to the stream first")]
    Conflict,
    #[error("database error: {0}")]
    Db(#[from] DbError),
    #[error("cannot load the aggregate: {0}")]
    Load(String),
    #[error("cannot serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A database error of a group commit, shared by every append in it.
    #[error("database error: {0}")]
    Shared(Arc<sqlx::Error>),
}

impl StoreError {
    /// True when the database could not be reached.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(d) => d.is_unavailable(),
            StoreError::Shared(e) => tally_projections::db::sqlx_unavailable(e),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e {
            if d.is_unique_violation() {
                return StoreError::Conflict;
            }
        }
        StoreError::Db(DbError::Sqlx(e))
    }
}

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// Serialized once, when the command is decided: the append sends the
    /// text as it is.
    pub payload: Box<RawValue>,
    /// The command's metadata with this event's id, as JSON text: built by
    /// [`EventMetadata::with_event_id`], sent as it is.
    pub metadata: Box<RawValue>,
    pub event_id: String,
}

/// The metadata every event of one decision shares, serialized once; each
/// event adds its own `event_id` (a usage batch writes a thousand rows from
/// one map, and neither copies nor serializes it a thousand times).
pub struct EventMetadata {
    /// The serialized map after its opening brace, led by a comma when the
    /// map is not empty: `,"tenant":"t",…}` or `}`.
    rest: String,
}

impl EventMetadata {
    pub fn new(metadata: &HashMap<String, String>) -> Result<Self, serde_json::Error> {
        let text = if metadata.contains_key("event_id") {
            let mut m = metadata.clone();
            m.remove("event_id");
            serde_json::to_string(&m)?
        } else {
            serde_json::to_string(metadata)?
        };
        let rest = match &text[1..] {
            "}" => "}".to_string(),
            inner => format!(",{inner}"),
        };
        Ok(EventMetadata { rest })
    }

    pub fn with_event_id(&self, event_id: &str) -> Result<Box<RawValue>, serde_json::Error> {
        let id = serde_json::to_string(event_id)?;
        RawValue::from_string(format!("{{\"event_id\":{id}{}", self.rest))
    }
}

/// A snapshot to store with the append.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub last_sequence: i64,
    pub payload: Value,
}

const SQLITE_INSERT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
     payload, metadata, event_id, tenant, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING position";
const SNAPSHOT_UPSERT: &str = "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
     last_sequence = excluded.last_sequence, current_snapshot = excluded.current_snapshot, payload = excluded.payload \
     WHERE snapshots.last_sequence < excluded.last_sequence";

/// The snapshot upsert of [`append_many`], in a PostgreSQL transaction.
pub(crate) async fn snapshot_upsert_pg(
    tx: &mut sqlx::PgConnection,
    aggregate_type: &str,
    key: &str,
    snap: &NewSnapshot,
) -> Result<(), sqlx::Error> {
    sqlx::query(SNAPSHOT_UPSERT)
        .bind(aggregate_type)
        .bind(key)
        .bind(snap.last_sequence)
        .bind(snap.last_sequence / SNAPSHOT_EVERY as i64)
        .bind(sqlx::types::Json(&snap.payload))
        .execute(tx)
        .await?;
    Ok(())
}

/// Appends events to one stream (and the snapshot, when given) in one
/// transaction. Returns the positions of the appended events. A sequence that
/// is already taken means another writer won: `StoreError::Conflict`, nothing stored.
pub async fn append(
    db: &Db,
    aggregate_type: &str,
    stream_key: &str,
    tenant: &str,
    recorded_at: DateTime<Utc>,
    events: &[NewEvent],
    snapshot: Option<&NewSnapshot>,
) -> Result<Vec<i64>, StoreError> {
    let mut positions = Vec::with_capacity(events.len());
    match &db.typed {
        TypedPool::Postgres(pool) => {
            // One statement, so one round trip and atomic without an explicit
            // transaction: the events in a multi-row insert, the snapshot in a
            // data-modifying CTE. A taken sequence fails the whole statement.
            let rows: Vec<String> = (0..events.len())
                .map(|r| {
                    let b = r * 6 + 5;
                    format!(
                        "($1, $2, ${}, ${}, ${}, ${}, ${}, ${}, $3, $4)",
                        b,
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5
                    )
                })
                .collect();
            let values = rows.join(", ");
            let sql = match snapshot {
                None => format!(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                     payload, metadata, event_id, tenant, recorded_at) VALUES {values} RETURNING sequence, position"
                ),
                Some(_) => {
                    let n = 5 + events.len() * 6;
                    format!(
                        "WITH ins AS (INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                         event_version, payload, metadata, event_id, tenant, recorded_at) VALUES {values} \
                         RETURNING sequence, position), \
                         snap AS (INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
                         VALUES ($1, $2, ${a}, ${b}, ${c}) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                         last_sequence = excluded.last_sequence, current_snapshot = excluded.current_snapshot, \
                         payload = excluded.payload WHERE snapshots.last_sequence < excluded.last_sequence) \
                         SELECT sequence, position FROM ins",
                        a = n,
                        b = n + 1,
                        c = n + 2
                    )
                }
            };
            let mut q = sqlx::query_as::<_, (i64, i64)>(&sql)
                .bind(aggregate_type)
                .bind(stream_key)
                .bind(tenant)
                .bind(recorded_at);
            for e in events {
                q = q
                    .bind(e.sequence)
                    .bind(&e.event_type)
                    .bind(&e.event_version)
                    .bind(sqlx::types::Json(&e.payload))
                    .bind(sqlx::types::Json(&e.metadata))
                    .bind(&e.event_id);
            }
            if let Some(s) = snapshot {
                q = q
                    .bind(s.last_sequence)
                    .bind(s.last_sequence / SNAPSHOT_EVERY as i64)
                    .bind(sqlx::types::Json(&s.payload));
            }
            let mut rows = q.fetch_all(pool).await?;
            rows.sort_unstable();
            positions.extend(rows.into_iter().map(|(_, p)| p));
        }
        TypedPool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for e in events {
                let p: i64 = sqlx::query_scalar(SQLITE_INSERT)
                    .bind(aggregate_type)
                    .bind(stream_key)
                    .bind(e.sequence)
                    .bind(&e.event_type)
                    .bind(&e.event_version)
                    .bind(serde_json::to_string(&e.payload)?)
                    .bind(e.metadata.get())
                    .bind(&e.event_id)
                    .bind(tenant)
                    .bind(time::to_text(recorded_at))
                    .fetch_one(&mut *tx)
                    .await?;
                positions.push(p);
            }
            if let Some(s) = snapshot {
                sqlx::query(SNAPSHOT_UPSERT)
                    .bind(aggregate_type)
                    .bind(stream_key)
                    .bind(s.last_sequence)
                    .bind(s.last_sequence / SNAPSHOT_EVERY as i64)
                    .bind(serde_json::to_string(&s.payload)?)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
    }
    if let Some(last) = positions.last() {
        db.announce(*last);
    }
    metrics::counter!("tally_events_appended_total", "aggregate" => aggregate_type.to_string())
        .increment(events.len() as u64);
    Ok(positions)
}

/// Rows per multi-row INSERT statement of [`append_many`].
const ROWS_PER_STATEMENT: usize = 200;

/// Events for one stream in an [`append_many`].
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub aggregate_type: &'static str,
    pub key: String,
    pub events: Vec<NewEvent>,
    pub snapshot: Option<NewSnapshot>,
}

/// Appends events to many streams in one transaction, with multi-row inserts
/// (the usage batch path; an invoice issued with its number). Every stream
/// must continue at its given sequences: any conflict rolls the whole
/// transaction back and reports `Conflict`, storing nothing. Returns the
/// position of each stream's last event, in input order.
pub async fn append_many(
    db: &Db,
    tenant: &str,
    recorded_at: DateTime<Utc>,
    streams: &[StreamAppend],
) -> Result<Vec<i64>, StoreError> {
    let positions = insert_many(db, tenant, recorded_at, streams, false).await?;
    Ok(positions
        .iter()
        .map(|p| p.last().copied().unwrap_or_default())
        .collect())
}

/// The one transaction of [`append_many`] and [`LogRepository::append_new`]: per stream
/// the positions of its events (empty for a skipped stream).
async fn insert_many(
    db: &Db,
    tenant: &str,
    recorded_at: DateTime<Utc>,
    streams: &[StreamAppend],
    skip_existing: bool,
) -> Result<Vec<Vec<i64>>, StoreError> {
    let rows: Vec<(&str, &str, &NewEvent)> = streams
        .iter()
        .flat_map(|s| {
            s.events
                .iter()
                .map(move |e| (s.aggregate_type, s.key.as_str(), e))
        })
        .collect();
    let on_conflict = if skip_existing {
        " ON CONFLICT DO NOTHING"
    } else {
        ""
    };
    let sql = |n: usize| {
        format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
             payload, metadata, event_id, tenant, recorded_at) VALUES {}{on_conflict} \
             RETURNING aggregate_type, aggregate_id, sequence, position",
            value_rows(n, 10)
        )
    };
    let out = match &db.typed {
        TypedPool::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let mut inserted = HashMap::new();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let sql = sql(chunk.len());
                let mut q = sqlx::query_as::<_, (String, String, i64, i64)>(&sql);
                for (aggregate_type, key, e) in chunk {
                    q = q
                        .bind(*aggregate_type)
                        .bind(*key)
                        .bind(e.sequence)
                        .bind(&e.event_type)
                        .bind(&e.event_version)
                        .bind(sqlx::types::Json(&e.payload))
                        .bind(sqlx::types::Json(&e.metadata))
                        .bind(&e.event_id)
                        .bind(tenant)
                        .bind(recorded_at);
                }
                for (ty, key, seq, pos) in q.fetch_all(&mut *tx).await? {
                    inserted.insert((ty, key, seq), pos);
                }
            }
            let Some(out) = claim(streams, inserted) else {
                tx.rollback().await?;
                return Err(StoreError::Conflict);
            };
            for (s, stored) in streams.iter().zip(&out) {
                if let (Some(snap), false) = (&s.snapshot, stored.is_empty()) {
                    snapshot_upsert_pg(&mut tx, s.aggregate_type, &s.key, snap).await?;
                }
            }
            tx.commit().await?;
            out
        }
        TypedPool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let mut inserted = HashMap::new();
            let at = time::to_text(recorded_at);
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let sql = sqlite_params(sql(chunk.len()));
                let mut q = sqlx::query_as::<_, (String, String, i64, i64)>(&sql);
                for (aggregate_type, key, e) in chunk {
                    q = q
                        .bind(*aggregate_type)
                        .bind(*key)
                        .bind(e.sequence)
                        .bind(&e.event_type)
                        .bind(&e.event_version)
                        .bind(serde_json::to_string(&e.payload)?)
                        .bind(e.metadata.get())
                        .bind(&e.event_id)
                        .bind(tenant)
                        .bind(&at);
                }
                for (ty, key, seq, pos) in q.fetch_all(&mut *tx).await? {
                    inserted.insert((ty, key, seq), pos);
                }
            }
            let Some(out) = claim(streams, inserted) else {
                tx.rollback().await?;
                return Err(StoreError::Conflict);
            };
            for (s, stored) in streams.iter().zip(&out) {
                if let (Some(snap), false) = (&s.snapshot, stored.is_empty()) {
                    sqlx::query(SNAPSHOT_UPSERT)
                        .bind(s.aggregate_type)
                        .bind(&s.key)
                        .bind(snap.last_sequence)
                        .bind(snap.last_sequence / SNAPSHOT_EVERY as i64)
                        .bind(serde_json::to_string(&snap.payload)?)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            out
        }
    };
    if let Some(max) = out.iter().flatten().max() {
        db.announce(*max);
    }
    for s in streams {
        metrics::counter!("tally_events_appended_total", "aggregate" => s.aggregate_type)
            .increment(s.events.len() as u64);
    }
    Ok(out)
}

/// Per stream the positions of its inserted events (empty when none went
/// in); `None` when some stream only partly went in.
fn claim(
    streams: &[StreamAppend],
    mut inserted: HashMap<(String, String, i64), i64>,
) -> Option<Vec<Vec<i64>>> {
    streams
        .iter()
        .map(|s| {
            let found: Vec<i64> = s
                .events
                .iter()
                .filter_map(|e| {
                    inserted.remove(&(s.aggregate_type.to_string(), s.key.clone(), e.sequence))
                })
                .collect();
            (found.is_empty() || found.len() == s.events.len()).then_some(found)
        })
        .collect()
}

/// Builds the rows for `events` following sequence `after`.
pub fn new_events<A: Aggregate>(
    after: i64,
    events: &[A::Event],
    metadata: &HashMap<String, String>,
) -> Result<Vec<NewEvent>, StoreError> {
    let shared = EventMetadata::new(metadata)?;
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let event_id = uuid::Uuid::now_v7().to_string();
            Ok(NewEvent {
                sequence: after + 1 + i as i64,
                event_type: e.event_type(),
                event_version: e.event_version(),
                payload: serde_json::value::to_raw_value(e)?,
                metadata: shared.with_event_id(&event_id)?,
                event_id,
            })
        })
        .collect()
}

/// Keeps a database error under a failed load a database error, so that an
/// unreachable database answers 503 like everywhere else, not 500.
fn load_error<T: std::error::Error>(e: cqrs_es::AggregateError<T>) -> StoreError {
    use cqrs_es::AggregateError;
    match e {
        AggregateError::DatabaseConnectionError(cause) | AggregateError::UnexpectedError(cause) => {
            match cause.downcast::<sqlx::Error>() {
                Ok(sqlx) => StoreError::Db(DbError::Sqlx(*sqlx)),
                Err(other) => StoreError::Load(other.to_string()),
            }
        }
        other => StoreError::Load(other.to_string()),
    }
}

fn to_persistence(e: StoreError) -> PersistenceError {
    match e {
        StoreError::Conflict => PersistenceError::OptimisticLockError,
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

impl PersistedEventRepository for LogRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match &self.inner {
            Inner::Postgres(r) => r.get_events::<A>(aggregate_id).await,
            Inner::Sqlite(r) => r.get_events::<A>(aggregate_id).await,
        }
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match &self.inner {
            Inner::Postgres(r) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
            Inner::Sqlite(r) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
        }
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        match &self.inner {
            Inner::Postgres(r) => r.get_snapshot::<A>(aggregate_id).await,
            Inner::Sqlite(r) => r.get_snapshot::<A>(aggregate_id).await,
        }
    }

    /// cqrs-es's own commit path, routed through our append (never through the
    /// repositories' `persist`, see the module doc).
    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let metadata: HashMap<String, String> = serde_json::from_value(first.metadata.clone())
            .map_err(|e| PersistenceError::DeserializationError(Box::new(e)))?;
        let tenant = metadata.get("tenant").cloned().unwrap_or_default();
        let recorded_at = metadata
            .get("recorded_at")
            .and_then(|t| time::from_text(t))
            .unwrap_or_else(Utc::now);
        let unknown = |e: serde_json::Error| PersistenceError::UnknownError(Box::new(e));
        let shared = EventMetadata::new(&metadata).map_err(unknown)?;
        let rows = events
            .iter()
            .map(|e| {
                let event_id = uuid::Uuid::now_v7().to_string();
                Ok(NewEvent {
                    sequence: e.sequence as i64,
                    event_type: e.event_type.clone(),
                    event_version: e.event_version.clone(),
                    payload: serde_json::value::to_raw_value(&e.payload).map_err(unknown)?,
                    metadata: shared.with_event_id(&event_id).map_err(unknown)?,
                    event_id,
                })
            })
            .collect::<Result<Vec<NewEvent>, PersistenceError>>()?;
        // The snapshot cqrs-es offers here may stop short of the last event;
        // snapshots are an optimisation, so this path stores none.
        let _ = snapshot_update;
        append(
            &self.db,
            A::TYPE,
            &first.aggregate_id,
            &tenant,
            recorded_at,
            &rows,
            None,
        )
        .await
        .map(|_| ())
        .map_err(to_persistence)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        match &self.inner {
            Inner::Postgres(r) => r.stream_events::<A>(aggregate_id).await,
            Inner::Sqlite(r) => r.stream_events::<A>(aggregate_id).await,
        }
    }

    /// Orders by per-stream sequence, not globally: never build projections on
    /// it (the consumer runtime reads the ordered log instead).
    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        match &self.inner {
            Inner::Postgres(r) => r.stream_all_events::<A>().await,
            Inner::Sqlite(r) => r.stream_all_events::<A>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &RawValue) -> HashMap<String, String> {
        serde_json::from_str(raw.get()).unwrap()
    }

    #[test]
    fn each_event_gets_the_shared_metadata_and_its_own_id() {
        let map = HashMap::from([
            ("tenant".to_string(), "t\"1".to_string()),
            ("actor".to_string(), "key_1".to_string()),
        ]);
        let shared = EventMetadata::new(&map).unwrap();
        for id in ["e1", "e2"] {
            let mut want = map.clone();
            want.insert("event_id".into(), id.into());
            assert_eq!(parsed(&shared.with_event_id(id).unwrap()), want);
        }
    }

    #[test]
    fn an_empty_map_gives_only_the_event_id() {
        let shared = EventMetadata::new(&HashMap::new()).unwrap();
        assert_eq!(
            shared.with_event_id("e").unwrap().get(),
            r#"{"event_id":"e"}"#
        );
    }

    #[test]
    fn an_event_id_in_the_map_is_replaced_not_repeated() {
        let map = HashMap::from([("event_id".to_string(), "old".to_string())]);
        let raw = EventMetadata::new(&map)
            .unwrap()
            .with_event_id("new")
            .unwrap();
        assert_eq!(raw.get(), r#"{"event_id":"new"}"#);
    }
}
