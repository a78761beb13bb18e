//! Malformed, oversized, mistyped and hostile requests: each gets a clear
//! problem+json answer and changes nothing.

use http::{header, Method, Request};
use serde_json::json;
use tavle_tests::{Api, TestApp};

fn raw(method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Request<Vec<u8>> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(body).unwrap()
}

#[tokio::test]
async fn malformed_login_requests_get_clear_errors_and_change_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let before = app.snapshot(true).await;
    let json_ct = Some("application/json");
    let cases: Vec<(Request<Vec<u8>>, u16, &str)> = vec![
        (raw(Method::POST, "/auth/login", json_ct, b"{\"tenant\": \"oslo\",".to_vec()), 400, "malformed-request"),
        (raw(Method::POST, "/auth/login", json_ct, b"".to_vec()), 400, "malformed-request"),
        (raw(Method::POST, "/auth/login", json_ct, b"[1,2,3]".to_vec()), 422, "validation-failed"),
        (raw(Method::POST, "/auth/login", json_ct, b"\xff\xfe{}".to_vec()), 400, "malformed-request"),
        (
            raw(Method::POST, "/auth/login", json_ct, br#"{"tenant":"oslo","username":"admin"}"#.to_vec()),
            422,
            "validation-failed",
        ),
        (
            raw(Method::POST, "/auth/login", json_ct, br#"{"tenant":"oslo","username":"admin","password":7}"#.to_vec()),
            422,
            "validation-failed",
        ),
        (
            raw(
                Method::POST,
                "/auth/login",
                json_ct,
                br#"{"tenant":"oslo","username":"admin","password":"x","remember_me":true}"#.to_vec(),
            ),
            422,
            "validation-failed",
        ),
        (
            raw(Method::POST, "/auth/login", Some("text/plain"), br#"{"tenant":"oslo"}"#.to_vec()),
            415,
            "unsupported-media-type",
        ),
        (
            raw(Method::POST, "/auth/login", Some("application/x-www-form-urlencoded"), b"tenant=oslo".to_vec()),
            415,
            "unsupported-media-type",
        ),
        (raw(Method::POST, "/auth/login", None, br#"{"tenant":"oslo"}"#.to_vec()), 415, "unsupported-media-type"),
        (raw(Method::POST, "/auth/login", json_ct, vec![b' '; 70 * 1024]), 413, "payload-too-large"),
        (raw(Method::GET, "/auth/login", None, Vec::new()), 405, "method-not-allowed"),
        (raw(Method::DELETE, "/auth/me", None, Vec::new()), 405, "method-not-allowed"),
        (raw(Method::GET, "/auth/nothing-here", None, Vec::new()), 404, "not-found"),
        (raw(Method::PATCH, "/admin/users", None, Vec::new()), 405, "method-not-allowed"),
    ];
    for (req, status, slug) in cases {
        let what = format!("{} {} {:?}", req.method(), req.uri(), req.headers().get(header::CONTENT_TYPE));
        let r = app.call(req).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        r.assert_problem(status, slug);
    }
    // A path that no route of spin.toml serves is answered by Spin itself,
    // before any component runs: an empty 404. The native host does the same.
    let r = app.call(raw(Method::GET, "/not-a-route", None, Vec::new())).await;
    assert_eq!((r.status, r.body.len(), r.header("content-type")), (404, 0, None));
    // 405s say what is allowed; HEAD is GET without a body.
    let r = app.call(raw(Method::TRACE, "/auth/me", None, Vec::new())).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = app.call(raw(Method::GET, "/auth/login", None, Vec::new())).await;
    assert_eq!(r.header("allow"), Some("POST"));
    let r = app.call(raw(Method::PATCH, "/admin/users", None, Vec::new())).await;
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let head = app.call(raw(Method::HEAD, "/auth/me", None, Vec::new())).await;
    assert_eq!((head.status, head.body.len()), (401, 0));
    // Missing fields and wrong types are pointed at.
    let r =
        app.call(raw(Method::POST, "/auth/login", json_ct, br#"{"tenant":"oslo","username":"admin"}"#.to_vec())).await;
    assert_eq!(r.json()["errors"][0]["pointer"], "/password");
    let r = app
        .call(raw(Method::POST, "/auth/login", json_ct, br#"{"tenant":"oslo","username":5,"password":"x"}"#.to_vec()))
        .await;
    assert_eq!(r.json()["errors"][0]["pointer"], "/username");
    assert_eq!(before, app.snapshot(true).await, "nothing changed, not even the audit log");
    let _ = admin;
}

#[tokio::test]
async fn error_bodies_never_echo_secrets_or_sql_details() {
    let app = TestApp::spawn().await;
    app.seed_tenant("oslo").await;
    let secret = "Sup3r-Secret-Pa55";
    let r = app
        .call(raw(
            Method::POST,
            "/auth/login",
            Some("application/json"),
            format!(r#"{{"tenant":"oslo","username":"admin","password":["{secret}"]}}"#).into_bytes(),
        ))
        .await;
    r.assert_problem(422, "validation-failed");
    assert!(!r.text().contains(secret), "{}", r.text());
    // Values sent with the wrong type and unknown keys are not echoed either
    // (serde quotes numbers and keys in backticks, not double quotes).
    for body in [
        r#"{"tenant":"oslo","username":"admin","password":98765432109}"#,
        r#"{"tenant":"oslo","username":"admin","password":"x","98765432109":1}"#,
        r#"{"tenant":"oslo","username":98765432109.5,"password":"x"}"#,
    ] {
        let r = app.call(raw(Method::POST, "/auth/login", Some("application/json"), body.as_bytes().to_vec())).await;
        r.assert_problem(422, "validation-failed");
        assert!(!r.text().contains("98765432109"), "{}", r.text());
    }
    let r = app.login_response("oslo", "admin", secret).await;
    assert!(!r.text().contains(secret));
    for needle in ["SELECT", "syntax", "postgres", "sqlx", "panicked"] {
        assert!(!r.text().contains(needle));
    }
}

#[tokio::test]
async fn sql_and_unicode_in_every_login_field_are_plain_failed_logins() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let hostile = [
        "' OR '1'='1",
        "admin'--",
        "oslo'; DROP TABLE users; --",
        "\\x00\\u0000",
        "Åse Ødegård",
        "Zoe\u{0308}",
        "مريم",
        "\u{202E}nimda",
        "🦀🦀🦀",
        "null",
    ];
    for value in hostile {
        for field in ["tenant", "username", "password"] {
            let mut body = json!({"tenant": "oslo", "username": "admin", "password": "Wrong-pass-1"});
            body[field] = json!(value);
            let r = app.post("/auth/login", None, body).await;
            r.assert_problem(401, "invalid-credentials");
        }
    }
    // NUL cannot be stored as text: a validation error with a pointer, not a 500.
    for field in ["tenant", "username", "password"] {
        let mut body = json!({"tenant": "oslo", "username": "admin", "password": "x"});
        body[field] = json!("nul\u{0}byte");
        let p = app.post("/auth/login", None, body).await.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], format!("/{field}"));
    }
    // Overlong fields are validation errors, not credential checks.
    for field in ["tenant", "username", "password"] {
        let mut body = json!({"tenant": "oslo", "username": "admin", "password": "x"});
        body[field] = json!("a".repeat(2000));
        let r = app.post("/auth/login", None, body).await;
        let p = r.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], format!("/{field}"));
    }
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1, "tables intact");
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 0);
    // The admin was not locked by another field's failures? Each wrong
    // password counted: unlock, then the real password still works.
    sqlx::query("UPDATE users SET locked_until = NULL, failed_logins = 0").execute(&app.pool).await.unwrap();
    app.login(&admin).await;
}

#[tokio::test]
async fn oversized_admin_bodies_are_413_before_parsing() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let before = app.snapshot(true).await;
    let big = json!({"username": "x1", "display_name": "x".repeat(80 * 1024), "password": "Fjord-Lysne-42"});
    let r = app.post("/admin/users", Some(&s.token), big).await;
    r.assert_problem(413, "payload-too-large");
    let huge_roles: Vec<_> = (0..5000).map(|_| json!({"role": "tenant_admin"})).collect();
    let r = app
        .post(
            "/admin/users",
            Some(&s.token),
            json!({"username": "x1", "display_name": "X", "password": "Fjord-Lysne-42", "roles": huge_roles}),
        )
        .await;
    assert!(r.status == 413 || r.status == 422, "{}", r.status);
    assert_eq!(before, app.snapshot(true).await);
}
