//! Results posts: one assessment and a batch of results.
//!
//! Schema and value errors reject the whole post (422, a pointer per bad
//! row, nothing stored). Rows for pupils unknown in the source's tenant, or
//! whose processing is restricted, are not stored and are listed in the 200
//! answer. Results are upserted by (source, external result id).

use crate::pupils::{self, PupilIdentifiers, PupilKey};
use crate::IngestConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashSet;
use tavle_core::audit::{self, Actor, Event};
use tavle_core::db::{uuid, Db, Value};
use tavle_core::scores::{check_outcome, finite_in, valid_date};
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

struct Row<'a> {
    input: &'a ResultIn,
    key: PupilKey,
    index: usize,
}

#[derive(Serialize)]
struct Rejected {
    index: usize,
    external_id: String,
    reason: &'static str,
}

/// Validates and applies a results post inside the caller's transaction.
pub async fn apply(
    db: &mut impl Db,
    meta: &RequestMeta,
    cfg: &IngestConfig,
    tenant_id: &str,
    source_id: &str,
    post: ResultsPost,
) -> Result<serde_json::Value, Problem> {
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
    if !valid_date(&a.administered_on) {
        checks.fail("/assessment/administered_on", "must be a date (YYYY-MM-DD)");
    }
    if post.results.is_empty() || post.results.len() > MAX_RESULTS {
        checks.fail("/results", format!("must hold 1 to {MAX_RESULTS} results"));
        return Err(Problem::validation(checks.0));
    }
    let mut rows = Vec::with_capacity(post.results.len());
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
        if let Some(key) = pupils::parse(&r.pupil, cfg, tenant_id, &format!("{p}/pupil"), &mut checks) {
            // One result per pupil and assessment in a post; a second is a mistake.
            if !seen_pupils.insert(key.dedup_key()) {
                checks.fail(&format!("{p}/pupil"), "this pupil already has a result in this post");
            }
            rows.push(Row { input: r, key, index: i });
        }
    }
    checks.finish()?;

    let assessment_id = db
        .query_one(
            "INSERT INTO assessments (tenant_id, source_id, external_id, title, subject, year_level, max_score, administered_on) \
             VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::int8::int, $7::float8, $8::text::date) \
             ON CONFLICT (source_id, external_id) DO UPDATE SET title = EXCLUDED.title, subject = EXCLUDED.subject, \
                 year_level = EXCLUDED.year_level, max_score = EXCLUDED.max_score, \
                 administered_on = EXCLUDED.administered_on, updated_at = now() \
             RETURNING id",
            &[
                uuid(tenant_id),
                uuid(source_id),
                a.external_id.trim().into(),
                a.title.trim().into(),
                a.subject.trim().into(),
                a.year_level.into(),
                Value::Float(a.max_score),
                a.administered_on.clone().into(),
            ],
        )
        .await?
        .text("id")?;

    let keys: Vec<&PupilKey> = rows.iter().map(|r| &r.key).collect();
    let known = pupils::resolve(db, tenant_id, &keys).await?;
    // A result already held for a restricted pupil stays where it is, even if
    // the publisher now names another pupil for it.
    let all_ext: Vec<String> = rows.iter().map(|r| r.input.external_id.clone()).collect();
    let held_for_restricted: HashSet<String> = db
        .query(
            "SELECT r.external_id FROM results r JOIN pupils p ON p.id = r.pupil_id \
             WHERE r.source_id = $1::uuid AND r.external_id = ANY($2::text[]) AND p.restricted",
            &[uuid(source_id), Value::text_array(all_ext)],
        )
        .await?
        .iter()
        .map(|r| r.text("external_id"))
        .collect::<Result<_, _>>()?;
    let mut rejected = Vec::new();
    let (mut ext, mut pupil, mut score, mut status, mut completed, mut items) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stored_pupils = HashSet::with_capacity(rows.len());
    for row in &rows {
        let reason = match pupils::lookup(&known, &row.key) {
            _ if held_for_restricted.contains(&row.input.external_id) => Some("processing_restricted"),
            None => Some("unknown_pupil"),
            Some(k) if k.restricted => Some("processing_restricted"),
            // The same pupil named once by identity number and once by Feide username.
            Some(k) if !stored_pupils.insert(k.id.as_str()) => {
                return Err(Problem::validation(vec![tavle_core::problem::field(
                    format!("/results/{}/pupil", row.index),
                    "this pupil already has a result in this post",
                )]));
            }
            Some(k) => {
                ext.push(row.input.external_id.clone());
                pupil.push(k.id.clone());
                score.push(row.input.score.map(|s| s.to_string()).unwrap_or_default());
                status.push(row.input.status.clone());
                completed.push(row.input.completed_at.clone().unwrap_or_default());
                items.push(if row.input.items.is_empty() {
                    String::new()
                } else {
                    serde_json::to_string(&row.input.items).map_err(|_| Problem::internal())?
                });
                None
            }
        };
        if let Some(reason) = reason {
            rejected.push(Rejected { index: row.index, external_id: row.input.external_id.clone(), reason });
        }
    }
    let stored = ext.len();
    let outcome = if stored == 0 {
        Vec::new()
    } else {
        db.query(
            "INSERT INTO results (tenant_id, pupil_id, assessment_id, source_id, external_id, score, status, completed_at, items) \
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
             RETURNING xmax = 0 AS inserted, external_id",
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
        "unchanged": stored - created - updated_ids.len(),
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
