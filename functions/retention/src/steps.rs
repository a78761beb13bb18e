//! The policies, each as one bounded batch (`step`, inside the run's batch
//! transaction) and as a count of what it would do (`count`, dry runs).
//! Every statement changes at most `batch_rows` rows (k-anonymity: whole
//! groups, see [`anonymity`]); what is due is read from
//! the data itself, so a run that stops (or is killed) anywhere is resumed by
//! the next without any state of its own.

use crate::policy::Policies;
use serde_json::json;
use tavle_core::audit::{self, Actor, Event};
use tavle_core::db::{uuid, Db, Value};
use tavle_core::erasure::{self, Reason};
use tavle_core::Problem;

/// The component name in the audit log (`system:retention`).
pub const ACTOR: Actor = Actor::System("retention");

/// What one step (or count) is about.
pub struct Ctx<'a> {
    pub run_id: &'a str,
    pub tenant_id: &'a str,
    pub policies: &'a Policies,
    /// The run's clock, RFC 3339 UTC (a handler input: tests move it).
    pub now: &'a str,
}

/// What a step did, and whether it may have left work of its kind.
#[derive(Debug, Default)]
pub struct Step {
    pub counts: Vec<(&'static str, i64)>,
    pub more: bool,
}

/// The policies, in the order a run applies them: erasure first (it feeds
/// anonymised results), k-anonymity last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Leavers,
    LeaverReports,
    DeletedAccounts,
    AccessLog,
    AuditLog,
    Sessions,
    WebhookDeliveries,
    WebhookSecrets,
    Exports,
    Anonymity,
}

impl Policy {
    pub const ALL: [Policy; 10] = [
        Policy::Leavers,
        Policy::LeaverReports,
        Policy::DeletedAccounts,
        Policy::AccessLog,
        Policy::AuditLog,
        Policy::Sessions,
        Policy::WebhookDeliveries,
        Policy::WebhookSecrets,
        Policy::Exports,
        Policy::Anonymity,
    ];

    pub async fn step(self, db: &mut impl Db, cx: &Ctx<'_>) -> Result<Step, Problem> {
        match self {
            Policy::Leavers => leavers(db, cx).await,
            Policy::LeaverReports => delete_limited(db, cx, "leaver_reports_deleted", LEAVER_REPORTS_DUE).await,
            Policy::DeletedAccounts => deleted_accounts(db, cx).await,
            Policy::AccessLog => access_log(db, cx).await,
            Policy::AuditLog => audit_log(db, cx).await,
            Policy::Sessions => delete_limited(db, cx, "sessions_deleted", SESSIONS_DUE).await,
            Policy::WebhookDeliveries => delete_limited(db, cx, "webhook_deliveries_deleted", DELIVERIES_DUE).await,
            Policy::WebhookSecrets => delete_limited(db, cx, "webhook_secrets_deleted", SECRETS_DUE).await,
            Policy::Exports => exports(db, cx).await,
            Policy::Anonymity => anonymity(db, cx).await,
        }
    }

    /// The report's keys of this policy (zero when a step finds nothing).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Policy::Leavers => &["pupils_erased", "results_anonymised", "leaver_reports_written"],
            Policy::LeaverReports => &["leaver_reports_deleted"],
            Policy::DeletedAccounts => &["accounts_pseudonymised"],
            Policy::AccessLog => &["access_records_deleted"],
            Policy::AuditLog => &["audit_records_deleted"],
            Policy::Sessions => &["sessions_deleted"],
            Policy::WebhookDeliveries => &["webhook_deliveries_deleted"],
            Policy::WebhookSecrets => &["webhook_secrets_deleted"],
            Policy::Exports => &["exports_deleted"],
            Policy::Anonymity => {
                &["results_checked", "results_generalised_to_tenant", "results_gender_dropped", "results_dropped"]
            }
        }
    }

    /// What a step would do, all batches together (read only).
    pub async fn count(self, db: &mut impl Db, cx: &Ctx<'_>) -> Result<Vec<(&'static str, i64)>, Problem> {
        let p = cx.policies;
        let anonymity_count;
        let (sql, params): (&str, Vec<Value>) = match self {
            Policy::Leavers => (
                "SELECT count(*) AS pupils_erased, \
                        coalesce(sum((SELECT count(*) FROM results r WHERE r.tenant_id = p.tenant_id \
                                      AND r.pupil_id = p.id)), 0)::int8 AS results_anonymised, \
                        count(*) FILTER (WHERE p.year_level >= $4::int8 \
                            AND (p.left_at + make_interval(months => $5::int8::int))::date > $2::text::date) \
                            AS leaver_reports_written, \
                        (SELECT count(*) FROM pupils q WHERE q.tenant_id = $1::uuid AND q.restricted \
                            AND q.left_at <= $2::text::date - $3::int8::int) AS restricted_kept \
                 FROM pupils p WHERE p.tenant_id = $1::uuid AND NOT p.restricted \
                  AND p.left_at <= $2::text::date - $3::int8::int \
                  AND NOT EXISTS (SELECT 1 FROM subject_requests r WHERE r.tenant_id = p.tenant_id \
                      AND r.subject_id = p.id AND r.status IN ('received', 'in_progress'))",
                vec![
                    uuid(cx.tenant_id),
                    today(cx).into(),
                    p.grace_days.into(),
                    p.final_year_level.into(),
                    p.leaver_report_months.into(),
                ],
            ),
            Policy::LeaverReports => (
                "SELECT count(*) AS leaver_reports_deleted FROM leaver_reports \
                 WHERE tenant_id = $1::uuid AND delete_on <= $2::text::date",
                vec![uuid(cx.tenant_id), today(cx).into()],
            ),
            Policy::DeletedAccounts => (
                "SELECT count(*) AS accounts_pseudonymised FROM users WHERE tenant_id = $1::uuid \
                  AND deleted_at <= $2::text::timestamptz - make_interval(days => $3::int8::int) \
                  AND username NOT LIKE 'erased-%'",
                vec![uuid(cx.tenant_id), cx.now.into(), p.pseudonymise_days.into()],
            ),
            Policy::AccessLog => (
                "SELECT count(*) AS access_records_deleted FROM access_log WHERE tenant_id = $1::uuid \
                  AND at < $2::text::timestamptz - make_interval(months => $3::int8::int) \
                  AND $2::text::timestamptz - make_interval(months => $3::int8::int) <= now() - interval '6 months'",
                vec![uuid(cx.tenant_id), cx.now.into(), p.log_months.into()],
            ),
            Policy::AuditLog => (
                "SELECT count(*) AS audit_records_deleted FROM audit_log WHERE tenant_id = $1::uuid \
                  AND at < $2::text::timestamptz - make_interval(months => $3::int8::int) \
                  AND $2::text::timestamptz - make_interval(months => $3::int8::int) <= now() - interval '6 months'",
                vec![uuid(cx.tenant_id), cx.now.into(), p.log_months.into()],
            ),
            Policy::Sessions => (
                "SELECT count(*) AS sessions_deleted FROM sessions s WHERE s.tenant_id = $1::uuid AND \
                 (s.expires_at < $2::text::timestamptz OR s.idle_expires_at < $2::text::timestamptz \
                  OR s.revoked_at < $2::text::timestamptz)",
                vec![uuid(cx.tenant_id), cx.now.into()],
            ),
            Policy::WebhookDeliveries => (
                "SELECT count(*) AS webhook_deliveries_deleted FROM webhook_deliveries WHERE tenant_id = $1::uuid \
                  AND received_at < $2::text::timestamptz - make_interval(days => $3::int8::int)",
                vec![uuid(cx.tenant_id), cx.now.into(), p.delivery_days.into()],
            ),
            Policy::WebhookSecrets => (
                "SELECT count(*) AS webhook_secrets_deleted FROM webhook_secrets \
                 WHERE tenant_id = $1::uuid AND expires_at < $2::text::timestamptz",
                vec![uuid(cx.tenant_id), cx.now.into()],
            ),
            Policy::Exports => (
                "SELECT count(*) AS exports_deleted FROM subject_exports \
                 WHERE tenant_id = $1::uuid AND expires_at <= $2::text::timestamptz",
                vec![uuid(cx.tenant_id), cx.now.into()],
            ),
            // The same decisions as the batches make, for every pending row.
            Policy::Anonymity => {
                anonymity_count = format!(
                    "WITH scope AS (SELECT DISTINCT assessment_id, coalesce(year_level, 0) AS year_key \
                                    FROM anonymised_results WHERE tenant_id = $1::uuid AND pending), \
                     {FATES}, counted AS (SELECT * FROM decided WHERE pending) \
                     SELECT (SELECT count(*) FROM counted) AS results_checked, {FATE_COUNTS}"
                );
                (anonymity_count.as_str(), vec![uuid(cx.tenant_id)])
            }
        };
        let row = db.query_one(sql, &params).await?;
        row.columns().iter().map(|c| Ok((counted(c), row.int(c)?))).collect()
    }
}

/// The static name of a count column (the report's keys: the policies'
/// own, and what only a dry run counts).
fn counted(column: &str) -> &'static str {
    Policy::ALL
        .iter()
        .flat_map(|p| p.keys().iter().copied())
        .chain(["restricted_kept"])
        .find(|k| *k == column)
        .unwrap_or("other")
}

/// The run's date (UTC), `YYYY-MM-DD`.
fn today(cx: &Ctx<'_>) -> String {
    cx.now.get(..10).unwrap_or_default().to_owned()
}

const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// A subject request about pupil `p` that is still open: retention leaves
/// the pupil to it (an access request must see the data; an erasure
/// request writes its own tombstones).
const OPEN_REQUEST: &str = "SELECT 1 FROM subject_requests r WHERE r.tenant_id = p.tenant_id \
     AND r.subject_id = p.id AND r.status IN ('received', 'in_progress')";

/// Pupils marked as left, past the grace period, not restricted (Art. 18:
/// a restricted pupil's data is kept until the restriction is lifted):
/// those of the final year level get a leavers' report; all are erased,
/// their results anonymised (`tavle_core::erasure`, shared with requests).
/// A batch takes pupils until their results reach `batch_rows` (at least one).
async fn leavers(db: &mut impl Db, cx: &Ctx<'_>) -> Result<Step, Problem> {
    let p = cx.policies;
    // Candidates a page at a time, each with its number of results, until
    // the batch is full: counting far more pupils than fit would cost more
    // than the batch itself. By cohort (school, year level, gender), as
    // pupils leave: a batch then fills its results' k-anonymity cells
    // itself, and they need no second change (`erasure::erase_pupils`).
    const PAGE: i64 = 16;
    let mut ids: Vec<String> = Vec::new();
    let mut rows_touched = 0;
    // Keyset paging over pupils_left (tenant_id, left_at, school_id, year
    // level, gender, id): the last candidate taken.
    let mut after: [String; 5] = ["-infinity".into(), NIL_UUID.into(), "0".into(), String::new(), NIL_UUID.into()];
    let mut more = false;
    'pages: loop {
        let mut params = vec![uuid(cx.tenant_id), today(cx).into(), p.grace_days.into(), PAGE.into()];
        params.extend(after.iter().map(|v| Value::from(v.as_str())));
        let rows = db
            .query(
                &format!(
                    "SELECT p.id::text AS id, p.left_at::text AS left_at, p.school_id::text AS school_id, \
                        coalesce(p.year_level, 0)::text AS year_key, coalesce(p.gender, '') AS gender_key, \
                        (SELECT count(*) FROM results r WHERE r.tenant_id = p.tenant_id AND r.pupil_id = p.id) \
                            AS results \
                 FROM pupils p WHERE p.tenant_id = $1::uuid AND NOT p.restricted \
                  AND p.left_at <= $2::text::date - $3::int8::int \
                  AND (p.left_at, p.school_id, coalesce(p.year_level, 0), coalesce(p.gender, ''), p.id) \
                      > ($5::text::date, $6::text::uuid, $7::text::int, $8::text, $9::text::uuid) \
                  AND NOT EXISTS ({OPEN_REQUEST}) \
                 ORDER BY p.left_at, p.school_id, coalesce(p.year_level, 0), coalesce(p.gender, ''), p.id \
                 LIMIT $4::int8"
                ),
                &params,
            )
            .await?;
        for row in &rows {
            let n = row.int("results")?;
            if !ids.is_empty() && (rows_touched + n > p.batch_rows || ids.len() as i64 >= p.batch_rows) {
                more = true;
                break 'pages;
            }
            rows_touched += n;
            ids.push(row.text("id")?);
            for (last, column) in after.iter_mut().zip(["left_at", "school_id", "year_key", "gender_key", "id"]) {
                *last = row.text(column)?;
            }
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    if ids.is_empty() {
        return Ok(Step::default());
    }
    // Locked and checked again: a restriction, a re-enrolment or a request
    // that committed since the candidates were read keeps the pupil.
    let locked = db
        .query(
            &format!(
                "SELECT p.id::text AS id FROM pupils p WHERE p.tenant_id = $1::uuid \
                 AND p.id = ANY($2::text[]::uuid[]) AND NOT p.restricted \
                 AND p.left_at <= $3::text::date - $4::int8::int AND NOT EXISTS ({OPEN_REQUEST}) \
                 ORDER BY p.id FOR UPDATE OF p"
            ),
            &[uuid(cx.tenant_id), Value::text_array(ids), today(cx).into(), p.grace_days.into()],
        )
        .await?;
    let ids: Vec<String> = locked.iter().map(|r| r.text("id")).collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(Step { counts: vec![("pupils_erased", 0)], more: true });
    }
    let reports = db
        .execute(
            "INSERT INTO leaver_reports (tenant_id, school_id, pupil_id, left_on, delete_on, report) \
             SELECT p.tenant_id, p.school_id, p.id, p.left_at, \
                    (p.left_at + make_interval(months => $3::int8::int))::date, \
                    jsonb_build_object( \
                        'given_name', p.given_name, 'family_name', p.family_name, 'year_level', p.year_level, \
                        'school', s.name, 'left_on', p.left_at::text, \
                        'groups', (SELECT coalesce(jsonb_agg(g.name ORDER BY g.name), '[]'::jsonb) \
                                     FROM group_memberships m JOIN groups g ON g.id = m.group_id \
                                    WHERE m.tenant_id = p.tenant_id AND m.pupil_id = p.id), \
                        'results', (SELECT coalesce(jsonb_agg(jsonb_build_object( \
                                        'assessment', a.title, 'subject', a.subject, \
                                        'year_level', a.year_level, 'status', r.status, \
                                        'completed_at', rfc3339(r.completed_at), 'score', r.score, \
                                        'max_score', a.max_score, 'subtest_scores', r.subtest_scores) \
                                        ORDER BY r.completed_at, a.title), '[]'::jsonb) \
                                     FROM results r JOIN assessments a ON a.id = r.assessment_id \
                                    WHERE r.tenant_id = p.tenant_id AND r.pupil_id = p.id)) \
             FROM pupils p JOIN schools s ON s.id = p.school_id \
             WHERE p.tenant_id = $1::uuid AND p.id = ANY($2::text[]::uuid[]) AND p.year_level >= $4::int8 \
               AND (p.left_at + make_interval(months => $3::int8::int))::date > $5::text::date \
             ON CONFLICT (tenant_id, pupil_id) DO NOTHING",
            &[
                uuid(cx.tenant_id),
                Value::text_array(ids.iter().cloned()),
                p.leaver_report_months.into(),
                p.final_year_level.into(),
                today(cx).into(),
            ],
        )
        .await? as i64;
    let done = erasure::erase_pupils(db, cx.tenant_id, &ids, Reason::Retention).await?;
    audit::record(
        db,
        None,
        Event::new(cx.tenant_id, ACTOR, "retention.pupils_erased").target("retention_run", cx.run_id).details(
            json!({"pupil_ids": ids, "results_anonymised": done.results_anonymised, "leaver_reports_written": reports}),
        ),
    )
    .await?;
    Ok(Step {
        counts: vec![
            ("pupils_erased", done.pupils),
            ("results_anonymised", done.results_anonymised),
            ("leaver_reports_written", reports),
        ],
        more,
    })
}

/// Accounts deleted longer ago than the configured days: pseudonymised
/// (`tavle_core::erasure::pseudonymise_user`, shared with requests).
async fn deleted_accounts(db: &mut impl Db, cx: &Ctx<'_>) -> Result<Step, Problem> {
    let p = cx.policies;
    // Each account is a handful of statements: fewer per batch.
    let limit = p.batch_rows.min(100);
    let rows = db
        .query(
            "SELECT id::text AS id FROM users WHERE tenant_id = $1::uuid \
              AND deleted_at <= $2::text::timestamptz - make_interval(days => $3::int8::int) \
              AND username NOT LIKE 'erased-%' ORDER BY deleted_at, id LIMIT $4::int8",
            &[uuid(cx.tenant_id), cx.now.into(), p.pseudonymise_days.into(), limit.into()],
        )
        .await?;
    let mut ids = Vec::new();
    for row in &rows {
        let id = row.text("id")?;
        if erasure::pseudonymise_user(db, cx.tenant_id, &id).await?.is_some() {
            ids.push(id);
        }
    }
    if !ids.is_empty() {
        audit::record(
            db,
            None,
            Event::new(cx.tenant_id, ACTOR, "retention.accounts_pseudonymised")
                .target("retention_run", cx.run_id)
                .details(json!({"user_ids": ids})),
        )
        .await?;
    }
    Ok(Step { counts: vec![("accounts_pseudonymised", ids.len() as i64)], more: rows.len() as i64 == limit })
}

/// Access records older than the configured months, through the access
/// log's checkpointed pruning (`access_log_prune`, so the chain still
/// verifies), in cuts of at most `batch_rows` records: each lane deletes at
/// most `batch_rows / lanes` (at least one timestamp's worth) per cut.
/// Skipped when the run's clock is so far ahead of the database's that the
/// database's own six-month floor would refuse the cut.
async fn access_log(db: &mut impl Db, cx: &Ctx<'_>) -> Result<Step, Problem> {
    let p = cx.policies;
    let row = db
        .query_one(
            "WITH target AS (SELECT $2::text::timestamptz - make_interval(months => $3::int8::int) AS t), \
             per_lane AS (SELECT greatest(1, $4::int8 / access_log_lanes()) AS k) \
             SELECT rfc3339(target.t) AS target, target.t <= now() - interval '6 months' AS allowed, \
                    rfc3339((SELECT min(x.at) FROM generate_series(0, access_log_lanes() - 1) AS l, \
                        LATERAL (SELECT a.at FROM access_log a WHERE a.tenant_id = $1::uuid AND a.lane = l \
                                  AND a.at < target.t ORDER BY a.at OFFSET (SELECT k FROM per_lane) LIMIT 1) x)) \
                        AS cut, \
                    rfc3339((SELECT min(y.at) FROM generate_series(0, access_log_lanes() - 1) AS l, \
                        LATERAL (SELECT a.at FROM access_log a WHERE a.tenant_id = $1::uuid AND a.lane = l \
                                  AND a.at < target.t ORDER BY a.at LIMIT 1) y)) AS oldest \
             FROM target",
            &[uuid(cx.tenant_id), cx.now.into(), p.log_months.into(), p.batch_rows.into()],
        )
        .await?;
    let Some(oldest) = row.opt_text("oldest")? else {
        return Ok(Step::default());
    };
    if !row.bool("allowed")? {
        return Ok(Step::default());
    }
    let target = row.text("target")?;
    // A cut past the oldest timestamp, so that every cut deletes something.
    let (before, more) = match row.opt_text("cut")? {
        Some(cut) => (cut, true),
        None => (target, false),
    };
    let pruned = db
        .query_one(
            "SELECT deleted FROM access_log_prune($1::uuid, \
                 least($3::text::timestamptz, greatest($2::text::timestamptz, \
                       $4::text::timestamptz + interval '1 microsecond')))",
            &[uuid(cx.tenant_id), before.into(), row.text("target")?.into(), oldest.into()],
        )
        .await?;
    Ok(Step { counts: vec![("access_records_deleted", pruned.int("deleted")?)], more })
}

/// Audit records older than the configured months (`audit_log_prune`, at
/// most `batch_rows` at a time; the database refuses less than six months).
async fn audit_log(db: &mut impl Db, cx: &Ctx<'_>) -> Result<Step, Problem> {
    let p = cx.policies;
    let row = db
        .query_one(
            "WITH target AS (SELECT $2::text::timestamptz - make_interval(months => $3::int8::int) AS t) \
             SELECT CASE WHEN target.t <= now() - interval '6 months' \
                         THEN audit_log_prune($1::uuid, target.t, $4::int8::int) ELSE 0 END AS deleted FROM target",
            &[uuid(cx.tenant_id), cx.now.into(), p.log_months.into(), p.batch_rows.into()],
        )
        .await?;
    let deleted = row.int("deleted")?;
    Ok(Step { counts: vec![("audit_records_deleted", deleted)], more: deleted == p.batch_rows })
}

/// Expired exports, with the same audit record as the subject-requests
/// component writes when it deletes them.
async fn exports(db: &mut impl Db, cx: &Ctx<'_>) -> Result<Step, Problem> {
    let rows = db
        .query(
            "DELETE FROM subject_exports WHERE id IN (SELECT id FROM subject_exports \
                 WHERE tenant_id = $1::uuid AND expires_at <= $2::text::timestamptz ORDER BY id LIMIT $3::int8) \
             RETURNING request_id::text AS request_id, format",
            &[uuid(cx.tenant_id), cx.now.into(), cx.policies.batch_rows.into()],
        )
        .await?;
    for r in &rows {
        let request_id = r.text("request_id")?;
        audit::record(
            db,
            None,
            Event::new(cx.tenant_id, ACTOR, "subject_export.expired")
                .target("subject_request", &request_id)
                .details(json!({"format": r.text("format")?})),
        )
        .await?;
    }
    Ok(Step { counts: vec![("exports_deleted", rows.len() as i64)], more: rows.len() as i64 == cx.policies.batch_rows })
}

/// Due rows of what only lives for a while: $1 tenant, $2 the run's clock,
/// $3 the limit (and $4 the days of the deliveries policy).
const SESSIONS_DUE: &str = "DELETE FROM sessions WHERE id IN (SELECT s.id FROM sessions s \
     WHERE s.tenant_id = $1::uuid AND (s.expires_at < $2::text::timestamptz \
       OR s.idle_expires_at < $2::text::timestamptz OR s.revoked_at < $2::text::timestamptz) \
     ORDER BY s.id LIMIT $3::int8)";
const DELIVERIES_DUE: &str = "DELETE FROM webhook_deliveries WHERE (source_id, webhook_id) IN ( \
     SELECT d.source_id, d.webhook_id FROM webhook_deliveries d WHERE d.tenant_id = $1::uuid \
       AND d.received_at < $2::text::timestamptz - make_interval(days => $4::int8::int) \
     ORDER BY d.received_at LIMIT $3::int8)";
const SECRETS_DUE: &str = "DELETE FROM webhook_secrets WHERE id IN (SELECT w.id FROM webhook_secrets w \
     WHERE w.tenant_id = $1::uuid AND w.expires_at < $2::text::timestamptz \
     ORDER BY w.id LIMIT $3::int8)";
const LEAVER_REPORTS_DUE: &str = "DELETE FROM leaver_reports WHERE id IN (SELECT l.id FROM leaver_reports l \
     WHERE l.tenant_id = $1::uuid AND l.delete_on <= ($2::text::timestamptz AT TIME ZONE 'UTC')::date \
     ORDER BY l.delete_on, l.id LIMIT $3::int8)";

async fn delete_limited(db: &mut impl Db, cx: &Ctx<'_>, key: &'static str, sql: &str) -> Result<Step, Problem> {
    let p = cx.policies;
    let mut params = vec![uuid(cx.tenant_id), cx.now.into(), p.batch_rows.into()];
    if sql.contains("$4") {
        params.push(p.delivery_days.into());
    }
    let n = db.execute(sql, &params).await? as i64;
    Ok(Step { counts: vec![(key, n)], more: n == p.batch_rows })
}

/// The (assessment, year level) groups one k-anonymity batch may take.
const ANONYMITY_GROUPS: i64 = 16;

/// k-anonymity of anonymised results: a kept cell (assessment, school, year
/// level, gender) holds at least 5 results. Every cell of every level lies
/// inside one (assessment, year level) group, and a batch takes whole
/// groups: every pending row of up to [`ANONYMITY_GROUPS`] groups, in order,
/// while they add up to `batch_rows` (the first group whatever its size).
/// It counts every row of those groups, each where it is (kept rows) or
/// where it goes (pending rows), level by level, and gives each pending
/// row its final place in one change:
/// 1. a row at school level in a cell of 5 or more is kept there;
/// 2. the others go to tenant level (school NULL); with their gender, the
///    cell (assessment, year level, gender) of all rows there is counted:
///    5 or more, kept there;
/// 3. the rest lose their gender; the cell (assessment, year level) of all
///    rows without gender is counted: 5 or more, kept; under 5, dropped.
///
/// No decision counts a row that stays pending, so rows that arrive later
/// (an erasure at any time) cannot undo one: kept rows only join cells of
/// 5 or more, and cells never lose kept rows.
async fn anonymity(db: &mut impl Db, cx: &Ctx<'_>) -> Result<Step, Problem> {
    // Rows are changed by their ctid, read by the same statement: no index
    // lookup per row (only retention, under its lease, changes these rows).
    let row = db
        .query_one(
            &format!(
                "WITH first AS ( \
                     SELECT assessment_id, coalesce(year_level, 0) AS year_key FROM anonymised_results \
                     WHERE tenant_id = $1::uuid AND pending \
                     ORDER BY assessment_id, coalesce(year_level, 0), id LIMIT $2::int8), \
                 groups AS ( \
                     SELECT g.assessment_id, g.year_key, \
                            sum(g.n) OVER (ORDER BY g.assessment_id, g.year_key) AS upto, \
                            row_number() OVER (ORDER BY g.assessment_id, g.year_key) AS k \
                     FROM (SELECT f.assessment_id, f.year_key, \
                                  (SELECT count(*) FROM anonymised_results a WHERE a.tenant_id = $1::uuid \
                                      AND a.pending AND a.assessment_id = f.assessment_id \
                                      AND coalesce(a.year_level, 0) = f.year_key) AS n \
                           FROM (SELECT DISTINCT assessment_id, year_key FROM first) f) g), \
                 scope AS ( \
                     SELECT assessment_id, year_key FROM groups WHERE k = 1 OR (upto <= $2::int8 AND k <= $3::int8)), \
                 {FATES}, \
                 mine AS MATERIALIZED (SELECT * FROM decided WHERE pending), \
                 dropped AS ( \
                     DELETE FROM anonymised_results a USING mine m WHERE a.ctid = m.ctid AND m.fate = 'dropped' \
                     RETURNING m.was_school, m.had_gender, m.fate), \
                 kept AS ( \
                     UPDATE anonymised_results a SET \
                         school_id = CASE WHEN m.fate = 'school' THEN a.school_id END, \
                         gender = CASE WHEN m.fate IN ('school', 'tenant') THEN a.gender END, \
                         pending = false \
                     FROM mine m WHERE a.ctid = m.ctid AND m.fate <> 'dropped' \
                     RETURNING m.was_school, m.had_gender, m.fate), \
                 counted AS (SELECT * FROM dropped UNION ALL SELECT * FROM kept) \
                 SELECT (SELECT count(*) FROM counted) AS taken, {FATE_COUNTS}"
            ),
            &[uuid(cx.tenant_id), cx.policies.batch_rows.into(), ANONYMITY_GROUPS.into()],
        )
        .await?;
    let taken = row.int("taken")?;
    Ok(Step {
        counts: vec![
            ("results_checked", taken),
            ("results_generalised_to_tenant", row.int("results_generalised_to_tenant")?),
            ("results_gender_dropped", row.int("results_gender_dropped")?),
            ("results_dropped", row.int("results_dropped")?),
        ],
        more: taken > 0,
    })
}

/// Each row's place after k-anonymity (`decided`: id, ctid, pending,
/// was_school, had_gender, fate 'school' | 'tenant' | 'no_gender' |
/// 'dropped'), for every row of the (assessment_id, year_key) groups in
/// `scope` (a CTE before it); see [`anonymity`]. A kept row counts where it
/// is, a pending row where it goes.
const FATES: &str = "school_level AS MATERIALIZED ( \
         SELECT a.id, a.ctid, a.pending, a.assessment_id, a.school_id, a.year_level, a.gender, \
                a.school_id IS NULL OR (a.pending AND count(*) OVER ( \
                    PARTITION BY a.assessment_id, a.school_id, a.year_level, a.gender) < 5) AS at_tenant \
         FROM anonymised_results a \
         WHERE a.tenant_id = $1::uuid \
           AND (a.assessment_id, coalesce(a.year_level, 0)) IN (SELECT assessment_id, year_key FROM scope)), \
     tenant_level AS ( \
         SELECT *, at_tenant AND (gender IS NULL OR (pending AND count(*) FILTER (WHERE at_tenant AND gender IS NOT NULL) \
                    OVER (PARTITION BY assessment_id, year_level, gender) < 5)) AS no_gender \
         FROM school_level), \
     decided AS ( \
         SELECT t.id, t.ctid, t.pending, t.school_id IS NOT NULL AS was_school, t.gender IS NOT NULL AS had_gender, \
                CASE WHEN NOT t.at_tenant THEN 'school' WHEN NOT t.no_gender THEN 'tenant' \
                     WHEN count(*) FILTER (WHERE t.no_gender) OVER (PARTITION BY t.assessment_id, t.year_level) >= 5 \
                         THEN 'no_gender' \
                     ELSE 'dropped' END AS fate \
         FROM tenant_level t)";

/// The report's k-anonymity counts of the decided pending rows in `counted`.
const FATE_COUNTS: &str = "(SELECT count(*) FROM counted WHERE was_school AND fate <> 'school') \
         AS results_generalised_to_tenant, \
     (SELECT count(*) FROM counted WHERE had_gender AND fate IN ('no_gender', 'dropped')) AS results_gender_dropped, \
     (SELECT count(*) FROM counted WHERE fate = 'dropped') AS results_dropped";
