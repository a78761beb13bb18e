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
use tavle_core::scores::{canonical_datetime, check_outcome, finite_in, STATUSES};
use tavle_core::subtests::{parse_assessment, AssessmentFields, AssessmentSent, ScoreIn, SubtestIn, UNKNOWN_SUBTEST};
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
    /// The publisher's key of the test series this assessment belongs to.
    #[serde(default)]
    family: Option<String>,
    /// Concern threshold on the total: a score at or below it needs follow-up.
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    subtests: Vec<SubtestIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubtestScoreIn {
    id: String,
    score: f64,
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
    subtests: Vec<SubtestScoreIn>,
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
    /// The subtest the item belongs to (one of the assessment's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subtest: Option<String>,
}

pub use tavle_core::subtests::check_text;

/// A results post that passed every check, in the form it is stored.
pub struct ValidResultsPost {
    assessment: ValidAssessment,
    results: Vec<ValidResult>,
}

struct ValidAssessment {
    external_id: String,
    /// Title, subject, maximum, date, family, thresholds and subtests
    /// (`tavle_core::subtests::parse_assessment`, as tenant admins' are).
    fields: AssessmentFields,
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
    /// `{"<subtest key>": score}` as JSON text; `None` without any.
    subtest_scores: Option<String>,
}

/// Checks a whole results post; no database work. Errors come in the order
/// of the post, every bad field of every row at once.
pub fn validate(post: ResultsPost, cfg: &IngestConfig, tenant_id: &str) -> Result<ValidResultsPost, Problem> {
    let mut checks = Checks::default();
    let a = &post.assessment;
    check_text(&mut checks, "/assessment/external_id", &a.external_id, 200);
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
    let (fields, subtests) = parse_assessment(&mut checks, "/assessment", &sent);
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
        let subtest_scores = subtests
            .parse_scores(
                &mut checks,
                r.subtests.iter().enumerate().map(|(j, s)| ScoreIn {
                    key: &s.id,
                    score: s.score,
                    key_pointer: format!("{p}/subtests/{j}/id"),
                    score_pointer: format!("{p}/subtests/{j}/score"),
                }),
            )
            .to_text();
        for (j, item) in r.items.iter().enumerate() {
            check_text(&mut checks, &format!("{p}/items/{j}/item"), &item.item, 100);
            if item.subtest.as_deref().is_some_and(|k| subtests.get(k).is_none()) {
                checks.fail(&format!("{p}/items/{j}/subtest"), UNKNOWN_SUBTEST);
            }
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
            results.push(ValidResult {
                index: i,
                external_id,
                pupil,
                score: r.score,
                status,
                completed_at,
                items,
                subtest_scores,
            });
        }
    }
    checks.finish()?;
    // Whatever did not parse has failed a check above.
    let Some(fields) = fields else { return Err(Problem::internal()) };
    if results.len() != post.results.len() {
        // A row that did not parse but failed no check: a bug here, not the sender's.
        return Err(Problem::internal());
    }
    let assessment = ValidAssessment { external_id: a.external_id.trim().to_owned(), fields };
    Ok(ValidResultsPost { assessment, results })
}

/// The assessment of a results post as stored before it, locked until
/// commit: its total threshold and subtests, to tell what a re-sent
/// assessment changes. `$1` source, `$2` external id. `FOR NO KEY UPDATE`
/// (its key never changes here): it still orders the posts and threshold
/// changes of one assessment, and a correction's `FOR SHARE` waits for it,
/// but an erasure or a retention run, which holds its pupils `FOR UPDATE`
/// and then takes the assessment `FOR KEY SHARE` for the anonymised rows,
/// goes on instead of deadlocking with a post waiting for one of those
/// pupils.
pub const ASSESSMENT_BEFORE_SQL: &str = "SELECT a.id, a.threshold, \
            coalesce((SELECT jsonb_agg(jsonb_build_object('id', st.key, 'threshold', st.threshold) ORDER BY st.position) \
                      FROM assessment_subtests st WHERE st.assessment_id = a.id), '[]'::jsonb) AS subtests \
     FROM assessments a WHERE a.source_id = $1::uuid AND a.external_id = $2::text FOR NO KEY UPDATE";

/// The subtest keys among `$2` that stored results of assessment `$1` still
/// use, leaving out the results this post re-sends (`$3` source, `$4` their
/// external ids), which it replaces, unless held for a restricted pupil.
pub const SUBTESTS_IN_USE_SQL: &str = "SELECT DISTINCT k.key FROM results r \
     CROSS JOIN LATERAL jsonb_object_keys(r.subtest_scores) AS k(key) \
     WHERE r.assessment_id = $1::uuid AND r.subtest_scores IS NOT NULL AND k.key = ANY($2::text[]) \
       AND NOT (r.source_id IS NOT DISTINCT FROM $3::uuid AND r.external_id = ANY($4::text[]) \
                AND NOT EXISTS (SELECT 1 FROM pupils rp WHERE rp.id = r.pupil_id AND rp.restricted)) \
     ORDER BY k.key";

/// The assessment of a results post, created or updated by (source,
/// external id). `$1` tenant, `$2` source, `$3` external id, `$4` title,
/// `$5` subject, `$6` year level, `$7` max score, `$8` date administered,
/// `$9` family, `$10` threshold on the total.
pub const ASSESSMENT_UPSERT_SQL: &str =
    "INSERT INTO assessments (tenant_id, source_id, external_id, title, subject, year_level, max_score, administered_on, \
                              family, threshold) \
     VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::int8::int, $7::float8, $8::text::date, \
             $9::text, $10::float8) \
     ON CONFLICT (source_id, external_id) DO UPDATE SET title = EXCLUDED.title, subject = EXCLUDED.subject, \
         year_level = EXCLUDED.year_level, max_score = EXCLUDED.max_score, \
         administered_on = EXCLUDED.administered_on, family = EXCLUDED.family, threshold = EXCLUDED.threshold, \
         updated_at = now() \
     RETURNING id";

/// Subtests of assessment `$2` (tenant `$1`) that the post no longer names
/// (`$3` the keys it names); only unused ones get here.
pub const SUBTESTS_DROP_SQL: &str =
    "DELETE FROM assessment_subtests WHERE tenant_id = $1::uuid AND assessment_id = $2::uuid AND NOT (key = ANY($3::text[]))";

/// The post's subtests, in its order: `$3` keys, `$4` titles, `$5` maxima,
/// `$6` thresholds (`''` for none).
pub const SUBTESTS_UPSERT_SQL: &str =
    "INSERT INTO assessment_subtests (tenant_id, assessment_id, key, position, title, max_score, threshold) \
     SELECT $1::uuid, $2::uuid, x.k, (x.n - 1)::int, x.t, x.m::float8, nullif(x.th, '')::float8 \
     FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS x(k, t, m, th, n) \
     ON CONFLICT (assessment_id, key) DO UPDATE SET position = EXCLUDED.position, title = EXCLUDED.title, \
         max_score = EXCLUDED.max_score, threshold = EXCLUDED.threshold";

/// External ids of the post that are already held for a restricted pupil.
/// `$1` source, `$2` the post's external result ids. Each id is looked up
/// (joined from `unnest`) rather than tested with `= ANY` per row: with
/// stale statistics (a source's first large deliveries) the planner scanned
/// the source's results and compared each to every id of the post, 6–7 s
/// per 5,000-result post (tests/benches/README.md, "Issue 14c").
pub const HELD_FOR_RESTRICTED_SQL: &str = "SELECT r.external_id FROM unnest($2::text[]) AS x(external_id) \
     JOIN results r ON r.source_id = $1::uuid AND r.external_id = x.external_id \
     JOIN pupils p ON p.id = r.pupil_id WHERE p.restricted";

macro_rules! result_columns {
    () => {
        "tenant_id, pupil_id, assessment_id, source_id, external_id, score, status, completed_at, items, subtest_scores"
    };
}

/// The columns [`RESULTS_UPSERT_SQL`] fills, in its order.
pub const RESULT_COLUMNS: &str = result_columns!();

/// The rows of a results post, upserted by (source, external id); a result
/// held for a restricted pupil and an unchanged one are left alone. `$1`
/// tenant, `$2` assessment, `$3` source, then one `text[]` each of external
/// ids, pupil ids, scores, statuses, completion times, items and subtest
/// scores (`''` for none). One row per insert or change: `inserted`, `external_id`.
pub const RESULTS_UPSERT_SQL: &str = concat!(
    "INSERT INTO results (",
    result_columns!(),
    ") \
     SELECT $1::uuid, x.p::uuid, $2::uuid, $3::uuid, x.e, nullif(x.s, '')::float8, x.st, \
            nullif(x.c, '')::timestamptz, nullif(x.i, '')::jsonb, nullif(x.ss, '')::jsonb \
     FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[]) \
          AS x(e, p, s, st, c, i, ss) \
     ON CONFLICT (source_id, external_id) DO UPDATE SET pupil_id = EXCLUDED.pupil_id, \
         assessment_id = EXCLUDED.assessment_id, score = EXCLUDED.score, status = EXCLUDED.status, \
         completed_at = EXCLUDED.completed_at, items = EXCLUDED.items, subtest_scores = EXCLUDED.subtest_scores, \
         updated_at = now() \
     WHERE NOT EXISTS (SELECT 1 FROM pupils rp WHERE rp.id = results.pupil_id AND rp.restricted) \
       AND (results.pupil_id, results.assessment_id, results.score, results.status, results.completed_at, results.items, \
            results.subtest_scores) \
           IS DISTINCT FROM (EXCLUDED.pupil_id, EXCLUDED.assessment_id, EXCLUDED.score, EXCLUDED.status, \
                             EXCLUDED.completed_at, EXCLUDED.items, EXCLUDED.subtest_scores) \
     RETURNING xmax = 0 AS inserted, external_id"
);

/// The thresholds of an assessment as stored before a re-send.
struct StoredThresholds {
    total: Option<f64>,
    /// (key, threshold) in stored order.
    subtests: Vec<(String, Option<f64>)>,
}

fn parse_stored(subtests: &serde_json::Value) -> Result<Vec<(String, Option<f64>)>, Problem> {
    let list = subtests.as_array().ok_or_else(Problem::internal)?;
    list.iter()
        .map(|st| Ok((st["id"].as_str().ok_or_else(Problem::internal)?.to_owned(), st["threshold"].as_f64())))
        .collect()
}

/// One changed threshold: of the total (`subtest` null) or of a subtest
/// the assessment had before and still has.
#[derive(Serialize, Debug, PartialEq)]
struct ThresholdChange {
    subtest: Option<String>,
    from: Option<f64>,
    to: Option<f64>,
}

/// What a re-sent assessment changes about thresholds and subtests.
#[derive(Default, Debug, PartialEq)]
struct Changes {
    thresholds: Vec<ThresholdChange>,
    added: Vec<String>,
    removed: Vec<String>,
}

impl Changes {
    fn between(old: &StoredThresholds, new: &AssessmentFields) -> Changes {
        let mut c = Changes::default();
        if old.total != new.threshold {
            c.thresholds.push(ThresholdChange { subtest: None, from: old.total, to: new.threshold });
        }
        for st in new.subtests.as_slice() {
            match old.subtests.iter().find(|(k, _)| *k == st.key) {
                None => c.added.push(st.key.clone()),
                Some((_, from)) if *from != st.threshold => {
                    c.thresholds.push(ThresholdChange { subtest: Some(st.key.clone()), from: *from, to: st.threshold })
                }
                Some(_) => {}
            }
        }
        c.removed = old
            .subtests
            .iter()
            .filter(|(k, _)| !new.subtests.as_slice().iter().any(|st| st.key == *k))
            .map(|(k, _)| k.clone())
            .collect();
        c
    }
}

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
    let before = db.query_opt(ASSESSMENT_BEFORE_SQL, &[uuid(source_id), a.external_id.clone().into()]).await?;
    let rows = &post.results;
    let keys: Vec<&PupilKey> = rows.iter().map(|r| &r.pupil).collect();
    // Key-share locked, as the results' foreign key would lock them, and
    // before any write: a pupil being erased is waited for, then not found
    // (rejected as unknown), never a foreign-key failure. Before any write,
    // because a changed threshold makes the assessment's upsert update its
    // results' flags, one of them the erased pupil's, which the erasure
    // then waits for (a deadlock).
    let known = pupils::resolve_key_share(db, tenant_id, &keys).await?;
    // A result already held for a restricted pupil stays where it is, even if
    // the publisher now names another pupil for it.
    let all_ext: Vec<String> = rows.iter().map(|r| r.external_id.clone()).collect();
    let held_for_restricted: HashSet<String> = db
        .query(HELD_FOR_RESTRICTED_SQL, &[uuid(source_id), Value::text_array(all_ext)])
        .await?
        .iter()
        .map(|r| r.text("external_id"))
        .collect::<Result<_, _>>()?;
    let changes = match &before {
        None => Changes::default(),
        Some(row) => {
            let old = StoredThresholds {
                total: row.opt_float("threshold")?,
                subtests: parse_stored(&row.json("subtests")?)?,
            };
            let changes = Changes::between(&old, &a.fields);
            if !changes.removed.is_empty() {
                // A subtest that stored results still score may not go: their
                // scores would then name a subtest the assessment lacks.
                let all_ext: Vec<String> = post.results.iter().map(|r| r.external_id.clone()).collect();
                let in_use = db
                    .query(
                        SUBTESTS_IN_USE_SQL,
                        &[
                            uuid(&row.text("id")?),
                            Value::text_array(changes.removed.clone()),
                            uuid(source_id),
                            Value::text_array(all_ext),
                        ],
                    )
                    .await?;
                if !in_use.is_empty() {
                    let keys = in_use.iter().map(|r| r.text("key")).collect::<Result<Vec<_>, _>>()?;
                    return Err(Problem::validation(vec![tavle_core::problem::field(
                        "/assessment/subtests",
                        format!("stored results still have scores for the subtests left out: {}", keys.join(", ")),
                    )]));
                }
            }
            changes
        }
    };
    let assessment_id = db
        .query_one(
            ASSESSMENT_UPSERT_SQL,
            &[
                uuid(tenant_id),
                uuid(source_id),
                a.external_id.clone().into(),
                a.fields.title.clone().into(),
                a.fields.subject.clone().into(),
                a.fields.year_level.into(),
                Value::Float(a.fields.max_score),
                a.fields.administered_on.clone().into(),
                a.fields.family.clone().into(),
                a.fields.threshold.map(Value::Float).unwrap_or(Value::Null),
            ],
        )
        .await?
        .text("id")?;
    let keys: Vec<String> = a.fields.subtests.as_slice().iter().map(|st| st.key.clone()).collect();
    if before.is_some() {
        db.execute(SUBTESTS_DROP_SQL, &[uuid(tenant_id), uuid(&assessment_id), Value::text_array(keys.clone())])
            .await?;
    }
    if !a.fields.subtests.is_empty() {
        db.execute(
            SUBTESTS_UPSERT_SQL,
            &[
                uuid(tenant_id),
                uuid(&assessment_id),
                Value::text_array(keys),
                Value::text_array(a.fields.subtests.as_slice().iter().map(|st| st.title.clone())),
                Value::text_array(a.fields.subtests.as_slice().iter().map(|st| st.max_score.to_string())),
                Value::text_array(
                    a.fields
                        .subtests
                        .as_slice()
                        .iter()
                        .map(|st| st.threshold.map(|t| t.to_string()).unwrap_or_default()),
                ),
            ],
        )
        .await?;
    }

    let mut rejected = Vec::new();
    let (mut ext, mut pupil, mut score, mut status, mut completed, mut items, mut subtest_scores) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
                subtest_scores.push(row.subtest_scores.clone().unwrap_or_default());
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
                Value::text_array(subtest_scores),
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
        "threshold_changes": changes.thresholds,
        "subtests_added": changes.added,
        "subtests_removed": changes.removed,
    });
    audit::record(
        db,
        Some(meta),
        Event::new(tenant_id, Actor::System("webhook"), "results.ingested")
            .target("webhook_source", source_id)
            .details(json!({
                "assessment_id": summary["assessment_id"], "received": summary["received"], "created": created,
                "updated": summary["updated"], "unchanged": summary["unchanged"], "rejected": summary["rejected"],
                "threshold_changes": summary["threshold_changes"], "subtests_added": summary["subtests_added"],
                "subtests_removed": summary["subtests_removed"],
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
            (a.external_id.as_str(), a.fields.administered_on.as_str(), a.fields.max_score),
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

    fn with_subtests() -> serde_json::Value {
        let mut body = good();
        body["assessment"]["threshold"] = json!(12);
        body["assessment"]["family"] = json!(" lesing-kartlegging ");
        body["assessment"]["subtests"] = json!([
            {"id": "ordlesing", "title": "Ordlesing", "max_score": 20, "threshold": 8},
            {"id": "forstaelse", "title": "Leseforståelse", "max_score": 20},
        ]);
        body["results"][0]["subtests"] = json!([{"id": "ordlesing", "score": 7}, {"id": " forstaelse ", "score": 20}]);
        body["results"][0]["items"][0]["subtest"] = json!("ordlesing");
        body
    }

    #[test]
    fn subtests_and_thresholds_are_validated_into_their_stored_form() {
        let valid = validate(post(with_subtests()), &config(), "tenant").unwrap();
        let a = &valid.assessment;
        assert_eq!((a.fields.threshold, a.fields.family.as_deref()), (Some(12.0), Some("lesing-kartlegging")));
        assert_eq!(
            a.fields.subtests.as_slice().iter().map(|st| (st.key.as_str(), st.threshold)).collect::<Vec<_>>(),
            [("ordlesing", Some(8.0)), ("forstaelse", None)]
        );
        let scores: serde_json::Value =
            serde_json::from_str(valid.results[0].subtest_scores.as_deref().unwrap()).unwrap();
        assert_eq!(scores, json!({"ordlesing": 7.0, "forstaelse": 20.0}));
        assert_eq!(valid.results[1].subtest_scores, None);
    }

    #[test]
    fn bad_subtests_and_thresholds_are_rejected_with_a_pointer_each() {
        let mut body = with_subtests();
        body["assessment"]["threshold"] = json!(41);
        body["assessment"]["subtests"][0]["threshold"] = json!(-1);
        body["assessment"]["subtests"][1]["threshold"] = json!(21);
        body["results"][0]["subtests"] = json!([{"id": "ordlesing", "score": 21}, {"id": "staving", "score": 1}]);
        body["results"][0]["items"][0]["subtest"] = json!("staving");
        body["results"][1]["subtests"] = json!([{"id": "forstaelse", "score": 1}, {"id": "forstaelse", "score": 2}]);
        let p = validate(post(body), &config(), "tenant").err().unwrap();
        assert_eq!(
            pointers(&p),
            [
                "/assessment/threshold",
                "/assessment/subtests/0/threshold",
                "/assessment/subtests/1/threshold",
                "/results/0/subtests/0/score",
                "/results/0/subtests/1/id",
                "/results/0/items/0/subtest",
                "/results/1/subtests/1/id",
            ]
        );
        let mut body = with_subtests();
        body["assessment"]["subtests"][1]["id"] = json!("ordlesing");
        let p = validate(post(body), &config(), "tenant").err().unwrap();
        assert_eq!(pointers(&p), ["/assessment/subtests/1/id", "/results/0/subtests/1/id"]);
    }

    #[test]
    fn a_re_sent_assessment_tells_what_changed() {
        let valid = validate(post(with_subtests()), &config(), "tenant").unwrap();
        let old = StoredThresholds {
            total: Some(10.0),
            subtests: vec![("ordlesing".into(), Some(8.0)), ("forstaelse".into(), Some(5.0)), ("staving".into(), None)],
        };
        let c = Changes::between(&old, &valid.assessment.fields);
        assert_eq!(
            c.thresholds,
            [
                ThresholdChange { subtest: None, from: Some(10.0), to: Some(12.0) },
                ThresholdChange { subtest: Some("forstaelse".into()), from: Some(5.0), to: None },
            ]
        );
        assert_eq!((c.added, c.removed), (Vec::<String>::new(), vec!["staving".to_owned()]));
        let same = StoredThresholds {
            total: Some(12.0),
            subtests: vec![("ordlesing".into(), Some(8.0)), ("forstaelse".into(), None)],
        };
        assert_eq!(Changes::between(&same, &valid.assessment.fields), Changes::default());
    }

    #[test]
    fn whatever_date_is_accepted_is_stored_as_yyyy_mm_dd() {
        for date in ["2026-09-15", "+2026-09-15"] {
            let mut body = good();
            body["assessment"]["administered_on"] = json!(date);
            if let Ok(valid) = validate(post(body), &config(), "tenant") {
                assert_eq!(valid.assessment.fields.administered_on, "2026-09-15", "{date}");
            }
        }
    }
}
