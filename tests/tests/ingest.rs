//! The ingest component: webhook sources, signature verification,
//! idempotency, rosters and results — through spin.toml's routes against a
//! fresh database per test.

use base64::Engine;
use http::{header, Method, Request};
use serde_json::{json, Value};
use std::collections::HashMap;
use tavle_tests::{synthetic_id, unix_now, Api, Session, Source, Staff, TestApp};

struct World {
    app: TestApp,
    admin: Staff,
    session: Session,
    sas: Source,
    publisher: Source,
}

async fn world() -> World {
    world_with(HashMap::new()).await
}

async fn world_with(overrides: HashMap<&str, &str>) -> World {
    let app = TestApp::spawn_with(overrides).await;
    let admin = app.seed_tenant("oslo").await;
    let session = app.login(&admin).await;
    let sas = app.create_source(&session, "sas").await;
    let publisher = app.create_source(&session, "publisher").await;
    World { app, admin, session, sas, publisher }
}

fn pupil(n: u32, groups: &[&str]) -> Value {
    json!({
        "identity_number": synthetic_id(n),
        "given_name": format!("Elev{n}"),
        "family_name": "Nordmann",
        "year_level": 5,
        "gender": if n.is_multiple_of(2) { "female" } else { "male" },
        "special_needs": n.is_multiple_of(7),
        "groups": groups,
    })
}

fn roster(pupils: Vec<Value>) -> Value {
    json!({
        "school": {"external_id": "nordby", "name": "Nordby skole"},
        "groups": [{"external_id": "5A", "name": "5A", "year_level": 5}, {"external_id": "5B", "name": "5B", "year_level": 5}],
        "pupils": pupils,
    })
}

fn results(assessment: &str, rows: Vec<Value>) -> Value {
    json!({
        "assessment": {"external_id": assessment, "title": "Kartlegging lesing 5. trinn", "subject": "norsk",
                       "year_level": 5, "max_score": 40, "administered_on": "2026-09-15"},
        "results": rows,
    })
}

fn result(ext: &str, n: u32, score: f64) -> Value {
    json!({"external_id": ext, "pupil": {"identity_number": synthetic_id(n)}, "score": score,
           "status": "completed", "completed_at": "2026-09-15T09:30:00+02:00",
           "items": [{"item": "q1", "score": 1, "answer": "B"}]})
}

async fn load_roster(w: &World, n: u32) {
    let pupils = (0..n).map(|i| pupil(i, &[if i % 2 == 0 { "5A" } else { "5B" }])).collect();
    let r = w.app.deliver(&w.sas, "roster", &format!("roster-{}", uuid::Uuid::new_v4()), &roster(pupils)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---------------------------------------------------------------- sources

#[tokio::test]
async fn sources_show_their_secret_once_and_store_it_encrypted() {
    let w = world().await;
    assert!(w.sas.secret.starts_with("whsec_"));
    let raw = base64::engine::general_purpose::STANDARD.decode(&w.sas.secret["whsec_".len()..]).unwrap();
    assert_eq!(raw.len(), 32);
    let one = w.app.get(&format!("/admin/sources/{}", w.sas.id), &w.session.token).await;
    assert_eq!(one.status, 200);
    assert!(one.json().get("secret").is_none(), "never returned again: {}", one.text());
    let list = w.app.get("/admin/sources", &w.session.token).await;
    assert!(!list.text().contains(&w.sas.secret[6..]));
    assert_eq!(list.json()["items"].as_array().unwrap().len(), 2);
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT secret_enc FROM webhook_secrets").fetch_all(&w.app.pool).await.unwrap();
    for blob in stored {
        assert!(!blob.windows(raw.len()).any(|win| win == raw.as_slice()), "stored encrypted");
    }
    let audit: String = sqlx::query_scalar("SELECT string_agg(details::text, ' ') FROM audit_log")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert!(!audit.contains(&w.sas.secret[6..]));
    assert!(w.app.audit_actions(&w.admin.tenant_id).await.contains(&"source.created".to_owned()));
}

#[tokio::test]
async fn source_administration_is_for_tenant_admins_of_the_same_tenant() {
    let w = world().await;
    let bergen = w.app.seed_tenant("bergen").await;
    let sb = w.app.login(&bergen).await;
    let before = w.app.snapshot(true).await;
    w.app.get(&format!("/admin/sources/{}", w.sas.id), &sb.token).await.assert_problem(404, "not-found");
    w.app
        .post(&format!("/admin/sources/{}/rotate", w.sas.id), Some(&sb.token), json!({}))
        .await
        .assert_problem(404, "not-found");
    w.app
        .post(&format!("/admin/sources/{}/disable", w.sas.id), Some(&sb.token), json!({}))
        .await
        .assert_problem(404, "not-found");
    assert_eq!(w.app.get("/admin/sources", &sb.token).await.json()["items"], json!([]));
    let teacher = w.app.create_user(&w.session, &w.admin, "laerer", json!([])).await;
    let t = w.app.login(&teacher).await;
    let before_teacher = w.app.snapshot(true).await;
    w.app.get("/admin/sources", &t.token).await.assert_problem(403, "forbidden");
    w.app
        .post("/admin/sources", Some(&t.token), json!({"kind": "sas", "name": "x"}))
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(before_teacher, w.app.snapshot(true).await);
    let _ = before;
    for (body, pointer) in [
        (json!({"kind": "ftp", "name": "x"}), "/kind"),
        (json!({"kind": "sas", "name": ""}), "/name"),
        (json!({"kind": "sas", "name": "x", "public_key": "whpk_notakey"}), "/public_key"),
        (json!({"kind": "sas"}), "/name"),
        (json!({"kind": "sas", "name": "x", "secret": "mine"}), ""),
    ] {
        let p = w
            .app
            .post("/admin/sources", Some(&w.session.token), body.clone())
            .await
            .assert_problem(422, "validation-failed");
        assert!(p["errors"][0]["pointer"].as_str().unwrap().starts_with(pointer), "{body}: {p}");
    }
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_valid_for_the_overlap_only() {
    let w = world().await;
    load_roster(&w, 1).await;
    let r = w.app.post(&format!("/admin/sources/{}/rotate", w.publisher.id), Some(&w.session.token), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let new = Source { id: w.publisher.id.clone(), secret: body["secret"].as_str().unwrap().to_owned() };
    assert_ne!(new.secret, w.publisher.secret);
    assert!(body["previous_keys_valid_until"].is_string());
    assert_eq!(
        w.app.deliver(&w.publisher, "results", "old-1", &results("a1", vec![result("r1", 0, 10.0)])).await.status,
        200
    );
    assert_eq!(w.app.deliver(&new, "results", "new-1", &results("a1", vec![result("r1", 0, 11.0)])).await.status, 200);
    // Once the overlap has passed, only the new secret verifies.
    sqlx::query("UPDATE webhook_secrets SET expires_at = now() - interval '1 second' WHERE expires_at IS NOT NULL")
        .execute(&w.app.pool)
        .await
        .unwrap();
    w.app
        .deliver(&w.publisher, "results", "old-2", &results("a1", vec![result("r1", 0, 12.0)]))
        .await
        .assert_problem(401, "invalid-signature");
    assert_eq!(w.app.deliver(&new, "results", "new-2", &results("a1", vec![result("r1", 0, 12.0)])).await.status, 200);
    assert!(w.app.audit_actions(&w.admin.tenant_id).await.contains(&"source.key_rotated".to_owned()));
}

#[tokio::test]
async fn ed25519_sources_verify_v1a_signatures() {
    let w = world().await;
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([42; 32]));
    let pk = format!("whpk_{}", base64::engine::general_purpose::STANDARD.encode(kp.pk.as_ref()));
    let r = w
        .app
        .post("/admin/sources", Some(&w.session.token), json!({"kind": "sas", "name": "Visma", "public_key": pk}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.json().get("secret").is_none());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let body = serde_json::to_vec(&roster(vec![pupil(1, &["5A"])])).unwrap();
    let post = |sig: String, body: Vec<u8>| {
        let ts = unix_now();
        Request::builder()
            .method(Method::POST)
            .uri(format!("/ingest/{id}/roster"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", "msg-v1a")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig.replace("{ts}", &ts.to_string()))
            .body(body)
            .unwrap()
    };
    let ts = unix_now();
    let mut signed = format!("msg-v1a.{ts}.").into_bytes();
    signed.extend_from_slice(&body);
    let sig = base64::engine::general_purpose::STANDARD.encode(kp.sk.sign(&signed, None).as_ref());
    let other = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([43; 32]));
    let bad = base64::engine::general_purpose::STANDARD.encode(other.sk.sign(&signed, None).as_ref());
    w.app.call(post(format!("v1a,{bad}"), body.clone())).await.assert_problem(401, "invalid-signature");
    let ok = w.app.call(post(format!("v1a,{sig}"), body)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 1);
}

// ------------------------------------------------------------ verification

fn signed(w: &World, path: &str, id: &str, ts: i64, body: &[u8], secret: &str) -> Request<Vec<u8>> {
    let sig = standardwebhooks::Webhook::new(secret).unwrap().sign(id, ts, body).unwrap();
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body.to_vec())
        .unwrap_or_else(|_| panic!("{}", w.sas.id))
}

#[tokio::test]
async fn bad_deliveries_are_refused_and_change_nothing() {
    let w = world().await;
    let path = format!("/ingest/{}/roster", w.sas.id);
    let body = serde_json::to_vec(&roster(vec![pupil(1, &["5A"])])).unwrap();
    let now = unix_now();
    let before = w.app.snapshot(true).await;
    let wrong_secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([9u8; 32]));
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let mut cases: Vec<(&str, Request<Vec<u8>>, u16, &str)> = vec![
        ("wrong secret", signed(&w, &path, "m1", now, &body, &wrong_secret), 401, "invalid-signature"),
        ("stale", signed(&w, &path, "m1", now - 6 * 60, &body, &w.sas.secret), 401, "invalid-signature"),
        ("future", signed(&w, &path, "m1", now + 6 * 60, &body, &w.sas.secret), 401, "invalid-signature"),
        ("another source's secret", signed(&w, &path, "m1", now, &body, &w.publisher.secret), 401, "invalid-signature"),
        (
            "unknown source",
            signed(&w, &format!("/ingest/{}/roster", uuid::Uuid::new_v4()), "m1", now, &body, &w.sas.secret),
            404,
            "not-found",
        ),
        (
            "malformed source id",
            signed(&w, "/ingest/1%27OR1=1/roster", "m1", now, &body, &w.sas.secret),
            404,
            "not-found",
        ),
        (
            "roster from a publisher",
            signed(&w, &format!("/ingest/{}/roster", w.publisher.id), "m1", now, &body, &w.publisher.secret),
            403,
            "forbidden",
        ),
    ];
    let mut t = signed(&w, &path, "m1", now, &body, &w.sas.secret);
    *t.body_mut() = tampered;
    cases.push(("tampered body", t, 401, "invalid-signature"));
    for header_name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut r = signed(&w, &path, "m1", now, &body, &w.sas.secret);
        r.headers_mut().remove(header_name);
        cases.push(("missing header", r, 401, "invalid-signature"));
    }
    let mut empty_sig = signed(&w, &path, "m1", now, &body, &w.sas.secret);
    empty_sig.headers_mut().insert("webhook-signature", "v1,".parse().unwrap());
    cases.push(("empty signature", empty_sig, 401, "invalid-signature"));
    let mut text = signed(&w, &path, "m1", now, &body, &w.sas.secret);
    text.headers_mut().insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    cases.push(("wrong content type", text, 415, "unsupported-media-type"));
    cases.push((
        "malformed JSON",
        signed(&w, &path, "m2", now, b"{\"school\":", &w.sas.secret),
        400,
        "malformed-request",
    ));
    let too_big = vec![b' '; 10 * 1024 * 1024 + 1];
    cases.push(("over 10 MiB", signed(&w, &path, "m3", now, &too_big, &w.sas.secret), 413, "payload-too-large"));
    for (what, req, status, slug) in cases {
        let r = w.app.call(req).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        r.assert_problem(status, slug);
        assert!(r.header("www-authenticate").is_none(), "{what}: webhooks get no bearer challenge");
    }
    assert_eq!(before, w.app.snapshot(true).await, "nothing stored, not even an audit row");

    w.app.post(&format!("/admin/sources/{}/disable", w.sas.id), Some(&w.session.token), json!({})).await;
    let r = w.app.call(signed(&w, &path, "m9", now, &body, &w.sas.secret)).await;
    r.assert_problem(403, "source-disabled");
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 0);
}

#[tokio::test]
async fn a_replayed_webhook_id_returns_the_original_outcome_and_applies_nothing_twice() {
    let w = world().await;
    load_roster(&w, 3).await;
    let body = results("a1", vec![result("r1", 0, 10.0), result("r2", 1, 20.0)]);
    let first = w.app.deliver(&w.publisher, "results", "delivery-1", &body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["created"], 2);
    // Same id, even with a different body (a retry must not apply twice).
    let changed = results("a1", vec![result("r1", 0, 39.0)]);
    let again = w.app.deliver(&w.publisher, "results", "delivery-1", &changed).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("webhook-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());
    let score: f64 =
        sqlx::query_scalar("SELECT score FROM results WHERE external_id = 'r1'").fetch_one(&w.app.pool).await.unwrap();
    assert_eq!(score, 10.0);
    let ingested = w.app.audit_actions(&w.admin.tenant_id).await.iter().filter(|a| *a == "results.ingested").count();
    assert_eq!(ingested, 1);
    // The same id for another kind of post is a conflict, not a replay.
    let sas_results = w.app.deliver(&w.sas, "results", "roster-once", &body).await;
    assert_eq!(sas_results.status, 200, "{}", sas_results.text());
    let roster_body = roster(vec![pupil(0, &["5A"])]);
    let clash = w.app.deliver(&w.sas, "roster", "roster-once", &roster_body).await;
    clash.assert_problem(409, "conflict");
    assert_eq!(w.app.count("SELECT count(*) FROM pupils WHERE left_at IS NULL").await, 3);
    // The same id from another source is a different delivery.
    let other = w.app.create_source(&w.session, "publisher").await;
    assert_eq!(w.app.deliver(&other, "results", "delivery-1", &body).await.json()["created"], 2);
}

// ----------------------------------------------------------------- roster

#[tokio::test]
async fn a_roster_syncs_one_school_fully_and_marks_leavers() {
    let w = world().await;
    let (teacher_user, _) = {
        let t = w.app.create_user(&w.session, &w.admin, "laerer", json!([])).await;
        sqlx::query("UPDATE users SET feide_username = 'laerer@nordby.no' WHERE id = $1::uuid")
            .bind(&t.user_id)
            .execute(&w.app.pool)
            .await
            .unwrap();
        (t, ())
    };
    let mut body = roster((0..6).map(|i| pupil(i, &[if i < 3 { "5A" } else { "5B" }])).collect());
    body["teachers"] = json!([{"feide_username": "laerer@nordby.no", "groups": ["5A"]}, {"feide_username": "ukjent@nordby.no", "groups": ["5B"]}]);
    let r = w.app.deliver(&w.sas, "roster", "roster-1", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert_eq!(s["pupils"]["created"], 6);
    assert_eq!(s["groups"], 2);
    assert_eq!(s["memberships"], 6);
    assert_eq!(s["teachers"]["assignments"], 1);
    assert_eq!(s["teachers"]["unknown_teachers"], json!([1]));
    let me = w.app.login(&teacher_user).await;
    let scopes = w.app.get("/auth/me", &me.token).await.json()["scopes"].clone();
    assert_eq!(scopes.as_array().unwrap().len(), 1);
    assert_eq!(scopes[0]["role"], "teacher");

    // Identity numbers: encrypted, indexed, never in clear anywhere.
    let digits = synthetic_id(0);
    let dump: String = sqlx::query_scalar(
        "SELECT string_agg(t::text, ' ') FROM (SELECT p::text AS t FROM pupils p UNION ALL SELECT a::text FROM audit_log a \
         UNION ALL SELECT d::text FROM webhook_deliveries d) x",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert!(!dump.contains(&digits), "identity number stored in clear");
    assert!(!r.text().contains(&digits));
    assert_eq!(
        w.app.count("SELECT count(*) FROM pupils WHERE identity_enc IS NULL OR identity_index IS NULL").await,
        0
    );

    // Re-sync: pupil 0 renamed and moved to 5B, pupil 5 gone, pupil 6 new.
    let mut pupils: Vec<Value> = (1..5).map(|i| pupil(i, &[if i < 3 { "5A" } else { "5B" }])).collect();
    let mut renamed = pupil(0, &["5B"]);
    renamed["given_name"] = json!("Åse Marie");
    pupils.push(renamed);
    pupils.push(pupil(6, &["5A"]));
    let r = w.app.deliver(&w.sas, "roster", "roster-2", &roster(pupils)).await;
    let s = r.json();
    assert_eq!(s["pupils"]["created"], 1, "{s}");
    assert_eq!(s["pupils"]["updated"], 1, "{s}");
    assert_eq!(s["pupils"]["unchanged"], 4, "{s}");
    assert_eq!(s["pupils"]["left"], 1, "{s}");
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 7, "leavers are kept");
    assert_eq!(w.app.count("SELECT count(*) FROM pupils WHERE left_at = current_date").await, 1);
    assert_eq!(w.app.count("SELECT count(*) FROM pupils WHERE given_name = 'Åse Marie'").await, 1);
    assert_eq!(
        w.app
            .count("SELECT count(*) FROM group_memberships m JOIN groups g ON g.id = m.group_id JOIN pupils p ON p.id = m.pupil_id WHERE g.external_id = '5B' AND p.given_name = 'Åse Marie'")
            .await,
        1
    );
    assert_eq!(w.app.count("SELECT count(*) FROM group_memberships").await, 6, "memberships replaced");
    // The teacher's grant came from the roster; a roster without teachers keeps it.
    assert_eq!(w.app.count("SELECT count(*) FROM role_grants WHERE role = 'teacher'").await, 1);
    // A returning pupil is no longer a leaver.
    let back: Vec<Value> = (0..7).map(|i| pupil(i, &["5A"])).collect();
    let s = w.app.deliver(&w.sas, "roster", "roster-3", &roster(back)).await.json();
    assert_eq!(s["pupils"]["left"], 0);
    assert_eq!(w.app.count("SELECT count(*) FROM pupils WHERE left_at IS NOT NULL").await, 0);
}

#[tokio::test]
async fn an_invalid_roster_is_rejected_whole_with_pointers() {
    let w = world().await;
    load_roster(&w, 2).await;
    let before = w.app.snapshot(true).await;
    let mut bad_check = synthetic_id(9);
    let last = bad_check.pop().unwrap();
    bad_check.push(if last == '0' { '1' } else { '0' });
    let cases = vec![
        (json!({"identity_number": bad_check, "given_name": "A", "family_name": "B"}), "/pupils/2/identity_number"),
        (json!({"identity_number": "31029912345", "given_name": "A", "family_name": "B"}), "/pupils/2/identity_number"),
        (json!({"identity_number": "abc", "given_name": "A", "family_name": "B"}), "/pupils/2/identity_number"),
        (json!({"given_name": "A", "family_name": "B"}), "/pupils/2"),
        (json!({"feide_username": "not-feide", "given_name": "A", "family_name": "B"}), "/pupils/2/feide_username"),
        (json!({"feide_username": "a@b.no", "given_name": "", "family_name": "B"}), "/pupils/2/given_name"),
        (
            json!({"feide_username": "a@b.no", "given_name": "A", "family_name": "B", "year_level": 14}),
            "/pupils/2/year_level",
        ),
        (json!({"feide_username": "a@b.no", "given_name": "A", "family_name": "B", "gender": "x"}), "/pupils/2/gender"),
        (
            json!({"feide_username": "a@b.no", "given_name": "A", "family_name": "B", "groups": ["9Z"]}),
            "/pupils/2/groups/0",
        ),
        (json!({"feide_username": "a@b.no", "given_name": "A", "family_name": "B", "nickname": "x"}), "/pupils/2"),
        (pupil(0, &["5A"]), "/pupils/2"),
    ];
    for (bad, pointer) in cases {
        let pupils = vec![pupil(0, &["5A"]), pupil(1, &["5B"]), bad.clone()];
        let r = w.app.deliver(&w.sas, "roster", &format!("bad-{}", uuid::Uuid::new_v4()), &roster(pupils)).await;
        let p = r.assert_problem(422, "validation-failed");
        let pointers: Vec<&str> =
            p["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
        assert!(pointers.iter().any(|x| x.starts_with(pointer)), "{bad}: wanted {pointer}, got {p}");
        for digits in [synthetic_id(9), bad_check.clone(), "31029912345".to_owned()] {
            assert!(!r.text().contains(&digits), "identity numbers never appear in errors: {}", r.text());
        }
    }
    assert_eq!(before, w.app.snapshot(true).await, "the whole roster is rejected; nothing changes");
}

#[tokio::test]
async fn production_refuses_synthetic_identity_numbers() {
    let w = world_with(HashMap::from([("accept_synthetic_identity_numbers", "false")])).await;
    let r = w.app.deliver(&w.sas, "roster", "r1", &roster(vec![pupil(1, &["5A"])])).await;
    let p = r.assert_problem(422, "validation-failed");
    assert_eq!(p["errors"][0]["pointer"], "/pupils/0/identity_number");
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("synthetic"), "{p}");
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 0);
}

#[tokio::test]
async fn names_in_any_script_and_sql_are_stored_verbatim() {
    let w = world().await;
    let names = [
        "Åse Ødegård",
        "Zoe\u{0308} Ma\u{0301}rquez",
        "مريم العلي",
        "Robert'); DROP TABLE pupils;--",
        "李小龍",
        "Sámi Áŋŋá",
    ];
    let pupils: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"feide_username": format!("elev{i}@nordby.no"), "given_name": n, "family_name": n, "groups": ["5A"]}))
        .collect();
    let mut body = roster(pupils);
    body["school"]["name"] = json!("Skole'; DELETE FROM schools;--");
    let r = w.app.deliver(&w.sas, "roster", "unicode", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let stored: Vec<String> = sqlx::query_scalar("SELECT given_name FROM pupils ORDER BY feide_username")
        .fetch_all(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(stored, names);
    assert_eq!(w.app.count("SELECT count(*) FROM schools WHERE name = 'Skole''; DELETE FROM schools;--'").await, 1);
}

// ---------------------------------------------------------------- results

#[tokio::test]
async fn results_are_stored_upserted_and_summarised() {
    let w = world().await;
    load_roster(&w, 4).await;
    let mut rows: Vec<Value> = (0..3).map(|i| result(&format!("r{i}"), i, 10.0 + i as f64)).collect();
    rows.push(json!({"external_id": "r-unknown", "pupil": {"identity_number": synthetic_id(99)}, "score": 1, "status": "completed"}));
    rows.push(json!({"external_id": "r-absent", "pupil": {"identity_number": synthetic_id(3)}, "status": "absent"}));
    let r = w.app.deliver(&w.publisher, "results", "res-1", &results("lesing-h26", rows.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert_eq!(
        (
            s["received"].as_u64(),
            s["created"].as_u64(),
            s["updated"].as_u64(),
            s["unchanged"].as_u64(),
            s["rejected"].as_u64()
        ),
        (Some(5), Some(4), Some(0), Some(0), Some(1)),
        "{s}"
    );
    assert_eq!(s["rejected_rows"], json!([{"index": 3, "external_id": "r-unknown", "reason": "unknown_pupil"}]));
    assert_eq!(w.app.count("SELECT count(*) FROM results").await, 4);
    assert_eq!(
        w.app.count("SELECT count(*) FROM assessments WHERE max_score = 40 AND administered_on = '2026-09-15'").await,
        1
    );
    let items: Value =
        sqlx::query_scalar("SELECT items FROM results WHERE external_id = 'r0'").fetch_one(&w.app.pool).await.unwrap();
    assert_eq!(items, json!([{"item": "q1", "score": 1.0, "answer": "B"}]));

    // Re-sent with one new score: updated 1, the rest unchanged.
    rows[1]["score"] = json!(33.5);
    let s = w.app.deliver(&w.publisher, "results", "res-2", &results("lesing-h26", rows)).await.json();
    assert_eq!(
        (s["created"].as_u64(), s["updated"].as_u64(), s["unchanged"].as_u64()),
        (Some(0), Some(1), Some(3)),
        "{s}"
    );
    assert_eq!(s["updated_external_ids"], json!(["r1"]));
    let score: f64 =
        sqlx::query_scalar("SELECT score FROM results WHERE external_id = 'r1'").fetch_one(&w.app.pool).await.unwrap();
    assert_eq!(score, 33.5);
    assert_eq!(w.app.count("SELECT count(*) FROM results").await, 4);
}

#[tokio::test]
async fn restricted_pupils_and_other_tenants_pupils_get_no_results() {
    let w = world().await;
    load_roster(&w, 2).await;
    sqlx::query("UPDATE pupils SET restricted = true WHERE given_name = 'Elev1'").execute(&w.app.pool).await.unwrap();
    // Bergen has pupil 7; Oslo's publisher cannot reach it.
    let bergen = w.app.seed_tenant("bergen").await;
    let sb = w.app.login(&bergen).await;
    let bergen_sas = w.app.create_source(&sb, "sas").await;
    let r = w.app.deliver(&bergen_sas, "roster", "b1", &roster(vec![pupil(7, &["5A"])])).await;
    assert_eq!(r.status, 200);
    let rows = vec![result("x0", 0, 5.0), result("x1", 1, 5.0), result("x7", 7, 5.0)];
    let s = w.app.deliver(&w.publisher, "results", "res", &results("a", rows)).await.json();
    assert_eq!(s["created"], 1);
    let reasons: Vec<&str> =
        s["rejected_rows"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["processing_restricted", "unknown_pupil"]);
    assert_eq!(
        w.app
            .count("SELECT count(*) FROM results r JOIN pupils p ON p.id = r.pupil_id WHERE p.tenant_id <> r.tenant_id")
            .await,
        0
    );
    assert_eq!(w.app.count("SELECT count(*) FROM results").await, 1);
}

#[tokio::test]
async fn restricted_pupils_keep_their_results_and_memberships_as_they_are() {
    let w = world().await;
    load_roster(&w, 3).await;
    let s = w.app.deliver(&w.publisher, "results", "r1", &results("a", vec![result("x1", 1, 5.0)])).await.json();
    assert_eq!(s["created"], 1);
    sqlx::query("UPDATE pupils SET restricted = true WHERE given_name = 'Elev1'").execute(&w.app.pool).await.unwrap();
    let memberships = "SELECT count(*) FROM group_memberships m JOIN pupils p ON p.id = m.pupil_id \
                       WHERE p.given_name = 'Elev1'";
    assert_eq!(w.app.count(memberships).await, 1);

    // The publisher re-sends the same result naming another pupil: it stays put.
    let s = w.app.deliver(&w.publisher, "results", "r2", &results("a", vec![result("x1", 2, 9.0)])).await.json();
    assert_eq!((s["updated"].as_u64(), s["rejected"].as_u64()), (Some(0), Some(1)), "{s}");
    assert_eq!(s["rejected_rows"][0]["reason"], "processing_restricted");
    let held: (String, f64) = sqlx::query_as(
        "SELECT p.given_name, r.score FROM results r JOIN pupils p ON p.id = r.pupil_id WHERE r.external_id = 'x1'",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(held, ("Elev1".to_owned(), 5.0));

    // A roster that moves the restricted pupil to another group, or leaves them
    // out, changes neither their memberships nor their status.
    for pupils in [vec![pupil(0, &["5A"]), pupil(1, &["5A"]), pupil(2, &["5A"])], vec![pupil(0, &["5A"])]] {
        let r = w.app.deliver(&w.sas, "roster", &uuid::Uuid::new_v4().to_string(), &roster(pupils)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let group: String = sqlx::query_scalar(
            "SELECT g.external_id FROM group_memberships m JOIN groups g ON g.id = m.group_id \
             JOIN pupils p ON p.id = m.pupil_id WHERE p.given_name = 'Elev1'",
        )
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
        assert_eq!(group, "5B");
        assert_eq!(w.app.count("SELECT count(*) FROM pupils WHERE given_name = 'Elev1' AND left_at IS NULL").await, 1);
    }
}

#[tokio::test]
async fn invalid_results_reject_the_whole_post_with_a_pointer_per_bad_row() {
    let w = world().await;
    load_roster(&w, 3).await;
    let before = w.app.snapshot(true).await;
    let good = || result("ok", 0, 10.0);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut r = result("bad", 1, 10.0);
        f(&mut r);
        r
    };
    let cases: Vec<(Value, &str)> = vec![
        (results("a", vec![good(), with(&|r| r["score"] = json!(41))]), "/results/1/score"),
        (results("a", vec![good(), with(&|r| r["score"] = json!(-1))]), "/results/1/score"),
        (results("a", vec![good(), with(&|r| r["score"] = json!("ten"))]), "/results/1/score"),
        (results("a", vec![good(), with(&|r| r["status"] = json!("done"))]), "/results/1/status"),
        (
            results(
                "a",
                vec![
                    good(),
                    with(&|r| {
                        r.as_object_mut().unwrap().remove("score");
                    }),
                ],
            ),
            "/results/1/score",
        ),
        (
            results("a", vec![good(), with(&|r| r["completed_at"] = json!("2026-02-30T10:00:00Z"))]),
            "/results/1/completed_at",
        ),
        (results("a", vec![good(), with(&|r| r["completed_at"] = json!("yesterday"))]), "/results/1/completed_at"),
        (
            results("a", vec![good(), with(&|r| r["completed_at"] = json!("2026-09-14T09:41:00+20:00"))]),
            "/results/1/completed_at",
        ),
        (
            results("a", vec![good(), with(&|r| r["pupil"] = json!({"identity_number": "12345678901"}))]),
            "/results/1/pupil/identity_number",
        ),
        (results("a", vec![good(), with(&|r| r["pupil"] = json!({}))]), "/results/1/pupil"),
        (results("a", vec![good(), with(&|r| r["external_id"] = json!("ok"))]), "/results/1/external_id"),
        (
            results("a", vec![good(), with(&|r| r["pupil"] = json!({"identity_number": synthetic_id(0)}))]),
            "/results/1/pupil",
        ),
        (results("a", vec![good(), with(&|r| r["grade"] = json!("A"))]), "/results/1"),
        (
            results("a", vec![good(), with(&|r| r["items"] = json!([{"item": "", "score": 1}]))]),
            "/results/1/items/0/item",
        ),
        (results("a", vec![]), "/results"),
        (
            {
                let mut b = results("a", vec![good()]);
                b["assessment"]["administered_on"] = json!("15.09.2026");
                b
            },
            "/assessment/administered_on",
        ),
        (
            {
                let mut b = results("a", vec![good()]);
                b["assessment"]["max_score"] = json!(0);
                b
            },
            "/assessment/max_score",
        ),
        (
            {
                let mut b = results("a", vec![good()]);
                b["assessment"]["title"] = json!("nul\u{0}byte");
                b
            },
            "/assessment/title",
        ),
        (json!({"results": []}), "/assessment"),
    ];
    for (body, pointer) in cases {
        let r = w.app.deliver(&w.publisher, "results", &format!("bad-{}", uuid::Uuid::new_v4()), &body).await;
        let p = r.assert_problem(422, "validation-failed");
        let pointers: Vec<&str> =
            p["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
        assert!(pointers.iter().any(|x| x.starts_with(pointer)), "wanted {pointer}, got {p}");
        assert!(!r.text().contains("12345678901"));
    }
    // Several bad rows: a pointer for each.
    let body = results(
        "a",
        vec![
            good(),
            with(&|r| r["score"] = json!(99)),
            with(&|r| {
                r["external_id"] = json!("b2");
                r["status"] = json!("?");
                r["pupil"] = json!({"identity_number": synthetic_id(2)});
            }),
        ],
    );
    let p = w.app.deliver(&w.publisher, "results", "multi", &body).await.assert_problem(422, "validation-failed");
    assert_eq!(p["errors"].as_array().unwrap().len(), 2, "{p}");
    assert_eq!(before, w.app.snapshot(true).await, "nothing stored");
}

#[tokio::test]
async fn huge_arrays_are_refused() {
    let w = world().await;
    load_roster(&w, 1).await;
    let rows: Vec<Value> = (0..10_001)
        .map(|i| json!({"external_id": format!("r{i}"), "pupil": {"feide_username": "x@y.no"}, "status": "absent"}))
        .collect();
    let r = w.app.deliver(&w.publisher, "results", "huge", &results("a", rows)).await;
    let p = r.assert_problem(422, "validation-failed");
    assert_eq!(p["errors"][0]["pointer"], "/results");
    assert_eq!(w.app.count("SELECT count(*) FROM results").await, 0);
}

#[tokio::test]
async fn concurrent_deliveries_of_one_webhook_id_apply_once() {
    let w = world().await;
    load_roster(&w, 40).await;
    let rows: Vec<Value> = (0..40).map(|i| result(&format!("c{i}"), i, 5.0)).collect();
    let body = results("concurrent", rows);
    let (a, b, c) = tokio::join!(
        w.app.deliver(&w.publisher, "results", "same-id", &body),
        w.app.deliver(&w.publisher, "results", "same-id", &body),
        w.app.deliver(&w.publisher, "results", "same-id", &body),
    );
    for r in [&a, &b, &c] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["created"], 40, "every answer is the original outcome");
    }
    let replayed = [&a, &b, &c].iter().filter(|r| r.header("webhook-replayed").is_some()).count();
    assert_eq!(replayed, 2);
    assert_eq!(w.app.count("SELECT count(*) FROM results").await, 40);
    assert_eq!(w.app.count("SELECT count(*) FROM audit_log WHERE action = 'results.ingested'").await, 1);
}

#[tokio::test]
async fn feide_usernames_cannot_be_shared_or_stolen_between_pupils() {
    let w = world().await;
    let with_feide = |n: u32, feide: &str| {
        let mut p = pupil(n, &["5A"]);
        p["feide_username"] = json!(feide);
        p
    };
    let r = w
        .app
        .deliver(&w.sas, "roster", "dup", &roster(vec![with_feide(1, "ola@nordby.no"), with_feide(2, "OLA@nordby.no")]))
        .await;
    let p = r.assert_problem(422, "validation-failed");
    assert_eq!(p["errors"][0]["pointer"], "/pupils/1/feide_username");
    let ok = w
        .app
        .deliver(&w.sas, "roster", "ok", &roster(vec![with_feide(1, "ola@nordby.no"), with_feide(2, "kari@nordby.no")]))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let before = w.app.snapshot(true).await;
    // Pupil 2 (known by identity number) now claims pupil 1's Feide username.
    let r = w.app.deliver(&w.sas, "roster", "steal", &roster(vec![with_feide(2, "ola@nordby.no")])).await;
    r.assert_problem(409, "conflict");
    assert_eq!(before, w.app.snapshot(true).await, "the roster applied nothing");
}

#[tokio::test]
async fn one_pupil_named_two_ways_cannot_get_two_results() {
    let w = world().await;
    let mut p = pupil(1, &["5A"]);
    p["feide_username"] = json!("ola@nordby.no");
    assert_eq!(w.app.deliver(&w.sas, "roster", "r", &roster(vec![p])).await.status, 200);
    let by_feide =
        json!({"external_id": "b", "pupil": {"feide_username": "ola@nordby.no"}, "score": 2, "status": "completed"});
    let r =
        w.app.deliver(&w.publisher, "results", "two-ways", &results("a", vec![result("a", 1, 1.0), by_feide])).await;
    let p = r.assert_problem(422, "validation-failed");
    assert_eq!(p["errors"][0]["pointer"], "/results/1/pupil");
    assert_eq!(
        w.app.count("SELECT count(*) FROM results").await + w.app.count("SELECT count(*) FROM assessments").await,
        0
    );
}
