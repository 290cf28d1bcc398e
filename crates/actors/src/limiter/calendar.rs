//! UTC day and month windows, with the civil calendar written out.
//!
//! Budgets reset at UTC midnight and on the first of the month. The
//! conversions between a day number (days since 1970-01-01) and a
//! `(year, month, day)` date are the proleptic Gregorian algorithms in 400-year
//! eras (146,097 days each, starting on a 1 March so the leap day is the last
//! day of the era's years): no tables, no loops, exact for every `u64`
//! millisecond the platform can be given. Hand-written rather than a
//! dependency, so the wasm bundle carries no calendar crate for two functions.

use protocol::limits::Period;

/// Milliseconds in a UTC day (UTC has no leap seconds in Unix time).
pub const DAY_MS: u64 = 86_400_000;

/// Days in a 400-year era of the Gregorian calendar.
const ERA_DAYS: i64 = 146_097;
/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: i64 = 719_468;

/// The day number (days since 1970-01-01) of a date; `month` is 1 to 12.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    // Years start on 1 March: January and February belong to the year before.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * ERA_DAYS + day_of_era - EPOCH_SHIFT
}

/// The date `(year, month, day)` of a day number; `month` is 1 to 12.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + EPOCH_SHIFT;
    let era = z.div_euclid(ERA_DAYS);
    let day_of_era = z.rem_euclid(ERA_DAYS);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=12, 1..=31): the casts are exact.
    (year, month as u32, day as u32)
}

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
    fn known_day_numbers() {
        // Checked against an independent calendar (Python's datetime).
        for (date, days) in [
            ((1970, 1, 1), 0),
            ((2000, 3, 1), 11_017),
            ((2023, 12, 31), 19_722),
            ((2024, 2, 29), 19_782),
            ((2026, 11, 29), 20_786),
            ((2100, 3, 1), 47_541),
            ((2400, 2, 29), 157_113),
        ] {
            assert_eq!(days_from_civil(date.0, date.1, date.2), days, "{date:?}");
            assert_eq!(civil_from_days(days), date, "{days}");
        }
    }

    #[test]
    fn every_day_follows_the_one_before() {
        // 1970 to 2500: each day is the next date of the calendar, so every
        // month end, year end and leap rule is crossed.
        let month_len = |y: i64, m: u32| match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut date = (1970, 1, 1);
        for days in 0..days_from_civil(2500, 1, 1) {
            assert_eq!(civil_from_days(days), date);
            assert_eq!(days_from_civil(date.0, date.1, date.2), days);
            date = match date {
                (y, 12, 31) => (y + 1, 1, 1),
                (y, m, d) if d == month_len(y, m) => (y, m + 1, 1),
                (y, m, d) => (y, m, d + 1),
            };
        }
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
