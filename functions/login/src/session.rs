//! Login, logout, refresh, "who am I" and password changes.
//!
//! Unknown tenant, unknown user, wrong password, locked and deactivated
//! accounts all get the same 401 after the same argon2 work, so the answer
//! and its timing reveal nothing about which accounts exist. Lockouts and
//! failures are audited.

use crate::password::{self, NewPassword};
use crate::{LoginConfig, BODY_LIMIT};
use http::{header, HeaderValue, StatusCode};
use jwt_simple::prelude::*;
use serde::Deserialize;
use serde_json::json;
use tavle_core::audit::{self, Actor, Event};
use tavle_core::auth::{
    authenticate, authenticate_cookie, check_origin, random_secret, sha256, Principal, TokenClaims, AUDIENCE, ISSUER,
    SESSION_COOKIE,
};
use tavle_core::db::{transaction, uuid, Db, Row, Value};
use tavle_core::problem::field;
use tavle_core::vars::Variables;
use tavle_core::web::{json, read_json, Body, Checks, HttpResult, RequestMeta};
use tavle_core::Problem;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    tenant: String,
    username: String,
    password: String,
}

/// Upper bounds on credential fields, so absurd inputs are cheap to refuse.
const MAX_TENANT: usize = 63;
const MAX_USERNAME: usize = 254;
const MAX_PASSWORD_BYTES: usize = 1024;

fn invalid_credentials() -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "invalid-credentials", "Invalid credentials")
        .with_detail("the tenant, username or password is wrong, or the account cannot log in now")
}

pub async fn login(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
) -> HttpResult {
    let cfg = LoginConfig::from_vars(vars)?;
    check_origin(req, &cfg.allowed_origins, false)?;
    let body: LoginRequest = read_json(req, BODY_LIMIT)?;
    let mut checks = Checks::default();
    if body.tenant.is_empty() || body.tenant.chars().count() > MAX_TENANT {
        checks.fail("/tenant", format!("must be 1 to {MAX_TENANT} characters"));
    }
    if body.username.is_empty() || body.username.chars().count() > MAX_USERNAME {
        checks.fail("/username", format!("must be 1 to {MAX_USERNAME} characters"));
    }
    if body.password.is_empty() || body.password.len() > MAX_PASSWORD_BYTES {
        checks.fail("/password", format!("must be 1 to {MAX_PASSWORD_BYTES} bytes"));
    }
    checks.finish()?;

    let tenant = body.tenant.trim().to_lowercase();
    let username = body.username.trim().to_lowercase();
    // One query whatever exists: tenant row (if any) with the user (if any).
    let found = db
        .query_opt(
            "SELECT t.id AS tenant_id, u.id AS user_id, u.password_hash, u.active, \
                    coalesce(u.locked_until > now(), false) AS locked \
             FROM tenants t \
             LEFT JOIN users u ON u.tenant_id = t.id AND u.username = $2::text AND u.deleted_at IS NULL \
             WHERE t.slug = $1::text",
            &[tenant.into(), username.into()],
        )
        .await?;
    let stored_hash = found.as_ref().and_then(|r| r.opt_text("password_hash").ok().flatten());
    let password_ok = password::verify(&body.password, stored_hash.as_deref().unwrap_or(password::dummy_hash()));

    let Some(row) = found else {
        return Err(failed_login(db, meta, &cfg, None, None, "unknown_tenant").await);
    };
    let tenant_id = row.text("tenant_id")?;
    let Some(user_id) = row.opt_text("user_id")? else {
        return Err(failed_login(db, meta, &cfg, Some(&tenant_id), None, "unknown_user").await);
    };
    let reason = if !row.bool("active")? {
        Some("inactive")
    } else if row.bool("locked")? {
        Some("locked")
    } else if !password_ok {
        Some("wrong_password")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(failed_login(db, meta, &cfg, Some(&tenant_id), Some(&user_id), reason).await);
    }

    let issued = transaction(db, async |db| {
        // Conditional on the state checked above: a concurrent lockout or
        // deactivation between that read and now wins, and no session is made.
        let still_allowed = db
            .query_opt(
                "UPDATE users SET failed_logins = 0, locked_until = NULL, last_login_at = now() \
                 WHERE id = $1::uuid AND tenant_id = $2::uuid AND active AND deleted_at IS NULL \
                   AND (locked_until IS NULL OR locked_until <= now()) \
                 RETURNING id",
                &[uuid(&user_id), uuid(&tenant_id)],
            )
            .await?;
        if still_allowed.is_none() {
            return Err(invalid_credentials());
        }
        let secret = random_secret();
        let session = db
            .query_one(
                "INSERT INTO sessions (tenant_id, user_id, secret_hash, idle_expires_at, expires_at) \
                 VALUES ($1::uuid, $2::uuid, $3::bytea, \
                         now() + make_interval(mins => least($4::int8, $5::int8)::int), \
                         now() + make_interval(mins => $5::int8::int)) \
                 RETURNING id, rfc3339(expires_at) AS expires_at, rfc3339(idle_expires_at) AS idle_expires_at, \
                           extract(epoch FROM expires_at - now())::int8 AS seconds_left",
                &[
                    uuid(&tenant_id),
                    uuid(&user_id),
                    Value::Bytes(sha256(secret.as_bytes())),
                    cfg.session_idle_minutes.into(),
                    cfg.session_max_minutes.into(),
                ],
            )
            .await?;
        let session_id = session.text("id")?;
        audit::record(
            db,
            Some(meta),
            Event::new(&tenant_id, Actor::User(user_id.clone()), "login.succeeded").target("session", &session_id),
        )
        .await?;
        Ok::<_, Problem>((secret, session))
    })
    .await?;
    let (secret, session) = issued;
    let mut response = token_response(&cfg, &user_id, &tenant_id, &session)?;
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; Secure; SameSite=Strict"))
            .map_err(|_| Problem::internal())?,
    );
    Ok(response)
}

/// Records a failed login and answers the one 401 every failure gets. Every
/// kind of failure runs the same statements (a transaction with the audit
/// row and the failure count, which matches no row unless the password was
/// wrong), so the database work does not tell them apart either.
async fn failed_login(
    db: &mut impl Db,
    meta: &RequestMeta,
    cfg: &LoginConfig,
    tenant_id: Option<&str>,
    user_id: Option<&str>,
    reason: &str,
) -> Problem {
    let recorded = transaction(db, async |db| {
        let mut event = Event::new(tenant_id.unwrap_or_default(), Actor::Anonymous, "login.failed")
            .details(json!({"reason": reason}));
        event.tenant_id = tenant_id;
        if let Some(user) = user_id {
            event = event.target("user", user);
        }
        audit::record(db, Some(meta), event).await?;
        count_failure(db, meta, cfg, tenant_id, user_id.filter(|_| reason == "wrong_password")).await
    })
    .await;
    match recorded {
        Ok(()) => invalid_credentials(),
        Err(e) => e,
    }
}

/// One more consecutive failure; at the threshold the account locks for the
/// configured period and the counter restarts. Failures while locked are not
/// counted (the row is matched only when unlocked), so concurrent failures
/// lock once and audit one `account.locked`.
///
/// Live sessions survive a lockout: they were opened with the right password,
/// and revoking them would let anyone log a teacher out by guessing wrong.
async fn count_failure(
    db: &mut impl Db,
    meta: &RequestMeta,
    cfg: &LoginConfig,
    tenant_id: Option<&str>,
    user_id: Option<&str>,
) -> Result<(), Problem> {
    let locked_just_now = db
        .query_opt(
            "UPDATE users SET \
                 locked_until = CASE WHEN failed_logins + 1 >= $3::int8 \
                     THEN now() + make_interval(mins => $4::int8::int) ELSE locked_until END, \
                 failed_logins = CASE WHEN failed_logins + 1 >= $3::int8 THEN 0 ELSE failed_logins + 1 END \
             WHERE id = $1::uuid AND tenant_id = $2::uuid \
               AND (locked_until IS NULL OR locked_until <= now()) \
             RETURNING coalesce(locked_until > now(), false) AS locked",
            &[
                user_id.map(uuid).unwrap_or(Value::Null),
                tenant_id.map(uuid).unwrap_or(Value::Null),
                cfg.lockout_threshold.into(),
                cfg.lockout_minutes.into(),
            ],
        )
        .await?;
    let locked = match (locked_just_now, tenant_id, user_id) {
        (Some(row), Some(tenant_id), Some(user_id)) if row.bool("locked")? => Some((tenant_id, user_id)),
        _ => None,
    };
    if let Some((tenant_id, user_id)) = locked {
        audit::record(
            db,
            Some(meta),
            Event::new(tenant_id, Actor::System("lockout"), "account.locked")
                .target("user", user_id)
                .details(json!({"minutes": cfg.lockout_minutes, "after_failures": cfg.lockout_threshold})),
        )
        .await?;
    }
    Ok(())
}

/// Access token response. The token never outlives its session.
/// `session` row: id, expires_at, idle_expires_at, seconds_left.
fn token_response(cfg: &LoginConfig, user_id: &str, tenant_id: &str, session: &Row) -> HttpResult {
    let session_id = session.text("id")?;
    let seconds_left = session.int("seconds_left")?.max(1) as u64;
    let lifetime = (cfg.access_token_minutes as u64).saturating_mul(60).min(seconds_left);
    let claims = Claims::with_custom_claims(
        TokenClaims { tenant: tenant_id.to_owned(), sid: session_id.clone() },
        Duration::from_secs(lifetime),
    )
    .with_subject(user_id)
    .with_issuer(ISSUER)
    .with_audience(AUDIENCE)
    .with_jwt_id(uuid::Uuid::new_v4().to_string());
    let token = cfg.signing_key.sign(claims).map_err(|_| Problem::internal())?;
    json(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "session": {
                "id": session_id,
                "expires_at": session.text("expires_at")?,
                "idle_expires_at": session.text("idle_expires_at")?,
            }
        }),
    )
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_str(&format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"))
        .expect("static cookie is a valid header")
}

pub async fn logout(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
) -> HttpResult {
    let who = authenticate(req, db, vars).await?;
    transaction(db, async |db| {
        db.execute(
            "UPDATE sessions SET revoked_at = now() WHERE id = $1::uuid AND revoked_at IS NULL",
            &[uuid(&who.session_id)],
        )
        .await?;
        audit::record(db, Some(meta), Event::by(&who, "logout").target("session", &who.session_id)).await?;
        Ok::<_, Problem>(())
    })
    .await?;
    let mut r =
        http::Response::builder().status(StatusCode::NO_CONTENT).body(Vec::new()).map_err(|_| Problem::internal())?;
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}

/// Extends a live session's idle deadline (never past its absolute maximum)
/// and issues a fresh access token. By the session cookie only: a bearer
/// token (even beside the cookie) is not read, so a leaked token ends with
/// its own 15 minutes.
pub async fn refresh(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
) -> HttpResult {
    let cfg = LoginConfig::from_vars(vars)?;
    let who = authenticate_cookie(req, db, vars).await?;
    let session = transaction(db, async |db| {
        let session = db
            .query_opt(
                "UPDATE sessions SET last_seen_at = now(), \
                     idle_expires_at = least(now() + make_interval(mins => $2::int8::int), expires_at) \
                 WHERE id = $1::uuid AND revoked_at IS NULL AND now() < expires_at AND now() < idle_expires_at \
                 RETURNING id, rfc3339(expires_at) AS expires_at, rfc3339(idle_expires_at) AS idle_expires_at, \
                           extract(epoch FROM expires_at - now())::int8 AS seconds_left",
                &[uuid(&who.session_id), cfg.session_idle_minutes.into()],
            )
            .await?
            .ok_or_else(Problem::unauthenticated)?;
        audit::record(db, Some(meta), Event::by(&who, "session.refreshed").target("session", &who.session_id)).await?;
        Ok::<_, Problem>(session)
    })
    .await?;
    token_response(&cfg, &who.user_id, &who.tenant_id, &session)
}

pub async fn me(req: &http::Request<Body>, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let who = authenticate(req, db, vars).await?;
    let row = db
        .query_one(
            "SELECT email, language, rfc3339(last_login_at) AS last_login_at FROM users WHERE id = $1::uuid AND tenant_id = $2::uuid",
            &[uuid(&who.user_id), uuid(&who.tenant_id)],
        )
        .await?;
    json(StatusCode::OK, &me_view(&who, &row)?)
}

fn me_view(who: &Principal, row: &Row) -> Result<serde_json::Value, Problem> {
    let roles: std::collections::BTreeSet<&str> = who.grants.iter().map(|g| g.role.as_str()).collect();
    Ok(json!({
        "user": {
            "id": who.user_id,
            "username": who.username,
            "display_name": who.display_name,
            "email": row.opt_text("email")?,
            "language": row.text("language")?,
            "last_login_at": row.opt_text("last_login_at")?,
        },
        "tenant": { "id": who.tenant_id, "slug": who.tenant_slug },
        "roles": roles,
        "scopes": who.grants,
        "session": {
            "id": who.session_id,
            "expires_at": who.session_expires_at,
            "idle_expires_at": who.session_idle_expires_at,
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// Changes the caller's password and revokes their other sessions. A wrong
/// current password counts as a failed login (so it cannot be brute-forced
/// through a stolen session).
pub async fn change_password(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
) -> HttpResult {
    let cfg = LoginConfig::from_vars(vars)?;
    let who = authenticate(req, db, vars).await?;
    let body: PasswordChange = read_json(req, BODY_LIMIT)?;
    if body.current_password.len() > MAX_PASSWORD_BYTES {
        return Err(Problem::validation(vec![field("/current_password", "is incorrect")]));
    }
    let new = NewPassword::parse(&body.new_password, &who.username)
        .map_err(|broken| Problem::validation(broken.into_iter().map(|m| field("/new_password", m)).collect()))?;
    let row = db
        .query_one(
            "SELECT password_hash, coalesce(locked_until > now(), false) AS locked FROM users \
             WHERE id = $1::uuid AND tenant_id = $2::uuid",
            &[uuid(&who.user_id), uuid(&who.tenant_id)],
        )
        .await?;
    // Live sessions survive a lockout, so a locked account must not go on
    // verifying guesses here either: no check at all until the lock ends.
    if row.bool("locked")? {
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "password.change_failed").target("user", &who.user_id).details(json!({"reason": "locked"})),
        )
        .await?;
        return Err(Problem::validation(vec![field(
            "/current_password",
            "cannot be checked now: the account is locked after repeated failures; try again later",
        )]));
    }
    let stored = row.text("password_hash")?;
    if !password::verify(&body.current_password, &stored) {
        transaction(db, async |db| {
            audit::record(db, Some(meta), Event::by(&who, "password.change_failed").target("user", &who.user_id))
                .await?;
            count_failure(db, meta, &cfg, Some(&who.tenant_id), Some(&who.user_id)).await
        })
        .await?;
        return Err(Problem::validation(vec![field("/current_password", "is incorrect")]));
    }
    if body.current_password == body.new_password {
        return Err(Problem::validation(vec![field("/new_password", "must differ from the current password")]));
    }
    let hash = new.hash();
    transaction(db, async |db| {
        db.execute(
            "UPDATE users SET password_hash = $1::text, updated_at = now() WHERE id = $2::uuid AND tenant_id = $3::uuid",
            &[hash.into(), uuid(&who.user_id), uuid(&who.tenant_id)],
        )
        .await?;
        let revoked = db
            .execute(
                "UPDATE sessions SET revoked_at = now() \
                 WHERE user_id = $1::uuid AND id <> $2::uuid AND revoked_at IS NULL",
                &[uuid(&who.user_id), uuid(&who.session_id)],
            )
            .await?;
        audit::record(db, Some(meta), Event::by(&who, "password.changed")
            .target("user", &who.user_id)
            .details(json!({"revoked_sessions": revoked})))
        .await?;
        Ok::<_, Problem>(())
    })
    .await?;
    tavle_core::web::no_content()
}
