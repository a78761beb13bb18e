//! Component `subject-requests`: the data-subject rights that guardians and
//! staff exercise through the controller (the municipality). Privacy
//! officers register a request (access, rectification, erasure, restriction
//! and its lifting, portability, objection), follow it to its due date, and
//! fulfil it here; every step is in the audit log.
//!
//! - `requests`: registration, lifecycle, lists, history.
//! - `fulfil`: what completing each kind of request does.
//! - `export`: access and portability exports, built from the data
//!   inventory (the classification of every column in the schema).
//! - `inventory`: the record of processing (Art. 30), from the same source.

mod export;
mod fulfil;
mod inventory;
mod requests;

use http::{Method, Request, Response};
use tavle_core::db::Db;
use tavle_core::vars::Variables;
use tavle_core::web::{self, match_path, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

/// Largest request body (registrations, corrections).
pub const BODY_LIMIT: usize = 16 * 1024;

#[cfg(target_arch = "wasm32")]
tavle_core::spin_component!(crate::handle, crate::body_limit);

pub async fn handle(req: Request<Body>, vars: &impl Variables, db: &mut impl Db) -> Response<Body> {
    web::serve(req, vars, async |req, meta| route(req, meta, vars, db).await).await
}

pub fn body_limit(_path: &str) -> usize {
    BODY_LIMIT
}

/// Whose data a request is about: a pupil or a staff user of the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Pupil(String),
    User(String),
}

impl Subject {
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Pupil(_) => "pupil",
            Subject::User(_) => "user",
        }
    }
    pub fn id(&self) -> &str {
        match self {
            Subject::Pupil(id) | Subject::User(id) => id,
        }
    }
}

async fn route(req: Request<Body>, meta: RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let only =
        |m: Method, allow: &'static str| if method == m { Ok(()) } else { Err(Problem::method_not_allowed(allow)) };

    if match_path("/subject-requests", &path).is_some() {
        return match method {
            Method::GET => requests::list(&req, &meta, vars, db, tavle_core::scores::today_utc()).await,
            Method::POST => requests::register(&req, &meta, vars, db, tavle_core::scores::today_utc()).await,
            _ => Err(Problem::method_not_allowed("GET, POST")),
        };
    }
    if let Some(p) = match_path("/subject-requests/{id}", &path) {
        only(Method::GET, "GET")?;
        return requests::show(&req, &meta, vars, db, p[0], tavle_core::scores::today_utc()).await;
    }
    if let Some(p) = match_path("/subject-requests/{id}/{step}", &path) {
        let (id, step) = (p[0], p[1]);
        return match step {
            "start" | "extend" | "reject" => {
                only(Method::POST, "POST")?;
                requests::step(&req, &meta, vars, db, id, step, tavle_core::scores::today_utc()).await
            }
            "fulfil" => {
                only(Method::POST, "POST")?;
                fulfil::fulfil(&req, &meta, vars, db, id, tavle_core::scores::today_utc()).await
            }
            "export" => {
                only(Method::GET, "GET")?;
                export::download(&req, &meta, vars, db, id, export::Format::Json).await
            }
            "export.csv" => {
                only(Method::GET, "GET")?;
                export::download(&req, &meta, vars, db, id, export::Format::Csv).await
            }
            _ => Err(Problem::not_found()),
        };
    }
    if match_path("/privacy/inventory", &path).is_some() {
        only(Method::GET, "GET")?;
        return inventory::get(&req, vars, db).await;
    }
    Err(Problem::not_found())
}

// Export building blocks for `fulfil` and the integration tests.
pub use export::{build, delete_expired, store, Export, Format, DEFAULT_TTL_DAYS};
