//! Pupils in scope: the list with filters and name search, the search by
//! identity number (POST body only, never a URL), and a pupil's profile with
//! results over time.

use crate::scope::{Scope, PUPIL_VISIBLE, VISIBLE_PUPIL_IDS};
use crate::BODY_LIMIT;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tavle_core::access_log::{logged_read, logged_read_audited, ReadEvent};
use tavle_core::crypto::BlindIndex;
use tavle_core::db::{uuid, Db, Row, Value};
use tavle_core::identity::{IdentityNumber, SyntheticPolicy};
use tavle_core::names;
use tavle_core::problem::field;
use tavle_core::scores::canonical_date;
use tavle_core::vars::Variables;
use tavle_core::web::{decode_cursor, encode_cursor, json, page_limit, path_id, query_param, read_json, Body};
use tavle_core::web::{malformed_cursor, HttpResult, RequestMeta};
use tavle_core::Problem;

type Request = http::Request<Body>;

/// Columns of a pupil summary; `pupil_id` names the pupil for the access log.
macro_rules! pupil_columns {
    () => {
        "p.id AS pupil_id, p.given_name, p.family_name, p.year_level, p.school_id, s.name AS school_name, \
         p.special_needs, p.left_at::text AS left_at, \
         (SELECT coalesce(jsonb_agg(jsonb_build_object('id', g.id, 'name', g.name) ORDER BY g.name, g.id), '[]'::jsonb) \
          FROM group_memberships m JOIN groups g ON g.id = m.group_id WHERE m.pupil_id = p.id) AS groups"
    };
}
const PUPIL_COLUMNS: &str = pupil_columns!();

fn pupil_view(row: &Row) -> Result<Json, Problem> {
    Ok(json!({
        "id": row.text("pupil_id")?,
        "given_name": row.text("given_name")?,
        "family_name": row.text("family_name")?,
        "year_level": row.opt_int("year_level")?,
        "school": {"id": row.text("school_id")?, "name": row.text("school_name")?},
        "special_needs": row.bool("special_needs")?,
        "left_at": row.opt_text("left_at")?,
        "groups": row.json("groups")?,
    }))
}

/// A uuid query parameter; anything else is a 400 pointing at it.
pub fn uuid_param(req: &Request, name: &str) -> Result<Option<String>, Problem> {
    match query_param(req, name)? {
        None => Ok(None),
        Some(v) => uuid::Uuid::parse_str(&v)
            .map(|u| Some(u.to_string()))
            .map_err(|_| Problem::bad_query(vec![field(format!("/query/{name}"), "must be an id")])),
    }
}

/// A date parameter as `YYYY-MM-DD` formatted from the parsed date: what
/// PostgreSQL gets (it fails on some text the parser takes, such as
/// `+2026-09-15`), and text that compares in date order.
fn date_param(req: &Request, name: &str) -> Result<Option<String>, Problem> {
    let Some(v) = query_param(req, name)? else { return Ok(None) };
    match canonical_date(&v) {
        Some(d) => Ok(Some(d)),
        None => Err(Problem::bad_query(vec![field(format!("/query/{name}"), "must be a date (YYYY-MM-DD)")])),
    }
}

/// A trimmed text parameter of 1 to `max_chars` characters.
pub fn text_param(req: &Request, name: &str, max_chars: usize) -> Result<Option<String>, Problem> {
    match query_param(req, name)?.map(|v| v.trim().to_owned()) {
        Some(v) if v.is_empty() || v.chars().count() > max_chars => Err(Problem::bad_query(vec![field(
            format!("/query/{name}"),
            format!("must be 1 to {max_chars} characters"),
        )])),
        other => Ok(other),
    }
}

/// The name query `q`, trimmed and in NFC (as names are stored), of 1 to
/// 100 characters counted in NFC: "é" is one character however it was typed.
fn name_query(req: &Request) -> Result<Option<String>, Problem> {
    const MAX_CHARS: usize = 100;
    let Some(raw) = query_param(req, "q")? else { return Ok(None) };
    let q = names::nfc(raw.trim());
    if q.is_empty() || q.chars().count() > MAX_CHARS {
        return Err(Problem::bad_query(vec![field("/query/q", format!("must be 1 to {MAX_CHARS} characters"))]));
    }
    Ok(Some(q))
}

/// Eleven digits in a row (spaces and dots allowed between them) look like an
/// identity number: such searches belong in the body of `POST /pupils/search`.
pub fn looks_like_identity_number(s: &str) -> bool {
    let mut run = 0;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= 11 {
                return true;
            }
        } else if !matches!(c, ' ' | '.' | '-') {
            run = 0;
        }
    }
    false
}

/// The cursor names only the last pupil shown (never names: cursors travel
/// in URLs); the page continues after that pupil's sort key.
#[derive(Deserialize)]
struct ListCursor {
    after: String,
}

pub async fn list(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let cursor: Option<ListCursor> = decode_cursor(req)?;
    if cursor.as_ref().is_some_and(|c| uuid::Uuid::parse_str(&c.after).is_err()) {
        return Err(malformed_cursor());
    }
    let school = uuid_param(req, "school_id")?;
    let group = uuid_param(req, "group_id")?;
    let year = match query_param(req, "year_level")? {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|y| (1..=13).contains(y)).ok_or_else(|| {
            Problem::bad_query(vec![field("/query/year_level", "must be a whole number from 1 to 13")])
        })?),
    };
    let q = name_query(req)?;
    if q.as_deref().is_some_and(looks_like_identity_number) {
        return Err(Problem::bad_query(vec![field(
            "/query/q",
            "identity numbers are never sent in a URL: search with POST /pupils/search",
        )]));
    }
    // NFC like the stored names; case is folded by `lower()` on both sides in SQL.
    let terms: Vec<String> = q.as_deref().map(names::search_terms).unwrap_or_default();
    let scope = Scope::of(req, vars, db).await?;
    scope.require_pupil_scope()?;

    let mut params = scope.params();
    params.extend([
        cursor.map(|c| uuid(c.after)).unwrap_or(Value::Null),
        school.map(uuid).unwrap_or(Value::Null),
        group.map(uuid).unwrap_or(Value::Null),
        year.into(),
        Value::text_array(terms),
        (limit + 1).into(),
    ]);
    // Every term must occur in "given family": both sides NFC (stored names
    // are kept in NFC, so the columns are compared as they are, unwrapped, and
    // `pupils_school_name` keeps serving the order and the cursor), case folded
    // by the same `lower()`. The scope, not the name, narrows the rows.
    let sql = format!(
        "SELECT {PUPIL_COLUMNS}, row_number() OVER (ORDER BY p.family_name, p.given_name, p.id) AS rn \
         FROM pupils p JOIN schools s ON s.id = p.school_id \
         WHERE p.id IN ({VISIBLE_PUPIL_IDS}) AND p.tenant_id = $1::uuid AND NOT p.restricted AND p.left_at IS NULL \
           AND ($4::uuid IS NULL OR (p.family_name, p.given_name, p.id) > \
                (SELECT c.family_name, c.given_name, c.id FROM pupils c WHERE c.id = $4::uuid AND c.tenant_id = $1::uuid)) \
           AND ($5::uuid IS NULL OR p.school_id = $5::uuid) \
           AND ($6::uuid IS NULL OR EXISTS (SELECT 1 FROM group_memberships fm \
                                            WHERE fm.pupil_id = p.id AND fm.group_id = $6::uuid)) \
           AND ($7::int8 IS NULL OR p.year_level = $7::int8) \
           AND NOT EXISTS (SELECT 1 FROM unnest($8::text[]) AS t(term) \
                           WHERE strpos(lower(p.given_name || ' ' || p.family_name), lower(t.term)) = 0) \
         ORDER BY p.family_name, p.given_name, p.id LIMIT $9::int8"
    );
    // Only the pupils shown are logged, not the look-ahead row.
    let concerned = format!("(SELECT array_agg(pupil_id) FROM data WHERE rn <= {limit})");
    let mut rows = logged_read(db, &scope.who, meta, "pupils.listed", &sql, &concerned, params).await?;
    // Shown are exactly the rows the access record names (rn <= limit), in
    // their order, whatever order the statement returned them in.
    let rank = |r: &Row| r.int("rn").unwrap_or(i64::MAX);
    rows.sort_by_key(rank);
    let more = rows.iter().any(|r| rank(r) > limit);
    let shown: Vec<&Row> = rows.iter().filter(|r| rank(r) <= limit).collect();
    let items = shown.iter().map(|r| pupil_view(r)).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match (more, shown.last()) {
        (true, Some(last)) => Some(encode_cursor(&json!({"after": last.text("pupil_id")?}))),
        _ => None,
    };
    json(StatusCode::OK, &json!({"items": items, "next_cursor": next_cursor}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    identity_number: String,
}

/// The audit action of an identity-number search, recorded hit or miss.
pub const SEARCH_ACTION: &str = "pupil.searched";

/// Finds the pupil in scope with this identity number (through the keyed
/// blind index; the number itself is never stored in clear or logged).
///
/// Every search that gets as far as the lookup is recorded in the audit log
/// (`pupil.searched`, details `{hit, pupil_id}`: never the number nor its
/// blind index), in the same statement as the lookup, so that probing for
/// whether a child is in the municipality shows in the privacy officer's view
/// (`GET /pupils/searches`). Out of scope, restricted, another tenant's and
/// unknown numbers are all misses. A hit also writes the access record for
/// the pupil found, as every read of pupil data does.
pub async fn search(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let body: SearchRequest = read_json(req, BODY_LIMIT)?;
    let policy = SyntheticPolicy::from_vars(vars)?;
    let id = IdentityNumber::parse(&body.identity_number, policy)
        .map_err(|e| Problem::validation(vec![field("/identity_number", e.to_string())]))?;
    let index = BlindIndex::from_config(&vars.require("blind_index_key")?).map_err(|e| {
        eprintln!("error: configuration variable `blind_index_key`: {e}");
        Problem::internal()
    })?;
    let scope = Scope::of(req, vars, db).await?;
    scope.require_pupil_scope()?;
    let mut params = scope.params();
    params.push(Value::Bytes(index.index(&scope.who.tenant_id, &id)));
    let sql = format!(
        "SELECT {PUPIL_COLUMNS} FROM pupils p JOIN schools s ON s.id = p.school_id \
         WHERE p.identity_index = $4::bytea AND {PUPIL_VISIBLE}"
    );
    // At most one pupil: the blind index is unique per tenant.
    let event = ReadEvent {
        action: SEARCH_ACTION,
        target_kind: "pupil",
        target_id: "(SELECT pupil_id::text FROM data LIMIT 1)",
        details:
            "jsonb_build_object('hit', EXISTS (SELECT 1 FROM data), 'pupil_id', (SELECT pupil_id FROM data LIMIT 1))",
    };
    let (rows, _) = logged_read_audited(
        db,
        &scope.who,
        meta,
        "pupils.searched",
        &sql,
        "(SELECT array_agg(pupil_id) FROM data)",
        event,
        params,
    )
    .await?;
    let items = rows.iter().map(pupil_view).collect::<Result<Vec<_>, _>>()?;
    json(StatusCode::OK, &json!({"items": items, "next_cursor": null}))
}

/// The profile query: one row per result (or one row without a result),
/// pupil columns first; the pupil's groups only on the first row. `$4` pupil,
/// `$5` subject, `$6` assessment, `$7`/`$8` period. The pupil is resolved
/// once (materialized), and assessments are probed per result of this pupil
/// (never scanned across the tenant, whatever plan the optional filters get).
/// Public so the benchmark can time the bare query behind the route.
pub const PROFILE_SQL: &str = concat!(
    "WITH pupil AS MATERIALIZED ( \
         SELECT p.id, p.tenant_id, p.given_name, p.family_name, p.year_level, p.school_id, s.name AS school_name, \
                p.special_needs, p.left_at \
         FROM pupils p JOIN schools s ON s.id = p.school_id \
         WHERE p.id = $4::uuid AND ",
    pupil_visible!(),
    ") \
     SELECT p.id AS pupil_id, p.given_name, p.family_name, p.year_level, p.school_id, p.school_name, p.special_needs, \
            p.left_at::text AS left_at, \
            CASE WHEN row_number() OVER (ORDER BY a.administered_on, a.title, r.id) = 1 THEN \
                (SELECT coalesce(jsonb_agg(jsonb_build_object('id', g.id, 'name', g.name) ORDER BY g.name, g.id), \
                                 '[]'::jsonb) \
                 FROM group_memberships m JOIN groups g ON g.id = m.group_id WHERE m.pupil_id = p.id) END AS groups, \
            r.id AS result_id, r.score, r.status, rfc3339(r.completed_at) AS completed_at, r.source_id IS NULL AS manual, \
            r.recorded_by, ru.display_name AS recorded_by_name, rfc3339(r.updated_at) AS updated_at, \
            a.id AS assessment_id, a.title, a.subject, a.max_score, a.administered_on::text AS administered_on \
     FROM pupil p \
     LEFT JOIN (results r \
                CROSS JOIN LATERAL (SELECT a.id, a.title, a.subject, a.max_score, a.administered_on \
                                    FROM assessments a \
                                    WHERE a.id = r.assessment_id AND a.tenant_id = r.tenant_id \
                                      AND ($5::text IS NULL OR a.subject = $5::text) \
                                      AND ($6::uuid IS NULL OR a.id = $6::uuid) \
                                      AND ($7::text IS NULL OR a.administered_on >= $7::text::date) \
                                      AND ($8::text IS NULL OR a.administered_on <= $8::text::date) \
                                    OFFSET 0) a \
                LEFT JOIN users ru ON ru.id = r.recorded_by) \
           ON r.pupil_id = p.id AND r.tenant_id = p.tenant_id \
     ORDER BY a.administered_on, a.title, r.id"
);

/// The access-log action of a profile read.
pub const PROFILE_ACTION: &str = "pupil.viewed";
/// The pupil a profile read's access record names (over `logged_read`'s `data`).
pub const PROFILE_CONCERNED: &str = "ARRAY(SELECT pupil_id FROM data LIMIT 1)";

/// One result of a `PROFILE_SQL` row that has one.
pub fn result_view(row: &Row) -> Result<Json, Problem> {
    let manual = row.bool("manual")?;
    Ok(json!({
        "id": row.text("result_id")?,
        "score": row.opt_float("score")?,
        "status": row.text("status")?,
        "completed_at": row.opt_text("completed_at")?,
        "source": if manual { "manual" } else { "publisher" },
        "recorded_by": match row.opt_text("recorded_by")? {
            Some(id) => json!({"id": id, "display_name": row.opt_text("recorded_by_name")?}),
            None => Json::Null,
        },
        "updated_at": row.text("updated_at")?,
        "assessment": {
            "id": row.text("assessment_id")?,
            "title": row.text("title")?,
            "subject": row.text("subject")?,
            "max_score": row.float("max_score")?,
            "administered_on": row.text("administered_on")?,
        },
    }))
}

pub async fn profile(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let id = path_id(id)?;
    let subject = text_param(req, "subject", 100)?;
    let assessment = uuid_param(req, "assessment_id")?;
    let (from, to) = (date_param(req, "from")?, date_param(req, "to")?);
    if let (Some(f), Some(t)) = (&from, &to) {
        if f > t {
            return Err(Problem::bad_query(vec![field("/query/to", "must not be before from")]));
        }
    }
    let scope = Scope::of(req, vars, db).await?;
    let mut params = scope.params();
    params.extend([uuid(id), subject.into(), assessment.map(uuid).unwrap_or(Value::Null), from.into(), to.into()]);
    let rows = logged_read(db, &scope.who, meta, PROFILE_ACTION, PROFILE_SQL, PROFILE_CONCERNED, params).await?;
    let Some(first) = rows.first() else { return Err(Problem::not_found()) };
    let mut view = pupil_view(first)?;
    // The groups column is filled on one row only (the first, by the query's order).
    for row in &rows {
        if !row.is_null("groups")? {
            view["groups"] = row.json("groups")?;
            break;
        }
    }
    let mut results = Vec::with_capacity(rows.len());
    for row in &rows {
        if !row.is_null("result_id")? {
            results.push(result_view(row)?);
        }
    }
    view["results"] = Json::Array(results);
    json(StatusCode::OK, &view)
}
