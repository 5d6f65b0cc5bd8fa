//! The rebuild's fast path for read models that fold streams (ADR 0014):
//! instead of a transaction per batch that reads each stream's row and
//! writes it back, a rebuild folds many batches in memory with the
//! projector's own fold and writes each stream's row once, in bulk (`COPY`
//! on PostgreSQL, multi-row inserts on SQLite), with the shadow checkpoint
//! in the same transaction. Memory is bounded: past [`HELD_ROWS`] streams
//! held, what is held is written (a *flush*) and forgotten; so it is at
//! least every [`FLUSH_EVERY`] and after the first batch, so that a killed
//! rebuild resumes from a recent checkpoint. A flush is written in the
//! background while the rebuild folds the next batches; the fold's next
//! flush waits for it (`rebuild.rs`).
//!
//! A stream met again after a flush (its first event here has a sequence
//! above 1) has a row already: its events wait until the next flush, which
//! reads those rows once, folds the events onto them and writes them back
//! as upserts. A stream whose first event is sequence 1 is new, so its row
//! is written without a read. That holds after a resumed rebuild too: a
//! flush commits rows and checkpoint together, so no event after the
//! checkpoint is in the shadow tables. Balances and inbox rows are keyed
//! otherwise; [`BalancesBulk`] and [`InboxBulk`] say how they read back
//! what an earlier flush wrote.
//!
//! The rows are built by the same functions the live projectors use
//! (`state::row_values`, `usage::record_values`, `balances::posted` and
//! `balance_row`, `inbox::effect`, `new_item` and `item_row`), from states
//! folded by the same fold, so a rebuilt table equals the incrementally
//! built one (`tests/tests/rebuild.rs`).

use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, PgConnection, Row};

use tally_aggregates::usage::{total_delta, UsageEvent, UsageRecord};
use tally_aggregates::AggregateKind;
use tally_aggregates::Currency;

use crate::balances::{self, Posted};
use crate::db::{Backend, Db, TypedPool};
use crate::inbox::{self, Effect};
use crate::log::StoredEvent;
use crate::runtime::ProjectionError;
use crate::state::{load_rows, row_columns, row_values, ProjectedState};
use crate::tables::Tables;
use crate::{time, usage};

/// Streams a bulk fold holds before the rebuild writes them out. A flush
/// is written while the fold goes on, so up to twice this is in memory
/// (peak RSS ~280 MB at 50,000, docs/benchmarks.md).
pub const HELD_ROWS: usize = 40_000;
/// A bulk fold writes at least this often (and after its first batch), so
/// a killed rebuild loses at most this much work.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// When a rebuild writes what a bulk fold holds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Past this many streams held.
    pub held_rows: usize,
    /// At least this often, and after the first batch.
    pub flush_every: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            held_rows: HELD_ROWS,
            flush_every: FLUSH_EVERY,
        }
    }
}

/// Streams a bulk fold holds at most on SQLite: a flush holds its one
/// writer lock, which the other projections' batches wait for (10 s at
/// most), so flushes stay short there.
pub const SQLITE_HELD_ROWS: usize = 5_000;

impl Limits {
    /// The defaults for `backend`.
    pub fn for_backend(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::default(),
            Backend::Sqlite => Self {
                held_rows: SQLITE_HELD_ROWS,
                ..Self::default()
            },
        }
    }
}

/// One value of a row written in bulk.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Null,
}

/// Rows of one table, written in one go.
#[derive(Debug)]
pub struct Rows {
    /// The live name; the rebuild writes its shadow.
    pub table: &'static str,
    pub columns: Vec<&'static str>,
    /// The primary key's columns.
    pub key: &'static [&'static str],
    /// True when none of these rows can exist yet (plain inserts); false
    /// for upserts.
    pub fresh: bool,
    pub rows: Vec<Vec<Cell>>,
}

/// A projector's fold held in memory by a rebuild.
#[async_trait]
pub trait BulkFold: Send {
    /// Folds one event the projector handles, in log order.
    fn fold(&mut self, event: &StoredEvent) -> Result<(), ProjectionError>;
    /// Streams (rows) held.
    fn held(&self) -> usize;
    /// Turns what is held into rows, reading from `tables` the rows that
    /// earlier flushes wrote for streams met again, and forgets it.
    async fn drain(&mut self, db: &Db, tables: Tables) -> Result<Vec<Rows>, ProjectionError>;
}

/// One stream held: its state once its starting row is known, and the
/// events waiting for that row.
struct Held<A, E> {
    state: Option<A>,
    version: i64,
    waiting: Vec<(i64, E, i64)>,
}

/// The streams of one aggregate type, folded in memory.
struct Streams<A, E> {
    aggregate: AggregateKind,
    held: HashMap<(String, String), Held<A, E>>,
}

/// A folded stream ready to be written.
struct Out<A> {
    tenant: String,
    id: String,
    state: A,
    version: i64,
    /// Whether its row may exist (it was read, or was meant to be).
    stored: bool,
}

impl<A: Default + DeserializeOwned + Send, E: Send> Streams<A, E> {
    fn new(aggregate: AggregateKind) -> Self {
        Self {
            aggregate,
            held: HashMap::new(),
        }
    }

    /// Folds `decoded` (the payload of `event`), or keeps it until its
    /// stream's row is read.
    fn fold(&mut self, event: &StoredEvent, decoded: E, fold: impl FnOnce(&mut A, &E)) {
        let key = (event.tenant.clone(), event.resource_id().to_string());
        let held = self.held.entry(key).or_insert_with(|| Held {
            state: (event.sequence == 1).then(A::default),
            version: 0,
            waiting: Vec::new(),
        });
        match &mut held.state {
            Some(state) if event.sequence > held.version => {
                fold(state, &decoded);
                held.version = event.sequence;
            }
            // Already applied: a projector must be idempotent.
            Some(_) => {}
            None => held.waiting.push((event.sequence, decoded, event.position)),
        }
    }

    /// Every stream held, folded to its last event: streams met again
    /// after a flush read their row from `table` first (one query per
    /// tenant and 500 streams).
    async fn drain(
        &mut self,
        db: &Db,
        table: &str,
        mut fold: impl FnMut(&mut A, &E),
    ) -> Result<Vec<Out<A>>, ProjectionError> {
        let held = std::mem::take(&mut self.held);
        let keys: Vec<(&str, &str)> = held
            .iter()
            .filter(|(_, h)| h.state.is_none())
            .map(|((t, i), _)| (t.as_str(), i.as_str()))
            .collect();
        let mut rows = if keys.is_empty() {
            HashMap::new()
        } else {
            let mut conn = db.any.acquire().await?;
            let conn: &mut AnyConnection = &mut conn;
            load_rows(conn, table, &keys).await?
        };
        let mut out = Vec::with_capacity(held.len());
        for ((tenant, id), h) in held {
            let stored = h.state.is_none();
            let (state, version) = match h.state {
                Some(state) => (state, h.version),
                None => {
                    let (mut state, mut version) = match rows.remove(&(tenant.clone(), id.clone()))
                    {
                        Some((body, version)) => (
                            serde_json::from_str::<A>(&body).map_err(|e| {
                                ProjectionError::Decode {
                                    position: h.waiting.first().map(|w| w.2).unwrap_or_default(),
                                    message: e.to_string(),
                                }
                            })?,
                            version,
                        ),
                        None => (A::default(), 0),
                    };
                    for (sequence, event, _) in &h.waiting {
                        if *sequence > version {
                            fold(&mut state, event);
                            version = *sequence;
                        }
                    }
                    (state, version)
                }
            };
            out.push(Out {
                tenant,
                id,
                state,
                version,
                stored,
            });
        }
        Ok(out)
    }
}

/// A statement through the `Any` driver.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds one cell (the live projectors bind their rows' cells with it too).
pub(crate) fn bind<'q>(q: AnyQuery<'q>, cell: &'q Cell) -> AnyQuery<'q> {
    match cell {
        Cell::Text(s) => q.bind(s.as_str()),
        Cell::Int(n) => q.bind(*n),
        Cell::Null => q.bind(Option::<String>::None),
    }
}

/// Rows as cells.
type Cells = Vec<Vec<Cell>>;

/// Splits rows into those that are new and those that may exist.
fn split<A>(
    out: Vec<Out<A>>,
    mut row: impl FnMut(Out<A>) -> Result<Vec<Cell>, ProjectionError>,
) -> Result<(Cells, Cells), ProjectionError> {
    let (mut fresh, mut stored) = (Vec::new(), Vec::new());
    for o in out {
        if o.stored {
            stored.push(row(o)?);
        } else {
            fresh.push(row(o)?);
        }
    }
    Ok((fresh, stored))
}

fn both(
    table: &'static str,
    columns: Vec<&'static str>,
    key: &'static [&'static str],
    (fresh, stored): (Cells, Cells),
) -> Vec<Rows> {
    let mut out = Vec::new();
    if !fresh.is_empty() {
        out.push(Rows {
            table,
            columns: columns.clone(),
            key,
            fresh: true,
            rows: fresh,
        });
    }
    if !stored.is_empty() {
        out.push(Rows {
            table,
            columns,
            key,
            fresh: false,
            rows: stored,
        });
    }
    out
}

const TENANT_ID: &[&str] = &["tenant", "id"];

/// The bulk fold of a folded-state read model (`StateProjector`).
pub(crate) struct StateBulk<S: ProjectedState> {
    streams: Streams<S, S::Event>,
    state: PhantomData<fn() -> S>,
}

impl<S: ProjectedState> StateBulk<S> {
    pub(crate) fn new() -> Self {
        Self {
            streams: Streams::new(S::AGGREGATE),
            state: PhantomData,
        }
    }
}

#[async_trait]
impl<S: ProjectedState> BulkFold for StateBulk<S> {
    fn fold(&mut self, event: &StoredEvent) -> Result<(), ProjectionError> {
        if !event.is(self.streams.aggregate) {
            return Ok(());
        }
        let decoded: S::Event = event
            .decode()
            .map_err(|e| ProjectionError::decode(event, e))?;
        self.streams.fold(event, decoded, |s, e| s.fold(e));
        Ok(())
    }

    fn held(&self) -> usize {
        self.streams.held.len()
    }

    async fn drain(&mut self, db: &Db, tables: Tables) -> Result<Vec<Rows>, ProjectionError> {
        let out = self
            .streams
            .drain(db, &tables.name(S::TABLE), |s, e| s.fold(e))
            .await?;
        let rows = split(out, |o| {
            let mut cells: Vec<Cell> = row_values(&o.tenant, &o.id, &o.state)?
                .into_iter()
                .map(Cell::Text)
                .collect();
            cells.push(Cell::Int(o.version));
            Ok(cells)
        })?;
        Ok(both(S::TABLE, row_columns::<S>(), TENANT_ID, rows))
    }
}

/// The bulk fold of the usage read model: records folded like the live
/// projector's, window totals summed in memory and added to the stored
/// ones at each flush.
pub(crate) struct UsageBulk {
    records: Streams<UsageRecord, UsageEvent>,
    /// Key → (window end, quantity, records) added since the last flush.
    totals: usage::Totals,
}

impl UsageBulk {
    pub(crate) fn new() -> Self {
        Self {
            records: Streams::new(AggregateKind::UsageRecord),
            totals: HashMap::new(),
        }
    }
}

#[async_trait]
impl BulkFold for UsageBulk {
    fn fold(&mut self, event: &StoredEvent) -> Result<(), ProjectionError> {
        if !event.is(AggregateKind::UsageRecord) {
            return Ok(());
        }
        // The totals change with the event, whatever the record's state.
        let decoded: UsageEvent = event
            .decode()
            .map_err(|e| ProjectionError::decode(event, e))?;
        if let Some(d) = total_delta(&decoded) {
            let key = (
                event.tenant.clone(),
                d.subscription_id,
                d.meter,
                time::to_text(d.window.start),
            );
            let sum = self
                .totals
                .entry(key)
                .or_insert_with(|| (d.window.end.map(time::to_text), Decimal::ZERO, 0));
            sum.1 += d.quantity;
            sum.2 += d.records;
        }
        self.records.fold(event, decoded, |s, e| s.evolve(e));
        Ok(())
    }

    fn held(&self) -> usize {
        self.records.held.len() + self.totals.len()
    }

    async fn drain(&mut self, db: &Db, tables: Tables) -> Result<Vec<Rows>, ProjectionError> {
        let out = self
            .records
            .drain(db, &tables.name("rm_usage_records"), |s, e| s.evolve(e))
            .await?;
        let rows = split(out, |o| {
            let values = usage::record_values(o.tenant, o.id, &o.state, o.version)?;
            let [a, b, c, d, e, f, g, h, _] = values;
            Ok(vec![
                Cell::Text(a),
                Cell::Text(b),
                Cell::Text(c),
                Cell::Text(d),
                Cell::Text(e),
                Cell::Text(f),
                Cell::Text(g),
                Cell::Text(h),
                Cell::Int(o.version),
            ])
        })?;
        let mut written = both(
            "rm_usage_records",
            usage::RECORD_COLUMNS.to_vec(),
            TENANT_ID,
            rows,
        );
        // Totals: the stored ones of every subscription touched, read once.
        let totals = std::mem::take(&mut self.totals);
        let stored = load_totals(db, &tables.name("rm_usage_totals"), &totals).await?;
        let mut fresh = Vec::new();
        let mut again = Vec::new();
        for (key, (end, quantity, count)) in totals {
            let (tenant, subscription_id, meter, start) = key;
            let found = stored.get(&(
                tenant.clone(),
                subscription_id.clone(),
                meter.clone(),
                start.clone(),
            ));
            let (end, total, records) = match found {
                Some((end, total, records)) => (end.clone(), *total, *records),
                None => (end, Decimal::ZERO, 0),
            };
            let row = vec![
                Cell::Text(tenant),
                Cell::Text(subscription_id),
                Cell::Text(meter),
                Cell::Text(start),
                end.map(Cell::Text).unwrap_or(Cell::Null),
                Cell::Text((total + quantity).normalize().to_string()),
                Cell::Int(records + count),
            ];
            if found.is_some() {
                again.push(row);
            } else {
                fresh.push(row);
            }
        }
        written.extend(both(
            "rm_usage_totals",
            vec![
                "tenant",
                "subscription_id",
                "meter",
                "window_start",
                "window_end",
                "total",
                "record_count",
            ],
            &["tenant", "subscription_id", "meter", "window_start"],
            (fresh, again),
        ));
        Ok(written)
    }
}

/// The stored totals of the subscriptions `totals` touches.
async fn load_totals(
    db: &Db,
    table: &str,
    totals: &usage::Totals,
) -> Result<usage::Totals, ProjectionError> {
    if totals.is_empty() {
        return Ok(HashMap::new());
    }
    let mut conn = db.any.acquire().await?;
    usage::stored_totals(&mut conn, table, totals.keys()).await
}

/// The rows of `table` whose tenant and `column` are among `keys` (and that
/// match `and`, an extra condition or ""), with their tenant: one query per
/// tenant and 500 distinct values.
async fn select_in<'k>(
    db: &Db,
    columns: &str,
    table: &str,
    column: &str,
    and: &str,
    keys: impl Iterator<Item = (&'k str, &'k str)>,
) -> Result<Vec<(String, AnyRow)>, ProjectionError> {
    let mut by_tenant: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (tenant, value) in keys {
        if seen.insert((tenant, value)) {
            by_tenant.entry(tenant).or_default().push(value);
        }
    }
    let mut out = Vec::new();
    if by_tenant.is_empty() {
        return Ok(out);
    }
    let mut conn = db.any.acquire().await?;
    for (tenant, values) in by_tenant {
        for chunk in values.chunks(500) {
            let params: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT {columns} FROM {table} WHERE tenant = $1 AND {column} IN ({}){and}",
                params.join(", ")
            );
            let mut q = sqlx::query(&sql).persistent(false).bind(tenant);
            for v in chunk {
                q = q.bind(*v);
            }
            for row in q.fetch_all(&mut *conn).await? {
                out.push((tenant.to_string(), row));
            }
        }
    }
    Ok(out)
}

/// A balance's key: tenant, customer, currency code.
type BalanceKey = (String, String, String);

/// The bulk fold of the balances read model: journal rows are insert-only
/// (keyed by their event), and each balance folds the postings met since
/// the last flush onto its stored row (read once per flush) or a zero one.
pub(crate) struct BalancesBulk {
    journal: Cells,
    /// Each balance's currency and postings since the last flush, in log
    /// order.
    balances: HashMap<BalanceKey, (Currency, Vec<Posted>)>,
}

impl BalancesBulk {
    pub(crate) fn new() -> Self {
        Self {
            journal: Vec::new(),
            balances: HashMap::new(),
        }
    }
}

#[async_trait]
impl BulkFold for BalancesBulk {
    fn fold(&mut self, event: &StoredEvent) -> Result<(), ProjectionError> {
        let Some(mut p) = balances::posted(event)? else {
            return Ok(());
        };
        self.journal.append(&mut p.journal_rows);
        let key = (
            event.tenant.clone(),
            p.customer_id.clone(),
            p.currency.code().to_string(),
        );
        self.balances
            .entry(key)
            .or_insert_with(|| (p.currency, Vec::new()))
            .1
            .push(p);
        Ok(())
    }

    fn held(&self) -> usize {
        self.journal.len() + self.balances.len()
    }

    async fn drain(&mut self, db: &Db, tables: Tables) -> Result<Vec<Rows>, ProjectionError> {
        let mut written = Vec::new();
        let journal = std::mem::take(&mut self.journal);
        if !journal.is_empty() {
            written.push(Rows {
                table: "rm_journal",
                columns: balances::JOURNAL_COLUMNS.to_vec(),
                key: &["tenant", "event_id", "leg"],
                fresh: true,
                rows: journal,
            });
        }
        let held = std::mem::take(&mut self.balances);
        let table = tables.name("rm_balances");
        let keys = held
            .keys()
            .map(|(tenant, customer, _)| (tenant.as_str(), customer.as_str()));
        let mut stored = HashMap::new();
        for (tenant, row) in select_in(
            db,
            "customer_id, currency, body",
            &table,
            "customer_id",
            "",
            keys,
        )
        .await?
        {
            let body: String = row.try_get("body")?;
            stored.insert(
                (
                    tenant,
                    row.try_get("customer_id")?,
                    row.try_get("currency")?,
                ),
                body,
            );
        }
        let decode = |e: serde_json::Error| ProjectionError::Effect(format!("{table}: {e}"));
        let (mut fresh, mut again) = (Vec::new(), Vec::new());
        for (key, (currency, postings)) in held {
            let found = stored.get(&key);
            let mut balance = match found {
                Some(body) => balances::stored_balance(body).map_err(decode)?,
                None => balances::new_balance(currency),
            };
            for p in &postings {
                balance = balances::changed(balance, p);
            }
            let row = balances::balance_row(&key.0, &key.1, &balance).map_err(decode)?;
            if found.is_some() {
                again.push(row);
            } else {
                fresh.push(row);
            }
        }
        written.extend(both(
            "rm_balances",
            balances::BALANCE_COLUMNS.to_vec(),
            &["tenant", "customer_id", "currency"],
            (fresh, again),
        ));
        Ok(written)
    }
}

/// An item's or a recipient's key: tenant and id.
type ItemKey = (String, String);

/// The bulk fold of the inbox read model. Items are insert-only: their
/// read state is settled in memory ([`inbox::settle`]) before they are
/// written; the stored items that reads and archivals since the last flush
/// touch are read back once per flush, settled and upserted. Subscription
/// notices go to the subscription's customer (`rm_inbox_customers`, the
/// projector's own lookup): subscriptions created since the last flush are
/// held in memory; a notice to the customer of one created before waits
/// for the next flush, which reads the customers of all such notices at
/// once from the rows written before.
pub(crate) struct InboxBulk {
    /// Subscription → customer, for subscriptions created since the last
    /// flush.
    customers: HashMap<ItemKey, String>,
    /// Items delivered since the last flush.
    items: HashMap<ItemKey, inbox::Item>,
    /// Notices waiting for their subscription's customer.
    waiting: Vec<(StoredEvent, String, inbox::Delivery)>,
    /// The last position since the last flush of a read and of an
    /// archival of each item, and of an "all read" of each recipient.
    read: HashMap<ItemKey, i64>,
    archived: HashMap<ItemKey, i64>,
    all_read: HashMap<ItemKey, i64>,
}

impl InboxBulk {
    pub(crate) fn new() -> Self {
        Self {
            customers: HashMap::new(),
            items: HashMap::new(),
            waiting: Vec::new(),
            read: HashMap::new(),
            archived: HashMap::new(),
            all_read: HashMap::new(),
        }
    }

    fn deliver(&mut self, event: &StoredEvent, d: inbox::Delivery) {
        let item = inbox::new_item(event, d);
        // A second delivery of one id writes nothing (ON CONFLICT DO NOTHING).
        self.items
            .entry((event.tenant.clone(), item.id.clone()))
            .or_insert(item);
    }

    fn settle(&self, tenant: &str, item: &mut inbox::Item) {
        let key = (tenant.to_string(), item.id.clone());
        let read = self.read.get(&key).copied();
        let archived = self.archived.get(&key).copied();
        let all_read = self
            .all_read
            .get(&(tenant.to_string(), item.recipient.clone()))
            .copied();
        inbox::settle(item, read, all_read, archived);
    }
}

#[async_trait]
impl BulkFold for InboxBulk {
    fn fold(&mut self, event: &StoredEvent) -> Result<(), ProjectionError> {
        let at = event.position;
        let key = |id: String| (event.tenant.clone(), id);
        match inbox::effect(event)? {
            Effect::Nothing => {}
            Effect::Customer {
                subscription_id,
                customer_id,
            } => {
                // The first one stays (ON CONFLICT DO NOTHING).
                self.customers
                    .entry(key(subscription_id))
                    .or_insert(customer_id);
            }
            Effect::ToCustomerOf {
                subscription_id,
                notice,
            } => match self.customers.get(&key(subscription_id.clone())) {
                Some(customer) => {
                    let notice = inbox::to_customer(notice, customer);
                    self.deliver(event, notice);
                }
                None => self.waiting.push((event.clone(), subscription_id, notice)),
            },
            Effect::Deliver(deliveries) => {
                for d in deliveries {
                    self.deliver(event, d);
                }
            }
            Effect::Read(id) => {
                self.read.insert(key(id), at);
            }
            Effect::Archive(id) => {
                self.archived.insert(key(id), at);
            }
            Effect::AllRead(recipient) => {
                self.all_read.insert(key(recipient), at);
            }
        }
        Ok(())
    }

    fn held(&self) -> usize {
        self.customers.len()
            + self.items.len()
            + self.waiting.len()
            + self.read.len()
            + self.archived.len()
            + self.all_read.len()
    }

    async fn drain(&mut self, db: &Db, tables: Tables) -> Result<Vec<Rows>, ProjectionError> {
        // Notices waiting for a customer: as the live projector, from the
        // customers written before (not those met later).
        let waiting = std::mem::take(&mut self.waiting);
        if !waiting.is_empty() {
            let keys = waiting
                .iter()
                .map(|(e, sub, _)| (e.tenant.as_str(), sub.as_str()));
            let mut found = HashMap::new();
            for (tenant, row) in select_in(
                db,
                "subscription_id, customer_id",
                &tables.name("rm_inbox_customers"),
                "subscription_id",
                "",
                keys,
            )
            .await?
            {
                let sub: String = row.try_get("subscription_id")?;
                let customer: String = row.try_get("customer_id")?;
                found.insert((tenant, sub), customer);
            }
            for (event, sub, notice) in waiting {
                if let Some(customer) = found.get(&(event.tenant.clone(), sub)) {
                    let notice = inbox::to_customer(notice, customer);
                    self.deliver(&event, notice);
                }
            }
        }
        // Items written before that reads and archivals touch.
        let table = tables.name("rm_inbox_items");
        let columns = inbox::ITEM_COLUMNS;
        let by_id = self
            .read
            .keys()
            .chain(self.archived.keys())
            .filter(|k| !self.items.contains_key(*k))
            .map(|(t, id)| (t.as_str(), id.as_str()));
        let mut stored = select_in(db, columns, &table, "id", "", by_id).await?;
        let by_recipient = self.all_read.keys().map(|(t, r)| (t.as_str(), r.as_str()));
        stored.extend(
            select_in(
                db,
                columns,
                &table,
                "recipient",
                " AND state = 'unread'",
                by_recipient,
            )
            .await?,
        );
        let mut again = HashMap::new();
        for (tenant, row) in stored {
            let mut item = inbox::decode(&row)?;
            let before = item.state.clone();
            self.settle(&tenant, &mut item);
            if item.state != before {
                again.insert((tenant, item.id.clone()), item);
            }
        }
        let items = std::mem::take(&mut self.items);
        let mut fresh = Vec::with_capacity(items.len());
        for ((tenant, _), mut item) in items {
            self.settle(&tenant, &mut item);
            fresh.push(inbox::item_row(&tenant, item));
        }
        let again = again
            .into_iter()
            .map(|((tenant, _), item)| inbox::item_row(&tenant, item))
            .collect();
        self.read.clear();
        self.archived.clear();
        self.all_read.clear();
        let mut written = both(
            "rm_inbox_items",
            inbox::ITEM_ROW_COLUMNS.to_vec(),
            TENANT_ID,
            (fresh, again),
        );
        // Written now: later notices read them back (memory stays flat).
        let customers = std::mem::take(&mut self.customers)
            .into_iter()
            .map(|((tenant, subscription_id), customer_id)| {
                vec![
                    Cell::Text(tenant),
                    Cell::Text(subscription_id),
                    Cell::Text(customer_id),
                ]
            })
            .collect();
        written.extend(both(
            "rm_inbox_customers",
            vec!["tenant", "subscription_id", "customer_id"],
            &["tenant", "subscription_id"],
            (customers, Vec::new()),
        ));
        Ok(written)
    }
}

/// Writes `rows` to `tables` and moves the checkpoint `consumer` from
/// `from` to `to`, in one transaction; the checkpoint update comes first and
/// is guarded like a batch's. Returns false (writing nothing) when the
/// checkpoint was not at `from`.
pub async fn write(
    db: &Db,
    consumer: &str,
    from: i64,
    to: i64,
    tables: Tables,
    rows: &[Rows],
) -> Result<bool, ProjectionError> {
    const GUARD: &str = "UPDATE consumer_checkpoints SET position = $1, updated_at = $2 WHERE name = $3 AND position = $4";
    let now = time::to_text(chrono::Utc::now());
    match (&db.typed, db.backend) {
        (TypedPool::Postgres(pool), Backend::Postgres) => {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(GUARD)
                .bind(to)
                .bind(&now)
                .bind(consumer)
                .bind(from)
                .execute(&mut *tx)
                .await?;
            if moved.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for r in rows {
                copy_rows(&mut tx, &tables.name(r.table), r).await?;
            }
            tx.commit().await?;
        }
        _ => {
            let mut tx = db.any.begin().await?;
            let moved = sqlx::query(GUARD)
                .bind(to)
                .bind(&now)
                .bind(consumer)
                .bind(from)
                .execute(&mut *tx)
                .await?;
            if moved.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for r in rows {
                insert_rows(&mut tx, &tables.name(r.table), r).await?;
            }
            tx.commit().await?;
        }
    }
    Ok(true)
}

/// `ON CONFLICT (key) DO UPDATE SET` every other column.
fn on_conflict(r: &Rows) -> String {
    let sets: Vec<String> = r
        .columns
        .iter()
        .filter(|c| !r.key.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "ON CONFLICT ({}) DO UPDATE SET {}",
        r.key.join(", "),
        sets.join(", ")
    )
}

/// Bytes of `COPY` data sent per message.
const COPY_CHUNK: usize = 1 << 20;

/// PostgreSQL: new rows by `COPY` into the table; rows that may exist by
/// `COPY` into a temporary table and one `INSERT … SELECT … ON CONFLICT`.
async fn copy_rows(conn: &mut PgConnection, table: &str, r: &Rows) -> Result<(), ProjectionError> {
    let columns = r.columns.join(", ");
    let target = if r.fresh {
        table.to_string()
    } else {
        let stage = format!("{table}__stage");
        sqlx::query(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DROP"
        ))
        .execute(&mut *conn)
        .await?;
        stage
    };
    let mut copy = conn
        .copy_in_raw(&format!("COPY {target} ({columns}) FROM STDIN"))
        .await?;
    let mut buf = Vec::with_capacity(COPY_CHUNK + 64 * 1024);
    for row in &r.rows {
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                buf.push(b'\t');
            }
            match cell {
                Cell::Text(s) => copy_escape(&mut buf, s),
                Cell::Int(n) => buf.extend_from_slice(n.to_string().as_bytes()),
                Cell::Null => buf.extend_from_slice(b"\\N"),
            }
        }
        buf.push(b'\n');
        if buf.len() >= COPY_CHUNK {
            copy.send(std::mem::take(&mut buf)).await?;
            buf.reserve(COPY_CHUNK + 64 * 1024);
        }
    }
    if !buf.is_empty() {
        copy.send(buf).await?;
    }
    copy.finish().await?;
    if !r.fresh {
        sqlx::query(&format!(
            "INSERT INTO {table} ({columns}) SELECT {columns} FROM {target} {}",
            on_conflict(r)
        ))
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!("TRUNCATE {target}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Text in `COPY`'s text format. The runs between bytes that need escaping
/// are copied whole: pushed a byte at a time, this was a tenth of a
/// rebuild's CPU.
fn copy_escape(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(escaped);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// Parameters per statement SQLite takes comfortably (its limit is 32,766).
const PARAMS_PER_STATEMENT: usize = 30_000;

/// SQLite (and any backend without `COPY`): multi-row inserts, upserts for
/// rows that may exist.
async fn insert_rows(
    conn: &mut AnyConnection,
    table: &str,
    r: &Rows,
) -> Result<(), ProjectionError> {
    let width = r.columns.len();
    let per = (PARAMS_PER_STATEMENT / width).max(1);
    let tail = if r.fresh {
        String::new()
    } else {
        format!(" {}", on_conflict(r))
    };
    for chunk in r.rows.chunks(per) {
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {}{tail}",
            r.columns.join(", "),
            crate::db::value_rows(chunk.len(), width)
        );
        let sql = crate::db::for_conn(conn, sql);
        let mut q = sqlx::query(&sql).persistent(false);
        for row in chunk {
            for cell in row {
                q = bind(q, cell);
            }
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_its_separators() {
        let mut buf = Vec::new();
        copy_escape(&mut buf, "a\tb\\c\nd\re");
        assert_eq!(buf, b"a\\tb\\\\c\\nd\\re");
        for (text, copied) in [
            ("", ""),
            ("plain {\"ä\": 1}", "plain {\"ä\": 1}"),
            ("\t\n", "\\t\\n"),
            ("\\é\\", "\\\\é\\\\"),
        ] {
            let mut buf = Vec::new();
            copy_escape(&mut buf, text);
            assert_eq!(String::from_utf8(buf).unwrap(), copied, "{text:?}");
        }
    }

    #[test]
    fn upserts_set_every_column_but_the_key() {
        let r = Rows {
            table: "rm_x",
            columns: vec!["tenant", "id", "body", "version"],
            key: TENANT_ID,
            fresh: false,
            rows: Vec::new(),
        };
        assert_eq!(
            on_conflict(&r),
            "ON CONFLICT (tenant, id) DO UPDATE SET body = excluded.body, version = excluded.version"
        );
    }
}
