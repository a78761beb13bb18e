//! The native host: serves the routes of `spin.toml` by calling the same
//! handler functions the Spin components wrap, each with only its own
//! component variables and its own database pool, as Spin would.

use crate::manifest::Manifest;
use anyhow::{bail, Context, Result};
use http::{HeaderValue, Request, Response};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgPool};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tavle_core::db::{Admission, Backoff, Db, DbError, Row, SqlxDb, Value};
use tavle_core::web::{self, Body, BodyReader, RequestMeta};
use tavle_core::Problem;

/// Components this binary can run natively, by `spin.toml` component id.
#[cfg(not(feature = "test-fixtures"))]
pub const NATIVE_COMPONENTS: &[&str] = &["login", "ingest", "students", "subject-requests", "retention"];
/// Components this binary can run natively, by `spin.toml` component id
/// (with the tests' fixture component).
#[cfg(feature = "test-fixtures")]
pub const NATIVE_COMPONENTS: &[&str] = &["login", "ingest", "students", "subject-requests", "retention", "probe"];

struct ComponentRuntime {
    variables: HashMap<String, String>,
    pool: PgPool,
    /// Shared with the same component's runtimes on the other workers.
    backoff: Backoff,
    /// Limit of a connection attempt (`connect_timeout` of `db_url`).
    connect_timeout: Duration,
}

/// One host instance: routes plus a runtime per component. Pools are bound
/// to the async runtime that created them, so each worker thread builds its own.
pub struct Host {
    manifest: Arc<Manifest>,
    components: HashMap<String, ComponentRuntime>,
}

/// Host settings shared by worker threads.
#[derive(Clone)]
pub struct HostConfig {
    pub manifest: Arc<Manifest>,
    pub app_variables: HashMap<String, String>,
    pub max_connections: u32,
    /// Per component, what every worker's runtime of it knows about its
    /// database (each worker has its own pool, but one failure to connect
    /// makes them all answer 503 at once for a while; see [`Backoff`]).
    pub backoff: HashMap<String, Backoff>,
}

impl HostConfig {
    pub fn new(manifest: Manifest, provided: &HashMap<String, String>) -> Result<HostConfig> {
        let app_variables = manifest.resolve_app_variables(provided)?;
        for name in manifest.components.keys() {
            if !NATIVE_COMPONENTS.contains(&name.as_str()) {
                bail!("spin.toml component `{name}` has no native handler in this host");
            }
        }
        let backoff = manifest.components.keys().map(|name| (name.clone(), Backoff::new())).collect();
        Ok(HostConfig { manifest: Arc::new(manifest), app_variables, max_connections: 10, backoff })
    }
}

impl Host {
    /// Builds the runtimes. Must be called inside the async runtime that
    /// will serve requests.
    pub fn new(config: &HostConfig) -> Result<Host> {
        let mut components = HashMap::new();
        for name in config.manifest.components.keys() {
            let variables = config.manifest.component_variables(name, &config.app_variables)?;
            let url = variables.get("db_url").cloned().unwrap_or_default();
            check_outbound(&config.manifest.outbound_hosts(name, &config.app_variables)?, &url, name)?;
            tavle_core::db::check_db_url(&url).map_err(|e| anyhow::anyhow!("component `{name}`: {e}"))?;
            // Refused at start-up, as the component would refuse every request.
            if name == "retention" {
                tavle_retention::check_config(&variables).map_err(|e| anyhow::anyhow!("component `{name}`: {e}"))?;
            }
            // One pool per component, as Spin 4 keeps them (its pools are
            // per component and address), so no component can take another's
            // connections, or be handed one another left behind.
            // The acquire timeout bounds the wait for a connection that
            // other requests hold; a new connection has `connect_timeout`
            // (see `GatedDb`).
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(connect_options(&url)?);
            let backoff = config.backoff.get(name).cloned().unwrap_or_default();
            let connect_timeout =
                tavle_core::db::connect_timeout(&url).unwrap_or(tavle_core::db::DEFAULT_CONNECT_TIMEOUT);
            components.insert(name.clone(), ComponentRuntime { variables, pool, backoff, connect_timeout });
        }
        Ok(Host { manifest: config.manifest.clone(), components })
    }

    /// The body limit of the component that serves `path` (what its Spin
    /// adapter enforces); unrouted paths take no body worth reading.
    pub fn body_limit(&self, path: &str) -> usize {
        match self.manifest.route_for(path).map(|r| r.component.as_str()) {
            Some("login") => tavle_login::body_limit(path),
            Some("ingest") => tavle_ingest::body_limit(path),
            Some("students") => tavle_students::body_limit(path),
            Some("subject-requests") => tavle_subject_requests::body_limit(path),
            Some("retention") => tavle_retention::body_limit(path),
            #[cfg(feature = "test-fixtures")]
            Some("probe") => tavle_db_probe::body_limit(path),
            _ => 0,
        }
    }

    /// Serves one request as Spin would: route by path, then append
    /// `spin-client-addr` after whatever the client sent under that name
    /// (Spin keeps the client's copy and adds its own last, so handlers read
    /// the last one), then call the component.
    pub async fn handle(&self, mut req: Request<Body>, client: Option<SocketAddr>) -> Response<Body> {
        // Spin refuses a request with a header value that is not UTF-8
        // before any component runs: an empty 500.
        if req.headers().values().any(|v| std::str::from_utf8(v.as_bytes()).is_err()) {
            return empty(http::StatusCode::INTERNAL_SERVER_ERROR);
        }
        if let Some(addr) = client {
            if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
                req.headers_mut().append(web::CLIENT_ADDR, v);
            }
        }
        let path = req.uri().path().to_owned();
        let no_vars = HashMap::<String, String>::new();
        // A path no route serves is Spin's own empty 404 (no component runs).
        let Some(route) = self.manifest.route_for(&path) else {
            return empty(http::StatusCode::NOT_FOUND);
        };
        let runtime = &self.components[&route.component];
        let mut db = GatedDb { db: SqlxDb::new(runtime.pool.clone()), runtime };
        match route.component.as_str() {
            "login" => tavle_login::handle(req, &runtime.variables, &mut db).await,
            "ingest" => tavle_ingest::handle(req, &runtime.variables, &mut db).await,
            "students" => tavle_students::handle(req, &runtime.variables, &mut db).await,
            "subject-requests" => tavle_subject_requests::handle(req, &runtime.variables, &mut db).await,
            "retention" => tavle_retention::handle(req, &runtime.variables, &mut db).await,
            #[cfg(feature = "test-fixtures")]
            "probe" => tavle_db_probe::handle(req, &runtime.variables, &mut db).await,
            _ => web::serve(req, &no_vars, async |_, _: RequestMeta| Err(Problem::not_found())).await,
        }
    }

    /// Serves a request whose body is already in memory (tests), refusing it
    /// exactly as the streaming body reader of either host would.
    pub async fn handle_buffered(&self, req: Request<Body>, client: Option<SocketAddr>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let checked = BodyReader::new(&parts.headers, self.body_limit(parts.uri.path()))
            .and_then(|mut reader| reader.push(&body).map(|_| reader.finish()));
        match checked {
            Ok(body) => self.handle(Request::from_parts(parts, body), client).await,
            Err(problem) => refused(parts, problem).await,
        }
    }

    /// Closes every pool (tests drop their database afterwards).
    pub async fn close(&self) {
        for c in self.components.values() {
            c.pool.close().await;
        }
    }
}

/// The database of one request: its connection is taken on first use, as
/// [`SqlxDb`] does, but through the component's [`Backoff`] and within the
/// component's connect timeout, so that a database that cannot be reached
/// costs a request at most one short attempt, and most requests none:
///
/// - while backing off after a failure, 503 at once (no attempt);
/// - the one request after the backoff (the probe) makes one direct
///   connection attempt, without the retries of sqlx's pool (which retries
///   a refused connection until its acquire deadline), within the connect
///   timeout; then takes a pooled connection as usual;
/// - otherwise a pooled connection within the connect timeout, unless all
///   of the pool's connections are in use: then waiting for one of them
///   (up to the pool's 5 s) is no sign of an outage.
///
/// Any failure to reach the database, on connecting or later, starts the
/// backoff; a connection taken ends it.
struct GatedDb<'a> {
    db: SqlxDb,
    runtime: &'a ComponentRuntime,
}

impl GatedDb<'_> {
    async fn connect(&mut self) -> Result<(), DbError> {
        if self.db.is_connected() {
            return Ok(());
        }
        let ComponentRuntime { pool, backoff, connect_timeout, .. } = self.runtime;
        let started = Instant::now();
        let failed = |e: String| {
            backoff.failed(started, Instant::now());
            DbError::Unavailable(e)
        };
        match backoff.admit(started, *connect_timeout) {
            Admission::Refuse => {
                return Err(DbError::Unavailable("backing off after a failure to reach the database".into()))
            }
            Admission::Probe => {
                let options = pool.connect_options();
                match tokio::time::timeout(*connect_timeout, PgConnection::connect_with(&options)).await {
                    Ok(Ok(probe)) => drop(probe.close().await),
                    Ok(Err(e)) => return Err(failed(e.to_string())),
                    Err(_) => return Err(failed(format!("no connection within {connect_timeout:?}"))),
                }
            }
            Admission::Connect => {}
        }
        let busy = pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections();
        let acquired = if busy {
            pool.acquire().await.map_err(|e| match e {
                sqlx::Error::PoolTimedOut => DbError::Unavailable(e.to_string()),
                e => failed(e.to_string()),
            })
        } else {
            match tokio::time::timeout(*connect_timeout, pool.acquire()).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(failed(e.to_string())),
                Err(_) => Err(failed(format!("no connection within {connect_timeout:?}"))),
            }
        };
        self.db.attach(acquired?).await.map_err(|e| self.observe(started, e))?;
        backoff.succeeded(Instant::now());
        Ok(())
    }

    /// An error of the database: one that says it cannot be reached starts the backoff.
    fn observe(&self, started: Instant, e: DbError) -> DbError {
        if matches!(e, DbError::Unavailable(_)) {
            self.runtime.backoff.failed(started, Instant::now());
        }
        e
    }
}

impl Db for GatedDb<'_> {
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        self.connect().await?;
        let started = Instant::now();
        self.db.query(sql, params).await.map_err(|e| self.observe(started, e))
    }

    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        self.connect().await?;
        let started = Instant::now();
        self.db.execute(sql, params).await.map_err(|e| self.observe(started, e))
    }
}

/// Connection options of a PostgreSQL URL, as every native connection of
/// this binary uses them: `sslmode=require` verifies the certificate and
/// the host name, as it does on Spin (sqlx's own `require` only encrypts;
/// its `verify-full` verifies).
/// A server other than this machine's (loopback or a Unix socket) is
/// reached with verified TLS only.
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url).context("not a PostgreSQL URL")?;
    let host = options.get_host().trim_start_matches('[').trim_end_matches(']');
    let local = host.starts_with('/')
        || host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    Ok(match options.get_ssl_mode() {
        PgSslMode::Require => options.ssl_mode(PgSslMode::VerifyFull),
        PgSslMode::VerifyCa | PgSslMode::VerifyFull => options,
        _ if local => options,
        _ => bail!("a database on {host} must be reached with sslmode=verify-full (or require, verified the same way)"),
    })
}

/// An answer of Spin's own, before any component: a status, nothing else.
fn empty(status: http::StatusCode) -> Response<Body> {
    let mut response = Response::new(Vec::new());
    *response.status_mut() = status;
    response
}

/// The answer to a request refused before any component ran (a body over
/// the limit, a broken body): problem+json with a request id, as always.
pub async fn refused(parts: http::request::Parts, problem: Problem) -> Response<Body> {
    let no_vars = HashMap::<String, String>::new();
    web::serve(Request::from_parts(parts, Vec::new()), &no_vars, async |_, _: RequestMeta| Err(problem)).await
}

/// Spin refuses connections to hosts outside `allowed_outbound_hosts`; the
/// native host checks the same so that a manifest error shows up in tests.
fn check_outbound(allowed: &[String], db_url: &str, component: &str) -> Result<()> {
    if db_url.is_empty() {
        return Ok(());
    }
    let opts = PgConnectOptions::from_str(db_url).context("db_url is not a PostgreSQL URL")?;
    let target = format!("{}:{}", opts.get_host(), opts.get_port());
    let ok = allowed.iter().any(|a| {
        let Some(host) = a.strip_prefix("postgres://") else { return false };
        host == "*" || host == target || (!host.contains(':') && format!("{host}:5432") == target)
    });
    if !ok {
        bail!("component `{component}`: database {target} is not in allowed_outbound_hosts {allowed:?}");
    }
    Ok(())
}
