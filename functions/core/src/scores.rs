//! Scores and statuses of results, shared by the webhook ingest and manual
//! registration, so both accept exactly the same values.

use crate::web::Checks;

/// A calendar date (for the clock of [`today_utc`]).
pub use time::Date;

pub const STATUSES: [&str; 4] = ["completed", "incomplete", "absent", "exempt"];

/// A result's score, status and completion time, pointed at under `prefix`:
/// a known status, a score from 0 to the assessment's maximum (required when
/// completed), an RFC 3339 completion time if given.
pub fn check_outcome(
    checks: &mut Checks,
    prefix: &str,
    score: Option<f64>,
    status: &str,
    completed_at: Option<&str>,
    max_score: f64,
) {
    if !STATUSES.contains(&status) {
        checks.fail(&format!("{prefix}/status"), "must be completed, incomplete, absent or exempt");
    }
    match score {
        Some(s) if !finite_in(s, 0.0, max_score) => {
            checks.fail(&format!("{prefix}/score"), "must be from 0 to the assessment's max_score")
        }
        None if status == "completed" => checks.fail(&format!("{prefix}/score"), "a completed result needs a score"),
        _ => {}
    }
    if completed_at.is_some_and(|t| !valid_datetime(t)) {
        checks.fail(&format!("{prefix}/completed_at"), "must be an RFC 3339 date-time");
    }
}

/// Years a date of Tavle's may name: assessments, results, filters.
const YEARS: std::ops::RangeInclusive<i32> = 1900..=2199;

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// `YYYY-MM-DD`, a real calendar date between 1900 and 2199. The crate's
/// year would also take a sign (`+2026-09-15`), which PostgreSQL refuses.
pub fn parse_date(s: &str) -> Option<time::Date> {
    if !s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    time::Date::parse(s, DATE).ok().filter(|d| YEARS.contains(&d.year()))
}

pub fn valid_date(s: &str) -> bool {
    parse_date(s).is_some()
}

/// The date as `YYYY-MM-DD` formatted from its parsed value: what goes to
/// the database (and compares in date order as text).
pub fn canonical_date(s: &str) -> Option<String> {
    parse_date(s)?.format(DATE).ok()
}

/// An RFC 3339 date-time (`2026-09-01T10:15:00Z`, fractions and offsets
/// allowed) in the years of [`parse_date`]. Date and time are separated by
/// `T` as the `date-time` of RFC 3339 section 5.6 (and JSON Schema) has it;
/// the crate would also take the space that the RFC's note permits. The
/// offset stays within ±15:59, as PostgreSQL's does (real ones are −12 to +14).
pub fn parse_datetime(s: &str) -> Option<time::OffsetDateTime> {
    if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
        return None;
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    (YEARS.contains(&t.year()) && t.offset().whole_hours().abs() <= 15).then_some(t)
}

pub fn valid_datetime(s: &str) -> bool {
    parse_datetime(s).is_some()
}

/// The instant of an RFC 3339 date-time as RFC 3339 in UTC: what goes to
/// the database, so that PostgreSQL's own (more lenient) parser only ever
/// sees what we validated.
pub fn canonical_datetime(s: &str) -> Option<String> {
    let t = parse_datetime(s)?.to_offset(time::UtcOffset::UTC);
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

/// The school year (Norway and Denmark: 1 August to 31 July) that `date`
/// falls in, named by the calendar year it starts in.
pub fn school_year_containing(date: time::Date) -> i32 {
    if date.month() as u8 >= 8 {
        date.year()
    } else {
        date.year() - 1
    }
}

/// The first and last day of the school year starting in `start_year`, as
/// `YYYY-MM-DD`.
pub fn school_year_bounds(start_year: i32) -> (String, String) {
    (format!("{start_year:04}-08-01"), format!("{:04}-07-31", start_year + 1))
}

/// Today's date in UTC: the clock of the handlers that default to "the
/// current school year" (they take the date as an argument, so tests pass
/// their own).
pub fn today_utc() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

pub fn finite_in(v: f64, lo: f64, hi: f64) -> bool {
    v.is_finite() && v >= lo && v <= hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates_and_times() {
        assert!(valid_date("2028-02-29"));
        assert!(!valid_date("2026-02-29"));
        assert!(!valid_date("2026-13-01"));
        assert!(!valid_date("2026-9-15"));
        assert!(!valid_date("1899-12-31"));
        assert!(!valid_date("+2026-09-15"));
        assert_eq!(canonical_date("2026-09-15").as_deref(), Some("2026-09-15"));
        assert!(valid_datetime("2026-09-15T09:30:00+02:00"));
        assert!(valid_datetime("2026-09-15T09:30:00.5Z"));
        assert!(!valid_datetime("2026-09-15 09:30:00"));
        // A multi-byte character where the offset's colon belongs used to panic.
        assert!(!valid_datetime("2026-09-15T09:30:00+0é00"));
        assert_eq!(canonical_datetime("2026-09-15T09:30:00+02:00").as_deref(), Some("2026-09-15T07:30:00Z"));
    }

    /// Formats a date-time from parts, some of them out of range, with
    /// separators that may be wrong or multi-byte.
    fn datetime_like() -> impl Strategy<Value = String> {
        // Weighted towards well-formed input, so that most cases get past the
        // separators and the comparison has valid date-times to agree on.
        let sep = prop_oneof![8 => Just("-"), 1 => Just("/"), 1 => Just("é"), 1 => Just("")];
        let t = prop_oneof![8 => Just("T"), 1 => Just("t"), 1 => Just(" "), 1 => Just("ø")];
        let offset = prop_oneof![
            3 => Just("Z".to_owned()),
            1 => Just("z".to_owned()),
            6 => (prop_oneof![4 => Just("+"), 4 => Just("-"), 1 => Just("±")], 0u32..26,
                  prop_oneof![8 => Just(":"), 1 => Just(""), 1 => Just("é")], 0u32..62)
                .prop_map(|(sign, h, c, m)| format!("{sign}{h:02}{c}{m:02}")),
            1 => "\\PC{0,4}",
        ];
        let frac = prop_oneof![3 => Just(String::new()), 3 => "\\.[0-9]{1,10}", 1 => "\\.\\PC{0,3}"];
        (1800i32..2300, 0u32..15, 0u32..35, sep, t, 0u32..26, 0u32..62, 0u32..62, frac, offset).prop_map(
            |(y, mo, d, sep, t, h, mi, s, frac, offset)| {
                format!("{y:04}{sep}{mo:02}{sep}{d:02}{t}{h:02}:{mi:02}:{s:02}{frac}{offset}")
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn date_parsers_never_panic(s in "\\PC{0,40}") {
            let _ = (valid_date(&s), valid_datetime(&s), canonical_datetime(&s));
        }

        /// The crate decides, with Tavle's year range on top; an independent
        /// RFC 3339 parser (chrono) agrees on every well-formed input, and
        /// what is accepted survives the round trip to canonical UTC text.
        #[test]
        fn datetimes_agree_with_an_independent_parser(s in datetime_like()) {
            let ours = parse_datetime(&s);
            // RFC 3339 has no leap-second-free rule that both crates share;
            // second 60 is left out of the comparison.
            let leap = s.get(17..19) == Some("60");
            let t_separated = matches!(s.as_bytes().get(10), Some(b'T' | b't'));
            let chrono = chrono::DateTime::parse_from_rfc3339(&s)
                .ok()
                .filter(|t| YEARS.contains(&chrono::Datelike::year(t)) && t_separated)
                .filter(|t| t.offset().local_minus_utc().abs() < 16 * 3600);
            if !leap {
                prop_assert_eq!(ours.is_some(), chrono.is_some(), "{}", s);
            }
            if let (Some(t), Some(c)) = (ours, chrono) {
                prop_assert_eq!(t.unix_timestamp(), c.timestamp());
                let canonical = canonical_datetime(&s).unwrap();
                prop_assert_eq!(parse_datetime(&canonical).map(|t| t.unix_timestamp_nanos()), Some(t.unix_timestamp_nanos()));
            }
        }

        #[test]
        fn dates_agree_with_an_independent_parser(y in 1800i32..2300, m in 0u32..15, d in 0u32..35) {
            let s = format!("{y:04}-{m:02}-{d:02}");
            let chrono = chrono::NaiveDate::from_ymd_opt(y, m, d).filter(|_| YEARS.contains(&y));
            prop_assert_eq!(parse_date(&s).map(|d| (d.year(), d.month() as u32, u32::from(d.day()))), chrono.map(|c| (chrono::Datelike::year(&c), chrono::Datelike::month(&c), chrono::Datelike::day(&c))));
        }
    }

    #[test]
    fn school_years_run_from_august_to_july() {
        let d = |s: &str| parse_date(s).unwrap();
        assert_eq!(school_year_containing(d("2026-07-31")), 2025);
        assert_eq!(school_year_containing(d("2026-08-01")), 2026);
        assert_eq!(school_year_containing(d("2027-01-20")), 2026);
        assert_eq!(school_year_bounds(2026), ("2026-08-01".to_owned(), "2027-07-31".to_owned()));
    }

    #[test]
    fn outcomes() {
        let mut c = Checks::default();
        check_outcome(&mut c, "", Some(41.0), "completed", None, 40.0);
        check_outcome(&mut c, "", None, "completed", None, 40.0);
        check_outcome(&mut c, "", None, "done", Some("yesterday"), 40.0);
        let pointers: Vec<_> = c.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/score", "/score", "/status", "/completed_at"]);
        let mut c = Checks::default();
        check_outcome(&mut c, "", None, "absent", None, 40.0);
        check_outcome(&mut c, "", Some(40.0), "completed", Some("2026-09-15T09:30:00Z"), 40.0);
        assert!(c.0.is_empty());
    }
}
