//! Schools, groups and assessments in scope: the structure a teacher
//! navigates by. No pupil data, so no access records.

use crate::pupils::{text_param, uuid_param};
use crate::scope::Scope;
use serde::Deserialize;
use serde_json::json;
use tavle_core::db::{uuid, Db, Value};
use tavle_core::vars::Variables;
use tavle_core::web::{decode_cursor, malformed_cursor, page, page_limit, Body, HttpResult};
use tavle_core::Problem;

type Request = http::Request<Body>;

/// Name-ordered cursor (schools, groups) or date-ordered (assessments).
#[derive(Deserialize)]
struct Cursor {
    k: String,
    id: String,
}

fn cursor(req: &Request) -> Result<(Value, Value), Problem> {
    match decode_cursor::<Cursor>(req)? {
        None => Ok((Value::Null, Value::Null)),
        Some(c) if uuid::Uuid::parse_str(&c.id).is_ok() => Ok((c.k.into(), uuid(c.id))),
        Some(_) => Err(malformed_cursor()),
    }
}

pub async fn groups(req: &Request, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let (after_name, after_id) = cursor(req)?;
    let school = uuid_param(req, "school_id")?.map(uuid).unwrap_or(Value::Null);
    let scope = Scope::of(req, vars, db).await?;
    let mut params = scope.params();
    params.extend([scope.whole_structure().into(), after_name, after_id, school, (limit + 1).into()]);
    let rows = db
        .query(
            "SELECT g.id, g.name, g.year_level, s.id AS school_id, s.name AS school_name FROM groups g JOIN schools s ON s.id = g.school_id \
             WHERE g.tenant_id = $1::uuid \
               AND ($4::bool OR g.id = ANY($2::text[]::uuid[]) OR g.school_id = ANY($3::text[]::uuid[])) \
               AND ($5::text IS NULL OR (g.name, g.id) > ($5::text, $6::uuid)) \
               AND ($7::uuid IS NULL OR g.school_id = $7::uuid) \
             ORDER BY g.name, g.id LIMIT $8::int8",
            &params,
        )
        .await?;
    page(
        &rows,
        limit,
        |r| {
            Ok(json!({"id": r.text("id")?, "name": r.text("name")?, "year_level": r.opt_int("year_level")?,
                      "school": {"id": r.text("school_id")?, "name": r.text("school_name")?}}))
        },
        |r| Ok(json!({"k": r.text("name")?, "id": r.text("id")?})),
    )
}

pub async fn schools(req: &Request, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let (after_name, after_id) = cursor(req)?;
    let scope = Scope::of(req, vars, db).await?;
    let mut params = scope.params();
    params.extend([scope.whole_structure().into(), after_name, after_id, (limit + 1).into()]);
    let rows = db
        .query(
            "SELECT s.id, s.name FROM schools s \
             WHERE s.tenant_id = $1::uuid \
               AND ($4::bool OR s.id = ANY($3::text[]::uuid[]) \
                    OR s.id IN (SELECT g.school_id FROM groups g \
                                WHERE g.tenant_id = $1::uuid AND g.id = ANY($2::text[]::uuid[]))) \
               AND ($5::text IS NULL OR (s.name, s.id) > ($5::text, $6::uuid)) \
             ORDER BY s.name, s.id LIMIT $7::int8",
            &params,
        )
        .await?;
    page(
        &rows,
        limit,
        |r| Ok(json!({"id": r.text("id")?, "name": r.text("name")?})),
        |r| Ok(json!({"k": r.text("name")?, "id": r.text("id")?})),
    )
}

/// The tenant's assessments, newest first: what results are registered
/// against and what the class overview is opened for.
pub async fn assessments(req: &Request, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let (after_date, after_id) = cursor(req)?;
    if let Value::Text(d) = &after_date {
        if !tavle_core::scores::valid_date(d) {
            return Err(malformed_cursor());
        }
    }
    let subject = text_param(req, "subject", 100)?;
    let scope = Scope::of(req, vars, db).await?;
    let rows = db
        .query(
            "SELECT a.id, a.title, a.subject, a.year_level, a.max_score, a.administered_on::text AS administered_on FROM assessments a \
             WHERE a.tenant_id = $1::uuid \
               AND ($2::text IS NULL OR (a.administered_on, a.id) < ($2::text::date, $3::uuid)) \
               AND ($4::text IS NULL OR a.subject = $4::text) \
             ORDER BY a.administered_on DESC, a.id DESC LIMIT $5::int8",
            &[uuid(&scope.who.tenant_id), after_date, after_id, subject.into(), (limit + 1).into()],
        )
        .await?;
    page(
        &rows,
        limit,
        |r| {
            Ok(json!({"id": r.text("id")?, "title": r.text("title")?, "subject": r.text("subject")?,
                      "year_level": r.opt_int("year_level")?, "max_score": r.float("max_score")?,
                      "administered_on": r.text("administered_on")?}))
        },
        |r| Ok(json!({"k": r.text("administered_on")?, "id": r.text("id")?})),
    )
}
