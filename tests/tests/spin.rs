//! Every component on real Spin: the end-to-end scenario (`tavle_tests::scenario`)
//! runs on `spin up` with the release `.wasm` files and the project's own
//! spin.toml, and on the native host over HTTP, and both must give the same
//! answers: same status codes, problem types, content types and JSON shapes,
//! and the same access records. Then what only Spin shows, each proved on Spin.

use http::{header, Method, Request};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tavle_core::db::SqlxDb;
use tavle_tests::http::{start_native, start_native_on, HttpClient};
use tavle_tests::scenario::{self, access_records};
use tavle_tests::spin::{manifest_with_probe, SpinApp};
use tavle_tests::{Api, Staff, TestApp, APP_LOGIN};

#[tokio::test]
async fn the_scenario_gives_the_same_answers_on_spin_and_natively() {
    let native_app = TestApp::spawn().await;
    let native = HttpClient::new(start_native(&native_app.variables, 2));
    let on_native = scenario::run(&native, &native_app).await;

    let spin_app = TestApp::spawn().await;
    let spin = SpinApp::start_project(&spin_app.variables);
    let on_spin = scenario::run(&spin.client(), &spin_app).await;

    assert_eq!(on_native.steps.len(), on_spin.steps.len());
    for (n, s) in on_native.steps.iter().zip(&on_spin.steps) {
        assert_eq!(n, s, "step `{}` differs between the native host (left) and Spin (right)", n.name);
    }
    let (native_records, spin_records) =
        (access_records(&native_app, "oslo").await, access_records(&spin_app, "oslo").await);
    assert!(!spin_records.is_empty());
    assert_eq!(native_records, spin_records, "the access records differ between the native host and Spin");
}

// ---------------------------------------------------------------- a trap mid-transaction

/// A login role of `tavle_app` with a short `idle_in_transaction_session_timeout`,
/// for the test of that guard rail (roles are cluster-wide, hence the suffix).
async fn login_role(app: &TestApp, idle_timeout: &str) -> String {
    let role = format!("tavle_app_probe_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    for sql in [
        format!("CREATE ROLE {role} LOGIN IN ROLE tavle_app"),
        format!("ALTER ROLE {role} SET idle_in_transaction_session_timeout = '{idle_timeout}'"),
    ] {
        sqlx::query(&sql).execute(&app.pool).await.unwrap();
    }
    role
}

/// Backends of `role` that sit inside a transaction.
async fn idle_in_transaction(app: &TestApp, role: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state LIKE 'idle in transaction%'")
        .bind(role)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Whether the owner can lock the admin's row within half a second.
async fn admin_row_is_free(app: &TestApp) -> bool {
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '500ms'").execute(&mut *tx).await.unwrap();
    let locked = sqlx::query("SELECT id FROM users WHERE username = 'admin' FOR UPDATE").execute(&mut *tx).await;
    tx.rollback().await.unwrap();
    locked.is_ok()
}

fn post(path: &str) -> Request<Vec<u8>> {
    Request::builder().method(Method::POST).uri(path).body(Vec::new()).unwrap()
}

/// After a trap: nothing of the trapped transaction remains, and another
/// component can write the row it had locked (a login updates it).
async fn nothing_left_behind(app: &TestApp, api: &impl Api, staff: &Staff) {
    // The native host closes a panicked handler's connection; the server
    // notices within milliseconds. Spin's is rolled back before the trap.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while idle_in_transaction(app, APP_LOGIN).await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(idle_in_transaction(app, APP_LOGIN).await, 0, "an open transaction was left in the pool");
    assert!(admin_row_is_free(app).await, "the trapped transaction's row lock is still held");
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'probe.uncommitted'").await, 0);
    let r = api.call(staff.login_request()).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn a_panic_inside_a_transaction_is_rolled_back_before_the_component_traps() {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let spin = SpinApp::start(&manifest_with_probe(), &app.variables);
    let r = spin.client().call(post("/probe/trap?username=admin&how=panic")).await;
    assert_eq!((r.status, r.body.len()), (500, 0), "a trap is an empty 500: {}", r.text());
    nothing_left_behind(&app, &spin.client(), &oslo).await;

    // The native host answers a panicking handler the same way.
    let native_app = TestApp::spawn().await;
    let native_oslo = native_app.seed_tenant("oslo").await;
    let native = HttpClient::new(start_native_on(&manifest_with_probe(), &native_app.variables, 1));
    let r = native.call(post("/probe/trap?username=admin&how=panic")).await;
    assert_eq!((r.status, r.body.len()), (500, 0), "{}", r.text());
    nothing_left_behind(&native_app, &native, &native_oslo).await;
}

#[tokio::test]
async fn a_trap_without_a_panic_never_leaks_into_the_next_request() {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let spin = SpinApp::start(&manifest_with_probe(), &app.variables);
    let client = spin.client();
    let r = client.call(post("/probe/trap?username=admin&how=abort")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    // No panic hook ran: the connection went back to the component's pool
    // inside its transaction, holding the row lock.
    assert_eq!(idle_in_transaction(&app, APP_LOGIN).await, 1, "the trap left no open transaction to clean up");
    assert!(!admin_row_is_free(&app).await);
    // The component's next request gets that connection and rolls it back
    // before its own transaction, which commits only its own write.
    let r = client.try_send(post("/probe/write"), Duration::from_secs(10)).await.expect("an answer");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'probe.committed'").await, 1);
    nothing_left_behind(&app, &client, &oslo).await;
}

#[tokio::test]
async fn the_application_role_ends_a_transaction_left_idle_even_without_further_requests() {
    let mut app = TestApp::spawn().await;
    app.seed_tenant("oslo").await;
    let role = login_role(&app, "1s").await;
    let url = tavle_tests::url_as(&app.db_url, &role);
    app.variables.insert("db_url".into(), url);
    let spin = SpinApp::start(&manifest_with_probe(), &app.variables);
    assert_eq!(spin.client().call(post("/probe/trap?username=admin&how=abort")).await.status, 500);
    assert_eq!(idle_in_transaction(&app, &role).await, 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(idle_in_transaction(&app, &role).await, 0);
    assert!(admin_row_is_free(&app).await, "idle_in_transaction_session_timeout ended the transaction");
    assert_eq!(app.count("SELECT count(*) FROM audit_log WHERE action = 'probe.uncommitted'").await, 0);
}

// ---------------------------------------------------------------- type mapping, empty results

#[tokio::test]
async fn columns_decode_the_same_on_spin_and_natively() {
    let app = TestApp::spawn().await;
    let spin = SpinApp::start(&manifest_with_probe(), &app.variables);
    let get = |path: &str| Request::builder().uri(path).body(Vec::new()).unwrap();
    let on_spin = spin.client().call(get("/probe/types")).await;
    assert_eq!(on_spin.status, 200, "{}", on_spin.text());
    let pool = sqlx::PgPool::connect(&app.variables["db_url"]).await.unwrap();
    let native = tavle_db_probe::handle(get("/probe/types"), &app.variables, &mut SqlxDb::new(pool)).await;
    let native: Value = serde_json::from_slice(native.body()).unwrap();
    assert_eq!(on_spin.json(), native, "Spin (left) and sqlx (right) decode differently");
    // The behaviour itself: NULL elements are kept or refused, never dropped;
    // types Tavle never reads are refused by both.
    assert_eq!(native["nullable_text_array_with_null"], json!(["a", null, "b"]));
    assert_eq!(native["text_array_with_null"], "error");
    assert_eq!(native["int8_array"], json!([1, null, 3]));
    assert_eq!(native["bpchar"], "c  ");
    assert_eq!(native["float4"], 1.5);
    assert_eq!(native["null_text_array"], json!([]));
    assert_eq!(native["missing_column"], "error");
    for refused in ["name", "json", "timestamptz", "numeric", "date"] {
        assert_eq!(native["refused"][refused], "refused", "{refused}");
    }
}

#[tokio::test]
async fn statements_that_yield_no_rows_answer_on_spin() {
    let app = TestApp::spawn().await;
    let spin = SpinApp::start(&manifest_with_probe(), &app.variables);
    let req = Request::builder().uri("/probe/empty").body(Vec::new()).unwrap();
    let r = spin.client().try_send(req, Duration::from_secs(10)).await.expect("an answer, not a hang");
    assert_eq!(r.status, 200, "{}", r.text());
    let counts = r.json();
    assert_eq!(counts.as_object().map(|o| o.len()), Some(6), "{counts}");
    assert!(counts.as_object().unwrap().values().all(|n| n == 0), "{counts}");
}

// ---------------------------------------------------------------- bodies, client addresses

const HUGE: usize = 200 * 1024 * 1024;

/// Sends a POST to `path` that declares `HUGE` bytes (`Content-Length`) or
/// streams them chunked, 64 KiB at a time, until the server answers or closes
/// the connection. Returns the status code of the answer and how many body
/// bytes were sent before it.
fn post_huge(addr: SocketAddr, path: &str, chunked: bool) -> (u16, usize) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let framing = if chunked { "transfer-encoding: chunked".to_owned() } else { format!("content-length: {HUGE}") };
    let head =
        format!("POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{framing}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut buf = [0u8; 12];
        reader.read_exact(&mut buf).map(|_| String::from_utf8_lossy(&buf[9..12]).parse::<u16>().unwrap_or(0))
    });
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    if !chunked {
        // The limit is checked against Content-Length before reading: give
        // the server a moment to answer before sending anything.
        std::thread::sleep(Duration::from_millis(300));
    }
    while sent < HUGE && !answer.is_finished() {
        let ok = if chunked {
            stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_ok()
                && stream.write_all(&chunk).is_ok()
                && stream.write_all(b"\r\n").is_ok()
        } else {
            stream.write_all(&chunk).is_ok()
        };
        if !ok {
            break;
        }
        sent += chunk.len();
    }
    let status = answer.join().unwrap().expect("an answer before the connection closed");
    (status, sent)
}

#[tokio::test]
async fn request_bodies_are_refused_while_they_arrive_on_spin_and_natively() {
    let app = TestApp::spawn().await;
    let spin = SpinApp::start_project(&app.variables);
    let native = start_native(&app.variables, 1);
    let pid = spin.pid();
    let before = tavle_tests::spin::peak_rss(pid);
    for (host, addr) in [("spin", spin.addr), ("native", native)] {
        for path in ["/auth/login", "/admin/sources", "/pupils/search"] {
            let (status, sent) = tokio::task::spawn_blocking(move || post_huge(addr, path, false)).await.unwrap();
            assert_eq!(status, 413, "{host} {path}: a declared length over the limit");
            assert_eq!(sent, 0, "{host} {path}: refused before the body");
        }
        let (status, sent) = tokio::task::spawn_blocking(move || post_huge(addr, "/auth/login", true)).await.unwrap();
        assert_eq!(status, 413, "{host}: a chunked body over the limit");
        assert!(sent < HUGE / 4, "{host}: {sent} bytes went in before the 413");
    }
    let grown = tavle_tests::spin::peak_rss(pid).saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "Spin's peak memory grew by {} MiB for refused bodies", grown >> 20);
    // Webhooks may be larger (10 MiB), but not unbounded either.
    let ingest = format!("/ingest/{}/roster", uuid::Uuid::new_v4());
    let (status, _) = tokio::task::spawn_blocking(move || post_huge(spin.addr, &ingest, true)).await.unwrap();
    assert_eq!(status, 413);
}

/// The client address of the newest failed login in the audit log.
async fn last_failed_login_from(app: &TestApp) -> Option<String> {
    sqlx::query_scalar("SELECT client_ip FROM audit_log WHERE action = 'login.failed' ORDER BY id DESC LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn failed_login(client: &HttpClient, headers: &[(&str, &str)]) {
    let mut req =
        Request::builder().method(Method::POST).uri("/auth/login").header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = json!({"tenant": "oslo", "username": "nobody", "password": "Wrong-pass-1x"});
    let r = client.call(req.body(serde_json::to_vec(&body).unwrap()).unwrap()).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn client_addresses_are_taken_from_trusted_proxies_only_on_spin_and_natively() {
    for on_spin in [true, false] {
        let app = TestApp::spawn_with(std::collections::HashMap::from([("trusted_proxies", "127.0.0.2/32")])).await;
        let oslo = app.seed_tenant("oslo").await;
        let spin = on_spin.then(|| SpinApp::start_project(&app.variables));
        let addr = spin.as_ref().map_or_else(|| start_native(&app.variables, 1), |s| s.addr);
        let host = if on_spin { "spin" } else { "native" };
        let direct = HttpClient::new(addr);
        let proxy = HttpClient::from_address(addr, "127.0.0.2".parse().unwrap());

        // Not from a trusted proxy: X-Forwarded-For and a forged peer address are ignored.
        failed_login(&direct, &[("x-forwarded-for", "203.0.113.9"), ("spin-client-addr", "198.51.100.1:9")]).await;
        assert_eq!(last_failed_login_from(&app).await.as_deref(), Some("127.0.0.1"), "{host}");
        // From the trusted proxy: its X-Forwarded-For names the client.
        failed_login(&proxy, &[("x-forwarded-for", "203.0.113.9")]).await;
        assert_eq!(last_failed_login_from(&app).await.as_deref(), Some("203.0.113.9"), "{host}");
        // Every field counts, in order, read from the right past trusted hops:
        // a client's own header cannot shadow what the proxy appended.
        failed_login(&proxy, &[("x-forwarded-for", "198.51.100.7"), ("x-forwarded-for", "203.0.113.9, 127.0.0.2")])
            .await;
        assert_eq!(last_failed_login_from(&app).await.as_deref(), Some("203.0.113.9"), "{host}");
        // Nothing usable forwarded: the proxy itself.
        failed_login(&proxy, &[("x-forwarded-for", "not an address")]).await;
        assert_eq!(last_failed_login_from(&app).await.as_deref(), Some("127.0.0.2"), "{host}");
        failed_login(&proxy, &[]).await;
        assert_eq!(last_failed_login_from(&app).await.as_deref(), Some("127.0.0.2"), "{host}");

        // A browser over HTTP/2 may split its cookies over several fields.
        let session = direct.login(&oslo).await;
        let me = Request::builder()
            .uri("/auth/me")
            .header(header::COOKIE, "theme=dark")
            .header(header::COOKIE, &session.cookie)
            .body(Vec::new())
            .unwrap();
        let r = direct.call(me).await;
        assert_eq!(r.status, 200, "{host}: the session cookie in a second Cookie field: {}", r.text());
    }
}

#[test]
fn the_probe_times_argon2id_with_the_login_components_parameters() {
    assert_eq!(tavle_db_probe::PRODUCTION_HASH, tavle_login::password::dummy_hash());
    assert!(tavle_login::password::dummy_hash().contains(&format!(
        "m={},t={},p={}",
        tavle_login::password::argon2().params().m_cost(),
        tavle_login::password::argon2().params().t_cost(),
        tavle_login::password::argon2().params().p_cost()
    )));
}
