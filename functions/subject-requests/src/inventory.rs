//! The record of processing (stub: being written).

use tavle_core::db::Db;
use tavle_core::vars::Variables;
use tavle_core::web::{Body, HttpResult};
use tavle_core::Problem;

pub async fn get(_req: &http::Request<Body>, _vars: &impl Variables, _db: &mut impl Db) -> HttpResult {
    Err(Problem::not_found())
}
