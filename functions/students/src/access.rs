//! The privacy officer's views: who accessed a pupil's data, and when, and
//! every search by identity number, hit or miss. They cover restricted
//! pupils too (they are hidden from everyone else), and are themselves an
//! access to personal data, so they are logged like any other read.

use http::StatusCode;
use serde_json::json;
use tavle_core::access_log::{logged_read, logged_read_naming};
use tavle_core::auth::{authenticate_as, Role};
use tavle_core::db::{uuid, Db, Row, Value};
use tavle_core::vars::Variables;
use tavle_core::web::{
    before_cursor, cursor_param, json, newest_first_page, page_limit, path_id, Body, HttpResult, RequestMeta,
};
use tavle_core::Problem;

pub async fn for_pupil(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    pupil: &str,
) -> HttpResult {
    let pupil = path_id(pupil)?;
    let limit = page_limit(req)?;
    let cursor = cursor_param(req)?;
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let cursors = crate::cursor_key(vars)?.bind("pupils.access_log", &who).filter("pupil_id", Some(&pupil));
    let before: Value = before_cursor(&cursors, cursor.as_ref())?.into();
    db.query_opt(
        "SELECT 1::int8 FROM pupils WHERE id = $1::uuid AND tenant_id = $2::uuid",
        &[uuid(&pupil), uuid(&who.tenant_id)],
    )
    .await?
    .ok_or_else(Problem::not_found)?;
    let rows = logged_read(
        db,
        &who,
        meta,
        "access_log.viewed",
        "SELECT l.id, l.lane::int8 AS lane, l.seq, rfc3339(l.at) AS at, l.actor_user_id, u.display_name, u.username, l.action, l.client_ip, \
                l.request_id, cardinality(l.pupil_ids)::int8 AS pupils_in_record \
         FROM access_log l LEFT JOIN users u ON u.id = l.actor_user_id AND u.tenant_id = l.tenant_id \
         WHERE l.tenant_id = $1::uuid AND l.pupil_ids @> ARRAY[$2::uuid] \
           AND ($3::int8 IS NULL OR l.id < $3::int8) \
         ORDER BY l.id DESC LIMIT $4::int8",
        "(SELECT CASE WHEN EXISTS (SELECT 1 FROM data) THEN ARRAY[$2::uuid] END)",
        vec![uuid(&who.tenant_id), uuid(&pupil), before, (limit + 1).into()],
    )
    .await?;
    let shown = &rows[..rows.len().min(limit as usize)];
    let items = shown
        .iter()
        .map(|r| {
            Ok(json!({
                "lane": r.int("lane")?,
                "seq": r.int("seq")?,
                "at": r.text("at")?,
                "actor": actor(r)?,
                "action": r.text("action")?,
                "client_ip": r.opt_text("client_ip")?,
                "request_id": r.opt_text("request_id")?,
                "pupils_in_record": r.int("pupils_in_record")?,
            }))
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let next_cursor = match (rows.len() > shown.len(), shown.last()) {
        (true, Some(last)) => Some(cursors.seal(&json!({"before": last.int("id")?}))),
        _ => None,
    };
    json(StatusCode::OK, &json!({"pupil_id": pupil, "items": items, "next_cursor": next_cursor}))
}

/// The tenant's identity-number searches (`pupil.searched` in the audit
/// log), newest first: who searched, when, from where, and whether a pupil
/// was found (which one). Privacy officers only. A page that names pupils
/// (hits) is an access to their data and writes an access record naming
/// them; a page of misses names nobody and writes none.
pub async fn searches(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
) -> HttpResult {
    let limit = page_limit(req)?;
    let cursor = cursor_param(req)?;
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let cursors = crate::cursor_key(vars)?.bind("pupils.searches", &who);
    let before: Value = before_cursor(&cursors, cursor.as_ref())?.into();
    // The page and whether older searches follow, in one read (no look-ahead
    // row: the access record names exactly the pupils shown). The action is
    // a literal so that the partial index `audit_log_pupil_searches` applies
    // under any plan.
    let action = crate::pupils::SEARCH_ACTION;
    let sql = format!(
        "WITH page AS ( \
             SELECT a.id, rfc3339(a.at) AS at, a.actor_user_id::text AS actor_user_id, u.username, u.display_name, \
                    a.client_ip, coalesce((a.details->>'hit')::boolean, false) AS hit, \
                    a.details->>'pupil_id' AS pupil_id \
             FROM audit_log a LEFT JOIN users u ON u.id = a.actor_user_id AND u.tenant_id = a.tenant_id \
             WHERE a.tenant_id = $1::uuid AND a.action = '{action}' AND ($2::int8 IS NULL OR a.id < $2::int8) \
             ORDER BY a.id DESC LIMIT $3::int8) \
         SELECT page.*, EXISTS (SELECT 1 FROM audit_log o WHERE o.tenant_id = $1::uuid AND o.action = '{action}' \
                                  AND o.id < (SELECT min(id) FROM page)) AS more \
         FROM page"
    );
    let params = vec![uuid(&who.tenant_id), before, limit.into()];
    let mut rows = logged_read_naming(db, &who, meta, "pupil_searches.viewed", &sql, "pupil_id", params).await?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.int("id").unwrap_or(i64::MIN)));
    let items = rows
        .iter()
        .map(|r| {
            Ok(json!({
                "id": r.int("id")?.to_string(),
                "at": r.text("at")?,
                "actor": actor(r)?,
                "client_ip": r.opt_text("client_ip")?,
                "hit": r.bool("hit")?,
                "pupil_id": r.opt_text("pupil_id")?,
            }))
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    newest_first_page(&rows, items, &cursors)
}

/// The staff user behind a record (name and username are NULL once the
/// account is gone).
fn actor(r: &Row) -> Result<serde_json::Value, Problem> {
    Ok(json!({
        "id": r.text("actor_user_id")?,
        "display_name": r.opt_text("display_name")?,
        "username": r.opt_text("username")?,
    }))
}
