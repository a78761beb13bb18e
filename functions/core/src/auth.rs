//! Authentication verification, roles and scopes.
//!
//! Access tokens are Ed25519-signed JWTs issued by the `login` component.
//! Every other component verifies them with public keys only and then checks
//! that the session behind the token is still live, so logout, deactivation
//! and password changes take effect at once, not when the token expires.
//! Browsers may instead send the HttpOnly session cookie; state-changing
//! cookie requests must then pass the Origin (CSRF) check.

use crate::db::{uuid, Db, Row, Value};
use crate::problem::Problem;
use crate::vars::Variables;
use crate::web::{cookie, Body};
use base64::Engine;
use http::{header, Method, Request};
use jwt_simple::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

pub const SESSION_COOKIE: &str = "__Host-tavle_session";
pub const ISSUER: &str = "tavle";
pub const AUDIENCE: &str = "tavle-api";

/// Custom claims of an access token (besides `sub` = user id, `exp`, `iat`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenClaims {
    pub tenant: String,
    pub sid: String,
}

/// Key id of an Ed25519 public key: first 16 hex chars of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    hex(&Sha256::digest(public_key)[..8])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// 32 random bytes, base64url: session secrets and similar bearer values.
pub fn random_secret() -> String {
    let mut buf = [0u8; 32];
    getrandom::getrandom(&mut buf).expect("the platform RNG is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Public keys that verify access tokens, by key id. Several during rotation.
pub struct TokenVerifier {
    keys: Vec<(String, Ed25519PublicKey)>,
}

impl TokenVerifier {
    /// From the comma-separated base64 keys of the `token_public_keys` variable.
    pub fn from_config(public_keys: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for k in public_keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k)
                .map_err(|_| "token public key is not base64".to_owned())?;
            let key =
                Ed25519PublicKey::from_bytes(&raw).map_err(|_| "token public key is not an Ed25519 key".to_owned())?;
            keys.push((key_id(&raw), key));
        }
        if keys.is_empty() {
            return Err("no token public keys configured".into());
        }
        Ok(TokenVerifier { keys })
    }

    pub fn from_vars(vars: &impl Variables) -> Result<Self, Problem> {
        Self::from_config(&vars.require("token_public_keys")?).map_err(|e| {
            eprintln!("error: token_public_keys: {e}");
            Problem::internal()
        })
    }

    /// Verifies signature (EdDSA only: `alg: none` and other algorithms fail),
    /// key id, issuer, audience and expiry. Returns (user id, claims).
    pub fn verify(&self, token: &str) -> Result<(String, TokenClaims), Problem> {
        let meta = Token::decode_metadata(token).map_err(|_| Problem::unauthenticated())?;
        let kid = meta.key_id().ok_or_else(Problem::unauthenticated)?;
        let (_, key) = self.keys.iter().find(|(id, _)| id == kid).ok_or_else(Problem::unauthenticated)?;
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([ISSUER.to_owned()])),
            allowed_audiences: Some(HashSet::from([AUDIENCE.to_owned()])),
            time_tolerance: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let claims = key.verify_token::<TokenClaims>(token, Some(options)).map_err(|_| Problem::unauthenticated())?;
        let sub = claims.subject.ok_or_else(Problem::unauthenticated)?;
        Ok((sub, claims.custom))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Teacher of one group (scope: group_id).
    Teacher,
    /// School leader of one school (scope: school_id).
    SchoolLeader,
    TenantAdmin,
    PrivacyOfficer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Teacher => "teacher",
            Role::SchoolLeader => "school_leader",
            Role::TenantAdmin => "tenant_admin",
            Role::PrivacyOfficer => "privacy_officer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "teacher" => Role::Teacher,
            "school_leader" => Role::SchoolLeader,
            "tenant_admin" => Role::TenantAdmin,
            "privacy_officer" => Role::PrivacyOfficer,
            _ => return None,
        })
    }
}

/// One role grant with its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub school_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Bearer,
    Cookie,
}

/// An authenticated staff user with a live session.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub tenant_id: String,
    pub tenant_slug: String,
    pub session_id: String,
    pub username: String,
    pub display_name: String,
    pub grants: Vec<Grant>,
    pub credential: Credential,
    pub session_expires_at: String,
    pub session_idle_expires_at: String,
}

impl Principal {
    pub fn has_role(&self, role: Role) -> bool {
        self.grants.iter().any(|g| g.role == role)
    }

    /// Group ids this user teaches.
    pub fn taught_groups(&self) -> Vec<String> {
        self.scoped(Role::Teacher, |g| g.group_id.clone())
    }

    /// School ids this user leads.
    pub fn led_schools(&self) -> Vec<String> {
        self.scoped(Role::SchoolLeader, |g| g.school_id.clone())
    }

    fn scoped(&self, role: Role, pick: impl Fn(&Grant) -> Option<String>) -> Vec<String> {
        self.grants.iter().filter(|g| g.role == role).filter_map(pick).collect()
    }

    pub fn require(&self, role: Role) -> Result<(), Problem> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!("requires the {} role", role.as_str())))
        }
    }
}

const SESSION_COLUMNS: &str = "u.id AS user_id, u.tenant_id, s.id AS session_id, u.username, u.display_name, \
     t.slug AS tenant_slug, rfc3339(s.expires_at) AS expires_at, rfc3339(s.idle_expires_at) AS idle_expires_at, \
     (SELECT coalesce(jsonb_agg(jsonb_build_object('role', g.role, 'school_id', g.school_id, \
        'group_id', g.group_id) ORDER BY g.role, g.school_id, g.group_id), '[]'::jsonb) \
      FROM role_grants g WHERE g.user_id = u.id AND g.tenant_id = u.tenant_id) AS grants";

pub(crate) const LIVE_SESSION: &str = "s.revoked_at IS NULL AND now() < s.idle_expires_at \
     AND now() < s.expires_at AND u.active AND u.deleted_at IS NULL";

fn principal(row: &Row, credential: Credential) -> Result<Principal, Problem> {
    let grants_json = row.json("grants")?;
    let grants: Vec<Grant> = serde_json::from_value(strip_nulls(grants_json)).map_err(|_| Problem::internal())?;
    Ok(Principal {
        user_id: row.text("user_id")?,
        tenant_id: row.text("tenant_id")?,
        session_id: row.text("session_id")?,
        username: row.text("username")?,
        display_name: row.text("display_name")?,
        tenant_slug: row.text("tenant_slug")?,
        session_expires_at: row.text("expires_at")?,
        session_idle_expires_at: row.text("idle_expires_at")?,
        grants,
        credential,
    })
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(strip_nulls).collect()),
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

fn bearer(req: &Request<Body>) -> Result<Option<&str>, Problem> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| Problem::unauthenticated())?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(Problem::unauthenticated()),
    }
}

pub fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// CSRF defence by Origin: a state-changing request that carries an Origin
/// must come from a configured origin; one authenticated by cookie must carry
/// an Origin at all (every current browser sends it on such requests).
pub fn check_origin(req: &Request<Body>, allowed_origins: &str, cookie_auth: bool) -> Result<(), Problem> {
    if !is_state_changing(req.method()) {
        return Ok(());
    }
    match req.headers().get(header::ORIGIN).map(|o| o.to_str()) {
        Some(Ok(origin)) => {
            let allowed = allowed_origins.split(',').map(str::trim).any(|a| !a.is_empty() && a == origin);
            if allowed {
                Ok(())
            } else {
                Err(Problem::forbidden("cross-site request refused (origin not allowed)"))
            }
        }
        Some(Err(_)) => Err(Problem::forbidden("cross-site request refused (bad origin)")),
        None if cookie_auth => Err(Problem::forbidden("cross-site request refused (origin missing)")),
        None => Ok(()),
    }
}

/// Authenticates a request by bearer token or session cookie and loads the
/// principal with its live session; everything else is a 401.
/// Who a bearer access token names, once its signature, lifetime and ids
/// are checked (and the request's Origin, if it has one): not yet whether
/// the session is still live, which only the database knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerCaller {
    pub user_id: String,
    pub tenant_id: String,
    pub session_id: String,
}

/// The caller named by the request's bearer token, or `None` without one.
///
/// # Errors
/// 401 for a token that does not verify; 403 for a foreign Origin.
pub fn bearer_caller(req: &Request<Body>, vars: &impl Variables) -> Result<Option<BearerCaller>, Problem> {
    let Some(token) = bearer(req)? else { return Ok(None) };
    let verifier = TokenVerifier::from_vars(vars)?;
    let (user_id, claims) = verifier.verify(token)?;
    let ids = [user_id.as_str(), claims.tenant.as_str(), claims.sid.as_str()];
    if ids.iter().any(|id| ::uuid::Uuid::parse_str(id).is_err()) {
        return Err(Problem::unauthenticated());
    }
    check_origin(req, &vars.get("allowed_origins").unwrap_or_default(), false)?;
    Ok(Some(BearerCaller { user_id, tenant_id: claims.tenant, session_id: claims.sid }))
}

pub async fn authenticate(req: &Request<Body>, db: &mut impl Db, vars: &impl Variables) -> Result<Principal, Problem> {
    if let Some(caller) = bearer_caller(req, vars)? {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s \
             JOIN users u ON u.id = s.user_id AND u.tenant_id = s.tenant_id \
             JOIN tenants t ON t.id = s.tenant_id \
             WHERE s.id = $1::uuid AND s.tenant_id = $2::uuid AND s.user_id = $3::uuid AND {LIVE_SESSION}"
        );
        let row = db
            .query_opt(&sql, &[uuid(caller.session_id), uuid(caller.tenant_id), uuid(caller.user_id)])
            .await?
            .ok_or_else(Problem::unauthenticated)?;
        return principal(&row, Credential::Bearer);
    }
    if cookie(req, SESSION_COOKIE).is_some() {
        return authenticate_cookie(req, db, vars).await;
    }
    Err(Problem::unauthenticated())
}

/// Authenticates by the session cookie alone (with the Origin check),
/// whatever else the request carries. For what only the browser session may
/// do: extending the session. A stolen access token must not be able to
/// turn its 15 minutes into a school day.
pub async fn authenticate_cookie(
    req: &Request<Body>,
    db: &mut impl Db,
    vars: &impl Variables,
) -> Result<Principal, Problem> {
    let Some(secret) = cookie(req, SESSION_COOKIE) else {
        return Err(Problem::unauthenticated()
            .with_detail("the session cookie is required: an access token cannot extend a session; log in again"));
    };
    check_origin(req, &vars.get("allowed_origins").unwrap_or_default(), true)?;
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s \
         JOIN users u ON u.id = s.user_id AND u.tenant_id = s.tenant_id \
         JOIN tenants t ON t.id = s.tenant_id \
         WHERE s.secret_hash = $1::bytea AND {LIVE_SESSION}"
    );
    let row =
        db.query_opt(&sql, &[Value::Bytes(sha256(secret.as_bytes()))]).await?.ok_or_else(Problem::unauthenticated)?;
    principal(&row, Credential::Cookie)
}

/// Authenticates and requires one role: 401 without a live session, 403 without the role.
pub async fn authenticate_as(
    req: &Request<Body>,
    db: &mut impl Db,
    vars: &impl Variables,
    role: Role,
) -> Result<Principal, Problem> {
    let who = authenticate(req, db, vars).await?;
    who.require(role)?;
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (Ed25519KeyPair, String) {
        let kp = Ed25519KeyPair::generate();
        let public = kp.public_key().to_bytes();
        let kid = key_id(&public);
        let b64 = base64::engine::general_purpose::STANDARD.encode(public);
        (kp.with_key_id(&kid), b64)
    }

    fn claims() -> JWTClaims<TokenClaims> {
        Claims::with_custom_claims(TokenClaims { tenant: "t".into(), sid: "s".into() }, Duration::from_mins(15))
            .with_subject("u")
            .with_issuer(ISSUER)
            .with_audience(AUDIENCE)
    }

    #[test]
    fn verifies_own_tokens_and_rejects_foreign_keys() {
        let (kp, public) = keypair();
        let (other, _) = keypair();
        let verifier = TokenVerifier::from_config(&public).unwrap();
        let token = kp.sign(claims()).unwrap();
        let (sub, c) = verifier.verify(&token).unwrap();
        assert_eq!(sub, "u");
        assert_eq!(c.sid, "s");
        assert!(verifier.verify(&other.sign(claims()).unwrap()).is_err());
    }

    #[test]
    fn rejects_alg_none_and_tampering() {
        let (kp, public) = keypair();
        let verifier = TokenVerifier::from_config(&public).unwrap();
        let token = kp.sign(claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none_header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(verifier.verify(&format!("{none_header}.{}.", parts[1])).is_err());
        let mut payload: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        payload["tenant"] = "other".into();
        let forged = format!("{}.{}.{}", parts[0], b64.encode(payload.to_string()), parts[2]);
        assert!(verifier.verify(&forged).is_err());
    }

    #[test]
    fn rejects_wrong_audience_and_expired() {
        let (kp, public) = keypair();
        let verifier = TokenVerifier::from_config(&public).unwrap();
        let wrong_aud = claims().with_audience("elsewhere");
        assert!(verifier.verify(&kp.sign(wrong_aud).unwrap()).is_err());
        let mut expired = claims();
        expired.expires_at = Some(Clock::now_since_epoch() - Duration::from_mins(1));
        assert!(verifier.verify(&kp.sign(expired).unwrap()).is_err());
    }

    #[test]
    fn origin_check() {
        let req = |method: Method, origin: Option<&str>| {
            let mut b = Request::builder().method(method).uri("/x");
            if let Some(o) = origin {
                b = b.header("origin", o);
            }
            b.body(Vec::new()).unwrap()
        };
        let allowed = "https://app.tavle.no, http://localhost:3000";
        assert!(check_origin(&req(Method::POST, Some("https://app.tavle.no")), allowed, true).is_ok());
        assert!(check_origin(&req(Method::POST, Some("https://evil.example")), allowed, false).is_err());
        assert!(check_origin(&req(Method::POST, None), allowed, true).is_err());
        assert!(check_origin(&req(Method::POST, None), allowed, false).is_ok());
        assert!(check_origin(&req(Method::GET, None), allowed, true).is_ok());
    }
}
