//! Bounds on the times Tally accepts. Every time Tally writes is RFC 3339 with
//! a four-digit year, so no accepted time may reach year 10000, nor may
//! anything computed from one (a period end, a due date); and a time with
//! no business in a ledger (year 0) is a client error, not a fact to record.
//! Commands whose time is relative to now (an activation, a captured
//! payment) bound it against the clock as well, in their aggregate.

use chrono::{DateTime, Months, NaiveDate, TimeDelta, Utc};

use crate::DomainError;

/// The first year of an accepted time.
pub const EARLIEST_YEAR: i32 = 1970;
/// The first year no accepted time reaches: far enough from 9999 that
/// periods, due dates and grace computed from an accepted time stay below
/// year 10000.
pub const LATEST_YEAR_EXCLUSIVE: i32 = 9000;

fn year_start(year: i32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(year, 1, 1)
        .expect("January 1st exists")
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

/// `t` if it lies in `[1970-01-01, 9000-01-01)`, else a validation error on
/// `field`.
pub fn check_accepted(field: &str, t: DateTime<Utc>) -> Result<DateTime<Utc>, DomainError> {
    if t < year_start(EARLIEST_YEAR) || t >= year_start(LATEST_YEAR_EXCLUSIVE) {
        return Err(DomainError::validation(
            field,
            format!("must be from {EARLIEST_YEAR}-01-01 to before {LATEST_YEAR_EXCLUSIVE}-01-01"),
        ));
    }
    Ok(t)
}

/// `t` minus calendar `months` (end-of-month clamped), saturating at
/// chrono's range.
pub fn months_before(t: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    t.checked_sub_months(Months::new(months))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `t` plus calendar `months` (end-of-month clamped, as periods are),
/// saturating at chrono's range.
pub fn months_after(t: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    crate::period::checked_add_months_clamped(t, months).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Refuses `t` on `field` unless `not_before <= t <= not_after`; `what`
/// says the bounds in words ("at most 5 minutes ahead").
pub fn check_within(
    field: &str,
    t: DateTime<Utc>,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    what: &str,
) -> Result<(), DomainError> {
    if t < not_before || t > not_after {
        return Err(DomainError::validation(field, format!("must be {what}")));
    }
    Ok(())
}

/// A short tolerance for clocks of other parties that run ahead of ours.
pub const CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn accepted_times_are_from_1970_to_before_9000() {
        assert!(check_accepted("at", t("1970-01-01T00:00:00Z")).is_ok());
        assert!(check_accepted("at", t("8999-12-31T23:59:59Z")).is_ok());
        for bad in [
            "0000-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "9000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ] {
            let e = check_accepted("at", t(bad)).unwrap_err();
            assert!(matches!(e, DomainError::Validation { ref field, .. } if field == "at"));
        }
    }

    #[test]
    fn month_arithmetic_clamps_and_saturates() {
        assert_eq!(
            months_before(t("2026-03-31T10:00:00Z"), 1),
            t("2026-02-28T10:00:00Z")
        );
        assert_eq!(
            months_after(t("2026-01-31T10:00:00Z"), 12),
            t("2027-01-31T10:00:00Z")
        );
        assert_eq!(
            months_before(DateTime::<Utc>::MIN_UTC, 1),
            DateTime::<Utc>::MIN_UTC
        );
        assert_eq!(
            months_after(DateTime::<Utc>::MAX_UTC, 1),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn within_is_inclusive() {
        let lo = t("2026-01-01T00:00:00Z");
        let hi = t("2026-02-01T00:00:00Z");
        assert!(check_within("x", lo, lo, hi, "in January").is_ok());
        assert!(check_within("x", hi, lo, hi, "in January").is_ok());
        assert!(check_within("x", hi + TimeDelta::seconds(1), lo, hi, "in January").is_err());
        assert!(check_within("x", lo - TimeDelta::seconds(1), lo, hi, "in January").is_err());
    }
}
