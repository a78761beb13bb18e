//! Requests: registration, lifecycle, lists, history (stub: being written).

use tavle_core::db::Db;
use tavle_core::scores::Date;
use tavle_core::vars::Variables;
use tavle_core::web::{Body, HttpResult, RequestMeta};
use tavle_core::Problem;

pub async fn register(
    _req: &http::Request<Body>,
    _meta: &RequestMeta,
    _vars: &impl Variables,
    _db: &mut impl Db,
    _today: Date,
) -> HttpResult {
    Err(Problem::not_found())
}

pub async fn list(
    _req: &http::Request<Body>,
    _meta: &RequestMeta,
    _vars: &impl Variables,
    _db: &mut impl Db,
    _today: Date,
) -> HttpResult {
    Err(Problem::not_found())
}

pub async fn show(
    _req: &http::Request<Body>,
    _meta: &RequestMeta,
    _vars: &impl Variables,
    _db: &mut impl Db,
    _id: &str,
    _today: Date,
) -> HttpResult {
    Err(Problem::not_found())
}

pub async fn step(
    _req: &http::Request<Body>,
    _meta: &RequestMeta,
    _vars: &impl Variables,
    _db: &mut impl Db,
    _id: &str,
    _step: &str,
    _today: Date,
) -> HttpResult {
    Err(Problem::not_found())
}
