//! User administration for tenant admins, strictly inside their own tenant:
//! every query is bounded by the caller's tenant id, and ids of other
//! tenants' users answer 404 exactly like ids that do not exist.
//! Every change is audited in the same transaction as the change.

use crate::password::NewPassword;
use crate::BODY_LIMIT;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tavle_core::audit::{self, Event};
use tavle_core::auth::{authenticate_as, Grant, Principal, Role};
use tavle_core::db::{transaction, uuid, Db, DbError, Row, Value};
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

const USER_COLUMNS: &str = "u.id, u.username, u.display_name, u.email, u.active, \
     coalesce(u.locked_until > now(), false) AS locked, \
     CASE WHEN u.locked_until > now() THEN rfc3339(u.locked_until) END AS locked_until, \
     rfc3339(u.last_login_at) AS last_login_at, rfc3339(u.created_at) AS created_at, u.language, \
     (SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object('role', g.role, 'school_id', g.school_id, \
        'group_id', g.group_id)) ORDER BY g.role, g.school_id, g.group_id), '[]'::jsonb) \
      FROM role_grants g WHERE g.user_id = u.id AND g.tenant_id = u.tenant_id) AS roles";

fn user_view(row: &Row) -> Result<serde_json::Value, Problem> {
    Ok(json!({
        "id": row.text("id")?,
        "username": row.text("username")?,
        "display_name": row.text("display_name")?,
        "email": row.opt_text("email")?,
        "active": row.bool("active")?,
        "locked": row.bool("locked")?,
        "locked_until": row.opt_text("locked_until")?,
        "last_login_at": row.opt_text("last_login_at")?,
        "created_at": row.text("created_at")?,
        "language": row.text("language")?,
        "roles": row.json("roles")?,
    }))
}

async fn load_user(db: &mut impl Db, tenant_id: &str, id: &str) -> Result<serde_json::Value, Problem> {
    let row = db
        .query_opt(
            &format!(
                "SELECT {USER_COLUMNS} FROM users u \
                 WHERE u.tenant_id = $1::uuid AND u.id = $2::uuid AND u.deleted_at IS NULL"
            ),
            &[uuid(tenant_id), uuid(id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    user_view(&row)
}

#[derive(Deserialize)]
struct Cursor {
    u: String,
    id: String,
}

/// Staff names and e-mail addresses are personal data too: every read of
/// them is audited in the same transaction, and not returned if it cannot be.
pub async fn list(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let limit = page_limit(req)?;
    let cursor = cursor_param(req)?;
    let who = admin(req, vars, db).await?;
    let cursors = crate::cursor_key(vars)?.bind("users.list", &who);
    let cursor: Option<Cursor> = open_cursor(&cursors, cursor.as_ref())?;
    if let Some(c) = &cursor {
        if uuid::Uuid::parse_str(&c.id).is_err() {
            return Err(malformed_cursor());
        }
    }
    let (after_u, after_id) = cursor.map_or((Value::Null, Value::Null), |c| (c.u.into(), uuid(c.id)));
    transaction(db, async |db| {
        let rows = db
            .query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users u \
                     WHERE u.tenant_id = $1::uuid AND u.deleted_at IS NULL \
                       AND ($2::text IS NULL OR (u.username, u.id) > ($2::text, $3::uuid)) \
                     ORDER BY u.username, u.id LIMIT $4::int8"
                ),
                &[uuid(&who.tenant_id), after_u, after_id, (limit + 1).into()],
            )
            .await?;
        let shown = rows.len().min(limit as usize);
        audit::record(db, Some(meta), Event::by(&who, "users.listed").details(json!({"count": shown}))).await?;
        let position = |last: &Row| Ok(json!({"u": last.text("username")?, "id": last.text("id")?}));
        page(&rows, limit, &cursors, user_view, position)
    })
    .await
}

pub async fn get(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db, id: &str) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let id = path_id(id)?;
    transaction(db, async |db| {
        let user = load_user(db, &who.tenant_id, &id).await?;
        audit::record(db, Some(meta), Event::by(&who, "user.viewed").target("user", &id)).await?;
        json(StatusCode::OK, &user)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    display_name: String,
    #[serde(default)]
    email: Option<String>,
    password: String,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    roles: Vec<Grant>,
}

const LANGUAGES: [&str; 5] = ["nb", "nn", "da", "en", "se"];

/// Usernames: lower-case ASCII letters, digits and `._@-`, 2..=64 characters
/// (Feide usernames such as `ola@skole.no` fit).
pub fn normalise_username(raw: &str) -> Option<String> {
    let u = raw.trim().to_lowercase();
    let ok = (2..=64).contains(&u.len())
        && u.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && u.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._@-".contains(c))
        // Reserved for pseudonymised accounts (`tavle_core::erasure`).
        && !u.starts_with(tavle_core::erasure::PSEUDONYM_PREFIX);
    ok.then_some(u)
}

fn check_display_name(checks: &mut Checks, pointer: &str, name: &str) {
    let n = name.trim().chars().count();
    if n == 0 || n > 200 {
        checks.fail(pointer, "must be 1 to 200 characters");
    }
    if name.chars().any(char::is_control) {
        checks.fail(pointer, "must not contain control characters");
    }
}

fn check_email(checks: &mut Checks, email: &str) {
    let parts: Vec<&str> = email.split('@').collect();
    let ok = email.len() <= 254
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        checks.fail("/email", "must be an e-mail address");
    }
}

/// Checks each grant carries exactly the scope its role needs. Whether the
/// school or group exists *in this tenant* is enforced by composite foreign
/// keys when the grants are written.
fn check_grants(checks: &mut Checks, base: &str, grants: &[Grant]) -> Vec<Grant> {
    let mut unique = Vec::new();
    for (i, g) in grants.iter().enumerate() {
        let ptr = format!("{base}/{i}");
        let valid_id = |id: &Option<String>| id.as_deref().is_some_and(|v| uuid::Uuid::parse_str(v).is_ok());
        match g.role {
            Role::Teacher if !valid_id(&g.group_id) || g.school_id.is_some() => {
                checks.fail(&ptr, "a teacher grant needs group_id (and no school_id)")
            }
            Role::SchoolLeader if !valid_id(&g.school_id) || g.group_id.is_some() => {
                checks.fail(&ptr, "a school_leader grant needs school_id (and no group_id)")
            }
            Role::TenantAdmin | Role::PrivacyOfficer if g.school_id.is_some() || g.group_id.is_some() => {
                checks.fail(&ptr, "this role takes no school_id or group_id")
            }
            _ => {}
        }
        let normalised = Grant {
            role: g.role,
            school_id: g.school_id.as_deref().and_then(|v| uuid::Uuid::parse_str(v).ok()).map(|u| u.to_string()),
            group_id: g.group_id.as_deref().and_then(|v| uuid::Uuid::parse_str(v).ok()).map(|u| u.to_string()),
        };
        if !unique.contains(&normalised) {
            unique.push(normalised);
        }
    }
    if grants.len() > 500 {
        checks.fail(base, "at most 500 grants");
    }
    unique
}

/// Writes a user's grants (after any old ones were removed). A school or
/// group id that is not the tenant's violates a composite foreign key: 422.
async fn insert_grants(
    db: &mut impl Db,
    tenant_id: &str,
    user_id: &str,
    grants: &[Grant],
    pointer: &str,
) -> Result<(), Problem> {
    if grants.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Grant) -> String| Value::text_array(grants.iter().map(f));
    let result = db
        .execute(
            "INSERT INTO role_grants (tenant_id, user_id, role, school_id, group_id) \
             SELECT $1::uuid, $2::uuid, r, nullif(s, '')::uuid, nullif(g, '')::uuid \
             FROM unnest($3::text[], $4::text[], $5::text[]) AS x(r, s, g)",
            &[
                uuid(tenant_id),
                uuid(user_id),
                col(|g| g.role.as_str().to_owned()),
                col(|g| g.school_id.clone().unwrap_or_default()),
                col(|g| g.group_id.clone().unwrap_or_default()),
            ],
        )
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(DbError::Constraint { code, .. }) if code == "23503" => {
            Err(Problem::validation(vec![field(pointer, "unknown school or group")]))
        }
        Err(e) => Err(e.into()),
    }
}

/// A new user that passed every check, in the form it is stored.
struct ValidNewUser {
    username: String,
    display_name: String,
    email: Option<String>,
    language: &'static str,
    password: NewPassword,
    grants: Vec<Grant>,
}

/// Checks a new user's fields and grants; no database work.
fn validate_new_user(body: NewUser) -> Result<ValidNewUser, Problem> {
    let mut checks = Checks::default();
    let username = normalise_username(&body.username);
    if username.is_none() {
        checks.fail(
            "/username",
            "must be 2 to 64 characters: a-z, 0-9 and . _ @ -, starting with a letter or digit, not with `erased-`",
        );
    }
    check_display_name(&mut checks, "/display_name", &body.display_name);
    let email = body.email.as_deref().map(str::trim).filter(|e| !e.is_empty());
    if let Some(e) = email {
        check_email(&mut checks, e);
    }
    let language = body.language.as_deref().unwrap_or("nb");
    let known_language = LANGUAGES.iter().copied().find(|l| *l == language);
    if known_language.is_none() {
        checks.fail("/language", format!("must be one of {}", LANGUAGES.join(", ")));
    }
    let password = match NewPassword::parse(&body.password, username.as_deref().unwrap_or(&body.username)) {
        Ok(p) => Some(p),
        Err(broken) => {
            broken.into_iter().for_each(|m| checks.fail("/password", m));
            None
        }
    };
    let grants = check_grants(&mut checks, "/roles", &body.roles);
    checks.finish()?;
    match (username, known_language, password) {
        (Some(username), Some(language), Some(password)) => Ok(ValidNewUser {
            username,
            display_name: body.display_name.trim().to_owned(),
            email: email.map(str::to_owned),
            language,
            password,
            grants,
        }),
        // Each of these failed a check above.
        _ => Err(Problem::internal()),
    }
}

/// Checks a replacement set of grants; no database work.
fn validate_roles(body: RolesBody) -> Result<Vec<Grant>, Problem> {
    let mut checks = Checks::default();
    let grants = check_grants(&mut checks, "/roles", &body.roles);
    checks.finish()?;
    Ok(grants)
}

pub async fn create(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let user = validate_new_user(read_json(req, BODY_LIMIT)?)?;
    let hash = user.password.hash();

    let id = transaction(db, async |db| {
        let inserted = db
            .query_one(
                "INSERT INTO users (tenant_id, username, display_name, email, password_hash, language) \
                 VALUES ($1::uuid, $2::text, $3::text, $4::text, $5::text, $6::text) RETURNING id",
                &[
                    uuid(&who.tenant_id),
                    user.username.clone().into(),
                    user.display_name.clone().into(),
                    user.email.clone().into(),
                    hash.into(),
                    user.language.into(),
                ],
            )
            .await;
        let id = match inserted {
            Ok(row) => row.text("id")?,
            Err(e) if e.is_unique_violation("users_tenant_username") => {
                return Err(Problem::conflict("a user with this username already exists"));
            }
            Err(e) => return Err(e.into()),
        };
        insert_grants(db, &who.tenant_id, &id, &user.grants, "/roles").await?;
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "user.created").target("user", &id).details(json!({"roles": user.grants})),
        )
        .await?;
        Ok(id)
    })
    .await?;
    json(StatusCode::CREATED, &load_user(db, &who.tenant_id, &id).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesBody {
    roles: Vec<Grant>,
}

pub async fn set_roles(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let id = path_id(id)?;
    let grants = validate_roles(read_json(req, BODY_LIMIT)?)?;
    if id == who.user_id && !grants.iter().any(|g| g.role == Role::TenantAdmin) {
        return Err(Problem::conflict("you cannot remove your own tenant_admin role"));
    }
    transaction(db, async |db| {
        let before = load_user(db, &who.tenant_id, &id).await?;
        db.execute(
            "DELETE FROM role_grants WHERE tenant_id = $1::uuid AND user_id = $2::uuid",
            &[uuid(&who.tenant_id), uuid(&id)],
        )
        .await?;
        insert_grants(db, &who.tenant_id, &id, &grants, "/roles").await?;
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "user.roles_changed")
                .target("user", &id)
                .details(json!({"before": before["roles"], "after": grants})),
        )
        .await?;
        Ok::<_, Problem>(())
    })
    .await?;
    json(StatusCode::OK, &load_user(db, &who.tenant_id, &id).await?)
}

fn refuse_self(who: &Principal, id: &str, what: &str) -> Result<(), Problem> {
    if who.user_id == id {
        Err(Problem::conflict(format!("you cannot {what} your own account")))
    } else {
        Ok(())
    }
}

/// Applies one state change to a visible user, revoking sessions if asked,
/// and audits it; 404 when the user is not in the caller's tenant.
/// Runs inside the caller's transaction.
async fn change_state(
    db: &mut impl Db,
    meta: &RequestMeta,
    who: &Principal,
    id: &str,
    update: &str,
    revoke_sessions: bool,
    action: &str,
) -> Result<(), Problem> {
    let changed = db
        .execute(
            &format!(
                "UPDATE users SET {update}, updated_at = now() \
                          WHERE tenant_id = $1::uuid AND id = $2::uuid AND deleted_at IS NULL"
            ),
            &[uuid(&who.tenant_id), uuid(id)],
        )
        .await?;
    if changed == 0 {
        return Err(Problem::not_found());
    }
    let mut details = json!({});
    if revoke_sessions {
        let n = db
            .execute(
                "UPDATE sessions SET revoked_at = now() WHERE tenant_id = $1::uuid AND user_id = $2::uuid \
                     AND revoked_at IS NULL",
                &[uuid(&who.tenant_id), uuid(id)],
            )
            .await?;
        details = json!({"revoked_sessions": n});
    }
    audit::record(db, Some(meta), Event::by(who, action).target("user", id).details(details)).await?;
    Ok(())
}

pub async fn set_active(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
    active: bool,
) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let id = path_id(id)?;
    if !active {
        refuse_self(&who, &id, "deactivate")?;
    }
    transaction(db, async |db| {
        if active {
            change_state(db, meta, &who, &id, "active = true", false, "user.activated").await
        } else {
            change_state(db, meta, &who, &id, "active = false", true, "user.deactivated").await
        }
    })
    .await?;
    json(StatusCode::OK, &load_user(db, &who.tenant_id, &id).await?)
}

pub async fn unlock(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let id = path_id(id)?;
    transaction(db, async |db| {
        change_state(db, meta, &who, &id, "failed_logins = 0, locked_until = NULL", false, "user.unlocked").await
    })
    .await?;
    json(StatusCode::OK, &load_user(db, &who.tenant_id, &id).await?)
}

/// Soft delete: the account can no longer log in, its sessions and role links
/// are removed now; pseudonymisation follows with the retention component.
pub async fn delete(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let who = admin(req, vars, db).await?;
    let id = path_id(id)?;
    refuse_self(&who, &id, "delete")?;
    transaction(db, async |db| {
        change_state(db, meta, &who, &id, "active = false, deleted_at = now()", true, "user.deleted").await?;
        db.execute(
            "DELETE FROM role_grants WHERE tenant_id = $1::uuid AND user_id = $2::uuid",
            &[uuid(&who.tenant_id), uuid(&id)],
        )
        .await?;
        Ok::<_, Problem>(())
    })
    .await?;
    tavle_core::web::no_content()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_user(body: serde_json::Value) -> NewUser {
        serde_json::from_value(body).unwrap()
    }

    fn pointers(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.pointer.as_str()).collect()
    }

    #[test]
    fn a_new_user_is_validated_before_anything_is_written() {
        let group = "4f0c2a9e-6d1b-4c55-9a0e-2b7d3c1e8f10";
        let user = validate_new_user(new_user(json!({
            "username": " Kari@Nordby.no ", "display_name": " Kari Nordmann ", "email": " kari@nordby.no ",
            "password": "Kx9#mPq2zz", "roles": [{"role": "teacher", "group_id": group.to_uppercase()},
                                               {"role": "teacher", "group_id": group}],
        })))
        .unwrap();
        assert_eq!((user.username.as_str(), user.display_name.as_str()), ("kari@nordby.no", "Kari Nordmann"));
        assert_eq!((user.email.as_deref(), user.language), (Some("kari@nordby.no"), "nb"));
        // Grants are normalised (and so deduplicated) before they reach the database.
        assert_eq!(user.grants.len(), 1);
        assert_eq!(user.grants[0].group_id.as_deref(), Some(group));

        let p = validate_new_user(new_user(json!({
            "username": "-x", "display_name": "", "email": "nope", "language": "fr", "password": "short",
            "roles": [{"role": "teacher"}],
        })))
        .err()
        .unwrap();
        assert_eq!(p.status, 422);
        let mut got = pointers(&p);
        got.dedup();
        assert_eq!(got, ["/username", "/display_name", "/email", "/language", "/password", "/roles/0"]);
    }

    #[test]
    fn replacement_roles_are_validated_before_anything_is_written() {
        let body: RolesBody =
            serde_json::from_value(json!({"roles": [{"role": "school_leader", "group_id": "x"}]})).unwrap();
        assert_eq!(pointers(&validate_roles(body).unwrap_err()), ["/roles/0"]);
        let body: RolesBody = serde_json::from_value(json!({"roles": [{"role": "tenant_admin"}]})).unwrap();
        assert_eq!(validate_roles(body).unwrap()[0].role, Role::TenantAdmin);
    }
}
