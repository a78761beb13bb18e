//! Fulfilment of requests (stub: being written).

use tavle_core::db::Db;
use tavle_core::vars::Variables;
use tavle_core::web::{Body, HttpResult, RequestMeta};
use tavle_core::Problem;

pub async fn fulfil(
    _req: &http::Request<Body>,
    _meta: &RequestMeta,
    _vars: &impl Variables,
    _db: &mut impl Db,
    _id: &str,
) -> HttpResult {
    Err(Problem::not_found())
}
