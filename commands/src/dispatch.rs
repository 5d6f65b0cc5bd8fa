//! Command dispatch: load the aggregate, let it decide, append its events with
//! their metadata, and retry a bounded number of times when another writer
//! appended to the same stream first.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_es::Aggregate;
use futures::StreamExt;
use rand::Rng;
use tally_aggregates::DomainError;
use tally_projections::db::{Db, DbError};
use tally_projections::log::MAX_READ_LIMIT;
use tally_projections::{stream_key, time, EventLog};

use crate::clock::Clock;
use crate::store::{self, LogRepository, NewSnapshot, StoreError, SNAPSHOT_EVERY};

/// Attempts per command before giving up with `concurrent_modification`.
pub const MAX_ATTEMPTS: u32 = 30;

/// Who asked, and why: stored as metadata on every event.
#[derive(Debug, Clone, Default)]
pub struct CommandMeta {
    pub tenant: String,
    /// An API key id, or `system:<policy>`.
    pub actor: String,
    pub request_id: String,
    pub correlation_id: String,
    /// The event that caused this command (policy-issued commands).
    pub causation_id: Option<String>,
    pub idempotency_key: Option<String>,
}

impl CommandMeta {
    pub fn to_map(&self, clock: &Clock) -> HashMap<String, String> {
        let mut m = HashMap::from([
            ("tenant".to_string(), self.tenant.clone()),
            ("actor".to_string(), self.actor.clone()),
            ("request_id".to_string(), self.request_id.clone()),
            ("correlation_id".to_string(), self.correlation_id.clone()),
            ("recorded_at".to_string(), time::to_text(clock.now())),
        ]);
        if let Some(c) = &self.causation_id {
            m.insert("causation_id".into(), c.clone());
        }
        if let Some(k) = &self.idempotency_key {
            m.insert("idempotency_key".into(), k.clone());
        }
        m
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("expected version {expected}, the resource is at {actual}")]
    VersionMismatch { expected: i64, actual: i64 },
    #[error("the resource kept changing under the command; retries exhausted")]
    Conflict,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Store(String),
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => CommandError::Conflict,
            e if e.is_unavailable() => CommandError::Unavailable(e.to_string()),
            other => CommandError::Store(other.to_string()),
        }
    }
}

impl From<DbError> for CommandError {
    fn from(e: DbError) -> Self {
        CommandError::from(StoreError::Db(e))
    }
}

/// The result of a command: the resource after it, its version (stream
/// sequence) and the log position of its last event.
#[derive(Debug, Clone)]
pub struct Executed<A> {
    pub id: String,
    pub state: A,
    pub version: i64,
    pub position: i64,
    pub appended: usize,
}

/// A decided command's rows, ready to append.
struct Prepared<A> {
    state: A,
    version: i64,
    rows: Vec<store::NewEvent>,
    snapshot: Option<NewSnapshot>,
    appended: usize,
}

/// Applies `events` to `state` (at `version`) and builds their rows, with a
/// snapshot when the stream crosses a multiple of [`SNAPSHOT_EVERY`].
fn prepare<A: Aggregate>(
    mut state: A,
    version: i64,
    events: Vec<A::Event>,
    metadata: &HashMap<String, String>,
) -> Result<Prepared<A>, CommandError> {
    let rows = store::new_events::<A>(version, &events, metadata)?;
    let appended = events.len();
    for e in events {
        state.apply(e);
    }
    let new_version = version + appended as i64;
    let crosses = (version as usize / SNAPSHOT_EVERY) != (new_version as usize / SNAPSHOT_EVERY);
    let snapshot = if crosses {
        Some(NewSnapshot {
            last_sequence: new_version,
            payload: serde_json::to_value(&state).map_err(StoreError::from)?,
        })
    } else {
        None
    };
    Ok(Prepared {
        state,
        version: new_version,
        rows,
        snapshot,
        appended,
    })
}

impl<A> Prepared<A> {
    /// What the command did once its rows are stored, the last at `position`.
    fn executed(self, id: &str, position: i64) -> Executed<A> {
        Executed {
            id: id.to_string(),
            state: self.state,
            version: self.version,
            position,
            appended: self.appended,
        }
    }
}

impl<A> Executed<A> {
    /// A no-op command: the resource as it is.
    fn unchanged(id: &str, state: A, version: i64, position: i64) -> Self {
        Executed {
            id: id.to_string(),
            state,
            version,
            position,
            appended: 0,
        }
    }
}

/// If-Match: the stream must be at `expected` when one is given.
fn check_version(expected: Option<i64>, actual: i64) -> Result<(), CommandError> {
    match expected {
        Some(expected) if expected != actual => {
            Err(CommandError::VersionMismatch { expected, actual })
        }
        _ => Ok(()),
    }
}

/// Counts a command that went through: `ok`, or `noop` when it appended nothing.
fn count_outcome(aggregate: &'static str, appended: usize) {
    let outcome = if appended == 0 { "noop" } else { "ok" };
    metrics::counter!("tally_commands_total", "aggregate" => aggregate, "outcome" => outcome)
        .increment(1);
}

/// Jittered backoff after a conflict, so that competing writers spread out.
async fn backoff(attempt: u32) {
    let max_ms = 2 + attempt.min(10) * 2;
    let ms = rand::thread_rng().gen_range(0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms as u64)).await;
}

/// Streams whose state the cache keeps at most.
pub const STATE_CACHE_STREAMS: usize = 10_000;

/// The aggregate cache: the state and version of streams this process wrote
/// or loaded, so that the next command on a stream costs no query. An entry
/// is only ever a guess: the append's sequence check refuses one another
/// process made stale (a conflict: the command reads the stream's newer
/// events, see [`Dispatcher::catch_up`], and decides again), and
/// a rejection or no-op decided on a cached state is confirmed against the
/// stream's head before it is answered.
#[derive(Clone, Default)]
struct StateCache(Arc<Mutex<HashMap<String, CachedState>>>);

/// A cached aggregate (an `A`) and its version.
type CachedState = (Arc<dyn Any + Send + Sync>, i64);

impl StateCache {
    fn get<A: Aggregate + 'static>(&self, key: &str) -> Option<(Arc<A>, i64)> {
        let map = self.0.lock().expect("state cache");
        let (state, version) = map.get(key)?;
        Some((state.clone().downcast::<A>().ok()?, *version))
    }

    fn put<A: Aggregate + 'static>(&self, key: &str, state: Arc<A>, version: i64) {
        let mut map = self.0.lock().expect("state cache");
        if map.len() >= STATE_CACHE_STREAMS && !map.contains_key(key) {
            // Any entry will do: a miss only costs the load it saves.
            if let Some(victim) = map.keys().next().cloned() {
                map.remove(&victim);
            }
        }
        map.insert(key.to_string(), (state, version));
    }

    fn forget(&self, key: &str) {
        self.0.lock().expect("state cache").remove(key);
    }
}

/// Executes commands. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    repo: LogRepository,
    log: EventLog,
    clock: Clock,
    /// The streams some command of this process is writing, each with the
    /// queue of the others waiting for their turn (see [`Dispatcher::turn`]).
    turns: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    cache: StateCache,
}

/// One command's turn on a stream; the stream leaves the map with its last
/// writer.
struct Turn {
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    turns: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut turns = self.turns.lock().expect("turns poisoned");
        self.guard.take();
        if turns
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            turns.remove(&self.key);
        }
    }
}

impl Dispatcher {
    pub fn new(db: Db, clock: Clock) -> Self {
        Self {
            repo: LogRepository::new(db.clone()),
            log: EventLog::new(db),
            clock,
            turns: Arc::default(),
            cache: StateCache::default(),
        }
    }

    /// Waits for this process's turn on stream `key`. Writers of one stream
    /// queue here instead of racing on its sequence in the database, where
    /// each lost race costs a transaction, a connection held while waiting
    /// on the winner's commit, and a retry; with many writers on one stream
    /// that convoy exhausted the connection pool. Other processes still meet
    /// on the stream's sequence, so correctness never depends on the turn.
    async fn turn(&self, key: &str) -> Turn {
        let queue = {
            let mut turns = self.turns.lock().expect("turns poisoned");
            turns.entry(key.to_string()).or_default().clone()
        };
        Turn {
            key: key.to_string(),
            guard: Some(queue.lock_owned().await),
            turns: self.turns.clone(),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn db(&self) -> &Db {
        self.repo.db()
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Appends streams that must be new, leaving alone the ones that exist
    /// (see [`LogRepository::append_new`]): the usage batch path.
    pub async fn append_new(
        &self,
        tenant: &str,
        recorded_at: chrono::DateTime<chrono::Utc>,
        streams: Vec<store::StreamAppend>,
    ) -> Result<Vec<Option<i64>>, StoreError> {
        for s in &streams {
            self.cache.forget(&s.key);
        }
        self.repo.append_new(tenant, recorded_at, streams).await
    }

    /// Appends to many streams at once, all or nothing (see
    /// [`LogRepository::append_many`]); for the paths that decide outside
    /// [`Dispatcher::execute`]: usage batches, billing usage.
    pub async fn append_many(
        &self,
        tenant: &str,
        recorded_at: chrono::DateTime<chrono::Utc>,
        streams: Vec<store::StreamAppend>,
    ) -> Result<Vec<i64>, StoreError> {
        for s in &streams {
            self.cache.forget(&s.key);
        }
        self.repo.append_many(tenant, recorded_at, streams).await
    }

    /// Loads a resource as the write side sees it (not the read model).
    pub async fn load<A: Aggregate>(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(A, i64), CommandError> {
        Ok(self.repo.load::<A>(&stream_key(tenant, id)).await?)
    }

    /// The current state of several resources, for decisions made outside
    /// [`Dispatcher::execute`] (a usage batch's subscriptions): one query
    /// reads every stream's sequence, cached states at that sequence are
    /// taken as they are, the others are loaded (a few at a time) and cached.
    pub async fn load_current<A: Aggregate + 'static>(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Arc<A>>, CommandError> {
        let keys: Vec<String> = ids.iter().map(|id| stream_key(tenant, id)).collect();
        let heads = self.log.stream_heads(A::TYPE, &keys).await?;
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        for (id, key) in ids.iter().zip(&keys) {
            let head = heads.get(key).copied().unwrap_or(0);
            match self.cache.get::<A>(key) {
                Some((state, version)) if version == head => {
                    out.insert(id.clone(), state);
                }
                _ => missing.push((id.clone(), key.clone())),
            }
        }
        let loads = missing.into_iter().map(|(id, key)| async move {
            let loaded = self.repo.load::<A>(&key).await;
            (id, key, loaded)
        });
        let loaded: Vec<_> = futures::stream::iter(loads)
            .buffer_unordered(8)
            .collect()
            .await;
        for (id, key, loaded) in loaded {
            let (state, version) = loaded?;
            let state = Arc::new(state);
            self.cache.put(&key, state.clone(), version);
            out.insert(id, state);
        }
        Ok(out)
    }

    /// Runs `decide` against the current state of resource `id` and appends
    /// the events it returns. `expected_version` (If-Match) must equal the
    /// stream's sequence. No events means nothing changed (a no-op command).
    pub async fn execute<A, F>(
        &self,
        meta: &CommandMeta,
        id: &str,
        expected_version: Option<i64>,
        decide: F,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Aggregate + Clone + 'static,
        F: Fn(&A) -> Result<Vec<A::Event>, DomainError>,
    {
        let key = stream_key(&meta.tenant, id);
        let _turn = self.turn(&key).await;
        let out = self
            .retrying(A::TYPE, || {
                self.execute_once(meta, id, &key, expected_version, &decide)
            })
            .await?;
        count_outcome(A::TYPE, out.appended);
        Ok(out)
    }

    /// One try of [`Dispatcher::execute`]; `Conflict` when another writer
    /// appended first. Starts from the cached state when there is one.
    async fn execute_once<A, F>(
        &self,
        meta: &CommandMeta,
        id: &str,
        key: &str,
        expected_version: Option<i64>,
        decide: &F,
    ) -> Result<Executed<A>, CommandError>
    where
        A: Aggregate + Clone + 'static,
        F: Fn(&A) -> Result<Vec<A::Event>, DomainError>,
    {
        let mut cached = self.cache.get::<A>(key);
        // A stale entry costs one more round; a stream that keeps moving
        // under us goes back to `retrying`'s backoff.
        for _ in 0..3 {
            let hit = cached.is_some();
            let (state, version) = match cached.take() {
                Some(entry) => entry,
                None => {
                    let (state, version) = self.repo.load::<A>(key).await?;
                    (Arc::new(state), version)
                }
            };
            let decided = check_version(expected_version, version)
                .and_then(|()| decide(&state).map_err(CommandError::from));
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                // A no-op or a refusal: it stands if the stream is where the
                // state says (a cached state may be stale).
                outcome => {
                    if hit || outcome.is_ok() {
                        let (sequence, position) = self.log.stream_head(A::TYPE, key).await?;
                        if sequence != version {
                            self.cache.forget(key);
                            continue;
                        }
                        if outcome.is_ok() {
                            self.cache.put(key, state.clone(), version);
                            return Ok(Executed::unchanged(
                                id,
                                (*state).clone(),
                                version,
                                position,
                            ));
                        }
                    }
                    return Err(outcome.err().unwrap_or(CommandError::Conflict));
                }
            };
            let mut p = prepare((*state).clone(), version, events, &meta.to_map(&self.clock))?;
            let appended = self
                .repo
                .append(
                    A::TYPE,
                    key,
                    &meta.tenant,
                    self.clock.now(),
                    std::mem::take(&mut p.rows),
                    p.snapshot.take(),
                )
                .await;
            match appended {
                Ok(positions) => {
                    self.cache.put(key, Arc::new(p.state.clone()), p.version);
                    return Ok(p.executed(id, positions.last().copied().unwrap_or_default()));
                }
                // The cached state was stale (another process moved the
                // stream): catch up with the stream and decide again.
                Err(StoreError::Conflict) if hit => {
                    cached = Some(self.catch_up::<A>(key, state, version).await?);
                }
                Err(e) => {
                    // Whether an unanswered append committed is unknown.
                    self.cache.forget(key);
                    return Err(e.into());
                }
            }
        }
        Err(CommandError::Conflict)
    }

    /// A cached state brought up to the stream's head: the events after
    /// `version` read (one indexed query, where a reload reads the snapshot
    /// and the events after it) and applied. A stream too far ahead, or an
    /// event this process cannot read, is loaded whole. Checking every
    /// cached state this way before deciding (one read per command while
    /// another process writes) was measured: no faster than losing the
    /// append and catching up then (docs/benchmarks.md, issue 14.6).
    async fn catch_up<A: Aggregate + Clone + 'static>(
        &self,
        key: &str,
        state: Arc<A>,
        version: i64,
    ) -> Result<(Arc<A>, i64), CommandError> {
        let newer = self
            .log
            .read_stream(A::TYPE, key, version, MAX_READ_LIMIT)
            .await?;
        if newer.is_empty() {
            return Ok((state, version));
        }
        let mut caught_up = Some(((*state).clone(), version));
        if newer.len() as i64 == MAX_READ_LIMIT {
            caught_up = None;
        }
        for event in &newer {
            let Some((state, version)) = caught_up.as_mut() else {
                break;
            };
            match event.decode::<A::Event>() {
                Ok(e) if event.sequence == *version + 1 => {
                    state.apply(e);
                    *version = event.sequence;
                }
                _ => caught_up = None,
            }
        }
        let (state, version) = match caught_up {
            Some((state, version)) => (Arc::new(state), version),
            None => {
                let (state, version) = self.repo.load::<A>(key).await?;
                (Arc::new(state), version)
            }
        };
        self.cache.put(key, state.clone(), version);
        Ok((state, version))
    }

    /// Like [`Dispatcher::execute`] for one command that changes two streams
    /// at once (an invoice and the tenant's numbering): `decide` sees both
    /// states, and both streams' events are appended in one transaction, or
    /// neither. `expected_version` applies to the first resource. When
    /// `decide` returns nothing for the first stream, nothing is appended.
    pub async fn execute_pair<A, B, F>(
        &self,
        meta: &CommandMeta,
        id_a: &str,
        id_b: &str,
        expected_version: Option<i64>,
        decide: F,
    ) -> Result<(Executed<A>, Executed<B>), CommandError>
    where
        A: Aggregate + Clone + 'static,
        B: Aggregate + Clone + 'static,
        F: Fn(&A, &B) -> Result<(Vec<A::Event>, Vec<B::Event>), DomainError>,
    {
        let keys = (
            stream_key(&meta.tenant, id_a),
            stream_key(&meta.tenant, id_b),
        );
        // Both turns, in key order so that two pairs never wait on each other.
        let _first = self.turn(keys.0.as_str().min(&keys.1)).await;
        let _second = if keys.0 != keys.1 {
            Some(self.turn(keys.0.as_str().max(&keys.1)).await)
        } else {
            None
        };
        let out = self
            .retrying(A::TYPE, || {
                self.execute_pair_once(meta, (id_a, id_b), &keys, expected_version, &decide)
            })
            .await?;
        count_outcome(A::TYPE, out.0.appended);
        Ok(out)
    }

    /// One try of [`Dispatcher::execute_pair`].
    async fn execute_pair_once<A, B, F>(
        &self,
        meta: &CommandMeta,
        (id_a, id_b): (&str, &str),
        (key_a, key_b): &(String, String),
        expected_version: Option<i64>,
        decide: &F,
    ) -> Result<(Executed<A>, Executed<B>), CommandError>
    where
        A: Aggregate + Clone + 'static,
        B: Aggregate + Clone + 'static,
        F: Fn(&A, &B) -> Result<(Vec<A::Event>, Vec<B::Event>), DomainError>,
    {
        let ((a, version_a), (b, version_b)) =
            tokio::try_join!(self.repo.load::<A>(key_a), self.repo.load::<B>(key_b))?;
        check_version(expected_version, version_a)?;
        let (events_a, events_b) = decide(&a, &b)?;
        if events_a.is_empty() {
            let (_, position) = self.log.stream_head(A::TYPE, key_a).await?;
            return Ok((
                Executed::unchanged(id_a, a, version_a, position),
                Executed::unchanged(id_b, b, version_b, position),
            ));
        }
        let metadata = meta.to_map(&self.clock);
        let pa = prepare(a, version_a, events_a, &metadata)?;
        let pb = prepare(b, version_b, events_b, &metadata)?;
        let mut pa = pa;
        let mut pb = pb;
        let streams = vec![
            store::StreamAppend {
                aggregate_type: A::TYPE,
                key: key_a.clone(),
                events: std::mem::take(&mut pa.rows),
                snapshot: pa.snapshot.take(),
            },
            store::StreamAppend {
                aggregate_type: B::TYPE,
                key: key_b.clone(),
                events: std::mem::take(&mut pb.rows),
                snapshot: pb.snapshot.take(),
            },
        ];
        let appended = self
            .repo
            .append_many(&meta.tenant, self.clock.now(), streams)
            .await;
        let positions = match appended {
            Ok(positions) => positions,
            Err(e) => {
                self.cache.forget(key_a);
                self.cache.forget(key_b);
                return Err(e.into());
            }
        };
        self.cache
            .put(key_a, Arc::new(pa.state.clone()), pa.version);
        self.cache
            .put(key_b, Arc::new(pb.state.clone()), pb.version);
        Ok((
            pa.executed(id_a, positions[0]),
            pb.executed(id_b, positions[1]),
        ))
    }

    /// Runs `attempt` until it does not lose the optimistic race on its
    /// streams (`Conflict`), backing off between tries, at most
    /// [`MAX_ATTEMPTS`] times. A lost race is retried even under If-Match:
    /// the next try reloads and answers the version mismatch itself.
    async fn retrying<T, Fut>(
        &self,
        aggregate: &'static str,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, CommandError>
    where
        Fut: std::future::Future<Output = Result<T, CommandError>>,
    {
        for n in 0..MAX_ATTEMPTS {
            match attempt().await {
                Err(CommandError::Conflict) => {
                    metrics::counter!("tally_command_conflicts_total", "aggregate" => aggregate)
                        .increment(1);
                    backoff(n).await;
                }
                Err(e) => {
                    let outcome = match e {
                        CommandError::Domain(_) => "rejected",
                        CommandError::VersionMismatch { .. } => "version_mismatch",
                        _ => "error",
                    };
                    metrics::counter!("tally_commands_total", "aggregate" => aggregate, "outcome" => outcome)
                        .increment(1);
                    return Err(e);
                }
                ok => return ok,
            }
        }
        metrics::counter!("tally_commands_total", "aggregate" => aggregate, "outcome" => "conflict")
            .increment(1);
        Err(CommandError::Conflict)
    }
}
