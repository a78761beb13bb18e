//! Data-subject requests (component `subject-requests`): registration and
//! lifecycle, rectification that a roster does not undo, erasure proven by a
//! scan of every column of every table, restriction, objection, and the bad
//! input of the issue, each leaving the database as it was.

use serde_json::{json, Value};
use tavle_tests::subjects::{roster, scan, world, World};
use tavle_tests::{synthetic_id, Api, TestResponse};

async fn register(w: &World, body: Value) -> TestResponse {
    w.app.post("/subject-requests", Some(&w.privacy.token), body).await
}

/// Registers a request for the world's pupil and returns its id.
async fn registered(w: &World, kind: &str, extra: Value) -> String {
    registered_for(w, &w.pupil, kind, extra).await
}

async fn registered_for(w: &World, pupil: &str, kind: &str, extra: Value) -> String {
    let mut body = json!({"kind": kind, "subject": {"pupil_id": pupil}, "identity_verification": "BankID, mother"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = register(w, body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

async fn step(w: &World, id: &str, step: &str, body: Value) -> TestResponse {
    w.app.post(&format!("/subject-requests/{id}/{step}"), Some(&w.privacy.token), body).await
}

async fn fulfil(w: &World, id: &str, body: Value) -> TestResponse {
    step(w, id, "fulfil", body).await
}

#[tokio::test]
async fn a_request_is_registered_followed_to_its_due_date_extended_once_and_its_history_shown() {
    let w = world().await;
    // Received 45 days ago: overdue by now. Due dates are calendar months,
    // clipped to the month's end as PostgreSQL's interval arithmetic does.
    let (received, due): (String, String) =
        sqlx::query_as("SELECT (current_date - 45)::text, ((current_date - 45) + interval '1 month')::date::text")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    // By identity number (in the body, never in the URL).
    let r = register(
        &w,
        json!({"kind": "access", "subject": {"identity_number": synthetic_id(0)}, "received_on": received,
               "identity_verification": "Guardian showed passport at the school office"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let req = r.json();
    assert_eq!(req["subject"], json!({"kind": "pupil", "id": w.pupil}));
    assert_eq!((req["status"].as_str(), req["due_on"].as_str()), (Some("received"), Some(due.as_str())));
    assert_eq!(req["overdue"], true);
    let id = req["id"].as_str().unwrap().to_owned();
    // The lookup is in the privacy officer's list of searches, without the number.
    let searched: Value = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'pupil.searched' AND details->>'via' = 'subject_request'",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(searched["hit"], json!(true));
    assert!(!searched.to_string().contains(&synthetic_id(0)));

    let r = w.app.get("/subject-requests?overdue=true", &w.privacy.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"][0]["id"], json!(id));

    let r = step(&w, &id, "start", json!({})).await;
    assert_eq!(r.json()["status"], "in_progress", "{}", r.text());
    // Too late to extend an overdue request (Art. 12(3): the subject is told
    // within the month): 409, and nothing changes.
    let before = w.app.snapshot(true).await;
    step(&w, &id, "extend", json!({"months": 1, "reason": "late"})).await.assert_problem(409, "conflict");
    assert_eq!(w.app.snapshot(true).await, before, "a refused extension changes nothing");

    // One received 20 days ago is extended, once, by up to two further months.
    let (received, extended): (String, String) =
        sqlx::query_as("SELECT (current_date - 20)::text, ((current_date - 20) + interval '3 months')::date::text")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    let recent = registered(&w, "access", json!({"received_on": received})).await;
    step(&w, &recent, "extend", json!({"months": 3, "reason": "many sources"}))
        .await
        .assert_problem(422, "validation-failed");
    let r =
        step(&w, &recent, "extend", json!({"months": 2, "reason": "Results from three publishers to collect"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["due_on"], json!(extended));
    assert_eq!(r.json()["overdue"], false);
    assert_eq!(r.json()["extension"]["months"], 2);
    let before = w.app.snapshot(true).await;
    step(&w, &recent, "extend", json!({"months": 1, "reason": "again"})).await.assert_problem(409, "conflict");
    assert_eq!(w.app.snapshot(true).await, before, "a refused second extension changes nothing");

    // Lists filter by status, kind and subject.
    let other = registered(&w, "objection", json!({})).await;
    let list = |q: &'static str| {
        let w = &w;
        async move {
            let r = w.app.get(&format!("/subject-requests?{q}"), &w.privacy.token).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("status=in_progress").await, vec![id.clone()]);
    assert_eq!(list("kind=objection").await, vec![other.clone()]);
    assert_eq!(list("status=completed").await, Vec::<String>::new());
    let by_subject = w.app.get(&format!("/subject-requests?subject_id={}", w.pupil), &w.privacy.token).await;
    assert_eq!(by_subject.json()["items"].as_array().unwrap().len(), 3);
    // Pages of one: the cursor carries on to the end, each request once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let r = w.app.get(&format!("/subject-requests?limit=1{q}"), &w.privacy.token).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.push(r.json()["items"][0]["id"].as_str().unwrap().to_owned());
        match r.json()["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
    let first = w.app.get("/subject-requests?limit=1", &w.privacy.token).await;
    let cursor = first.json()["next_cursor"].as_str().unwrap().to_owned();
    let bad = w.app.get(&format!("/subject-requests?limit=1&status=received&cursor={cursor}"), &w.privacy.token).await;
    bad.assert_problem(400, "malformed-request");

    // A rejected request is closed.
    let r = step(&w, &other, "reject", json!({"reason": "Not the guardian"})).await;
    assert_eq!(r.json()["status"], "rejected", "{}", r.text());
    fulfil(&w, &other, json!({"decision": "upheld", "reason": "x"})).await.assert_problem(409, "conflict");

    // The history: who did what and when.
    let r = w.app.get(&format!("/subject-requests/{id}"), &w.privacy.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let shown = r.json();
    let actions: Vec<&str> =
        shown["history"].as_array().unwrap().iter().map(|h| h["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["subject_request.registered", "subject_request.started"]);
    assert!(shown["history"].as_array().unwrap().iter().all(|h| h["actor_user_id"] == w.per.user_id));
    assert_eq!(shown["subject"]["given_name"], "Åse");
    // Views that name the pupil are accesses to her data.
    let records: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM access_log WHERE action LIKE 'subject_request%' AND $1::uuid = ANY(pupil_ids)",
    )
    .bind(uuid::Uuid::parse_str(&w.pupil).unwrap())
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert!(records >= 3, "{records}");
}

#[tokio::test]
async fn a_rectification_is_applied_kept_against_the_old_roster_value_and_the_source_is_told() {
    let w = world().await;
    let id = registered(
        &w,
        "rectification",
        json!({"corrections": [{"field": "given_name", "value": "Åsa"}, {"field": "year_level", "value": 6}]}),
    )
    .await;
    let r = fulfil(&w, &id, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let done = r.json();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["outcome"]["fields"], json!(["given_name", "year_level"]));
    // Art. 19: the sources that supplied her data, to be informed.
    let recipients: Vec<&str> =
        done["outcome"]["recipients"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(recipients.contains(&w.sas.id.as_str()) && recipients.contains(&w.publisher.id.as_str()), "{done}");
    let names = || async {
        sqlx::query_as::<_, (String, Option<i32>)>("SELECT given_name, year_level FROM pupils WHERE id = $1::uuid")
            .bind(&w.pupil)
            .fetch_one(&w.app.pool)
            .await
            .unwrap()
    };
    assert_eq!(names().await, ("Åsa".to_owned(), Some(6)));
    // Before and after are in the audit log, encrypted under her own key.
    let details: Value = sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'pupil.rectified'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(details["fields"], json!(["given_name", "year_level"]));
    assert!(details["values_enc"].as_str().is_some_and(|v| v.len() > 40));
    assert!(!details.to_string().contains("Ås"), "{details}");
    // The privacy officer reads them with the request, opened with her key.
    let shown = w.app.get(&format!("/subject-requests/{id}"), &w.privacy.token).await.json();
    assert_eq!(
        shown["rectified_values"],
        json!({"given_name": {"before": "Åse", "after": "Åsa"}, "year_level": {"before": "5", "after": "6"}})
    );

    // Fulfilling again: the same answer, no second effect.
    let before = w.app.snapshot(true).await;
    let again = fulfil(&w, &id, json!({})).await;
    assert_eq!(again.json(), done);
    assert_eq!(w.app.snapshot(true).await, before);

    // The school system sends the old values again: the corrections stay,
    // and the roster's answer says which (by position in the roster).
    let r = w.app.deliver(&w.sas, "roster", "r-3", &roster("sorby", "6A", &[(0, "Åse", "Ødegård")])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names().await, ("Åsa".to_owned(), Some(6)));
    let kept = r.json()["corrections_kept"].clone();
    // The roster helper sends year level 5, as before the correction: kept too.
    assert_eq!(
        kept,
        json!([{"position": 0, "field": "given_name"}, {"position": 0, "field": "year_level"}]),
        "{}",
        r.text()
    );
    // The source corrects its record: its new value applies, the correction goes.
    let mut corrected = roster("sorby", "6A", &[(0, "Åse Marie", "Ødegård")]);
    corrected["pupils"][0]["year_level"] = json!(6);
    let r = w.app.deliver(&w.sas, "roster", "r-4", &corrected).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names().await, ("Åse Marie".to_owned(), Some(6)));
    assert_eq!(w.app.count("SELECT count(*) FROM pupil_corrections").await, 0);
}

#[tokio::test]
async fn an_erased_pupil_is_in_no_column_of_any_table_and_a_roster_does_not_bring_them_back() {
    let w = world().await;
    // A rectification first (its values in the audit log, a correction row).
    let rect = registered(&w, "rectification", json!({"corrections": [{"field": "given_name", "value": "Åsa"}]})).await;
    assert_eq!(fulfil(&w, &rect, json!({})).await.status, 200);
    // An access export, then a second erasure request registered before the first is done.
    let access = registered(&w, "access", json!({})).await;
    assert_eq!(fulfil(&w, &access, json!({})).await.status, 200);
    let second = registered(&w, "erasure", json!({})).await;
    // Free text that names her, by her name before the rectification and her
    // identity number (spaced): scrubbed at erasure.
    let number = synthetic_id(0);
    let text = format!("Mother of Åse Ødegård came with ID; fnr {} {}", &number[..6], &number[6..]);
    let id = registered(&w, "erasure", json!({"identity_verification": text})).await;

    let (index, enc): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT identity_index, identity_enc FROM pupils WHERE id = $1::uuid")
            .bind(&w.pupil)
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    let index_hex: String = index.iter().map(|b| format!("{b:02x}")).collect();
    let needles = ["Åse", "Åsa", "Ødegård", number.as_str(), "pupil0@skole.no", index_hex.as_str()];
    let bytes = [index.clone(), enc.clone()];
    assert!(!scan(&w.app, &needles, &bytes).await.is_empty(), "the scan finds her before the erasure");
    let results_before = w.app.count("SELECT count(*) FROM results").await;

    let r = fulfil(&w, &id, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let done = r.json();
    assert_eq!(done["outcome"]["results_anonymised"], 2, "{done}");
    assert_eq!(done["outcome"]["memberships_removed"], 1, "{done}");
    assert_eq!(done["outcome"]["recipients"].as_array().unwrap().len(), 2, "{done}");

    let left = scan(&w.app, &needles, &bytes).await;
    assert!(left.is_empty(), "after erasure: {left:?}");
    let spaced = format!("{} {}", &number[..6], &number[6..]);
    assert!(scan(&w.app, &[spaced.as_str()], &[]).await.is_empty(), "the spaced number is scrubbed too");
    let scrubbed: String = sqlx::query_scalar("SELECT identity_verification FROM subject_requests WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(scrubbed, "Mother of [erased] [erased] came with ID; fnr [erased]");
    assert_eq!(w.app.count("SELECT count(*) FROM results").await, results_before - 2);
    assert_eq!(w.app.count("SELECT count(*) FROM anonymised_results").await, 2);
    assert_eq!(w.app.count("SELECT count(*) FROM subject_keys").await, 0, "rectified values shredded");
    let shown = w.app.get(&format!("/subject-requests/{rect}"), &w.privacy.token).await.json();
    assert_eq!(shown["rectified_values"], Value::Null, "unreadable after the erasure");
    assert_eq!(shown["subject"]["erased"], true);
    assert_eq!(w.app.count("SELECT count(*) FROM subject_exports").await, 0, "her export deleted");
    // The classmate is untouched.
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 1);
    // The access log still verifies.
    tavle_tests::ops::verify_access_log(&w.app.pool, "oslo").await.expect("the access log verifies after the erasure");

    // Fulfilled again: same answer, nothing changes.
    let before = w.app.snapshot(true).await;
    assert_eq!(fulfil(&w, &id, json!({})).await.json(), done);
    assert_eq!(w.app.snapshot(true).await, before);
    // The other erasure request: the subject is gone (409), nothing changes.
    fulfil(&w, &second, json!({})).await.assert_problem(409, "conflict");
    assert_eq!(w.app.snapshot(true).await, before);
    // A new request for her: she is not there any more (404).
    register(&w, json!({"kind": "erasure", "subject": {"pupil_id": w.pupil}, "identity_verification": "x"}))
        .await
        .assert_problem(404, "not-found");

    // The school system still lists her: she is not re-created, and the
    // answer says so by position; her classmate is synced as usual.
    let r = w
        .app
        .deliver(&w.sas, "roster", "r-9", &roster("nordby", "5A", &[(1, "Bjørn", "Aasen"), (0, "Åse", "Ødegård")]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["erased_skipped"], json!([1]), "{}", r.text());
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 1);
    // Her results sent again are not stored (unknown pupil).
    assert_eq!(w.app.count("SELECT count(*) FROM erased_pupils").await, 2, "identity number and Feide username");
}

#[tokio::test]
async fn restriction_hides_the_pupil_and_stops_ingestion_until_lifted_and_an_upheld_objection_restricts() {
    let w = world().await;
    // Bjørn, in Kari's group.
    let profile = format!("/pupils/{}", w.other);
    assert_eq!(w.app.get(&profile, &w.kari_session.token).await.status, 200);
    let id = registered_for(&w, &w.other, "restriction", json!({})).await;
    let r = fulfil(&w, &id, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"]["restricted"], true);
    assert!(!r.json()["outcome"]["recipients"].as_array().unwrap().is_empty());
    w.app.get(&profile, &w.kari_session.token).await.assert_problem(404, "not-found");
    let results = json!({
        "assessment": {"external_id": "regning", "title": "Regning", "subject": "matematikk", "year_level": 5,
                       "max_score": 10, "administered_on": "2026-10-15"},
        "results": [{"external_id": "x-0", "pupil": {"identity_number": synthetic_id(1)}, "score": 3,
                     "status": "completed"}],
    });
    let r = w.app.deliver(&w.publisher, "results", "x-1", &results).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("processing_restricted"), "{}", r.text());
    assert_eq!(w.app.count("SELECT count(*) FROM results WHERE external_id = 'x-0'").await, 0);

    let lift = registered_for(&w, &w.other, "restriction_lifted", json!({})).await;
    assert_eq!(fulfil(&w, &lift, json!({})).await.json()["outcome"]["restricted"], false);
    assert_eq!(w.app.get(&profile, &w.kari_session.token).await.status, 200);

    // Objections: the decision is required; dismissed changes nothing else,
    // upheld stops processing as a restriction does.
    let o = registered_for(&w, &w.other, "objection", json!({})).await;
    let before = w.app.snapshot(true).await;
    fulfil(&w, &o, json!({})).await.assert_problem(422, "validation-failed");
    fulfil(&w, &o, json!({"decision": "maybe", "reason": "x"})).await.assert_problem(422, "validation-failed");
    assert_eq!(w.app.snapshot(true).await, before);
    let r = fulfil(&w, &o, json!({"decision": "dismissed", "reason": "Statutory duty (opplæringslova § 1-4)"})).await;
    assert_eq!(
        r.json()["decision"],
        json!({"decision": "dismissed", "reason": "Statutory duty (opplæringslova § 1-4)"})
    );
    assert_eq!(w.app.get(&profile, &w.kari_session.token).await.status, 200);
    let o2 = registered_for(&w, &w.other, "objection", json!({})).await;
    let r = fulfil(&w, &o2, json!({"decision": "upheld", "reason": "Particular situation"})).await;
    assert_eq!(r.json()["outcome"]["restricted"], true, "{}", r.text());
    w.app.get(&profile, &w.kari_session.token).await.assert_problem(404, "not-found");
}

#[tokio::test]
async fn access_and_portability_exports_are_made_on_fulfilment_and_downloaded() {
    let w = world().await;
    let id = registered(&w, "portability", json!({})).await;
    let r = fulfil(&w, &id, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"]["exports"], json!(["json", "csv"]));
    let json_doc = w.app.get(&format!("/subject-requests/{id}/export"), &w.privacy.token).await;
    assert_eq!(json_doc.status, 200, "{}", json_doc.text());
    assert_eq!(json_doc.json()["identity"]["identity_number"], synthetic_id(0));
    let csv = w.app.get(&format!("/subject-requests/{id}/export.csv"), &w.privacy.token).await;
    assert_eq!(csv.status, 200);
    assert!(csv.text().lines().count() >= 3, "{}", csv.text());
    let shown = w.app.get(&format!("/subject-requests/{id}"), &w.privacy.token).await.json();
    assert_eq!(shown["exports"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_staff_users_erasure_pseudonymises_the_account() {
    let w = world().await;
    let r =
        register(&w, json!({"kind": "erasure", "subject": {"user_id": w.kari.user_id}, "identity_verification": "HR"}))
            .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = fulfil(&w, &id, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"]["pseudonymised"], true);
    let (username, display, email): (String, String, Option<String>) =
        sqlx::query_as("SELECT username, display_name, email FROM users WHERE id = $1::uuid")
            .bind(&w.kari.user_id)
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert!(username.starts_with("erased-") && display.starts_with("Erased user "), "{username} {display}");
    assert_eq!(email, None);
    assert_eq!(w.app.login_response("oslo", "kari", &w.kari.password).await.status, 401);
    w.app.get(&format!("/pupils/{}", w.pupil), &w.kari_session.token).await.assert_problem(401, "unauthenticated");
    // Her manual result still names her by id, now a pseudonym's.
    assert_eq!(w.app.count("SELECT count(*) FROM results WHERE recorded_by IS NOT NULL").await, 1);
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let w = world().await;
    let base = json!({"kind": "access", "subject": {"pupil_id": w.pupil}, "identity_verification": "BankID"});
    let before = w.app.snapshot(true).await;
    // Roles without the right: a teacher and tenant admin without the privacy-officer role.
    w.app.post("/subject-requests", Some(&w.kari_session.token), base.clone()).await.assert_problem(403, "forbidden");
    w.app.get("/subject-requests", &w.kari_session.token).await.assert_problem(403, "forbidden");
    // Another tenant's subject is unknown there.
    w.app.post("/subject-requests", Some(&w.bergen_privacy.token), base.clone()).await.assert_problem(404, "not-found");
    // Invalid identity number, bad kind, missing verification, corrections on an access request.
    for body in [
        json!({"kind": "access", "subject": {"identity_number": "12345678901"}, "identity_verification": "x"}),
        json!({"kind": "delete", "subject": {"pupil_id": w.pupil}, "identity_verification": "x"}),
        json!({"kind": "access", "subject": {"pupil_id": w.pupil}, "identity_verification": ""}),
        json!({"kind": "access", "subject": {"pupil_id": w.pupil}, "identity_verification": "x",
               "corrections": [{"field": "given_name", "value": "A"}]}),
        json!({"kind": "rectification", "subject": {"pupil_id": w.pupil}, "identity_verification": "x",
               "corrections": [{"field": "identity_index", "value": "A"}]}),
        json!({"kind": "access", "subject": {"pupil_id": w.pupil, "user_id": w.kari.user_id}, "identity_verification": "x"}),
    ] {
        register(&w, body).await.assert_problem(422, "validation-failed");
    }
    assert_eq!(w.app.snapshot(true).await, before, "refused registrations change nothing");
    let plain = w.app.snapshot(false).await;
    // An identity number that is no pupil of the tenant: 404, and the miss is recorded.
    let r = register(
        &w,
        json!({"kind": "access", "subject": {"identity_number": synthetic_id(7)}, "identity_verification": "x"}),
    )
    .await;
    r.assert_problem(404, "not-found");
    assert_eq!(w.app.snapshot(false).await, plain, "only the miss is recorded");
    let misses = w
        .app
        .count("SELECT count(*) FROM audit_log WHERE action = 'pupil.searched' AND details->>'hit' = 'false'")
        .await;
    assert_eq!(misses, 1);

    // Steps and fulfilment on another tenant's request: 404.
    let id = registered(&w, "access", json!({})).await;
    let before = w.app.snapshot(true).await;
    for s in ["start", "fulfil"] {
        w.app
            .post(&format!("/subject-requests/{id}/{s}"), Some(&w.bergen_privacy.token), json!({}))
            .await
            .assert_problem(404, "not-found");
    }
    w.app.get(&format!("/subject-requests/{id}"), &w.bergen_privacy.token).await.assert_problem(404, "not-found");
    w.app
        .get(&format!("/subject-requests/{id}/export"), &w.bergen_privacy.token)
        .await
        .assert_problem(404, "not-found");
    // A teacher cannot fulfil; a decision on an access request is refused.
    w.app
        .post(&format!("/subject-requests/{id}/fulfil"), Some(&w.kari_session.token), json!({}))
        .await
        .assert_problem(403, "forbidden");
    fulfil(&w, &id, json!({"decision": "upheld", "reason": "x"})).await.assert_problem(422, "validation-failed");
    step(&w, &id, "extend", json!({"months": 0, "reason": "x"})).await.assert_problem(422, "validation-failed");
    step(&w, &id, "extend", json!({"months": 2, "reason": ""})).await.assert_problem(422, "validation-failed");
    assert_eq!(w.app.snapshot(true).await, before);
}
