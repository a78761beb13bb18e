//! The class overview: one group, one assessment, every pupil's latest
//! result and the group's median. The view a teacher opens most, so it is one
//! indexed statement, with the session check, the caller's grants and the
//! access record in the same statement (one round trip).

use crate::pupils::uuid_param;
use crate::scope::{Reader, GROUP_PUPILS_VISIBLE};
use http::StatusCode;
use serde_json::{json, Value as Json};
use tavle_core::db::{uuid, Db, Row};
use tavle_core::problem::field;
use tavle_core::vars::Variables;
use tavle_core::web::{json, path_id, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

/// `$4` group, `$5` assessment. A pupil with several results for the
/// assessment (a publisher's and a manual one) shows the latest recorded.
/// Public so the benchmark can time the bare query behind the route.
pub const OVERVIEW_SQL: &str = concat!(
    "SELECT p.id AS pupil_id, p.given_name, p.family_name, p.special_needs, \
            lr.id AS result_id, lr.score, lr.status, rfc3339(lr.completed_at) AS completed_at, \
            lr.source_id IS NULL AS manual, g.name AS group_name, g.school_id, a.title, a.subject, a.max_score, \
            a.administered_on::text AS administered_on \
     FROM groups g \
     JOIN assessments a ON a.id = $5::uuid AND a.tenant_id = g.tenant_id \
     JOIN group_memberships m ON m.group_id = g.id \
     JOIN pupils p ON p.id = m.pupil_id AND p.tenant_id = g.tenant_id AND NOT p.restricted \
     LEFT JOIN LATERAL (SELECT r.id, r.score, r.status, r.completed_at, r.source_id FROM results r \
                        WHERE r.pupil_id = p.id AND r.assessment_id = a.id \
                        ORDER BY r.updated_at DESC, r.id DESC LIMIT 1) lr ON true \
     WHERE g.id = $4::uuid AND ",
    group_pupils_visible!(),
    // A leader sees the group's pupils of their own schools only: a pupil
    // moved to another school may linger in the old group until its roster.
    " AND (g.id = ANY($2::text[]::uuid[]) OR p.school_id = ANY($3::text[]::uuid[])) \
     ORDER BY p.family_name, p.given_name, p.id"
);

/// The access-log action of a class overview.
pub const OVERVIEW_ACTION: &str = "group.overview_viewed";
/// The pupils an overview's access record names (over `logged_read`'s `data`).
pub const OVERVIEW_CONCERNED: &str = "(SELECT array_agg(pupil_id) FROM data)";

/// Median of the scores of completed results (`None` without any).
pub fn median(mut scores: Vec<f64>) -> Option<f64> {
    scores.retain(|s| s.is_finite());
    if scores.is_empty() {
        return None;
    }
    scores.sort_by(f64::total_cmp);
    let n = scores.len();
    Some(if n % 2 == 1 { scores[n / 2] } else { (scores[n / 2 - 1] + scores[n / 2]) / 2.0 })
}

fn pupil_line(row: &Row) -> Result<Json, Problem> {
    let result = if row.is_null("result_id")? {
        Json::Null
    } else {
        json!({
            "id": row.text("result_id")?,
            "score": row.opt_float("score")?,
            "status": row.text("status")?,
            "completed_at": row.opt_text("completed_at")?,
            "source": if row.bool("manual")? { "manual" } else { "publisher" },
        })
    };
    Ok(json!({
        "id": row.text("pupil_id")?,
        "given_name": row.text("given_name")?,
        "family_name": row.text("family_name")?,
        "special_needs": row.bool("special_needs")?,
        "result": result,
    }))
}

pub async fn class_overview(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    group: &str,
) -> HttpResult {
    let group = path_id(group)?;
    let assessment = uuid_param(req, "assessment_id")?
        .ok_or_else(|| Problem::bad_query(vec![field("/query/assessment_id", "is required")]))?;
    let reader = Reader::of(req, vars, db).await?;
    let params = vec![uuid(&group), uuid(&assessment)];
    let rows = reader.logged_read(db, meta, OVERVIEW_ACTION, OVERVIEW_SQL, OVERVIEW_CONCERNED, params.clone()).await?;

    // The group and assessment columns, read alike from a pupil line or the fallback below.
    let views = |r: &Row| -> Result<(Json, Json), Problem> {
        Ok((
            json!({"id": group, "name": r.text("group_name")?, "school_id": r.text("school_id")?}),
            json!({"id": assessment, "title": r.text("title")?, "subject": r.text("subject")?,
                   "max_score": r.float("max_score")?, "administered_on": r.text("administered_on")?}),
        ))
    };
    let (group_view, assessment_view) = match rows.first() {
        Some(r) => views(r)?,
        // No pupils to show: an empty group in scope, or nothing visible at all (404).
        None => {
            let sql = format!(
                "SELECT g.name AS group_name, g.school_id, a.title, a.subject, a.max_score, \
                        a.administered_on::text AS administered_on \
                 FROM groups g JOIN assessments a ON a.id = $5::uuid AND a.tenant_id = g.tenant_id \
                 WHERE g.id = $4::uuid AND {GROUP_PUPILS_VISIBLE}"
            );
            views(&reader.query_opt(db, &sql, params).await?.ok_or_else(Problem::not_found)?)?
        }
    };
    let completed: Vec<f64> = rows
        .iter()
        .filter(|r| r.opt_text("status").ok().flatten().as_deref() == Some("completed"))
        .filter_map(|r| r.opt_float("score").ok().flatten())
        .collect();
    let pupils = rows.iter().map(pupil_line).collect::<Result<Vec<_>, _>>()?;
    json(
        StatusCode::OK,
        &json!({
            "group": group_view,
            "assessment": assessment_view,
            "completed": completed.len(),
            "median": median(completed),
            "pupils": pupils,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
