//! Tavle's shared kernel. Everything a component needs that is not its own
//! business logic lives here, as plain Rust over `http` types so that it runs
//! natively in tests and as WebAssembly under Spin.

pub mod access_log;
pub mod audit;
pub mod auth;
pub mod crypto;
pub mod db;
pub mod identity;
pub mod problem;
pub mod scores;
pub mod vars;
pub mod web;

pub use problem::Problem;

/// The whole Spin adapter of a component: hands each request, the
/// component's own Spin variables and a `pg4` connection (from its `db_url`
/// variable) to the component's plain handler.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! spin_component {
    ($handler:path) => {
        #[spin_sdk::http_component]
        async fn spin_entry(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
            let vars = $crate::vars::SpinVariables;
            let address = $crate::vars::Variables::get(&vars, "db_url").unwrap_or_default();
            let mut db = $crate::db::SpinDb::new(address);
            $handler(req, &vars, &mut db).await
        }
    };
}
