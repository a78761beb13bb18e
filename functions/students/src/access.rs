//! The privacy officer's view of who accessed a pupil's data, and when.
//! It covers restricted pupils too (they are hidden from everyone else), and
//! is itself an access to personal data, so it is logged like any other.

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tavle_core::access_log::logged_read;
use tavle_core::auth::{authenticate_as, Role};
use tavle_core::db::{uuid, Db, Value};
use tavle_core::vars::Variables;
use tavle_core::web::{
    decode_cursor, encode_cursor, json, malformed_cursor, page_limit, path_id, Body, HttpResult, RequestMeta,
};
use tavle_core::Problem;

#[derive(Deserialize)]
struct Cursor {
    before: i64,
}

pub async fn for_pupil(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    pupil: &str,
) -> HttpResult {
    let pupil = path_id(pupil)?;
    let limit = page_limit(req)?;
    let before = match decode_cursor::<Cursor>(req)? {
        Some(c) if c.before > 0 => Value::Int(c.before),
        Some(_) => return Err(malformed_cursor()),
        None => Value::Null,
    };
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
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
        "SELECT l.seq, rfc3339(l.at) AS at, l.actor_user_id, u.display_name, u.username, l.action, l.client_ip, \
                l.request_id, cardinality(l.pupil_ids)::int8 AS pupils_in_record \
         FROM access_log l LEFT JOIN users u ON u.id = l.actor_user_id AND u.tenant_id = l.tenant_id \
         WHERE l.tenant_id = $1::uuid AND l.pupil_ids @> ARRAY[$2::uuid] \
           AND ($3::int8 IS NULL OR l.seq < $3::int8) \
         ORDER BY l.seq DESC LIMIT $4::int8",
        "(SELECT CASE WHEN EXISTS (SELECT 1 FROM data) THEN ARRAY[$2::uuid] END)",
        vec![uuid(&who.tenant_id), uuid(&pupil), before, (limit + 1).into()],
    )
    .await?;
    let shown = &rows[..rows.len().min(limit as usize)];
    let items = shown
        .iter()
        .map(|r| {
            Ok(json!({
                "seq": r.int("seq")?,
                "at": r.text("at")?,
                "actor": {
                    "id": r.text("actor_user_id")?,
                    "display_name": r.opt_text("display_name")?,
                    "username": r.opt_text("username")?,
                },
                "action": r.text("action")?,
                "client_ip": r.opt_text("client_ip")?,
                "request_id": r.opt_text("request_id")?,
                "pupils_in_record": r.int("pupils_in_record")?,
            }))
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let next_cursor = match (rows.len() > shown.len(), shown.last()) {
        (true, Some(last)) => Some(encode_cursor(&json!({"before": last.int("seq")?}))),
        _ => None,
    };
    json(StatusCode::OK, &json!({"pupil_id": pupil, "items": items, "next_cursor": next_cursor}))
}
