//! Tavle's shared kernel. Everything a component needs that is not its own
//! business logic lives here, as plain Rust over `http` types so that it runs
//! natively in tests and as WebAssembly under Spin.

pub mod access_log;
pub mod audit;
pub mod auth;
pub mod crypto;
pub mod cursor;
pub mod db;
pub mod erasure;
pub mod identity;
pub mod names;
pub mod problem;
pub mod scores;
#[cfg(target_arch = "wasm32")]
pub mod spin_http;
pub mod subtests;
pub mod vars;
pub mod web;

pub use problem::Problem;

/// The whole Spin adapter of a component: reads each request with the
/// component's body limit for its path (see [`spin_http`]), hands it, the
/// component's own Spin variables and a `pg4` connection (from its `db_url`
/// variable) to the component's plain handler, and writes the answer.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! spin_component {
    ($handler:path, $body_limit:path) => {
        #[spin_sdk::http_component]
        async fn spin_entry(req: spin_sdk::http::IncomingRequest, out: spin_sdk::http::ResponseOutparam) {
            $crate::db::roll_back_on_panic();
            let vars = $crate::vars::SpinVariables;
            let response = match $crate::spin_http::read_request(req, &vars, $body_limit).await {
                Ok(req) => {
                    let address = $crate::vars::Variables::get(&vars, "db_url").unwrap_or_default();
                    let mut db = $crate::db::SpinDb::new(address);
                    $handler(req, &vars, &mut db).await
                }
                Err(refused) => refused,
            };
            $crate::spin_http::respond(response, out);
        }
    };
}
