//! The native side of Tavle: the local host that serves the routes of
//! `spin.toml` with the same handler code the Spin components run, the
//! private PostgreSQL cluster for development and tests, migrations and
//! operator tasks.

pub mod dataset;
pub mod host;
pub mod manifest;
pub mod ops;
pub mod pgcluster;
pub mod server;
