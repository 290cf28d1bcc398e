//! UTC day and month windows (budgets reset at UTC midnight and on the first
//! of the month), over the civil calendar of [`protocol::calendar`].

pub use protocol::calendar::{civil_from_days, days_from_civil, DAY_MS};
use protocol::limits::Period;

fn day_number(ms: u64) -> i64 {
    i64::try_from(ms / DAY_MS).unwrap_or(i64::MAX)
}

fn ms_of_day(days: i64) -> u64 {
    u64::try_from(days).unwrap_or(0).saturating_mul(DAY_MS)
}

/// The UTC midnight at or before `now_ms`.
pub fn day_start(now_ms: u64) -> u64 {
    now_ms - now_ms % DAY_MS
}

/// The first of the month (UTC midnight) at or before `now_ms`.
pub fn month_start(now_ms: u64) -> u64 {
    let (year, month, _) = civil_from_days(day_number(now_ms));
    ms_of_day(days_from_civil(year, month, 1))
}

/// The first of the month after the one holding `now_ms`.
pub fn next_month_start(now_ms: u64) -> u64 {
    let (year, month, _) = civil_from_days(day_number(now_ms));
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    ms_of_day(days_from_civil(year, month, 1))
}

/// The start of the window of `period` that holds `now_ms`.
pub fn window_start(period: Period, now_ms: u64) -> u64 {
    match period {
        Period::Day => day_start(now_ms),
        Period::Month => month_start(now_ms),
    }
}

/// When the window of `period` that holds `now_ms` ends (the next one
/// starts).
pub fn window_end(period: Period, now_ms: u64) -> u64 {
    match period {
        Period::Day => day_start(now_ms).saturating_add(DAY_MS),
        Period::Month => next_month_start(now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(year: i64, month: u32, day: u32) -> u64 {
        ms_of_day(days_from_civil(year, month, day))
    }

    #[test]
    fn day_windows_roll_at_utc_midnight() {
        let midnight = ms(2026, 11, 30);
        assert_eq!(day_start(midnight - 1), ms(2026, 11, 29));
        assert_eq!(window_end(Period::Day, midnight - 1), midnight);
        assert_eq!(day_start(midnight), midnight);
        assert_eq!(window_end(Period::Day, midnight), ms(2026, 12, 1));
    }

    #[test]
    fn month_windows_roll_on_the_first() {
        let cases = [
            // (an instant, its month's start, the next month's start)
            (ms(2024, 2, 29) + DAY_MS - 1, ms(2024, 2, 1), ms(2024, 3, 1)),
            (ms(2023, 2, 28) + 5, ms(2023, 2, 1), ms(2023, 3, 1)),
            (
                ms(2026, 12, 31) + DAY_MS - 1,
                ms(2026, 12, 1),
                ms(2027, 1, 1),
            ),
            (ms(2027, 1, 1), ms(2027, 1, 1), ms(2027, 2, 1)),
            (ms(2026, 4, 30) + 1, ms(2026, 4, 1), ms(2026, 5, 1)),
            (0, 0, ms(1970, 2, 1)),
        ];
        for (now, start, next) in cases {
            assert_eq!(window_start(Period::Month, now), start, "{now}");
            assert_eq!(window_end(Period::Month, now), next, "{now}");
        }
        assert_eq!(ms(1970, 2, 1), 31 * DAY_MS);
    }
}
