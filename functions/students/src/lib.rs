//! Component `students`: what teachers and school leaders use every day.
//! Pupils in scope, a pupil's profile with results over time, groups and
//! schools, the class overview, manual results, and the privacy officer's
//! views of who accessed a pupil's data and of every identity-number search.
//!
//! Scope is decided in SQL from the caller's live grants (see `scope`), so an
//! id outside it is indistinguishable from one that does not exist (404).
//! Every response carrying pupil data writes an access record in the same
//! statement as the read (`tavle_core::access_log`).

// First: its macros are used by the modules below.
#[macro_use]
mod scope;
mod access;
mod manual;
mod manual_assessments;
// Before `pupils` and `follow_up`: its macros are used there.
#[macro_use]
mod overview;
pub mod follow_up;
pub mod pupils;
mod structure;

pub use follow_up::{FOLLOW_UP_ACTION, FOLLOW_UP_COUNTS_SQL, FOLLOW_UP_DEFAULT_LIMIT, FOLLOW_UP_SQL};
pub use overview::{OVERVIEW_ACTION, OVERVIEW_CONCERNED, OVERVIEW_SQL};
pub use pupils::{PROFILE_ACTION, PROFILE_CONCERNED, PROFILE_SQL};

use http::{Method, Request, Response};
use tavle_core::cursor::CursorKey;
use tavle_core::db::Db;
use tavle_core::vars::Variables;
use tavle_core::web::{self, match_path, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

/// Largest request body (manual results, searches).
pub const BODY_LIMIT: usize = 16 * 1024;

#[cfg(target_arch = "wasm32")]
tavle_core::spin_component!(crate::handle, crate::body_limit);

pub async fn handle(req: Request<Body>, vars: &impl Variables, db: &mut impl Db) -> Response<Body> {
    web::serve(req, vars, async |req, meta| route(req, meta, vars, db).await).await
}

/// The key of this component's cursors (pupil lists and searches, the
/// access-log views, the structure lists), derived from `blind_index_key`
/// (see `CursorKey::derive` for why the derived key is independent of the
/// blind index's). A new blind-index key makes cursors handed out before it
/// malformed: a client starts again from the first page.
pub(crate) fn cursor_key(vars: &impl Variables) -> Result<CursorKey, Problem> {
    CursorKey::from_var(vars, "blind_index_key")
}

/// The body limit of a request to `path`: every route of this component
/// takes small JSON bodies.
pub fn body_limit(_path: &str) -> usize {
    BODY_LIMIT
}

async fn route(req: Request<Body>, meta: RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let get_only = |m: &Method| if *m == Method::GET { Ok(()) } else { Err(Problem::method_not_allowed("GET")) };

    if match_path("/pupils", &path).is_some() {
        get_only(&method)?;
        return pupils::list(&req, &meta, vars, db).await;
    }
    if match_path("/pupils/search", &path).is_some() {
        return match method {
            Method::POST => pupils::search(&req, &meta, vars, db).await,
            _ => Err(Problem::method_not_allowed("POST")),
        };
    }
    // Before `/pupils/{id}`, which would take `searches` for an id.
    if match_path("/pupils/searches", &path).is_some() {
        get_only(&method)?;
        return access::searches(&req, &meta, vars, db).await;
    }
    if let Some(p) = match_path("/pupils/{id}", &path) {
        get_only(&method)?;
        return pupils::profile(&req, &meta, vars, db, p[0]).await;
    }
    if let Some(p) = match_path("/pupils/{id}/results", &path) {
        return match method {
            Method::POST => manual::register(&req, &meta, vars, db, p[0]).await,
            _ => Err(Problem::method_not_allowed("POST")),
        };
    }
    if let Some(p) = match_path("/pupils/{id}/results/{result}", &path) {
        return match method {
            Method::PUT => manual::correct(&req, &meta, vars, db, p[0], p[1]).await,
            _ => Err(Problem::method_not_allowed("PUT")),
        };
    }
    if let Some(p) = match_path("/pupils/{id}/access-log", &path) {
        get_only(&method)?;
        return access::for_pupil(&req, &meta, vars, db, p[0]).await;
    }
    if match_path("/groups", &path).is_some() {
        get_only(&method)?;
        return structure::groups(&req, vars, db).await;
    }
    if let Some(p) = match_path("/groups/{id}/overview", &path) {
        get_only(&method)?;
        return overview::class_overview(&req, &meta, vars, db, p[0]).await;
    }
    if match_path("/schools", &path).is_some() {
        get_only(&method)?;
        return structure::schools(&req, vars, db).await;
    }
    if match_path("/assessments", &path).is_some() {
        return match method {
            Method::GET => structure::assessments(&req, vars, db).await,
            Method::POST => manual_assessments::register(&req, &meta, vars, db).await,
            _ => Err(Problem::method_not_allowed("GET, POST")),
        };
    }
    if let Some(p) = match_path("/assessments/{id}/thresholds", &path) {
        return match method {
            Method::PUT => manual_assessments::set_thresholds(&req, &meta, vars, db, p[0]).await,
            _ => Err(Problem::method_not_allowed("PUT")),
        };
    }
    if let Some(p) = match_path("/assessments/{id}/follow-up", &path) {
        get_only(&method)?;
        return follow_up::counts(&req, vars, db, p[0]).await;
    }
    if match_path("/follow-up", &path).is_some() {
        get_only(&method)?;
        // The clock: "the current school year" is the one today falls in.
        return follow_up::list(&req, &meta, vars, db, tavle_core::scores::today_utc()).await;
    }
    Err(Problem::not_found())
}
