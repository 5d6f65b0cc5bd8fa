//! Policies (process managers): consumers of the log that turn events into
//! further commands, with causation metadata pointing at the event.

pub mod quota;
