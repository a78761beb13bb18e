//! Results posts: one assessment and a batch of results.
//!
//! [`validate`] checks the whole post before any transaction begins: a
//! schema or value error rejects it (422, a pointer per bad row, nothing
//! stored). [`apply`] then only does database work. Rows for pupils unknown
//! in the source's tenant, or whose processing is restricted, are not stored
//! and are listed in the 200 answer. Results are upserted by (source,
//! external result id).

use crate::pupils::{self, PupilIdentifiers, PupilKey};
use crate::IngestConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashSet;
use tavle_core::audit::{self, Actor, Event};
use tavle_core::db::{uuid, Db, Value};
use tavle_core::scores::{canonical_date, canonical_datetime, check_outcome, finite_in, STATUSES};
use tavle_core::web::{Checks, RequestMeta};
use tavle_core::Problem;

pub const MAX_RESULTS: usize = 10_000;
const MAX_ITEMS: usize = 1_000;
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsPost {
    assessment: AssessmentIn,
    results: Vec<ResultIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssessmentIn {
    external_id: String,
    title: String,
    subject: String,
    #[serde(default)]
    year_level: Option<i64>,
    max_score: f64,
    administered_on: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultIn {
    external_id: String,
    pupil: PupilIdentifiers,
    #[serde(default)]
    score: Option<f64>,
    status: String,
    #[serde(default)]
    completed_at: Option<String>,
    #[serde(default)]
    items: Vec<ItemIn>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ItemIn {
    item: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
}

/// Text of bounded length without control characters.
pub fn check_text(checks: &mut Checks, pointer: &str, value: &str, max: usize) {
    let n = value.trim().chars().count();
    if n == 0 || n > max || value.chars().any(char::is_control) {
        checks.fail(pointer, format!("must be 1 to {max} characters without control characters"));
    }
}

/// A results post that passed every check, in the form it is stored.
pub struct ValidResultsPost {
    assessment: ValidAssessment,
    results: Vec<ValidResult>,
}

struct ValidAssessment {
    external_id: String,
    title: String,
    subject: String,
    year_level: Option<i64>,
    max_score: f64,
    /// `YYYY-MM-DD`, formatted from the parsed date.
    administered_on: String,
}

struct ValidResult {
    /// Position in the post, for `rejected_rows` and pointers.
    index: usize,
    /// As sent: results are found again by it.
    external_id: String,
    pupil: PupilKey,
    score: Option<f64>,
    status: &'static str,
    /// RFC 3339 in UTC.
    completed_at: Option<String>,
    /// The items as JSON text; `None` without any.
    items: Option<String>,
}

/// Checks a whole results post; no database work. Errors come in the order
/// of the post, every bad field of every row at once.
pub fn validate(post: ResultsPost, cfg: &IngestConfig, tenant_id: &str) -> Result<ValidResultsPost, Problem> {
    let mut checks = Checks::default();
    let a = &post.assessment;
    check_text(&mut checks, "/assessment/external_id", &a.external_id, 200);
    check_text(&mut checks, "/assessment/title", &a.title, 300);
    check_text(&mut checks, "/assessment/subject", &a.subject, 100);
    if a.year_level.is_some_and(|y| !(1..=13).contains(&y)) {
        checks.fail("/assessment/year_level", "must be from 1 to 13");
    }
    if !finite_in(a.max_score, f64::MIN_POSITIVE, 1e6) {
        checks.fail("/assessment/max_score", "must be greater than 0 and at most 1000000");
    }
    let administered_on = canonical_date(&a.administered_on);
    if administered_on.is_none() {
        checks.fail("/assessment/administered_on", "must be a date (YYYY-MM-DD)");
    }
    if post.results.is_empty() || post.results.len() > MAX_RESULTS {
        checks.fail("/results", format!("must hold 1 to {MAX_RESULTS} results"));
        return Err(Problem::validation(checks.0));
    }
    let mut results = Vec::with_capacity(post.results.len());
    let mut seen_ids = HashSet::with_capacity(post.results.len());
    let mut seen_pupils = HashSet::with_capacity(post.results.len());
    for (i, r) in post.results.iter().enumerate() {
        let p = format!("/results/{i}");
        check_text(&mut checks, &format!("{p}/external_id"), &r.external_id, 200);
        if !seen_ids.insert(r.external_id.as_str()) {
            checks.fail(&format!("{p}/external_id"), "duplicate external_id in this post");
        }
        check_outcome(&mut checks, &p, r.score, &r.status, r.completed_at.as_deref(), a.max_score);
        if r.items.len() > MAX_ITEMS {
            checks.fail(&format!("{p}/items"), format!("at most {MAX_ITEMS} items"));
        }
        for (j, item) in r.items.iter().enumerate() {
            check_text(&mut checks, &format!("{p}/items/{j}/item"), &item.item, 100);
            for (name, v) in [("score", item.score), ("max_score", item.max_score)] {
                if v.is_some_and(|v| !finite_in(v, 0.0, 1e6)) {
                    checks.fail(&format!("{p}/items/{j}/{name}"), "must be from 0 to 1000000");
                }
            }
            if item.answer.as_deref().is_some_and(|t| t.chars().count() > 1000) {
                checks.fail(&format!("{p}/items/{j}/answer"), "at most 1000 characters");
            }
        }
        // Results find pupils by the blind index; the number itself is not kept.
        let key = pupils::parse(&r.pupil, cfg, tenant_id, &format!("{p}/pupil"), &mut checks)
            .map(|key| PupilKey { identity: None, ..key });
        if let Some(key) = &key {
            // One result per pupil and assessment in a post; a second is a mistake.
            if !seen_pupils.insert(key.dedup_key()) {
                checks.fail(&format!("{p}/pupil"), "this pupil already has a result in this post");
            }
        }
        // Whatever does not parse here has already failed a check above.
        let status = STATUSES.iter().copied().find(|s| *s == r.status);
        let completed_at = match &r.completed_at {
            None => Some(None),
            Some(t) => canonical_datetime(t).map(Some),
        };
        if let (Some(pupil), Some(status), Some(completed_at)) = (key, status, completed_at) {
            let items = if r.items.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&r.items).map_err(|_| Problem::internal())?)
            };
            let external_id = r.external_id.clone();
            results.push(ValidResult { index: i, external_id, pupil, score: r.score, status, completed_at, items });
        }
    }
    checks.finish()?;
    let Some(administered_on) = administered_on else { return Err(Problem::internal()) };
    if results.len() != post.results.len() {
        // A row that did not parse but failed no check: a bug here, not the sender's.
        return Err(Problem::internal());
    }
    let assessment = ValidAssessment {
        external_id: a.external_id.trim().to_owned(),
        title: a.title.trim().to_owned(),
        subject: a.subject.trim().to_owned(),
        year_level: a.year_level,
        max_score: a.max_score,
        administered_on,
    };
    Ok(ValidResultsPost { assessment, results })
}

/// The assessment of a results post, created or updated by (source,
/// external id). `$1` tenant, `$2` source, `$3` external id, `$4` title,
/// `$5` subject, `$6` year level, `$7` max score, `$8` date administered.
pub const ASSESSMENT_UPSERT_SQL: &str =
    "INSERT INTO assessments (tenant_id, source_id, external_id, title, subject, year_level, max_score, administered_on) \
     VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::int8::int, $7::float8, $8::text::date) \
     ON CONFLICT (source_id, external_id) DO UPDATE SET title = EXCLUDED.title, subject = EXCLUDED.subject, \
         year_level = EXCLUDED.year_level, max_score = EXCLUDED.max_score, \
         administered_on = EXCLUDED.administered_on, updated_at = now() \
     RETURNING id";

/// External ids of the post that are already held for a restricted pupil.
/// `$1` source, `$2` the post's external result ids.
pub const HELD_FOR_RESTRICTED_SQL: &str = "SELECT r.external_id FROM results r JOIN pupils p ON p.id = r.pupil_id \
     WHERE r.source_id = $1::uuid AND r.external_id = ANY($2::text[]) AND p.restricted";

macro_rules! result_columns {
    () => {
        "tenant_id, pupil_id, assessment_id, source_id, external_id, score, status, completed_at, items"
    };
}

/// The columns [`RESULTS_UPSERT_SQL`] fills, in its order.
pub const RESULT_COLUMNS: &str = result_columns!();

/// The rows of a results post, upserted by (source, external id); a result
/// held for a restricted pupil and an unchanged one are left alone. `$1`
/// tenant, `$2` assessment, `$3` source, then one `text[]` each of external
/// ids, pupil ids, scores, statuses, completion times and items (`''` for
/// none). One row per insert or change: `inserted`, `external_id`.
pub const RESULTS_UPSERT_SQL: &str = concat!(
    "INSERT INTO results (",
    result_columns!(),
    ") \
     SELECT $1::uuid, x.p::uuid, $2::uuid, $3::uuid, x.e, nullif(x.s, '')::float8, x.st, \
            nullif(x.c, '')::timestamptz, nullif(x.i, '')::jsonb \
     FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) AS x(e, p, s, st, c, i) \
     ON CONFLICT (source_id, external_id) DO UPDATE SET pupil_id = EXCLUDED.pupil_id, \
         assessment_id = EXCLUDED.assessment_id, score = EXCLUDED.score, status = EXCLUDED.status, \
         completed_at = EXCLUDED.completed_at, items = EXCLUDED.items, updated_at = now() \
     WHERE NOT EXISTS (SELECT 1 FROM pupils rp WHERE rp.id = results.pupil_id AND rp.restricted) \
       AND (results.pupil_id, results.assessment_id, results.score, results.status, results.completed_at, results.items) \
           IS DISTINCT FROM (EXCLUDED.pupil_id, EXCLUDED.assessment_id, EXCLUDED.score, EXCLUDED.status, \
                             EXCLUDED.completed_at, EXCLUDED.items) \
     RETURNING xmax = 0 AS inserted, external_id"
);

#[derive(Serialize)]
struct Rejected {
    index: usize,
    external_id: String,
    reason: &'static str,
}

/// Stores a validated results post inside the caller's transaction. What
/// still fails here depends on the tenant's data, not on the post's form.
pub async fn apply(
    db: &mut impl Db,
    meta: &RequestMeta,
    tenant_id: &str,
    source_id: &str,
    post: ValidResultsPost,
) -> Result<serde_json::Value, Problem> {
    let a = &post.assessment;
    let assessment_id = db
        .query_one(
            ASSESSMENT_UPSERT_SQL,
            &[
                uuid(tenant_id),
                uuid(source_id),
                a.external_id.clone().into(),
                a.title.clone().into(),
                a.subject.clone().into(),
                a.year_level.into(),
                Value::Float(a.max_score),
                a.administered_on.clone().into(),
            ],
        )
        .await?
        .text("id")?;

    let rows = &post.results;
    let keys: Vec<&PupilKey> = rows.iter().map(|r| &r.pupil).collect();
    let known = pupils::resolve(db, tenant_id, &keys).await?;
    // A result already held for a restricted pupil stays where it is, even if
    // the publisher now names another pupil for it.
    let all_ext: Vec<String> = rows.iter().map(|r| r.external_id.clone()).collect();
    let held_for_restricted: HashSet<String> = db
        .query(HELD_FOR_RESTRICTED_SQL, &[uuid(source_id), Value::text_array(all_ext)])
        .await?
        .iter()
        .map(|r| r.text("external_id"))
        .collect::<Result<_, _>>()?;
    let mut rejected = Vec::new();
    let (mut ext, mut pupil, mut score, mut status, mut completed, mut items) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stored_pupils = HashSet::with_capacity(rows.len());
    for row in rows {
        let reason = match pupils::lookup(&known, &row.pupil) {
            _ if held_for_restricted.contains(&row.external_id) => Some("processing_restricted"),
            None => Some("unknown_pupil"),
            Some(k) if k.restricted => Some("processing_restricted"),
            // The same pupil named once by identity number and once by Feide
            // username: only the tenant's data shows it, so it is found here.
            Some(k) if !stored_pupils.insert(k.id.as_str()) => {
                return Err(Problem::validation(vec![tavle_core::problem::field(
                    format!("/results/{}/pupil", row.index),
                    "this pupil already has a result in this post",
                )]));
            }
            Some(k) => {
                ext.push(row.external_id.clone());
                pupil.push(k.id.clone());
                score.push(row.score.map(|s| s.to_string()).unwrap_or_default());
                status.push(row.status.to_owned());
                completed.push(row.completed_at.clone().unwrap_or_default());
                items.push(row.items.clone().unwrap_or_default());
                None
            }
        };
        if let Some(reason) = reason {
            rejected.push(Rejected { index: row.index, external_id: row.external_id.clone(), reason });
        }
    }
    let stored = ext.len();
    let outcome = if stored == 0 {
        Vec::new()
    } else {
        db.query(
            RESULTS_UPSERT_SQL,
            &[
                uuid(tenant_id),
                uuid(&assessment_id),
                uuid(source_id),
                Value::text_array(ext),
                Value::text_array(pupil),
                Value::text_array(score),
                Value::text_array(status),
                Value::text_array(completed),
                Value::text_array(items),
            ],
        )
        .await?
    };
    let created = outcome.iter().filter(|r| r.bool("inserted").unwrap_or(false)).count();
    let updated_ids: Vec<String> = outcome
        .iter()
        .filter(|r| !r.bool("inserted").unwrap_or(true))
        .filter_map(|r| r.text("external_id").ok())
        .collect();
    let summary = json!({
        "assessment_id": assessment_id,
        "received": post.results.len(),
        "created": created,
        "updated": updated_ids.len(),
        "unchanged": stored.saturating_sub(created + updated_ids.len()),
        "rejected": rejected.len(),
        "updated_external_ids": updated_ids,
        "rejected_rows": rejected,
    });
    audit::record(
        db,
        Some(meta),
        Event::new(tenant_id, Actor::System("webhook"), "results.ingested")
            .target("webhook_source", source_id)
            .details(json!({
                "assessment_id": summary["assessment_id"], "received": summary["received"], "created": created,
                "updated": summary["updated"], "unchanged": summary["unchanged"], "rejected": summary["rejected"],
            })),
    )
    .await?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config, identity_number};

    fn post(body: serde_json::Value) -> ResultsPost {
        serde_json::from_value(body).unwrap()
    }

    fn good() -> serde_json::Value {
        json!({
            "assessment": {"external_id": " lesing-h26 ", "title": "Kartlegging lesing", "subject": "norsk",
                           "year_level": 5, "max_score": 40, "administered_on": "2026-09-15"},
            "results": [
                {"external_id": "r-1", "pupil": {"identity_number": identity_number(0)}, "score": 31,
                 "status": "completed", "completed_at": "2026-09-15T09:30:00.5+02:00",
                 "items": [{"item": "q1", "score": 1, "answer": "B"}]},
                {"external_id": "r-2", "pupil": {"feide_username": "Ola@Nordby.no"}, "status": "absent"},
            ],
        })
    }

    fn pointers(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.pointer.as_str()).collect()
    }

    #[test]
    fn a_good_post_is_validated_into_its_stored_form() {
        let valid = validate(post(good()), &config(), "tenant").unwrap();
        let a = &valid.assessment;
        assert_eq!(
            (a.external_id.as_str(), a.administered_on.as_str(), a.max_score),
            ("lesing-h26", "2026-09-15", 40.0)
        );
        let [r1, r2] = &valid.results[..] else { panic!("two results") };
        assert_eq!((r1.index, r1.status, r1.score), (0, "completed", Some(31.0)));
        // Canonical UTC text: PostgreSQL never parses what the sender wrote.
        assert_eq!(r1.completed_at.as_deref(), Some("2026-09-15T07:30:00.5Z"));
        assert_eq!(r1.items.as_deref(), Some(r#"[{"item":"q1","score":1.0,"answer":"B"}]"#));
        assert!(r1.pupil.index.is_some() && r1.pupil.identity.is_none());
        assert_eq!((r2.index, r2.status, r2.completed_at.as_deref(), r2.items.as_deref()), (1, "absent", None, None));
        assert_eq!(r2.pupil.feide.as_deref(), Some("ola@nordby.no"));
    }

    #[test]
    fn a_bad_post_is_rejected_with_a_pointer_per_error_in_order() {
        let mut body = good();
        body["assessment"]["administered_on"] = json!("2026-02-30");
        body["results"][0]["score"] = json!(41);
        body["results"][0]["completed_at"] = json!("2026-09-15 09:30:00Z");
        body["results"][1]["external_id"] = json!("r-1");
        body["results"][1]["status"] = json!("done");
        body["results"][1]["pupil"] = json!({"identity_number": identity_number(0)});
        let p = validate(post(body), &config(), "tenant").err().unwrap();
        assert_eq!(p.status, 422);
        assert_eq!(
            pointers(&p),
            [
                "/assessment/administered_on",
                "/results/0/score",
                "/results/0/completed_at",
                "/results/1/external_id",
                "/results/1/status",
                "/results/1/pupil",
            ]
        );
        assert_eq!(p.errors[5].message, "this pupil already has a result in this post");

        let mut body = good();
        body["results"] = json!([]);
        body["assessment"]["max_score"] = json!(0);
        let p = validate(post(body), &config(), "tenant").err().unwrap();
        assert_eq!(pointers(&p), ["/assessment/max_score", "/results"]);
    }

    #[test]
    fn whatever_date_is_accepted_is_stored_as_yyyy_mm_dd() {
        for date in ["2026-09-15", "+2026-09-15"] {
            let mut body = good();
            body["assessment"]["administered_on"] = json!(date);
            if let Ok(valid) = validate(post(body), &config(), "tenant") {
                assert_eq!(valid.assessment.administered_on, "2026-09-15", "{date}");
            }
        }
    }
}
