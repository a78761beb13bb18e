//! Webhook sources, administered by tenant admins inside their own tenant.
//! A shared secret is shown exactly once (on creation or rotation), stored
//! encrypted with the `webhook_secret_key`, and never logged or returned again.
//!
//! A `sas` source may be bound to a set of schools (by the `external_id`
//! its rosters name them with): it may then create or sync those schools
//! only, and a roster for any other school is refused with 403 before
//! anything is applied ([`check_roster_school`]). An empty set is unbound:
//! the source may sync any school of its tenant.

use crate::results::check_text;
use crate::{verify, IngestConfig, ADMIN_BODY_LIMIT};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;
use tavle_core::audit::{self, Event};
use tavle_core::auth::{authenticate_as, Principal, Role};
use tavle_core::db::{transaction, uuid, Db, Row, Value};
use tavle_core::problem::field;
use tavle_core::vars::Variables;
use tavle_core::web::{
    cursor_param, json, malformed_cursor, open_cursor, page, page_limit, path_id, read_json, Body, Checks, HttpResult,
    RequestMeta,
};
use tavle_core::Problem;

type Request = http::Request<Body>;

async fn admin(req: &Request, vars: &impl Variables, db: &mut impl Db) -> Result<Principal, Problem> {
    authenticate_as(req, db, vars, Role::TenantAdmin).await
}

const SOURCE_COLUMNS: &str =
    "s.id, s.kind, s.name, s.active, rfc3339(s.created_at) AS created_at, rfc3339(s.disabled_at) AS disabled_at, \
     (SELECT coalesce(jsonb_agg(jsonb_build_object('created_at', rfc3339(k.created_at), \
        'expires_at', rfc3339(k.expires_at), 'scheme', CASE WHEN k.public_key IS NULL THEN 'v1' ELSE 'v1a' END) \
        ORDER BY k.created_at), '[]'::jsonb) \
      FROM webhook_secrets k WHERE k.source_id = s.id AND (k.expires_at IS NULL OR k.expires_at > now())) AS keys, \
     (SELECT coalesce(jsonb_agg(b.school_external_id ORDER BY b.school_external_id COLLATE \"C\"), '[]'::jsonb) \
      FROM webhook_source_schools b WHERE b.tenant_id = s.tenant_id AND b.source_id = s.id) AS schools";

/// Most schools one source may be bound to.
pub const MAX_SCHOOLS: usize = 500;

/// What a source is bound to may be read by a roster's transaction only
/// after this lock (`$1` tenant, `$2` source): it waits for a change of the
/// set in flight, and a change waits for the rosters in flight.
const SOURCE_SHARE_LOCK_SQL: &str =
    "SELECT 1::int8 AS one FROM webhook_sources WHERE tenant_id = $1::uuid AND id = $2::uuid FOR KEY SHARE";

fn source_view(row: &Row) -> Result<serde_json::Value, Problem> {
    let id = row.text("id")?;
    Ok(json!({
        "id": id,
        "kind": row.text("kind")?,
        "name": row.text("name")?,
        "active": row.bool("active")?,
        "created_at": row.text("created_at")?,
        "disabled_at": row.opt_text("disabled_at")?,
        "keys": row.json("keys")?,
        "schools": row.json("schools")?,
        "endpoints": {
            "roster": format!("/ingest/{id}/roster"),
            "results": format!("/ingest/{id}/results"),
        },
    }))
}

async fn load(db: &mut impl Db, tenant_id: &str, id: &str) -> Result<serde_json::Value, Problem> {
    let row = db
        .query_opt(
            &format!("SELECT {SOURCE_COLUMNS} FROM webhook_sources s WHERE s.tenant_id = $1::uuid AND s.id = $2::uuid"),
            &[uuid(tenant_id), uuid(id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    source_view(&row)
}

#[derive(Deserialize)]
struct Cursor {
    id: String,
}

pub async fn list(req: &Request, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let cursor = cursor_param(req)?;
    let who = admin(req, vars, db).await?;
    let cursors = crate::cursor_key(vars)?.bind("sources.list", &who);
    let after = match open_cursor::<Cursor>(&cursors, cursor.as_ref())? {
        Some(c) => uuid::Uuid::parse_str(&c.id).map(|u| uuid(u.to_string())).map_err(|_| malformed_cursor())?,
        None => Value::Null,
    };
    let rows = db
        .query(
            &format!(
                "SELECT {SOURCE_COLUMNS} FROM webhook_sources s \
                 WHERE s.tenant_id = $1::uuid AND ($2::uuid IS NULL OR s.id > $2::uuid) \
                 ORDER BY s.id LIMIT $3::int8"
            ),
            &[uuid(&who.tenant_id), after, (limit + 1).into()],
        )
        .await?;
    page(&rows, limit, &cursors, source_view, |last| Ok(json!({"id": last.text("id")?})))
}

pub async fn get(req: &Request, vars: &impl Variables, db: &mut impl Db, id: &str) -> HttpResult {
    let who = admin(req, vars, db).await?;
    json(StatusCode::OK, &load(db, &who.tenant_id, &path_id(id)?).await?)
}

async fn store_key(
    db: &mut impl Db,
    tenant_id: &str,
    source_id: &str,
    secret_enc: Value,
    public_key: Value,
) -> Result<(), Problem> {
    db.execute(
        "INSERT INTO webhook_secrets (tenant_id, source_id, secret_enc, public_key) \
         VALUES ($1::uuid, $2::uuid, $3::bytea, $4::bytea)",
        &[uuid(tenant_id), uuid(source_id), secret_enc, public_key],
    )
    .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSource {
    kind: String,
    name: String,
    #[serde(default)]
    public_key: Option<String>,
    /// `sas` sources only; absent or empty: unbound.
    #[serde(default, deserialize_with = "present")]
    schools: Option<Vec<String>>,
}

/// The body of `PUT /admin/sources/{id}/schools`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchoolSet {
    schools: Vec<String>,
}

/// The schools' external ids as rosters name them (trimmed), sorted as the
/// views list them; every bad entry gets its pointer. At most
/// [`MAX_SCHOOLS`], each 1 to 200 characters without control characters,
/// none twice.
fn check_schools(checks: &mut Checks, raw: &[String]) -> Vec<String> {
    if raw.len() > MAX_SCHOOLS {
        checks.fail("/schools", format!("at most {MAX_SCHOOLS} schools per source"));
        return Vec::new();
    }
    let mut seen = HashSet::new();
    for (i, school) in raw.iter().enumerate() {
        let pointer = format!("/schools/{i}");
        let errors = checks.0.len();
        check_text(checks, &pointer, school, 200);
        if checks.0.len() == errors && !seen.insert(school.trim()) {
            checks.fail(&pointer, "this school appears twice in the list");
        }
    }
    let mut schools: Vec<String> = seen.into_iter().map(str::to_owned).collect();
    schools.sort();
    schools
}

const PUBLISHERS_HAVE_NO_SCHOOLS: &str = "only sas sources are bound to schools; publishers post no rosters";

/// Replaces a source's set of schools, inside the caller's transaction.
async fn store_schools(db: &mut impl Db, tenant_id: &str, source_id: &str, schools: &[String]) -> Result<(), Problem> {
    db.execute(
        "DELETE FROM webhook_source_schools WHERE tenant_id = $1::uuid AND source_id = $2::uuid",
        &[uuid(tenant_id), uuid(source_id)],
    )
    .await?;
    if !schools.is_empty() {
        db.execute(
            "INSERT INTO webhook_source_schools (tenant_id, source_id, school_external_id) \
             SELECT $1::uuid, $2::uuid, x FROM unnest($3::text[]) AS x",
            &[uuid(tenant_id), uuid(source_id), Value::text_array(schools.iter().cloned())],
        )
        .await?;
    }
    Ok(())
}

/// The key to store for a new key: an encrypted fresh secret (returned once
/// as text) or a registered public key.
fn new_key(cfg: &IngestConfig, source_id: &str, public_key: Option<&[u8]>) -> (Value, Value, Option<String>) {
    match public_key {
        Some(pk) => (Value::Null, Value::Bytes(pk.to_vec()), None),
        None => {
            let (raw, text) = verify::new_secret();
            (Value::Bytes(cfg.secrets.encrypt(&raw, source_id.as_bytes())), Value::Null, Some(text))
        }
    }
}

pub async fn create(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let cfg = IngestConfig::from_vars(vars)?;
    let body: NewSource = read_json(req, ADMIN_BODY_LIMIT)?;
    let mut checks = Checks::default();
    if !["sas", "publisher"].contains(&body.kind.as_str()) {
        checks.fail("/kind", "must be sas or publisher");
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        checks.fail("/name", "must be 1 to 200 characters without control characters");
    }
    let public_key = match body.public_key.as_deref() {
        Some(text) => {
            let parsed = verify::parse_public_key(text);
            if parsed.is_none() {
                checks.fail("/public_key", "must be an Ed25519 public key: whpk_ + base64 of 32 bytes");
            }
            parsed
        }
        None => None,
    };
    let schools = match &body.schools {
        Some(_) if body.kind == "publisher" => {
            checks.fail("/schools", PUBLISHERS_HAVE_NO_SCHOOLS);
            Vec::new()
        }
        Some(list) => check_schools(&mut checks, list),
        None => Vec::new(),
    };
    checks.finish()?;
    let id = uuid::Uuid::new_v4().to_string();
    let (secret_enc, pk, secret_text) = new_key(&cfg, &id, public_key.as_deref());
    transaction(db, async |db| {
        db.execute(
            "INSERT INTO webhook_sources (id, tenant_id, kind, name) VALUES ($1::uuid, $2::uuid, $3::text, $4::text)",
            &[uuid(&id), uuid(&who.tenant_id), body.kind.clone().into(), name.into()],
        )
        .await?;
        store_key(db, &who.tenant_id, &id, secret_enc, pk).await?;
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "source.created")
                .target("webhook_source", &id)
                .details(json!({"kind": body.kind, "scheme": if secret_text.is_some() { "v1" } else { "v1a" }})),
        )
        .await?;
        if !schools.is_empty() {
            store_schools(db, &who.tenant_id, &id, &schools).await?;
            audit::record(
                db,
                Some(meta),
                Event::by(&who, "source.schools_set")
                    .target("webhook_source", &id)
                    .details(json!({"schools": schools, "previous": []})),
            )
            .await?;
        }
        Ok::<_, Problem>(())
    })
    .await?;
    let mut view = load(db, &who.tenant_id, &id).await?;
    if let Some(secret) = secret_text {
        view["secret"] = secret.into();
    }
    json(StatusCode::CREATED, &view)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotation {
    #[serde(default)]
    public_key: Option<String>,
    /// Absent means the configured overlap; `null` is refused like any other
    /// non-integer, so a client bug cannot silently keep a leaked key alive.
    #[serde(default, deserialize_with = "present")]
    overlap_hours: Option<i64>,
}

/// A field that, when present, must hold a value (not `null`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// How long the previous keys of a source go on verifying after a rotation:
/// 0 (a leaked key stops now) up to the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overlap(i64);

impl Overlap {
    fn parse(requested: Option<i64>, max_hours: i64) -> Result<Overlap, Problem> {
        match requested {
            None => Ok(Overlap(max_hours)),
            Some(h) if (0..=max_hours).contains(&h) => Ok(Overlap(h)),
            Some(_) => Err(Problem::validation(vec![field(
                "/overlap_hours",
                format!("must be an integer from 0 to {max_hours} (webhook_secret_overlap_hours)"),
            )])),
        }
    }
}

/// New key; the previous ones stay valid for the overlap period (by default
/// the configured one) so senders can switch without downtime, or stop at
/// once with an overlap of 0 when a key has leaked. An overlap only ever
/// shortens what a previous key has left.
pub async fn rotate(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let cfg = IngestConfig::from_vars(vars)?;
    let id = path_id(id)?;
    let body: Rotation = if req.body().is_empty() { Rotation::default() } else { read_json(req, ADMIN_BODY_LIMIT)? };
    let Overlap(overlap_hours) = Overlap::parse(body.overlap_hours, cfg.overlap_hours)?;
    let current = load(db, &who.tenant_id, &id).await?;
    let uses_public_keys = current["keys"].as_array().is_some_and(|k| k.iter().any(|k| k["scheme"] == "v1a"));
    let public_key = match (uses_public_keys, body.public_key.as_deref()) {
        (true, Some(text)) => Some(verify::parse_public_key(text).ok_or_else(|| {
            Problem::validation(vec![field("/public_key", "must be an Ed25519 public key: whpk_ + base64 of 32 bytes")])
        })?),
        (true, None) => {
            return Err(Problem::validation(vec![field(
                "/public_key",
                "this source verifies with public keys; send the new one",
            )]))
        }
        (false, Some(_)) => {
            return Err(Problem::validation(vec![field("/public_key", "this source uses a shared secret")]))
        }
        (false, None) => None,
    };
    let (secret_enc, pk, secret_text) = new_key(&cfg, &id, public_key.as_deref());
    let valid_until = transaction(db, async |db| {
        let until = db
            .query_one(
                "SELECT rfc3339(now() + make_interval(hours => $1::int8::int)) AS valid_until",
                &[overlap_hours.into()],
            )
            .await?
            .text("valid_until")?;
        db.execute(
            "UPDATE webhook_secrets SET expires_at = now() + make_interval(hours => $3::int8::int) \
             WHERE tenant_id = $1::uuid AND source_id = $2::uuid AND (expires_at IS NULL OR expires_at > now() + make_interval(hours => $3::int8::int))",
            &[uuid(&who.tenant_id), uuid(&id), overlap_hours.into()],
        )
        .await?;
        store_key(db, &who.tenant_id, &id, secret_enc, pk).await?;
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "source.key_rotated")
                .target("webhook_source", &id)
                .details(json!({"previous_valid_until": until, "overlap_hours": overlap_hours})),
        )
        .await?;
        Ok::<_, Problem>(until)
    })
    .await?;
    let mut view = load(db, &who.tenant_id, &id).await?;
    view["previous_keys_valid_until"] = valid_until.into();
    if let Some(secret) = secret_text {
        view["secret"] = secret.into();
    }
    json(StatusCode::OK, &view)
}

pub async fn disable(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let id = path_id(id)?;
    transaction(db, async |db| {
        let changed = db
            .execute(
                "UPDATE webhook_sources SET active = false, disabled_at = coalesce(disabled_at, now()) \
                 WHERE tenant_id = $1::uuid AND id = $2::uuid",
                &[uuid(&who.tenant_id), uuid(&id)],
            )
            .await?;
        if changed == 0 {
            return Err(Problem::not_found());
        }
        audit::record(db, Some(meta), Event::by(&who, "source.disabled").target("webhook_source", &id)).await?;
        Ok(())
    })
    .await?;
    json(StatusCode::OK, &load(db, &who.tenant_id, &id).await?)
}

/// Replaces the set of schools a `sas` source may create or sync (an empty
/// list unbinds it). The body is checked whole before anything else; a
/// publisher's set is a 422, another tenant's source a 404.
pub async fn set_schools(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let id = path_id(id)?;
    let body: SchoolSet = read_json(req, ADMIN_BODY_LIMIT)?;
    let mut checks = Checks::default();
    let schools = check_schools(&mut checks, &body.schools);
    checks.finish()?;
    transaction(db, async |db| {
        // The row lock first (it waits for the rosters in flight), then the
        // set it guards, read after the wait.
        let kind = db
            .query_opt(
                "SELECT kind FROM webhook_sources WHERE tenant_id = $1::uuid AND id = $2::uuid FOR UPDATE",
                &[uuid(&who.tenant_id), uuid(&id)],
            )
            .await?
            .ok_or_else(Problem::not_found)?
            .text("kind")?;
        if kind != "sas" {
            return Err(Problem::validation(vec![field("/schools", PUBLISHERS_HAVE_NO_SCHOOLS)]));
        }
        let previous = db
            .query_one(
                "SELECT coalesce(jsonb_agg(school_external_id ORDER BY school_external_id COLLATE \"C\"), '[]'::jsonb) \
                        AS schools \
                 FROM webhook_source_schools WHERE tenant_id = $1::uuid AND source_id = $2::uuid",
                &[uuid(&who.tenant_id), uuid(&id)],
            )
            .await?
            .json("schools")?;
        store_schools(db, &who.tenant_id, &id, &schools).await?;
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "source.schools_set")
                .target("webhook_source", &id)
                .details(json!({"schools": schools, "previous": previous})),
        )
        .await?;
        Ok(())
    })
    .await?;
    json(StatusCode::OK, &load(db, &who.tenant_id, &id).await?)
}

/// Refuses (403) a roster of a source bound to a set of schools for a
/// school outside it; an unbound source may sync any school of its tenant.
/// Runs first in the roster's transaction, before anything is applied.
pub async fn check_roster_school(
    db: &mut impl Db,
    tenant_id: &str,
    source_id: &str,
    school_external_id: &str,
) -> Result<(), Problem> {
    db.query_opt(SOURCE_SHARE_LOCK_SQL, &[uuid(tenant_id), uuid(source_id)]).await?.ok_or_else(Problem::not_found)?;
    let row = db
        .query_one(
            "SELECT count(*) AS bound, count(*) FILTER (WHERE school_external_id = $3::text) AS allowed \
             FROM webhook_source_schools WHERE tenant_id = $1::uuid AND source_id = $2::uuid",
            &[uuid(tenant_id), uuid(source_id), school_external_id.into()],
        )
        .await?;
    if row.int("bound")? > 0 && row.int("allowed")? == 0 {
        return Err(Problem::forbidden(
            "this source is bound to a set of schools and may post rosters only for those; \
             a tenant admin changes the set with PUT /admin/sources/{id}/schools",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &[&str]) -> Result<Vec<String>, Vec<String>> {
        let mut checks = Checks::default();
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        let schools = check_schools(&mut checks, &list);
        match checks.finish() {
            Ok(()) => Ok(schools),
            Err(p) => Err(p.errors.into_iter().map(|e| e.pointer).collect()),
        }
    }

    #[test]
    fn school_sets_are_trimmed_sorted_and_checked_entry_by_entry() {
        assert_eq!(check(&[" sørby ", "nordby", "Nordby"]), Ok(vec!["Nordby".into(), "nordby".into(), "sørby".into()]));
        assert_eq!(check(&[]), Ok(vec![]));
        let long = "x".repeat(201);
        assert_eq!(
            check(&["ok", "", "  ", "a\u{7}b", &long, "ok ", "tab\t", &"é".repeat(200)]),
            Err(vec![
                "/schools/1".into(),
                "/schools/2".into(),
                "/schools/3".into(),
                "/schools/4".into(),
                "/schools/5".into(),
                "/schools/6".into(),
            ]),
            "200 letters are allowed; a duplicate after trimming is one"
        );
        let many: Vec<String> = (0..=MAX_SCHOOLS).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(check(&refs), Err(vec!["/schools".into()]));
        assert_eq!(check(&refs[..MAX_SCHOOLS]).map(|s| s.len()), Ok(MAX_SCHOOLS));
    }
}
