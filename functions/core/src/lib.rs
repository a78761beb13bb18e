//! Tavle's shared kernel. Everything a component needs that is not its own
//! business logic lives here, as plain Rust over `http` types so that it runs
//! natively in tests and as WebAssembly under Spin.

pub mod audit;
pub mod auth;
pub mod crypto;
pub mod db;
pub mod identity;
pub mod problem;
pub mod vars;
pub mod web;

pub use problem::Problem;
