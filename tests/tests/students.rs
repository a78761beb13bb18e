//! The students component: scoped reads, the class overview, manual results
//! and the tamper-evident access log — through spin.toml's routes against a
//! fresh database per test.

use base64::Engine;
use http::{header, Method, Request};
use serde_json::{json, Value};
use tavle_host::ops;
use tavle_tests::{synthetic_id, Api, Session, Source, Staff, TestApp};

/// Two schools of Oslo and one of Bergen, with staff of every role.
///
/// Nordby skole: 5A = pupils 0, 2, 4 (4 restricted later), 5B = pupils 1, 3.
/// Sørby skole: 6A = pupils 10, 11. Bergen: 7A = pupil 20.
/// Assessment "lesing" (norsk, max 40): pupils 0..3 and 10 have results.
struct World {
    app: TestApp,
    oslo: Staff,
    admin: Session,
    publisher: Source,
    teacher: Session,
    leader: Session,
    tenant_admin: Session,
    admin_and_leader: Session,
    privacy: Session,
    bergen_teacher: Session,
    groups: std::collections::HashMap<&'static str, String>,
    pupils: std::collections::HashMap<u32, String>,
    assessment: String,
    bergen_assessment: String,
}

fn pupil(n: u32, given: &str, family: &str, groups: &[&str]) -> Value {
    json!({"identity_number": synthetic_id(n), "given_name": given, "family_name": family, "year_level": 5,
           "special_needs": n == 2, "groups": groups})
}

fn roster(school: &str, groups: &[&str], pupils: Vec<Value>) -> Value {
    let groups: Vec<Value> = groups.iter().map(|g| json!({"external_id": g, "name": g, "year_level": 5})).collect();
    json!({"school": {"external_id": school, "name": format!("{school} skole")}, "groups": groups, "pupils": pupils})
}

fn results(assessment: &str, subject: &str, on: &str, rows: &[(u32, Option<f64>, &str)]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|(n, score, status)| {
            json!({"external_id": format!("{assessment}-{n}"), "pupil": {"identity_number": synthetic_id(*n)},
                   "score": score, "status": status, "completed_at": format!("{on}T09:30:00Z")})
        })
        .collect();
    json!({"assessment": {"external_id": assessment, "title": format!("Kartlegging {assessment}"), "subject": subject,
                          "year_level": 5, "max_score": 40, "administered_on": on},
           "results": rows})
}

async fn id_of(app: &TestApp, sql: &str, arg: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(sql).bind(arg).fetch_one(&app.pool).await.unwrap();
    id.to_string()
}

async fn world() -> World {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let admin = app.login(&oslo).await;
    let sas = app.create_source(&admin, "sas").await;
    let publisher = app.create_source(&admin, "publisher").await;
    let nordby = roster(
        "nordby",
        &["5A", "5B"],
        vec![
            pupil(0, "Åse", "Ødegård", &["5A"]),
            pupil(1, "Bjørn", "Aasen", &["5B"]),
            pupil(2, "Cecilie", "Berg", &["5A"]),
            pupil(3, "Dag", "Dahl", &["5B"]),
            pupil(4, "Eva", "Eide", &["5A"]),
        ],
    );
    assert_eq!(app.deliver(&sas, "roster", "r-nordby", &nordby).await.status, 200);
    let sorby =
        roster("sorby", &["6A"], vec![pupil(10, "Frida", "Fjell", &["6A"]), pupil(11, "Geir", "Gran", &["6A"])]);
    assert_eq!(app.deliver(&sas, "roster", "r-sorby", &sorby).await.status, 200);
    let rows = [
        (0, Some(30.0), "completed"),
        (1, Some(10.0), "completed"),
        (2, Some(20.0), "completed"),
        (3, None, "absent"),
        (10, Some(35.0), "completed"),
    ];
    let r = app.deliver(&publisher, "results", "res-1", &results("lesing", "norsk", "2026-09-15", &rows)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let mut groups = std::collections::HashMap::new();
    for g in ["5A", "5B", "6A"] {
        groups.insert(g, id_of(&app, "SELECT id FROM groups WHERE external_id = $1", g).await);
    }
    let mut pupils = std::collections::HashMap::new();
    for n in [0u32, 1, 2, 3, 4, 10, 11] {
        let given = ["Åse", "Bjørn", "Cecilie", "Dag", "Eva"].get(n as usize).copied().unwrap_or(if n == 10 {
            "Frida"
        } else {
            "Geir"
        });
        pupils.insert(n, id_of(&app, "SELECT id FROM pupils WHERE given_name = $1", given).await);
    }
    sqlx::query("UPDATE pupils SET restricted = true WHERE given_name = 'Eva'").execute(&app.pool).await.unwrap();
    let assessment = id_of(&app, "SELECT id FROM assessments WHERE external_id = $1", "lesing").await;
    let nordby_id = id_of(&app, "SELECT id FROM schools WHERE external_id = $1", "nordby").await;
    let sorby_id = id_of(&app, "SELECT id FROM schools WHERE external_id = $1", "sorby").await;

    let user = |name: &'static str, roles: Value| {
        let (app, admin, oslo) = (&app, &admin, &oslo);
        async move {
            let staff = app.create_user(admin, oslo, name, roles).await;
            app.login(&staff).await
        }
    };
    let teacher = user("kari", json!([{"role": "teacher", "group_id": groups["5A"]}])).await;
    let leader = user("leif", json!([{"role": "school_leader", "school_id": nordby_id}])).await;
    let tenant_admin = user("tone", json!([{"role": "tenant_admin"}])).await;
    let admin_and_leader =
        user("siri", json!([{"role": "tenant_admin"}, {"role": "school_leader", "school_id": sorby_id}])).await;
    let privacy = user("per", json!([{"role": "privacy_officer"}])).await;

    // Bergen: its own school, pupil 20 and a teacher of its group.
    let bergen = app.seed_tenant("bergen").await;
    let bergen_admin = app.login(&bergen).await;
    let bergen_sas = app.create_source(&bergen_admin, "sas").await;
    let bergen_publisher = app.create_source(&bergen_admin, "publisher").await;
    let r = app
        .deliver(&bergen_sas, "roster", "rb", &roster("berg", &["7A"], vec![pupil(20, "Hanne", "Hope", &["7A"])]))
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .deliver(
            &bergen_publisher,
            "results",
            "rb1",
            &results("lesing", "norsk", "2026-09-15", &[(20, Some(5.0), "completed")]),
        )
        .await;
    assert_eq!(r.status, 200);
    groups.insert("7A", id_of(&app, "SELECT id FROM groups WHERE external_id = $1", "7A").await);
    pupils.insert(20, id_of(&app, "SELECT id FROM pupils WHERE given_name = $1", "Hanne").await);
    let bergen_assessment =
        id_of(&app, "SELECT a.id FROM assessments a JOIN tenants t ON t.id = a.tenant_id WHERE t.slug = $1", "bergen")
            .await;
    let bt =
        app.create_user(&bergen_admin, &bergen, "berit", json!([{"role": "teacher", "group_id": groups["7A"]}])).await;
    let bergen_teacher = app.login(&bt).await;

    World {
        app,
        oslo,
        admin,
        publisher,
        teacher,
        leader,
        tenant_admin,
        admin_and_leader,
        privacy,
        bergen_teacher,
        groups,
        pupils,
        assessment,
        bergen_assessment,
    }
}

fn ids(body: &Value, key: &str) -> Vec<String> {
    body[key].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect()
}

async fn access_records(app: &TestApp) -> Vec<(String, Vec<uuid::Uuid>, Option<String>, Option<String>)> {
    sqlx::query_as("SELECT action, pupil_ids, client_ip, request_id FROM access_log ORDER BY tenant_id, seq")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

// ------------------------------------------------------------------ scope

#[tokio::test]
async fn every_role_against_every_endpoint_with_own_other_group_other_school_and_other_tenant_ids() {
    let w = world().await;
    let p = |n: u32| w.pupils[&n].clone();
    let g = |name: &str| w.groups[name].clone();
    let missing = uuid::Uuid::new_v4().to_string();
    // Targets, as (label, pupil id, group id).
    let targets = [
        ("own", p(0), g("5A")),
        ("other group", p(1), g("5B")),
        ("other school", p(10), g("6A")),
        ("other tenant", p(20), g("7A")),
        ("restricted", p(4), g("5A")),
        ("missing", missing.clone(), missing.clone()),
    ];
    // Expected status per role for: profile, overview, manual result, access log.
    type Row = (&'static str, [u16; 4]);
    let table: Vec<(&str, &Session, [Row; 6])> = vec![
        (
            "teacher of 5A",
            &w.teacher,
            [
                ("own", [200, 200, 201, 403]),
                ("other group", [404, 404, 404, 403]),
                ("other school", [404, 404, 404, 403]),
                ("other tenant", [404, 404, 404, 403]),
                ("restricted", [404, 200, 404, 403]),
                ("missing", [404, 404, 404, 403]),
            ],
        ),
        (
            "leader of Nordby",
            &w.leader,
            [
                ("own", [200, 200, 201, 403]),
                ("other group", [200, 200, 201, 403]),
                ("other school", [404, 404, 404, 403]),
                ("other tenant", [404, 404, 404, 403]),
                ("restricted", [404, 200, 404, 403]),
                ("missing", [404, 404, 404, 403]),
            ],
        ),
        (
            "tenant admin",
            &w.tenant_admin,
            [
                ("own", [404, 404, 404, 403]),
                ("other group", [404, 404, 404, 403]),
                ("other school", [404, 404, 404, 403]),
                ("other tenant", [404, 404, 404, 403]),
                ("restricted", [404, 404, 404, 403]),
                ("missing", [404, 404, 404, 403]),
            ],
        ),
        (
            "tenant admin leading Sørby",
            &w.admin_and_leader,
            [
                ("own", [404, 404, 404, 403]),
                ("other group", [404, 404, 404, 403]),
                ("other school", [200, 200, 201, 403]),
                ("other tenant", [404, 404, 404, 403]),
                ("restricted", [404, 404, 404, 403]),
                ("missing", [404, 404, 404, 403]),
            ],
        ),
        (
            "privacy officer",
            &w.privacy,
            [
                ("own", [404, 404, 404, 200]),
                ("other group", [404, 404, 404, 200]),
                ("other school", [404, 404, 404, 200]),
                ("other tenant", [404, 404, 404, 404]),
                ("restricted", [404, 404, 404, 200]),
                ("missing", [404, 404, 404, 404]),
            ],
        ),
        (
            "Bergen teacher",
            &w.bergen_teacher,
            [
                ("own", [404, 404, 404, 403]),
                ("other group", [404, 404, 404, 403]),
                ("other school", [404, 404, 404, 403]),
                ("other tenant", [200, 200, 201, 403]),
                ("restricted", [404, 404, 404, 403]),
                ("missing", [404, 404, 404, 403]),
            ],
        ),
    ];
    let mut not_found = w.app.get(&format!("/pupils/{missing}"), &w.teacher.token).await.json();
    not_found.as_object_mut().unwrap().remove("instance");
    let mut failures = Vec::new();
    for (role, session, rows) in &table {
        for ((label, pupil, group), (expected_label, expected)) in targets.iter().zip(rows.iter()) {
            assert_eq!(label, expected_label);
            // Bergen's pupils sit with Bergen's assessment; everyone else asks about Oslo's.
            let assessment = if *label == "other tenant" { &w.bergen_assessment } else { &w.assessment };
            let got = [
                w.app.get(&format!("/pupils/{pupil}"), &session.token).await,
                w.app.get(&format!("/groups/{group}/overview?assessment_id={assessment}"), &session.token).await,
                w.app
                    .post(
                        &format!("/pupils/{pupil}/results"),
                        Some(&session.token),
                        json!({"assessment_id": assessment, "score": 12, "status": "completed"}),
                    )
                    .await,
                w.app.get(&format!("/pupils/{pupil}/access-log"), &session.token).await,
            ];
            for (i, (r, want)) in got.iter().zip(expected).enumerate() {
                let endpoint = ["profile", "overview", "manual result", "access log"][i];
                if r.status != *want {
                    failures.push(format!("{role} / {label} / {endpoint}: {} (wanted {want})", r.status));
                } else if *want == 404 {
                    // Out of scope looks exactly like not existing.
                    let mut body = r.assert_problem(404, "not-found");
                    body.as_object_mut().unwrap().remove("instance");
                    assert_eq!(body, not_found, "{role} / {label} / {endpoint}");
                }
            }
            // Registered once: clean up so the next role can register too.
            sqlx::query("DELETE FROM results WHERE source_id IS NULL").execute(&w.app.pool).await.unwrap();
        }
    }
    assert!(failures.is_empty(), "scope table mismatches:\n  {}", failures.join("\n  "));
}

#[tokio::test]
async fn lists_show_only_the_pupils_groups_and_schools_in_scope() {
    let w = world().await;
    let names = |body: &Value| -> Vec<String> {
        body["items"].as_array().unwrap().iter().map(|p| p["given_name"].as_str().unwrap().to_owned()).collect()
    };
    let teacher = w.app.get("/pupils", &w.teacher.token).await;
    assert_eq!(teacher.status, 200, "{}", teacher.text());
    // Ordered by family name; the restricted pupil (Eva) is hidden.
    assert_eq!(names(&teacher.json()), ["Cecilie", "Åse"]);
    let leader = w.app.get("/pupils", &w.leader.token).await.json();
    assert_eq!(names(&leader), ["Bjørn", "Cecilie", "Dag", "Åse"]);
    assert_eq!(names(&w.app.get("/pupils", &w.admin_and_leader.token).await.json()), ["Frida", "Geir"]);
    assert_eq!(names(&w.app.get("/pupils", &w.bergen_teacher.token).await.json()), ["Hanne"]);
    for s in [&w.tenant_admin, &w.privacy, &w.admin] {
        w.app.get("/pupils", &s.token).await.assert_problem(403, "forbidden");
    }
    let cecilie = &teacher.json()["items"][0];
    assert_eq!(cecilie["special_needs"], true);
    assert_eq!(cecilie["groups"][0]["name"], "5A");
    assert_eq!(cecilie["school"]["name"], "nordby skole");

    // Groups and schools: teachers see theirs, leaders their school's, admins everything.
    let group_names = |s: &Session| {
        let app = &w.app;
        let token = s.token.clone();
        async move {
            let body = app.get("/groups", &token).await.json();
            body["items"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert_eq!(group_names(&w.teacher).await, ["5A"]);
    assert_eq!(group_names(&w.leader).await, ["5A", "5B"]);
    assert_eq!(group_names(&w.tenant_admin).await, ["5A", "5B", "6A"]);
    assert_eq!(group_names(&w.privacy).await, ["5A", "5B", "6A"]);
    assert_eq!(group_names(&w.bergen_teacher).await, ["7A"]);
    let schools = w.app.get("/schools", &w.teacher.token).await.json();
    assert_eq!(schools["items"].as_array().unwrap().len(), 1);
    assert_eq!(w.app.get("/schools", &w.tenant_admin.token).await.json()["items"].as_array().unwrap().len(), 2);
    let assessments = w.app.get("/assessments", &w.teacher.token).await.json();
    assert_eq!(ids(&assessments, "items"), [w.assessment.as_str()]);
    assert_eq!(
        ids(&w.app.get("/assessments", &w.bergen_teacher.token).await.json(), "items"),
        [w.bergen_assessment.as_str()]
    );
}

#[tokio::test]
async fn pupil_lists_filter_search_and_page_with_a_cursor() {
    let w = world().await;
    let token = &w.leader.token;
    let given = |r: &tavle_tests::TestResponse| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["items"].as_array().unwrap().iter().map(|p| p["given_name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(given(&w.app.get(&format!("/pupils?group_id={}", w.groups["5B"]), token).await), ["Bjørn", "Dag"]);
    assert_eq!(given(&w.app.get("/pupils?year_level=5&q=%C3%B8deg%C3%A5rd", token).await), ["Åse"]);
    assert_eq!(given(&w.app.get("/pupils?q=ce+berg", token).await), ["Cecilie"]);
    assert!(given(&w.app.get("/pupils?year_level=6", token).await).is_empty());
    // Another school's filter shows nothing: scope still applies.
    let sorby: String = sqlx::query_scalar("SELECT id::text FROM schools WHERE external_id = 'sorby'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert!(given(&w.app.get(&format!("/pupils?school_id={sorby}"), token).await).is_empty());
    // SQL and odd Unicode are just text to search for.
    for q in ["%27%20OR%201%3D1--", "%25", "_", "%E2%80%AE%F0%9F%98%80", "Robert%27)%3B%20DROP%20TABLE%20pupils%3B--"] {
        assert!(given(&w.app.get(&format!("/pupils?q={q}"), token).await).is_empty(), "{q}");
    }
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 8);

    // Two per page: every pupil exactly once.
    let mut seen = Vec::new();
    let mut path = "/pupils?limit=2".to_owned();
    loop {
        let r = w.app.get(&path, token).await;
        seen.extend(given(&r));
        match r.json()["next_cursor"].as_str() {
            Some(c) => path = format!("/pupils?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["Bjørn", "Cecilie", "Dag", "Åse"]);
    // Cursors travel in URLs: they carry an id, never a name.
    let first = w.app.get("/pupils?limit=1", token).await.json();
    let cursor = first["next_cursor"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).unwrap();
    let decoded = String::from_utf8(decoded).unwrap();
    assert!(!decoded.contains("Aasen") && !decoded.contains("Bjørn"), "{decoded}");
}

#[tokio::test]
async fn bad_queries_are_400s_and_identity_numbers_never_travel_in_urls() {
    let w = world().await;
    let token = &w.leader.token;
    let before = w.app.snapshot(true).await;
    let fnr = synthetic_id(0);
    let spaced = format!("{} {}", &fnr[..6], &fnr[6..]);
    for (path, pointer) in [
        (format!("/pupils?q={fnr}"), "/query/q"),
        (format!("/pupils?q={}", spaced.replace(' ', "+")), "/query/q"),
        ("/pupils?limit=0".to_owned(), "/query/limit"),
        ("/pupils?limit=100000".to_owned(), "/query/limit"),
        ("/pupils?limit=-1".to_owned(), "/query/limit"),
        ("/pupils?cursor=not-a-cursor".to_owned(), "/query/cursor"),
        ("/pupils?cursor=eyJmIjoxfQ".to_owned(), "/query/cursor"),
        ("/pupils?school_id=nordby".to_owned(), "/query/school_id"),
        ("/pupils?year_level=14".to_owned(), "/query/year_level"),
        (format!("/pupils?q={}", "x".repeat(101)), "/query/q"),
        ("/pupils?q=%00".to_owned(), "/query/q"),
        (format!("/pupils/{}?from=2026-02-30", w.pupils[&0]), "/query/from"),
        (format!("/pupils/{}?from=2026-09-01&to=2026-01-01", w.pupils[&0]), "/query/to"),
        (format!("/groups/{}/overview", w.groups["5A"]), "/query/assessment_id"),
        (format!("/groups/{}/overview?assessment_id=x", w.groups["5A"]), "/query/assessment_id"),
        ("/groups?cursor=%%%".to_owned(), "/query/cursor"),
        (
            "/assessments?cursor=eyJrIjoieCIsImlkIjoiMDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwIn0".to_owned(),
            "/query/cursor",
        ),
    ] {
        let r = w.app.get(&path, token).await;
        let body = r.assert_problem(400, "malformed-request");
        assert_eq!(body["errors"][0]["pointer"], pointer, "{path}: {body}");
        assert!(!r.text().contains(&fnr[..6]), "{path}: the number is not echoed");
    }
    assert_eq!(before, w.app.snapshot(true).await, "bad queries changed nothing, not even the logs");
    // Malformed ids in paths are 404s, like ids that do not exist.
    for path in ["/pupils/not-a-uuid", "/pupils/%27%20OR%201%3D1", "/groups/x/overview?assessment_id=x"] {
        w.app.get(path, token).await.assert_problem(404, "not-found");
    }
    // Unauthenticated: 401, nothing else.
    let r = w.app.call(Request::builder().uri(format!("/pupils/{}", w.pupils[&0])).body(Vec::new()).unwrap()).await;
    r.assert_problem(401, "unauthenticated");
    // Wrong methods say what is allowed.
    let r = w.app.send(Method::DELETE, &format!("/pupils/{}", w.pupils[&0]), Some(token), None).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = w.app.get("/pupils/search", token).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
}

#[tokio::test]
async fn identity_number_search_goes_in_a_post_body_and_respects_scope() {
    let w = world().await;
    let search = |session: &Session, number: Value| {
        let (app, token) = (&w.app, session.token.clone());
        async move { app.post("/pupils/search", Some(&token), json!({"identity_number": number})).await }
    };
    let found = search(&w.teacher, json!(synthetic_id(0))).await;
    assert_eq!(found.status, 200, "{}", found.text());
    assert_eq!(ids(&found.json(), "items"), [w.pupils[&0].as_str()]);
    // Other group, other tenant, restricted: simply not found.
    for n in [1, 20, 4] {
        let r = search(&w.teacher, json!(synthetic_id(n))).await;
        assert_eq!(r.json()["items"], json!([]), "pupil {n}");
    }
    assert_eq!(
        ids(&search(&w.bergen_teacher, json!(synthetic_id(20))).await.json(), "items"),
        [w.pupils[&20].as_str()]
    );
    // Invalid numbers are 422s that never echo the input.
    let before = w.app.snapshot(true).await;
    for bad in [json!("12345678901"), json!("abc"), json!(12345678901u64), json!("")] {
        let r = search(&w.teacher, bad.clone()).await;
        let body = r.assert_problem(422, "validation-failed");
        assert_eq!(body["errors"][0]["pointer"], "/identity_number", "{bad}");
        assert!(!r.text().contains("12345678901"));
    }
    let r =
        w.app.post("/pupils/search", Some(&w.teacher.token), json!({"identity_number": synthetic_id(0), "q": 1})).await;
    r.assert_problem(422, "validation-failed");
    w.app
        .post("/pupils/search", Some(&w.tenant_admin.token), json!({"identity_number": synthetic_id(0)}))
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(before, w.app.snapshot(true).await);
    // The search itself is logged, without the number.
    let records = access_records(&w.app).await;
    assert!(records.iter().any(|(a, ids, _, _)| a == "pupils.searched" && ids.len() == 1));
    let logged: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM access_log t").fetch_one(&w.app.pool).await.unwrap();
    assert!(!logged.contains(&synthetic_id(0)));
}

// ---------------------------------------------------------- profile, overview

#[tokio::test]
async fn a_profile_shows_results_over_time_with_filters() {
    let w = world().await;
    // A second, later maths assessment for pupil 0.
    let r = w
        .app
        .deliver(
            &w.publisher,
            "results",
            "res-2",
            &results("regning", "matematikk", "2027-01-20", &[(0, Some(25.0), "completed")]),
        )
        .await;
    assert_eq!(r.status, 200);
    let path = format!("/pupils/{}", w.pupils[&0]);
    let profile = w.app.get(&path, &w.teacher.token).await;
    assert_eq!(profile.status, 200, "{}", profile.text());
    let p = profile.json();
    assert_eq!((p["given_name"].as_str(), p["family_name"].as_str()), (Some("Åse"), Some("Ødegård")));
    assert_eq!(p["year_level"], 5);
    assert_eq!(p["groups"], json!([{"id": w.groups["5A"], "name": "5A"}]));
    let titles: Vec<&str> =
        p["results"].as_array().unwrap().iter().map(|r| r["assessment"]["subject"].as_str().unwrap()).collect();
    assert_eq!(titles, ["norsk", "matematikk"], "oldest first");
    assert_eq!(p["results"][0]["score"], 30.0);
    assert_eq!(p["results"][0]["source"], "publisher");
    assert!(p.get("identity_number").is_none(), "the number is not shown");

    let only = |q: &str| {
        let app = &w.app;
        let (path, token) = (format!("{path}?{q}"), w.teacher.token.clone());
        async move {
            let body = app.get(&path, &token).await.json();
            body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["assessment"]["subject"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(only("subject=matematikk").await, ["matematikk"]);
    assert_eq!(only("from=2026-10-01").await, ["matematikk"]);
    assert_eq!(only("to=2026-10-01").await, ["norsk"]);
    assert_eq!(only(&format!("assessment_id={}", w.assessment)).await, ["norsk"]);
    // A filter that matches nothing still shows the pupil, with no results.
    let none = w.app.get(&format!("{path}?subject=engelsk"), &w.teacher.token).await.json();
    assert_eq!((none["given_name"].as_str(), none["results"].as_array().unwrap().len()), (Some("Åse"), 0));
}

#[tokio::test]
async fn the_class_overview_shows_every_pupil_and_the_group_median() {
    let w = world().await;
    let path = format!("/groups/{}/overview?assessment_id={}", w.groups["5A"], w.assessment);
    let r = w.app.get(&path, &w.teacher.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = r.json();
    assert_eq!(o["group"]["name"], "5A");
    assert_eq!(o["assessment"]["max_score"], 40.0);
    // 5A: Cecilie (20) and Åse (30); Eva is restricted and not shown.
    let lines: Vec<(String, Value)> = o["pupils"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["given_name"].as_str().unwrap().to_owned(), p["result"]["score"].clone()))
        .collect();
    assert_eq!(lines, [("Cecilie".to_owned(), json!(20.0)), ("Åse".to_owned(), json!(30.0))]);
    assert_eq!((o["median"].as_f64(), o["completed"].as_u64()), (Some(25.0), Some(2)));

    // 5B: one completed (10), one absent without a score: the median counts completed results only.
    let o = w
        .app
        .get(&format!("/groups/{}/overview?assessment_id={}", w.groups["5B"], w.assessment), &w.leader.token)
        .await
        .json();
    assert_eq!((o["median"].as_f64(), o["completed"].as_u64()), (Some(10.0), Some(1)));
    let dag = o["pupils"].as_array().unwrap().iter().find(|p| p["given_name"] == "Dag").unwrap();
    assert_eq!((dag["result"]["status"].as_str(), dag["result"]["score"].is_null()), (Some("absent"), true));

    // A pupil without any result is listed with result null; a later manual
    // result is what the overview shows.
    let r = w
        .app
        .post(
            &format!("/pupils/{}/results", w.pupils[&2]),
            Some(&w.teacher.token),
            json!({"assessment_id": w.assessment, "score": 38, "status": "completed"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let o = w.app.get(&path, &w.teacher.token).await.json();
    assert_eq!(o["pupils"][0]["result"]["score"], 38.0);
    assert_eq!(o["pupils"][0]["result"]["source"], "manual");
    assert_eq!(o["median"].as_f64(), Some(34.0));

    // A pupil moved to another school (still in the old group until that
    // school's next roster) leaves the old school leader's overview.
    let sorby: String = sqlx::query_scalar("SELECT id::text FROM schools WHERE external_id = 'sorby'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE pupils SET school_id = $1::uuid WHERE given_name = 'Dag'")
        .bind(&sorby)
        .execute(&w.app.pool)
        .await
        .unwrap();
    let o = w
        .app
        .get(&format!("/groups/{}/overview?assessment_id={}", w.groups["5B"], w.assessment), &w.leader.token)
        .await
        .json();
    let names: Vec<&str> = o["pupils"].as_array().unwrap().iter().map(|p| p["given_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Bjørn"]);

    // An empty group in scope answers 200 with nobody in it, and logs no access.
    let before = access_records(&w.app).await.len();
    sqlx::query("DELETE FROM group_memberships WHERE group_id = $1::uuid")
        .bind(&w.groups["5B"])
        .execute(&w.app.pool)
        .await
        .unwrap();
    let o = w
        .app
        .get(&format!("/groups/{}/overview?assessment_id={}", w.groups["5B"], w.assessment), &w.leader.token)
        .await;
    assert_eq!(o.status, 200, "{}", o.text());
    assert_eq!((o.json()["pupils"].as_array().unwrap().len(), o.json()["median"].is_null()), (0, true));
    assert_eq!(access_records(&w.app).await.len(), before);
}

// ------------------------------------------------------------ manual results

#[tokio::test]
async fn teachers_register_and_correct_manual_results_with_the_previous_value_audited() {
    let w = world().await;
    let pupil = &w.pupils[&0];
    let path = format!("/pupils/{pupil}/results");
    let r = w
        .app
        .post(
            &path,
            Some(&w.teacher.token),
            json!({"assessment_id": w.assessment, "score": 31.5, "status": "completed",
                                                     "completed_at": "2026-09-16T10:00:00+02:00"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!((created["source"].as_str(), created["score"].as_f64()), (Some("manual"), Some(31.5)));
    assert_eq!(created["recorded_by"]["display_name"], "kari display");
    assert_eq!(created["completed_at"], "2026-09-16T08:00:00.000000Z");
    let result_id = created["id"].as_str().unwrap().to_owned();
    let recorder: String = sqlx::query_scalar("SELECT recorded_by::text FROM results WHERE id = $1::uuid")
        .bind(&result_id)
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    let kari: String =
        sqlx::query_scalar("SELECT id::text FROM users WHERE username = 'kari'").fetch_one(&w.app.pool).await.unwrap();
    assert_eq!(recorder, kari);

    // A second registration for the same assessment is a conflict: correct it instead.
    let before = w.app.snapshot(true).await;
    let again = w
        .app
        .post(&path, Some(&w.teacher.token), json!({"assessment_id": w.assessment, "score": 1, "status": "completed"}))
        .await;
    again.assert_problem(409, "conflict");
    // Invalid input changes nothing.
    for (body, pointer) in [
        (json!({"assessment_id": w.assessment, "score": 41, "status": "completed"}), "/score"),
        (json!({"assessment_id": w.assessment, "status": "completed"}), "/score"),
        (json!({"assessment_id": w.assessment, "score": 3, "status": "done"}), "/status"),
        (
            json!({"assessment_id": w.assessment, "score": 3, "status": "completed", "completed_at": "tomorrow"}),
            "/completed_at",
        ),
        (json!({"assessment_id": "x", "score": 3, "status": "completed"}), "/assessment_id"),
        (json!({"assessment_id": w.bergen_assessment, "score": 3, "status": "completed"}), "/assessment_id"),
        (json!({"assessment_id": w.assessment, "score": "3", "status": "completed"}), "/score"),
        (json!({"assessment_id": w.assessment, "score": 3, "status": "completed", "grade": 6}), ""),
    ] {
        let r = w.app.post(&path, Some(&w.teacher.token), body.clone()).await;
        let problem = r.assert_problem(422, "validation-failed");
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{body}");
    }
    assert_eq!(before, w.app.snapshot(true).await);

    // Correction: the previous value goes to the audit log.
    let put = format!("/pupils/{pupil}/results/{result_id}");
    let r =
        w.app.send(Method::PUT, &put, Some(&w.leader.token), Some(json!({"score": 29, "status": "completed"}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["score"].as_f64(), r.json()["recorded_by"]["display_name"].as_str()),
        (Some(29.0), Some("leif display"))
    );
    let details: Value = sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'result.corrected'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(details["previous"]["score"], 31.5);
    assert_eq!(details["new"]["score"], 29.0);
    assert_eq!(details["pupil_id"], pupil.as_str());
    let actions = w.app.audit_actions(&w.oslo.tenant_id).await;
    assert!(actions.contains(&"result.registered".to_owned()));

    // Publishers' results are corrected by the publisher; other tenants' and
    // other pupils' results are not found.
    let publisher_result: String = sqlx::query_scalar("SELECT id::text FROM results WHERE external_id = 'lesing-0'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    let r = w
        .app
        .send(
            Method::PUT,
            &format!("/pupils/{pupil}/results/{publisher_result}"),
            Some(&w.teacher.token),
            Some(json!({"score": 1, "status": "completed"})),
        )
        .await;
    r.assert_problem(409, "conflict");
    let r = w
        .app
        .send(
            Method::PUT,
            &format!("/pupils/{}/results/{result_id}", w.pupils[&2]),
            Some(&w.teacher.token),
            Some(json!({"score": 1, "status": "completed"})),
        )
        .await;
    r.assert_problem(404, "not-found");
    let r = w
        .app
        .send(Method::PUT, &put, Some(&w.bergen_teacher.token), Some(json!({"score": 1, "status": "completed"})))
        .await;
    r.assert_problem(404, "not-found");
    let r =
        w.app.send(Method::PUT, &put, Some(&w.teacher.token), Some(json!({"score": 99, "status": "completed"}))).await;
    r.assert_problem(422, "validation-failed");
    let score: f64 = sqlx::query_scalar("SELECT score FROM results WHERE id = $1::uuid")
        .bind(&result_id)
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(score, 29.0);

    // Cookie-authenticated writes need an allowed Origin (CSRF).
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/pupils/{}/results", w.pupils[&2]))
        .header(header::COOKIE, &w.teacher.cookie)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ORIGIN, "https://evil.example")
        .body(serde_json::to_vec(&json!({"assessment_id": w.assessment, "score": 3, "status": "completed"})).unwrap())
        .unwrap();
    w.app.call(req).await.assert_problem(403, "forbidden");
}

// ---------------------------------------------------------------- access log

#[tokio::test]
async fn every_response_with_pupil_data_writes_an_access_record() {
    let w = world().await;
    let t = &w.teacher.token;
    let req = |path: String| {
        Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .header("x-request-id", "req-12345")
            .body(Vec::new())
            .unwrap()
    };
    assert_eq!(w.app.call(req(format!("/pupils/{}", w.pupils[&0]))).await.status, 200);
    assert_eq!(w.app.call(req("/pupils".into())).await.status, 200);
    assert_eq!(
        w.app.call(req(format!("/groups/{}/overview?assessment_id={}", w.groups["5A"], w.assessment))).await.status,
        200
    );
    // No personal data, no record: 404s, structure lists, empty result pages.
    assert_eq!(w.app.call(req(format!("/pupils/{}", w.pupils[&1]))).await.status, 404);
    assert_eq!(w.app.call(req("/groups".into())).await.status, 200);
    assert_eq!(w.app.call(req("/pupils?q=nobody".into())).await.status, 200);

    let records = access_records(&w.app).await;
    let p = |n: u32| uuid::Uuid::parse_str(&w.pupils[&n]).unwrap();
    let expected = vec![
        ("pupil.viewed".to_owned(), vec![p(0)]),
        ("pupils.listed".to_owned(), vec![p(2), p(0)]),
        ("group.overview_viewed".to_owned(), vec![p(2), p(0)]),
    ];
    let got: Vec<(String, Vec<uuid::Uuid>)> = records.iter().map(|(a, ids, _, _)| (a.clone(), ids.clone())).collect();
    assert_eq!(got, expected);
    for (_, _, ip, request_id) in &records {
        assert_eq!((ip.as_deref(), request_id.as_deref()), (Some("127.0.0.1"), Some("req-12345")));
    }
    let (actor, tenant): (String, String) =
        sqlx::query_as("SELECT DISTINCT actor_user_id::text, tenant_id::text FROM access_log")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    let kari: String =
        sqlx::query_scalar("SELECT id::text FROM users WHERE username = 'kari'").fetch_one(&w.app.pool).await.unwrap();
    assert_eq!((actor, tenant), (kari, w.oslo.tenant_id.clone()));

    // The privacy officer sees who accessed pupil 0, newest first, and that
    // view is itself recorded.
    let r = w.app.get(&format!("/pupils/{}/access-log", w.pupils[&0]), &w.privacy.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let items = r.json()["items"].as_array().unwrap().clone();
    let actions: Vec<&str> = items.iter().map(|i| i["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["group.overview_viewed", "pupils.listed", "pupil.viewed"]);
    assert_eq!(items[0]["actor"]["username"], "kari");
    assert_eq!(items[0]["client_ip"], "127.0.0.1");
    let page = w.app.get(&format!("/pupils/{}/access-log?limit=1", w.pupils[&0]), &w.privacy.token).await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["next_cursor"].as_str().unwrap();
    let page2 =
        w.app.get(&format!("/pupils/{}/access-log?limit=1&cursor={next}", w.pupils[&0]), &w.privacy.token).await.json();
    assert!(page2["items"][0]["seq"].as_i64() < page["items"][0]["seq"].as_i64());
    assert!(access_records(&w.app).await.iter().any(|(a, _, _, _)| a == "access_log.viewed"));
    // Restricted pupils' accesses are visible to the privacy officer too.
    let r = w.app.get(&format!("/pupils/{}/access-log", w.pupils[&4]), &w.privacy.token).await;
    assert_eq!((r.status, r.json()["items"].as_array().unwrap().len()), (200, 0));
}

#[tokio::test]
async fn no_access_record_no_data() {
    let w = world().await;
    // Make every new access record fail, as a full disk or a broken trigger would.
    sqlx::query("ALTER TABLE access_log ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        .execute(&w.app.pool)
        .await
        .unwrap();
    let before = w.app.snapshot(true).await;
    for path in [
        format!("/pupils/{}", w.pupils[&0]),
        "/pupils".to_owned(),
        format!("/groups/{}/overview?assessment_id={}", w.groups["5A"], w.assessment),
    ] {
        let r = w.app.get(&path, &w.teacher.token).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        for secret in ["Åse", "Ødegård", "Cecilie", "given_name", "score"] {
            assert!(!r.text().contains(secret), "{path} leaked {secret}: {}", r.text());
        }
    }
    let r = w.app.post("/pupils/search", Some(&w.teacher.token), json!({"identity_number": synthetic_id(0)})).await;
    assert_eq!(r.status, 500);
    let r = w
        .app
        .post(
            &format!("/pupils/{}/results", w.pupils[&0]),
            Some(&w.teacher.token),
            json!({"assessment_id": w.assessment, "score": 3, "status": "completed"}),
        )
        .await;
    assert_eq!(r.status, 500, "the manual result is not stored either");
    assert_eq!(before, w.app.snapshot(true).await);
}

#[tokio::test]
async fn the_operator_verifies_the_chain_and_finds_the_first_broken_link() {
    let w = world().await;
    for n in [0, 2, 0, 2, 0] {
        assert_eq!(w.app.get(&format!("/pupils/{}", w.pupils[&n]), &w.teacher.token).await.status, 200);
    }
    assert_eq!(w.app.get(&format!("/pupils/{}", w.pupils[&20]), &w.bergen_teacher.token).await.status, 200);
    let report = ops::verify_access_log(&w.app.pool, "oslo").await.unwrap();
    assert_eq!((report.records, report.broken.as_ref()), (5, None));
    assert_eq!(ops::verify_access_log(&w.app.pool, "bergen").await.unwrap().records, 1, "chains are per tenant");
    let heads: i64 = w.app.count("SELECT count(*) FROM access_log_heads").await;
    assert_eq!(heads, 2);

    // The application cannot change or remove records.
    for sql in ["UPDATE access_log SET action = 'x'", "DELETE FROM access_log", "TRUNCATE access_log"] {
        let err = sqlx::query(sql).execute(&w.app.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // Someone with more rights than the application alters record 3: found.
    let tamper = |sql: &'static str| {
        let pool = w.app.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("ALTER TABLE access_log DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
            sqlx::query(sql).execute(&mut *tx).await.unwrap();
            sqlx::query("ALTER TABLE access_log ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    tamper("UPDATE access_log SET client_ip = '10.0.0.9' WHERE seq = 3 AND tenant_id = (SELECT id FROM tenants WHERE slug = 'oslo')").await;
    let report = ops::verify_access_log(&w.app.pool, "oslo").await.unwrap();
    assert_eq!(report.broken, Some(tavle_core::access_log::Break::Altered { seq: 3 }));
    assert_eq!(report.records, 2);
    // Removing a record (even with its hash moved along) leaves a gap.
    tamper("DELETE FROM access_log WHERE seq = 3 AND tenant_id = (SELECT id FROM tenants WHERE slug = 'oslo')").await;
    let report = ops::verify_access_log(&w.app.pool, "oslo").await.unwrap();
    assert_eq!(report.broken, Some(tavle_core::access_log::Break::Missing { expected_seq: 3, found_seq: 4 }));
    // Cutting off the newest record is caught by the head.
    tamper("DELETE FROM access_log WHERE seq >= 3 AND tenant_id = (SELECT id FROM tenants WHERE slug = 'oslo')").await;
    let report = ops::verify_access_log(&w.app.pool, "oslo").await.unwrap();
    assert_eq!(report.broken, Some(tavle_core::access_log::Break::Head { head_seq: 5, last_seq: 2 }));
    assert!(ops::verify_access_log(&w.app.pool, "nowhere").await.is_err());
    let _ = &w.admin;
}

#[tokio::test]
async fn concurrent_reads_keep_one_unbroken_chain() {
    let w = world().await;
    let read = |n: u32| {
        let (app, path, token) = (&w.app, format!("/pupils/{}", w.pupils[&n]), w.leader.token.clone());
        async move { app.get(&path, &token).await }
    };
    let (a, b, c, d, e, f) = tokio::join!(read(0), read(1), read(2), read(3), read(0), read(1));
    assert!([a, b, c, d, e, f].iter().all(|r| r.status == 200));
    let report = ops::verify_access_log(&w.app.pool, "oslo").await.unwrap();
    assert_eq!((report.records, report.broken), (6, None));
}

#[tokio::test]
async fn the_demo_tenant_lets_every_role_try_the_students_routes() {
    let app = TestApp::spawn().await;
    let load = || ops::load_demo(&app.pool, &app.variables["identity_key"], &app.variables["blind_index_key"]);
    load().await.unwrap();
    let logins = load().await.unwrap();
    assert_eq!(app.count("SELECT count(*) FROM results").await, 96, "loading twice adds nothing");
    let login = |role: &str| {
        let l = logins.iter().find(|l| l.role == role).unwrap();
        let staff = Staff {
            tenant: "demo".into(),
            tenant_id: String::new(),
            username: l.username.clone(),
            password: l.password.clone(),
            user_id: String::new(),
        };
        let app = &app;
        async move { app.login(&staff).await }
    };
    let teacher = login("teacher").await;
    let pupils = app.get("/pupils?limit=200", &teacher.token).await.json();
    assert_eq!(pupils["items"].as_array().unwrap().len(), 24, "the teacher's group");
    let group = pupils["items"][0]["groups"][0]["id"].as_str().unwrap().to_owned();
    let assessments = app.get("/assessments", &teacher.token).await.json();
    let lesing = assessments["items"].as_array().unwrap().iter().find(|a| a["subject"] == "norsk").unwrap();
    let o = app
        .get(&format!("/groups/{group}/overview?assessment_id={}", lesing["id"].as_str().unwrap()), &teacher.token)
        .await;
    assert_eq!(o.status, 200, "{}", o.text());
    assert!(o.json()["median"].as_f64().is_some());
    let pupil = pupils["items"][0]["id"].as_str().unwrap();
    let profile = app.get(&format!("/pupils/{pupil}"), &teacher.token).await.json();
    assert_eq!(profile["results"].as_array().unwrap().len(), 2);
    let leader = login("school_leader").await;
    assert_eq!(app.get("/pupils?limit=200", &leader.token).await.json()["items"].as_array().unwrap().len(), 48);
    let privacy = login("privacy_officer").await;
    let log = app.get(&format!("/pupils/{pupil}/access-log"), &privacy.token).await.json();
    assert_eq!(log["items"].as_array().unwrap().len(), 4, "list, overview, profile, the leader's list: {log}");
}
