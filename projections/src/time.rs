//! The one text form of a time in our portable tables: RFC 3339 UTC with a
//! fixed width (microseconds, `Z`), so that text order is time order on both
//! backends.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn to_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn from_text(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
