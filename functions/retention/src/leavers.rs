//! `GET /retention/leaver-reports`: the leavers' reports that retention
//! keeps for pupils who left from the final year (seed 003), for the school
//! leaders of the school they left and for privacy officers. Each read
//! writes its access record (naming the erased pupils' old ids), as every
//! read of pupil data does.

use serde_json::json;
use tavle_core::access_log::logged_read;
use tavle_core::auth::{authenticate, Role};
use tavle_core::db::{uuid, Db, Value};
use tavle_core::vars::Variables;
use tavle_core::web::{self, query_param, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

pub async fn list(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
) -> HttpResult {
    let limit = web::page_limit(req)?;
    let parse_id = |name: &str, bad: fn() -> Problem| -> Result<Option<String>, Problem> {
        match query_param(req, name)?.as_deref().map(uuid::Uuid::parse_str) {
            None => Ok(None),
            Some(Ok(u)) => Ok(Some(u.to_string())),
            Some(Err(_)) => Err(bad()),
        }
    };
    let school = parse_id("school_id", || {
        Problem::bad_query(vec![tavle_core::problem::field("/query/school_id", "must be a uuid")])
    })?;
    let cursor = parse_id("cursor", web::malformed_cursor)?;
    let who = authenticate(req, db, vars).await?;
    // A privacy officer sees the tenant's; a school leader their schools'.
    let schools: Option<Vec<String>> = if who.has_role(Role::PrivacyOfficer) {
        None
    } else if who.has_role(Role::SchoolLeader) {
        Some(who.led_schools())
    } else {
        return Err(Problem::forbidden("requires the school_leader or privacy_officer role"));
    };
    if let (Some(s), Some(led)) = (&school, &schools) {
        if !led.contains(s) {
            return Err(Problem::not_found());
        }
    }
    let rows = logged_read(
        db,
        &who,
        meta,
        "leaver_reports.listed",
        "SELECT l.id::text AS id, l.pupil_id, l.school_id::text AS school_id, l.left_on::text AS left_on, \
                l.delete_on::text AS delete_on, l.report \
         FROM leaver_reports l \
         WHERE l.tenant_id = $1::uuid AND ($2::text[] IS NULL OR l.school_id = ANY($2::text[]::uuid[])) \
           AND ($3::uuid IS NULL OR l.school_id = $3::uuid) \
           AND ($4::uuid IS NULL OR (l.left_on, l.id) < \
                (SELECT b.left_on, b.id FROM leaver_reports b WHERE b.tenant_id = $1::uuid AND b.id = $4::uuid)) \
         ORDER BY l.left_on DESC, l.id DESC LIMIT $5::int8",
        "(SELECT array_agg(pupil_id) FROM data)",
        vec![
            uuid(&who.tenant_id),
            schools.map(Value::text_array).unwrap_or(Value::Null),
            school.map(uuid).unwrap_or(Value::Null),
            cursor.map(uuid).unwrap_or(Value::Null),
            (limit + 1).into(),
        ],
    )
    .await?;
    let items = rows
        .iter()
        .take(limit as usize)
        .map(|r| {
            Ok(json!({
                "id": r.text("id")?,
                "school_id": r.text("school_id")?,
                "left_on": r.text("left_on")?,
                "delete_on": r.text("delete_on")?,
                "report": r.json("report")?,
            }))
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let next = (rows.len() as i64 > limit).then(|| items.last().map(|i| i["id"].clone())).flatten();
    web::json(http::StatusCode::OK, &json!({"items": items, "next_cursor": next}))
}
