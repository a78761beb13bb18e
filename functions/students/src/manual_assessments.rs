//! Assessments registered manually by a tenant admin (a municipality's own
//! screening, or a test whose publisher sends no results): with subtests and
//! concern thresholds, which the admin may change later. A publisher's
//! assessment is changed by the publisher re-sending it (409 here), as its
//! results are.
//!
//! Bodies are validated in full before the transaction begins; the
//! thresholds of a change are checked against the maxima read first, and
//! again under lock.

use crate::BODY_LIMIT;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tavle_core::audit::{self, Event};
use tavle_core::auth::{authenticate_as, Principal, Role};
use tavle_core::db::{transaction, uuid, Db, Row, Value};
use tavle_core::subtests::{
    check_threshold, parse_assessment, AssessmentFields, AssessmentSent, SubtestIn, UNKNOWN_SUBTEST,
};
use tavle_core::vars::Variables;
use tavle_core::web::{json, path_id, read_json, Body, Checks, HttpResult, RequestMeta};
use tavle_core::Problem;

type Request = http::Request<Body>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAssessment {
    title: String,
    subject: String,
    #[serde(default)]
    year_level: Option<i64>,
    max_score: f64,
    administered_on: String,
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    subtests: Vec<SubtestIn>,
}

/// Checks a new assessment whole, as the ingest checks a publisher's
/// (`tavle_core::subtests::parse_assessment`); no database work.
fn validate_new(a: NewAssessment) -> Result<AssessmentFields, Problem> {
    let mut checks = Checks::default();
    let sent = AssessmentSent {
        title: &a.title,
        subject: &a.subject,
        year_level: a.year_level,
        max_score: a.max_score,
        administered_on: &a.administered_on,
        family: a.family.as_deref(),
        threshold: a.threshold,
        subtests: &a.subtests,
    };
    let (fields, _) = parse_assessment(&mut checks, "", &sent);
    checks.finish()?;
    fields.ok_or_else(Problem::internal)
}

/// A change of thresholds: the total's (`null` removes it) and, per
/// subtest named, that subtest's. Subtests not named keep theirs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdChange {
    threshold: Option<f64>,
    #[serde(default)]
    subtests: Vec<SubtestThreshold>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubtestThreshold {
    id: String,
    threshold: Option<f64>,
}

/// The assessment as stored, for checking a change against it.
struct Stored {
    manual: bool,
    max_score: f64,
    threshold: Option<f64>,
    /// (key, max score, threshold) in order.
    subtests: Vec<(String, f64, Option<f64>)>,
}

/// Checks a change against the stored maxima; the new (key, threshold)
/// pairs, each subtest once.
fn validate_change(change: &ThresholdChange, stored: &Stored) -> Result<Vec<(String, Option<f64>)>, Problem> {
    let mut checks = Checks::default();
    check_threshold(&mut checks, "/threshold", change.threshold, stored.max_score, "assessment");
    let mut out: Vec<(String, Option<f64>)> = Vec::new();
    for (i, st) in change.subtests.iter().enumerate() {
        let key = st.id.trim();
        match stored.subtests.iter().find(|(k, _, _)| k == key) {
            None => checks.fail(&format!("/subtests/{i}/id"), UNKNOWN_SUBTEST),
            Some(_) if out.iter().any(|(k, _)| k == key) => {
                checks.fail(&format!("/subtests/{i}/id"), "duplicate subtest in this change")
            }
            Some((_, max, _)) => {
                check_threshold(&mut checks, &format!("/subtests/{i}/threshold"), st.threshold, *max, "subtest");
                out.push((key.to_owned(), st.threshold));
            }
        }
    }
    checks.finish()?;
    Ok(out)
}

const ASSESSMENT_SQL: &str = "SELECT a.id, a.title, a.subject, a.year_level, a.max_score, \
            a.administered_on::text AS administered_on, a.family, a.threshold, a.source_id IS NULL AS manual, \
            (SELECT coalesce(jsonb_agg(jsonb_build_object('id', st.key, 'title', st.title, 'max_score', st.max_score, \
                                                          'threshold', st.threshold) ORDER BY st.position), '[]'::jsonb) \
             FROM assessment_subtests st WHERE st.assessment_id = a.id) AS subtests \
     FROM assessments a WHERE a.id = $1::uuid AND a.tenant_id = $2::uuid";

fn view(r: &Row) -> Result<Json, Problem> {
    Ok(json!({
        "id": r.text("id")?,
        "title": r.text("title")?,
        "subject": r.text("subject")?,
        "year_level": r.opt_int("year_level")?,
        "max_score": r.float("max_score")?,
        "administered_on": r.text("administered_on")?,
        "family": r.opt_text("family")?,
        "threshold": r.opt_float("threshold")?,
        "source": if r.bool("manual")? { "manual" } else { "publisher" },
        "subtests": r.json("subtests")?,
    }))
}

async fn admin(req: &Request, vars: &impl Variables, db: &mut impl Db) -> Result<Principal, Problem> {
    authenticate_as(req, db, vars, Role::TenantAdmin).await
}

/// `POST /assessments`: a tenant admin registers an assessment, with its
/// subtests and thresholds, for teachers to register results against.
pub async fn register(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let body: NewAssessment = read_json(req, BODY_LIMIT)?;
    let a = validate_new(body)?;
    let who = admin(req, vars, db).await?;
    transaction(db, async |db| {
        let id = db
            .query_one(
                "INSERT INTO assessments (tenant_id, created_by, title, subject, year_level, max_score, administered_on, \
                                          family, threshold) \
                 VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::int8::int, $6::float8, $7::text::date, $8::text, \
                         $9::float8) RETURNING id",
                &[
                    uuid(&who.tenant_id),
                    uuid(&who.user_id),
                    a.title.clone().into(),
                    a.subject.clone().into(),
                    a.year_level.into(),
                    Value::Float(a.max_score),
                    a.administered_on.clone().into(),
                    a.family.clone().into(),
                    a.threshold.into(),
                ],
            )
            .await?
            .text("id")?;
        if !a.subtests.is_empty() {
            db.execute(
                "INSERT INTO assessment_subtests (tenant_id, assessment_id, key, position, title, max_score, threshold) \
                 SELECT $1::uuid, $2::uuid, x.k, (x.n - 1)::int, x.t, x.m::float8, nullif(x.th, '')::float8 \
                 FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS x(k, t, m, th, n)",
                &[
                    uuid(&who.tenant_id),
                    uuid(&id),
                    Value::text_array(a.subtests.as_slice().iter().map(|st| st.key.clone())),
                    Value::text_array(a.subtests.as_slice().iter().map(|st| st.title.clone())),
                    Value::text_array(a.subtests.as_slice().iter().map(|st| st.max_score.to_string())),
                    Value::text_array(
                        a.subtests.as_slice().iter().map(|st| st.threshold.map(|t| t.to_string()).unwrap_or_default()),
                    ),
                ],
            )
            .await?;
        }
        let row = db.query_one(ASSESSMENT_SQL, &[uuid(&id), uuid(&who.tenant_id)]).await?;
        let view = view(&row)?;
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "assessment.registered").target("assessment", &id).details(json!({
                "threshold": a.threshold,
                "subtests": view["subtests"],
            })),
        )
        .await?;
        json(StatusCode::CREATED, &view)
    })
    .await
}

async fn stored(db: &mut impl Db, who: &Principal, id: &str, lock: bool) -> Result<Stored, Problem> {
    let sql = format!(
        "SELECT a.source_id IS NULL AS manual, a.max_score, a.threshold, \
                coalesce((SELECT jsonb_agg(jsonb_build_array(st.key, st.max_score, st.threshold) ORDER BY st.position) \
                          FROM assessment_subtests st WHERE st.assessment_id = a.id), '[]'::jsonb) AS subtests \
         FROM assessments a WHERE a.id = $1::uuid AND a.tenant_id = $2::uuid{}",
        // As ingest locks an assessment it changes (functions/ingest, results.rs).
        if lock { " FOR NO KEY UPDATE" } else { "" }
    );
    let row = db.query_opt(&sql, &[uuid(id), uuid(&who.tenant_id)]).await?.ok_or_else(Problem::not_found)?;
    let subtests = row
        .json("subtests")?
        .as_array()
        .ok_or_else(Problem::internal)?
        .iter()
        .map(|st| Some((st[0].as_str()?.to_owned(), st[1].as_f64()?, st[2].as_f64())))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(Problem::internal)?;
    Ok(Stored {
        manual: row.bool("manual")?,
        max_score: row.float("max_score")?,
        threshold: row.opt_float("threshold")?,
        subtests,
    })
}

/// `PUT /assessments/{id}/thresholds`: a tenant admin changes the
/// thresholds of an assessment registered manually; the previous values go
/// to the audit log, and the answer lists what changed.
pub async fn set_thresholds(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let id = path_id(id)?;
    let change: ThresholdChange = read_json(req, BODY_LIMIT)?;
    let who = admin(req, vars, db).await?;
    let before = stored(db, &who, &id, false).await?;
    if !before.manual {
        return Err(Problem::conflict(
            "a publisher's assessment is changed by the publisher sending it again with its thresholds",
        ));
    }
    let subtests = validate_change(&change, &before)?;
    transaction(db, async |db| {
        // Again, under lock: the maxima it was checked against still hold.
        let now = stored(db, &who, &id, true).await?;
        let subtests = validate_change(&change, &now).map(|_| subtests.clone())?;
        db.execute(
            "UPDATE assessments SET threshold = $3::float8, updated_at = now() WHERE id = $1::uuid AND tenant_id = $2::uuid",
            &[uuid(&id), uuid(&who.tenant_id), change.threshold.into()],
        )
        .await?;
        if !subtests.is_empty() {
            db.execute(
                "UPDATE assessment_subtests st SET threshold = nullif(x.th, '')::float8 \
                 FROM unnest($3::text[], $4::text[]) AS x(k, th) \
                 WHERE st.assessment_id = $1::uuid AND st.tenant_id = $2::uuid AND st.key = x.k",
                &[
                    uuid(&id),
                    uuid(&who.tenant_id),
                    Value::text_array(subtests.iter().map(|(k, _)| k.clone())),
                    Value::text_array(subtests.iter().map(|(_, t)| t.map(|t| t.to_string()).unwrap_or_default())),
                ],
            )
            .await?;
        }
        let mut changes = Vec::new();
        if now.threshold != change.threshold {
            changes.push(json!({"subtest": null, "from": now.threshold, "to": change.threshold}));
        }
        for (key, to) in &subtests {
            let from = now.subtests.iter().find(|(k, _, _)| k == key).and_then(|(_, _, t)| *t);
            if from != *to {
                changes.push(json!({"subtest": key, "from": from, "to": to}));
            }
        }
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "assessment.thresholds_changed")
                .target("assessment", &id)
                .details(json!({"threshold_changes": changes})),
        )
        .await?;
        let row = db.query_one(ASSESSMENT_SQL, &[uuid(&id), uuid(&who.tenant_id)]).await?;
        let mut view = view(&row)?;
        view["threshold_changes"] = Json::Array(changes);
        json(StatusCode::OK, &view)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(body: Json) -> Result<AssessmentFields, Problem> {
        validate_new(tavle_core::web::from_value(body)?)
    }

    #[test]
    fn a_new_assessment_is_checked_whole() {
        let a =
            new(json!({"title": " Leseprøve ", "subject": "norsk", "max_score": 30, "administered_on": "2026-10-05",
                           "threshold": 10, "subtests": [{"id": "a", "title": "A", "max_score": 15, "threshold": 5}]}))
            .unwrap();
        assert_eq!((a.title.as_str(), a.threshold, a.subtests.as_slice().len()), ("Leseprøve", Some(10.0), 1));
        let p = new(json!({"title": "", "subject": "norsk", "max_score": 30, "administered_on": "2026-02-30",
                           "threshold": 31, "subtests": [{"id": "a", "title": "A", "max_score": 15, "threshold": -1}]}))
        .err()
        .unwrap();
        let pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/title", "/administered_on", "/threshold", "/subtests/0/threshold"]);
    }

    #[test]
    fn a_change_names_known_subtests_once_within_their_maxima() {
        let stored = Stored {
            manual: true,
            max_score: 30.0,
            threshold: Some(10.0),
            subtests: vec![("a".into(), 15.0, Some(5.0)), ("b".into(), 15.0, None)],
        };
        let change = |body: Json| -> ThresholdChange { serde_json::from_value(body).unwrap() };
        let ok =
            validate_change(&change(json!({"threshold": 12, "subtests": [{"id": " b ", "threshold": 4}]})), &stored);
        assert_eq!(ok.unwrap(), [("b".to_owned(), Some(4.0))]);
        let p = validate_change(
            &change(json!({"threshold": 31, "subtests": [{"id": "c", "threshold": 1}, {"id": "a", "threshold": 16},
                                                          {"id": "a", "threshold": 1}]})),
            &stored,
        )
        .unwrap_err();
        let pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/threshold", "/subtests/0/id", "/subtests/1/threshold", "/subtests/2/id"]);
    }
}
