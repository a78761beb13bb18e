//! Component `ingest`: signed webhooks from school administrative systems
//! (rosters) and test publishers (results), the administration of the
//! webhook sources that may send them, and the privacy officer's list of the
//! transfers between schools that rosters made.
//!
//! A delivery is verified (Standard Webhooks), then applied in one
//! transaction together with its idempotency record, so a re-delivered
//! `webhook-id` returns the original outcome and applies nothing twice.

mod deliveries;
mod pupils;
mod results;
mod roster;
mod sources;
mod transfers;
pub mod verify;

// The statements of a delivery, public so that the ingest benchmark replays
// these very texts (tests/benches/ingest.rs) and breaks with the handler.
pub use deliveries::{DELIVERY_LOOKUP_SQL, DELIVERY_RECORD_SQL, LOAD_SOURCE_SQL};
pub use pupils::RESOLVE_KEY_SHARE_SQL as PUPILS_RESOLVE_SQL;
/// The body of a results post as the handler parses it (for the benchmark).
pub use results::ResultsPost;
pub use results::{ASSESSMENT_UPSERT_SQL, HELD_FOR_RESTRICTED_SQL, RESULTS_UPSERT_SQL, RESULT_COLUMNS};

use http::{Method, Request, Response};
use tavle_core::crypto::{BlindIndex, IdentityCipher};
use tavle_core::cursor::CursorKey;
use tavle_core::db::Db;
use tavle_core::identity::SyntheticPolicy;
use tavle_core::vars::Variables;
use tavle_core::web::{self, match_path, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

/// Largest webhook body; larger ones get 413 before any parsing.
pub const WEBHOOK_BODY_LIMIT: usize = 10 * 1024 * 1024;
/// Largest admin body.
pub const ADMIN_BODY_LIMIT: usize = 64 * 1024;

#[cfg(target_arch = "wasm32")]
tavle_core::spin_component!(crate::handle, crate::body_limit);

pub async fn handle(req: Request<Body>, vars: &impl Variables, db: &mut impl Db) -> Response<Body> {
    web::serve(req, vars, async |req, meta| route(req, meta, vars, db).await).await
}

/// The body limit of a request to `path`: webhooks may carry large
/// batches, the administration routes only small JSON bodies.
pub fn body_limit(path: &str) -> usize {
    if path.starts_with("/ingest/") {
        WEBHOOK_BODY_LIMIT
    } else {
        ADMIN_BODY_LIMIT
    }
}

async fn route(req: Request<Body>, meta: RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some(p) = match_path("/ingest/{source}/{kind}", &path) {
        let (source, kind) = (p[0].to_owned(), p[1]);
        return match (kind, &method) {
            ("roster", &Method::POST) => {
                deliveries::receive(&req, &meta, vars, db, &source, deliveries::Kind::Roster).await
            }
            ("results", &Method::POST) => {
                deliveries::receive(&req, &meta, vars, db, &source, deliveries::Kind::Results).await
            }
            ("roster" | "results", _) => Err(Problem::method_not_allowed("POST")),
            _ => Err(Problem::not_found()),
        };
    }
    if match_path("/admin/sources", &path).is_some() {
        return match method {
            Method::GET => sources::list(&req, vars, db).await,
            Method::POST => sources::create(&req, &meta, vars, db).await,
            _ => Err(Problem::method_not_allowed("GET, POST")),
        };
    }
    if let Some(p) = match_path("/admin/sources/{id}", &path) {
        return match method {
            Method::GET => sources::get(&req, vars, db, p[0]).await,
            _ => Err(Problem::method_not_allowed("GET")),
        };
    }
    if let Some(p) = match_path("/admin/sources/{id}/{action}", &path) {
        let (id, action) = (p[0].to_owned(), p[1]);
        return match (action, &method) {
            ("rotate", &Method::POST) => sources::rotate(&req, &meta, vars, db, &id).await,
            ("disable", &Method::POST) => sources::disable(&req, &meta, vars, db, &id).await,
            ("schools", &Method::PUT) => sources::set_schools(&req, &meta, vars, db, &id).await,
            ("rotate" | "disable", _) => Err(Problem::method_not_allowed("POST")),
            ("schools", _) => Err(Problem::method_not_allowed("PUT")),
            _ => Err(Problem::not_found()),
        };
    }
    if match_path("/admin/transfers", &path).is_some() {
        return match method {
            Method::GET => transfers::list(&req, &meta, vars, db).await,
            _ => Err(Problem::method_not_allowed("GET")),
        };
    }
    Err(Problem::not_found())
}

/// The key of this component's cursors (`GET /admin/sources`,
/// `GET /admin/transfers`), derived from `webhook_secret_key` (see
/// `CursorKey::derive` for why the derived key is independent of it). A new
/// current key makes cursors handed out before it malformed: a client starts
/// again from the first page.
pub(crate) fn cursor_key(vars: &impl Variables) -> Result<CursorKey, Problem> {
    CursorKey::from_var(vars, "webhook_secret_key")
}

/// Keys and policies of this component, from its Spin variables.
pub(crate) struct IngestConfig {
    pub identity: IdentityCipher,
    pub blind_index: BlindIndex,
    pub secrets: IdentityCipher,
    pub synthetic: SyntheticPolicy,
    pub overlap_hours: i64,
}

fn config_error(name: &str, e: impl std::fmt::Display) -> Problem {
    eprintln!("error: configuration variable `{name}`: {e}");
    Problem::internal()
}

impl IngestConfig {
    pub fn from_vars(vars: &impl Variables) -> Result<Self, Problem> {
        let identity = IdentityCipher::from_config(
            &vars.require("identity_key")?,
            &vars.get("identity_previous_keys").unwrap_or_default(),
        )
        .map_err(|e| config_error("identity_key", e))?;
        let blind_index = BlindIndex::from_config(&vars.require("blind_index_key")?)
            .map_err(|e| config_error("blind_index_key", e))?;
        let secrets = IdentityCipher::from_config(
            &vars.require("webhook_secret_key")?,
            &vars.get("webhook_secret_previous_keys").unwrap_or_default(),
        )
        .map_err(|e| config_error("webhook_secret_key", e))?;
        let synthetic = SyntheticPolicy::from_vars(vars)?;
        let overlap_hours = vars.positive("webhook_secret_overlap_hours", 24)?;
        Ok(IngestConfig { identity, blind_index, secrets, synthetic, overlap_hours })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::IngestConfig;
    use base64::Engine;
    use std::collections::HashMap;

    /// A configuration with fixed keys that accepts synthetic identity numbers.
    pub fn config() -> IngestConfig {
        let key = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
        let vars: HashMap<String, String> = [
            ("identity_key", key(1)),
            ("blind_index_key", key(2)),
            ("webhook_secret_key", key(3)),
            ("accept_synthetic_identity_numbers", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        IngestConfig::from_vars(&vars).unwrap()
    }

    /// A valid synthetic identity number, a different one for each `n` below 12.
    pub fn identity_number(n: u32) -> String {
        let id = tavle_core::identity::IdentityNumber::synthetic((2016, 1 + n, 14), 0).unwrap();
        id.expose().to_owned()
    }
}
