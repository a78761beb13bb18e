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
use tavle_core::web::{json, path_id, query_param, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

/// The assessment's subtests in the publisher's order, as JSON: uncorrelated
/// (`$5`), so it is evaluated once per statement, not per pupil.
macro_rules! overview_subtests {
    () => {
        "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', st.key, 'title', st.title, 'max_score', st.max_score, \
                                                      'threshold', st.threshold) ORDER BY st.position), '[]'::jsonb) \
          FROM assessment_subtests st WHERE st.assessment_id = $5::uuid AND st.tenant_id = $1::uuid) AS subtests"
    };
}

/// Flags of a result `r`, as stored with it (migration 0016 keeps them
/// right when the result or a threshold changes): only a completed result
/// is flagged (absent, exempt and incomplete ones are shown as such, never
/// as low scores); `total_flagged` when its score is at or below the
/// total's threshold, `flagged_subtests` the keys of the subtests whose
/// score is at or below theirs (publisher's order).
macro_rules! result_flags {
    ($r:literal) => {
        concat!("coalesce(", $r, ".total_flagged, false) AS total_flagged, ", $r, ".flagged_subtests")
    };
}

/// `$4` group, `$5` assessment. A pupil with several results for the
/// assessment (a publisher's and a manual one) shows the latest recorded.
/// Public so the benchmark can time the bare query behind the route.
pub const OVERVIEW_SQL: &str = concat!(
    "SELECT p.id AS pupil_id, p.given_name, p.family_name, p.special_needs, \
            lr.id AS result_id, lr.score, lr.status, rfc3339(lr.completed_at) AS completed_at, \
            lr.source_id IS NULL AS manual, lr.subtest_scores, ",
    result_flags!("lr"),
    ", g.name AS group_name, g.school_id, a.title, a.subject, a.max_score, \
            a.administered_on::text AS administered_on, a.family, a.threshold, ",
    overview_subtests!(),
    " FROM groups g \
     JOIN assessments a ON a.id = $5::uuid AND a.tenant_id = g.tenant_id \
     JOIN group_memberships m ON m.group_id = g.id \
     JOIN pupils p ON p.id = m.pupil_id AND p.tenant_id = g.tenant_id AND NOT p.restricted \
     LEFT JOIN LATERAL (SELECT r.id, r.score, r.status, r.completed_at, r.source_id, r.subtest_scores, r.total_flagged, \
                                  r.flagged_subtests FROM results r \
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

/// A result's subtest scores in the assessment's order (`subtests` as the
/// statement's JSON), each with its flag; subtests without a score are left out.
pub fn subtest_scores(row: &Row, subtests: &Json) -> Result<Vec<Json>, Problem> {
    let scores = row.json("subtest_scores")?;
    let flagged = row.text_array("flagged_subtests")?;
    let mut out = Vec::new();
    for st in subtests.as_array().into_iter().flatten() {
        let Some(id) = st["id"].as_str() else { continue };
        if let Some(score) = scores.get(id).and_then(Json::as_f64) {
            out.push(json!({"id": id, "score": score, "flagged": flagged.iter().any(|f| f == id)}));
        }
    }
    Ok(out)
}

/// A pupil line and whether any of its result's scores is flagged.
fn pupil_line(row: &Row, subtests: &Json) -> Result<(Json, bool), Problem> {
    let (result, flagged) = if row.is_null("result_id")? {
        (Json::Null, false)
    } else {
        let total = row.bool("total_flagged")?;
        let scores = subtest_scores(row, subtests)?;
        let any = total || scores.iter().any(|s| s["flagged"] == true);
        let result = json!({
            "id": row.text("result_id")?,
            "score": row.opt_float("score")?,
            "status": row.text("status")?,
            "completed_at": row.opt_text("completed_at")?,
            "source": if row.bool("manual")? { "manual" } else { "publisher" },
            "flagged": total,
            "subtests": scores,
        });
        (result, any)
    };
    let line = json!({
        "id": row.text("pupil_id")?,
        "given_name": row.text("given_name")?,
        "family_name": row.text("family_name")?,
        "special_needs": row.bool("special_needs")?,
        "flagged": flagged,
        "result": result,
    });
    Ok((line, flagged))
}

/// `flagged_first`: `true` or `false` (the default).
fn bool_param(req: &http::Request<Body>, name: &str) -> Result<bool, Problem> {
    match query_param(req, name)?.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(Problem::bad_query(vec![field(format!("/query/{name}"), "must be true or false")])),
    }
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
    let flagged_first = bool_param(req, "flagged_first")?;
    let reader = Reader::of(req, vars, db).await?;
    let params = vec![uuid(&group), uuid(&assessment)];
    let rows = reader.logged_read(db, meta, OVERVIEW_ACTION, OVERVIEW_SQL, OVERVIEW_CONCERNED, params.clone()).await?;

    // The group and assessment columns, read alike from a pupil line or the fallback below.
    let views = |r: &Row| -> Result<(Json, Json), Problem> {
        Ok((
            json!({"id": group, "name": r.text("group_name")?, "school_id": r.text("school_id")?}),
            json!({"id": assessment, "title": r.text("title")?, "subject": r.text("subject")?,
                   "max_score": r.float("max_score")?, "administered_on": r.text("administered_on")?,
                   "family": r.opt_text("family")?, "threshold": r.opt_float("threshold")?,
                   "subtests": r.json("subtests")?}),
        ))
    };
    let (group_view, assessment_view) = match rows.first() {
        Some(r) => views(r)?,
        // No pupils to show: an empty group in scope, or nothing visible at all (404).
        None => {
            let sql = format!(
                "SELECT g.name AS group_name, g.school_id, a.title, a.subject, a.max_score, \
                        a.administered_on::text AS administered_on, a.family, a.threshold, {} \
                 FROM groups g JOIN assessments a ON a.id = $5::uuid AND a.tenant_id = g.tenant_id \
                 WHERE g.id = $4::uuid AND {GROUP_PUPILS_VISIBLE}",
                overview_subtests!()
            );
            views(&reader.query_opt(db, &sql, params).await?.ok_or_else(Problem::not_found)?)?
        }
    };
    let completed: Vec<f64> = rows
        .iter()
        .filter(|r| r.opt_text("status").ok().flatten().as_deref() == Some("completed"))
        .filter_map(|r| r.opt_float("score").ok().flatten())
        .collect();
    let mut assessment_view = assessment_view;
    let subtests = assessment_view["subtests"].clone();
    let mut lines = Vec::with_capacity(rows.len());
    let mut flagged_pupils = 0;
    for row in &rows {
        let (line, flagged) = pupil_line(row, &subtests)?;
        flagged_pupils += usize::from(flagged);
        lines.push((line, flagged));
    }
    // Per subtest (and the total), how many pupils are at or below its threshold.
    let count = |pred: &dyn Fn(&Json) -> bool| lines.iter().filter(|(l, _)| pred(&l["result"])).count();
    assessment_view["flagged_count"] = json!(count(&|r| r["flagged"] == true));
    if let Some(list) = assessment_view["subtests"].as_array_mut() {
        for st in list {
            let id = st["id"].clone();
            st["flagged_count"] = json!(count(&|r| r["subtests"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x["id"] == id && x["flagged"] == true))));
        }
    }
    if flagged_first {
        // Stable: names keep their order within flagged and unflagged pupils.
        lines.sort_by_key(|(_, flagged)| !flagged);
    }
    let pupils: Vec<Json> = lines.into_iter().map(|(l, _)| l).collect();
    json(
        StatusCode::OK,
        &json!({
            "group": group_view,
            "assessment": assessment_view,
            "completed": completed.len(),
            "median": median(completed),
            "flagged_pupils": flagged_pupils,
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
