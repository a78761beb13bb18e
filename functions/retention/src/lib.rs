//! Component `retention`: keeps the customer's retention promises on a
//! schedule (README "Retention"). A scheduler starts a run with its token;
//! privacy officers read the reports.
//!
//! - `policy`: the deployment's policies, with floors and ceilings.
//! - `steps`: each policy as one bounded batch, and as a dry-run count.
//! - `run`: the lock, the batches within the call's time, the report.
//! - `reports`: run reports for the scheduler and for privacy officers.
//! - `leavers`: the leavers' reports, for school leaders and privacy officers.

mod leavers;
mod policy;
mod reports;
mod run;
mod steps;

pub use policy::Policies;
pub use run::Trigger;

use http::{header, Method, Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tavle_core::auth::{authenticate_as, Role};
use tavle_core::db::Db;
use tavle_core::vars::Variables;
use tavle_core::web::{self, match_path, query_param, Body, HttpResult, RequestMeta};
use tavle_core::Problem;
use time::OffsetDateTime;

/// Largest request body (`{"trigger": …}`).
pub const BODY_LIMIT: usize = 1024;

#[cfg(target_arch = "wasm32")]
tavle_core::spin_component!(crate::handle, crate::body_limit);

pub async fn handle(req: Request<Body>, vars: &impl Variables, db: &mut impl Db) -> Response<Body> {
    handle_at(req, vars, db, OffsetDateTime::now_utc()).await
}

/// As [`handle`], at clock `now`: every policy's dates derive from it, so
/// tests move time forward without sleeping.
pub async fn handle_at(
    req: Request<Body>,
    vars: &impl Variables,
    db: &mut impl Db,
    now: OffsetDateTime,
) -> Response<Body> {
    web::serve(req, vars, async |req, meta| route(req, meta, vars, db, now).await).await
}

pub fn body_limit(_path: &str) -> usize {
    BODY_LIMIT
}

/// The configuration check the native host runs at start-up (Spin has no
/// start-up hook: there, every request answers 500 and logs the message).
pub fn check_config(vars: &impl Variables) -> Result<Policies, String> {
    Policies::from_vars(vars)
}

async fn route(
    req: Request<Body>,
    meta: RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    now: OffsetDateTime,
) -> HttpResult {
    let path = req.uri().path().to_owned();
    let only = |m: Method, allow: &'static str| {
        if req.method() == m {
            Ok(())
        } else {
            Err(Problem::method_not_allowed(allow))
        }
    };
    if match_path("/internal/retention/run", &path).is_some() {
        only(Method::POST, "POST")?;
        return start(&req, vars, db, now).await;
    }
    if match_path("/retention/leaver-reports", &path).is_some() {
        only(Method::GET, "GET")?;
        return leavers::list(&req, &meta, vars, db).await;
    }
    if match_path("/retention/runs", &path).is_some() {
        only(Method::GET, "GET")?;
        let limit = web::page_limit(&req)?;
        let before = query_param(&req, "cursor")?;
        let before = match before.as_deref().map(uuid::Uuid::parse_str) {
            None => None,
            Some(Ok(u)) => Some(u.to_string()),
            Some(Err(_)) => return Err(web::malformed_cursor()),
        };
        let who = authenticate_as(&req, db, vars, Role::PrivacyOfficer).await?;
        let page = reports::list(db, &who.tenant_id, before.as_deref(), limit, now).await?;
        return web::json(StatusCode::OK, &page);
    }
    if let Some(p) = match_path("/retention/runs/{id}", &path) {
        only(Method::GET, "GET")?;
        let id = web::path_id(p[0])?;
        let who = authenticate_as(&req, db, vars, Role::PrivacyOfficer).await?;
        let one = reports::one(db, &id, Some(&who.tenant_id), now).await?.ok_or_else(Problem::not_found)?;
        return web::json(StatusCode::OK, &one);
    }
    Err(Problem::not_found())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunBody {
    trigger: Option<String>,
}

/// `POST /internal/retention/run[?dry_run=true]`, with the scheduler's token.
async fn start(req: &Request<Body>, vars: &impl Variables, db: &mut impl Db, now: OffsetDateTime) -> HttpResult {
    scheduler(req, vars)?;
    let policies = Policies::from_vars(vars).map_err(|message| {
        eprintln!("error: {message}");
        Problem::internal()
    })?;
    let mut checks = web::Checks::default();
    let dry_run = match query_param(req, "dry_run")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            checks.fail("/query/dry_run", "must be true or false");
            false
        }
    };
    if !checks.0.is_empty() {
        return Err(Problem::bad_query(checks.0));
    }
    let body: RunBody = if req.body().is_empty() { RunBody::default() } else { web::read_json(req, BODY_LIMIT)? };
    let trigger = match body.trigger.as_deref() {
        None => Trigger::Schedule,
        Some(t) => Trigger::parse(t).ok_or_else(|| {
            Problem::validation(vec![tavle_core::problem::field("/trigger", "must be schedule or manual")])
        })?,
    };
    let report = run::run(db, &policies, trigger, dry_run, now).await?;
    web::json(StatusCode::OK, &report)
}

/// The scheduler's bearer token, compared in constant time (of equal-length
/// digests, so that the length of the token leaks nothing either).
fn scheduler(req: &Request<Body>, vars: &impl Variables) -> Result<(), Problem> {
    let expected = vars.require("scheduler_token")?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(expected.trim().as_bytes())).into();
    if ok && !given.is_empty() {
        Ok(())
    } else {
        Err(Problem::unauthenticated())
    }
}
