//! Manual results: a teacher (or school leader) registers a result for a
//! pupil in scope, or corrects a manual result. Source "manual", with who
//! recorded it and when; a correction keeps the previous value in the audit
//! log. Publishers' results are corrected by the publisher re-sending them.
//!
//! The body is validated in full before the transaction begins: the
//! assessment's maximum it is checked against is read first, and the
//! transaction only gets a [`ValidOutcome`].

use crate::scope::{Scope, PUPIL_VISIBLE};
use crate::BODY_LIMIT;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tavle_core::access_log;
use tavle_core::audit::{self, Event};
use tavle_core::db::{transaction, uuid, Db, Row};
use tavle_core::problem::field;
use tavle_core::scores::{canonical_datetime, check_outcome, STATUSES};
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Correction {
    #[serde(default)]
    score: Option<f64>,
    status: String,
    #[serde(default)]
    completed_at: Option<String>,
}

/// Columns of a result as answered: see `view`.
const RESULT_COLUMNS: &str = "r.id, r.pupil_id, r.assessment_id, r.score, r.status, \
     rfc3339(r.completed_at) AS completed_at, r.recorded_by, \
     (SELECT display_name FROM users WHERE id = r.recorded_by) AS recorded_by_name, rfc3339(r.updated_at) AS updated_at";

fn view(r: &Row) -> Result<Json, Problem> {
    Ok(json!({
        "id": r.text("id")?,
        "pupil_id": r.text("pupil_id")?,
        "assessment_id": r.text("assessment_id")?,
        "score": r.opt_float("score")?,
        "status": r.text("status")?,
        "completed_at": r.opt_text("completed_at")?,
        "source": "manual",
        "recorded_by": {"id": r.text("recorded_by")?, "display_name": r.opt_text("recorded_by_name")?},
        "updated_at": r.text("updated_at")?,
    }))
}

/// A result's score, status and completion time, checked against the
/// assessment's maximum: what gets stored.
#[derive(Debug, PartialEq)]
struct ValidOutcome {
    score: Option<f64>,
    status: &'static str,
    /// RFC 3339 in UTC.
    completed_at: Option<String>,
}

impl ValidOutcome {
    fn json(&self) -> Json {
        outcome_json(self.score, self.status, self.completed_at.as_deref())
    }
}

/// Checks an outcome against the assessment's `max_score`; no database work.
fn validate(
    score: Option<f64>,
    status: &str,
    completed_at: Option<&str>,
    max_score: f64,
) -> Result<ValidOutcome, Problem> {
    let mut checks = Checks::default();
    check_outcome(&mut checks, "", score, status, completed_at, max_score);
    checks.finish()?;
    // Both parse: check_outcome accepted them.
    let status = STATUSES.iter().copied().find(|s| *s == status).ok_or_else(Problem::internal)?;
    let completed_at = completed_at.map(|t| canonical_datetime(t).ok_or_else(Problem::internal)).transpose()?;
    Ok(ValidOutcome { score, status, completed_at })
}

/// Inside the transaction: the assessment's maximum, locked against a
/// publisher changing it meanwhile, still admits the validated score (it was
/// read before the transaction began).
async fn still_within_max(
    db: &mut impl Db,
    scope: &Scope,
    assessment: &str,
    outcome: &ValidOutcome,
) -> Result<(), Problem> {
    let row = db
        .query_opt(
            "SELECT max_score FROM assessments WHERE id = $1::uuid AND tenant_id = $2::uuid FOR SHARE",
            &[uuid(assessment), uuid(&scope.who.tenant_id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    let max_score = row.float("max_score")?;
    if outcome.score.is_some_and(|s| s > max_score) {
        return Err(Problem::validation(vec![field("/score", "must be from 0 to the assessment's max_score")]));
    }
    Ok(())
}

fn outcome_json(score: Option<f64>, status: &str, completed_at: Option<&str>) -> Json {
    json!({"score": score, "status": status, "completed_at": completed_at})
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
/// assessment is the tenant's; its `max_score` otherwise.
async fn registration_target(db: &mut impl Db, scope: &Scope, pupil: &str, assessment: &str) -> Result<f64, Problem> {
    let mut params = scope.params();
    params.extend([uuid(pupil), uuid(assessment)]);
    let sql = format!(
        "SELECT (SELECT max_score FROM assessments WHERE id = $5::uuid AND tenant_id = $1::uuid) AS max_score \
         FROM pupils p WHERE p.id = $4::uuid AND {PUPIL_VISIBLE}"
    );
    let row = db.query_opt(&sql, &params).await?.ok_or_else(Problem::not_found)?;
    row.opt_float("max_score")?.ok_or_else(|| Problem::validation(vec![field("/assessment_id", "no such assessment")]))
}

/// Before the transaction: 404 unless the pupil is visible and the result
/// theirs, 409 for a publisher's result; its assessment's `max_score` otherwise.
async fn correction_target(db: &mut impl Db, scope: &Scope, pupil: &str, result: &str) -> Result<f64, Problem> {
    let mut params = scope.params();
    params.extend([uuid(pupil), uuid(result)]);
    let sql = format!(
        "SELECT r.source_id IS NULL AS manual, a.max_score \
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
    Ok(row.float("max_score")?)
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
    let max_score = registration_target(db, &scope, &pupil, &assessment).await?;
    let outcome = validate(body.score, &body.status, body.completed_at.as_deref(), max_score)?;
    transaction(db, async |db| {
        // Again, now locked: the pupil may have left the caller's scope meanwhile.
        visible_pupil(db, &scope, &pupil).await?;
        still_within_max(db, &scope, &assessment, &outcome).await?;
        let inserted = db
            .query_opt(
                &format!(
                    "WITH r AS (INSERT INTO results (tenant_id, pupil_id, assessment_id, recorded_by, score, status, \
                                                  completed_at) \
                                VALUES ($1::uuid, $2::uuid, $3::uuid, $4::uuid, $5::float8, $6::text, \
                                        $7::text::timestamptz) \
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
    let max_score = correction_target(db, &scope, &pupil, &result).await?;
    let outcome = validate(body.score, &body.status, body.completed_at.as_deref(), max_score)?;
    transaction(db, async |db| {
        // Again, now locked: pupil and result may have changed meanwhile.
        visible_pupil(db, &scope, &pupil).await?;
        let current = db
            .query_opt(
                "SELECT r.score, r.status, rfc3339(r.completed_at) AS completed_at, r.assessment_id FROM results r \
                 WHERE r.id = $1::uuid AND r.pupil_id = $2::uuid AND r.tenant_id = $3::uuid AND r.source_id IS NULL \
                 FOR UPDATE OF r",
                &[uuid(&result), uuid(&pupil), uuid(&scope.who.tenant_id)],
            )
            .await?
            .ok_or_else(Problem::not_found)?;
        still_within_max(db, &scope, &current.text("assessment_id")?, &outcome).await?;
        let previous = outcome_json(
            current.opt_float("score")?,
            &current.text("status")?,
            current.opt_text("completed_at")?.as_deref(),
        );
        let row = db
            .query_one(
                &format!(
                    "WITH r AS (UPDATE results SET score = $2::float8, status = $3::text, \
                                    completed_at = $4::text::timestamptz, recorded_by = $5::uuid, updated_at = now() \
                                WHERE id = $1::uuid RETURNING *) \
                     SELECT {RESULT_COLUMNS} FROM r"
                ),
                &[
                    uuid(&result),
                    outcome.score.into(),
                    outcome.status.into(),
                    outcome.completed_at.clone().into(),
                    uuid(&scope.who.user_id),
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

    #[test]
    fn outcomes_are_validated_against_the_maximum_and_made_canonical() {
        let valid = validate(Some(31.5), "completed", Some("2026-09-16T10:00:00+02:00"), 40.0).unwrap();
        let want =
            ValidOutcome { score: Some(31.5), status: "completed", completed_at: Some("2026-09-16T08:00:00Z".into()) };
        assert_eq!(valid, want);
        assert_eq!(validate(None, "absent", None, 40.0).unwrap().completed_at, None);

        let p = validate(Some(41.0), "done", Some("2026-09-16 10:00:00+02:00"), 40.0).unwrap_err();
        assert_eq!(p.status, 422);
        let pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/status", "/score", "/completed_at"]);
        let p = validate(None, "completed", None, 40.0).unwrap_err();
        assert_eq!(p.errors[0].message, "a completed result needs a score");
    }
}
