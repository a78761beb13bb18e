//! The privacy officer's view of transfers: pupils whom a roster moved from
//! one school of the tenant to another (`pupil.transferred` in the audit
//! log, written by the roster's own transaction), newest first, with the
//! schools and the source whose roster moved them.
//!
//! A page names pupils and the schools they attended, so it is an access to
//! their data: it writes an access record naming exactly the pupils shown
//! (action `pupil_transfers.viewed`), in the same statement as the read.

use crate::roster::TRANSFER_ACTION;
use serde_json::json;
use tavle_core::access_log::logged_read_naming;
use tavle_core::auth::{authenticate_as, Role};
use tavle_core::db::{uuid, Db, Row, Value};
use tavle_core::vars::Variables;
use tavle_core::web::{before_cursor, cursor_param, newest_first_page, page_limit, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

/// `GET /admin/transfers?limit&cursor`, privacy officers only.
pub async fn list(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
) -> HttpResult {
    let limit = page_limit(req)?;
    let cursor = cursor_param(req)?;
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let cursors = crate::cursor_key(vars)?.bind("transfers.list", &who);
    let before: Value = before_cursor(&cursors, cursor.as_ref())?.into();
    // The page and whether older transfers follow, in one read (no look-ahead
    // row: the access record names exactly the pupils shown). The action is
    // a literal so that the partial index `audit_log_pupil_transfers` applies.
    let sql = format!(
        "WITH page AS ( \
             SELECT a.id, rfc3339(a.at) AS at, a.target_id AS pupil_id, \
                    a.details->>'from_school_id' AS from_school_id, fs.name AS from_school_name, \
                    a.details->>'to_school_id' AS to_school_id, ts.name AS to_school_name, \
                    a.details->>'source_id' AS source_id, ws.name AS source_name \
             FROM audit_log a \
             LEFT JOIN schools fs ON fs.tenant_id = a.tenant_id AND fs.id = (a.details->>'from_school_id')::uuid \
             LEFT JOIN schools ts ON ts.tenant_id = a.tenant_id AND ts.id = (a.details->>'to_school_id')::uuid \
             LEFT JOIN webhook_sources ws ON ws.tenant_id = a.tenant_id AND ws.id = (a.details->>'source_id')::uuid \
             WHERE a.tenant_id = $1::uuid AND a.action = '{TRANSFER_ACTION}' AND ($2::int8 IS NULL OR a.id < $2::int8) \
             ORDER BY a.id DESC LIMIT $3::int8) \
         SELECT page.*, EXISTS (SELECT 1 FROM audit_log o WHERE o.tenant_id = $1::uuid \
                                  AND o.action = '{TRANSFER_ACTION}' AND o.id < (SELECT min(id) FROM page)) AS more \
         FROM page"
    );
    let params = vec![uuid(&who.tenant_id), before, limit.into()];
    let mut rows = logged_read_naming(db, &who, meta, "pupil_transfers.viewed", &sql, "pupil_id", params).await?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.int("id").unwrap_or(i64::MIN)));
    let items = rows.iter().map(view).collect::<Result<Vec<_>, Problem>>()?;
    newest_first_page(&rows, items, &cursors)
}

fn view(r: &Row) -> Result<serde_json::Value, Problem> {
    // Names are NULL once a school is gone; the ids stay.
    let named = |id: &str, name: &str| -> Result<serde_json::Value, Problem> {
        Ok(json!({"id": r.text(id)?, "name": r.opt_text(name)?}))
    };
    Ok(json!({
        "id": r.int("id")?.to_string(),
        "at": r.text("at")?,
        "pupil_id": r.text("pupil_id")?,
        "from_school": named("from_school_id", "from_school_name")?,
        "to_school": named("to_school_id", "to_school_name")?,
        "source": named("source_id", "source_name")?,
    }))
}
