//! Manual results: a teacher (or school leader) registers a result for a
//! pupil in scope, or corrects a manual result. Source "manual", with who
//! recorded it and when; a correction keeps the previous value in the audit
//! log. Publishers' results are corrected by the publisher re-sending them.
//!
//! A result may carry subtest scores, `{"<subtest key>": score}`, checked as
//! the ingest checks a publisher's (`tavle_core::subtests`): every key a
//! subtest of the assessment, every score from 0 to that subtest's maximum.
//!
//! The body is validated in full before the transaction begins: the
//! assessment's maximum and subtests it is checked against are read first,
//! and the transaction only gets a [`ValidOutcome`] (checked again there
//! against the assessment as locked).

use crate::scope::{Scope, PUPIL_VISIBLE};
use crate::BODY_LIMIT;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashSet};
use tavle_core::access_log;
use tavle_core::audit::{self, Event};
use tavle_core::db::{transaction, uuid, Db, Row};
use tavle_core::problem::field;
use tavle_core::scores::{canonical_datetime, check_outcome, STATUSES};
use tavle_core::subtests::{ScoreIn, SubtestScores, Subtests};
use tavle_core::vars::Variables;
use tavle_core::web::{json, path_id, read_json, Body, Checks, HttpResult, RequestMeta};
use tavle_core::Problem;

type Request = http::Request<Body>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewResult {
    assessment_id: String,
    #[serde(default)]
    score: Option<f64>,
    status: String,
    #[serde(default)]
    completed_at: Option<String>,
    #[serde(default)]
    subtest_scores: Option<BTreeMap<String, f64>>,
}

/// A correction replaces the result's outcome whole: subtest scores left
/// out are removed, as a score left out is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Correction {
    #[serde(default)]
    score: Option<f64>,
    status: String,
    #[serde(default)]
    completed_at: Option<String>,
    #[serde(default)]
    subtest_scores: Option<BTreeMap<String, f64>>,
}

/// What a body says about the outcome, as sent.
struct OutcomeIn<'a> {
    score: Option<f64>,
    status: &'a str,
    completed_at: Option<&'a str>,
    subtest_scores: Option<&'a BTreeMap<String, f64>>,
}

impl NewResult {
    fn outcome(&self) -> OutcomeIn<'_> {
        OutcomeIn {
            score: self.score,
            status: &self.status,
            completed_at: self.completed_at.as_deref(),
            subtest_scores: self.subtest_scores.as_ref(),
        }
    }
}

impl Correction {
    fn outcome(&self) -> OutcomeIn<'_> {
        OutcomeIn {
            score: self.score,
            status: &self.status,
            completed_at: self.completed_at.as_deref(),
            subtest_scores: self.subtest_scores.as_ref(),
        }
    }
}

/// The assessment a result is checked against: its maximum and subtests.
struct Target {
    max_score: f64,
    subtests: Subtests,
}

/// The `max_score` and `subtests` columns of an assessment `a`.
const TARGET_COLUMNS: &str = "a.max_score, \
     (SELECT coalesce(jsonb_agg(jsonb_build_object('id', st.key, 'title', st.title, 'max_score', st.max_score, \
                                                   'threshold', st.threshold) ORDER BY st.position), '[]'::jsonb) \
      FROM assessment_subtests st WHERE st.assessment_id = a.id) AS subtests";

impl Target {
    fn of(row: &Row) -> Result<Target, Problem> {
        let subtests = Subtests::from_stored_json(&row.json("subtests")?).ok_or_else(Problem::internal)?;
        Ok(Target { max_score: row.float("max_score")?, subtests })
    }
}

/// Columns of a result as answered: see `view`.
const RESULT_COLUMNS: &str = "r.id, r.pupil_id, r.assessment_id, r.score, r.status, \
     rfc3339(r.completed_at) AS completed_at, r.subtest_scores, r.recorded_by, \
     (SELECT display_name FROM users WHERE id = r.recorded_by) AS recorded_by_name, rfc3339(r.updated_at) AS updated_at";

fn view(r: &Row) -> Result<Json, Problem> {
    Ok(json!({
        "id": r.text("id")?,
        "pupil_id": r.text("pupil_id")?,
        "assessment_id": r.text("assessment_id")?,
        "score": r.opt_float("score")?,
        "status": r.text("status")?,
        "completed_at": r.opt_text("completed_at")?,
        "subtest_scores": r.json("subtest_scores")?,
        "source": "manual",
        "recorded_by": {"id": r.text("recorded_by")?, "display_name": r.opt_text("recorded_by_name")?},
        "updated_at": r.text("updated_at")?,
    }))
}

/// A result's score, status, completion time and subtest scores, checked
/// against the assessment's maximum and subtests: what gets stored.
#[derive(Debug, PartialEq)]
struct ValidOutcome {
    score: Option<f64>,
    status: &'static str,
    /// RFC 3339 in UTC.
    completed_at: Option<String>,
    subtest_scores: SubtestScores,
}

impl ValidOutcome {
    fn json(&self) -> Json {
        outcome_json(self.score, self.status, self.completed_at.as_deref(), self.subtest_scores.to_json())
    }
}

/// An RFC 6901 pointer segment.
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Checks an outcome against the assessment; no database work. A subtest
/// score's key is pointed at only when it is one of the assessment's
/// subtests: an unknown key (which might be anything a client sent, personal
/// data in the wrong place included) is never echoed, its error points at
/// `/subtest_scores`.
fn validate(sent: &OutcomeIn<'_>, target: &Target) -> Result<ValidOutcome, Problem> {
    let mut checks = Checks::default();
    check_outcome(&mut checks, "", sent.score, sent.status, sent.completed_at, target.max_score);
    let scores = sent.subtest_scores.into_iter().flatten().map(|(key, score)| {
        let known = target.subtests.get(key).is_some();
        let pointer =
            if known { format!("/subtest_scores/{}", pointer_segment(key.trim())) } else { "/subtest_scores".into() };
        ScoreIn { key, score: *score, key_pointer: pointer.clone(), score_pointer: pointer }
    });
    let subtest_scores = target.subtests.parse_scores(&mut checks, scores);
    // One error per pointer and message (unknown keys all point at the object).
    let mut seen = HashSet::new();
    checks.0.retain(|e| seen.insert((e.pointer.clone(), e.message.clone())));
    checks.finish()?;
    // Both parse: check_outcome accepted them.
    let status = STATUSES.iter().copied().find(|s| *s == sent.status).ok_or_else(Problem::internal)?;
    let completed_at = sent.completed_at.map(|t| canonical_datetime(t).ok_or_else(Problem::internal)).transpose()?;
    Ok(ValidOutcome { score: sent.score, status, completed_at, subtest_scores })
}

/// Inside the transaction: the assessment, locked against a publisher
/// changing it meanwhile, still admits the outcome validated before the
/// transaction began (its maximum and subtests were read then).
async fn still_valid(db: &mut impl Db, scope: &Scope, assessment: &str, sent: &OutcomeIn<'_>) -> Result<(), Problem> {
    let row = db
        .query_opt(
            &format!(
                "SELECT {TARGET_COLUMNS} FROM assessments a WHERE a.id = $1::uuid AND a.tenant_id = $2::uuid FOR SHARE"
            ),
            &[uuid(assessment), uuid(&scope.who.tenant_id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    // The same body against the same assessment validates to the same outcome.
    validate(sent, &Target::of(&row)?).map(|_| ())
}

fn outcome_json(score: Option<f64>, status: &str, completed_at: Option<&str>, subtest_scores: Option<Json>) -> Json {
    json!({"score": score, "status": status, "completed_at": completed_at, "subtest_scores": subtest_scores})
}

/// The pupil, if the caller may see (and so write for) them; locked so that
/// a concurrent restriction waits for this write.
async fn visible_pupil(db: &mut impl Db, scope: &Scope, pupil: &str) -> Result<(), Problem> {
    let mut params = scope.params();
    params.push(uuid(pupil));
    let sql = format!("SELECT p.id FROM pupils p WHERE p.id = $4::uuid AND {PUPIL_VISIBLE} FOR SHARE OF p");
    db.query_opt(&sql, &params).await?.ok_or_else(Problem::not_found)?;
    Ok(())
}

/// Before the transaction: 404 unless the pupil is visible, 422 unless the
/// assessment is the tenant's; its maximum and subtests otherwise.
async fn registration_target(
    db: &mut impl Db,
    scope: &Scope,
    pupil: &str,
    assessment: &str,
) -> Result<Target, Problem> {
    let mut params = scope.params();
    params.extend([uuid(pupil), uuid(assessment)]);
    let sql = format!(
        "SELECT t.* FROM pupils p \
         LEFT JOIN LATERAL (SELECT {TARGET_COLUMNS} FROM assessments a \
                            WHERE a.id = $5::uuid AND a.tenant_id = $1::uuid) t ON true \
         WHERE p.id = $4::uuid AND {PUPIL_VISIBLE}"
    );
    let row = db.query_opt(&sql, &params).await?.ok_or_else(Problem::not_found)?;
    if row.opt_float("max_score")?.is_none() {
        return Err(Problem::validation(vec![field("/assessment_id", "no such assessment")]));
    }
    Target::of(&row)
}

/// Before the transaction: 404 unless the pupil is visible and the result
/// theirs, 409 for a publisher's result; its assessment's id, maximum and
/// subtests otherwise.
async fn correction_target(
    db: &mut impl Db,
    scope: &Scope,
    pupil: &str,
    result: &str,
) -> Result<(String, Target), Problem> {
    let mut params = scope.params();
    params.extend([uuid(pupil), uuid(result)]);
    let sql = format!(
        "SELECT r.source_id IS NULL AS manual, r.assessment_id, {TARGET_COLUMNS} \
         FROM pupils p JOIN results r ON r.pupil_id = p.id AND r.tenant_id = p.tenant_id \
         JOIN assessments a ON a.id = r.assessment_id \
         WHERE p.id = $4::uuid AND r.id = $5::uuid AND {PUPIL_VISIBLE}"
    );
    let row = db.query_opt(&sql, &params).await?.ok_or_else(Problem::not_found)?;
    if !row.bool("manual")? {
        return Err(Problem::conflict(
            "a publisher's result is corrected by the publisher sending it again; \
             register a manual result instead",
        ));
    }
    Ok((row.text("assessment_id")?, Target::of(&row)?))
}

pub async fn register(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    pupil: &str,
) -> HttpResult {
    let pupil = path_id(pupil)?;
    let body: NewResult = read_json(req, BODY_LIMIT)?;
    let assessment = uuid::Uuid::parse_str(&body.assessment_id)
        .map_err(|_| Problem::validation(vec![field("/assessment_id", "must be an assessment id")]))?
        .to_string();
    let scope = Scope::of(req, vars, db).await?;
    let target = registration_target(db, &scope, &pupil, &assessment).await?;
    let sent = body.outcome();
    let outcome = validate(&sent, &target)?;
    transaction(db, async |db| {
        // Again, now locked: the pupil may have left the caller's scope meanwhile.
        visible_pupil(db, &scope, &pupil).await?;
        still_valid(db, &scope, &assessment, &sent).await?;
        let inserted = db
            .query_opt(
                &format!(
                    "WITH r AS (INSERT INTO results (tenant_id, pupil_id, assessment_id, recorded_by, score, status, \
                                                  completed_at, subtest_scores) \
                                VALUES ($1::uuid, $2::uuid, $3::uuid, $4::uuid, $5::float8, $6::text, \
                                        $7::text::timestamptz, $8::text::jsonb) \
                                ON CONFLICT (pupil_id, assessment_id) WHERE source_id IS NULL DO NOTHING \
                                RETURNING *) \
                     SELECT {RESULT_COLUMNS} FROM r"
                ),
                &[
                    uuid(&scope.who.tenant_id),
                    uuid(&pupil),
                    uuid(&assessment),
                    uuid(&scope.who.user_id),
                    outcome.score.into(),
                    outcome.status.into(),
                    outcome.completed_at.clone().into(),
                    outcome.subtest_scores.to_text().into(),
                ],
            )
            .await?;
        let Some(row) = inserted else {
            return Err(Problem::conflict(
                "this pupil already has a manual result for this assessment: correct it with \
                 PUT /pupils/{id}/results/{result_id}",
            ));
        };
        let result = view(&row)?;
        let id = row.text("id")?;
        audit::record(
            db,
            Some(meta),
            Event::by(&scope.who, "result.registered").target("result", &id).details(json!({
                "pupil_id": pupil,
                "assessment_id": assessment,
                "new": outcome.json(),
            })),
        )
        .await?;
        access_log::append(db, &scope.who, meta, "result.registered", vec![pupil.clone()]).await?;
        json(StatusCode::CREATED, &result)
    })
    .await
}

pub async fn correct(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    pupil: &str,
    result: &str,
) -> HttpResult {
    let pupil = path_id(pupil)?;
    let result = path_id(result)?;
    let body: Correction = read_json(req, BODY_LIMIT)?;
    let scope = Scope::of(req, vars, db).await?;
    let (assessment, target) = correction_target(db, &scope, &pupil, &result).await?;
    let sent = body.outcome();
    let outcome = validate(&sent, &target)?;
    transaction(db, async |db| {
        // Again, now locked: pupil and result may have changed meanwhile.
        // The assessment before the result, in the order of every writer
        // that changes a threshold (its refresh locks the assessment's
        // results after the assessment): the other order deadlocks.
        visible_pupil(db, &scope, &pupil).await?;
        still_valid(db, &scope, &assessment, &sent).await?;
        let current = db
            .query_opt(
                "SELECT r.score, r.status, rfc3339(r.completed_at) AS completed_at, r.subtest_scores, r.assessment_id \
                 FROM results r \
                 WHERE r.id = $1::uuid AND r.pupil_id = $2::uuid AND r.tenant_id = $3::uuid AND r.source_id IS NULL \
                   AND r.assessment_id = $4::uuid \
                 FOR UPDATE OF r",
                &[uuid(&result), uuid(&pupil), uuid(&scope.who.tenant_id), uuid(&assessment)],
            )
            .await?
            .ok_or_else(Problem::not_found)?;
        let previous_scores = Some(current.json("subtest_scores")?).filter(|j| !j.is_null());
        let previous = outcome_json(
            current.opt_float("score")?,
            &current.text("status")?,
            current.opt_text("completed_at")?.as_deref(),
            previous_scores,
        );
        let row = db
            .query_one(
                &format!(
                    "WITH r AS (UPDATE results SET score = $2::float8, status = $3::text, \
                                    completed_at = $4::text::timestamptz, recorded_by = $5::uuid, \
                                    subtest_scores = $6::text::jsonb, updated_at = now() \
                                WHERE id = $1::uuid RETURNING *) \
                     SELECT {RESULT_COLUMNS} FROM r"
                ),
                &[
                    uuid(&result),
                    outcome.score.into(),
                    outcome.status.into(),
                    outcome.completed_at.clone().into(),
                    uuid(&scope.who.user_id),
                    outcome.subtest_scores.to_text().into(),
                ],
            )
            .await?;
        audit::record(
            db,
            Some(meta),
            Event::by(&scope.who, "result.corrected").target("result", &result).details(json!({
                "pupil_id": pupil,
                "assessment_id": current.text("assessment_id")?,
                "previous": previous,
                "new": outcome.json(),
            })),
        )
        .await?;
        access_log::append(db, &scope.who, meta, "result.corrected", vec![pupil.clone()]).await?;
        json(StatusCode::OK, &view(&row)?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tavle_core::subtests::ValidSubtest;

    fn target() -> Target {
        let st = |key: &str| ValidSubtest { key: key.into(), title: key.into(), max_score: 10.0, threshold: Some(3.0) };
        Target { max_score: 40.0, subtests: Subtests::stored(vec![st("a"), st("b/c")]) }
    }

    fn outcome<'a>(
        score: Option<f64>,
        status: &'a str,
        completed_at: Option<&'a str>,
        scores: Option<&'a BTreeMap<String, f64>>,
    ) -> OutcomeIn<'a> {
        OutcomeIn { score, status, completed_at, subtest_scores: scores }
    }

    #[test]
    fn outcomes_are_validated_against_the_maximum_and_made_canonical() {
        let scores = BTreeMap::from([(" a ".to_owned(), 2.5), ("b/c".to_owned(), 10.0)]);
        let valid =
            validate(&outcome(Some(31.5), "completed", Some("2026-09-16T10:00:00+02:00"), Some(&scores)), &target())
                .unwrap();
        assert_eq!((valid.score, valid.status), (Some(31.5), "completed"));
        assert_eq!(valid.completed_at.as_deref(), Some("2026-09-16T08:00:00Z"));
        assert_eq!(valid.subtest_scores.to_json(), Some(json!({"a": 2.5, "b/c": 10.0})));
        let absent = validate(&outcome(None, "absent", None, None), &target()).unwrap();
        assert_eq!((absent.completed_at, absent.subtest_scores.to_json()), (None, None));

        let p = validate(&outcome(Some(41.0), "done", Some("2026-09-16 10:00:00+02:00"), None), &target()).unwrap_err();
        assert_eq!(p.status, 422);
        let pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/status", "/score", "/completed_at"]);
        let p = validate(&outcome(None, "completed", None, None), &target()).unwrap_err();
        assert_eq!(p.errors[0].message, "a completed result needs a score");
    }

    #[test]
    fn subtest_scores_name_the_assessments_subtests_within_their_maxima() {
        let bad = BTreeMap::from([
            ("15891550089".to_owned(), 1.0),
            ("x".to_owned(), 1.0),
            ("a".to_owned(), 10.5),
            ("b/c".to_owned(), -1.0),
        ]);
        let p = validate(&outcome(Some(3.0), "completed", None, Some(&bad)), &target()).unwrap_err();
        let errors: Vec<(&str, &str)> = p.errors.iter().map(|e| (e.pointer.as_str(), e.message.as_str())).collect();
        assert_eq!(
            errors,
            [
                ("/subtest_scores", "is not a subtest of the assessment"),
                ("/subtest_scores/a", "must be from 0 to the subtest's max_score"),
                ("/subtest_scores/b~1c", "must be from 0 to the subtest's max_score"),
            ]
        );
        assert!(!format!("{:?}", p.errors).contains("15891550089"), "unknown keys are never echoed");
        // Trimmed keys are one subtest: sent twice, the second is refused.
        let twice = BTreeMap::from([("a".to_owned(), 1.0), ("a ".to_owned(), 2.0)]);
        let p = validate(&outcome(Some(3.0), "completed", None, Some(&twice)), &target()).unwrap_err();
        assert_eq!(p.errors[0].message, "duplicate subtest in this result");
    }
}
