//! Access and portability exports (stub: being written).

use tavle_core::db::Db;
use tavle_core::vars::Variables;
use tavle_core::web::{Body, HttpResult, RequestMeta};
use tavle_core::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

pub async fn download(
    _req: &http::Request<Body>,
    _meta: &RequestMeta,
    _vars: &impl Variables,
    _db: &mut impl Db,
    _request_id: &str,
    _format: Format,
) -> HttpResult {
    Err(Problem::not_found())
}
