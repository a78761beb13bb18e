//! Component `login`: staff login, sessions and access tokens, password
//! changes, and user administration for tenant admins.
//!
//! The handler is a plain async function over `http` types; `spin.rs` is the
//! thin Spin adapter and the native host calls [`handle`] directly.

mod admin;
pub use admin::normalise_username;
pub mod password;
mod session;

use base64::Engine;
use http::{Method, Request, Response};
use jwt_simple::prelude::*;
use tavle_core::auth::key_id;
use tavle_core::cursor::CursorKey;
use tavle_core::db::Db;
use tavle_core::vars::Variables;
use tavle_core::web::{self, match_path, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

// The Spin adapter: a thin wrapper around `handle`.
#[cfg(target_arch = "wasm32")]
tavle_core::spin_component!(crate::handle, crate::body_limit);

/// Largest body this component accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

pub async fn handle(req: Request<Body>, vars: &impl Variables, db: &mut impl Db) -> Response<Body> {
    web::serve(req, vars, async |req, meta| route(req, meta, vars, db).await).await
}

/// The body limit of a request to `path`: every route of this component
/// takes small JSON bodies.
pub fn body_limit(_path: &str) -> usize {
    BODY_LIMIT
}

async fn route(req: Request<Body>, meta: RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if path.starts_with("/auth/") {
        let path = path.trim_end_matches('/');
        return match (path, &method) {
            ("/auth/login", &Method::POST) => session::login(&req, &meta, vars, db).await,
            ("/auth/logout", &Method::POST) => session::logout(&req, &meta, vars, db).await,
            ("/auth/refresh", &Method::POST) => session::refresh(&req, &meta, vars, db).await,
            ("/auth/me", &Method::GET) => session::me(&req, vars, db).await,
            ("/auth/password", &Method::POST) => session::change_password(&req, &meta, vars, db).await,
            ("/auth/me", _) => Err(Problem::method_not_allowed("GET")),
            ("/auth/login" | "/auth/logout" | "/auth/refresh" | "/auth/password", _) => {
                Err(Problem::method_not_allowed("POST"))
            }
            _ => Err(Problem::not_found()),
        };
    }
    if match_path("/admin/users", &path).is_some() {
        return match method {
            Method::GET => admin::list(&req, &meta, vars, db).await,
            Method::POST => admin::create(&req, &meta, vars, db).await,
            _ => Err(Problem::method_not_allowed("GET, POST")),
        };
    }
    if let Some(p) = match_path("/admin/users/{id}", &path) {
        let id = p[0].to_owned();
        return match method {
            Method::GET => admin::get(&req, &meta, vars, db, &id).await,
            Method::DELETE => admin::delete(&req, &meta, vars, db, &id).await,
            _ => Err(Problem::method_not_allowed("GET, DELETE")),
        };
    }
    if let Some(p) = match_path("/admin/users/{id}/{action}", &path) {
        let (id, action) = (p[0].to_owned(), p[1]);
        return match (action, &method) {
            ("roles", &Method::PUT) => admin::set_roles(&req, &meta, vars, db, &id).await,
            ("deactivate", &Method::POST) => admin::set_active(&req, &meta, vars, db, &id, false).await,
            ("activate", &Method::POST) => admin::set_active(&req, &meta, vars, db, &id, true).await,
            ("unlock", &Method::POST) => admin::unlock(&req, &meta, vars, db, &id).await,
            ("roles", _) => Err(Problem::method_not_allowed("PUT")),
            ("deactivate" | "activate" | "unlock", _) => Err(Problem::method_not_allowed("POST")),
            _ => Err(Problem::not_found()),
        };
    }
    Err(Problem::not_found())
}

/// The key of this component's cursors (`GET /admin/users`), derived from
/// `token_signing_key` (see `CursorKey::derive` for why the derived key is
/// independent of the signing key). A new signing key makes cursors handed
/// out before it malformed: a client starts again from the first page.
pub(crate) fn cursor_key(vars: &impl Variables) -> Result<CursorKey, Problem> {
    CursorKey::from_var(vars, "token_signing_key")
}

/// Settings of this component, from its Spin variables.
pub(crate) struct LoginConfig {
    pub signing_key: Ed25519KeyPair,
    pub allowed_origins: String,
    pub lockout_threshold: i64,
    pub lockout_minutes: i64,
    pub access_token_minutes: i64,
    pub session_idle_minutes: i64,
    pub session_max_minutes: i64,
}

impl LoginConfig {
    pub fn from_vars(vars: &impl Variables) -> Result<Self, Problem> {
        let signing_key = signing_key(&vars.require("token_signing_key")?).map_err(|e| {
            eprintln!("error: token_signing_key: {e}");
            Problem::internal()
        })?;
        Ok(LoginConfig {
            signing_key,
            allowed_origins: vars.get("allowed_origins").unwrap_or_default(),
            lockout_threshold: vars.positive("lockout_threshold", 5)?,
            lockout_minutes: vars.positive("lockout_minutes", 15)?,
            access_token_minutes: vars.positive("access_token_minutes", 15)?,
            session_idle_minutes: vars.positive("session_idle_minutes", 30)?,
            session_max_minutes: vars.positive("session_max_minutes", 600)?,
        })
    }
}

/// The signing key: base64 of a 32-byte Ed25519 seed (or of the 64-byte
/// seed‖public-key form). Its key id goes into every token header.
pub fn signing_key(b64: &str) -> Result<Ed25519KeyPair, String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| "not base64".to_owned())?;
    let pair = match raw.len() {
        32 => {
            let seed = ed25519_compact::Seed::from_slice(&raw).map_err(|_| "bad seed".to_owned())?;
            ed25519_compact::KeyPair::from_seed(seed).to_vec()
        }
        64 => raw,
        _ => return Err("must be 32 or 64 bytes".into()),
    };
    let kp = Ed25519KeyPair::from_bytes(&pair).map_err(|_| "not an Ed25519 key".to_owned())?;
    let kid = key_id(&kp.public_key().to_bytes());
    Ok(kp.with_key_id(&kid))
}

/// A fresh signing key and its public key, both base64, for `tavle keygen`,
/// the dev host and tests.
pub fn generate_signing_key() -> (String, String) {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("the platform RNG is available");
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
    let b64 = base64::engine::general_purpose::STANDARD;
    (b64.encode(seed), b64.encode(*kp.pk))
}
