//! The civil calendar written out: budgets' UTC windows and usage's days.
//!
//! The
//! conversions between a day number (days since 1970-01-01) and a
//! `(year, month, day)` date are the proleptic Gregorian algorithms in 400-year
//! eras (146,097 days each, starting on a 1 March so the leap day is the last
//! day of the era's years): no tables, no loops, exact for every `u64`
//! millisecond the platform can be given. Hand-written rather than a
//! dependency, so the wasm bundle carries no calendar crate for two functions.

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

/// The day number of an instant (ms since the Unix epoch).
pub fn day_of_ms(ms: u64) -> u32 {
    u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX)
}

/// A day number as an ISO 8601 date, `YYYY-MM-DD`.
pub fn date_string(day: u32) -> String {
    let (y, m, d) = civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of an ISO 8601 date `YYYY-MM-DD` (years 1970 to 9999);
/// `None` for anything else, including dates that do not exist.
pub fn parse_date(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if y < 1970 || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    // A day past the month's end rolls into the next month: refuse it.
    (civil_from_days(days) == (i64::from(y), m, d)).then(|| u32::try_from(days).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn dates_read_and_write_as_iso_8601() {
        assert_eq!(date_string(20_786), "2026-11-29");
        assert_eq!(date_string(0), "1970-01-01");
        assert_eq!(parse_date("2026-11-29"), Some(20_786));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-04-31",
            "2026-1-01",
            "26-11-29",
            "2026/11/29",
            "1969-12-31",
            "2026-11-2x",
            "+026-11-29",
            "",
            "2026-11-29T00",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        for day in [0, 1, 59, 20_786, 47_541] {
            assert_eq!(parse_date(&date_string(day)), Some(day));
        }
        assert_eq!(day_of_ms(20_786 * DAY_MS + DAY_MS - 1), 20_786);
    }
}
