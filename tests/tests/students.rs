//! The students component: scoped reads, the class overview, manual results
//! and the tamper-evident access log — through spin.toml's routes against a
//! fresh database per test.

use base64::Engine;
use http::{header, Method, Request};
use serde_json::{json, Value};
use tavle_host::ops;
use tavle_tests::{cursors, synthetic_id, Api, Session, Source, Staff, TestApp};

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
    bergen: Staff,
    bergen_admin: Session,
    bergen_sas: Source,
    bergen_publisher: Source,
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
        bergen,
        bergen_admin,
        bergen_sas,
        bergen_publisher,
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
    sqlx::query_as("SELECT action, pupil_ids, client_ip, request_id FROM access_log ORDER BY tenant_id, id")
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
    let search = |session: &Session, body: Value| {
        let (app, token) = (&w.app, session.token.clone());
        async move { app.post("/pupils/search", Some(&token), body).await }
    };
    assert_eq!(given(&w.app.get(&format!("/pupils?group_id={}", w.groups["5B"]), token).await), ["Bjørn", "Dag"]);
    assert_eq!(given(&search(&w.leader, json!({"name": "ødegård", "year_level": 5})).await), ["Åse"]);
    assert!(given(&search(&w.leader, json!({"name": "ødegård", "year_level": 6})).await).is_empty());
    assert_eq!(given(&search(&w.leader, json!({"name": "ce berg"})).await), ["Cecilie"]);
    assert_eq!(given(&search(&w.leader, json!({"name": "E", "group_id": w.groups["5B"]})).await), ["Bjørn"]);
    assert!(given(&w.app.get("/pupils?year_level=6", token).await).is_empty());
    // Another school's filter shows nothing: scope still applies.
    let sorby: String = sqlx::query_scalar("SELECT id::text FROM schools WHERE external_id = 'sorby'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert!(given(&w.app.get(&format!("/pupils?school_id={sorby}"), token).await).is_empty());
    assert!(given(&search(&w.leader, json!({"name": "frida", "school_id": sorby})).await).is_empty());
    // A name search sees exactly the list's scope: own groups (teacher), own
    // school (leader), own tenant; never a restricted pupil.
    assert_eq!(given(&search(&w.teacher, json!({"name": "e"})).await), ["Cecilie", "Åse"]);
    assert_eq!(given(&search(&w.leader, json!({"name": "e"})).await), ["Bjørn", "Cecilie", "Åse"]);
    assert_eq!(given(&search(&w.admin_and_leader, json!({"name": "e"})).await), ["Frida", "Geir"]);
    assert_eq!(given(&search(&w.bergen_teacher, json!({"name": "e"})).await), ["Hanne"]);
    for (session, name) in [
        (&w.teacher, "bjørn"),
        (&w.teacher, "eva"),
        (&w.teacher, "eide"),
        (&w.leader, "frida"),
        (&w.teacher, "hanne"),
        (&w.bergen_teacher, "åse"),
    ] {
        assert!(given(&search(session, json!({"name": name})).await).is_empty(), "{name}");
    }
    for s in [&w.tenant_admin, &w.privacy, &w.admin] {
        search(s, json!({"name": "e"})).await.assert_problem(403, "forbidden");
    }
    // SQL and odd Unicode are just text to search for.
    for name in ["' OR 1=1--", "%", "_", "\u{202E}\u{1F600}", "Robert'); DROP TABLE pupils;--", "\\", "*"] {
        assert!(given(&search(&w.leader, json!({"name": name})).await).is_empty(), "{name}");
    }
    assert_eq!(w.app.count("SELECT count(*) FROM pupils").await, 8);

    // Two per page: every pupil exactly once, listed or searched.
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
    let mut seen = Vec::new();
    let mut body = json!({"name": "E", "limit": 1});
    loop {
        let r = search(&w.leader, body.clone()).await;
        seen.extend(given(&r));
        match r.json()["next_cursor"].as_str() {
            Some(c) => body["cursor"] = json!(c),
            None => break,
        }
    }
    assert_eq!(seen, ["Bjørn", "Cecilie", "Åse"]);
    // Cursors carry an id, never a name.
    let first = w.app.get("/pupils?limit=1", token).await.json();
    let searched = search(&w.leader, json!({"name": "e", "limit": 1})).await.json();
    for cursor in [first["next_cursor"].as_str().unwrap(), searched["next_cursor"].as_str().unwrap()] {
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).unwrap();
        let decoded = String::from_utf8_lossy(&decoded);
        assert!(!decoded.contains("Aasen") && !decoded.contains("Bjørn"), "{decoded}");
    }
}

#[tokio::test]
async fn bad_queries_are_400s_and_names_and_identity_numbers_never_travel_in_urls() {
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
    // A name in the URL is refused whatever it is (never looked at, never
    // echoed), before anything else is checked, and points to the POST.
    for query in [
        "q=Cecilie".to_owned(),
        "q=ce+berg&limit=2".to_owned(),
        format!("limit=1&q={fnr}"),
        "q=".to_owned(),
        "q".to_owned(),
        "q=%00".to_owned(),
        "q=%C3".to_owned(),
        format!("q={}", "x".repeat(101)),
        "q=Cecilie&limit=0&cursor=x".to_owned(),
        "q=Cecilie&q=Berg".to_owned(),
    ] {
        let r = w.app.get(&format!("/pupils?{query}"), token).await;
        let body = r.assert_problem(400, "malformed-request");
        assert_eq!(body["errors"].as_array().map(Vec::len), Some(1), "{query}: {body}");
        assert_eq!(body["errors"][0]["pointer"], "/query/q", "{query}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("POST /pupils/search") && message.contains("`name`"), "{query}: {message}");
        for value in ["Cecilie", "Berg", "berg", &fnr[..6], "xxxxxxxxxx"] {
            assert!(!r.text().contains(value), "{query}: {value} is echoed: {}", r.text());
        }
    }
    // Also unauthenticated: refused before the caller is even looked at.
    let r = w.app.call(Request::builder().uri("/pupils?q=Cecilie").body(Vec::new()).unwrap()).await;
    assert_eq!(r.assert_problem(400, "malformed-request")["errors"][0]["pointer"], "/query/q");
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
    let r = w.app.get("/pupils/search?name=Cecilie", token).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert!(!r.text().contains("Cecilie"));
}

#[tokio::test]
async fn a_search_body_is_refused_as_a_whole_with_pointers_and_changes_nothing() {
    let w = world().await;
    let fnr = synthetic_id(0);
    let spaced = format!("{}.{}", &fnr[..6], &fnr[6..]);
    let before = w.app.snapshot(true).await;
    let cursor_of_a_name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"after":"Cecilie"}"#);
    let cases: Vec<(Value, Vec<&str>)> = vec![
        // An identity number is not a name, however it is written.
        (json!({"name": fnr}), vec!["/name"]),
        (json!({"name": spaced}), vec!["/name"]),
        (json!({"name": format!("Cecilie {fnr}")}), vec!["/name"]),
        // Both, neither, or something else.
        (json!({"name": "Cecilie", "identity_number": fnr}), vec![""]),
        (json!({}), vec![""]),
        (json!({"limit": 5, "group_id": w.groups["5A"]}), vec![""]),
        (json!({"name": "Cecilie", "q": "Cecilie"}), vec![""]),
        (json!({"name": "Cecilie", "given_name": "Cecilie"}), vec![""]),
        (json!({"identity_number": fnr, "fnr": fnr}), vec![""]),
        (json!("Cecilie"), vec![""]),
        // The list's filters and paging go with a name, not with a number.
        (json!({"identity_number": fnr, "limit": 1}), vec!["/limit"]),
        (json!({"identity_number": fnr, "school_id": null, "cursor": "x"}), vec!["/school_id", "/cursor"]),
        // Each rule of the list's parameters, now in the body.
        (json!({"name": ""}), vec!["/name"]),
        (json!({"name": " \t "}), vec!["/name"]),
        (json!({"name": "x".repeat(101)}), vec!["/name"]),
        (json!({"name": "e\u{301}".repeat(101)}), vec!["/name"]),
        (json!({"name": "Ce\u{0}cilie"}), vec!["/name"]),
        (json!({"name": null}), vec!["/name"]),
        (json!({"name": ["Cecilie"]}), vec!["/name"]),
        (json!({"name": "Cecilie", "limit": 0}), vec!["/limit"]),
        (json!({"name": "Cecilie", "limit": 201}), vec!["/limit"]),
        (json!({"name": "Cecilie", "limit": "2"}), vec!["/limit"]),
        (json!({"name": "Cecilie", "year_level": 14}), vec!["/year_level"]),
        (json!({"name": "Cecilie", "school_id": "nordby"}), vec!["/school_id"]),
        (json!({"name": "Cecilie", "group_id": "5A"}), vec!["/group_id"]),
        (json!({"name": "Cecilie", "cursor": "not-a-cursor"}), vec!["/cursor"]),
        (json!({"name": "Cecilie", "cursor": cursor_of_a_name}), vec!["/cursor"]),
        (
            json!({"name": fnr, "school_id": "nordby", "year_level": 0, "limit": 1000, "cursor": "x"}),
            vec!["/name", "/school_id", "/year_level", "/limit", "/cursor"],
        ),
    ];
    for (body, pointers) in cases {
        let r = w.app.post("/pupils/search", Some(&w.teacher.token), body.clone()).await;
        let problem = r.assert_problem(422, "validation-failed");
        let got: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
        assert_eq!(got, pointers, "{body}: {problem}");
        for value in ["Cecilie", "nordby", &fnr[..6]] {
            assert!(!r.text().contains(value), "{body}: {value} is echoed: {}", r.text());
        }
    }
    let r = w.app.post("/pupils/search", Some(&w.teacher.token), json!({"name": fnr})).await;
    let message = r.json()["errors"][0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("identity_number"), "says where a number belongs: {message}");
    // Validated before anything else: a bad body is a 422 even for callers
    // who would get a 403, and without credentials.
    let r = w.app.post("/pupils/search", Some(&w.tenant_admin.token), json!({"name": fnr})).await;
    r.assert_problem(422, "validation-failed");
    let r = w.app.post("/pupils/search", None, json!({"name": "Cecilie", "limit": 0})).await;
    r.assert_problem(422, "validation-failed");
    // Not JSON, or not UTF-8: 400; not declared as JSON: 415.
    for raw in [&b"{\"name\": \"Cecilie\""[..], b"{\"name\": \"\xC3\"}", b"{\"name\": \"\\ud800\"}", b""] {
        let r = w
            .app
            .call(
                Request::builder()
                    .method(Method::POST)
                    .uri("/pupils/search")
                    .header(header::AUTHORIZATION, format!("Bearer {}", w.teacher.token))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(raw.to_vec())
                    .unwrap(),
            )
            .await;
        r.assert_problem(400, "malformed-request");
        assert!(!r.text().contains("Cecilie"), "{}", r.text());
    }
    let r = w
        .app
        .call(
            Request::builder()
                .method(Method::POST)
                .uri("/pupils/search")
                .header(header::AUTHORIZATION, format!("Bearer {}", w.teacher.token))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(b"name=Cecilie".to_vec())
                .unwrap(),
        )
        .await;
    r.assert_problem(415, "unsupported-media-type");
    assert_eq!(before, w.app.snapshot(true).await, "refused searches change nothing, not even the logs");
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

// ---------------------------------------------------------------- cursors

/// More of everything to page through, in both tenants: a second privacy
/// officer in Oslo (`pia`) and one in Bergen (`bodil`); in Bergen three
/// pupils in 7A, a group 7B and a second school; a second assessment
/// (norsk) in each tenant.
struct MoreToPage {
    pia: Session,
    bodil: Session,
}

async fn more_to_page(w: &World) -> MoreToPage {
    let pupils =
        vec![pupil(20, "Hanne", "Hope", &["7A"]), pupil(21, "Ine", "Hope", &["7A"]), pupil(22, "Jon", "Hope", &["7A"])];
    let r = w.app.deliver(&w.bergen_sas, "roster", "rb-2", &roster("berg", &["7A", "7B"], pupils)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = w.app.deliver(&w.bergen_sas, "roster", "rb-3", &roster("berg2", &["8A"], vec![])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let later = |n: u32| results("regning", "norsk", "2026-10-01", &[(n, Some(7.0), "completed")]);
    let r = w.app.deliver(&w.publisher, "results", "res-2", &later(0)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = w.app.deliver(&w.bergen_publisher, "results", "rb-res-2", &later(20)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let privacy = json!([{"role": "privacy_officer"}]);
    let pia = w.app.create_user(&w.admin, &w.oslo, "pia", privacy.clone()).await;
    let bodil = w.app.create_user(&w.bergen_admin, &w.bergen, "bodil", privacy).await;
    MoreToPage { pia: w.app.login(&pia).await, bodil: w.app.login(&bodil).await }
}

/// Asserts that each of `foreign` on `path` (GET) is answered exactly as a
/// malformed cursor, and that none of them changed anything.
async fn refused_everywhere(w: &World, path: &str, token: &str, foreign: &[(String, String)]) {
    let before = w.app.snapshot(true).await;
    for (what, cursor) in foreign {
        cursors::assert_refused(&w.app, path, token, cursor, what).await;
    }
    assert_eq!(before, w.app.snapshot(true).await, "{path}: refused cursors change nothing, not even the logs");
}

#[tokio::test]
async fn pupil_cursors_are_opaque_and_open_only_for_their_caller_list_and_filters() {
    let w = world().await;
    more_to_page(&w).await;
    let (kari, leif, berit) = (w.teacher.token.as_str(), w.leader.token.as_str(), w.bergen_teacher.token.as_str());

    // Kari's list: Cecilie Berg, then Åse Ødegård. The cursor after Cecilie
    // shows neither her id nor her name.
    let list = "/pupils?limit=1";
    let first = w.app.get(list, kari).await.json();
    assert_eq!(first["items"][0]["id"], w.pupils[&2]);
    let own = first["next_cursor"].as_str().unwrap().to_owned();
    cursors::assert_opaque(&own, &[&w.pupils[&2], "Cecilie", "Berg", &w.oslo.tenant_id]);
    let next = w.app.get(&cursors::with_cursor(list, &own), kari).await.json();
    assert_eq!((&next["items"][0]["id"], &next["next_cursor"]), (&json!(w.pupils[&0]), &Value::Null), "{next}");

    let search = json!({"name": "e", "limit": 1});
    let first = w.app.post("/pupils/search", Some(kari), search.clone()).await.json();
    assert_eq!(first["items"][0]["id"], w.pupils[&2]);
    let own_search = first["next_cursor"].as_str().unwrap().to_owned();
    cursors::assert_opaque(&own_search, &[&w.pupils[&2], "Cecilie", &w.oslo.tenant_id]);
    let mut more = search.clone();
    more["cursor"] = json!(own_search);
    let next = w.app.post("/pupils/search", Some(kari), more).await.json();
    assert_eq!((&next["items"][0]["id"], &next["next_cursor"]), (&json!(w.pupils[&0]), &Value::Null), "{next}");

    // A cursor of Leif's names Bjørn Aasen, outside Kari's groups: it no
    // longer tells Kari where Bjørn sorts among her pupils, nor does one she
    // makes up.
    let five_a = format!("{list}&group_id={}", w.groups["5A"]);
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let mut foreign: Vec<(String, String)> = vec![
        ("another tenant's".into(), cursors::next_cursor(&w.app, list, berit).await),
        ("another user's".into(), cursors::next_cursor(&w.app, list, leif).await),
        ("the name search's".into(), own_search.clone()),
        ("the list's by group".into(), cursors::next_cursor(&w.app, &five_a, kari).await),
        ("the list's by year".into(), cursors::next_cursor(&w.app, &format!("{list}&year_level=5"), kari).await),
        ("one naming a pupil out of scope".into(), b64(json!({"after": w.pupils[&1]}))),
    ];
    foreign.extend(cursors::tampered(&own, &json!({"after": w.pupils[&2]})));
    refused_everywhere(&w, list, kari, &foreign).await;
    // The list's own cursor, with a filter that did not issue it.
    refused_everywhere(&w, &five_a, kari, &[("the unfiltered list's".into(), own.clone())]).await;

    let post = |token: &str, body: Value| {
        let (app, token) = (&w.app, token.to_owned());
        async move { cursors::next_cursor_of_post(app, "/pupils/search", &token, &body).await }
    };
    let mut foreign: Vec<(String, String)> = vec![
        ("another tenant's".into(), post(berit, search.clone()).await),
        ("another user's".into(), post(leif, search.clone()).await),
        ("the list's".into(), own.clone()),
        ("another name's".into(), post(kari, json!({"name": "g", "limit": 1})).await),
        ("another year's".into(), post(kari, json!({"name": "e", "limit": 1, "year_level": 5})).await),
        ("one naming a pupil out of scope".into(), b64(json!({"after": w.pupils[&1]}))),
    ];
    foreign.extend(cursors::tampered(&own_search, &json!({"after": w.pupils[&2]})));
    let by_group = json!({"name": "e", "limit": 1, "group_id": w.groups["5A"]});
    foreign.push(("the search's own".into(), own_search.clone()));
    let before = w.app.snapshot(true).await;
    for (what, cursor) in &foreign {
        // The search's own cursor is refused only where a filter was added.
        let body = if what == "the search's own" { &by_group } else { &search };
        cursors::assert_refused_in_body(&w.app, "/pupils/search", kari, body, cursor, what).await;
    }
    assert_eq!(before, w.app.snapshot(true).await, "refused cursors change nothing, not even the logs");
}

#[tokio::test]
async fn the_privacy_officers_cursors_open_only_for_their_caller_list_and_pupil() {
    let w = world().await;
    let more = more_to_page(&w).await;
    let (per, pia, bodil) = (w.privacy.token.as_str(), more.pia.token.as_str(), more.bodil.token.as_str());
    // Two accesses to a pupil and two identity-number searches in each tenant.
    for (session, pupil, numbers) in [(&w.teacher, 0, [0, 99]), (&w.bergen_teacher, 20, [20, 98])] {
        for _ in 0..2 {
            assert_eq!(w.app.get(&format!("/pupils/{}", w.pupils[&pupil]), &session.token).await.status, 200);
        }
        for n in numbers {
            let r =
                w.app.post("/pupils/search", Some(&session.token), json!({"identity_number": synthetic_id(n)})).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let log = |n: u32| format!("/pupils/{}/access-log?limit=1", w.pupils[&n]);
    let searches = "/pupils/searches?limit=1";
    for path in [log(0), searches.to_owned()] {
        let first = w.app.get(&path, per).await.json();
        let own = first["next_cursor"].as_str().unwrap().to_owned();
        cursors::assert_opaque(&own, &[&w.oslo.tenant_id, &w.pupils[&0]]);
        let next = w.app.get(&cursors::with_cursor(&path, &own), per).await;
        assert_eq!(next.status, 200, "{}", next.text());
        assert_eq!(next.json()["items"].as_array().unwrap().len(), 1, "{}", next.text());
    }
    // The position each first page continues before, as the old cursors wrote it in the clear.
    let first_log = w.app.get(&log(0), per).await.json();
    let own_log = first_log["next_cursor"].as_str().unwrap().to_owned();
    let clear_log = json!({"before": first_log["items"][0]["seq"]});
    let first_searches = w.app.get(searches, per).await.json();
    let own_searches = first_searches["next_cursor"].as_str().unwrap().to_owned();
    let clear_searches = json!({"before": first_searches["items"][0]["id"].as_str().unwrap().parse::<i64>().unwrap()});

    let mut foreign: Vec<(String, String)> = vec![
        ("another tenant's".into(), cursors::next_cursor(&w.app, &log(20), bodil).await),
        ("another user's".into(), cursors::next_cursor(&w.app, &log(0), pia).await),
        ("the searches'".into(), own_searches.clone()),
    ];
    foreign.extend(cursors::tampered(&own_log, &clear_log));
    refused_everywhere(&w, &log(0), per, &foreign).await;
    // Another pupil's log: not with the cursor of pupil 0's.
    refused_everywhere(&w, &log(2), per, &[("another pupil's".into(), own_log.clone())]).await;

    let mut foreign: Vec<(String, String)> = vec![
        ("another tenant's".into(), cursors::next_cursor(&w.app, searches, bodil).await),
        ("another user's".into(), cursors::next_cursor(&w.app, searches, pia).await),
        ("the access log's".into(), own_log.clone()),
    ];
    foreign.extend(cursors::tampered(&own_searches, &clear_searches));
    refused_everywhere(&w, searches, per, &foreign).await;
}

#[tokio::test]
async fn structure_cursors_page_and_open_only_for_their_caller_list_and_filters() {
    let w = world().await;
    more_to_page(&w).await;
    let (tone, siri, bergen) =
        (w.tenant_admin.token.as_str(), w.admin_and_leader.token.as_str(), w.bergen_admin.token.as_str());
    let nordby: String = sqlx::query_scalar("SELECT id::text FROM schools WHERE external_id = 'nordby'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    // Page by page, each list in its order.
    for (path, key, want) in [
        ("/groups?limit=1", "name", vec!["5A", "5B", "6A"]),
        ("/schools?limit=1", "name", vec!["nordby skole", "sorby skole"]),
        ("/assessments?limit=1", "administered_on", vec!["2026-10-01", "2026-09-15"]),
    ] {
        let mut seen = Vec::new();
        let mut next = path.to_owned();
        loop {
            let page = w.app.get(&next, tone).await;
            assert_eq!(page.status, 200, "{next}: {}", page.text());
            let page = page.json();
            seen.push(page["items"][0][key].as_str().unwrap().to_owned());
            match page["next_cursor"].as_str() {
                Some(c) => {
                    cursors::assert_opaque(c, &[page["items"][0]["id"].as_str().unwrap(), &w.oslo.tenant_id]);
                    next = cursors::with_cursor(path, c);
                }
                None => break,
            }
        }
        assert_eq!(seen, want, "{path}");
    }

    let (groups, schools, assessments) = ("/groups?limit=1", "/schools?limit=1", "/assessments?limit=1");
    let by_school = format!("{groups}&school_id={nordby}");
    let norsk = format!("{assessments}&subject=norsk");
    for (path, other_list, filtered) in [
        (groups, schools, Some(by_school.as_str())),
        (schools, groups, None),
        (assessments, groups, Some(norsk.as_str())),
    ] {
        let first = w.app.get(path, tone).await.json();
        let own = first["next_cursor"].as_str().unwrap().to_owned();
        let mut foreign: Vec<(String, String)> = vec![
            ("another tenant's".into(), cursors::next_cursor(&w.app, path, bergen).await),
            ("another user's".into(), cursors::next_cursor(&w.app, path, siri).await),
            ("another list's".into(), cursors::next_cursor(&w.app, other_list, tone).await),
        ];
        if let Some(filtered) = filtered {
            foreign.push(("the filtered list's".into(), cursors::next_cursor(&w.app, filtered, tone).await));
            refused_everywhere(&w, filtered, tone, &[("the unfiltered list's".into(), own.clone())]).await;
        }
        let item = &first["items"][0];
        let clear = match item["administered_on"].as_str() {
            Some(date) => json!({"k": date, "id": item["id"]}),
            None => json!({"k": item["name"], "id": item["id"]}),
        };
        foreign.extend(cursors::tampered(&own, &clear));
        refused_everywhere(&w, path, tone, &foreign).await;
    }
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
    let search = |name: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/pupils/search")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", "req-12345")
            .body(serde_json::to_vec(&json!({"name": name})).unwrap())
            .unwrap()
    };
    // A name search is a page of the list: the same record, naming the pupils shown.
    let r = w.app.call(search("berg")).await;
    assert_eq!((r.status, ids(&r.json(), "items")), (200, vec![w.pupils[&2].clone()]), "{}", r.text());
    // No personal data, no record: 404s, structure lists, empty result pages.
    assert_eq!(w.app.call(req(format!("/pupils/{}", w.pupils[&1]))).await.status, 404);
    assert_eq!(w.app.call(req("/groups".into())).await.status, 200);
    let r = w.app.call(search("nobody")).await;
    assert_eq!((r.status, r.json()["items"].clone()), (200, json!([])));

    let records = access_records(&w.app).await;
    let p = |n: u32| uuid::Uuid::parse_str(&w.pupils[&n]).unwrap();
    let expected = vec![
        ("pupil.viewed".to_owned(), vec![p(0)]),
        ("pupils.listed".to_owned(), vec![p(2), p(0)]),
        ("group.overview_viewed".to_owned(), vec![p(2), p(0)]),
        ("pupils.listed".to_owned(), vec![p(2)]),
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
    // Newest first across lanes: the second page's record is older (RFC 3339 in UTC sorts as text).
    assert!(page2["items"][0]["at"].as_str() < page["items"][0]["at"].as_str());
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
    for body in [json!({"identity_number": synthetic_id(0)}), json!({"name": "e"}), json!({"name": "Ødegård"})] {
        let r = w.app.post("/pupils/search", Some(&w.teacher.token), body.clone()).await;
        assert_eq!(r.status, 500, "{body}: {}", r.text());
        for secret in ["Åse", "Ødegård", "Cecilie", "given_name"] {
            assert!(!r.text().contains(secret), "{body} leaked {secret}: {}", r.text());
        }
    }
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
    assert_eq!(app.count("SELECT count(*) FROM results").await, 144, "loading twice adds nothing");
    assert_eq!(app.count("SELECT count(*) FROM assessment_subtests WHERE threshold IS NOT NULL").await, 6);
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
    assert_eq!(profile["results"].as_array().unwrap().len(), 3);
    assert!(!profile["results"][1]["since_last"].is_null(), "the autumn reading follows the spring's: {profile}");
    // The teacher's follow-up list for the demo's school year names someone.
    let follow_up = app.get("/follow-up?school_year=2026", &teacher.token).await;
    assert_eq!(follow_up.status, 200, "{}", follow_up.text());
    let follow_up = follow_up.json();
    let listed = follow_up["groups"][0]["pupils"].as_array().unwrap().len();
    assert!((1..24).contains(&listed), "{listed} of 24 flagged");
    let pupil_listed = follow_up.to_string().contains(pupil);
    let leader = login("school_leader").await;
    assert_eq!(app.get("/pupils?limit=200", &leader.token).await.json()["items"].as_array().unwrap().len(), 48);
    let privacy = login("privacy_officer").await;
    let log = app.get(&format!("/pupils/{pupil}/access-log"), &privacy.token).await.json();
    let expected = 4 + usize::from(pupil_listed);
    assert_eq!(
        log["items"].as_array().unwrap().len(),
        expected,
        "list, overview, profile, the follow-up list if it named the pupil, the leader's list: {log}"
    );
}

// ------------------------------------------- identity-number searches leave a trace

/// A request with a bearer token and an `x-request-id`, optionally with a JSON body.
fn traced(method: Method, path: &str, token: &str, request_id: &str, body: Option<Value>) -> Request<Vec<u8>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-request-id", request_id);
    if body.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(body.map(|v| serde_json::to_vec(&v).unwrap()).unwrap_or_default()).unwrap()
}

async fn user_id(app: &TestApp, username: &str) -> String {
    id_of(app, "SELECT id FROM users WHERE username = $1", username).await
}

/// The tenant's search records as (actor, client ip, request id, details), oldest first.
async fn search_records(app: &TestApp, tenant_id: &str) -> Vec<(String, Option<String>, Option<String>, Value)> {
    sqlx::query_as(
        "SELECT actor_user_id::text, client_ip, request_id, details FROM audit_log \
         WHERE action = 'pupil.searched' AND tenant_id = $1::uuid ORDER BY id",
    )
    .bind(tenant_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_identity_number_search_is_recorded_hit_or_miss_without_the_number() {
    let w = world().await;
    // A teacher whose only group has no pupils: nothing in scope.
    let empty = id_of(
        &w.app,
        "INSERT INTO groups (tenant_id, school_id, name) SELECT tenant_id, id, '5C' FROM schools \
         WHERE external_id = $1 RETURNING id",
        "nordby",
    )
    .await;
    let tom = w.app.create_user(&w.admin, &w.oslo, "tom", json!([{"role": "teacher", "group_id": empty}])).await;
    let tom = w.app.login(&tom).await;
    let p = |n: u32| w.pupils[&n].clone();
    // (who, username, pupil number, the pupil found)
    let cases: [(&Session, &str, u32, Option<String>); 8] = [
        (&w.teacher, "kari", 0, Some(p(0))),
        (&w.teacher, "kari", 1, None),  // another group
        (&w.teacher, "kari", 10, None), // another school
        (&w.teacher, "kari", 20, None), // another tenant
        (&w.teacher, "kari", 4, None),  // restricted
        (&w.teacher, "kari", 99, None), // nobody has it
        (&tom, "tom", 0, None),         // nothing in scope at all
        (&w.leader, "leif", 1, Some(p(1))),
    ];
    for (i, (session, _, n, found)) in cases.iter().enumerate() {
        let body = json!({"identity_number": synthetic_id(*n)});
        let r = w.app.call(traced(Method::POST, "/pupils/search", &session.token, &format!("s-{i}"), Some(body))).await;
        assert_eq!(r.status, 200, "case {i}: {}", r.text());
        let want: Vec<&str> = found.iter().map(String::as_str).collect();
        assert_eq!(ids(&r.json(), "items"), want, "case {i}");
    }
    let r = w
        .app
        .call(traced(
            Method::POST,
            "/pupils/search",
            &w.bergen_teacher.token,
            "s-bergen",
            Some(json!({"identity_number": synthetic_id(20)})),
        ))
        .await;
    assert_eq!(ids(&r.json(), "items"), [p(20).as_str()]);

    // One record per search, misses included: who, from where, in which
    // request, hit or miss and the pupil found.
    let records = search_records(&w.app, &w.oslo.tenant_id).await;
    assert_eq!(records.len(), cases.len(), "{records:?}");
    for (i, ((_, username, _, found), (actor, ip, request_id, details))) in cases.iter().zip(&records).enumerate() {
        assert_eq!(actor, &user_id(&w.app, username).await, "case {i}");
        assert_eq!((ip.as_deref(), request_id.as_deref()), (Some("127.0.0.1"), Some(format!("s-{i}").as_str())));
        assert_eq!(details, &json!({"hit": found.is_some(), "pupil_id": found}), "case {i}");
    }
    // A hit targets the pupil found (the audit log's target index finds a
    // pupil's searches); a miss targets nobody.
    let mistargeted = w
        .app
        .count(
            "SELECT count(*) FROM audit_log WHERE action = 'pupil.searched' AND \
             (target_kind, target_id) IS DISTINCT FROM \
             (CASE WHEN (details->>'hit')::bool THEN 'pupil' END, details->>'pupil_id')",
        )
        .await;
    assert_eq!(mistargeted, 0);
    let bergen: String =
        sqlx::query_scalar("SELECT id::text FROM tenants WHERE slug = 'bergen'").fetch_one(&w.app.pool).await.unwrap();
    let bergen_records = search_records(&w.app, &bergen).await;
    assert_eq!(bergen_records.len(), 1, "each tenant's searches are its own");
    assert_eq!(bergen_records[0].3, json!({"hit": true, "pupil_id": p(20)}));
    // A hit still writes its access record for the pupil found, as before.
    let searched: Vec<Vec<uuid::Uuid>> =
        access_records(&w.app).await.into_iter().filter(|r| r.0 == "pupils.searched").map(|r| r.1).collect();
    assert_eq!(searched.len(), 3, "three hits, three access records");

    // Neither the number nor its blind index is stored with the record.
    let audit: String =
        sqlx::query_scalar("SELECT string_agg(a::text, ' ') FROM audit_log a").fetch_one(&w.app.pool).await.unwrap();
    let index = tavle_core::crypto::BlindIndex::from_config(&w.app.variables["blind_index_key"]).unwrap();
    for n in [0, 1, 4, 10, 20, 99] {
        let number = synthetic_id(n);
        assert!(!audit.contains(&number), "number {n} in the audit log");
        let id = tavle_core::identity::IdentityNumber::parse(&number, tavle_core::identity::SyntheticPolicy::Accept)
            .unwrap();
        for tenant in [&w.oslo.tenant_id, &bergen] {
            let hex: String = index.index(tenant, &id).iter().map(|b| format!("{b:02x}")).collect();
            assert!(!audit.contains(&hex), "blind index of {n} in the audit log");
        }
    }

    // Rejected searches are not searches: nothing recorded, nothing changed.
    let before = w.app.snapshot(true).await;
    let json_ct = |body: &[u8]| {
        Request::builder()
            .method(Method::POST)
            .uri("/pupils/search")
            .header(header::AUTHORIZATION, format!("Bearer {}", w.teacher.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .unwrap()
    };
    let long = "1".repeat(20_000);
    for (body, status) in [
        (br#"{"identity_number": "12345678901"}"#.to_vec(), 422),
        (br#"{"identity_number": 12345678901}"#.to_vec(), 422),
        (br#"{"identity_number": "\u0000"}"#.to_vec(), 422),
        (br#"{"identity_number": ["x"]}"#.to_vec(), 422),
        (br#"{"identity_number": "x", "identity_index": "00"}"#.to_vec(), 422),
        (br#"{}"#.to_vec(), 422),
        (b"{".to_vec(), 400),
        (b"[]".to_vec(), 422),
        (format!(r#"{{"identity_number": "{long}"}}"#).into_bytes(), 413),
    ] {
        let r = w.app.call(json_ct(&body)).await;
        assert_eq!(r.status, status, "{}: {}", String::from_utf8_lossy(&body[..body.len().min(60)]), r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(!r.text().contains("12345678901"));
    }
    // Callers who can see no pupil at all are refused before any lookup.
    for s in [&w.tenant_admin, &w.privacy] {
        let r = w.app.post("/pupils/search", Some(&s.token), json!({"identity_number": synthetic_id(0)})).await;
        r.assert_problem(403, "forbidden");
    }
    assert_eq!(before, w.app.snapshot(true).await, "rejected searches change nothing, not even the logs");
}

#[tokio::test]
async fn a_search_whose_record_cannot_be_written_returns_nothing() {
    let w = world().await;
    // Every new search record fails, as a full disk or a broken trigger would.
    sqlx::query("ALTER TABLE audit_log ADD CONSTRAINT refuse_searches CHECK (action <> 'pupil.searched') NOT VALID")
        .execute(&w.app.pool)
        .await
        .unwrap();
    let before = w.app.snapshot(true).await;
    for n in [0, 1, 99] {
        let r = w.app.post("/pupils/search", Some(&w.teacher.token), json!({"identity_number": synthetic_id(n)})).await;
        assert_eq!(r.status, 500, "pupil {n}: {}", r.text());
        for secret in [w.pupils[&0].as_str(), "Åse", "Ødegård", "given_name", "items"] {
            assert!(!r.text().contains(secret), "pupil {n} leaked {secret}: {}", r.text());
        }
    }
    assert_eq!(before, w.app.snapshot(true).await, "no access record without its search record either");
}

#[tokio::test]
async fn the_privacy_officer_sees_every_search_newest_first_page_by_page() {
    let w = world().await;
    let search = |session: &Session, n: u32| {
        let (app, token) = (&w.app, session.token.clone());
        async move {
            let r = app.post("/pupils/search", Some(&token), json!({"identity_number": synthetic_id(n)})).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    search(&w.teacher, 0).await;
    search(&w.teacher, 99).await;
    search(&w.leader, 1).await;
    search(&w.bergen_teacher, 20).await;
    let accesses_before = access_records(&w.app).await.len();

    let r = w.app.call(traced(Method::GET, "/pupils/searches", &w.privacy.token, "view-1", None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    let items = body["items"].as_array().unwrap().clone();
    assert_eq!(body["next_cursor"], Value::Null);
    // Oslo's three searches, newest first; Bergen's are Bergen's.
    let summary: Vec<(&str, bool, Value)> = items
        .iter()
        .map(|i| (i["actor"]["username"].as_str().unwrap(), i["hit"].as_bool().unwrap(), i["pupil_id"].clone()))
        .collect();
    assert_eq!(
        summary,
        [("leif", true, json!(w.pupils[&1])), ("kari", false, Value::Null), ("kari", true, json!(w.pupils[&0]))]
    );
    let kari = &items[1];
    assert_eq!(
        kari["actor"],
        json!({"id": user_id(&w.app, "kari").await, "username": "kari", "display_name": "kari display"})
    );
    assert_eq!(kari["client_ip"], "127.0.0.1");
    assert!(kari["at"].as_str().unwrap().ends_with('Z'), "{kari}");
    assert!(kari["id"].as_str().is_some_and(|id| !id.is_empty()), "{kari}");
    let mut keys: Vec<&str> = kari.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["actor", "at", "client_ip", "hit", "id", "pupil_id"]);
    assert!(!body.to_string().contains(&synthetic_id(0)[..6]), "no identity numbers: {body}");
    // The page names two pupils: viewing it is an access to their data.
    let records = access_records(&w.app).await;
    assert_eq!(records.len(), accesses_before + 1);
    let (action, pupils, _, request_id) = records.iter().find(|r| r.0 == "pupil_searches.viewed").unwrap();
    let mut want = vec![uuid::Uuid::parse_str(&w.pupils[&1]).unwrap(), uuid::Uuid::parse_str(&w.pupils[&0]).unwrap()];
    want.sort();
    let mut got = pupils.clone();
    got.sort();
    assert_eq!((action.as_str(), got, request_id.as_deref()), ("pupil_searches.viewed", want, Some("view-1")));

    // Page by page: every search once, in the same order.
    let mut seen = Vec::new();
    let mut path = "/pupils/searches?limit=1".to_owned();
    for _ in 0..10 {
        let page = w.app.get(&path, &w.privacy.token).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        seen.push(page["items"][0]["id"].clone());
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/pupils/searches?limit=1&cursor={c}"),
            None => break,
        }
    }
    let all: Vec<Value> = items.iter().map(|i| i["id"].clone()).collect();
    assert_eq!(seen, all);
    // A page of misses names no pupil and writes no access record.
    let first = w.app.get("/pupils/searches?limit=1", &w.privacy.token).await.json();
    assert_eq!(first["items"][0]["id"], items[0]["id"]);
    let c = first["next_cursor"].as_str().unwrap().to_owned();
    let accesses = access_records(&w.app).await.len();
    let page = w.app.get(&format!("/pupils/searches?limit=1&cursor={c}"), &w.privacy.token).await.json();
    assert_eq!(page["items"][0]["id"], items[1]["id"]);
    assert_eq!(page["items"][0]["hit"], false);
    assert_eq!(access_records(&w.app).await.len(), accesses);

    // The privacy officer only; everyone else is refused, and nothing changes.
    let before = w.app.snapshot(true).await;
    for s in [&w.teacher, &w.leader, &w.tenant_admin, &w.admin_and_leader, &w.admin] {
        w.app.get("/pupils/searches", &s.token).await.assert_problem(403, "forbidden");
    }
    let r = w.app.call(Request::builder().uri("/pupils/searches").body(Vec::new()).unwrap()).await;
    r.assert_problem(401, "unauthenticated");
    let r = w.app.send(Method::POST, "/pupils/searches", Some(&w.privacy.token), Some(json!({}))).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    for query in [
        "limit=0".to_owned(),
        "limit=201".to_owned(),
        "limit=x".to_owned(),
        "cursor=%%%".to_owned(),
        "cursor=not-a-cursor".to_owned(),
        format!("cursor={}", b64(json!({"before": 0}))),
        format!("cursor={}", b64(json!({"before": -5}))),
        format!("cursor={}", b64(json!({"before": "1; DROP TABLE audit_log"}))),
        format!("cursor={}", b64(json!({"after": w.pupils[&0]}))),
        format!("cursor={}", b64(json!({"before": 1e300}))),
        format!("cursor={}", "A".repeat(600)),
    ] {
        let r = w.app.get(&format!("/pupils/searches?{query}"), &w.privacy.token).await;
        let p = r.assert_problem(400, "malformed-request");
        let pointer = if query.starts_with("limit") { "/query/limit" } else { "/query/cursor" };
        assert_eq!(p["errors"][0]["pointer"], pointer, "{query}: {p}");
    }
    assert_eq!(before, w.app.snapshot(true).await, "refused views change nothing, not even the logs");
}

// ------------------------------------------------------- names compared in NFC

/// Percent-encodes every byte outside the unreserved set, as a browser would.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn name_search_finds_names_typed_composed_or_decomposed_in_any_case() {
    let w = world().await;
    let sas = w.app.create_source(&w.admin, "sas").await;
    // As sent by a school system: some composed (NFC), some with combining marks (NFD).
    let people = [
        (30, "Amélie", "Dupont"),        // é composed
        (31, "Ame\u{301}lie", "Durand"), // é as e + combining acute
        (32, "Æsa", "Østerga\u{30A}rd"), // Danish/Norwegian, å decomposed
        (33, "Ju\u{308}rgen", "Müller"), // ü decomposed / composed
        (34, "Björk", "Ängström"),       // Swedish, composed
        (35, "Mette", "Ærø"),            // Danish, no decomposition exists
    ];
    let pupils = people.iter().map(|(n, g, f)| pupil(*n, g, f, &["7B"])).collect();
    let r = w.app.deliver(&sas, "roster", "r-vestby", &roster("vestby", &["7B"], pupils)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let vestby = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "vestby").await;
    let leader =
        w.app.create_user(&w.admin, &w.oslo, "vera", json!([{"role": "school_leader", "school_id": vestby}])).await;
    let leader = w.app.login(&leader).await;

    // Stored in NFC, whatever was sent.
    assert_eq!(w.app.count("SELECT count(*) FROM pupils WHERE NOT (given_name IS NFC NORMALIZED AND family_name IS NFC NORMALIZED)").await, 0);
    let stored: Vec<String> = sqlx::query_scalar("SELECT given_name FROM pupils WHERE family_name = 'Durand'")
        .fetch_all(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(stored, ["Am\u{e9}lie"]);

    let found = |q: &'static str| {
        let (app, token) = (&w.app, leader.token.clone());
        async move {
            let r = app.post("/pupils/search", Some(&token), json!({"name": q})).await;
            assert_eq!(r.status, 200, "{q:?}: {}", r.text());
            let body = r.json();
            let mut names: Vec<String> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| format!("{} {}", p["given_name"].as_str().unwrap(), p["family_name"].as_str().unwrap()))
                .collect();
            names.sort();
            names
        }
    };
    let both = ["Am\u{e9}lie Dupont", "Am\u{e9}lie Durand"];
    // Composed query, decomposed stored and the reverse; any case.
    for q in ["Am\u{e9}lie", "Ame\u{301}lie", "AM\u{c9}LIE", "AME\u{301}LIE", "am\u{e9}", "me\u{301}li"] {
        assert_eq!(found(q).await, both, "{q:?}");
    }
    assert_eq!(found("Am\u{e9}lie Durand").await, ["Am\u{e9}lie Durand"]);
    for (queries, who) in [
        (
            &["\u{f8}sterg\u{e5}rd", "\u{d8}STERGA\u{30A}RD", "\u{c6}SA", "\u{e6}sa \u{f8}sterga\u{30a}rd"][..],
            "\u{c6}sa \u{d8}sterg\u{e5}rd",
        ),
        (
            &["j\u{fc}rgen", "JU\u{308}RGEN", "MU\u{308}LLER", "m\u{fc}ller", "M\u{dc}LLER"][..],
            "J\u{fc}rgen M\u{fc}ller",
        ),
        (
            &["bjo\u{308}rk", "BJ\u{d6}RK", "\u{e4}ngstr\u{f6}m", "A\u{308}NGSTRO\u{308}M", "\u{c4}NGSTR\u{d6}M"][..],
            "Bj\u{f6}rk \u{c4}ngstr\u{f6}m",
        ),
        (&["\u{e6}r\u{f8}", "\u{c6}R\u{d8}", "mette \u{c6}r\u{f8}"][..], "Mette \u{c6}r\u{f8}"),
    ] {
        for q in queries {
            assert_eq!(found(q).await, [who], "{q:?}");
        }
    }
    // NFC is not accent folding: a different letter is a different letter.
    assert!(found("Amelie").await.is_empty());
    assert!(found("Ostergard").await.is_empty());

    // Hostile Unicode is just text: lone combining marks, long decomposed
    // runs, bidi controls. None of it finds anyone or changes anything.
    let before = w.app.snapshot(true).await;
    for q in ["\u{301}", "\u{301}\u{301}\u{301}", "\u{30A}rd", "\u{202E}\u{e9}ilem\u{c1}", "\u{200D}\u{e6}"] {
        assert!(found(q).await.is_empty(), "{q:?}");
    }
    // Length is counted in NFC: 60 decomposed letters (120 code points) are 60,
    // and so are 100 (200 code points, the most a search may have).
    for n in [60, 100] {
        let long = "e\u{301}".repeat(n);
        let r = w.app.post("/pupils/search", Some(&leader.token), json!({"name": long})).await;
        assert_eq!((r.status, r.json()["items"].clone()), (200, json!([])), "{n}: {}", r.text());
    }
    let too_long = "e\u{301}".repeat(101);
    let r = w.app.post("/pupils/search", Some(&leader.token), json!({"name": too_long})).await;
    assert_eq!(r.assert_problem(422, "validation-failed")["errors"][0]["pointer"], "/name");
    // Invalid UTF-8 and lone surrogates are not JSON text (400); NUL is a 422.
    for (raw, status) in [
        (&b"\xC3"[..], 400),
        (b"\xE2\x82", 400),
        (b"\xED\xA0\x80", 400),
        (b"\\ud800", 400),
        (b"e\\udc81x", 400),
        (b"e\\u0000\xCC\x81", 422),
    ] {
        let body = [&b"{\"name\": \""[..], raw, b"\"}"].concat();
        let r = w
            .app
            .call(
                Request::builder()
                    .method(Method::POST)
                    .uri("/pupils/search")
                    .header(header::AUTHORIZATION, format!("Bearer {}", leader.token))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, status, "{raw:?}: {}", r.text());
        if status == 422 {
            assert_eq!(r.json()["errors"][0]["pointer"], "/name", "{raw:?}");
        }
    }
    // In the URL, none of it is looked at: every `q` is the same refusal.
    for raw in ["Am%C3%A9lie", "%C3", "e%00%CC%81", &pct(&too_long)] {
        let r = w.app.get(&format!("/pupils?q={raw}"), &leader.token).await;
        assert_eq!(r.assert_problem(400, "malformed-request")["errors"][0]["pointer"], "/query/q", "{raw}");
    }
    assert_eq!(before, w.app.snapshot(true).await, "searches that show nobody change nothing");
}

#[tokio::test]
async fn staff_names_are_stored_in_nfc_whoever_writes_them() {
    let w = world().await;
    let r = w
        .app
        .post(
            "/admin/users",
            Some(&w.admin.token),
            json!({"username": "renee", "display_name": "Rene\u{301}e A\u{30A}berg", "password": "Pw-Xyzzy-9x-long",
                   "roles": [{"role": "teacher", "group_id": w.groups["5A"]}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let stored: String = sqlx::query_scalar("SELECT display_name FROM users WHERE username = 'renee'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(stored, "Ren\u{e9}e \u{c5}berg");
    // Any other writer too, even plain SQL (the operator, a future component).
    sqlx::query("UPDATE users SET display_name = $1 WHERE username = 'renee'")
        .bind("Zoe\u{308} Mu\u{308}ller")
        .execute(&w.app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE pupils SET given_name = $1, family_name = $2 WHERE id = $3::uuid")
        .bind("A\u{30A}se")
        .bind("O\u{308}degard")
        .bind(&w.pupils[&0])
        .execute(&w.app.pool)
        .await
        .unwrap();
    let names: (String, String, String) = sqlx::query_as(
        "SELECT u.display_name, p.given_name, p.family_name FROM users u, pupils p \
         WHERE u.username = 'renee' AND p.id = $1::uuid",
    )
    .bind(&w.pupils[&0])
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(names, ("Zo\u{eb} M\u{fc}ller".to_owned(), "\u{c5}se".to_owned(), "\u{d6}degard".to_owned()));
}

/// Applies migration files (by number prefix) as plain SQL to a database.
async fn apply_migrations(pool: &sqlx::PgPool, numbers: std::ops::RangeInclusive<u32>) {
    let dir = tavle_tests::project_root().join("infra/migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut applied = 0;
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let Some(n) = name.split('_').next().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if numbers.contains(&n) {
            let sql = std::fs::read_to_string(&file).unwrap();
            sqlx::raw_sql(&sql).execute(pool).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            applied += 1;
        }
    }
    assert_eq!(applied, numbers.count(), "every migration of the range exists");
}

#[tokio::test]
async fn migration_0005_normalises_existing_names_and_keeps_the_indexes_valid() {
    // A database migrated up to 0004, with names stored as school systems
    // sent them before: decomposed.
    let url = tavle_tests::fresh_database().await;
    let name = format!("m_{}", uuid::Uuid::new_v4().simple());
    let owner = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'")).execute(&owner).await.unwrap();
    let base = &url[..url.rfind('/').unwrap()];
    let pool = sqlx::PgPool::connect(&format!("{base}/{name}")).await.unwrap();
    apply_migrations(&pool, 1..=4).await;
    sqlx::raw_sql(
        "INSERT INTO tenants (slug, name) VALUES ('oslo', 'Oslo'); \
         INSERT INTO schools (tenant_id, name) SELECT id, 'Nordby' FROM tenants; \
         INSERT INTO users (tenant_id, username, display_name, password_hash) \
             SELECT id, 'kari', E'Kari A\\u030Aberg', 'x' FROM tenants; \
         INSERT INTO pupils (tenant_id, school_id, given_name, family_name, restricted) \
             SELECT s.tenant_id, s.id, x.g, x.f, x.r FROM schools s, \
             (VALUES (E'Ame\\u0301lie', E'Lefe\\u0300vre', false), (E'Ju\\u0308rgen', 'Ærø', true), \
                     ('Åse', 'Ødegård', false)) AS x(g, f, r);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let decomposed: i64 = sqlx::query_scalar("SELECT count(*) FROM pupils WHERE given_name IS NOT NFC NORMALIZED")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(decomposed, 2);

    apply_migrations(&pool, 5..=5).await;
    let pupils: Vec<(String, String)> =
        sqlx::query_as("SELECT given_name, family_name FROM pupils ORDER BY given_name")
            .fetch_all(&pool)
            .await
            .unwrap();
    let pairs: Vec<(&str, &str)> = pupils.iter().map(|(g, f)| (g.as_str(), f.as_str())).collect();
    assert_eq!(
        pairs,
        [("Am\u{e9}lie", "Lef\u{e8}vre"), ("J\u{fc}rgen", "\u{c6}r\u{f8}"), ("\u{c5}se", "\u{d8}deg\u{e5}rd")],
        "restricted pupils too: their names are re-encoded, not changed"
    );
    let staff: String = sqlx::query_scalar("SELECT display_name FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(staff, "Kari \u{c5}berg");
    // Every index on the names is valid and finds the normalised rows.
    let invalid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_index WHERE indrelid IN ('pupils'::regclass, 'users'::regclass) \
         AND NOT (indisvalid AND indisready AND indislive)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(invalid, 0);
    // The listing index (tenant, school, family name, given name) finds the
    // rewritten names when the planner must use it.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET enable_seqscan = off; SET enable_bitmapscan = off").execute(&mut *conn).await.unwrap();
    let sql = "SELECT p.given_name FROM pupils p WHERE p.tenant_id = $1 AND p.school_id = $2 AND p.family_name = $3";
    let (tenant, school): (uuid::Uuid, uuid::Uuid) =
        sqlx::query_as("SELECT tenant_id, id FROM schools").fetch_one(&mut *conn).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .bind(tenant)
        .bind(school)
        .bind("Lef\u{e8}vre")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert!(plan.iter().any(|l| l.contains("pupils_school_name")), "{plan:?}");
    let given: Vec<String> =
        sqlx::query_scalar(sql).bind(tenant).bind(school).bind("Lef\u{e8}vre").fetch_all(&mut *conn).await.unwrap();
    assert_eq!(given, ["Am\u{e9}lie"]);
    drop(conn);
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&owner).await.unwrap();
}

/// A `Db` that records every statement a handler sends.
struct Counting {
    inner: tavle_core::db::SqlxDb,
    statements: Vec<String>,
}

impl tavle_core::db::Db for Counting {
    async fn query(
        &mut self,
        sql: &str,
        params: &[tavle_core::db::Value],
    ) -> Result<Vec<tavle_core::db::Row>, tavle_core::db::DbError> {
        self.statements.push(sql.to_owned());
        self.inner.query(sql, params).await
    }
    async fn execute(&mut self, sql: &str, params: &[tavle_core::db::Value]) -> Result<u64, tavle_core::db::DbError> {
        self.statements.push(sql.to_owned());
        self.inner.execute(sql, params).await
    }
}

#[tokio::test]
async fn a_profile_and_a_class_overview_are_one_round_trip_that_checks_the_session_itself() {
    let w = world().await;
    // The component on the application role, as the hosts run it.
    let pool =
        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&w.app.variables["db_url"]).await.unwrap();
    let send = |path: String, token: String| {
        let pool = pool.clone();
        let vars = w.app.variables.clone();
        async move {
            let req = Request::builder()
                .uri(path)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Vec::new())
                .unwrap();
            let mut db = Counting { inner: tavle_core::db::SqlxDb::new(pool), statements: Vec::new() };
            let response = tavle_students::handle(req, &vars, &mut db).await;
            (response.status().as_u16(), String::from_utf8(response.into_body()).unwrap(), db.statements)
        }
    };
    let profile = format!("/pupils/{}", w.pupils[&0]);
    let overview = format!("/groups/{}/overview?assessment_id={}", w.groups["5A"], w.assessment);
    for path in [&profile, &overview] {
        let (status, body, statements) = send(path.clone(), w.teacher.token.clone()).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(statements.len(), 1, "{path}: {statements:#?}");
        assert!(statements[0].contains("FROM sessions s") && statements[0].contains("access_log_append_for_session"));
    }
    // Out of scope: the same one statement, a 404, no access record.
    let records = w.app.count("SELECT count(*) FROM access_log").await;
    let (status, _, statements) = send(format!("/pupils/{}", w.pupils[&10]), w.teacher.token.clone()).await;
    assert_eq!((status, statements.len()), (404, 1));
    // A session ended since the token was issued: 401 from the same statement, no data, no record.
    sqlx::query(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = (SELECT id FROM users WHERE username = 'kari')",
    )
    .execute(&w.app.pool)
    .await
    .unwrap();
    for path in [&profile, &overview] {
        let (status, body, statements) = send(path.clone(), w.teacher.token.clone()).await;
        assert_eq!((status, statements.len()), (401, 1), "{path}: {body}");
        assert!(!body.contains("Åse"), "{body}");
    }
    assert_eq!(w.app.count("SELECT count(*) FROM access_log").await, records, "no record without a live session");
}

// ------------------------------------------- subtests, thresholds and follow-up

/// A screening of the family `lesing-kart`: total threshold 15 (of 40),
/// subtests `ordlesing` (threshold 8 of 20) and `forstaelse` (6 of 20).
/// Rows: (pupil, ordlesing, forstaelse) completed, or `None` scores: absent.
fn screening(external_id: &str, on: &str, rows: &[(u32, Option<(f64, f64)>)]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|(n, scores)| {
            let mut r = json!({"external_id": format!("{external_id}-{n}"), "pupil": {"identity_number": synthetic_id(*n)},
                               "status": "absent"});
            if let Some((o, f)) = scores {
                r["status"] = json!("completed");
                r["score"] = json!(o + f);
                r["subtests"] = json!([{"id": "ordlesing", "score": o}, {"id": "forstaelse", "score": f}]);
            }
            r
        })
        .collect();
    json!({"assessment": {"external_id": external_id, "title": format!("Leseskår {on}"), "subject": "norsk",
                          "year_level": 5, "max_score": 40, "administered_on": on, "family": "lesing-kart",
                          "threshold": 15,
                          "subtests": [{"id": "ordlesing", "title": "Ordlesing", "max_score": 20, "threshold": 8},
                                       {"id": "forstaelse", "title": "Leseforståelse", "max_score": 20, "threshold": 6}]},
           "results": rows})
}

/// The world, with the screening given in the spring of school year 2025
/// and the autumn of 2026: pupil 0 (5A) drops below on `ordlesing`, pupil 1
/// (5B) stays below on the total, pupil 2 (5A) is fine, pupil 3 (5B) was
/// absent, pupil 10 (Sørby) is below everywhere.
async fn screened_world() -> (World, String, String) {
    let w = world().await;
    let spring = screening("kart-v26", "2026-03-10", &[(0, Some((12.0, 12.0))), (1, Some((4.0, 4.0)))]);
    let r = w.app.deliver(&w.publisher, "results", "kart-v26", &spring).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let autumn = screening(
        "kart-h26",
        "2026-09-20",
        &[(0, Some((6.0, 10.0))), (1, Some((5.0, 5.0))), (2, Some((18.0, 18.0))), (3, None), (10, Some((2.0, 2.0)))],
    );
    let r = w.app.deliver(&w.publisher, "results", "kart-h26", &autumn).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h26 = id_of(&w.app, "SELECT id FROM assessments WHERE external_id = $1", "kart-h26").await;
    let v26 = id_of(&w.app, "SELECT id FROM assessments WHERE external_id = $1", "kart-v26").await;
    (w, h26, v26)
}

fn line<'a>(overview: &'a Value, pupil: &str) -> &'a Value {
    overview["pupils"].as_array().unwrap().iter().find(|p| p["id"] == pupil).unwrap()
}

#[tokio::test]
async fn the_class_overview_flags_scores_at_or_below_thresholds_and_counts_them_per_subtest() {
    let (w, h26, _) = screened_world().await;
    let (p0, p1, p2, p3) = (&w.pupils[&0], &w.pupils[&1], &w.pupils[&2], &w.pupils[&3]);
    let o = w.app.get(&format!("/groups/{}/overview?assessment_id={h26}", w.groups["5A"]), &w.teacher.token).await;
    assert_eq!(o.status, 200, "{}", o.text());
    let o = o.json();
    assert_eq!(o["assessment"]["threshold"], 15.0);
    assert_eq!(o["assessment"]["family"], "lesing-kart");
    let subtests: Vec<(&str, f64, u64)> = o["assessment"]["subtests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["threshold"].as_f64().unwrap(), s["flagged_count"].as_u64().unwrap()))
        .collect();
    assert_eq!(subtests, [("ordlesing", 8.0, 1), ("forstaelse", 6.0, 0)]);
    assert_eq!((o["assessment"]["flagged_count"].as_u64(), o["flagged_pupils"].as_u64()), (Some(0), Some(1)));
    // Pupil 0: total 16 is above 15, ordlesing 6 at or below 8.
    let r0 = &line(&o, p0)["result"];
    assert_eq!(
        (line(&o, p0)["flagged"].as_bool(), r0["flagged"].as_bool(), r0["score"].as_f64()),
        (Some(true), Some(false), Some(16.0))
    );
    assert_eq!(
        r0["subtests"],
        json!([{"id": "ordlesing", "score": 6.0, "flagged": true}, {"id": "forstaelse", "score": 10.0, "flagged": false}])
    );
    assert_eq!(line(&o, p2)["flagged"], false);
    // By name (Berg before Ødegård), or flagged pupils first.
    assert_eq!(ids(&o, "pupils"), [p2.clone(), p0.clone()]);
    let first = w
        .app
        .get(&format!("/groups/{}/overview?assessment_id={h26}&flagged_first=true", w.groups["5A"]), &w.teacher.token)
        .await
        .json();
    assert_eq!(ids(&first, "pupils"), [p0.clone(), p2.clone()]);
    let bad = w
        .app
        .get(&format!("/groups/{}/overview?assessment_id={h26}&flagged_first=yes", w.groups["5A"]), &w.teacher.token)
        .await;
    assert_eq!(bad.assert_problem(400, "malformed-request")["errors"][0]["pointer"], "/query/flagged_first");

    // 5B: pupil 1 is at or below on the total and both subtests; pupil 3
    // was absent, shown as such and never as a low score.
    let o =
        w.app.get(&format!("/groups/{}/overview?assessment_id={h26}", w.groups["5B"]), &w.leader.token).await.json();
    let r1 = &line(&o, p1)["result"];
    assert_eq!(r1["flagged"], true);
    assert!(r1["subtests"].as_array().unwrap().iter().all(|s| s["flagged"] == true), "{r1}");
    let r3 = &line(&o, p3)["result"];
    assert_eq!(
        (r3["status"].as_str(), r3["score"].as_f64(), r3["flagged"].as_bool()),
        (Some("absent"), None, Some(false))
    );
    assert_eq!((line(&o, p3)["flagged"].as_bool(), o["flagged_pupils"].as_u64()), (Some(false), Some(1)));
    assert_eq!(o["assessment"]["flagged_count"], 1);
    // An assessment without thresholds flags nobody.
    let o = w
        .app
        .get(&format!("/groups/{}/overview?assessment_id={}", w.groups["5B"], w.assessment), &w.leader.token)
        .await
        .json();
    assert_eq!((o["flagged_pupils"].as_u64(), &o["assessment"]["subtests"]), (Some(0), &json!([])));
    assert_eq!(line(&o, p1)["result"]["score"], 10.0);
}

#[tokio::test]
async fn a_profile_shows_flags_per_subject_and_whether_the_pupil_moved_across_a_threshold() {
    let (w, h26, v26) = screened_world().await;
    let profile = w.app.get(&format!("/pupils/{}", w.pupils[&0]), &w.teacher.token).await;
    assert_eq!(profile.status, 200, "{}", profile.text());
    let profile = profile.json();
    let results = profile["results"].as_array().unwrap();
    let of = |a: &str| results.iter().find(|r| r["assessment"]["id"] == a).unwrap();
    let (spring, autumn) = (of(&v26), of(&h26));
    assert_eq!(spring["since_last"], Value::Null, "the first of its family");
    assert_eq!(autumn["flagged"], false);
    assert_eq!(autumn["subtests"][0]["id"], "ordlesing");
    assert_eq!(
        (autumn["subtests"][0]["flagged"].as_bool(), autumn["subtests"][0]["threshold"].as_f64()),
        (Some(true), Some(8.0))
    );
    assert_eq!(
        autumn["since_last"],
        json!({"previous_result_id": spring["id"], "previous_administered_on": "2026-03-10", "total": "still_above",
               "subtests": [{"id": "ordlesing", "change": "moved_below"}, {"id": "forstaelse", "change": "still_above"}]})
    );
    assert_eq!(profile["subjects"][0]["subject"], "norsk");
    assert_eq!(profile["subjects"][0]["result_ids"].as_array().unwrap().len(), 3);
    assert_eq!(profile["subjects"][0]["flagged_results"], 1);
    // Pupil 1 stays below on the total.
    let profile = w.app.get(&format!("/pupils/{}", w.pupils[&1]), &w.leader.token).await.json();
    let autumn = profile["results"].as_array().unwrap().iter().find(|r| r["assessment"]["id"] == h26.as_str()).unwrap();
    assert_eq!(autumn["since_last"]["total"], "still_below");
}

/// A pupil's given name and the titles of the assessments they are flagged in.
type Flagged = (String, Vec<String>);

/// (group name, pupils named with the assessments they are flagged in).
fn follow_up_view(body: &Value) -> Vec<(String, Vec<Flagged>)> {
    body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let pupils = g["pupils"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let flags = p["flags"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| f["assessment"]["title"].as_str().unwrap().to_owned());
                    (p["given_name"].as_str().unwrap().to_owned(), flags.collect())
                })
                .collect();
            (g["name"].as_str().unwrap().to_owned(), pupils)
        })
        .collect()
}

#[tokio::test]
async fn the_follow_up_list_names_the_flagged_pupils_of_each_group_for_a_school_year() {
    let (w, h26, _) = screened_world().await;
    let s = |v: &str| v.to_owned();
    let r = w.app.get("/follow-up?school_year=2026", &w.teacher.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["school_year"], json!({"start": 2026, "from": "2026-08-01", "to": "2027-07-31"}));
    assert_eq!(follow_up_view(&body), [(s("5A"), vec![(s("Åse"), vec![s("Leseskår 2026-09-20")])])]);
    let flag = &body["groups"][0]["pupils"][0]["flags"][0];
    assert_eq!((flag["flagged"].as_bool(), flag["score"].as_f64()), (Some(false), Some(16.0)));
    assert_eq!(
        flag["flagged_subtests"],
        json!([{"id": "ordlesing", "title": "Ordlesing", "score": 6.0, "threshold": 8}])
    );
    // The record names exactly the pupils listed.
    let records = access_records(&w.app).await;
    let (action, pupils, _, _) = records.last().unwrap();
    assert_eq!(
        (action.as_str(), pupils.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
        ("pupils.follow_up_viewed", vec![w.pupils[&0].clone()])
    );

    // The leader: every group of Nordby (not Sørby's pupil 10).
    let body = w.app.get("/follow-up?school_year=2026", &w.leader.token).await.json();
    assert_eq!(
        follow_up_view(&body),
        [
            (s("5A"), vec![(s("Åse"), vec![s("Leseskår 2026-09-20")])]),
            (s("5B"), vec![(s("Bjørn"), vec![s("Leseskår 2026-09-20")])])
        ]
    );
    // Each flag has its subtests' details, also where an earlier row of the
    // page brought the assessment's subtests (the statement sends them once).
    let details = |g: usize| body["groups"][g]["pupils"][0]["flags"][0]["flagged_subtests"].clone();
    assert_eq!(details(0), json!([{"id": "ordlesing", "title": "Ordlesing", "score": 6.0, "threshold": 8}]));
    assert_eq!(
        details(1),
        json!([{"id": "ordlesing", "title": "Ordlesing", "score": 5.0, "threshold": 8},
               {"id": "forstaelse", "title": "Leseforståelse", "score": 5.0, "threshold": 6}]),
        "publisher's order"
    );
    // The spring screening belongs to school year 2025, where only pupil 1 was below.
    let body = w.app.get("/follow-up?school_year=2025", &w.leader.token).await.json();
    assert_eq!(
        follow_up_view(&body),
        [(s("5A"), vec![]), (s("5B"), vec![(s("Bjørn"), vec![s("Leseskår 2026-03-10")])])]
    );
    let body =
        w.app.get(&format!("/follow-up?school_year=2026&group_id={}", w.groups["5B"]), &w.leader.token).await.json();
    assert_eq!(follow_up_view(&body).len(), 1);
    // Nothing listed, no record.
    let before = access_records(&w.app).await.len();
    let body = w.app.get("/follow-up?school_year=2024", &w.teacher.token).await.json();
    assert_eq!(follow_up_view(&body), [(s("5A"), vec![])]);
    assert_eq!(access_records(&w.app).await.len(), before);
    let bad = w.app.get("/follow-up?school_year=26", &w.teacher.token).await;
    assert_eq!(bad.assert_problem(400, "malformed-request")["errors"][0]["pointer"], "/query/school_year");
    assert_eq!(w.app.get("/follow-up", &w.tenant_admin.token).await.status, 403);

    // Counts for one assessment per group and year level: no names, no record.
    let before = access_records(&w.app).await.len();
    let r = w.app.get(&format!("/assessments/{h26}/follow-up"), &w.leader.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(access_records(&w.app).await.len(), before);
    let counts = |l: &Value| {
        let subtests: Vec<u64> =
            l["subtests"].as_array().unwrap().iter().map(|s| s["flagged"].as_u64().unwrap()).collect();
        (
            l["pupils"].as_u64().unwrap(),
            l["completed"].as_u64().unwrap(),
            l["flagged"].as_u64().unwrap(),
            l["total_flagged"].as_u64().unwrap(),
            subtests,
        )
    };
    let groups = c["groups"].as_array().unwrap();
    assert_eq!(groups.iter().map(|g| g["group"]["name"].as_str().unwrap()).collect::<Vec<_>>(), ["5A", "5B"]);
    assert_eq!(counts(&groups[0]), (2, 2, 1, 0, vec![1, 0]), "5A: pupils 0 and 2 (4 is restricted)");
    assert_eq!(counts(&groups[1]), (2, 1, 1, 1, vec![1, 1]), "5B: pupil 3 was absent");
    assert_eq!(groups[1]["flagged_share"], 1.0);
    let years = c["year_levels"].as_array().unwrap();
    assert_eq!((years.len(), &years[0]["year_level"]), (1, &json!(5)));
    assert_eq!(counts(&years[0]), (4, 3, 2, 1, vec![2, 1]));
    assert!((years[0]["flagged_share"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    let teacher = w.app.get(&format!("/assessments/{h26}/follow-up"), &w.teacher.token).await.json();
    assert_eq!(teacher["groups"].as_array().unwrap().len(), 1, "the teacher's own group");

    // A pupil in two groups counts in each, and once in their year level.
    sqlx::query(
        "INSERT INTO group_memberships (tenant_id, group_id, pupil_id) \
         SELECT tenant_id, $1::uuid, id FROM pupils WHERE id = $2::uuid",
    )
    .bind(&w.groups["5B"])
    .bind(&w.pupils[&0])
    .execute(&w.app.pool)
    .await
    .unwrap();
    let c = w.app.get(&format!("/assessments/{h26}/follow-up"), &w.leader.token).await.json();
    let groups = c["groups"].as_array().unwrap();
    assert_eq!(counts(&groups[0]), (2, 2, 1, 0, vec![1, 0]));
    assert_eq!(counts(&groups[1]), (3, 2, 2, 1, vec![2, 1]), "5B with pupil 0");
    assert_eq!(counts(&c["year_levels"][0]), (4, 3, 2, 1, vec![2, 1]), "pupil 0 once");
}

/// The entries of a follow-up page: (group id, pupil id or none, flagged
/// result ids), in order.
fn follow_up_entries(body: &Value) -> Vec<(String, Option<String>, Vec<String>)> {
    let mut out = Vec::new();
    for g in body["groups"].as_array().unwrap() {
        let group = g["id"].as_str().unwrap().to_owned();
        let pupils = g["pupils"].as_array().unwrap();
        if pupils.is_empty() {
            out.push((group.clone(), None, vec![]));
        }
        for p in pupils {
            let flags = p["flags"].as_array().unwrap().iter().map(|f| f["result_id"].as_str().unwrap().to_owned());
            out.push((group.clone(), Some(p["id"].as_str().unwrap().to_owned()), flags.collect()));
        }
    }
    out
}

#[tokio::test]
async fn the_follow_up_list_pages_with_a_sealed_cursor_and_logs_each_page_for_its_own_pupils() {
    let (w, _, _) = screened_world().await;
    // A second screening in 2026/27 in which pupils 0 to 3 are all below:
    // the leader's list has 5A (Berg, Ødegård with two flags) and 5B (Aasen, Dahl).
    let late = screening(
        "kart-x26",
        "2026-11-02",
        &[(0, Some((1.0, 1.0))), (1, Some((1.0, 1.0))), (2, Some((1.0, 1.0))), (3, Some((1.0, 1.0)))],
    );
    let r = w.app.deliver(&w.publisher, "results", "kart-x26", &late).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let full = w.app.get("/follow-up?school_year=2026&limit=500", &w.leader.token).await;
    assert_eq!(full.status, 200, "{}", full.text());
    let full = full.json();
    assert_eq!(full["next_cursor"], Value::Null);
    let all = follow_up_entries(&full);
    // Every flag as listed (its assessment, scores and subtests' details).
    let flags = |body: &Value| -> Vec<Value> {
        let groups = body["groups"].as_array().unwrap().iter();
        let pupils = groups.flat_map(|g| g["pupils"].as_array().unwrap().iter());
        pupils.flat_map(|p| p["flags"].as_array().unwrap().iter().cloned()).collect()
    };
    let all_flags = flags(&full);
    assert!(all_flags.iter().all(|f| !f["flagged_subtests"].as_array().unwrap().is_empty()), "{full}");
    let p = |n: u32| Some(w.pupils[&n].clone());
    let (g5a, g5b) = (w.groups["5A"].clone(), w.groups["5B"].clone());
    let order: Vec<(String, Option<String>)> = all.iter().map(|(g, p, _)| (g.clone(), p.clone())).collect();
    assert_eq!(order, [(g5a.clone(), p(2)), (g5a.clone(), p(0)), (g5b.clone(), p(1)), (g5b.clone(), p(3))]);
    assert_eq!(all[1].2.len(), 2, "Åse is flagged in both screenings");

    for limit in [1, 2, 3] {
        let (mut pages, mut page_flags) = (Vec::new(), Vec::new());
        let mut path = format!("/follow-up?school_year=2026&limit={limit}");
        loop {
            let records = access_records(&w.app).await.len();
            let r = w.app.get(&path, &w.leader.token).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let body = r.json();
            let entries = follow_up_entries(&body);
            assert!(!entries.is_empty() && entries.len() <= limit, "{path}: {} entries", entries.len());
            // One record per page, naming exactly the pupils it shows.
            let log = access_records(&w.app).await;
            assert_eq!(log.len(), records + 1, "{path}");
            let (action, named, _, _) = log.last().unwrap();
            let mut shown: Vec<String> = entries.iter().filter_map(|(_, p, _)| p.clone()).collect();
            shown.sort();
            shown.dedup();
            let mut named: Vec<String> = named.iter().map(|u| u.to_string()).collect();
            named.sort();
            assert_eq!((action.as_str(), named), ("pupils.follow_up_viewed", shown), "{path}");
            pages.extend(entries);
            page_flags.extend(flags(&body));
            match body["next_cursor"].as_str() {
                Some(c) => path = cursors::with_cursor(&format!("/follow-up?school_year=2026&limit={limit}"), c),
                None => break,
            }
        }
        assert_eq!(pages, all, "pages of {limit} concatenate to the whole list, without duplicates");
        // Each page brings the subtests of its own assessments: a flag on a
        // later page is as complete as in the whole list.
        assert_eq!(page_flags, all_flags, "pages of {limit}: the flags in full");
    }

    // An empty group is an entry of its own: 2025/26 has 5A (no one) and 5B (Aasen).
    let first = w.app.get("/follow-up?school_year=2025&limit=1", &w.leader.token).await.json();
    assert_eq!(follow_up_entries(&first), [(g5a.clone(), None, vec![])]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = w.app.get(&cursors::with_cursor("/follow-up?school_year=2025&limit=1", cursor), &w.leader.token).await;
    let second = second.json();
    assert_eq!(
        follow_up_entries(&second).iter().map(|(g, p, _)| (g.clone(), p.clone())).collect::<Vec<_>>(),
        [(g5b.clone(), p(1))]
    );
    assert_eq!(second["next_cursor"], Value::Null);

    // Bad limits are 400s; cursors of another user, list, filter or tampered are
    // answered as malformed ones, and none of them is logged.
    let before = w.app.snapshot(true).await;
    for limit in ["0", "501", "x", "-1"] {
        let r = w.app.get(&format!("/follow-up?school_year=2026&limit={limit}"), &w.leader.token).await;
        assert_eq!(r.assert_problem(400, "malformed-request")["errors"][0]["pointer"], "/query/limit", "{limit}");
    }
    assert_eq!(before, w.app.snapshot(true).await, "bad limits changed something");
    let leaders = cursors::next_cursor(&w.app, "/follow-up?school_year=2026&limit=1", &w.leader.token).await;
    let teachers = cursors::next_cursor(&w.app, "/follow-up?school_year=2026&limit=1", &w.teacher.token).await;
    let in_2025 = cursors::next_cursor(&w.app, "/follow-up?school_year=2025&limit=1", &w.leader.token).await;
    let of_5a =
        cursors::next_cursor(&w.app, &format!("/follow-up?school_year=2026&limit=1&group_id={g5a}"), &w.leader.token)
            .await;
    let pupils_list = cursors::next_cursor(&w.app, "/pupils?limit=1", &w.leader.token).await;
    cursors::assert_opaque(&leaders, &[&w.pupils[&2], &g5a, "Cecilie", "Berg", &w.oslo.tenant_id]);
    let mut foreign = vec![
        ("the teacher's cursor".to_owned(), teachers),
        ("another school year's".to_owned(), in_2025),
        ("another group filter's".to_owned(), of_5a),
        ("the pupil list's".to_owned(), pupils_list),
    ];
    foreign.extend(cursors::tampered(&leaders, &json!({"group": g5a, "pupil": w.pupils[&2]})));
    refused_everywhere(&w, "/follow-up?school_year=2026&limit=1", &w.leader.token, &foreign).await;
    // And the leader's own cursor, in the teacher's hands.
    let foreign = [("the leader's cursor".to_owned(), leaders.clone())];
    refused_everywhere(&w, "/follow-up?school_year=2026&limit=1", &w.teacher.token, &foreign).await;
    let own = w.app.get(&cursors::with_cursor("/follow-up?school_year=2026&limit=1", &leaders), &w.leader.token).await;
    assert_eq!(own.status, 200, "{}", own.text());
}

/// Pupils per group in a counts answer, by group name.
fn pupils_per_group(counts: &Value) -> Vec<(String, u64)> {
    let groups = counts["groups"].as_array().unwrap();
    groups.iter().map(|g| (g["group"]["name"].as_str().unwrap().to_owned(), g["pupils"].as_u64().unwrap())).collect()
}

#[tokio::test]
async fn a_leader_who_teaches_a_group_of_the_school_sees_each_member_once_and_keeps_a_moved_pupil_there() {
    let (w, h26, _) = screened_world().await;
    let s = |v: &str| v.to_owned();
    let nordby = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "nordby").await;
    let roles =
        json!([{"role": "teacher", "group_id": w.groups["5B"]}, {"role": "school_leader", "school_id": nordby}]);
    let staff = w.app.create_user(&w.admin, &w.oslo, "lars", roles).await;
    let both = w.app.login(&staff).await;
    let counts_path = format!("/assessments/{h26}/follow-up");

    // Teaching a group of the school one leads adds nobody twice.
    let list = |token: &str| {
        let (app, token) = (&w.app, token.to_owned());
        async move { follow_up_view(&app.get("/follow-up?school_year=2026", &token).await.json()) }
    };
    assert_eq!(list(&both.token).await, list(&w.leader.token).await);
    let both_counts = w.app.get(&counts_path, &both.token).await.json();
    assert_eq!(both_counts, w.app.get(&counts_path, &w.leader.token).await.json());
    assert_eq!(pupils_per_group(&both_counts), [(s("5A"), 2), (s("5B"), 2)]);

    // Bjørn (5B, flagged) moves to Sørby and lingers in 5B until its next
    // roster: the school's leader no longer sees him, 5B's teacher does.
    let sorby = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "sorby").await;
    sqlx::query("UPDATE pupils SET school_id = $1::uuid WHERE id = $2::uuid")
        .bind(&sorby)
        .bind(&w.pupils[&1])
        .execute(&w.app.pool)
        .await
        .unwrap();
    let bjorn = (s("5B"), vec![(s("Bjørn"), vec![s("Leseskår 2026-09-20")])]);
    let ase = (s("5A"), vec![(s("Åse"), vec![s("Leseskår 2026-09-20")])]);
    assert_eq!(list(&w.leader.token).await, [ase.clone(), (s("5B"), vec![])]);
    assert_eq!(list(&both.token).await, [ase, bjorn]);
    let leader_counts = w.app.get(&counts_path, &w.leader.token).await.json();
    assert_eq!(pupils_per_group(&leader_counts), [(s("5A"), 2), (s("5B"), 1)]);
    let both_counts = w.app.get(&counts_path, &both.token).await.json();
    assert_eq!(pupils_per_group(&both_counts), [(s("5A"), 2), (s("5B"), 2)]);
    assert_eq!(both_counts["year_levels"][0]["pupils"], 4, "{both_counts}");
    assert_eq!(leader_counts["year_levels"][0]["pupils"], 3, "{leader_counts}");
}

#[tokio::test]
async fn follow_up_lists_for_another_teachers_group_another_school_or_tenant_are_unknown_and_change_nothing() {
    let (w, h26, _) = screened_world().await;
    let sorby = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "sorby").await;
    let berg = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "berg").await;
    let before = w.app.snapshot(true).await;
    let (g5b, g6a, g7a) = (&w.groups["5B"], &w.groups["6A"], &w.groups["7A"]);
    let bergen_h = &w.bergen_assessment;
    for (who, session, path) in [
        ("another teacher's group", &w.teacher, format!("/follow-up?group_id={g5b}")),
        ("another school's group", &w.teacher, format!("/follow-up?group_id={g6a}")),
        ("another school", &w.teacher, format!("/follow-up?school_id={sorby}")),
        ("another school, as leader", &w.leader, format!("/follow-up?school_id={sorby}")),
        ("another school's group, as leader", &w.leader, format!("/follow-up?group_id={g6a}")),
        ("another tenant's group", &w.leader, format!("/follow-up?group_id={g7a}")),
        ("another tenant's school", &w.leader, format!("/follow-up?school_id={berg}")),
        ("counts, another teacher's group", &w.teacher, format!("/assessments/{h26}/follow-up?group_id={g5b}")),
        ("counts, another school", &w.leader, format!("/assessments/{h26}/follow-up?school_id={sorby}")),
        ("counts, another tenant's assessment", &w.leader, format!("/assessments/{bergen_h}/follow-up")),
        (
            "counts of another tenant's assessment, as its teacher",
            &w.bergen_teacher,
            format!("/assessments/{h26}/follow-up"),
        ),
    ] {
        let r = w.app.get(&path, &session.token).await;
        assert_eq!(r.status, 404, "{who}: {}", r.text());
        r.assert_problem(404, "not-found");
    }
    assert_eq!(before, w.app.snapshot(true).await, "a refused list changed something");
}

#[tokio::test]
async fn a_pupil_who_changes_school_keeps_their_results_and_only_the_new_schools_staff_see_them() {
    let (w, h26, _) = screened_world().await;
    let p1 = w.pupils[&1].clone();
    // Sørby's roster now names pupil 1 (from Nordby 5B): a transfer.
    let sas = w.app.create_source(&w.admin, "sas").await;
    let sorby = roster(
        "sorby",
        &["6A"],
        vec![
            pupil(10, "Frida", "Fjell", &["6A"]),
            pupil(11, "Geir", "Gran", &["6A"]),
            pupil(1, "Bjørn", "Aasen", &["6A"]),
        ],
    );
    let r = w.app.deliver(&sas, "roster", "move-1", &sorby).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Nordby's staff no longer see the pupil, nor list them.
    assert_eq!(w.app.get(&format!("/pupils/{p1}"), &w.leader.token).await.status, 404);
    let o =
        w.app.get(&format!("/groups/{}/overview?assessment_id={h26}", w.groups["5B"]), &w.leader.token).await.json();
    assert!(!ids(&o, "pupils").contains(&p1), "{o}");
    let body = w.app.get("/follow-up?school_year=2026", &w.leader.token).await.json();
    assert!(!body.to_string().contains(&p1), "{body}");
    // Sørby's leader sees the whole history, flags and movements included.
    let profile = w.app.get(&format!("/pupils/{p1}"), &w.admin_and_leader.token).await;
    assert_eq!(profile.status, 200, "{}", profile.text());
    let profile = profile.json();
    assert_eq!(profile["school"]["name"], "sorby skole");
    assert_eq!(profile["results"].as_array().unwrap().len(), 3, "lesing, and both screenings from Nordby");
    let autumn = profile["results"].as_array().unwrap().iter().find(|r| r["assessment"]["id"] == h26.as_str()).unwrap();
    assert_eq!((autumn["flagged"].as_bool(), &autumn["since_last"]["total"]), (Some(true), &json!("still_below")));
    let body = w.app.get("/follow-up?school_year=2026", &w.admin_and_leader.token).await.json();
    let names: Vec<String> =
        follow_up_view(&body).into_iter().flat_map(|(_, p)| p.into_iter().map(|(n, _)| n)).collect();
    assert_eq!(names, ["Bjørn", "Frida"]);
}

/// A correction and a threshold change on the same assessment, at once: the
/// threshold's writer (ingest, an admin) holds the assessment and then, by
/// the flags' refresh, its results; a correction that locked its result
/// before the assessment deadlocked with it (PostgreSQL aborts one after a
/// second). Here the writer holds the assessment first, the correction
/// arrives and waits, and the writer's refresh then needs that result.
#[tokio::test]
async fn a_correction_waits_for_a_threshold_change_without_deadlocking_it() {
    let w = world().await;
    let pupil = &w.pupils[&0];
    let r = w
        .app
        .post(
            &format!("/pupils/{pupil}/results"),
            Some(&w.teacher.token),
            json!({"assessment_id": w.assessment, "score": 31.5, "status": "completed"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let result_id = r.json()["id"].as_str().unwrap().to_owned();

    let mut writer = w.app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM assessments WHERE id = $1::uuid FOR UPDATE")
        .bind(&w.assessment)
        .execute(&mut *writer)
        .await
        .unwrap();
    let put = format!("/pupils/{pupil}/results/{result_id}");
    let correction =
        w.app.send(Method::PUT, &put, Some(&w.leader.token), Some(json!({"score": 29, "status": "completed"})));
    tokio::pin!(correction);
    w.app.until_waiting_for_a_lock(correction.as_mut(), "the correction").await;
    // The writer's threshold flags the result (31.5 <= 35): its refresh
    // updates the result the correction is about to lock.
    let assessment = w.assessment.clone();
    let writer_goes_on = async move {
        let changed = sqlx::query("UPDATE assessments SET threshold = 35 WHERE id = $1::uuid")
            .bind(&assessment)
            .execute(&mut *writer)
            .await
            .map(|done| done.rows_affected());
        writer.commit().await.unwrap();
        changed
    };
    let (changed, r) = tokio::join!(writer_goes_on, &mut correction);
    assert_eq!(changed.unwrap(), 1, "the threshold's writer was not aborted");
    assert_eq!(r.status, 200, "{}", r.text());
    let flags: (f64, bool) = sqlx::query_as("SELECT score, total_flagged FROM results WHERE id = $1::uuid")
        .bind(&result_id)
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(flags, (29.0, true), "corrected after the new threshold, flagged by it");
    assert_eq!(w.app.stale_flags().await, 0);
}

#[tokio::test]
async fn manual_results_carry_subtest_scores_checked_as_the_ingest_checks_them() {
    // The spring screening (subtests ordlesing and forstaelse, 20 each,
    // thresholds 8 and 6): pupil 2 (5A) has no result for it yet.
    let (w, _, v26) = screened_world().await;
    let pupil = &w.pupils[&2];
    let path = format!("/pupils/{pupil}/results");
    let body =
        |scores: Value| json!({"assessment_id": v26, "score": 20, "status": "completed", "subtest_scores": scores});
    let stored = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM results WHERE pupil_id = $1::uuid AND source_id IS NULL")
            .bind(pupil)
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
        n
    };

    // Bad subtest scores: 422 with a pointer each, and nothing changes.
    let before = w.app.snapshot(true).await;
    for (what, scores, pointer, message) in [
        ("an unknown subtest", json!({"ordlesing": 5, "rettskriving": 3}), "/subtest_scores", "is not a subtest"),
        ("a score above its maximum", json!({"ordlesing": 20.5}), "/subtest_scores/ordlesing", "max_score"),
        ("a negative score", json!({"forstaelse": -1}), "/subtest_scores/forstaelse", "max_score"),
        ("a score that is not a number", json!({"forstaelse": "7"}), "/subtest_scores/forstaelse", "wrong type"),
    ] {
        let r = w.app.post(&path, Some(&w.teacher.token), body(scores)).await;
        let p = r.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"].as_array().unwrap().len(), 1, "{what}: {p}");
        assert_eq!(p["errors"][0]["pointer"], pointer, "{what}: {p}");
        assert!(p["errors"][0]["message"].as_str().unwrap().contains(message), "{what}: {p}");
        assert!(!p.to_string().contains("rettskriving"), "{what}: an unknown key is never echoed: {p}");
    }
    // Another assessment's subtests are unknown here: the first one has none.
    let r = w
        .app
        .post(
            &path,
            Some(&w.teacher.token),
            json!({"assessment_id": w.assessment, "score": 20, "status": "completed", "subtest_scores": {"ordlesing": 5}}),
        )
        .await;
    assert_eq!(r.assert_problem(422, "validation-failed")["errors"][0]["pointer"], "/subtest_scores");
    assert_eq!(before, w.app.snapshot(true).await, "refused subtest scores changed something");
    assert_eq!(stored().await, 0);

    // Accepted: ordlesing 5 is at or below 8, forstaelse 15 above 6, the total 20 above 15.
    let r = w.app.post(&path, Some(&w.teacher.token), body(json!({"ordlesing": 5, " forstaelse ": 15}))).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!(created["subtest_scores"], json!({"ordlesing": 5.0, "forstaelse": 15.0}));
    let result_id = created["id"].as_str().unwrap().to_owned();
    let details: Value = sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'result.registered'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(details["new"]["subtest_scores"], json!({"ordlesing": 5.0, "forstaelse": 15.0}));

    let overview = format!("/groups/{}/overview?assessment_id={v26}", w.groups["5A"]);
    let o = w.app.get(&overview, &w.teacher.token).await;
    assert_eq!(o.status, 200, "{}", o.text());
    let o = o.json();
    let r2 = &line(&o, pupil)["result"];
    assert_eq!((line(&o, pupil)["flagged"].as_bool(), r2["flagged"].as_bool()), (Some(true), Some(false)));
    assert_eq!(
        r2["subtests"],
        json!([{"id": "ordlesing", "score": 5.0, "flagged": true}, {"id": "forstaelse", "score": 15.0, "flagged": false}])
    );
    let flagged: Vec<u64> =
        o["assessment"]["subtests"].as_array().unwrap().iter().map(|s| s["flagged_count"].as_u64().unwrap()).collect();
    // Pupil 0's spring scores (12, 12) are above both thresholds.
    assert_eq!(flagged, [1, 0]);
    let profile = w.app.get(&format!("/pupils/{pupil}"), &w.teacher.token).await.json();
    let spring = profile["results"].as_array().unwrap().iter().find(|r| r["id"] == result_id.as_str()).unwrap();
    assert_eq!(spring["source"], "manual");
    let subtests: Vec<(&str, f64, bool)> = spring["subtests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["score"].as_f64().unwrap(), s["flagged"].as_bool().unwrap()))
        .collect();
    assert_eq!(subtests, [("ordlesing", 5.0, true), ("forstaelse", 15.0, false)]);

    // A correction is checked alike, and keeps the previous scores in the audit log.
    let put = format!("/pupils/{pupil}/results/{result_id}");
    let before = w.app.snapshot(true).await;
    for (scores, pointer) in [
        (json!({"ordlesing": 21}), "/subtest_scores/ordlesing"),
        (json!({"ordlesing": -0.5}), "/subtest_scores/ordlesing"),
        (json!({"d9": 1}), "/subtest_scores"),
    ] {
        let r = w
            .app
            .send(
                Method::PUT,
                &put,
                Some(&w.teacher.token),
                Some(json!({"score": 20, "status": "completed", "subtest_scores": scores})),
            )
            .await;
        assert_eq!(r.assert_problem(422, "validation-failed")["errors"][0]["pointer"], pointer);
    }
    assert_eq!(before, w.app.snapshot(true).await, "refused corrections changed something");
    let r = w
        .app
        .send(
            Method::PUT,
            &put,
            Some(&w.leader.token),
            Some(json!({"score": 20, "status": "completed", "subtest_scores": {"ordlesing": 9, "forstaelse": 6}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["subtest_scores"], json!({"ordlesing": 9.0, "forstaelse": 6.0}));
    let details: Value = sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'result.corrected'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(details["previous"]["subtest_scores"], json!({"ordlesing": 5.0, "forstaelse": 15.0}));
    assert_eq!(details["new"]["subtest_scores"], json!({"ordlesing": 9.0, "forstaelse": 6.0}));
    let o = w.app.get(&overview, &w.teacher.token).await.json();
    let flags: Vec<bool> =
        line(&o, pupil)["result"]["subtests"].as_array().unwrap().iter().map(|s| s["flagged"] == true).collect();
    assert_eq!(flags, [false, true], "9 is above 8 now, 6 at 6");
    // Left out of a correction, the subtest scores go, as a score does.
    let r =
        w.app.send(Method::PUT, &put, Some(&w.teacher.token), Some(json!({"score": 20, "status": "completed"}))).await;
    assert_eq!((r.status, &r.json()["subtest_scores"]), (200, &Value::Null));
    assert_eq!(stored().await, 1);
}

#[tokio::test]
async fn a_tenant_admin_registers_an_assessment_with_thresholds_and_changes_them_later() {
    let (w, h26, _) = screened_world().await;
    let body = json!({"title": "Kommunens leseprøve", "subject": "norsk", "year_level": 5, "max_score": 30,
                      "administered_on": "2026-10-05", "family": "kommune-lesing", "threshold": 10,
                      "subtests": [{"id": "a", "title": "Avkoding", "max_score": 15, "threshold": 5},
                                   {"id": "b", "title": "Forståelse", "max_score": 15}]});
    // Teachers do not register assessments.
    w.app.post("/assessments", Some(&w.teacher.token), body.clone()).await.assert_problem(403, "forbidden");
    let before = w.app.snapshot(true).await;
    for (what, edit, pointer) in [
        ("threshold above the maximum", json!({"threshold": 31}), "/threshold"),
        ("negative threshold", json!({"threshold": -1}), "/threshold"),
        (
            "subtest threshold above its maximum",
            json!({"subtests": [{"id": "a", "title": "A", "max_score": 15, "threshold": 16}]}),
            "/subtests/0/threshold",
        ),
        (
            "two subtests with one id",
            json!({"subtests": [{"id": "a", "title": "A", "max_score": 15}, {"id": "a", "title": "B", "max_score": 15}]}),
            "/subtests/1/id",
        ),
    ] {
        let mut bad = body.clone();
        for (k, v) in edit.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let p = w.app.post("/assessments", Some(&w.admin.token), bad).await.assert_problem(422, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], pointer, "{what}: {p}");
    }
    assert_eq!(before, w.app.snapshot(true).await, "a refused registration changed something");

    let r = w.app.post("/assessments", Some(&w.admin.token), body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let a = r.json();
    assert_eq!((a["source"].as_str(), a["threshold"].as_f64()), (Some("manual"), Some(10.0)));
    let id = a["id"].as_str().unwrap().to_owned();
    // A teacher registers a result against it: 9 of 30 is at or below 10.
    let r = w
        .app
        .post(
            &format!("/pupils/{}/results", w.pupils[&0]),
            Some(&w.teacher.token),
            json!({"assessment_id": id, "score": 9, "status": "completed"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let overview = format!("/groups/{}/overview?assessment_id={id}", w.groups["5A"]);
    let o = w.app.get(&overview, &w.teacher.token).await.json();
    assert_eq!((line(&o, &w.pupils[&0])["flagged"].as_bool(), o["flagged_pupils"].as_u64()), (Some(true), Some(1)));

    // The admin lowers the threshold; the answer says what changed.
    let path = format!("/assessments/{id}/thresholds");
    let before = w.app.snapshot(true).await;
    for (what, change, status, pointer) in [
        ("above the maximum", json!({"threshold": 31}), 422, "/threshold"),
        (
            "an unknown subtest",
            json!({"threshold": 8, "subtests": [{"id": "c", "threshold": 1}]}),
            422,
            "/subtests/0/id",
        ),
        (
            "a subtest's above its maximum",
            json!({"threshold": 8, "subtests": [{"id": "a", "threshold": 16}]}),
            422,
            "/subtests/0/threshold",
        ),
    ] {
        let r = w.app.send(Method::PUT, &path, Some(&w.admin.token), Some(change)).await;
        let p = r.assert_problem(status, "validation-failed");
        assert_eq!(p["errors"][0]["pointer"], pointer, "{what}: {p}");
    }
    for (what, path, session, status) in [
        ("a teacher", path.clone(), &w.teacher, 403),
        ("a publisher's assessment", format!("/assessments/{h26}/thresholds"), &w.admin, 409),
        ("another tenant's", format!("/assessments/{}/thresholds", w.bergen_assessment), &w.admin, 404),
        ("an unknown id", format!("/assessments/{}/thresholds", uuid::Uuid::new_v4()), &w.admin, 404),
    ] {
        let r = w.app.send(Method::PUT, &path, Some(&session.token), Some(json!({"threshold": 8}))).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
    }
    assert_eq!(before, w.app.snapshot(true).await, "a refused change changed something");
    let r = w
        .app
        .send(
            Method::PUT,
            &path,
            Some(&w.admin.token),
            Some(json!({"threshold": 8, "subtests": [{"id": "b", "threshold": 4}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["threshold_changes"],
        json!([{"subtest": null, "from": 10.0, "to": 8.0}, {"subtest": "b", "from": null, "to": 4.0}])
    );
    let o = w.app.get(&overview, &w.teacher.token).await.json();
    assert_eq!(line(&o, &w.pupils[&0])["flagged"], false, "9 is above the new threshold 8");
    assert_eq!(w.app.stale_flags().await, 0, "every stored flag follows the thresholds");
    assert!(w.app.audit_actions(&w.oslo.tenant_id).await.contains(&"assessment.thresholds_changed".to_owned()));
}
