//! Integration-test harness.
//!
//! One throwaway PostgreSQL cluster per test binary (started on first use,
//! stopped at exit); a template database with the migrations applied once;
//! and for every test its own fresh database cloned from the template.
//! Requests go through the native host, routed by the real `spin.toml`, so
//! routing and per-component variables are tested with the handlers.

use ::http::{header, Method, Request, Response};
use base64::Engine;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use tavle_host::host::{Host, HostConfig};
use tavle_host::manifest::Manifest;
use tavle_host::pgcluster::PgCluster;

pub use tavle_host::ops;

pub mod cursors;
pub mod http;
pub mod python;
pub mod retention;
pub mod scenario;
pub mod spin;
pub mod subjects;

const TEMPLATE: &str = "tavle_template";
pub const ORIGIN: &str = "https://app.tavle.test";

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the project").to_path_buf()
}

/// A throwaway cluster prepared like the shared one of every test binary: the
/// application roles and the migrated template. Tests that need a server of
/// their own (e.g. with TLS on) start one with [`TestCluster::start_with`] and
/// build their app on it with [`TestApp::spawn_on`].
pub struct TestCluster {
    cluster: PgCluster,
}

/// The login the hosts under test use (`ops::ensure_app_roles`).
pub use tavle_host::ops::{APP_LOGIN, RETENTION_LOGIN};

/// The URL of `database` for another login role of the test cluster.
pub fn url_as(owner_url: &str, role: &str) -> String {
    owner_url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1)
}

impl TestCluster {
    /// A throwaway cluster started with extra server settings (`postgres -c`,
    /// see [`PgCluster::start_ephemeral_with`]), prepared like the shared one.
    pub fn start_with(settings: &[String]) -> TestCluster {
        TestCluster::prepare(
            PgCluster::start_ephemeral_with(settings).expect("starting a throwaway PostgreSQL cluster"),
        )
    }

    /// Creates the application roles and the migrated template on `cluster`.
    fn prepare(cluster: PgCluster) -> TestCluster {
        let admin_url = cluster.url("postgres");
        let template_url = cluster.url(TEMPLATE);
        // Own runtime: pools must not outlive the runtime that made them.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                let admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {TEMPLATE}")).execute(&admin).await.unwrap();
                ops::ensure_app_roles(&admin).await.expect("the application roles");
                let pool = PgPoolOptions::new().max_connections(1).connect(&template_url).await.unwrap();
                // As in production (infra/README.md 3.2): what the owner creates
                // is usable, not alterable, by the application role. Default
                // privileges are per database: every clone inherits them.
                ops::grant_app_role(&pool).await.expect("the application role's privileges");
                ops::migrate(&pool).await.expect("migrations apply to a fresh database");
                pool.close().await;
                admin.close().await;
            })
        })
        .join()
        .expect("template setup");
        TestCluster { cluster }
    }

    pub fn cluster(&self) -> &PgCluster {
        &self.cluster
    }

    /// A fresh database cloned from the migrated template; its owner's URL.
    pub async fn fresh_database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new().max_connections(1).connect(&self.cluster.url("postgres")).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}")).execute(&admin).await.unwrap();
        admin.close().await;
        self.cluster.url(&name)
    }
}

/// The shared cluster and its migrated template, created once per test binary.
fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        TestCluster::prepare(PgCluster::start_ephemeral().expect("starting a throwaway PostgreSQL cluster"))
    })
}

/// A fresh database cloned from the migrated template; its URL.
pub async fn fresh_database() -> String {
    cluster().fresh_database().await
}

/// Keys used by one test app.
pub struct Keys {
    pub signing: String,
    pub public: String,
}

pub struct TestApp {
    pub host: Host,
    /// The owner's pool: seeding and assertions, never the code under test.
    pub pool: PgPool,
    /// The owner's URL of this app's database (the hosts get `variables["db_url"]`).
    pub db_url: String,
    pub keys: Keys,
    pub variables: HashMap<String, String>,
}

pub struct TestResponse {
    pub status: u16,
    pub headers: ::http::HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts a problem+json response with this status and type slug.
    pub fn assert_problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "body: {}", self.text());
        let body = self.json();
        assert_eq!(body["type"], format!("urn:tavle:problem:{slug}"), "body: {body}");
        assert_eq!(body["status"], status);
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(self.header("x-request-id").is_some());
        body
    }
}

/// A staff member's credentials in a seeded tenant.
#[derive(Clone, Debug)]
pub struct Staff {
    pub tenant: String,
    pub tenant_id: String,
    pub username: String,
    pub password: String,
    pub user_id: String,
}

impl Staff {
    /// `POST /auth/login` with this user's credentials, for any client.
    pub fn login_request(&self) -> Request<Vec<u8>> {
        let body = json!({"tenant": self.tenant, "username": self.username, "password": self.password});
        Request::builder()
            .method(Method::POST)
            .uri("/auth/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap()
    }
}

/// A logged-in session.
#[derive(Clone, Debug)]
pub struct Session {
    pub token: String,
    pub cookie: String,
    pub body: Value,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(HashMap::new()).await
    }

    /// A fresh database and a host configured from spin.toml; `overrides`
    /// replace application variables (e.g. a short lockout).
    pub async fn spawn_with(overrides: HashMap<&str, &str>) -> TestApp {
        TestApp::spawn_on(cluster(), overrides).await
    }

    /// As [`TestApp::spawn_with`], with the database on `cluster` rather than
    /// the shared cluster of the test binary.
    pub async fn spawn_on(cluster: &TestCluster, overrides: HashMap<&str, &str>) -> TestApp {
        let db_url = cluster.fresh_database().await;
        let (signing, public) = tavle_login::generate_signing_key();
        let mut provided: HashMap<String, String> = HashMap::from([
            ("db_url".to_owned(), url_as(&db_url, APP_LOGIN)),
            ("retention_db_url".to_owned(), url_as(&db_url, RETENTION_LOGIN)),
            ("scheduler_token".to_owned(), random_key()),
            ("db_host".to_owned(), format!("127.0.0.1:{}", cluster.cluster.port())),
            ("token_signing_key".to_owned(), signing.clone()),
            ("token_public_keys".to_owned(), public.clone()),
            ("identity_key".to_owned(), random_key()),
            ("blind_index_key".to_owned(), random_key()),
            ("webhook_secret_key".to_owned(), random_key()),
            // Tests use synthetic identity numbers only.
            ("accept_synthetic_identity_numbers".to_owned(), "true".to_owned()),
            ("allowed_origins".to_owned(), ORIGIN.to_owned()),
        ]);
        for (k, v) in overrides {
            provided.insert(k.to_owned(), v.to_owned());
        }
        let manifest = Manifest::load(&project_root().join("spin.toml")).unwrap();
        let mut config = HostConfig::new(manifest, &provided).unwrap();
        config.max_connections = 4;
        let host = Host::new(&config).unwrap();
        let pool = PgPoolOptions::new().max_connections(2).connect(&db_url).await.unwrap();
        TestApp { host, pool, db_url, keys: Keys { signing, public }, variables: provided }
    }

    pub async fn call(&self, req: Request<Vec<u8>>) -> TestResponse {
        let response: Response<Vec<u8>> =
            self.host.handle_buffered(req, Some("127.0.0.1:40000".parse().unwrap())).await;
        let (parts, body) = response.into_parts();
        TestResponse { status: parts.status.as_u16(), headers: parts.headers, body }
    }

    /// Creates a tenant with its first admin through the operator code path.
    pub async fn seed_tenant(&self, slug: &str) -> Staff {
        let password = format!("Adm1n!{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let (tenant_id, user_id) = ops::create_tenant(
            &self.pool,
            ops::NewTenant {
                slug,
                name: &format!("{slug} kommune"),
                admin_username: "admin",
                admin_display_name: "Admin",
                admin_password: &password,
            },
        )
        .await
        .unwrap();
        Staff { tenant: slug.to_owned(), tenant_id, username: "admin".into(), password, user_id }
    }

    /// Creates a school with one group in a tenant; returns (school id, group id).
    pub async fn seed_school(&self, tenant_id: &str, name: &str) -> (String, String) {
        let school: (uuid::Uuid,) =
            sqlx::query_as("INSERT INTO schools (tenant_id, name) VALUES ($1, $2) RETURNING id")
                .bind(uuid::Uuid::parse_str(tenant_id).unwrap())
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        let group: (uuid::Uuid,) =
            sqlx::query_as("INSERT INTO groups (tenant_id, school_id, name) VALUES ($1, $2, '5A') RETURNING id")
                .bind(uuid::Uuid::parse_str(tenant_id).unwrap())
                .bind(school.0)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        (school.0.to_string(), group.0.to_string())
    }

    /// Rows of a table, for asserting that rejected requests changed nothing.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Results whose stored flags (migration 0016) differ from what their
    /// assessment's thresholds give now: 0 when the triggers kept them right.
    pub async fn stale_flags(&self) -> i64 {
        self.count(
            "SELECT count(*) FROM results r \
             CROSS JOIN LATERAL result_flags(r.assessment_id, r.status, r.score, r.subtest_scores) f \
             WHERE (r.total_flagged, r.flagged_subtests) IS DISTINCT FROM (f.total_flagged, f.flagged_subtests)",
        )
        .await
    }

    /// Drives `request` until a backend of the test database waits for a
    /// lock (so a test can go on with the transaction that holds it); panics
    /// if the request finishes first, i.e. did not wait.
    pub async fn until_waiting_for_a_lock(
        &self,
        mut request: std::pin::Pin<&mut impl std::future::Future<Output = TestResponse>>,
        what: &str,
    ) {
        let waiting = "SELECT count(*) FROM pg_stat_activity \
                       WHERE datname = current_database() AND wait_event_type = 'Lock'";
        loop {
            tokio::select! {
                r = &mut request => panic!("{what} did not wait for a lock: {} {}", r.status, r.text()),
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
            if self.count(waiting).await > 0 {
                return;
            }
        }
    }

    /// A digest of every table's contents (except the audit and access logs
    /// when `with_audit` is false), for "this request changed nothing" checks.
    /// Every base table of the schema, so that a new table is covered too.
    pub async fn snapshot(&self, with_audit: bool) -> String {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut out = String::new();
        for table in tables {
            if !with_audit && (table.starts_with("audit_log") || table.starts_with("access_log")) {
                continue;
            }
            let rows: Vec<(String,)> = sqlx::query_as(&format!("SELECT t::text FROM \"{table}\" t ORDER BY 1"))
                .fetch_all(&self.pool)
                .await
                .unwrap();
            out.push_str(&format!("{table}: {rows:?}\n"));
        }
        out
    }

    /// Signs arbitrary claims with this app's key (for expiry and forgery tests).
    pub fn sign(&self, claims: jwt_simple::claims::JWTClaims<tavle_core::auth::TokenClaims>) -> String {
        use jwt_simple::prelude::EdDSAKeyPairLike;
        tavle_login::signing_key(&self.keys.signing).unwrap().sign(claims).unwrap()
    }

    pub async fn audit_actions(&self, tenant_id: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT action FROM audit_log WHERE tenant_id = $1 ORDER BY id")
            .bind(uuid::Uuid::parse_str(tenant_id).unwrap())
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

/// Requests to a Tavle host: the in-process native host ([`TestApp`]), or a
/// running server over real HTTP ([`http::HttpClient`], native or Spin).
/// The helpers are the same for each, so a scenario runs unchanged on all.
#[allow(async_fn_in_trait)] // tests run on one thread; no Send bound wanted
pub trait Api {
    async fn call(&self, req: Request<Vec<u8>>) -> TestResponse;

    /// A JSON request, optionally with a bearer token.
    async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> TestResponse {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(&v).unwrap()
            }
            None => Vec::new(),
        };
        self.call(b.body(body).unwrap()).await
    }

    async fn get(&self, path: &str, token: &str) -> TestResponse {
        self.send(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> TestResponse {
        self.send(Method::POST, path, token, Some(body)).await
    }

    async fn login_response(&self, tenant: &str, username: &str, password: &str) -> TestResponse {
        self.post("/auth/login", None, json!({"tenant": tenant, "username": username, "password": password})).await
    }

    async fn login(&self, staff: &Staff) -> Session {
        let r = self.login_response(&staff.tenant, &staff.username, &staff.password).await;
        assert_eq!(r.status, 200, "login failed: {}", r.text());
        let cookie =
            r.header("set-cookie").and_then(|c| c.split(';').next()).expect("login sets the session cookie").to_owned();
        let body = r.json();
        Session { token: body["access_token"].as_str().unwrap().to_owned(), cookie, body }
    }

    /// Creates a user through the admin API and returns its credentials.
    async fn create_user(&self, admin: &Session, tenant: &Staff, username: &str, roles: Value) -> Staff {
        let password = format!("Pw-{}-9x", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let r = self
            .post(
                "/admin/users",
                Some(&admin.token),
                json!({"username": username, "display_name": format!("{username} display"), "password": password, "roles": roles}),
            )
            .await;
        assert_eq!(r.status, 201, "create user: {}", r.text());
        Staff {
            tenant: tenant.tenant.clone(),
            tenant_id: tenant.tenant_id.clone(),
            username: username.to_owned(),
            password,
            user_id: r.json()["id"].as_str().unwrap().to_owned(),
        }
    }

    /// Registers a webhook source (`sas` or `publisher`) through the admin API.
    async fn create_source(&self, admin: &Session, kind: &str) -> Source {
        let r = self
            .post("/admin/sources", Some(&admin.token), json!({"kind": kind, "name": format!("{kind} system")}))
            .await;
        assert_eq!(r.status, 201, "create source: {}", r.text());
        let body = r.json();
        Source { id: body["id"].as_str().unwrap().to_owned(), secret: body["secret"].as_str().unwrap().to_owned() }
    }

    /// Posts a body signed with `secret` (Standard Webhooks v1) at `timestamp`.
    async fn deliver_signed(
        &self,
        path: &str,
        secret: &str,
        webhook_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> TestResponse {
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        let signature = wh.sign(webhook_id, timestamp, body).unwrap();
        self.post_signed(path, webhook_id, timestamp, &signature, body).await
    }

    /// Posts a JSON body with these Standard Webhooks headers.
    async fn post_signed(
        &self,
        path: &str,
        webhook_id: &str,
        timestamp: i64,
        signature: &str,
        body: &[u8],
    ) -> TestResponse {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_vec())
            .unwrap();
        self.call(req).await
    }

    /// Posts a roster or results body (`kind`) for a source, signed now.
    async fn deliver(&self, source: &Source, kind: &str, webhook_id: &str, body: &Value) -> TestResponse {
        let path = format!("/ingest/{}/{kind}", source.id);
        self.deliver_signed(&path, &source.secret, webhook_id, unix_now(), &serde_json::to_vec(body).unwrap()).await
    }
}

impl Api for TestApp {
    async fn call(&self, req: Request<Vec<u8>>) -> TestResponse {
        TestApp::call(self, req).await
    }
}

/// A webhook source as its owner sees it.
#[derive(Clone, Debug)]
pub struct Source {
    pub id: String,
    pub secret: String,
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A synthetic identity number (Tenor, month + 80) for test pupil `n`.
pub fn synthetic_id(n: u32) -> String {
    // 84 distinct birth dates, then individual numbers 7 apart: unique for n < 11,000.
    tavle_core::identity::IdentityNumber::synthetic((2014 + (n % 4) as i32, 1 + n % 12, 1 + n % 28), n / 84 * 7)
        .expect("synthetic numbers exist")
        .expose()
        .to_owned()
}

/// A random 32-byte key, base64 (as `tavle keygen` prints).
pub fn random_key() -> String {
    let bytes: Vec<u8> =
        uuid::Uuid::new_v4().as_bytes().iter().chain(uuid::Uuid::new_v4().as_bytes()).copied().collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
