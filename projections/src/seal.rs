//! The sealer: a hash chain over the log in global order (tamper evidence).
