//! Scores and statuses of results, shared by the webhook ingest and manual
//! registration, so both accept exactly the same values.

use crate::web::Checks;

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

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

/// `YYYY-MM-DD`, a real calendar date between 1900 and 2199.
pub fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        s.get(r).filter(|t| t.bytes().all(|c| c.is_ascii_digit())).and_then(|t| t.parse::<u32>().ok())
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else { return false };
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => return false,
    };
    (1900..=2199).contains(&y) && (1..=days).contains(&d)
}

/// RFC 3339 date-time (`2026-09-01T10:15:00Z`, fractions and offsets allowed).
pub fn valid_datetime(s: &str) -> bool {
    let Some((date, time)) = s.split_once(['T', 't']) else { return false };
    if !valid_date(date) {
        return false;
    }
    let (clock, offset) = if let Some(t) = time.strip_suffix(['Z', 'z']) {
        (t, None)
    } else if time.len() > 6 && matches!(time.as_bytes()[time.len() - 6], b'+' | b'-') {
        (&time[..time.len() - 6], Some(&time[time.len() - 5..]))
    } else {
        return false;
    };
    let two = |t: &str, max: u32| {
        t.len() == 2 && t.bytes().all(|c| c.is_ascii_digit()) && t.parse::<u32>().is_ok_and(|v| v <= max)
    };
    let (hms, frac) = clock.split_once('.').map_or((clock, None), |(a, b)| (a, Some(b)));
    let parts: Vec<&str> = hms.split(':').collect();
    let clock_ok = parts.len() == 3 && two(parts[0], 23) && two(parts[1], 59) && two(parts[2], 59);
    let frac_ok = frac.is_none_or(|f| (1..=9).contains(&f.len()) && f.bytes().all(|c| c.is_ascii_digit()));
    let offset_ok = offset.is_none_or(|o| o.len() == 5 && &o[2..3] == ":" && two(&o[..2], 15) && two(&o[3..], 59));
    clock_ok && frac_ok && offset_ok
}

pub fn finite_in(v: f64, lo: f64, hi: f64) -> bool {
    v.is_finite() && v >= lo && v <= hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times() {
        assert!(valid_date("2028-02-29"));
        assert!(!valid_date("2026-02-29"));
        assert!(!valid_date("2026-13-01"));
        assert!(valid_datetime("2026-09-15T09:30:00+02:00"));
        assert!(valid_datetime("2026-09-15T09:30:00.5Z"));
        assert!(!valid_datetime("2026-09-15 09:30:00"));
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
