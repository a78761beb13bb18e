//! Subtests (delprøver) and concern thresholds (bekymringsgrenser) of an
//! assessment, as publishers send them and tenant admins register them, so
//! both accept exactly the same values.

use crate::scores::finite_in;
use crate::web::Checks;
use serde::Deserialize;
use std::collections::HashSet;

/// Subtests of one assessment: national screenings have 2 to 6.
pub const MAX_SUBTESTS: usize = 50;

/// Text of bounded length without control characters.
pub fn check_text(checks: &mut Checks, pointer: &str, value: &str, max: usize) {
    let n = value.trim().chars().count();
    if n == 0 || n > max || value.chars().any(char::is_control) {
        checks.fail(pointer, format!("must be 1 to {max} characters without control characters"));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtestIn {
    pub id: String,
    pub title: String,
    pub max_score: f64,
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// A subtest as stored; `key` is the publisher's (or admin's) id, trimmed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSubtest {
    pub key: String,
    pub title: String,
    pub max_score: f64,
    pub threshold: Option<f64>,
}

/// A threshold on a total of `max_score`, pointed at `pointer`.
pub fn check_threshold(checks: &mut Checks, pointer: &str, threshold: Option<f64>, max_score: f64, of: &str) {
    if threshold.is_some_and(|t| !finite_in(t, 0.0, max_score)) {
        checks.fail(pointer, format!("must be from 0 to the {of}'s max_score"));
    }
}

/// An assessment's subtests under `prefix` (`/assessment/subtests`, say):
/// ids unique, titles, maxima, thresholds within 0..max. Returns those whose
/// id, title and maximum passed (the others have failed a check).
pub fn validate_subtests(checks: &mut Checks, prefix: &str, subtests: &[SubtestIn]) -> Vec<ValidSubtest> {
    if subtests.len() > MAX_SUBTESTS {
        checks.fail(prefix, format!("at most {MAX_SUBTESTS} subtests"));
    }
    let mut valid = Vec::with_capacity(subtests.len());
    let mut seen = HashSet::new();
    for (k, st) in subtests.iter().enumerate() {
        let p = format!("{prefix}/{k}");
        let before = checks.0.len();
        check_text(checks, &format!("{p}/id"), &st.id, 100);
        if !seen.insert(st.id.trim()) {
            checks.fail(&format!("{p}/id"), "duplicate subtest id in this assessment");
        }
        check_text(checks, &format!("{p}/title"), &st.title, 300);
        if !finite_in(st.max_score, f64::MIN_POSITIVE, 1e6) {
            checks.fail(&format!("{p}/max_score"), "must be greater than 0 and at most 1000000");
        }
        // A bad threshold alone keeps the subtest known, so that results'
        // scores for it are not reported as scores for an unknown subtest.
        let shape_ok = checks.0.len() == before;
        check_threshold(checks, &format!("{p}/threshold"), st.threshold, st.max_score, "subtest");
        if shape_ok {
            valid.push(ValidSubtest {
                key: st.id.trim().to_owned(),
                title: st.title.trim().to_owned(),
                max_score: st.max_score,
                threshold: st.threshold,
            });
        }
    }
    valid
}
