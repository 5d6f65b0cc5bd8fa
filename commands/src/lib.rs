//! The write side of Tally: the event store (cqrs-es over postgres-es /
//! sqlite-es, with our own append), command dispatch with conflict retry,
//! event metadata, idempotency keys, API keys and the injectable clock.

pub mod clock;
pub mod coupons;
pub mod dispatch;
mod group_commit;
pub mod idempotency;
pub mod ids;
pub mod invoices;
pub mod keys;
pub mod nats;
pub mod payments;
pub mod policies;
pub mod secrets;
pub mod store;
pub mod topics;
pub mod usage;
pub mod webhooks;

pub use clock::Clock;
pub use dispatch::{CommandError, CommandMeta, Dispatcher, Executed};
