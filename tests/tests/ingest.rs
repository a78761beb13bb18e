//! The ingest component: webhook sources, signature verification,
//! idempotency, rosters and results — through spin.toml's routes against a
//! fresh database per test.

use base64::Engine;
use http::{header, Method, Request};
use serde_json::{json, Value};
use std::collections::HashMap;
use tavle_tests::{cursors, synthetic_id, unix_now, Api, Session, Source, Staff, TestApp};

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
    let r = w.app.deliver(&w.sas, "roster", &uuid::Uuid::new_v4().to_string(), &roster(pupils)).await;
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

/// A rotation request with a raw JSON body (numbers `json!` cannot write).
fn rotation(w: &World, source: &Source, body: &str) -> Request<Vec<u8>> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("/admin/sources/{}/rotate", source.id))
        .header(header::AUTHORIZATION, format!("Bearer {}", w.session.token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.as_bytes().to_vec())
        .unwrap()
}

#[tokio::test]
async fn rotation_takes_an_overlap_per_call_and_zero_revokes_the_old_secret_at_once() {
    let w = world_with(HashMap::from([("webhook_secret_overlap_hours", "6")])).await;
    load_roster(&w, 1).await;
    let post = |source: &Source, id: &str, score: f64| {
        let body = results("a1", vec![result("r1", 0, score)]);
        let (app, source, id) = (&w.app, source.clone(), id.to_owned());
        async move { app.deliver(&source, "results", &id, &body).await }
    };

    // Outside 0..=the configured maximum, or not an integer: 422, nothing rotated.
    let before = w.app.snapshot(true).await;
    for body in [
        r#"{"overlap_hours": 7}"#,
        r#"{"overlap_hours": -1}"#,
        r#"{"overlap_hours": 1.5}"#,
        r#"{"overlap_hours": "0"}"#,
        r#"{"overlap_hours": null}"#,
        r#"{"overlap_hours": 99999999999999999999}"#,
        r#"{"overlap_hours": -9223372036854775808}"#,
    ] {
        let r = w.app.call(rotation(&w, &w.publisher, body)).await;
        let p = r.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], "/overlap_hours", "{body}: {p}");
        assert!(r.json().get("secret").is_none());
    }
    let p = w.app.call(rotation(&w, &w.publisher, r#"{"overlap_hours": 7}"#)).await.json();
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("0 to 6"), "{p}");
    assert_eq!(before, w.app.snapshot(true).await, "refused rotations changed nothing");

    // 0: a leaked secret stops verifying now.
    let r = w.app.call(rotation(&w, &w.publisher, r#"{"overlap_hours": 0}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let new = Source { id: w.publisher.id.clone(), secret: body["secret"].as_str().unwrap().to_owned() };
    assert_eq!(body["keys"].as_array().unwrap().len(), 1, "only the new key is live: {body}");
    let ended: bool = sqlx::query_scalar("SELECT $1::timestamptz <= now()")
        .bind(body["previous_keys_valid_until"].as_str().unwrap())
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert!(ended, "{body}");
    let rotated = w.app.snapshot(true).await;
    let old = post(&w.publisher, "old-after-zero", 10.0).await;
    let p = old.assert_problem(401, "invalid-signature");
    assert_eq!(p["detail"], "no valid signature for this source");
    assert_eq!(rotated, w.app.snapshot(true).await, "the refused delivery changed nothing");
    assert_eq!(post(&new, "new-after-zero", 11.0).await.status, 200);
    let details: Value = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'source.key_rotated' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(details["overlap_hours"], 0, "{details}");

    // An explicit overlap, and the configured one by default. Either only
    // ever shortens what a key has left, never lengthens it.
    let hours_left = || async {
        let h: Vec<f64> = sqlx::query_scalar(
            "SELECT round(extract(epoch FROM expires_at - now())::numeric / 3600, 1)::float8 FROM webhook_secrets \
             WHERE source_id = $1::uuid AND expires_at IS NOT NULL ORDER BY created_at",
        )
        .bind(&w.sas.id)
        .fetch_all(&w.app.pool)
        .await
        .unwrap();
        h
    };
    for (body, hours) in [
        (r#"{"overlap_hours": 2}"#, vec![2.0]),
        ("{}", vec![2.0, 6.0]),
        (r#"{"overlap_hours": 6}"#, vec![2.0, 6.0, 6.0]),
        (r#"{"overlap_hours": 1}"#, vec![1.0, 1.0, 1.0, 1.0]),
    ] {
        let r = w.app.call(rotation(&w, &w.sas, body)).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        assert_eq!(hours_left().await, hours, "{body}");
    }
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
async fn extreme_webhook_timestamps_get_the_normal_401_and_change_nothing() {
    let w = world().await;
    let body = serde_json::to_vec(&roster(vec![pupil(1, &["5A"])])).unwrap();
    let before = w.app.snapshot(true).await;
    for (kind, source) in [("roster", &w.sas), ("results", &w.publisher)] {
        let path = format!("/ingest/{}/{kind}", source.id);
        for (timestamp, why) in [
            ("-9223372036854775808", "more than 5 minutes old"),
            ("9223372036854775807", "more than 5 minutes in the future"),
            ("99999999999999999999", "not a Unix timestamp"),
            ("abc", "not a Unix timestamp"),
        ] {
            // Validly signed for now; only the timestamp header is hostile.
            let mut req = signed(&w, &path, "m-extreme", unix_now(), &body, &source.secret);
            req.headers_mut().insert("webhook-timestamp", timestamp.parse().unwrap());
            let r = w.app.call(req).await;
            let p = r.assert_problem(401, "invalid-signature");
            assert!(p["detail"].as_str().unwrap().contains(why), "{kind} {timestamp}: {p}");
        }
    }
    assert_eq!(before, w.app.snapshot(true).await, "nothing stored, not even an audit row");
}

#[tokio::test]
async fn webhook_ids_outside_the_narrow_format_are_refused_before_anything_is_stored() {
    let w = world().await;
    let path = format!("/ingest/{}/roster", w.sas.id);
    let body = serde_json::to_vec(&roster(vec![pupil(1, &["5A"])])).unwrap();
    let number = synthetic_id(1);
    let before = w.app.snapshot(true).await;
    for id in [
        number.clone(),
        format!("msg-{number}"),
        "12345678901".to_owned(),
        "x".repeat(65),
        "msg 1".to_owned(),
        "msg:1".to_owned(),
        "msg/1".to_owned(),
        format!("{{{}}}", uuid::Uuid::new_v4()),
    ] {
        // Correctly signed over that very id: the id itself is refused.
        let r = w.app.call(signed(&w, &path, &id, unix_now(), &body, &w.sas.secret)).await;
        let p = r.assert_problem(401, "invalid-signature");
        assert!(p["detail"].as_str().unwrap().starts_with("webhook-id must be"), "{id}: {p}");
        assert!(!r.text().contains(&number), "{id}: {}", r.text());
    }
    // Not ASCII at all (the header is not even text to us).
    let mut req = signed(&w, &path, "m", unix_now(), &body, &w.sas.secret);
    req.headers_mut().insert("webhook-id", http::HeaderValue::from_bytes("ø-1".as_bytes()).unwrap());
    w.app.call(req).await.assert_problem(401, "invalid-signature");
    assert_eq!(before, w.app.snapshot(true).await, "nothing stored, not even an audit row");

    // What senders use is accepted: UUIDs (whatever digits they hold), svix-style
    // ids, up to 64 characters, up to 10 digits in a row.
    for id in [
        uuid::Uuid::new_v4().to_string(),
        "01234567-0123-4012-8123-012345678901".to_owned(),
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".to_owned(),
        "a.b_c-D".repeat(9) + "1",
        "1234567890".to_owned(),
    ] {
        let r = w.app.call(signed(&w, &path, &id, unix_now(), &body, &w.sas.secret)).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
    }
    assert_eq!(w.app.count("SELECT count(*) FROM webhook_deliveries").await, 5);
}

#[tokio::test]
async fn an_identity_number_sent_as_request_id_never_reaches_a_delivery_audit_row() {
    let w = world().await;
    let number = synthetic_id(1);
    let path = format!("/ingest/{}/roster", w.sas.id);
    let body = serde_json::to_vec(&roster(vec![pupil(2, &["5A"])])).unwrap();
    let mut req = signed(&w, &path, "roster-1", unix_now(), &body, &w.sas.secret);
    req.headers_mut().insert("x-request-id", number.parse().unwrap());
    let r = w.app.call(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.header("x-request-id").unwrap();
    assert!(echoed != number && uuid::Uuid::parse_str(echoed).is_ok(), "{echoed}");
    let request_id: String = sqlx::query_scalar("SELECT request_id FROM audit_log WHERE action = 'roster.applied'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(request_id, echoed, "the audit row carries the generated id");
    assert_eq!(
        w.app.count(&format!("SELECT count(*) FROM audit_log a WHERE strpos(a::text, '{number}') > 0")).await,
        0
    );
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
        let r = w.app.deliver(&w.sas, "roster", &uuid::Uuid::new_v4().to_string(), &roster(pupils)).await;
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
async fn names_in_any_script_and_sql_are_stored_as_sent_in_nfc() {
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
    // Verbatim, except that combining marks are composed (NFC): "Zoë Márquez".
    let mut expected = names.map(str::to_owned);
    expected[1] = "Zo\u{eb} M\u{e1}rquez".to_owned();
    assert_eq!(stored, expected);
    assert_eq!(w.app.count("SELECT count(*) FROM schools WHERE name = 'Skole''; DELETE FROM schools;--'").await, 1);
}

#[tokio::test]
async fn roster_names_are_stored_in_nfc_and_the_same_names_composed_change_nothing() {
    let w = world().await;
    let named = |n: u32, given: &str, family: &str| {
        let mut p = pupil(n, &["5A"]);
        p["given_name"] = json!(given);
        p["family_name"] = json!(family);
        p
    };
    // Decomposed, as some systems (and macOS input) send them.
    let decomposed =
        roster(vec![named(0, " A\u{30A}se ", "O\u{308}sterga\u{30A}rd"), named(1, "Ame\u{301}lie", "Mu\u{308}ller")]);
    let r = w.app.deliver(&w.sas, "roster", "nfd", &decomposed).await;
    assert_eq!((r.status, r.json()["pupils"]["created"].clone()), (200, json!(2)), "{}", r.text());
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT given_name, family_name FROM pupils ORDER BY given_name")
            .fetch_all(&w.app.pool)
            .await
            .unwrap();
    let stored: Vec<(&str, &str)> = stored.iter().map(|(g, f)| (g.as_str(), f.as_str())).collect();
    assert_eq!(stored, [("Am\u{e9}lie", "M\u{fc}ller"), ("\u{c5}se", "\u{d6}sterg\u{e5}rd")]);
    assert_eq!(
        w.app.count("SELECT count(*) FROM pupils WHERE NOT (given_name IS NFC NORMALIZED AND family_name IS NFC NORMALIZED)").await,
        0
    );
    // The same names composed are the same names: nothing to update.
    let pupils_before: Vec<String> =
        sqlx::query_scalar("SELECT p::text FROM pupils p ORDER BY id").fetch_all(&w.app.pool).await.unwrap();
    let composed = roster(vec![named(0, "\u{c5}se", "\u{d6}sterg\u{e5}rd"), named(1, "Am\u{e9}lie", "M\u{fc}ller")]);
    let r = w.app.deliver(&w.sas, "roster", "nfc", &composed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["pupils"]["updated"].clone(), r.json()["pupils"]["unchanged"].clone()), (json!(0), json!(2)));
    let pupils_after: Vec<String> =
        sqlx::query_scalar("SELECT p::text FROM pupils p ORDER BY id").fetch_all(&w.app.pool).await.unwrap();
    assert_eq!(pupils_before, pupils_after);

    // Lengths are counted in NFC: 200 letters are 200, however they were typed;
    // 201 are too many, and the whole roster is refused.
    let long = "e\u{301}".repeat(200);
    let r = w.app.deliver(&w.sas, "roster", "long", &roster(vec![named(2, &long, "Berg")])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = w.app.snapshot(true).await;
    for (given, family, pointer) in [
        ("e\u{301}".repeat(201), "Berg".to_owned(), "/pupils/0/given_name"),
        ("Ola".to_owned(), "\u{301}".repeat(201), "/pupils/0/family_name"),
        ("\u{301}\u{0}".to_owned(), "Berg".to_owned(), "/pupils/0/given_name"),
    ] {
        let r = w
            .app
            .deliver(&w.sas, "roster", &uuid::Uuid::new_v4().to_string(), &roster(vec![named(3, &given, &family)]))
            .await;
        let p = r.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], pointer, "{p}");
    }
    assert_eq!(before, w.app.snapshot(true).await, "refused rosters change nothing");
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
        let r = w.app.deliver(&w.publisher, "results", &uuid::Uuid::new_v4().to_string(), &body).await;
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

// ------------------------------------------------ school bindings, transfers

fn roster_for(school: &str, pupils: Vec<Value>) -> Value {
    let mut body = roster(pupils);
    body["school"] = json!({"external_id": school, "name": format!("{school} skole")});
    body
}

/// Registers a `sas` source bound to `schools`.
async fn bound_source(w: &World, name: &str, schools: Value) -> Source {
    let r = w
        .app
        .post("/admin/sources", Some(&w.session.token), json!({"kind": "sas", "name": name, "schools": schools}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    Source { id: body["id"].as_str().unwrap().to_owned(), secret: body["secret"].as_str().unwrap().to_owned() }
}

async fn set_schools(w: &World, token: &str, source_id: &str, body: Value) -> tavle_tests::TestResponse {
    w.app.send(Method::PUT, &format!("/admin/sources/{source_id}/schools"), Some(token), Some(body)).await
}

async fn school_id(w: &World, external_id: &str) -> String {
    sqlx::query_scalar("SELECT id::text FROM schools WHERE external_id = $1")
        .bind(external_id)
        .fetch_one(&w.app.pool)
        .await
        .unwrap()
}

async fn pupil_id(w: &World, given_name: &str) -> String {
    sqlx::query_scalar("SELECT id::text FROM pupils WHERE given_name = $1")
        .bind(given_name)
        .fetch_one(&w.app.pool)
        .await
        .unwrap()
}

/// The `pupil.transferred` audit rows: (target kind, target id, actor, details), oldest first.
async fn transfers(w: &World) -> Vec<(String, String, String, Value)> {
    sqlx::query_as(
        "SELECT target_kind, target_id, actor, details FROM audit_log WHERE action = 'pupil.transferred' ORDER BY id",
    )
    .fetch_all(&w.app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_bound_source_syncs_its_own_schools_and_a_roster_for_another_is_403_and_changes_nothing() {
    let w = world().await;
    let r = w
        .app
        .post(
            "/admin/sources",
            Some(&w.session.token),
            json!({"kind": "sas", "name": "Visma", "schools": [" sørby ", "nordby"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["schools"], json!(["nordby", "sørby"]), "trimmed, as rosters name schools");
    let bound = Source {
        id: r.json()["id"].as_str().unwrap().to_owned(),
        secret: r.json()["secret"].as_str().unwrap().to_owned(),
    };
    let unbound = w.app.get(&format!("/admin/sources/{}", w.sas.id), &w.session.token).await.json();
    assert_eq!(unbound["schools"], json!([]));

    // Its own schools, one of which does not exist yet: created and synced.
    let r = w
        .app
        .deliver(&bound, "roster", "nordby-1", &roster_for("nordby", vec![pupil(0, &["5A"]), pupil(1, &["5B"])]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = w.app.deliver(&bound, "roster", "sorby-1", &roster_for(" sørby", vec![pupil(2, &["5A"])])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.app.count("SELECT count(*) FROM schools").await, 2);

    // Any other school: refused before anything is applied, whatever the
    // roster holds (a pupil it would move, teachers whose grants it would replace).
    let teacher = w.app.create_user(&w.session, &w.admin, "laerer", json!([])).await;
    sqlx::query("UPDATE users SET feide_username = 'laerer@vestby.no' WHERE id = $1::uuid")
        .bind(&teacher.user_id)
        .execute(&w.app.pool)
        .await
        .unwrap();
    let mut vestby = roster_for("vestby", vec![pupil(1, &["5A"]), pupil(3, &["5A"])]);
    vestby["teachers"] = json!([{"feide_username": "laerer@vestby.no", "groups": ["5A"]}]);
    let before = w.app.snapshot(true).await;
    let r = w.app.deliver(&bound, "roster", "vestby-1", &vestby).await;
    let p = r.assert_problem(403, "forbidden");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("bound to a set of schools") && !detail.contains("vestby"),
        "names the rule, not the school: {p}"
    );
    assert_eq!(before, w.app.snapshot(true).await, "nothing applied, no delivery record, no audit row");

    // The refused delivery was not stored: once the admin binds the school,
    // the sender's retry of the same webhook id applies.
    let r = set_schools(&w, &w.session.token, &bound.id, json!({"schools": ["nordby", "sørby", "vestby"]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["schools"], json!(["nordby", "sørby", "vestby"]));
    let r = w.app.deliver(&bound, "roster", "vestby-1", &vestby).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("webhook-replayed").is_none());
    assert_eq!(
        (r.json()["pupils"]["created"].clone(), r.json()["teachers"]["assignments"].clone()),
        (json!(1), json!(1))
    );

    let set: Vec<Value> = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'source.schools_set' AND target_id = $1 ORDER BY id",
    )
    .bind(&bound.id)
    .fetch_all(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(
        set,
        [
            json!({"schools": ["nordby", "sørby"], "previous": []}),
            json!({"schools": ["nordby", "sørby", "vestby"], "previous": ["nordby", "sørby"]}),
        ]
    );
    let list = w.app.get("/admin/sources", &w.session.token).await.json();
    let sets: Vec<&Value> = list["items"].as_array().unwrap().iter().map(|s| &s["schools"]).collect();
    assert_eq!(sets.iter().filter(|s| s.as_array().unwrap().len() == 3).count(), 1, "{list}");
}

#[tokio::test]
async fn an_unbound_source_syncs_any_school_and_an_empty_set_unbinds_again() {
    let w = world().await;
    for (i, school) in ["nordby", "sørby"].into_iter().enumerate() {
        let r = w.app.deliver(&w.sas, "roster", &format!("school-{i}"), &roster_for(school, vec![])).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = set_schools(&w, &w.session.token, &w.sas.id, json!({"schools": ["nordby"]})).await;
    assert_eq!((r.status, r.json()["schools"].clone()), (200, json!(["nordby"])), "{}", r.text());
    assert_eq!(w.app.deliver(&w.sas, "roster", "nordby-2", &roster_for("nordby", vec![])).await.status, 200);
    w.app.deliver(&w.sas, "roster", "sorby-2", &roster_for("sørby", vec![])).await.assert_problem(403, "forbidden");
    let r = set_schools(&w, &w.session.token, &w.sas.id, json!({"schools": []})).await;
    assert_eq!((r.status, r.json()["schools"].clone()), (200, json!([])), "{}", r.text());
    assert_eq!(w.app.deliver(&w.sas, "roster", "sorby-2", &roster_for("sørby", vec![])).await.status, 200);
    assert_eq!(w.app.count("SELECT count(*) FROM webhook_source_schools").await, 0);
    let last: Value = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'source.schools_set' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(last, json!({"schools": [], "previous": ["nordby"]}));
}

#[tokio::test]
async fn a_transfer_between_schools_is_audited_once_without_personal_data_and_shown_to_the_privacy_officer() {
    let w = world().await;
    let privacy = w.app.create_user(&w.session, &w.admin, "personvern", json!([{"role": "privacy_officer"}])).await;
    let po = w.app.login(&privacy).await;
    let r = w
        .app
        .deliver(&w.sas, "roster", "nordby-1", &roster_for("nordby", (0..4).map(|i| pupil(i, &["5A"])).collect()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    sqlx::query("UPDATE pupils SET restricted = true WHERE given_name = 'Elev2'").execute(&w.app.pool).await.unwrap();
    let sorby = bound_source(&w, "Sørby SAS", json!(["sorby"])).await;
    assert!(transfers(&w).await.is_empty());
    assert_eq!(w.app.get("/admin/transfers", &po.token).await.json()["items"], json!([]));

    // Pupil 1 moves to Sørby; pupil 2 is restricted and stays where they are.
    let moving = vec![pupil(1, &["5B"]), pupil(2, &["5A"]), pupil(9, &["5A"])];
    let r = w.app.deliver(&sorby, "roster", "sorby-1", &roster_for("sorby", moving.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = &r.json()["pupils"];
    assert_eq!(
        (s["created"].clone(), s["updated"].clone(), s["restricted_unchanged"].clone()),
        (json!(1), json!(1), json!(1)),
        "{s}"
    );
    let (nordby, sorby_school, elev1) =
        (school_id(&w, "nordby").await, school_id(&w, "sorby").await, pupil_id(&w, "Elev1").await);
    let moved = transfers(&w).await;
    assert_eq!(
        moved,
        [(
            "pupil".to_owned(),
            elev1.clone(),
            "system:webhook".to_owned(),
            json!({"from_school_id": nordby, "to_school_id": sorby_school, "source_id": sorby.id}),
        )],
        "exactly one transfer, with from, to and source only"
    );
    let row: String = sqlx::query_scalar("SELECT a::text FROM audit_log a WHERE action = 'pupil.transferred'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    for personal in [synthetic_id(1), "Elev1".to_owned(), "Nordmann".to_owned()] {
        assert!(!row.contains(&personal), "no personal data in the audit row: {row}");
    }
    assert_eq!(
        w.app
            .count(&format!("SELECT count(*) FROM pupils WHERE school_id = '{nordby}' AND given_name = 'Elev2'"))
            .await,
        1
    );
    // The pupil is in Sørby's 5B only: no longer in the groups of the school they left.
    let groups: Vec<(String, String)> = sqlx::query_as(
        "SELECT s.external_id, g.external_id FROM group_memberships m JOIN groups g ON g.id = m.group_id \
         JOIN schools s ON s.id = g.school_id WHERE m.pupil_id = $1::uuid",
    )
    .bind(&elev1)
    .fetch_all(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(groups, [("sorby".to_owned(), "5B".to_owned())]);

    // Re-syncing either school moves nobody: still one transfer.
    assert_eq!(w.app.deliver(&sorby, "roster", "sorby-2", &roster_for("sorby", moving)).await.status, 200);
    let nordby_again = vec![pupil(0, &["5A"]), pupil(2, &["5A"]), pupil(3, &["5A"])];
    let r = w.app.deliver(&w.sas, "roster", "nordby-2", &roster_for("nordby", nordby_again)).await;
    assert_eq!((r.status, r.json()["pupils"]["left"].clone()), (200, json!(0)), "{}", r.text());
    assert_eq!(transfers(&w).await.len(), 1);

    // The privacy officer sees it (and that view is itself an access record).
    let r = w.app.get("/admin/transfers", &po.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(page["next_cursor"], Value::Null);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["pupil_id"], elev1);
    assert_eq!(items[0]["from_school"], json!({"id": nordby, "name": "nordby skole"}));
    assert_eq!(items[0]["to_school"], json!({"id": sorby_school, "name": "sorby skole"}));
    assert_eq!(items[0]["source"], json!({"id": sorby.id, "name": "Sørby SAS"}));
    assert!(!r.text().contains("Elev1") && !r.text().contains(&synthetic_id(1)));
    let logged: Vec<(String, String)> =
        sqlx::query_as("SELECT action, array_to_string(pupil_ids, ',') FROM access_log ORDER BY id")
            .fetch_all(&w.app.pool)
            .await
            .unwrap();
    assert_eq!(logged, [("pupil_transfers.viewed".to_owned(), elev1.clone())]);
    w.app.get("/admin/transfers", &w.session.token).await.assert_problem(403, "forbidden");

    // Back to Nordby: a second transfer, newest first, one per page.
    let r = w.app.deliver(&w.sas, "roster", "nordby-3", &roster_for("nordby", vec![pupil(1, &["5A"])])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let moved = transfers(&w).await;
    assert_eq!(moved.len(), 2);
    assert_eq!(moved[1].3, json!({"from_school_id": sorby_school, "to_school_id": nordby, "source_id": w.sas.id}));
    let first = w.app.get("/admin/transfers?limit=1", &po.token).await.json();
    assert_eq!(first["items"][0]["to_school"]["id"], nordby, "{first}");
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = w.app.get(&format!("/admin/transfers?limit=1&cursor={cursor}"), &po.token).await.json();
    assert_eq!(second["items"][0]["to_school"]["id"], sorby_school, "{second}");
    assert_eq!(second["next_cursor"], Value::Null);
}

#[tokio::test]
async fn source_and_transfer_cursors_open_only_for_their_tenant_caller_and_list() {
    let w = world().await;
    let both = json!([{"role": "tenant_admin"}, {"role": "privacy_officer"}]);
    // Siri and Eva each read both lists: one caller on two lists, two callers on one.
    let siri = w.app.create_user(&w.session, &w.admin, "siri", both.clone()).await;
    let siri = w.app.login(&siri).await;
    let eva = w.app.create_user(&w.session, &w.admin, "eva", both.clone()).await;
    let eva = w.app.login(&eva).await;
    let bergen = w.app.seed_tenant("bergen").await;
    let sb = w.app.login(&bergen).await;
    let bergen_sas = w.app.create_source(&sb, "sas").await;
    w.app.create_source(&sb, "publisher").await;
    let berit = w.app.create_user(&sb, &bergen, "berit", both).await;
    let berit = w.app.login(&berit).await;
    // Two transfers in each tenant: two pupils move from Nordby to Sørby.
    for (source, tenant, pupils) in [(&w.sas, "oslo", [0, 1]), (&bergen_sas, "bergen", [2, 3])] {
        for school in ["nordby", "sorby"] {
            let roster = roster_for(school, pupils.iter().map(|&n| pupil(n, &["5A"])).collect());
            let r = w.app.deliver(source, "roster", &format!("{tenant}-{school}"), &roster).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    assert_eq!(transfers(&w).await.len(), 4);

    let (sources, moves) = ("/admin/sources?limit=1", "/admin/transfers?limit=1");
    for path in [sources, moves] {
        // Paging goes on as before; the cursor shows nothing of the item it follows.
        let first = w.app.get(path, &siri.token).await.json();
        let own = first["next_cursor"].as_str().unwrap().to_owned();
        let shown = first["items"][0]["id"].as_str().unwrap().to_owned();
        cursors::assert_opaque(&own, &[&shown, &w.admin.tenant_id]);
        let next = w.app.get(&cursors::with_cursor(path, &own), &siri.token).await;
        assert_eq!(next.status, 200, "{}", next.text());
        assert_ne!(next.json()["items"][0]["id"], first["items"][0]["id"]);
        assert!(next.json()["items"][0]["id"].is_string());

        let other_list = if path == sources { moves } else { sources };
        let mut foreign: Vec<(String, String)> = vec![
            ("another tenant's".into(), cursors::next_cursor(&w.app, path, &berit.token).await),
            ("another user's".into(), cursors::next_cursor(&w.app, path, &eva.token).await),
            ("another list's".into(), cursors::next_cursor(&w.app, other_list, &siri.token).await),
        ];
        let clear =
            if path == sources { json!({"id": shown}) } else { json!({"before": shown.parse::<i64>().unwrap()}) };
        foreign.extend(cursors::tampered(&own, &clear));
        let before = w.app.snapshot(true).await;
        for (what, cursor) in &foreign {
            cursors::assert_refused(&w.app, path, &siri.token, cursor, what).await;
        }
        assert_eq!(before, w.app.snapshot(true).await, "refused cursors change nothing, not even the logs");
    }
}

#[tokio::test]
async fn hostile_school_sets_are_refused_and_change_nothing() {
    let w = world().await;
    let bergen = w.app.seed_tenant("bergen").await;
    let sb = w.app.login(&bergen).await;
    let bergen_sas = w.app.create_source(&sb, "sas").await;
    let teacher = w.app.create_user(&w.session, &w.admin, "laerer", json!([])).await;
    let t = w.app.login(&teacher).await;
    let before = w.app.snapshot(true).await;
    let many = |n: usize| Value::Array((0..n).map(|i| json!(format!("s{i}"))).collect());
    for (body, pointer) in [
        (json!({"schools": ["nordby", "nord\u{7}by"]}), "/schools/1"),
        (json!({"schools": ["nordby", "nord\u{0}by"]}), "/schools/1"),
        (json!({"schools": ["\u{202e}\n"]}), "/schools/0"),
        (json!({"schools": [""]}), "/schools/0"),
        (json!({"schools": ["   "]}), "/schools/0"),
        (json!({"schools": ["x".repeat(201)]}), "/schools/0"),
        (json!({"schools": many(501)}), "/schools"),
        (json!({"schools": many(5_000)}), "/schools"),
        (json!({"schools": ["nordby", "sørby", " nordby "]}), "/schools/2"),
        (json!({"schools": [7]}), "/schools/0"),
        (json!({"schools": [null]}), "/schools/0"),
        (json!({"schools": null}), "/schools"),
        (json!({"schools": "nordby"}), "/schools"),
        (json!({}), "/schools"),
        (json!({"schools": [], "kind": "publisher"}), ""),
    ] {
        let r = set_schools(&w, &w.session.token, &w.sas.id, body.clone()).await;
        let p = r.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], pointer, "{body}: {p}");
        assert!(!r.text().contains("nord\u{7}by"), "values are not echoed");
    }
    // Publishers are bound to nothing, not even an empty set.
    for body in [json!({"schools": ["nordby"]}), json!({"schools": []})] {
        let p = set_schools(&w, &w.session.token, &w.publisher.id, body).await.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], "/schools", "{p}");
    }
    for (body, pointer) in [
        (json!({"kind": "publisher", "name": "Forlag", "schools": ["nordby"]}), "/schools"),
        (json!({"kind": "publisher", "name": "Forlag", "schools": []}), "/schools"),
        (json!({"kind": "sas", "name": "SAS", "schools": ["ok", "\u{1b}[2J"]}), "/schools/1"),
        (json!({"kind": "sas", "name": "SAS", "schools": ["a", "a"]}), "/schools/1"),
        (json!({"kind": "sas", "name": "SAS", "schools": many(501)}), "/schools"),
        (json!({"kind": "sas", "name": "SAS", "schools": null}), "/schools"),
    ] {
        let r = w.app.post("/admin/sources", Some(&w.session.token), body.clone()).await;
        let p = r.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], pointer, "{body}: {p}");
    }
    // Too large for an admin body at all.
    let r = set_schools(&w, &w.session.token, &w.sas.id, json!({"schools": many(20_000)})).await;
    r.assert_problem(413, "payload-too-large");
    // Another tenant's source, unknown and malformed ids: 404 as for any unknown id.
    let good = json!({"schools": ["nordby"]});
    for id in [bergen_sas.id.as_str(), &uuid::Uuid::new_v4().to_string(), "1%27OR1=1"] {
        set_schools(&w, &w.session.token, id, good.clone()).await.assert_problem(404, "not-found");
    }
    set_schools(&w, &sb.token, &w.sas.id, good.clone()).await.assert_problem(404, "not-found");
    // Only tenant admins; only PUT.
    set_schools(&w, &t.token, &w.sas.id, good.clone()).await.assert_problem(403, "forbidden");
    w.app
        .send(Method::PUT, &format!("/admin/sources/{}/schools", w.sas.id), None, Some(good.clone()))
        .await
        .assert_problem(401, "unauthenticated");
    w.app
        .post(&format!("/admin/sources/{}/schools", w.sas.id), Some(&w.session.token), good.clone())
        .await
        .assert_problem(405, "method-not-allowed");
    let text = Request::builder()
        .method(Method::PUT)
        .uri(format!("/admin/sources/{}/schools", w.sas.id))
        .header(header::AUTHORIZATION, format!("Bearer {}", w.session.token))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(serde_json::to_vec(&good).unwrap())
        .unwrap();
    w.app.call(text).await.assert_problem(415, "unsupported-media-type");
    w.app.get("/admin/transfers", &t.token).await.assert_problem(403, "forbidden");
    // Beneath the API, the database itself keeps a binding inside its
    // source's tenant and off publishers.
    for (tenant, source) in [(&bergen.tenant_id, &w.sas.id), (&w.admin.tenant_id, &w.publisher.id)] {
        let refused = sqlx::query(
            "INSERT INTO webhook_source_schools (tenant_id, source_id, school_external_id) VALUES ($1::uuid, $2::uuid, 'nordby')",
        )
        .bind(tenant)
        .bind(source)
        .execute(&w.app.pool)
        .await;
        assert!(refused.is_err_and(|e| e.to_string().contains("foreign key")), "{tenant} {source}");
    }
    assert_eq!(before, w.app.snapshot(true).await, "refused requests changed nothing, not even the audit log");
}

// ---------------------------------------------------------------- subtests and thresholds

/// An assessment with a threshold on the total and two subtests, one with a
/// threshold; results carry subtest scores.
fn screening(rows: Vec<Value>) -> Value {
    let mut body = results("lesing-h26", rows);
    body["assessment"]["family"] = json!("lesing-kartlegging");
    body["assessment"]["threshold"] = json!(15);
    body["assessment"]["subtests"] = json!([
        {"id": "ordlesing", "title": "Ordlesing", "max_score": 20, "threshold": 8},
        {"id": "forstaelse", "title": "Leseforståelse", "max_score": 20},
    ]);
    body
}

fn screened(ext: &str, n: u32, ordlesing: f64, forstaelse: f64) -> Value {
    let mut r = result(ext, n, ordlesing + forstaelse);
    r["subtests"] = json!([{"id": "ordlesing", "score": ordlesing}, {"id": "forstaelse", "score": forstaelse}]);
    r["items"] = json!([{"item": "q1", "score": 1, "subtest": "ordlesing"}]);
    r
}

#[tokio::test]
async fn subtests_thresholds_and_subtest_scores_are_stored_and_a_changed_threshold_is_reported() {
    let w = world().await;
    load_roster(&w, 2).await;
    let rows = vec![screened("r0", 0, 6.0, 10.0), screened("r1", 1, 18.0, 19.0)];
    let r = w.app.deliver(&w.publisher, "results", "sub-1", &screening(rows.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert_eq!((s["created"].as_u64(), &s["threshold_changes"]), (Some(2), &json!([])), "{s}");
    let (family, threshold): (String, f64) =
        sqlx::query_as("SELECT family, threshold FROM assessments").fetch_one(&w.app.pool).await.unwrap();
    assert_eq!((family.as_str(), threshold), ("lesing-kartlegging", 15.0));
    let subtests: Vec<(String, i32, f64, Option<f64>)> =
        sqlx::query_as("SELECT key, position, max_score, threshold FROM assessment_subtests ORDER BY position")
            .fetch_all(&w.app.pool)
            .await
            .unwrap();
    assert_eq!(subtests, [("ordlesing".into(), 0, 20.0, Some(8.0)), ("forstaelse".into(), 1, 20.0, None)]);
    let scores: Value = sqlx::query_scalar("SELECT subtest_scores FROM results WHERE external_id = 'r0'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(scores, json!({"ordlesing": 6.0, "forstaelse": 10.0}));

    // The flags are stored with the result (migration 0016).
    let flags = "SELECT array_to_string(flagged_subtests, ',') FROM results WHERE external_id = 'r0'";
    let r0_flags = || async { sqlx::query_scalar::<_, String>(flags).fetch_one(&w.app.pool).await.unwrap() };
    assert_eq!(r0_flags().await, "ordlesing");

    // Re-sent with new thresholds: they are updated, and the answer says so.
    let mut body = screening(rows);
    body["assessment"]["threshold"] = json!(12);
    body["assessment"]["subtests"][1]["threshold"] = json!(10);
    let s = w.app.deliver(&w.publisher, "results", "sub-2", &body).await.json();
    assert_eq!(
        s["threshold_changes"],
        json!([{"subtest": null, "from": 15.0, "to": 12.0}, {"subtest": "forstaelse", "from": null, "to": 10.0}]),
        "{s}"
    );
    assert_eq!((s["unchanged"].as_u64(), &s["subtests_removed"]), (Some(2), &json!([])));
    assert_eq!(
        w.app.count("SELECT count(*) FROM assessment_subtests WHERE key = 'forstaelse' AND threshold = 10").await,
        1
    );
    assert_eq!(w.app.count("SELECT count(*) FROM assessments WHERE threshold = 12").await, 1);
    // The new threshold flags the stored score 10 of r0, which was not re-scored.
    assert_eq!(r0_flags().await, "ordlesing,forstaelse");
    assert_eq!(w.app.stale_flags().await, 0, "every stored flag follows the thresholds");
}

/// The widest flags the validation admits (50 subtests with 100-character
/// keys, all flagged) are stored: no index entry carries them, whose size
/// PostgreSQL limits (2,704 bytes; 0019's index first included them).
#[tokio::test]
async fn a_result_flagged_on_fifty_subtests_with_the_longest_keys_is_stored() {
    let w = world().await;
    load_roster(&w, 1).await;
    // Random keys: they compress as badly as real ones may.
    let keys: Vec<String> = (0..50)
        .map(|_| {
            let hex: String = (0..4).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
            hex[..100].to_owned()
        })
        .collect();
    let mut body = results("wide", vec![]);
    body["assessment"]["max_score"] = json!(50);
    body["assessment"]["subtests"] = keys
        .iter()
        .map(|k| json!({"id": k, "title": "Delprøve", "max_score": 1, "threshold": 0.5}))
        .collect::<Vec<_>>()
        .into();
    let mut row = result("wide-0", 0, 0.0);
    row["subtests"] = keys.iter().map(|k| json!({"id": k, "score": 0})).collect::<Vec<_>>().into();
    body["results"] = json!([row]);
    let r = w.app.deliver(&w.publisher, "results", "wide-1", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.app.count("SELECT cardinality(flagged_subtests)::int8 FROM results").await, 50);
    assert_eq!(w.app.stale_flags().await, 0);
}

/// The stored flags follow every writer (migrations 0016 and 0018): a
/// re-send that re-orders the subtests, an operator's SQL that renames a
/// subtest's key, a direct write of the flags, and a truncation refused.
#[tokio::test]
async fn stored_flags_follow_a_reorder_a_renamed_subtest_and_a_forged_flag() {
    let w = world().await;
    load_roster(&w, 2).await;
    let rows = vec![screened("r0", 0, 6.0, 10.0), screened("r1", 1, 18.0, 19.0)];
    let mut body = screening(rows);
    body["assessment"]["subtests"][1]["threshold"] = json!(10);
    let r = w.app.deliver(&w.publisher, "results", "order-1", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let flags = "SELECT array_to_string(flagged_subtests, ',') FROM results WHERE external_id = 'r0'";
    let r0_flags = || async { sqlx::query_scalar::<_, String>(flags).fetch_one(&w.app.pool).await.unwrap() };
    assert_eq!(r0_flags().await, "ordlesing,forstaelse");

    // Re-ordered by the publisher: the flags keep the publisher's order.
    body["assessment"]["subtests"].as_array_mut().unwrap().reverse();
    let r = w.app.deliver(&w.publisher, "results", "order-2", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r0_flags().await, "forstaelse,ordlesing");
    assert_eq!(w.app.stale_flags().await, 0);

    // An operator renames a key (the scores still name the old one): the
    // result is no longer flagged on it.
    sqlx::query("UPDATE assessment_subtests SET key = 'ordlesing-ny' WHERE key = 'ordlesing'")
        .execute(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(r0_flags().await, "forstaelse");
    assert_eq!(w.app.stale_flags().await, 0);

    // Flags written directly are set from the thresholds all the same.
    sqlx::query("UPDATE results SET total_flagged = NOT total_flagged, flagged_subtests = '{x}'")
        .execute(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(r0_flags().await, "forstaelse");
    assert_eq!(w.app.stale_flags().await, 0);

    let truncated = sqlx::query("TRUNCATE assessment_subtests").execute(&w.app.pool).await;
    assert!(truncated.unwrap_err().to_string().contains("DELETE its rows"));
    assert_eq!(w.app.count("SELECT count(*) FROM assessment_subtests").await, 2);
}

#[tokio::test]
async fn bad_subtests_and_thresholds_are_refused_and_change_nothing() {
    let w = world().await;
    load_roster(&w, 2).await;
    let r = w.app.deliver(&w.publisher, "results", "base", &screening(vec![screened("r0", 0, 6.0, 10.0)])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = w.app.snapshot(true).await;
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut b = screening(vec![screened("r0", 0, 6.0, 10.0), screened("r1", 1, 12.0, 12.0)]);
        f(&mut b);
        b
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("threshold above the maximum", edit(&|b| b["assessment"]["threshold"] = json!(41)), "/assessment/threshold"),
        ("negative threshold", edit(&|b| b["assessment"]["threshold"] = json!(-1)), "/assessment/threshold"),
        (
            "subtest threshold above its maximum",
            edit(&|b| b["assessment"]["subtests"][0]["threshold"] = json!(21)),
            "/assessment/subtests/0/threshold",
        ),
        (
            "negative subtest threshold",
            edit(&|b| b["assessment"]["subtests"][1]["threshold"] = json!(-0.5)),
            "/assessment/subtests/1/threshold",
        ),
        (
            "a score for an unknown subtest",
            edit(&|b| b["results"][1]["subtests"][1]["id"] = json!("staving")),
            "/results/1/subtests/1/id",
        ),
        (
            "a subtest score above its maximum",
            edit(&|b| b["results"][1]["subtests"][0]["score"] = json!(20.5)),
            "/results/1/subtests/0/score",
        ),
        (
            "an item of an unknown subtest",
            edit(&|b| b["results"][0]["items"][0]["subtest"] = json!("staving")),
            "/results/0/items/0/subtest",
        ),
        (
            "two subtests with one id",
            edit(&|b| b["assessment"]["subtests"][1]["id"] = json!("ordlesing")),
            "/assessment/subtests/1/id",
        ),
    ];
    for (what, body, pointer) in cases {
        let r = w.app.deliver(&w.publisher, "results", &uuid::Uuid::new_v4().to_string(), &body).await;
        let p = r.assert_problem(422, "validation-failed");
        let pointers: Vec<&str> =
            p["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
        assert_eq!(pointers.first(), Some(&pointer), "{what}: {p}");
    }
    assert_eq!(before, w.app.snapshot(true).await, "nothing stored");

    // Re-sent without a subtest that a stored result (r0, not in this post) still scores: refused.
    let mut body = screening(vec![screened("r1", 1, 12.0, 12.0)]);
    body["assessment"]["subtests"] = json!([{"id": "ordlesing", "title": "Ordlesing", "max_score": 20}]);
    body["results"][0]["subtests"] = json!([{"id": "ordlesing", "score": 12}]);
    let p = w.app.deliver(&w.publisher, "results", "drop-1", &body).await.assert_problem(422, "validation-failed");
    assert_eq!(p["errors"][0]["pointer"], "/assessment/subtests", "{p}");
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("forstaelse"), "{p}");
    assert_eq!(before, w.app.snapshot(true).await, "nothing stored");

    // Re-sending r0 too, without that subtest's score, may drop it.
    body["results"] = json!([{"external_id": "r0", "pupil": {"identity_number": synthetic_id(0)}, "score": 6,
                              "status": "completed", "subtests": [{"id": "ordlesing", "score": 6}]}]);
    let r = w.app.deliver(&w.publisher, "results", "drop-2", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["subtests_removed"], json!(["forstaelse"]));
    assert_eq!(w.app.count("SELECT count(*) FROM assessment_subtests").await, 1);
}

/// A results post locks its assessment, then (key share) its pupils, then
/// writes; an erasure (a subject request or retention) locks its pupils,
/// then (key share) the assessments of their anonymised rows, then deletes
/// their results. The post's assessment lock is `FOR NO KEY UPDATE` and it
/// writes nothing before its pupils are locked, so the erasure goes on
/// instead of the two deadlocking, also when the post changes a threshold
/// (which rewrites the stored results' flags), and the post, which waited
/// for the pupil, no longer finds it.
#[tokio::test]
async fn a_results_post_waits_for_an_erasure_of_its_pupil_without_deadlocking_and_rejects_the_erased_pupil() {
    use tavle_core::db::{uuid, Db, SqlxDb};
    let w = world().await;
    load_roster(&w, 2).await;
    let rows = |base: f64| (0..2).map(|i| result(&format!("r{i}"), i, base + i as f64)).collect::<Vec<_>>();
    let with_threshold = |base: f64, threshold: f64| {
        let mut post = results("lesing-h26", rows(base));
        post["assessment"]["threshold"] = json!(threshold);
        post
    };
    let r = w.app.deliver(&w.publisher, "results", "res-1", &with_threshold(10.0, 5.0)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let app = &w.app;
    let text =
        |sql: &'static str| async move { sqlx::query_scalar::<_, String>(sql).fetch_one(&app.pool).await.unwrap() };
    let tenant = text("SELECT id::text FROM tenants WHERE slug = 'oslo'").await;
    let pupil = text("SELECT pupil_id::text FROM results WHERE external_id = 'r0'").await;

    // The erasure's transaction, on a connection of its own, holds the pupil.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&w.app.db_url).await.unwrap();
    let mut eraser = SqlxDb::new(pool.clone());
    eraser.execute("BEGIN", &[]).await.unwrap();
    eraser.execute("SELECT 1 FROM pupils WHERE id = $1::uuid FOR UPDATE", &[uuid(&pupil)]).await.unwrap();
    // The publisher re-sends the assessment with new scores and a higher
    // threshold, which flags the stored results (10 and 11 <= 15) as the
    // assessment is written: the post locks the assessment, then waits for
    // the pupil before it writes anything, so it holds none of the pupil's
    // results that the erasure deletes.
    let resent = with_threshold(20.0, 15.0);
    let post = w.app.deliver(&w.publisher, "results", "res-2", &resent);
    tokio::pin!(post);
    w.app.until_waiting_for_a_lock(post.as_mut(), "the post").await;
    // The erasure anonymises the pupil's result (key share on the assessment
    // the post holds) and deletes the pupil.
    let erasure = async {
        let erased = tavle_core::erasure::erase_pupils(
            &mut eraser,
            &tenant,
            std::slice::from_ref(&pupil),
            tavle_core::erasure::Reason::Retention,
        )
        .await;
        let committed = eraser.execute("COMMIT", &[]).await;
        (erased, committed)
    };
    let (erasure, r) = tokio::join!(erasure, &mut post);
    let (erased, committed) = erasure;
    assert_eq!(erased.expect("the erasure was not aborted").pupils, 1);
    committed.expect("the erasure committed");
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert_eq!(s["rejected_rows"], json!([{"index": 0, "external_id": "r0", "reason": "unknown_pupil"}]), "{s}");
    assert_eq!(s["updated_external_ids"], json!(["r1"]), "{s}");
    assert_eq!(s["threshold_changes"], json!([{"subtest": null, "from": 5.0, "to": 15.0}]), "{s}");
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 1);
    assert_eq!(w.app.count("SELECT count(*) FROM results").await, 1, "nothing stored for the erased pupil");
    assert_eq!(w.app.count("SELECT count(*) FROM anonymised_results WHERE score = 10").await, 1);
    assert_eq!(w.app.stale_flags().await, 0);
    drop(eraser);
    pool.close().await;
}
