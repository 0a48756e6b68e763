//! Day and month arithmetic on UTC calendar dates, and the output formats of dates and times.

use chrono::{DateTime, Datelike, NaiveDate};

/// Milliseconds per day.
pub const DAY_MS: i64 = 86_400_000;

/// Day number (days since 1970-01-01, UTC) of an epoch-ms instant.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Date of a day number.
pub fn date(day: i64) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt((day + 719_163) as i32).unwrap_or(NaiveDate::MIN)
}

/// Day number of a date.
pub fn day_number(d: NaiveDate) -> i64 {
    i64::from(d.num_days_from_ce()) - 719_163
}

/// `YYYY-MM-DD` of a day number.
pub fn fmt_day(day: i64) -> String {
    let mut out = String::with_capacity(10);
    push_day(&mut out, day);
    out
}

/// Append `YYYY-MM-DD` of a day number to `out`: a row of text takes its date without a string of
/// its own.
pub fn push_day(out: &mut String, day: i64) {
    let d = date(day);
    match u32::try_from(d.year()) {
        // written digit by digit: records carry millions of dates, and the formatting machinery
        // costs ten times the arithmetic
        Ok(year) if year <= 9999 => {
            let digit = |n: u32| char::from(b'0' + (n % 10) as u8);
            let (month, day) = (d.month(), d.day());
            for c in [
                digit(year / 1000),
                digit(year / 100),
                digit(year / 10),
                digit(year),
                '-',
                digit(month / 10),
                digit(month),
                '-',
                digit(day / 10),
                digit(day),
            ] {
                out.push(c);
            }
        }
        _ => {
            use std::fmt::Write;
            let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        }
    }
}

/// The day number of a `YYYY-MM-DD` date, as chrono reads it; the exact shape records carry is read
/// without chrono's format parser (an incremental run reads back the date of every row it filters).
pub fn parse_day(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(5..7), digits(8..10))
    {
        return NaiveDate::from_ymd_opt(y as i32, m, d).map(day_number);
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(day_number)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T03:02:35.862Z`.
pub fn fmt_ms(ms: i64) -> String {
    let Some(t) = DateTime::from_timestamp_millis(ms) else {
        return String::new();
    };
    if (0..=9999).contains(&t.year()) {
        // written digit by digit, as dates are: a row per execution carries several
        let of_day = ms.rem_euclid(DAY_MS);
        let mut out = fmt_day(day_of(ms));
        out.reserve(14);
        let mut push = |sep: char, n: i64, digits: u32| {
            out.push(sep);
            for k in (0..digits).rev() {
                out.push(char::from(b'0' + (n / 10_i64.pow(k) % 10) as u8));
            }
        };
        push('T', of_day / 3_600_000, 2);
        push(':', of_day / 60_000 % 60, 2);
        push(':', of_day / 1000 % 60, 2);
        push('.', of_day % 1000, 3);
        out.push('Z');
        out
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

/// A month as a single ordinal: year * 12 + month0.
pub type Month = i64;

/// Month ordinal of a day number.
///
/// The KPI functions ask for the month of every execution they pass over, mostly in time order:
/// the last month found is remembered with its first and last day, so that most answers are two
/// comparisons instead of a calendar computation.
pub fn month_of(day: i64) -> Month {
    thread_local! {
        /// The last month computed on this thread: (first day, last day, month); empty at first.
        static LAST: std::cell::Cell<(i64, i64, Month)> = const { std::cell::Cell::new((1, 0, 0)) };
    }
    LAST.with(|last| {
        let (first, end, month) = last.get();
        if (first..=end).contains(&day) {
            return month;
        }
        // the month's first and last days from the date itself: a pass over projects in id order
        // asks for months in no order, and making dates of the month's ends doubled the cost
        let d = date(day);
        let month = i64::from(d.year()) * 12 + i64::from(d.month0());
        let first = day - i64::from(d.day0());
        last.set((first, first + i64::from(d.num_days_in_month()) - 1, month));
        month
    })
}

/// Day number of the first day of a month.
pub fn month_first_day(m: Month) -> i64 {
    let d = NaiveDate::from_ymd_opt(m.div_euclid(12) as i32, m.rem_euclid(12) as u32 + 1, 1)
        .unwrap_or(NaiveDate::MIN);
    day_number(d)
}

/// Day number of the last day of a month.
pub fn month_last_day(m: Month) -> i64 {
    month_first_day(m + 1) - 1
}

/// Whether month `m` is complete on day `as_of` (its last day is on or before it).
pub fn is_complete(m: Month, as_of: i64) -> bool {
    month_last_day(m) <= as_of
}

/// `YYYY-MM-01` of a month.
pub fn fmt_month(m: Month) -> String {
    fmt_day(month_first_day(m))
}

/// Runtime bin of kpis.md §3 (bounds inclusive, first match wins).
pub fn runtime_bin(runtime_ms: Option<i64>) -> &'static str {
    const BINS: [(i64, &str); 10] = [
        (5_000, "< 5s"),
        (10_001, "5s - 10s"),
        (30_000, "10s - 30s"),
        (60_000, "30s - 1m"),
        (180_000, "1m - 3m"),
        (300_000, "3m - 5m"),
        (600_000, "5m - 10m"),
        (1_800_000, "10m - 30m"),
        (3_600_000, "30m - 1hr"),
        (10_800_000, "1hr - 3hr"),
    ];
    let Some(ms) = runtime_ms else { return "N/A" };
    BINS.iter()
        .find(|(max, _)| ms <= *max)
        .map_or("3hr+", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_match_chrono() {
        for ms in [
            0i64,
            1,
            999,
            86_399_999,
            1_514_764_800_000,
            1_764_036_155_862,
            253_402_300_799_999,
            -1,
            -86_400_001,
        ] {
            let t = DateTime::from_timestamp_millis(ms).unwrap();
            assert_eq!(
                super::fmt_ms(ms),
                t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
            );
            assert_eq!(
                super::fmt_day(super::day_of(ms)),
                t.format("%Y-%m-%d").to_string()
            );
        }
    }

    use super::*;

    #[test]
    fn dates_round_trip_as_chrono_writes_and_reads_them() {
        // every day from 1899 to 2101, and the ends of the four-digit years
        let days = (-26_000..48_000).chain([-719_162, -719_163, 2_932_896, 2_932_897]);
        for day in days {
            let chrono_text = date(day).format("%Y-%m-%d").to_string();
            assert_eq!(fmt_day(day), chrono_text, "{day}");
            assert_eq!(parse_day(&chrono_text), Some(day), "{chrono_text}");
        }
        for text in [
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-10",
            "2024/01/10",
            "20240110",
            "",
            "2024-01-1x",
            "+2024-01-10",
        ] {
            let chrono_day = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(day_number);
            assert_eq!(parse_day(text), chrono_day, "{text:?}");
        }
    }

    #[test]
    fn runtime_bin_edges() {
        let cases = [
            (None, "N/A"),
            (Some(0), "< 5s"),
            (Some(5000), "< 5s"),
            (Some(5001), "5s - 10s"),
            (Some(10001), "5s - 10s"),
            (Some(10002), "10s - 30s"),
            (Some(30000), "10s - 30s"),
            (Some(30001), "30s - 1m"),
            (Some(60000), "30s - 1m"),
            (Some(60001), "1m - 3m"),
            (Some(180001), "3m - 5m"),
            (Some(300001), "5m - 10m"),
            (Some(600001), "10m - 30m"),
            (Some(1800001), "30m - 1hr"),
            (Some(3600000), "30m - 1hr"),
            (Some(3600001), "1hr - 3hr"),
            (Some(10800000), "1hr - 3hr"),
            (Some(10800001), "3hr+"),
        ];
        for (ms, bin) in cases {
            assert_eq!(runtime_bin(ms), bin, "{ms:?}");
        }
    }

    #[test]
    fn days_and_months() {
        let d = day_number(NaiveDate::from_ymd_opt(2024, 2, 10).unwrap());
        assert_eq!(fmt_day(d), "2024-02-10");
        let m = month_of(d);
        assert_eq!(fmt_month(m), "2024-02-01");
        assert_eq!(fmt_day(month_last_day(m)), "2024-02-29");
        assert_eq!(fmt_month(m - 2), "2023-12-01");
        assert_eq!(day_of(-1), -1);
        assert_eq!(fmt_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn the_remembered_month_answers_as_the_calendar_does() {
        // forwards, backwards and jumping, across month and year ends and a leap day
        let start = day_number(NaiveDate::from_ymd_opt(2023, 12, 1).unwrap());
        let days: Vec<i64> = (start..start + 120)
            .chain((start..start + 120).rev())
            .chain([start + 90, start - 400, start + 59, start + 60, -1, 0, 1])
            .collect();
        let from_calendar = |day: i64| {
            let d = date(day);
            i64::from(d.year()) * 12 + i64::from(d.month0())
        };
        for day in days {
            assert_eq!(month_of(day), from_calendar(day), "day {day}");
        }
    }
}
