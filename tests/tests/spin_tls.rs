//! TLS to PostgreSQL on real Spin (4.0.x), against a throwaway server of this
//! test binary with TLS on and a certificate from a private CA.
//!
//! What protects the app's connections in production (infra/README.md, "TLS to
//! the database") is `db_url` with `sslmode=require`: Spin's PostgreSQL client
//! (tokio-postgres with native-tls, i.e. OpenSSL) then verifies the server's
//! certificate chain against the system trust store and the host name. Shown
//! here, each on `spin up` with the release components:
//!
//! * the CA not trusted: a login that needs the database answers 503 and
//!   returns nothing; Spin logs the certificate verification failure;
//! * the CA trusted (`SSL_CERT_FILE` in Spin's environment, as the node's
//!   trust store holds Azure's roots): the same login succeeds, over TLS;
//! * the CA trusted but the server named by an address its certificate does
//!   not carry: refused again (the host name is verified);
//! * `sslmode=verify-full`, which Spin's client cannot parse: refused by
//!   `tavle_core::db::check_db_url` before any connection (and by the native
//!   host at start-up).

use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tavle_host::host::{Host, HostConfig};
use tavle_host::manifest::Manifest;
use tavle_host::pgcluster::PgCluster;
use tavle_tests::spin::SpinApp;
use tavle_tests::{project_root, Api, Staff, TestApp, TestCluster, APP_LOGIN, RETENTION_LOGIN};

/// The server's certificate names this host only (no IP address).
const CERT_HOST: &str = "localhost";

struct TlsServer {
    /// `ca.crt` (the private CA), `server.crt`, `server.key`.
    dir: PathBuf,
    cluster: TestCluster,
}

static CERT_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_cert_dir() {
    if let Some(dir) = CERT_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running the openssl CLI");
    assert!(out.status.success(), "openssl {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A private CA (self-signed) and a server certificate for [`CERT_HOST`] signed by it.
fn make_certificates(dir: &Path) {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt"][..],
            &days,
            &["-subj", "/CN=Tavle test CA (throwaway)", "-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName=DNS:{CERT_HOST}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"][..],
            &["-out", "server.crt", "-extfile", "server.ext"],
            &days,
        ]
        .concat(),
    );
}

/// The TLS server of this test binary: started on first use, stopped at exit.
fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        // Under the temp dir (the server's OS user cannot enter 0700 dirs under
        // /root), readable by it; the key alone is private to it.
        let dir = std::env::temp_dir().join(format!("tavle-spin-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        CERT_DIR.set(dir.clone()).unwrap();
        // SAFETY: registering a plain extern "C" fn without captured state.
        unsafe { libc::atexit(remove_cert_dir) };
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_certificates(&dir);
        for file in ["ca.crt", "server.crt"] {
            std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let key = dir.join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        PgCluster::give_to_server_user(&key).unwrap();
        let cluster = TestCluster::start_with(&[
            "ssl=on".to_string(),
            format!("ssl_cert_file={}", dir.join("server.crt").display()),
            format!("ssl_key_file={}", key.display()),
            "ssl_min_protocol_version=TLSv1.2".to_string(),
        ]);
        TlsServer { dir, cluster }
    })
}

/// A fresh database on the TLS server with the tenant `oslo`; its first admin.
async fn app_with_tenant() -> (TestApp, Staff) {
    let app = TestApp::spawn_on(&tls_server().cluster, HashMap::new()).await;
    let ssl_on: String = sqlx::query_scalar("SHOW ssl").fetch_one(&app.pool).await.unwrap();
    assert_eq!(ssl_on, "on", "the test server has TLS on");
    let oslo = app.seed_tenant("oslo").await;
    (app, oslo)
}

/// The app's variables with `db_url` (and `db_host`, which scopes
/// `allowed_outbound_hosts`) naming the TLS server as `host`.
fn variables(app: &TestApp, host: &str, sslmode: &str) -> HashMap<String, String> {
    let port = tls_server().cluster.cluster().port();
    let database = app.db_url.rsplit('/').next().unwrap();
    let mut variables = app.variables.clone();
    variables.insert("db_url".into(), format!("postgres://{APP_LOGIN}@{host}:{port}/{database}?sslmode={sslmode}"));
    let retention = format!("postgres://{RETENTION_LOGIN}@{host}:{port}/{database}?sslmode={sslmode}");
    variables.insert("retention_db_url".into(), retention);
    variables.insert("db_host".into(), format!("{host}:{port}"));
    variables
}

/// `spin up` on the project's spin.toml; with `trust_ca`, the private CA is
/// Spin's trust store (`SSL_CERT_FILE`), as Azure's roots are on a node. Spin
/// logs failed PostgreSQL connections (with their cause) at INFO.
fn spin(variables: &HashMap<String, String>, trust_ca: bool) -> SpinApp {
    let ca = tls_server().dir.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let mut env = vec![("RUST_LOG", "spin_factor_outbound_pg=info")];
    if trust_ca {
        env.push(("SSL_CERT_FILE", ca));
    }
    SpinApp::start_with_env(&project_root().join("spin.toml"), variables, &env)
}

/// The app login's connections to this app's database: (all, over TLS).
async fn app_connections(app: &TestApp) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.usename = $1 AND a.datname = current_database()",
    )
    .bind(APP_LOGIN)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// A refused login: problem+json and nothing else (no token, no cookie, no session).
async fn assert_refused_without_data(app: &TestApp, r: &tavle_tests::TestResponse, status: u16, slug: &str) {
    let body = r.assert_problem(status, slug);
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| ["type", "title", "status", "detail", "instance"].contains(&k.as_str())),
        "only the problem came back: {body}"
    );
    assert!(r.header("set-cookie").is_none(), "no session cookie");
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 0, "no session was created");
    assert_eq!(app_connections(app).await.0, 0, "the app never got a connection to the database");
}

#[tokio::test]
async fn require_with_the_ca_not_trusted_serves_nothing() {
    let (app, oslo) = app_with_tenant().await;
    let spin = spin(&variables(&app, CERT_HOST, "require"), false);
    let r = spin.client().login_response(&oslo.tenant, &oslo.username, &oslo.password).await;
    let logs = spin.logs();
    assert_eq!(r.status, 503, "{}\n{logs}", r.text());
    assert_refused_without_data(&app, &r, 503, "dependency-unavailable").await;
    assert!(
        logs.contains("certificate verify failed") && logs.contains("unable to get local issuer certificate"),
        "Spin refused the server's certificate (its chain is not trusted):\n{logs}"
    );
}

#[tokio::test]
async fn require_with_the_ca_trusted_logs_in_over_tls() {
    let (app, oslo) = app_with_tenant().await;
    let spin = spin(&variables(&app, CERT_HOST, "require"), true);
    let client = spin.client();
    let session = client.login(&oslo).await;
    let me = client.get("/auth/me", &session.token).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["user"]["username"], Value::from("admin"), "{}", me.text());
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 1);
    let (all, tls) = app_connections(&app).await;
    assert!(all >= 1 && tls == all, "every connection of the app is TLS: {tls} of {all}\n{}", spin.logs());
    assert!(!spin.logs().contains("certificate verify failed"), "{}", spin.logs());
}

#[tokio::test]
async fn require_verifies_the_host_name() {
    // The CA is trusted, but the server is named by an address its certificate
    // does not carry (it names `localhost` only): as with an IP in place of the
    // FQDN in production.
    let (app, oslo) = app_with_tenant().await;
    let spin = spin(&variables(&app, "127.0.0.1", "require"), true);
    let r = spin.client().login_response(&oslo.tenant, &oslo.username, &oslo.password).await;
    let logs = spin.logs();
    assert_eq!(r.status, 503, "{}\n{logs}", r.text());
    assert_refused_without_data(&app, &r, 503, "dependency-unavailable").await;
    assert!(
        logs.contains("certificate verify failed") && logs.contains("IP address mismatch"),
        "Spin refused the certificate for its name, not its chain:\n{logs}"
    );
}

#[tokio::test]
async fn verify_full_is_refused_before_connecting() {
    let (app, oslo) = app_with_tenant().await;
    let variables = variables(&app, CERT_HOST, "verify-full");
    let spin = spin(&variables, true);
    let r = spin.client().login_response(&oslo.tenant, &oslo.username, &oslo.password).await;
    let logs = spin.logs();
    // Our check (a query error: 500), not Spin's parser (a connection failure: 503).
    assert_eq!(r.status, 500, "{}\n{logs}", r.text());
    assert_refused_without_data(&app, &r, 500, "internal").await;
    assert!(spin.component_stderr("login").contains("database error"), "{logs}");
    assert!(!logs.contains("spin_outbound_pg"), "Spin was never asked to connect:\n{logs}");

    // The native host refuses the same URL at start-up.
    let manifest = Manifest::load(&project_root().join("spin.toml")).unwrap();
    let config = HostConfig::new(manifest, &variables).unwrap();
    let err = Host::new(&config).err().expect("the native host refuses sslmode=verify-full");
    assert!(format!("{err:#}").contains("does not know sslmode=verify-ca or verify-full"), "{err:#}");
}
