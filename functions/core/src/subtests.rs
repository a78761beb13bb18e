//! Subtests (delprøver) and concern thresholds (bekymringsgrenser) of an
//! assessment, as publishers send them and tenant admins register them, and
//! the subtest scores of results, as publishers send them and teachers
//! register them: one set of checks for all, so every way in accepts exactly
//! the same values.
//!
//! Each check is a plain function over what was sent that returns the typed
//! value it stands for ([`AssessmentFields`], [`Subtests`], [`SubtestScores`]):
//! what is stored can only come from here.

use crate::scores::{canonical_date, finite_in};
use crate::web::Checks;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};
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

/// An assessment's own fields as sent: by a publisher in a results post
/// (under `/assessment`), by a tenant admin in `POST /assessments` (at the root).
pub struct AssessmentSent<'a> {
    pub title: &'a str,
    pub subject: &'a str,
    pub year_level: Option<i64>,
    pub max_score: f64,
    pub administered_on: &'a str,
    pub family: Option<&'a str>,
    pub threshold: Option<f64>,
    pub subtests: &'a [SubtestIn],
}

/// An assessment's fields that passed every check, in the form stored
/// (texts trimmed, the date as `YYYY-MM-DD` formatted from its parsed value).
#[derive(Debug, Clone, PartialEq)]
pub struct AssessmentFields {
    pub title: String,
    pub subject: String,
    pub year_level: Option<i64>,
    pub max_score: f64,
    pub administered_on: String,
    pub family: Option<String>,
    pub threshold: Option<f64>,
    pub subtests: Subtests,
}

/// Checks an assessment's fields under `prefix` (`/assessment`, or `` for the
/// root): texts, year level 1–13, maximum, date, family, the threshold on the
/// total within 0..max, and the subtests ([`validate_subtests`]).
///
/// The fields are `None` when any check failed; the subtests that passed
/// come back either way, so that the results sent with a bad assessment are
/// still checked against them (every error of a request at once).
pub fn parse_assessment(
    checks: &mut Checks,
    prefix: &str,
    a: &AssessmentSent<'_>,
) -> (Option<AssessmentFields>, Subtests) {
    let before = checks.0.len();
    check_text(checks, &format!("{prefix}/title"), a.title, 300);
    check_text(checks, &format!("{prefix}/subject"), a.subject, 100);
    if a.year_level.is_some_and(|y| !(1..=13).contains(&y)) {
        checks.fail(&format!("{prefix}/year_level"), "must be from 1 to 13");
    }
    if !finite_in(a.max_score, f64::MIN_POSITIVE, 1e6) {
        checks.fail(&format!("{prefix}/max_score"), "must be greater than 0 and at most 1000000");
    }
    let administered_on = canonical_date(a.administered_on);
    if administered_on.is_none() {
        checks.fail(&format!("{prefix}/administered_on"), "must be a date (YYYY-MM-DD)");
    }
    if let Some(f) = a.family {
        check_text(checks, &format!("{prefix}/family"), f, 200);
    }
    check_threshold(checks, &format!("{prefix}/threshold"), a.threshold, a.max_score, "assessment");
    let subtests = Subtests(validate_subtests(checks, &format!("{prefix}/subtests"), a.subtests));
    let fields = match administered_on {
        Some(administered_on) if checks.0.len() == before => Some(AssessmentFields {
            title: a.title.trim().to_owned(),
            subject: a.subject.trim().to_owned(),
            year_level: a.year_level,
            max_score: a.max_score,
            administered_on,
            family: a.family.map(|f| f.trim().to_owned()),
            threshold: a.threshold,
            subtests: subtests.clone(),
        }),
        _ => None,
    };
    (fields, subtests)
}

/// The subtests of one assessment, each with a key, a title and a maximum
/// that passed [`validate_subtests`] (or were stored after passing it):
/// what subtest scores are checked against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subtests(Vec<ValidSubtest>);

impl Subtests {
    /// Subtests as stored: they passed [`validate_subtests`] on the way in.
    #[must_use]
    pub fn stored(subtests: Vec<ValidSubtest>) -> Self {
        Subtests(subtests)
    }

    /// Subtests as the database answers them:
    /// `[{"id", "title", "max_score", "threshold"}, …]` in the assessment's
    /// order (`jsonb_agg` over `assessment_subtests`); `None` for any other shape.
    #[must_use]
    pub fn from_stored_json(list: &Json) -> Option<Self> {
        let subtests = list
            .as_array()?
            .iter()
            .map(|st| {
                Some(ValidSubtest {
                    key: st["id"].as_str()?.to_owned(),
                    title: st["title"].as_str()?.to_owned(),
                    max_score: st["max_score"].as_f64()?,
                    threshold: st["threshold"].as_f64(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Subtests(subtests))
    }

    /// In the assessment's order.
    #[must_use]
    pub fn as_slice(&self) -> &[ValidSubtest] {
        &self.0
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The subtest `key` (trimmed, as stored).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&ValidSubtest> {
        let key = key.trim();
        self.0.iter().find(|st| st.key == key)
    }

    /// Checks a result's subtest scores: each names one of these subtests,
    /// once (keys trimmed), and is a number from 0 to that subtest's maximum.
    /// Errors go to each score's pointers ([`ScoreIn`]); the scores that
    /// passed come back in the form stored.
    pub fn parse_scores<'a>(
        &self,
        checks: &mut Checks,
        scores: impl IntoIterator<Item = ScoreIn<'a>>,
    ) -> SubtestScores {
        let mut stored = Map::new();
        for s in scores {
            let key = s.key.trim();
            match self.get(key) {
                None => checks.fail(&s.key_pointer, UNKNOWN_SUBTEST),
                Some(_) if stored.contains_key(key) => checks.fail(&s.key_pointer, "duplicate subtest in this result"),
                Some(st) if !finite_in(s.score, 0.0, st.max_score) => {
                    checks.fail(&s.score_pointer, "must be from 0 to the subtest's max_score")
                }
                Some(_) => {
                    stored.insert(key.to_owned(), json!(s.score));
                }
            }
        }
        SubtestScores(stored)
    }
}

/// The message for a subtest score whose key is not a subtest of the assessment.
pub const UNKNOWN_SUBTEST: &str = "is not a subtest of the assessment";

/// One subtest score as sent, with where to point at its key and its score.
pub struct ScoreIn<'a> {
    pub key: &'a str,
    pub score: f64,
    pub key_pointer: String,
    pub score_pointer: String,
}

/// A result's subtest scores that passed [`Subtests::parse_scores`]:
/// `{"<subtest key>": score}`, as `results.subtest_scores` holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubtestScores(Map<String, Json>);

impl SubtestScores {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stored JSON object; `None` (SQL NULL) without scores.
    #[must_use]
    pub fn to_json(&self) -> Option<Json> {
        (!self.is_empty()).then(|| Json::Object(self.0.clone()))
    }

    /// [`SubtestScores::to_json`] as text, for a `text` parameter cast to jsonb.
    #[must_use]
    pub fn to_text(&self) -> Option<String> {
        self.to_json().map(|j| j.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subtests() -> Subtests {
        let st = |key: &str, max_score: f64| ValidSubtest {
            key: key.into(),
            title: key.to_uppercase(),
            max_score,
            threshold: None,
        };
        Subtests::stored(vec![st("a", 10.0), st("b", 5.0)])
    }

    fn score(key: &str, score: f64, n: usize) -> ScoreIn<'_> {
        ScoreIn { key, score, key_pointer: format!("/{n}/id"), score_pointer: format!("/{n}/score") }
    }

    #[test]
    fn subtest_scores_name_known_subtests_once_within_their_maxima() {
        let mut checks = Checks::default();
        let ok = subtests().parse_scores(&mut checks, [score(" a ", 10.0, 0), score("b", 0.0, 1)]);
        assert!(checks.0.is_empty());
        assert_eq!(ok.to_text().as_deref(), Some(r#"{"a":10.0,"b":0.0}"#));
        assert_eq!(subtests().parse_scores(&mut checks, []).to_json(), None);

        let bad = [
            score("c", 1.0, 0),
            score("a", 10.5, 1),
            score("b", -1.0, 2),
            score("b", f64::NAN, 3),
            score("a", 1.0, 4),
            score("a", 2.0, 5),
        ];
        let parsed = subtests().parse_scores(&mut checks, bad);
        let pointers: Vec<&str> = checks.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/0/id", "/1/score", "/2/score", "/3/score", "/5/id"]);
        assert_eq!(checks.0[0].message, UNKNOWN_SUBTEST);
        assert_eq!(parsed.to_text().as_deref(), Some(r#"{"a":1.0}"#));
    }

    #[test]
    fn an_assessment_is_parsed_whole_and_keeps_its_good_subtests() {
        let st = |id: &str, max_score: f64, threshold: Option<f64>| SubtestIn {
            id: id.into(),
            title: "T".into(),
            max_score,
            threshold,
        };
        let sent = [st(" a ", 15.0, Some(5.0)), st("b", 15.0, Some(16.0)), st("", 15.0, None)];
        let a = AssessmentSent {
            title: " Leseprøve ",
            subject: "norsk",
            year_level: Some(3),
            max_score: 30.0,
            administered_on: "2026-10-05",
            family: Some(" lesing "),
            threshold: Some(10.0),
            subtests: &sent[..1],
        };
        let mut checks = Checks::default();
        let (fields, known) = parse_assessment(&mut checks, "/assessment", &a);
        assert!(checks.0.is_empty());
        let fields = fields.unwrap();
        assert_eq!((fields.title.as_str(), fields.family.as_deref()), ("Leseprøve", Some("lesing")));
        assert_eq!(fields.subtests, known);
        assert_eq!(known.get("a").map(|s| s.max_score), Some(15.0));

        let bad = AssessmentSent { administered_on: "2026-02-30", threshold: Some(31.0), subtests: &sent, ..a };
        let (fields, known) = parse_assessment(&mut checks, "", &bad);
        assert_eq!(fields, None);
        let pointers: Vec<&str> = checks.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/administered_on", "/threshold", "/subtests/1/threshold", "/subtests/2/id"]);
        // A bad threshold alone keeps its subtest known; a bad id does not.
        let keys: Vec<&str> = known.as_slice().iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
    }
}
