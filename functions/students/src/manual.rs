//! Manual results: a teacher (or school leader) registers a result for a
//! pupil in scope, or corrects a manual result. Source "manual", with who
//! recorded it and when; a correction keeps the previous value in the audit
//! log. Publishers' results are corrected by the publisher re-sending them.

use crate::scope::{Scope, PUPIL_VISIBLE};
use crate::BODY_LIMIT;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tavle_core::access_log;
use tavle_core::audit::{self, Event};
use tavle_core::db::{transaction, uuid, Db, Row};
use tavle_core::problem::field;
use tavle_core::scores::check_outcome;
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
    transaction(db, async |db| {
        visible_pupil(db, &scope, &pupil).await?;
        let max_score = db
            .query_opt(
                "SELECT max_score FROM assessments WHERE id = $1::uuid AND tenant_id = $2::uuid",
                &[uuid(&assessment), uuid(&scope.who.tenant_id)],
            )
            .await?
            .ok_or_else(|| Problem::validation(vec![field("/assessment_id", "no such assessment")]))?
            .float("max_score")?;
        let mut checks = Checks::default();
        check_outcome(&mut checks, "", body.score, &body.status, body.completed_at.as_deref(), max_score);
        checks.finish()?;

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
                    body.score.into(),
                    body.status.clone().into(),
                    body.completed_at.clone().into(),
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
                "new": outcome_json(body.score, &body.status, body.completed_at.as_deref()),
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
    transaction(db, async |db| {
        visible_pupil(db, &scope, &pupil).await?;
        let current = db
            .query_opt(
                "SELECT r.score, r.status, rfc3339(r.completed_at) AS completed_at, r.source_id IS NULL AS manual, a.max_score, \
                        r.assessment_id \
                 FROM results r JOIN assessments a ON a.id = r.assessment_id \
                 WHERE r.id = $1::uuid AND r.pupil_id = $2::uuid AND r.tenant_id = $3::uuid FOR UPDATE OF r",
                &[uuid(&result), uuid(&pupil), uuid(&scope.who.tenant_id)],
            )
            .await?
            .ok_or_else(Problem::not_found)?;
        if !current.bool("manual")? {
            return Err(Problem::conflict(
                "a publisher's result is corrected by the publisher sending it again; \
                 register a manual result instead",
            ));
        }
        let mut checks = Checks::default();
        check_outcome(&mut checks, "", body.score, &body.status, body.completed_at.as_deref(), current.float("max_score")?);
        checks.finish()?;
        let previous = outcome_json(current.opt_float("score")?, &current.text("status")?, current.opt_text("completed_at")?.as_deref());
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
                    body.score.into(),
                    body.status.clone().into(),
                    body.completed_at.clone().into(),
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
                "new": outcome_json(body.score, &body.status, body.completed_at.as_deref()),
            })),
        )
        .await?;
        access_log::append(db, &scope.who, meta, "result.corrected", vec![pupil.clone()]).await?;
        json(StatusCode::OK, &view(&row)?)
    })
    .await
}
