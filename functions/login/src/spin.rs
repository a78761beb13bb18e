//! Thin Spin adapter: hands the request, this component's variables and a
//! `pg4` connection to the plain handler in `lib.rs`.

use spin_sdk::http_component;
use tavle_core::db::SpinDb;
use tavle_core::vars::{SpinVariables, Variables};

#[http_component]
async fn handle(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    let vars = SpinVariables;
    let mut db = SpinDb::new(vars.get("db_url").unwrap_or_default());
    crate::handle(req, &vars, &mut db).await
}
