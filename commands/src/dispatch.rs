//! Command dispatch: load the aggregate, let it decide, append its events with
//! their metadata, and retry a bounded number of times when another writer
//! appended to the same stream first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_es::Aggregate;
use rand::Rng;
use tally_aggregates::DomainError;
use tally_projections::db::{Db, DbError};
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
            StoreError::Db(d) if d.is_unavailable() => CommandError::Unavailable(d.to_string()),
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

/// Jittered backoff after a conflict, so that competing writers spread out.
async fn backoff(attempt: u32) {
    let max_ms = 2 + attempt.min(10) * 2;
    let ms = rand::thread_rng().gen_range(0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms as u64)).await;
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

    /// Loads a resource as the write side sees it (not the read model).
    pub async fn load<A: Aggregate>(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(A, i64), CommandError> {
        Ok(self.repo.load::<A>(&stream_key(tenant, id)).await?)
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
        A: Aggregate + Clone,
        F: Fn(&A) -> Result<Vec<A::Event>, DomainError>,
    {
        let key = stream_key(&meta.tenant, id);
        let _turn = self.turn(&key).await;
        for attempt in 0..MAX_ATTEMPTS {
            let (state, version) = self.repo.load::<A>(&key).await?;
            if let Some(expected) = expected_version {
                if expected != version {
                    return Err(CommandError::VersionMismatch {
                        expected,
                        actual: version,
                    });
                }
            }
            let events = match decide(&state) {
                Ok(events) => events,
                Err(e) => {
                    metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "rejected")
                        .increment(1);
                    return Err(e.into());
                }
            };
            if events.is_empty() {
                metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "noop").increment(1);
                let position = self.log.stream_position(A::TYPE, &key).await?;
                return Ok(Executed {
                    id: id.to_string(),
                    state,
                    version,
                    position,
                    appended: 0,
                });
            }
            let p = prepare(state, version, events, &meta.to_map(&self.clock))?;
            match store::append(
                self.db(),
                A::TYPE,
                &key,
                &meta.tenant,
                self.clock.now(),
                &p.rows,
                p.snapshot.as_ref(),
            )
            .await
            {
                Ok(positions) => {
                    metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "ok").increment(1);
                    return Ok(Executed {
                        id: id.to_string(),
                        state: p.state,
                        version: p.version,
                        position: positions.last().copied().unwrap_or_default(),
                        appended: p.appended,
                    });
                }
                Err(StoreError::Conflict) => {
                    metrics::counter!("tally_command_conflicts_total", "aggregate" => A::TYPE)
                        .increment(1);
                    if let Some(expected) = expected_version {
                        // The caller asked for this exact version, and another
                        // writer moved past it.
                        return Err(CommandError::VersionMismatch {
                            expected,
                            actual: expected + 1,
                        });
                    }
                    backoff(attempt).await;
                }
                Err(e) => {
                    metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "error").increment(1);
                    return Err(e.into());
                }
            }
        }
        metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "conflict")
            .increment(1);
        Err(CommandError::Conflict)
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
        A: Aggregate + Clone,
        B: Aggregate + Clone,
        F: Fn(&A, &B) -> Result<(Vec<A::Event>, Vec<B::Event>), DomainError>,
    {
        let key_a = stream_key(&meta.tenant, id_a);
        let key_b = stream_key(&meta.tenant, id_b);
        // Both turns, in key order so that two pairs never wait on each other.
        let _first = self.turn(key_a.as_str().min(&key_b)).await;
        let _second = if key_a != key_b {
            Some(self.turn(key_a.as_str().max(&key_b)).await)
        } else {
            None
        };
        for attempt in 0..MAX_ATTEMPTS {
            let ((a, version_a), (b, version_b)) =
                tokio::try_join!(self.repo.load::<A>(&key_a), self.repo.load::<B>(&key_b))?;
            if let Some(expected) = expected_version {
                if expected != version_a {
                    return Err(CommandError::VersionMismatch {
                        expected,
                        actual: version_a,
                    });
                }
            }
            let (events_a, events_b) = match decide(&a, &b) {
                Ok(out) => out,
                Err(e) => {
                    metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "rejected")
                        .increment(1);
                    return Err(e.into());
                }
            };
            if events_a.is_empty() {
                let position = self.log.stream_position(A::TYPE, &key_a).await?;
                return Ok((
                    Executed {
                        id: id_a.to_string(),
                        state: a,
                        version: version_a,
                        position,
                        appended: 0,
                    },
                    Executed {
                        id: id_b.to_string(),
                        state: b,
                        version: version_b,
                        position,
                        appended: 0,
                    },
                ));
            }
            let metadata = meta.to_map(&self.clock);
            let pa = prepare(a, version_a, events_a, &metadata)?;
            let pb = prepare(b, version_b, events_b, &metadata)?;
            let streams = [
                store::StreamAppend {
                    aggregate_type: A::TYPE,
                    key: key_a.clone(),
                    events: pa.rows.clone(),
                    snapshot: pa.snapshot.clone(),
                },
                store::StreamAppend {
                    aggregate_type: B::TYPE,
                    key: key_b.clone(),
                    events: pb.rows.clone(),
                    snapshot: pb.snapshot.clone(),
                },
            ];
            match store::append_many(self.db(), &meta.tenant, self.clock.now(), &streams).await {
                Ok(positions) => {
                    metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "ok").increment(1);
                    return Ok((
                        Executed {
                            id: id_a.to_string(),
                            state: pa.state,
                            version: pa.version,
                            position: positions[0],
                            appended: pa.appended,
                        },
                        Executed {
                            id: id_b.to_string(),
                            state: pb.state,
                            version: pb.version,
                            position: positions[1],
                            appended: pb.appended,
                        },
                    ));
                }
                Err(StoreError::Conflict) => {
                    metrics::counter!("tally_command_conflicts_total", "aggregate" => A::TYPE)
                        .increment(1);
                    backoff(attempt).await;
                }
                Err(e) => {
                    metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "error").increment(1);
                    return Err(e.into());
                }
            }
        }
        metrics::counter!("tally_commands_total", "aggregate" => A::TYPE, "outcome" => "conflict")
            .increment(1);
        Err(CommandError::Conflict)
    }
}
