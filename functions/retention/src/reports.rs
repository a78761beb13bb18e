//! Run reports: the scheduler gets the whole run's counts; a privacy officer
//! lists runs and reads each with their own tenant's counts only.

use serde_json::{json, Value as Json};
use tavle_core::db::{uuid, Db, Row, Value};
use tavle_core::Problem;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Columns of a report; `$2` the tenant (NULL: all tenants' totals), `$3` the clock.
const REPORT: &str = "SELECT r.id::text AS id, r.trigger, r.dry_run, rfc3339(r.started_at) AS started_at, \
        rfc3339(r.finished_at) AS finished_at, r.batches, r.longest_batch_ms, r.policies, r.error, \
        CASE WHEN r.status = 'running' AND NOT EXISTS (SELECT 1 FROM retention_lock l WHERE l.run_id = r.id \
                  AND l.held_until >= $3::text::timestamptz) THEN 'interrupted' ELSE r.status END AS status, \
        CASE WHEN $2::uuid IS NULL THEN r.totals \
             ELSE coalesce((SELECT c.counts FROM retention_run_counts c \
                            WHERE c.run_id = r.id AND c.tenant_id = $2::uuid), '{}'::jsonb) END AS counts \
     FROM retention_runs r";

fn report(row: &Row) -> Result<Json, Problem> {
    let status = row.text("status")?;
    Ok(json!({
        "id": row.text("id")?,
        "trigger": row.text("trigger")?,
        "dry_run": row.bool("dry_run")?,
        "status": status,
        "more_remaining": status == "more_remaining" || status == "interrupted" || status == "failed",
        "started_at": row.text("started_at")?,
        "finished_at": row.opt_text("finished_at")?,
        "batches": row.int("batches")?,
        "longest_batch_ms": row.int("longest_batch_ms")?,
        "policies": row.json("policies")?,
        "counts": row.json("counts")?,
        "error": row.opt_text("error")?,
    }))
}

fn clock(now: OffsetDateTime) -> Value {
    now.format(&Rfc3339).unwrap_or_default().into()
}

/// One run's report, with `tenant_id`'s counts (or all tenants' totals).
pub async fn one(
    db: &mut impl Db,
    run_id: &str,
    tenant_id: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<Json>, Problem> {
    let sql = format!("{REPORT} WHERE r.id = $1::uuid");
    let row = db.query_opt(&sql, &[uuid(run_id), tenant_id.map(uuid).unwrap_or(Value::Null), clock(now)]).await?;
    row.as_ref().map(report).transpose()
}

/// Runs newest first, `limit` of them, before run `before` (the cursor: a
/// run id; runs are not personal data).
pub async fn list(
    db: &mut impl Db,
    tenant_id: &str,
    before: Option<&str>,
    limit: i64,
    now: OffsetDateTime,
) -> Result<Json, Problem> {
    let sql = format!(
        "{REPORT} WHERE $1::uuid IS NULL OR (r.started_at, r.id) < \
             (SELECT b.started_at, b.id FROM retention_runs b WHERE b.id = $1::uuid) \
         ORDER BY r.started_at DESC, r.id DESC LIMIT $4::int8"
    );
    let rows = db
        .query(&sql, &[before.map(uuid).unwrap_or(Value::Null), uuid(tenant_id), clock(now), (limit + 1).into()])
        .await?;
    let items = rows.iter().take(limit as usize).map(report).collect::<Result<Vec<_>, _>>()?;
    let next =
        if rows.len() as i64 > limit { items.last().and_then(|r| r["id"].as_str()).map(str::to_owned) } else { None };
    Ok(json!({"items": items, "next_cursor": next}))
}
