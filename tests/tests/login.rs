//! Staff login, sessions, tokens, lockout and password changes, through the
//! routes of spin.toml against a fresh database per test.

use http::{header, Method, Request};
use jwt_simple::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use tavle_core::auth::{TokenClaims, AUDIENCE, ISSUER};
use tavle_login::password::verifications_on_this_thread;
use tavle_tests::{b64url, Api, TestApp, ORIGIN};

fn claims(user: &str, tenant: &str, sid: &str) -> JWTClaims<TokenClaims> {
    Claims::with_custom_claims(TokenClaims { tenant: tenant.into(), sid: sid.into() }, Duration::from_mins(15))
        .with_subject(user)
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
}

#[tokio::test]
async fn login_returns_a_short_lived_token_and_a_strict_session_cookie() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let r = app.login_response("oslo", "admin", &admin.password).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("cache-control"), Some("no-store"));

    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("__Host-tavle_session="));
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "cookie lacks {attr}: {cookie}");
    }
    // No "remember me": a browser-session cookie without a lifetime.
    assert!(!cookie.contains("Max-Age") && !cookie.contains("Expires"), "{cookie}");

    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let verifier = tavle_core::auth::TokenVerifier::from_config(&app.keys.public).unwrap();
    let (sub, c) = verifier.verify(token).unwrap();
    assert_eq!(sub, admin.user_id);
    assert_eq!(c.tenant, admin.tenant_id);
    assert_eq!(c.sid, body["session"]["id"]);

    // Logins are audited and the last login is recorded.
    assert_eq!(app.audit_actions(&admin.tenant_id).await.last().unwrap(), "login.succeeded");
    let last_login: Option<String> =
        sqlx::query_scalar("SELECT rfc3339(last_login_at) FROM users WHERE username = 'admin'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(last_login.is_some());
}

#[tokio::test]
async fn me_reports_user_tenant_roles_scopes_and_session() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let (school, group) = app.seed_school(&admin.tenant_id, "Nordby skole").await;
    let s = app.login(&admin).await;
    let teacher = app
        .create_user(
            &s,
            &admin,
            "kari",
            json!([{"role": "teacher", "group_id": group}, {"role": "school_leader", "school_id": school}]),
        )
        .await;
    let t = app.login(&teacher).await;
    let me = app.get("/auth/me", &t.token).await;
    assert_eq!(me.status, 200, "{}", me.text());
    let body = me.json();
    assert_eq!(body["user"]["username"], "kari");
    assert_eq!(body["tenant"]["slug"], "oslo");
    assert_eq!(body["roles"], json!(["school_leader", "teacher"]));
    assert_eq!(
        body["scopes"],
        json!([{"role": "school_leader", "school_id": school}, {"role": "teacher", "group_id": group}])
    );
    assert_eq!(body["session"]["id"], t.body["session"]["id"]);
}

#[tokio::test]
async fn every_failed_login_looks_the_same_and_costs_one_argon2_verification() {
    let app = TestApp::spawn_with(HashMap::from([("lockout_threshold", "2")])).await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let inactive = app.create_user(&s, &admin, "inactive", json!([])).await;
    let locked = app.create_user(&s, &admin, "locked", json!([])).await;
    let r = app.post(&format!("/admin/users/{}/deactivate", inactive.user_id), Some(&s.token), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..2 {
        assert_eq!(app.login_response("oslo", "locked", "Wrong-pass-1").await.status, 401);
    }

    let attempts = [
        ("no-such-tenant", "admin", admin.password.as_str()),
        ("oslo", "nobody", admin.password.as_str()),
        ("oslo", "admin", "Wrong-pass-1"),
        ("oslo", "inactive", inactive.password.as_str()),
        ("oslo", "locked", locked.password.as_str()),
    ];
    let mut bodies = Vec::new();
    for (tenant, user, pw) in attempts {
        let before = verifications_on_this_thread();
        let r = app.login_response(tenant, user, pw).await;
        assert_eq!(verifications_on_this_thread() - before, 1, "{tenant}/{user}: one argon2 verification");
        let mut body = r.assert_problem(401, "invalid-credentials");
        assert!(r.header("set-cookie").is_none());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        body.as_object_mut().unwrap().remove("instance");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "responses differ: {bodies:?}");
    // The successful path costs the same single verification.
    let before = verifications_on_this_thread();
    app.login(&admin).await;
    assert_eq!(verifications_on_this_thread() - before, 1);
}

#[tokio::test]
async fn five_consecutive_failures_lock_the_account_for_fifteen_minutes() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let kari = app.create_user(&s, &admin, "kari", json!([])).await;
    let kari_session = app.login(&kari).await;

    for _ in 0..4 {
        assert_eq!(app.login_response("oslo", "kari", "Wrong-pass-1").await.status, 401);
    }
    // Four failures: not yet locked; a success resets the counter.
    app.login(&kari).await;
    for _ in 0..4 {
        app.login_response("oslo", "kari", "Wrong-pass-1").await;
    }
    let still_live = app.get("/auth/me", &kari_session.token).await;
    assert_eq!(still_live.status, 200);
    app.login_response("oslo", "kari", "Wrong-pass-1").await;

    // Locked now: the right password is refused. Live sessions survive, so a
    // stranger guessing wrong cannot log the teacher out.
    app.login_response("oslo", "kari", &kari.password).await.assert_problem(401, "invalid-credentials");
    assert_eq!(app.get("/auth/me", &kari_session.token).await.status, 200);
    let minutes: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM locked_until - now())::float8 / 60 FROM users WHERE username = 'kari'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!((14.5..=15.0).contains(&minutes), "locked for {minutes} minutes");
    // Failures while locked neither extend the lock nor lock again.
    let until: String = sqlx::query_scalar("SELECT locked_until::text FROM users WHERE username = 'kari'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    for _ in 0..6 {
        app.login_response("oslo", "kari", "Wrong-pass-1").await.assert_problem(401, "invalid-credentials");
    }
    let until_after: String = sqlx::query_scalar("SELECT locked_until::text FROM users WHERE username = 'kari'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(until, until_after);
    let actions = app.audit_actions(&admin.tenant_id).await;
    assert_eq!(actions.iter().filter(|a| *a == "account.locked").count(), 1);
    assert_eq!(actions.iter().filter(|a| *a == "login.failed").count(), 16);

    // The admin sees the lock and lifts it.
    let listed = app.get(&format!("/admin/users/{}", kari.user_id), &s.token).await.json();
    assert_eq!(listed["locked"], true);
    assert!(listed["locked_until"].is_string());
    let r = app.post(&format!("/admin/users/{}/unlock", kari.user_id), Some(&s.token), json!({})).await;
    assert_eq!(r.json()["locked"], false);
    app.login(&kari).await;
}

#[tokio::test]
async fn lockout_threshold_and_period_are_configurable_and_locks_expire() {
    let app = TestApp::spawn_with(HashMap::from([("lockout_threshold", "2"), ("lockout_minutes", "1")])).await;
    let admin = app.seed_tenant("oslo").await;
    // Concurrent failures past the threshold lock once, with one audit row.
    let wrong = || app.login_response("oslo", "admin", "Wrong-pass-1");
    let (a, b, c, d, e, f) = tokio::join!(wrong(), wrong(), wrong(), wrong(), wrong(), wrong());
    assert!([a, b, c, d, e, f].iter().all(|r| r.status == 401));
    let locks = app.audit_actions(&admin.tenant_id).await.iter().filter(|a| *a == "account.locked").count();
    assert_eq!(locks, 1);
    app.login_response("oslo", "admin", &admin.password).await.assert_problem(401, "invalid-credentials");
    let minutes: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM locked_until - now())::float8 / 60 FROM users WHERE username = 'admin'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!((0.5..=1.0).contains(&minutes), "locked for {minutes} minutes");
    // Once the period has passed, the right password works again.
    sqlx::query("UPDATE users SET locked_until = now() - interval '1 second'").execute(&app.pool).await.unwrap();
    app.login(&admin).await;
}

#[tokio::test]
async fn logout_revokes_the_session_and_clears_the_cookie() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let other = app.login(&admin).await;
    let r = app.post("/auth/logout", Some(&s.token), json!({})).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    app.get("/auth/me", &s.token).await.assert_problem(401, "unauthenticated");
    app.call(cookie_request(Method::POST, "/auth/refresh", &s.cookie, Some(ORIGIN)))
        .await
        .assert_problem(401, "unauthenticated");
    // Only that session: another login of the same user lives on.
    assert_eq!(app.get("/auth/me", &other.token).await.status, 200);
    assert!(app.audit_actions(&admin.tenant_id).await.contains(&"logout".to_owned()));
}

#[tokio::test]
async fn refresh_extends_the_idle_deadline_but_never_past_the_absolute_maximum() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let sid = s.body["session"]["id"].as_str().unwrap().to_owned();

    sqlx::query("UPDATE sessions SET idle_expires_at = now() + interval '1 minute' WHERE id = $1::uuid")
        .bind(&sid)
        .execute(&app.pool)
        .await
        .unwrap();
    let refresh = || app.call(cookie_request(Method::POST, "/auth/refresh", &s.cookie, Some(ORIGIN)));
    let r = refresh().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let idle_minutes: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM idle_expires_at - now())::float8 / 60 FROM sessions WHERE id = $1::uuid",
    )
    .bind(&sid)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!((29.0..=30.0).contains(&idle_minutes), "idle deadline {idle_minutes} min");
    let fresh = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, s.token);
    assert_eq!(app.get("/auth/me", &fresh).await.status, 200);

    // Near the absolute maximum, the idle deadline and the token stop there.
    sqlx::query("UPDATE sessions SET expires_at = now() + interval '2 minutes' WHERE id = $1::uuid")
        .bind(&sid)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = refresh().await.json();
    assert!(r["expires_in"].as_u64().unwrap() <= 120, "{r}");
    assert_eq!(r["session"]["idle_expires_at"], r["session"]["expires_at"]);

    // Past the maximum (one school day by default), the session is over.
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&sid)
        .execute(&app.pool)
        .await
        .unwrap();
    refresh().await.assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn refresh_takes_the_session_cookie_only_never_a_bearer_token() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    // Make any extension visible: a refresh would move this deadline.
    sqlx::query("UPDATE sessions SET idle_expires_at = now() + interval '1 minute'").execute(&app.pool).await.unwrap();
    let before = app.snapshot(true).await;

    // A stolen access token cannot be turned into a school-day session:
    // bearer only, with or without an allowed Origin, is a 401.
    let bearer = |origin: Option<&str>| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/auth/refresh")
            .header(header::AUTHORIZATION, format!("Bearer {}", s.token));
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        b.header(header::CONTENT_TYPE, "application/json").body(b"{}".to_vec()).unwrap()
    };
    for origin in [None, Some(ORIGIN)] {
        let r = app.call(bearer(origin)).await;
        let body = r.assert_problem(401, "unauthenticated");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains("session cookie")), "{body}");
        assert!(r.header("set-cookie").is_none());
    }
    assert_eq!(before, app.snapshot(true).await, "a refused refresh changed nothing, not even the audit log");
    assert_eq!(app.get("/auth/me", &s.token).await.status, 200, "the token itself still works until it expires");

    // The cookie refreshes, and it alone: a bearer token sent along is ignored.
    let mut both = cookie_request(Method::POST, "/auth/refresh", &s.cookie, Some(ORIGIN));
    both.headers_mut().insert(header::AUTHORIZATION, "Bearer not.a.jwt".parse().unwrap());
    let r = app.call(both).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let idle_minutes: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM idle_expires_at - now())::float8 / 60 FROM sessions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!((29.0..=30.0).contains(&idle_minutes), "idle deadline {idle_minutes} min");
    // The cookie keeps its CSRF check with a bearer token beside it.
    let mut no_origin = cookie_request(Method::POST, "/auth/refresh", &s.cookie, None);
    no_origin.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {}", s.token).parse().unwrap());
    app.call(no_origin).await.assert_problem(403, "forbidden");
}

#[tokio::test]
async fn sessions_last_one_school_day_and_expire_when_idle() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let hours: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM expires_at - created_at)::float8 / 3600 FROM sessions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!((9.9..=10.0).contains(&hours), "absolute maximum {hours} h");
    sqlx::query("UPDATE sessions SET idle_expires_at = now() - interval '1 second'").execute(&app.pool).await.unwrap();
    app.get("/auth/me", &s.token).await.assert_problem(401, "unauthenticated");
    app.call(cookie_request(Method::POST, "/auth/refresh", &s.cookie, Some(ORIGIN)))
        .await
        .assert_problem(401, "unauthenticated");
}

fn cookie_request(method: Method, path: &str, cookie: &str, origin: Option<&str>) -> Request<Vec<u8>> {
    let mut b = Request::builder().method(method).uri(path).header(header::COOKIE, cookie);
    if let Some(o) = origin {
        b = b.header(header::ORIGIN, o);
    }
    b.header(header::CONTENT_TYPE, "application/json").body(b"{}".to_vec()).unwrap()
}

#[tokio::test]
async fn cookie_sessions_work_and_state_changes_need_an_allowed_origin() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;

    let me = app.call(cookie_request(Method::GET, "/auth/me", &s.cookie, None)).await;
    assert_eq!(me.status, 200, "{}", me.text());

    let no_origin = app.call(cookie_request(Method::POST, "/auth/refresh", &s.cookie, None)).await;
    no_origin.assert_problem(403, "forbidden");
    let evil = app.call(cookie_request(Method::POST, "/auth/logout", &s.cookie, Some("https://evil.example"))).await;
    evil.assert_problem(403, "forbidden");
    assert_eq!(app.get("/auth/me", &s.token).await.status, 200, "refused requests changed nothing");

    let ok = app.call(cookie_request(Method::POST, "/auth/refresh", &s.cookie, Some(ORIGIN))).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let out = app.call(cookie_request(Method::POST, "/auth/logout", &s.cookie, Some(ORIGIN))).await;
    assert_eq!(out.status, 204);
    app.call(cookie_request(Method::GET, "/auth/me", &s.cookie, None)).await.assert_problem(401, "unauthenticated");

    // A forged cookie value is just unauthenticated.
    app.call(cookie_request(Method::GET, "/auth/me", "__Host-tavle_session=forged", None))
        .await
        .assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn login_from_a_foreign_origin_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let body = serde_json::to_vec(&json!({"tenant": "oslo", "username": "admin", "password": admin.password})).unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ORIGIN, "https://evil.example")
        .body(body)
        .unwrap();
    app.call(req).await.assert_problem(403, "forbidden");
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 0);
}

#[tokio::test]
async fn tampered_expired_foreign_and_unsigned_tokens_are_rejected() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let sid = s.body["session"]["id"].as_str().unwrap();
    let good = claims(&admin.user_id, &admin.tenant_id, sid);
    assert_eq!(app.get("/auth/me", &app.sign(good.clone())).await.status, 200, "the harness signs valid tokens");

    let mut expired = claims(&admin.user_id, &admin.tenant_id, sid);
    expired.expires_at = Some(Clock::now_since_epoch() - Duration::from_mins(2));
    let foreign_key = Ed25519KeyPair::generate()
        .with_key_id(&tavle_core::auth::key_id(&Ed25519KeyPair::generate().public_key().to_bytes()))
        .sign(good.clone())
        .unwrap();
    let parts: Vec<&str> = s.token.split('.').collect();
    let mut payload: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1]).unwrap(),
    )
    .unwrap();
    payload["sub"] = json!(uuid::Uuid::new_v4().to_string());
    let tampered = format!("{}.{}.{}", parts[0], b64url(payload.to_string().as_bytes()), parts[2]);
    let alg_none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let hs256 =
        HS256Key::generate().with_key_id(&tavle_core::auth::key_id(&[0; 32])).authenticate(good.clone()).unwrap();
    let wrong_audience = app.sign(claims(&admin.user_id, &admin.tenant_id, sid).with_audience("other-service"));
    let non_uuid_ids = app.sign(claims("x' OR 1=1 --", &admin.tenant_id, sid));

    for (what, token) in [
        ("expired", app.sign(expired)),
        ("signed with another key", foreign_key),
        ("tampered payload", tampered),
        ("alg none", alg_none),
        ("HS256", hs256),
        ("wrong audience", wrong_audience),
        ("SQL in claims", non_uuid_ids),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let r = app.get("/auth/me", &token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        r.assert_problem(401, "unauthenticated");
    }
    let raw = Request::builder()
        .uri("/auth/me")
        .header(header::AUTHORIZATION, "Basic YWRtaW46YWRtaW4=")
        .body(Vec::new())
        .unwrap();
    app.call(raw).await.assert_problem(401, "unauthenticated");
    let none = Request::builder().uri("/auth/me").body(Vec::new()).unwrap();
    app.call(none).await.assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn a_token_cannot_cross_tenants() {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let bergen = app.seed_tenant("bergen").await;
    let so = app.login(&oslo).await;
    let sb = app.login(&bergen).await;
    let oslo_sid = so.body["session"]["id"].as_str().unwrap();
    // Oslo's session presented with Bergen as tenant (validly signed): refused.
    let forged = app.sign(claims(&oslo.user_id, &bergen.tenant_id, oslo_sid));
    app.get("/auth/me", &forged).await.assert_problem(401, "unauthenticated");
    let mixed = app.sign(claims(&bergen.user_id, &bergen.tenant_id, oslo_sid));
    app.get("/auth/me", &mixed).await.assert_problem(401, "unauthenticated");
    // Oslo's admin cannot see or change Bergen's users: they do not exist for Oslo.
    let before = app.snapshot(true).await;
    let path = format!("/admin/users/{}", bergen.user_id);
    app.get(&path, &so.token).await.assert_problem(404, "not-found");
    app.post(&format!("{path}/deactivate"), Some(&so.token), json!({})).await.assert_problem(404, "not-found");
    app.post(&format!("{path}/unlock"), Some(&so.token), json!({})).await.assert_problem(404, "not-found");
    app.send(Method::PUT, &format!("{path}/roles"), Some(&so.token), Some(json!({"roles": []})))
        .await
        .assert_problem(404, "not-found");
    app.send(Method::DELETE, &path, Some(&so.token), None).await.assert_problem(404, "not-found");
    assert_eq!(before, app.snapshot(true).await, "nothing changed in either tenant");
    let listed = app.get("/admin/users", &so.token).await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/auth/me", &sb.token).await.json()["tenant"]["slug"], "bergen");
}

#[tokio::test]
async fn password_change_enforces_policy_and_revokes_other_sessions() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let kari = app.create_user(&s, &admin, "kari.nordmann", json!([])).await;
    let current = app.login(&kari).await;
    let other = app.login(&kari).await;
    let change = |new: &str| json!({"current_password": kari.password, "new_password": new});

    for (new, why) in [
        ("short1A", "at least 8"),
        ("alllowercase", "three of"),
        ("Password1", "too common"),
        ("Sommer2024!", "too common"),
        ("Kari.Nordmann-9", "username"),
    ] {
        let r = app.post("/auth/password", Some(&current.token), change(new)).await;
        let body = r.assert_problem(422, "validation-failed");
        let errors = body["errors"].as_array().unwrap();
        assert!(errors.iter().all(|e| e["pointer"] == "/new_password"), "{body}");
        assert!(errors.iter().any(|e| e["message"].as_str().unwrap().contains(why)), "{new}: {body}");
        assert!(!r.text().contains(new), "the password is never echoed");
    }
    let long = format!("Aa1!{}", "b".repeat(125));
    app.post("/auth/password", Some(&current.token), change(&long)).await.assert_problem(422, "validation-failed");

    let wrong = app
        .post(
            "/auth/password",
            Some(&current.token),
            json!({"current_password": "Nope-nope-1", "new_password": "Fjord-Lysne-42"}),
        )
        .await;
    let body = wrong.assert_problem(422, "validation-failed");
    assert_eq!(body["errors"][0]["pointer"], "/current_password");
    let failed: i32 = sqlx::query_scalar("SELECT failed_logins FROM users WHERE username = 'kari.nordmann'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(failed, 1, "a wrong current password counts as a failed login");

    let r = app.post("/auth/password", Some(&current.token), change("Fjord-Lysne-42")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(app.get("/auth/me", &current.token).await.status, 200, "the current session stays");
    app.get("/auth/me", &other.token).await.assert_problem(401, "unauthenticated");
    app.login_response("oslo", "kari.nordmann", &kari.password).await.assert_problem(401, "invalid-credentials");
    assert_eq!(app.login_response("oslo", "kari.nordmann", "Fjord-Lysne-42").await.status, 200);
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'kari.nordmann'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "stored hashed with OWASP parameters");
    assert!(!stored.contains("Fjord"));
    assert!(app.audit_actions(&admin.tenant_id).await.contains(&"password.changed".to_owned()));
}

#[tokio::test]
async fn a_stolen_session_cannot_guess_the_password_past_the_lockout() {
    let app = TestApp::spawn_with(HashMap::from([("lockout_threshold", "3")])).await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let kari = app.create_user(&s, &admin, "kari", json!([])).await;
    let stolen = app.login(&kari).await;
    let guess = |current: &str| json!({"current_password": current, "new_password": "Fjord-Lysne-42"});
    for _ in 0..3 {
        let r = app.post("/auth/password", Some(&stolen.token), guess("Wrong-guess-1")).await;
        r.assert_problem(422, "validation-failed");
    }
    // Locked now: even the right current password is not checked, and the
    // password stays as it was.
    let before = verifications_on_this_thread();
    let r = app.post("/auth/password", Some(&stolen.token), guess(&kari.password)).await;
    let body = r.assert_problem(422, "validation-failed");
    assert_eq!(body["errors"][0]["pointer"], "/current_password");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("locked"), "{body}");
    assert_eq!(verifications_on_this_thread(), before, "no guess is verified while locked");
    sqlx::query("UPDATE users SET locked_until = NULL WHERE username = 'kari'").execute(&app.pool).await.unwrap();
    app.login(&kari).await;
}

#[tokio::test]
async fn the_database_being_down_is_a_503_with_retry_after() {
    let app = TestApp::spawn_with(HashMap::from([
        ("db_url", "postgres://postgres@127.0.0.1:9/none"),
        ("retention_db_url", "postgres://postgres@127.0.0.1:9/none"),
        ("db_host", "127.0.0.1:9"),
    ]))
    .await;
    let r = app.login_response("oslo", "admin", "Whatever-1x").await;
    let body = r.assert_problem(503, "dependency-unavailable");
    assert!(r.header("retry-after").is_some());
    assert!(!body.to_string().contains("127.0.0.1"), "no connection details leak: {body}");
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_minted_otherwise() {
    let app = TestApp::spawn().await;
    let req = |id: &str| Request::builder().uri("/auth/me").header("x-request-id", id).body(Vec::new()).unwrap();
    let r = app.call(req("client-abc-123")).await;
    assert_eq!(r.header("x-request-id"), Some("client-abc-123"));
    let r = app.call(req("has spaces <script>")).await;
    let minted = r.header("x-request-id").unwrap();
    assert!(uuid::Uuid::parse_str(minted).is_ok(), "{minted}");
}

#[tokio::test]
async fn an_identity_number_sent_as_request_id_is_replaced_before_it_is_echoed_or_stored() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let number = tavle_tests::synthetic_id(1);
    let login = |request_id: String| {
        let body = json!({"tenant": "oslo", "username": "admin", "password": admin.password});
        let wrong = json!({"tenant": "oslo", "username": "admin", "password": "Wrong-pass-1"});
        let req = |body: serde_json::Value| {
            Request::builder()
                .method(Method::POST)
                .uri("/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-request-id", request_id.clone())
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap()
        };
        (req(body), req(wrong))
    };
    // Bare, embedded among allowed characters, and as a 64-character id:
    // each would have been echoed and written to the append-only audit log.
    for sent in [number.clone(), format!("req-{number}-x"), format!("{number}{}", "a".repeat(53))] {
        let (ok, failed) = login(sent.clone());
        for (r, status) in [(app.call(ok).await, 200), (app.call(failed).await, 401)] {
            assert_eq!(r.status, status, "{}", r.text());
            let echoed = r.header("x-request-id").unwrap();
            assert_ne!(echoed, sent);
            assert!(uuid::Uuid::parse_str(echoed).is_ok(), "a generated id instead: {echoed}");
            assert!(!r.text().contains(&number));
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log a WHERE strpos(a::text, $1) > 0")
        .bind(&number)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the identity number is nowhere in the audit log");
    let ids: Vec<Option<String>> =
        sqlx::query_scalar("SELECT request_id FROM audit_log WHERE action IN ('login.succeeded', 'login.failed')")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(ids.len(), 6);
    assert!(ids.iter().all(|id| id.as_deref().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())), "{ids:?}");
}
