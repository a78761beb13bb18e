//! Schools, groups and assessments in scope: the structure a teacher
//! navigates by. No pupil data, so no access records.

use crate::pupils::{text_param, uuid_param};
use crate::scope::Scope;
use serde::Deserialize;
use serde_json::json;
use tavle_core::cursor::{Cursors, SealedCursor};
use tavle_core::db::{uuid, Db, Value};
use tavle_core::vars::Variables;
use tavle_core::web::{cursor_param, malformed_cursor, open_cursor, page, page_limit, Body, HttpResult};
use tavle_core::Problem;

type Request = http::Request<Body>;

/// The cursor of a name-ordered list (schools, groups): the id of the last
/// item shown, whose name and id the next page continues after. Names stay
/// out of cursors, which then stay short whatever the names are.
#[derive(Deserialize)]
struct After {
    after: String,
}

/// The id a name-ordered list continues after, or NULL on the first page.
fn after(cursors: &Cursors, cursor: Option<&SealedCursor>) -> Result<Value, Problem> {
    match open_cursor::<After>(cursors, cursor)? {
        None => Ok(Value::Null),
        Some(c) => uuid::Uuid::parse_str(&c.after).map(|u| uuid(u.to_string())).map_err(|_| malformed_cursor()),
    }
}

/// The cursor of the date-ordered list (assessments): date and id of the
/// last item shown.
#[derive(Deserialize)]
struct Dated {
    k: String,
    id: String,
}

pub async fn groups(req: &Request, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let cursor = cursor_param(req)?;
    let school = uuid_param(req, "school_id")?;
    let scope = Scope::of(req, vars, db).await?;
    let cursors = crate::cursor_key(vars)?.bind("groups.list", &scope.who).filter("school_id", school.as_deref());
    let after = after(&cursors, cursor.as_ref())?;
    let mut params = scope.params();
    params.extend([scope.whole_structure().into(), after, school.map(uuid).unwrap_or(Value::Null), (limit + 1).into()]);
    let rows = db
        .query(
            "SELECT g.id, g.name, g.year_level, s.id AS school_id, s.name AS school_name FROM groups g JOIN schools s ON s.id = g.school_id \
             WHERE g.tenant_id = $1::uuid \
               AND ($4::bool OR g.id = ANY($2::text[]::uuid[]) OR g.school_id = ANY($3::text[]::uuid[])) \
               AND ($5::uuid IS NULL OR (g.name, g.id) > \
                    (SELECT c.name, c.id FROM groups c WHERE c.id = $5::uuid AND c.tenant_id = $1::uuid)) \
               AND ($6::uuid IS NULL OR g.school_id = $6::uuid) \
             ORDER BY g.name, g.id LIMIT $7::int8",
            &params,
        )
        .await?;
    page(
        &rows,
        limit,
        &cursors,
        |r| {
            Ok(json!({"id": r.text("id")?, "name": r.text("name")?, "year_level": r.opt_int("year_level")?,
                      "school": {"id": r.text("school_id")?, "name": r.text("school_name")?}}))
        },
        |r| Ok(json!({"after": r.text("id")?})),
    )
}

pub async fn schools(req: &Request, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let cursor = cursor_param(req)?;
    let scope = Scope::of(req, vars, db).await?;
    let cursors = crate::cursor_key(vars)?.bind("schools.list", &scope.who);
    let after = after(&cursors, cursor.as_ref())?;
    let mut params = scope.params();
    params.extend([scope.whole_structure().into(), after, (limit + 1).into()]);
    let rows = db
        .query(
            "SELECT s.id, s.name FROM schools s \
             WHERE s.tenant_id = $1::uuid \
               AND ($4::bool OR s.id = ANY($3::text[]::uuid[]) \
                    OR s.id IN (SELECT g.school_id FROM groups g \
                                WHERE g.tenant_id = $1::uuid AND g.id = ANY($2::text[]::uuid[]))) \
               AND ($5::uuid IS NULL OR (s.name, s.id) > \
                    (SELECT c.name, c.id FROM schools c WHERE c.id = $5::uuid AND c.tenant_id = $1::uuid)) \
             ORDER BY s.name, s.id LIMIT $6::int8",
            &params,
        )
        .await?;
    page(
        &rows,
        limit,
        &cursors,
        |r| Ok(json!({"id": r.text("id")?, "name": r.text("name")?})),
        |r| Ok(json!({"after": r.text("id")?})),
    )
}

/// The tenant's assessments, newest first: what results are registered
/// against and what the class overview is opened for.
pub async fn assessments(req: &Request, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let cursor = cursor_param(req)?;
    let subject = text_param(req, "subject", 100)?;
    let scope = Scope::of(req, vars, db).await?;
    let cursors = crate::cursor_key(vars)?.bind("assessments.list", &scope.who).filter("subject", subject.as_deref());
    let (after_date, after_id) = match open_cursor::<Dated>(&cursors, cursor.as_ref())? {
        None => (Value::Null, Value::Null),
        Some(c) if tavle_core::scores::valid_date(&c.k) && uuid::Uuid::parse_str(&c.id).is_ok() => {
            (c.k.into(), uuid(c.id))
        }
        Some(_) => return Err(malformed_cursor()),
    };
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
        &cursors,
        |r| {
            Ok(json!({"id": r.text("id")?, "title": r.text("title")?, "subject": r.text("subject")?,
                      "year_level": r.opt_int("year_level")?, "max_score": r.float("max_score")?,
                      "administered_on": r.text("administered_on")?}))
        },
        |r| Ok(json!({"k": r.text("administered_on")?, "id": r.text("id")?})),
    )
}
