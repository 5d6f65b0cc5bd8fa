//! The one clock everything time-driven reads. The system clock by default; a
//! manual clock (`tally serve --clock manual`) that tests move forward, so
//! months of billing run in seconds.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone)]
pub enum Clock {
    System,
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    pub fn manual(start: DateTime<Utc>) -> Self {
        Clock::Manual(Arc::new(Mutex::new(start)))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(t) => *t.lock().expect("manual clock"),
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }

    /// Moves a manual clock to `to`; it never goes back. None for the system clock.
    pub fn advance_to(&self, to: DateTime<Utc>) -> Option<Result<DateTime<Utc>, DateTime<Utc>>> {
        match self {
            Clock::System => None,
            Clock::Manual(t) => {
                let mut now = t.lock().expect("manual clock");
                if to < *now {
                    return Some(Err(*now));
                }
                *now = to;
                Some(Ok(to))
            }
        }
    }

    /// Moves a manual clock forward by a duration.
    pub fn advance_by(&self, by: Duration) -> Option<Result<DateTime<Utc>, DateTime<Utc>>> {
        let now = self.now();
        self.advance_to(now + by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_forward_only() {
        let start = DateTime::parse_from_rfc3339("2026-01-31T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        let later = start + Duration::days(3);
        assert_eq!(clock.advance_to(later), Some(Ok(later)));
        assert_eq!(clock.advance_to(start), Some(Err(later)));
        assert_eq!(clock.now(), later);
        assert_eq!(Clock::System.advance_by(Duration::days(1)), None);
    }
}
