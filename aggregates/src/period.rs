//! Billing periods: anniversary billing from an anchor, month and year
//! intervals, end-of-month clamping. Every period boundary is computed from the
//! anchor itself, never from the previous boundary, so an anchor on the 31st
//! bills on the 31st again after a short month instead of drifting to the 28th.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// The length of a billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Month,
    Year,
}

impl Interval {
    /// The interval in months (1 or 12).
    pub fn months(&self) -> u32 {
        match self {
            Interval::Month => 1,
            Interval::Year => 12,
        }
    }

    /// The snake_case name ("month", "year").
    pub fn as_str(&self) -> &'static str {
        match self {
            Interval::Month => "month",
            Interval::Year => "year",
        }
    }
}

/// A half-open billing period `[start, end)` in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    /// Whether `t` lies in `[start, end)`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    /// The length of the period in whole seconds.
    pub fn length_seconds(&self) -> i64 {
        (self.end - self.start).num_seconds()
    }
}

fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The number of days of `month` (1-based) in `year`.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => panic!("month {month} is not in 1..=12"),
    }
}

/// `anchor` plus `months` calendar months, at the same time of day, with the
/// day clamped to the last day of the target month. `None` when the result is
/// outside chrono's representable range.
pub fn checked_add_months_clamped(anchor: DateTime<Utc>, months: u32) -> Option<DateTime<Utc>> {
    let total = i64::from(anchor.year()) * 12 + i64::from(anchor.month0()) + i64::from(months);
    let year = i32::try_from(total.div_euclid(12)).ok()?;
    let month = u32::try_from(total.rem_euclid(12)).ok()? + 1;
    let day = anchor.day().min(days_in_month(year, month));
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    Some(date.and_time(anchor.time()).and_utc())
}

/// `anchor` plus `months` calendar months, at the same time of day, with the
/// day clamped to the last day of the target month: Jan 31 + 1 = Feb 28 (29 in
/// a leap year), Jan 31 + 2 = Mar 31.
///
/// # Panics
/// When the result is past year 262143; see [`checked_add_months_clamped`].
pub fn add_months_clamped(anchor: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    checked_add_months_clamped(anchor, months).expect("date out of chrono's range")
}

/// The `index`-th period from `anchor` (index 0 is `[anchor, anchor + 1
/// interval)`); `None` when it is outside chrono's range.
pub fn checked_period_at(anchor: DateTime<Utc>, interval: Interval, index: u32) -> Option<Period> {
    let start_months = index.checked_mul(interval.months())?;
    let end_months = index.checked_add(1)?.checked_mul(interval.months())?;
    Some(Period {
        start: checked_add_months_clamped(anchor, start_months)?,
        end: checked_add_months_clamped(anchor, end_months)?,
    })
}

/// The `index`-th period from `anchor`; index 0 is `[anchor, anchor + 1 interval)`.
///
/// # Panics
/// When the period is outside chrono's range; see [`checked_period_at`].
pub fn period_at(anchor: DateTime<Utc>, interval: Interval, index: u32) -> Period {
    checked_period_at(anchor, interval, index).expect("period out of chrono's range")
}

/// The index of the period that contains `t`; 0 when `t` is before `anchor`.
/// Computed from the month difference, then corrected by at most one step, so
/// it costs the same for a period a century away as for the next one.
pub fn checked_period_index_containing(
    anchor: DateTime<Utc>,
    interval: Interval,
    t: DateTime<Utc>,
) -> Option<u32> {
    if t <= anchor {
        return Some(0);
    }
    let month_diff = (i64::from(t.year()) - i64::from(anchor.year())) * 12
        + (i64::from(t.month0()) - i64::from(anchor.month0()));
    // `t > anchor`, so `t` is in the anchor's month or later: month_diff >= 0.
    let mut index = u32::try_from(month_diff / i64::from(interval.months())).ok()?;
    // The start of period `index` falls in `t`'s month or earlier; only when it
    // falls in the same month can it be later in that month than `t`. Its end
    // is in a later month than `t`, so no step forward is ever needed.
    if checked_period_at(anchor, interval, index)?.start > t {
        index -= 1;
    }
    debug_assert!(checked_period_at(anchor, interval, index)?.contains(t));
    Some(index)
}

/// The period that contains `t` (for `t >= anchor`; earlier times give the
/// first period).
///
/// # Panics
/// When the period is outside chrono's range.
pub fn period_containing(anchor: DateTime<Utc>, interval: Interval, t: DateTime<Utc>) -> Period {
    checked_period_containing(anchor, interval, t).expect("period out of chrono's range")
}

/// The period that contains `t`, or `None` when it is outside chrono's range.
pub fn checked_period_containing(
    anchor: DateTime<Utc>,
    interval: Interval,
    t: DateTime<Utc>,
) -> Option<Period> {
    let index = checked_period_index_containing(anchor, interval, t)?;
    checked_period_at(anchor, interval, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn jan_31_anchor_clamps_every_month_and_recovers_the_31st() {
        let anchor = at("2028-01-31T10:30:00Z");
        let expected = [
            "2028-01-31T10:30:00Z",
            "2028-02-29T10:30:00Z", // leap year
            "2028-03-31T10:30:00Z",
            "2028-04-30T10:30:00Z",
            "2028-05-31T10:30:00Z",
            "2028-06-30T10:30:00Z",
            "2028-07-31T10:30:00Z",
            "2028-08-31T10:30:00Z",
            "2028-09-30T10:30:00Z",
            "2028-10-31T10:30:00Z",
            "2028-11-30T10:30:00Z",
            "2028-12-31T10:30:00Z",
            "2029-01-31T10:30:00Z",
            "2029-02-28T10:30:00Z", // not a leap year
        ];
        for (months, want) in expected.iter().enumerate() {
            let months = u32::try_from(months).unwrap();
            assert_eq!(add_months_clamped(anchor, months), at(want), "+{months}");
        }
        for index in 0..13u32 {
            let period = period_at(anchor, Interval::Month, index);
            assert_eq!(period.start, at(expected[index as usize]));
            assert_eq!(period.end, at(expected[index as usize + 1]));
            assert_eq!(
                period_containing(anchor, Interval::Month, period.start),
                period
            );
            assert_eq!(
                period_containing(
                    anchor,
                    Interval::Month,
                    period.end - chrono::Duration::seconds(1)
                ),
                period
            );
        }
    }

    #[test]
    fn mar_31_plus_one_month_is_apr_30() {
        assert_eq!(
            add_months_clamped(at("2025-03-31T00:00:00Z"), 1),
            at("2025-04-30T00:00:00Z")
        );
        assert_eq!(
            add_months_clamped(at("2025-12-31T23:59:59Z"), 2),
            at("2026-02-28T23:59:59Z")
        );
    }

    #[test]
    fn yearly_interval_on_feb_29() {
        let anchor = at("2028-02-29T00:00:00Z");
        assert_eq!(
            period_at(anchor, Interval::Year, 0),
            Period {
                start: anchor,
                end: at("2029-02-28T00:00:00Z")
            }
        );
        assert_eq!(
            period_at(anchor, Interval::Year, 3),
            Period {
                start: at("2031-02-28T00:00:00Z"),
                end: at("2032-02-29T00:00:00Z")
            }
        );
        assert_eq!(
            period_containing(anchor, Interval::Year, at("2032-02-28T23:59:59Z")),
            period_at(anchor, Interval::Year, 3)
        );
        assert_eq!(
            period_containing(anchor, Interval::Year, at("2032-02-29T00:00:00Z")),
            period_at(anchor, Interval::Year, 4)
        );
    }

    #[test]
    fn period_containing_steps_back_within_the_anchor_day() {
        let anchor = at("2025-01-15T12:00:00Z");
        // Same day of month as the anchor but earlier in the day: previous period.
        assert_eq!(
            period_containing(anchor, Interval::Month, at("2025-03-15T11:59:59Z")),
            period_at(anchor, Interval::Month, 1)
        );
        assert_eq!(
            period_containing(anchor, Interval::Month, at("2025-03-15T12:00:00Z")),
            period_at(anchor, Interval::Month, 2)
        );
        // Before the anchor: the first period.
        assert_eq!(
            period_containing(anchor, Interval::Month, at("2024-01-01T00:00:00Z")),
            period_at(anchor, Interval::Month, 0)
        );
        // Far away costs the same.
        let far = at("2525-06-01T00:00:00Z");
        assert!(period_containing(anchor, Interval::Month, far).contains(far));
        assert!(period_containing(anchor, Interval::Year, far).contains(far));
    }

    #[test]
    fn period_containing_agrees_with_a_walk_for_every_day_of_four_years() {
        for anchor in [
            at("2027-01-31T08:00:00Z"),
            at("2027-02-28T00:00:00Z"),
            at("2027-03-30T23:00:00Z"),
            at("2028-02-29T06:00:00Z"),
        ] {
            for interval in [Interval::Month, Interval::Year] {
                let mut index = 0u32;
                let mut t = anchor;
                let end = anchor + chrono::Duration::days(4 * 366);
                while t < end {
                    while !period_at(anchor, interval, index).contains(t) {
                        index += 1;
                    }
                    assert_eq!(
                        checked_period_index_containing(anchor, interval, t),
                        Some(index),
                        "{anchor} {interval:?} {t}"
                    );
                    t += chrono::Duration::hours(7);
                }
            }
        }
    }

    #[test]
    fn out_of_range_is_none_not_a_panic() {
        let anchor = at("2025-01-31T00:00:00Z");
        assert_eq!(checked_add_months_clamped(anchor, u32::MAX), None);
        assert_eq!(checked_period_at(anchor, Interval::Year, u32::MAX), None);
    }

    #[test]
    fn interval_serde_is_snake_case() {
        assert_eq!(
            serde_json::to_string(&Interval::Month).unwrap(),
            "\"month\""
        );
        assert_eq!(
            serde_json::from_str::<Interval>("\"year\"").unwrap(),
            Interval::Year
        );
        assert_eq!(Interval::Year.months(), 12);
        assert_eq!(Interval::Month.as_str(), "month");
    }

    #[test]
    fn days_in_month_knows_leap_years() {
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2028, 2), 29);
        assert_eq!(days_in_month(2027, 2), 28);
        assert_eq!(days_in_month(2027, 4), 30);
    }
}
