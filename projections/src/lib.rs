//! The read side of Tally: the database handle both sides share, the ordered
//! log reader, the checkpointed consumer runtime, and every read model with its
//! queries. It knows nothing of HTTP and nothing of how commands are decided.

pub mod balances;
pub mod bulk;
pub mod coupons;
pub mod customers;
pub mod db;
pub mod inbox;
pub mod invoices;
pub mod log;
pub mod plans;
pub mod rebuild;
pub mod runtime;
pub mod seal;
pub mod state;
pub mod subscriptions;
pub mod tables;
pub mod tax_rates;
pub mod tickets;
pub mod time;
pub mod usage;

pub use db::{Backend, Db, DbError};
pub use log::{EventLog, StoredEvent};
pub use runtime::{ConsumerStatus, ProjectionError, Projector, Runtime};
pub use tables::Tables;

/// Splits a stream key (`<tenant>:<resource id>`) into its two parts.
pub fn split_stream_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(':')
}

/// The stream key of a resource: the tenant is part of every stream's identity,
/// so one tenant can never load another tenant's aggregate.
pub fn stream_key(tenant: &str, id: &str) -> String {
    format!("{tenant}:{id}")
}

/// One page of a cursor-paginated list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Largest page a list query returns.
pub const MAX_PAGE_LIMIT: i64 = 200;

use std::sync::Arc;

/// Every read model's projector, in one list (the runtime runs them all).
pub fn all_projectors() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(state::StateProjector::<tally_aggregates::plan::Plan>::default()),
        Arc::new(state::StateProjector::<
            tally_aggregates::subscription::Subscription,
        >::default()),
        Arc::new(usage::UsageProjector),
        Arc::new(state::StateProjector::<tally_aggregates::invoice::Invoice>::default()),
        Arc::new(balances::BalanceProjector),
        Arc::new(state::StateProjector::<tally_aggregates::ticket::Ticket>::default()),
        Arc::new(inbox::InboxProjector),
        Arc::new(state::StateProjector::<tally_aggregates::customer::Customer>::default()),
        Arc::new(state::StateProjector::<tally_aggregates::coupon::Coupon>::default()),
        Arc::new(state::StateProjector::<tally_aggregates::tax::TaxRate>::default()),
    ]
}
