//! User administration by tenant admins, inside their own tenant only.

use http::Method;
use serde_json::json;
use std::collections::HashSet;
use tavle_tests::{cursors, Api, TestApp};

#[tokio::test]
async fn admins_list_users_with_last_login_state_and_roles_page_by_page() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let (school, group) = app.seed_school(&admin.tenant_id, "Nordby skole").await;
    let s = app.login(&admin).await;
    for (name, roles) in [
        ("anne", json!([{"role": "teacher", "group_id": group}])),
        ("bjorn", json!([{"role": "school_leader", "school_id": school}])),
        ("cecilie", json!([{"role": "privacy_officer"}])),
        ("dag", json!([])),
        ("eva", json!([{"role": "tenant_admin"}])),
    ] {
        app.create_user(&s, &admin, name, roles).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/users?limit=2&cursor={c}"),
            None => "/admin/users?limit=2".to_owned(),
        };
        let r = app.get(&path, &s.token).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        for u in items {
            for field in ["id", "username", "display_name", "active", "locked", "roles", "created_at"] {
                assert!(u.get(field).is_some(), "{field} missing in {u}");
            }
            seen.push(u["username"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["admin", "anne", "bjorn", "cecilie", "dag", "eva"]);
    let all = app.get("/admin/users", &s.token).await.json();
    let admin_row = &all["items"][0];
    assert!(admin_row["last_login_at"].is_string(), "last login shown: {admin_row}");
    assert!(all["items"][4]["last_login_at"].is_null(), "dag never logged in");
    assert_eq!(all["items"][1]["roles"], json!([{"role": "teacher", "group_id": group}]));
    // Staff data is personal data: each read is audited with who read it.
    let anne = all["items"][1]["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/admin/users/{anne}"), &s.token).await.status, 200);
    let reads: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT action, actor_user_id::text, target_id::text FROM audit_log \
         WHERE action IN ('users.listed', 'user.viewed') ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(reads.len(), 5, "{reads:?}");
    assert!(reads.iter().all(|(_, actor, _)| actor.as_deref() == Some(admin.user_id.as_str())));
    assert_eq!(reads[4], ("user.viewed".to_owned(), Some(admin.user_id.clone()), Some(anne.to_owned())));
}

#[tokio::test]
async fn bad_cursors_and_page_sizes_are_400s() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    for query in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=abc",
        "limit=99999999999999999999",
        "cursor=not-base64!!",
        "cursor=eyJ4IjoxfQ",                             // {"x":1}
        "cursor=eyJ1IjoiYSIsImlkIjoiJyBPUiAxPTEgLS0ifQ", // id is SQL, not a uuid
        "cursor=%ZZ",
        "cursor=%00",
        "cursor=eyJ1IjogImFcdTAwMDBiIiwgImlkIjogIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJ9", // {"u":"a\u0000b",...}: NUL inside the decoded cursor
        "limit=1%00",
    ] {
        let r = app.get(&format!("/admin/users?{query}"), &s.token).await;
        let body = r.assert_problem(400, "malformed-request");
        assert!(body["errors"][0]["pointer"].as_str().unwrap().starts_with("/query/"), "{query}: {body}");
    }
}

#[tokio::test]
async fn user_cursors_are_opaque_and_open_only_for_their_tenant_admin_and_list() {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let bergen = app.seed_tenant("bergen").await;
    let s = app.login(&oslo).await;
    let b = app.login(&bergen).await;
    for name in ["anne", "bjorn"] {
        app.create_user(&s, &oslo, name, json!([])).await;
        app.create_user(&b, &bergen, name, json!([])).await;
    }
    let eva = app.create_user(&s, &oslo, "eva", json!([{"role": "tenant_admin"}])).await;
    let eva = app.login(&eva).await;
    for _ in 0..2 {
        app.create_source(&s, "sas").await;
    }
    let path = "/admin/users?limit=1";
    // The cursor after `admin` names neither that username nor its id.
    let own = cursors::next_cursor(&app, path, &s.token).await;
    cursors::assert_opaque(&own, &["admin", &oslo.user_id, &oslo.tenant_id]);
    // Paging goes on as before.
    let next = app.get(&cursors::with_cursor(path, &own), &s.token).await;
    assert_eq!((next.status, next.json()["items"][0]["username"].clone()), (200, json!("anne")), "{}", next.text());

    let before = app.snapshot(true).await;
    let mut foreign: Vec<(String, String)> = vec![
        ("another tenant's".into(), cursors::next_cursor(&app, path, &b.token).await),
        ("another admin's".into(), cursors::next_cursor(&app, path, &eva.token).await),
        ("another list's".into(), cursors::next_cursor(&app, "/admin/sources?limit=1", &s.token).await),
    ];
    let before_foreign = app.snapshot(true).await;
    assert_ne!(before, before_foreign, "the other lists were read");
    foreign.extend(cursors::tampered(&own, &json!({"u": "admin", "id": oslo.user_id})));
    for (what, cursor) in &foreign {
        cursors::assert_refused(&app, path, &s.token, cursor, what).await;
    }
    assert_eq!(before_foreign, app.snapshot(true).await, "refused cursors change nothing, not even the audit log");
}

#[tokio::test]
async fn creating_users_validates_every_field_and_changes_nothing_on_error() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let bergen = app.seed_tenant("bergen").await;
    let (_, bergen_group) = app.seed_school(&bergen.tenant_id, "Bergen skole").await;
    let (school, group) = app.seed_school(&admin.tenant_id, "Nordby skole").await;
    let s = app.login(&admin).await;
    let before = app.snapshot(true).await;
    let valid = json!({"username": "kari", "display_name": "Kari", "password": "Fjord-Lysne-42", "roles": []});
    let with = |field: &str, value: serde_json::Value| {
        let mut v = valid.clone();
        v[field] = value;
        v
    };
    let cases = [
        (with("username", json!("x")), "/username"),
        (with("username", json!("Åse")), "/username"),
        (with("username", json!("robert'); DROP TABLE users;--")), "/username"),
        (with("username", json!("a".repeat(65))), "/username"),
        (with("display_name", json!("")), "/display_name"),
        (with("display_name", json!("tab\there")), "/display_name"),
        (with("display_name", json!("x".repeat(201))), "/display_name"),
        (with("email", json!("not-an-email")), "/email"),
        (with("language", json!("klingon")), "/language"),
        (with("password", json!("short")), "/password"),
        (with("password", json!("Kari-is-great-1")), "/password"),
        (with("roles", json!([{"role": "teacher"}])), "/roles/0"),
        (with("roles", json!([{"role": "teacher", "group_id": "not-a-uuid"}])), "/roles/0"),
        (with("roles", json!([{"role": "school_leader", "group_id": group}])), "/roles/0"),
        (with("roles", json!([{"role": "tenant_admin", "school_id": school}])), "/roles/0"),
        (with("roles", json!([{"role": "teacher", "group_id": bergen_group}])), "/roles"),
        (with("roles", json!([{"role": "teacher", "group_id": uuid::Uuid::new_v4().to_string()}])), "/roles"),
        (with("roles", json!([{"role": "superuser"}])), "/roles/0/role"),
        (with("roles", json!([{"role": "privacy_officer", "scope": "whole-tenant"}])), "/roles/0"),
        (with("password", json!(12345678)), "/password"),
        (with("unexpected", json!(true)), ""),
        (json!({"display_name": "Kari", "password": "Fjord-Lysne-42"}), "/username"),
    ];
    for (body, pointer) in cases {
        let r = app.post("/admin/users", Some(&s.token), body.clone()).await;
        let problem = r.assert_problem(422, "validation-failed");
        let pointers: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
        assert!(pointers.iter().any(|p| p.starts_with(pointer)), "{body}: expected {pointer}, got {problem}");
        assert!(!r.text().contains("Fjord-Lysne-42"), "passwords are never echoed");
    }
    assert_eq!(before, app.snapshot(true).await, "rejected requests changed nothing");

    let created = app.post("/admin/users", Some(&s.token), valid.clone()).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let dup = app.post("/admin/users", Some(&s.token), with("username", json!("KARI"))).await;
    dup.assert_problem(409, "conflict");
    // The same username is free in another tenant.
    let sb = app.login(&bergen).await;
    assert_eq!(app.post("/admin/users", Some(&sb.token), valid).await.status, 201);
}

#[tokio::test]
async fn unicode_names_round_trip_and_sql_is_just_text() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let names = [
        "Åse Ødegård Bærheim",
        "Sigrún Jóhannsdóttir",
        "Zoe\u{0308} Ma\u{0301}rquez", // combining marks, stored composed
        "مريم العلي",                  // right-to-left
        "Robert'); DROP TABLE users;--",
        "Ola \u{202E}drowssap", // bidi override is text, not a control char
    ];
    for (i, name) in names.iter().enumerate() {
        let r = app
            .post(
                "/admin/users",
                Some(&s.token),
                json!({"username": format!("user{i}"), "display_name": name, "password": "Fjord-Lysne-42", "email": format!("u{i}@skole.no")}),
            )
            .await;
        assert_eq!(r.status, 201, "{name}: {}", r.text());
        // As sent, in NFC: combining marks composed ("Zoë Márquez").
        let nfc = tavle_core::names::nfc(name);
        assert_eq!(r.json()["display_name"], nfc);
        let got = app.get(&format!("/admin/users/{}", r.json()["id"].as_str().unwrap()), &s.token).await.json();
        assert_eq!(got["display_name"], nfc);
    }
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1 + names.len() as i64);
}

#[tokio::test]
async fn only_tenant_admins_administer_users() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let (school, group) = app.seed_school(&admin.tenant_id, "Nordby skole").await;
    let s = app.login(&admin).await;
    let teacher = app.create_user(&s, &admin, "laerer", json!([{"role": "teacher", "group_id": group}])).await;
    let leader = app.create_user(&s, &admin, "rektor", json!([{"role": "school_leader", "school_id": school}])).await;
    let po = app.create_user(&s, &admin, "personvern", json!([{"role": "privacy_officer"}])).await;
    for staff in [&teacher, &leader, &po] {
        let t = app.login(staff).await;
        let before = app.snapshot(true).await;
        let target = format!("/admin/users/{}", admin.user_id);
        let calls = [
            (Method::GET, "/admin/users".to_owned(), None),
            (
                Method::POST,
                "/admin/users".to_owned(),
                Some(json!({"username": "x1", "display_name": "X", "password": "Fjord-Lysne-42"})),
            ),
            (Method::GET, target.clone(), None),
            (Method::PUT, format!("{target}/roles"), Some(json!({"roles": []}))),
            (Method::POST, format!("{target}/deactivate"), Some(json!({}))),
            (Method::POST, format!("{target}/unlock"), Some(json!({}))),
            (Method::DELETE, target.clone(), None),
        ];
        for (method, path, body) in calls {
            let r = app.send(method.clone(), &path, Some(&t.token), body).await;
            assert_eq!(r.status, 403, "{} {method} {path}: {}", staff.username, r.text());
        }
        assert_eq!(before, app.snapshot(true).await);
    }
}

#[tokio::test]
async fn roles_are_replaced_audited_and_admins_keep_their_own() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let (school, group) = app.seed_school(&admin.tenant_id, "Nordby skole").await;
    let s = app.login(&admin).await;
    let kari = app.create_user(&s, &admin, "kari", json!([{"role": "teacher", "group_id": group}])).await;
    let path = format!("/admin/users/{}/roles", kari.user_id);
    let r = app
        .send(Method::PUT, &path, Some(&s.token), Some(json!({"roles": [{"role": "school_leader", "school_id": school}, {"role": "school_leader", "school_id": school}]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["roles"], json!([{"role": "school_leader", "school_id": school}]), "duplicates collapse");
    let kari_session = app.login(&kari).await;
    assert_eq!(app.get("/auth/me", &kari_session.token).await.json()["roles"], json!(["school_leader"]));
    let details: serde_json::Value =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'user.roles_changed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(details["before"], json!([{"role": "teacher", "group_id": group}]));
    assert_eq!(details["after"], json!([{"role": "school_leader", "school_id": school}]));

    let own = format!("/admin/users/{}/roles", admin.user_id);
    app.send(Method::PUT, &own, Some(&s.token), Some(json!({"roles": []}))).await.assert_problem(409, "conflict");
    for p in [format!("/admin/users/{}/deactivate", admin.user_id)] {
        app.post(&p, Some(&s.token), json!({})).await.assert_problem(409, "conflict");
    }
    app.send(Method::DELETE, &format!("/admin/users/{}", admin.user_id), Some(&s.token), None)
        .await
        .assert_problem(409, "conflict");
    assert_eq!(app.get("/auth/me", &s.token).await.json()["roles"], json!(["tenant_admin"]));
}

#[tokio::test]
async fn deactivation_revokes_sessions_and_reactivation_restores_login() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let kari = app.create_user(&s, &admin, "kari", json!([])).await;
    let ks = app.login(&kari).await;
    let r = app.post(&format!("/admin/users/{}/deactivate", kari.user_id), Some(&s.token), json!({})).await;
    assert_eq!(r.json()["active"], false);
    app.get("/auth/me", &ks.token).await.assert_problem(401, "unauthenticated");
    app.login_response("oslo", "kari", &kari.password).await.assert_problem(401, "invalid-credentials");
    let r = app.post(&format!("/admin/users/{}/activate", kari.user_id), Some(&s.token), json!({})).await;
    assert_eq!(r.json()["active"], true);
    app.login(&kari).await;
    let actions: HashSet<String> = app.audit_actions(&admin.tenant_id).await.into_iter().collect();
    for a in ["user.created", "user.deactivated", "user.activated"] {
        assert!(actions.contains(a), "{a} audited");
    }
}

#[tokio::test]
async fn deleting_a_user_removes_access_and_frees_the_username() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let (_, group) = app.seed_school(&admin.tenant_id, "Nordby skole").await;
    let s = app.login(&admin).await;
    let kari = app.create_user(&s, &admin, "kari", json!([{"role": "teacher", "group_id": group}])).await;
    let ks = app.login(&kari).await;
    let r = app.send(Method::DELETE, &format!("/admin/users/{}", kari.user_id), Some(&s.token), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    app.get("/auth/me", &ks.token).await.assert_problem(401, "unauthenticated");
    app.get(&format!("/admin/users/{}", kari.user_id), &s.token).await.assert_problem(404, "not-found");
    app.send(Method::DELETE, &format!("/admin/users/{}", kari.user_id), Some(&s.token), None)
        .await
        .assert_problem(404, "not-found");
    app.login_response("oslo", "kari", &kari.password).await.assert_problem(401, "invalid-credentials");
    assert_eq!(app.count("SELECT count(*) FROM role_grants WHERE role = 'teacher'").await, 0, "links removed");
    // Soft delete: the row stays (for pseudonymisation by retention).
    assert_eq!(app.count("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL").await, 1);
    app.create_user(&s, &admin, "kari", json!([])).await;
    assert!(app.audit_actions(&admin.tenant_id).await.contains(&"user.deleted".to_owned()));
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    for id in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".into(), "1%27%20OR%201%3D1".into()] {
        app.get(&format!("/admin/users/{id}"), &s.token).await.assert_problem(404, "not-found");
        app.post(&format!("/admin/users/{id}/unlock"), Some(&s.token), json!({}))
            .await
            .assert_problem(404, "not-found");
    }
}
