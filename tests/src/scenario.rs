//! The end-to-end scenario: Tavle's main flows as its users drive them, over
//! real HTTP, with the same assertions whichever host serves it (the native
//! host or `spin up`). Each request is recorded as a [`Step`] (status, problem
//! type, content type and the shape of the JSON body), so two runs on two
//! hosts can be compared step by step; the access records the run wrote are
//! read back in a form that does not depend on generated ids.
//!
//! It covers login, `me`, refresh and logout; user administration; webhook
//! sources, a signed roster and a results post signed by the independent
//! Python signer, replays; pupil list, searches by name and by identity
//! number (in POST bodies; a name in the URL is refused), profile, class overview,
//! manual result and correction; the privacy officer's access-log view. And
//! every "nothing found" path that hung on released Spin 4.0.x (a `query`
//! yielding no rows): unknown tenant, empty lists, unknown ids.

use crate::python::python_sign;
use crate::{synthetic_id, unix_now, Api, Session, Source, Staff, TestApp, TestResponse, ORIGIN};
use http::{header, Method, Request};
use serde_json::{json, Value};

/// One recorded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub status: u16,
    pub problem_type: Option<String>,
    pub content_type: Option<String>,
    /// The body with every scalar replaced by its JSON type; arrays keep
    /// their length, objects their keys (ids as `<id>`).
    pub shape: Value,
}

/// What a run leaves for later requests (benchmarks) and checks.
pub struct World {
    pub oslo: Staff,
    pub admin: Session,
    pub teacher: Staff,
    pub teacher_session: Session,
    pub privacy: Session,
    pub publisher: Source,
    pub group_5a: String,
    pub pupil: String,
    pub assessment: String,
    pub steps: Vec<Step>,
}

/// The shape of a JSON value (see [`Step::shape`]).
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        // Objects keyed by generated ids (an export's `sources`, `staff`)
        // differ between runs only in the ids.
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (if uuid::Uuid::parse_str(k).is_ok() { "<id>".to_owned() } else { k.clone() }, shape(v)))
                .collect(),
        ),
    }
}

/// Records every request made through one of its [`Named`] steps.
struct Recorder<'a, A: Api> {
    api: &'a A,
    steps: std::cell::RefCell<Vec<Step>>,
}

/// The next request(s), recorded under `name`; every `Api` helper works.
struct Named<'r, 'a, A: Api> {
    recorder: &'r Recorder<'a, A>,
    name: String,
}

impl<'a, A: Api> Recorder<'a, A> {
    fn step(&self, name: &str) -> Named<'_, 'a, A> {
        Named { recorder: self, name: name.to_owned() }
    }
}

impl<A: Api> Api for Named<'_, '_, A> {
    async fn call(&self, req: Request<Vec<u8>>) -> TestResponse {
        let name = &self.name;
        let r = self.recorder.api.call(req).await;
        let body: Option<Value> = serde_json::from_slice(&r.body).ok();
        self.recorder.steps.borrow_mut().push(Step {
            name: name.clone(),
            status: r.status,
            problem_type: body.as_ref().and_then(|b| b["type"].as_str()).map(str::to_owned),
            content_type: r.header("content-type").map(str::to_owned),
            shape: body.as_ref().map(shape).unwrap_or(Value::Null),
        });
        assert!(r.header("x-request-id").is_some(), "{name}: no x-request-id");
        // A known length, never chunked: on Spin a chunked answer's last
        // segment can wait 40 ms for a delayed ACK (core::spin_http::respond).
        // (RFC 9110 8.6: none on a 204.)
        let length = (r.status != 204).then(|| r.body.len().to_string());
        assert_eq!(r.header("content-length"), length.as_deref(), "{name}: content-length");
        r
    }
}

fn expect(r: &TestResponse, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    if status == 204 {
        return Value::Null;
    }
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{what}: not JSON: {}", r.text()))
}

fn problem(r: &TestResponse, status: u16, slug: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    r.assert_problem(status, slug);
}

/// The pupils of the scenario's roster: (number, given, family, group).
pub const PUPILS: [(u32, &str, &str, &str); 6] = [
    (0, "Åse", "Ødegård", "5A"),
    (1, "Bjørn", "Aasen", "5A"),
    (2, "Cecilie", "Berg", "5A"),
    (3, "Dag", "Dahl", "5B"),
    (4, "Eva", "Eide", "5B"),
    (5, "Frida", "Fjell", "5A"),
];

fn roster() -> Value {
    let pupils: Vec<Value> = PUPILS
        .iter()
        .map(|(n, given, family, group)| {
            json!({"identity_number": synthetic_id(*n), "given_name": given, "family_name": family,
                   "year_level": 5, "gender": if n % 2 == 0 { "female" } else { "male" },
                   "special_needs": *n == 2, "groups": [group]})
        })
        .collect();
    json!({"school": {"external_id": "nordby", "name": "Nordby skole"},
           "groups": [{"external_id": "5A", "name": "5A", "year_level": 5},
                      {"external_id": "5B", "name": "5B", "year_level": 5}],
           "pupils": pupils})
}

/// A results post for the scenario's pupils 0..=3 (pupil 3 absent); with
/// `completed_at` for every row. A screening with a threshold on the total
/// (15) and two subtests: pupil 1 (12; `ord` 5) is at or below both.
pub fn results_post(external_id: &str, completed_at: &str) -> Value {
    let rows: Vec<Value> = [
        (0u32, Some((16.0, 15.0)), "completed"),
        (1, Some((5.0, 7.0)), "completed"),
        (2, Some((12.5, 13.0)), "completed"),
        (3, None, "absent"),
    ]
    .iter()
    .map(|(n, scores, status)| {
        let subtests: Vec<Value> = scores
            .iter()
            .flat_map(|(o, f)| [json!({"id": "ord", "score": o}), json!({"id": "fors", "score": f})])
            .collect();
        json!({"external_id": format!("{external_id}-{n}"), "pupil": {"identity_number": synthetic_id(*n)},
                   "score": scores.map(|(o, f)| o + f), "status": status, "completed_at": completed_at,
                   "subtests": subtests, "items": [{"item": "q1", "score": 1, "answer": "B", "subtest": "ord"}]})
    })
    .collect();
    json!({"assessment": {"external_id": external_id, "title": "Kartlegging lesing", "subject": "norsk",
                          "year_level": 5, "max_score": 40, "administered_on": "2026-09-15",
                          "family": "kartlegging-lesing", "threshold": 15,
                          "subtests": [{"id": "ord", "title": "Ordlesing", "max_score": 20, "threshold": 8},
                                       {"id": "fors", "title": "Leseforståelse", "max_score": 20, "threshold": 6}]},
           "results": rows})
}

async fn scalar(app: &TestApp, sql: &str, arg: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(sql).bind(arg).fetch_one(&app.pool).await.unwrap();
    id.to_string()
}

/// Runs the whole scenario against `api`, which serves `app`'s database.
pub async fn run(api: &impl Api, app: &TestApp) -> World {
    let s = Recorder { api, steps: Default::default() };
    let oslo = app.seed_tenant("oslo").await;
    let unknown = uuid::Uuid::new_v4().to_string();

    // --- login, me, refresh ---------------------------------------------------
    let r = s.step("me without credentials").send(Method::GET, "/auth/me", None, None).await;
    problem(&r, 401, "unauthenticated", "me without credentials");
    let r = s
        .step("login, unknown tenant")
        .post("/auth/login", None, json!({"tenant": "nowhere", "username": "admin", "password": "Wrong-pass-1x"}))
        .await;
    problem(&r, 401, "invalid-credentials", "unknown tenant");
    let r = s
        .step("login, wrong password")
        .post("/auth/login", None, json!({"tenant": "oslo", "username": "admin", "password": "Wrong-pass-1x"}))
        .await;
    problem(&r, 401, "invalid-credentials", "wrong password");
    let r = s
        .step("login, unknown user")
        .post("/auth/login", None, json!({"tenant": "oslo", "username": "nobody", "password": "Wrong-pass-1x"}))
        .await;
    problem(&r, 401, "invalid-credentials", "unknown user");
    let r = s
        .step("login")
        .post("/auth/login", None, json!({"tenant": "oslo", "username": "admin", "password": oslo.password}))
        .await;
    let body = expect(&r, 200, "login");
    let cookie = r.header("set-cookie").and_then(|c| c.split(';').next()).expect("a session cookie").to_owned();
    let admin = Session { token: body["access_token"].as_str().unwrap().to_owned(), cookie, body };
    let me = expect(&s.step("me").get("/auth/me", &admin.token).await, 200, "me");
    assert_eq!(me["user"]["username"], "admin");
    assert_eq!(me["tenant"]["slug"], "oslo");
    let refresh = Request::builder()
        .method(Method::POST)
        .uri("/auth/refresh")
        .header(header::COOKIE, &admin.cookie)
        .header(header::ORIGIN, ORIGIN)
        .body(Vec::new())
        .unwrap();
    let refreshed = expect(&s.step("refresh by cookie").call(refresh).await, 200, "refresh");
    assert!(refreshed["access_token"].as_str().is_some_and(|t| t != admin.token));
    // An access token cannot extend a session.
    let r = s.step("refresh by bearer token only").post("/auth/refresh", Some(&admin.token), json!({})).await;
    problem(&r, 401, "unauthenticated", "bearer refresh");

    // --- an empty tenant: every list is empty, every id unknown ----------------
    for (name, path) in [
        ("sources, none yet", "/admin/sources"),
        ("schools, none yet", "/schools"),
        ("groups, none yet", "/groups"),
        ("assessments, none yet", "/assessments"),
    ] {
        let list = expect(&s.step(name).get(path, &admin.token).await, 200, name);
        assert_eq!(list["items"], json!([]), "{name}");
    }
    let users = expect(&s.step("users").get("/admin/users", &admin.token).await, 200, "users");
    assert_eq!(users["items"].as_array().map(Vec::len), Some(1));
    for (name, path) in [
        ("user, unknown id", format!("/admin/users/{unknown}")),
        ("source, unknown id", format!("/admin/sources/{unknown}")),
        ("pupil, unknown id", format!("/pupils/{unknown}")),
        ("overview, unknown group", format!("/groups/{unknown}/overview?assessment_id={unknown}")),
    ] {
        problem(&s.step(name).get(&path, &admin.token).await, 404, "not-found", name);
    }
    let stranger = Source { id: unknown.clone(), secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into() };
    let r = s.step("webhook, unknown source").deliver(&stranger, "roster", "msg-0", &roster()).await;
    problem(&r, 404, "not-found", "unknown source");

    // --- webhook sources, roster, results ---------------------------------------
    let sas = s.step("create sas source").create_source(&admin, "sas").await;
    let publisher = s.step("create publisher source").create_source(&admin, "publisher").await;
    // A leaked secret is revoked at once: overlap 0, the old secret no longer verifies.
    let leaked = s.step("create a source to rotate").create_source(&admin, "publisher").await;
    let path = format!("/admin/sources/{}/rotate", leaked.id);
    let rotated = expect(
        &s.step("rotate, overlap 0").post(&path, Some(&admin.token), json!({"overlap_hours": 0})).await,
        200,
        "rotate",
    );
    let renewed = Source { id: leaked.id.clone(), secret: rotated["secret"].as_str().unwrap().to_owned() };
    let body = results_post("rotated", "2026-09-15T09:30:00Z");
    let r = s.step("results signed with the revoked secret").deliver(&leaked, "results", "rotated-1", &body).await;
    problem(&r, 401, "invalid-signature", "revoked secret");
    let r = s.step("results signed with the new secret").deliver(&renewed, "results", "rotated-2", &body).await;
    assert_eq!(expect(&r, 200, "new secret")["rejected"], 4, "no pupils yet: {}", r.text());
    let sources = expect(&s.step("sources").get("/admin/sources", &admin.token).await, 200, "sources");
    assert_eq!(sources["items"].as_array().map(Vec::len), Some(3));
    assert!(!sources.to_string().contains(&sas.secret), "a source list shows a secret");

    let r = s.step("roster").deliver(&sas, "roster", "roster-1", &roster()).await;
    let summary = expect(&r, 200, "roster");
    assert_eq!(r.header("webhook-replayed"), None);
    let r = s.step("roster, replayed").deliver(&sas, "roster", "roster-1", &roster()).await;
    assert_eq!(expect(&r, 200, "roster replay"), summary);
    assert_eq!(r.header("webhook-replayed"), Some("true"));

    // Results signed by the independent (PyPI) signer.
    let body = results_post("lesing-h26", "2026-09-15T09:30:00+02:00").to_string();
    let now = unix_now();
    let signature = python_sign(&publisher.secret, "results-1", now, &body);
    let path = format!("/ingest/{}/results", publisher.id);
    let r = s
        .step("results, signed by the Python package")
        .post_signed(&path, "results-1", now, &signature, body.as_bytes())
        .await;
    let summary = expect(&r, 200, "results");
    assert_eq!((summary["created"].as_u64(), summary["rejected"].as_u64()), (Some(4), Some(0)), "{summary}");
    let r = s.step("results, replayed").post_signed(&path, "results-1", now, &signature, body.as_bytes()).await;
    assert_eq!(expect(&r, 200, "results replay"), summary);
    assert_eq!(r.header("webhook-replayed"), Some("true"));
    let r = s
        .step("a roster's webhook id reused for results")
        .deliver(&sas, "results", "roster-1", &results_post("y", "2026-09-15T09:30:00Z"))
        .await;
    problem(&r, 409, "conflict", "a roster id reused for results");
    // A multi-byte character where the offset's colon belongs: a clear 422
    // (it used to panic inside the transaction).
    let r = s
        .step("results, broken offset")
        .deliver(&publisher, "results", "results-2", &results_post("z", "2026-09-15T09:30:00+0é00"))
        .await;
    let bad = expect(&r, 422, "broken offset");
    assert_eq!(bad["errors"][0]["pointer"], "/results/0/completed_at", "{bad}");

    let group_5a = scalar(app, "SELECT id FROM groups WHERE external_id = $1", "5A").await;
    let school = scalar(app, "SELECT id FROM schools WHERE external_id = $1", "nordby").await;
    let assessment = scalar(app, "SELECT id FROM assessments WHERE external_id = $1", "lesing-h26").await;
    let pupil = scalar(app, "SELECT id FROM pupils WHERE family_name = $1", "Ødegård").await;
    let fifth = scalar(app, "SELECT id FROM pupils WHERE family_name = $1", "Fjell").await;

    // --- user administration ------------------------------------------------------
    let teacher = s
        .step("create user kari")
        .create_user(&admin, &oslo, "kari", json!([{"role": "teacher", "group_id": group_5a}]))
        .await;
    let leader = s.step("create user leif").create_user(&admin, &oslo, "leif", json!([])).await;
    let privacy_officer =
        s.step("create user per").create_user(&admin, &oslo, "per", json!([{"role": "privacy_officer"}])).await;
    let r = s
        .step("grant a school leader")
        .send(
            Method::PUT,
            &format!("/admin/users/{}/roles", leader.user_id),
            Some(&admin.token),
            Some(json!({"roles": [{"role": "school_leader", "school_id": school}]})),
        )
        .await;
    assert_eq!(expect(&r, 200, "roles")["roles"][0]["role"], "school_leader");
    let r = s
        .step("deactivate")
        .post(&format!("/admin/users/{}/deactivate", leader.user_id), Some(&admin.token), json!({}))
        .await;
    assert_eq!(expect(&r, 200, "deactivate")["active"], false);
    let r = s
        .step("login while deactivated")
        .post("/auth/login", None, json!({"tenant": "oslo", "username": "leif", "password": leader.password}))
        .await;
    problem(&r, 401, "invalid-credentials", "deactivated");
    let r = s
        .step("activate")
        .post(&format!("/admin/users/{}/activate", leader.user_id), Some(&admin.token), json!({}))
        .await;
    assert_eq!(expect(&r, 200, "activate")["active"], true);
    let r =
        s.step("unlock").post(&format!("/admin/users/{}/unlock", leader.user_id), Some(&admin.token), json!({})).await;
    expect(&r, 200, "unlock");
    let one =
        expect(&s.step("user").get(&format!("/admin/users/{}", teacher.user_id), &admin.token).await, 200, "user");
    assert_eq!(one["username"], "kari");

    // --- what a teacher sees ------------------------------------------------------------
    let kari = s.step(&format!("login {}", teacher.username)).login(&teacher).await;
    let list = expect(&s.step("pupils of my groups").get("/pupils", &kari.token).await, 200, "pupils");
    let names: Vec<&str> =
        list["items"].as_array().unwrap().iter().map(|p| p["family_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Aasen", "Berg", "Fjell", "Ødegård"], "5A by family name");
    // Names are searched in a POST body, never in a URL (proxies log URLs).
    let r = s.step("pupils, name search").post("/pupils/search", Some(&kari.token), json!({"name": "berg"})).await;
    let found = expect(&r, 200, "name search");
    assert_eq!(found["items"].as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!((found["items"][0]["family_name"].as_str(), &found["next_cursor"]), (Some("Berg"), &Value::Null));
    let r = s
        .step("pupils, name search, paged")
        .post("/pupils/search", Some(&kari.token), json!({"name": "E", "limit": 2}))
        .await;
    let first = expect(&r, 200, "name search, first page");
    let cursor = first["next_cursor"].as_str().expect("every pupil of 5A has an e").to_owned();
    let r = s
        .step("pupils, name search, next page")
        .post("/pupils/search", Some(&kari.token), json!({"name": "E", "limit": 2, "cursor": cursor}))
        .await;
    let second = expect(&r, 200, "name search, next page");
    let paged: Vec<&str> = [&first, &second]
        .iter()
        .flat_map(|page| page["items"].as_array().unwrap())
        .map(|p| p["family_name"].as_str().unwrap())
        .collect();
    assert_eq!(paged, ["Aasen", "Berg", "Fjell", "Ødegård"], "every pupil of 5A, once, in order");
    assert_eq!(second["next_cursor"], Value::Null);
    let r = s
        .step("pupils, name search without match")
        .post("/pupils/search", Some(&kari.token), json!({"name": "zzz"}))
        .await;
    assert_eq!(expect(&r, 200, "name search, none")["items"], json!([]));
    let r = s
        .step("pupils, identity number as a name")
        .post("/pupils/search", Some(&kari.token), json!({"name": synthetic_id(0)}))
        .await;
    assert_eq!(expect(&r, 422, "identity number as a name")["errors"][0]["pointer"], "/name");
    assert!(!r.text().contains(&synthetic_id(0)), "the number is echoed: {}", r.text());
    for (name, query) in
        [("pupils, a name in the URL", "berg".to_owned()), ("pupils, identity number in the URL", synthetic_id(0))]
    {
        let r = s.step(name).get(&format!("/pupils?q={query}"), &kari.token).await;
        let refused = expect(&r, 400, name);
        assert_eq!(refused["errors"][0]["pointer"], "/query/q", "{refused}");
        assert!(refused.to_string().contains("POST /pupils/search"), "{refused}");
        assert!(!r.text().contains(&query), "{name}: the value is echoed: {}", r.text());
    }
    let r = s
        .step("search by identity number")
        .post("/pupils/search", Some(&kari.token), json!({"identity_number": synthetic_id(0)}))
        .await;
    let hit = expect(&r, 200, "search");
    assert_eq!(hit["items"][0]["id"], pupil.as_str(), "{hit}");
    let r = s
        .step("search, unknown number")
        .post("/pupils/search", Some(&kari.token), json!({"identity_number": synthetic_id(40)}))
        .await;
    assert_eq!(expect(&r, 200, "search none")["items"], json!([]));
    let r = s
        .step("search, a pupil of another group")
        .post("/pupils/search", Some(&kari.token), json!({"identity_number": synthetic_id(3)}))
        .await;
    assert_eq!(expect(&r, 200, "search out of scope")["items"], json!([]));
    let profile = expect(&s.step("profile").get(&format!("/pupils/{pupil}"), &kari.token).await, 200, "profile");
    assert_eq!(profile["family_name"], "Ødegård");
    assert_eq!(profile["results"].as_array().map(Vec::len), Some(1), "{profile}");
    assert!(!profile.to_string().contains(&synthetic_id(0)), "a profile shows the identity number");
    let other = scalar(app, "SELECT id FROM pupils WHERE family_name = $1", "Dahl").await;
    problem(
        &s.step("profile, out of scope").get(&format!("/pupils/{other}"), &kari.token).await,
        404,
        "not-found",
        "out of scope",
    );
    let overview = expect(
        &s.step("class overview")
            .get(&format!("/groups/{group_5a}/overview?assessment_id={assessment}"), &kari.token)
            .await,
        200,
        "overview",
    );
    assert_eq!(overview["pupils"].as_array().map(Vec::len), Some(4), "{overview}");
    assert_eq!(overview["completed"], 3);
    assert_eq!(overview["median"], 25.5);
    assert_eq!((overview["flagged_pupils"].as_u64(), &overview["assessment"]["flagged_count"]), (Some(1), &json!(1)));
    assert_eq!(overview["assessment"]["subtests"][0]["flagged_count"], 1, "{overview}");

    // --- follow-up ----------------------------------------------------------------------
    let aasen = scalar(app, "SELECT id FROM pupils WHERE family_name = $1", "Aasen").await;
    let flagged_first = expect(
        &s.step("class overview, flagged first")
            .get(&format!("/groups/{group_5a}/overview?assessment_id={assessment}&flagged_first=true"), &kari.token)
            .await,
        200,
        "flagged first",
    );
    assert_eq!(
        (&flagged_first["pupils"][0]["id"], &flagged_first["pupils"][0]["flagged"]),
        (&json!(aasen), &json!(true))
    );
    let follow_up =
        expect(&s.step("follow-up list").get("/follow-up?school_year=2026", &kari.token).await, 200, "follow-up");
    let listed = &follow_up["groups"][0]["pupils"];
    assert_eq!((listed.as_array().map(Vec::len), &listed[0]["id"]), (Some(1), &json!(aasen)), "{follow_up}");
    assert_eq!(listed[0]["flags"][0]["flagged_subtests"][0]["id"], "ord", "{follow_up}");
    let counts = expect(
        &s.step("follow-up counts").get(&format!("/assessments/{assessment}/follow-up"), &kari.token).await,
        200,
        "follow-up counts",
    );
    let line = &counts["groups"][0];
    assert_eq!((&line["pupils"], &line["completed"], &line["flagged"]), (&json!(4), &json!(3), &json!(1)), "{counts}");
    let group_5b = scalar(app, "SELECT id FROM groups WHERE external_id = $1", "5B").await;
    problem(
        &s.step("follow-up, another teacher's group")
            .get(&format!("/follow-up?group_id={group_5b}"), &kari.token)
            .await,
        404,
        "not-found",
        "another group",
    );

    // --- manual results -------------------------------------------------------------------
    let r = s.step("register a manual result").post(&format!("/pupils/{fifth}/results"), Some(&kari.token),
              json!({"assessment_id": assessment, "score": 28, "status": "completed", "completed_at": "2026-09-16T10:00:00+02:00"}))
        .await;
    let manual = expect(&r, 201, "manual");
    assert_eq!(
        (manual["source"].as_str(), manual["completed_at"].as_str()),
        (Some("manual"), Some("2026-09-16T08:00:00.000000Z"))
    );
    let result_id = manual["id"].as_str().unwrap().to_owned();
    let r = s
        .step("register it twice")
        .post(
            &format!("/pupils/{fifth}/results"),
            Some(&kari.token),
            json!({"assessment_id": assessment, "score": 1, "status": "completed"}),
        )
        .await;
    problem(&r, 409, "conflict", "twice");
    let r = s
        .step("correct the manual result")
        .send(
            Method::PUT,
            &format!("/pupils/{fifth}/results/{result_id}"),
            Some(&kari.token),
            Some(json!({"score": 29.5, "status": "completed"})),
        )
        .await;
    assert_eq!(expect(&r, 200, "correct")["score"], 29.5);
    let overview = expect(
        &s.step("class overview after the manual result")
            .get(&format!("/groups/{group_5a}/overview?assessment_id={assessment}"), &kari.token)
            .await,
        200,
        "overview",
    );
    assert_eq!(overview["completed"], 4);

    // --- the privacy officer ----------------------------------------------------------------
    let per = s.step(&format!("login {}", privacy_officer.username)).login(&privacy_officer).await;
    let log = expect(
        &s.step("access log of a pupil").get(&format!("/pupils/{pupil}/access-log"), &per.token).await,
        200,
        "access log",
    );
    let actions: Vec<&str> = log["items"].as_array().unwrap().iter().map(|i| i["action"].as_str().unwrap()).collect();
    assert!(actions.len() >= 4, "{log}");
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["actor"]["username"] == "kari" && i["client_ip"] == "127.0.0.1"),
        "{log}"
    );
    problem(
        &s.step("access log, unknown pupil").get(&format!("/pupils/{unknown}/access-log"), &per.token).await,
        404,
        "not-found",
        "unknown",
    );
    problem(
        &s.step("access log, not for teachers").get(&format!("/pupils/{pupil}/access-log"), &kari.token).await,
        403,
        "forbidden",
        "teacher",
    );
    // Every identity-number search shows, hit or miss, never the number.
    let searches =
        expect(&s.step("searches by identity number").get("/pupils/searches", &per.token).await, 200, "searches");
    let hits: Vec<bool> = searches["items"].as_array().unwrap().iter().map(|i| i["hit"].as_bool().unwrap()).collect();
    assert_eq!(hits, [false, false, true], "newest first: other group, unknown number, the hit; {searches}");
    assert!(!searches.to_string().contains(&synthetic_id(0)));

    // --- data-subject requests (component `subject-requests`) ------------------------------
    subject_requests(&s, app, &per, &kari, &pupil).await;

    // --- limits, and logout ------------------------------------------------------------------
    let big = format!(r#"{{"tenant":"oslo","username":"admin","password":"{}"}}"#, "x".repeat(70 * 1024));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(big.into_bytes())
        .unwrap();
    problem(&s.step("login, body over the limit").call(req).await, 413, "payload-too-large", "too large");
    let r = s.step("logout").post("/auth/logout", Some(&kari.token), json!({})).await;
    expect(&r, 204, "logout");
    problem(&s.step("me after logout").get("/auth/me", &kari.token).await, 401, "unauthenticated", "after logout");

    retention(&s, app, &per).await;

    let report = crate::ops::verify_access_log(&app.pool, "oslo").await.unwrap();
    assert!(report.broken.is_none(), "access log chain broken: {:?}", report.broken);
    assert!(report.records >= 8, "{} records", report.records);

    let teacher_session = s.step(&format!("login {}", teacher.username)).login(&teacher).await;
    World {
        oslo,
        admin,
        teacher,
        teacher_session,
        privacy: per,
        publisher,
        group_5a,
        pupil,
        assessment,
        steps: s.steps.into_inner(),
    }
}

/// The scheduler runs retention: Fjell left 100 days ago (past the 90-day
/// grace period) and is erased, his results anonymised; a wrong token is
/// refused, a dry run counts first; the privacy officer reads the reports.
async fn retention<A: Api>(s: &Recorder<'_, A>, app: &TestApp, per: &Session) {
    sqlx::query("UPDATE pupils SET left_at = current_date - 100 WHERE family_name = 'Fjell'")
        .execute(&app.pool)
        .await
        .unwrap();
    let fjell = || async { app.count("SELECT count(*) FROM pupils WHERE family_name = 'Fjell'").await };
    let token = app.variables["scheduler_token"].clone();
    let r =
        s.step("retention run, wrong token").post("/internal/retention/run", Some("not-the-token"), json!({})).await;
    problem(&r, 401, "unauthenticated", "retention, wrong token");
    let r = s
        .step("retention dry run")
        .post("/internal/retention/run?dry_run=true", Some(&token), json!({"trigger": "manual"}))
        .await;
    let dry = expect(&r, 200, "retention dry run");
    assert_eq!((dry["dry_run"].as_bool(), dry["counts"]["pupils_erased"].as_i64()), (Some(true), Some(1)), "{dry}");
    assert_eq!(fjell().await, 1, "a dry run changes nothing");
    let r = s.step("retention run").post("/internal/retention/run", Some(&token), json!({})).await;
    let run = expect(&r, 200, "retention run");
    assert_eq!((run["status"].as_str(), run["trigger"].as_str()), (Some("completed"), Some("schedule")), "{run}");
    assert_eq!(run["counts"]["pupils_erased"], 1, "{run}");
    assert!(run["counts"]["results_anonymised"].as_i64() > Some(0), "{run}");
    assert_eq!(fjell().await, 0);
    let list = expect(&s.step("retention runs").get("/retention/runs", &per.token).await, 200, "retention runs");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(list["items"][0]["id"], run["id"]);
    let path = format!("/retention/runs/{}", run["id"].as_str().unwrap());
    let one = expect(&s.step("a retention run").get(&path, &per.token).await, 200, "a retention run");
    assert_eq!(one["counts"]["pupils_erased"], 1, "{one}");
}

/// The privacy officer serves data-subject requests: an access request
/// registered by identity number (in the body) and fulfilled with an export
/// that is downloaded; a rectification; a restriction and its lifting; an
/// erasure of Dag Dahl, after which no pupil row holds his names; the record
/// of processing; and the refusals (a teacher, an unknown request, a second
/// extension, a fulfilment after rejection).
async fn subject_requests<A: Api>(s: &Recorder<'_, A>, app: &TestApp, per: &Session, kari: &Session, pupil: &str) {
    let dahl = scalar(app, "SELECT id FROM pupils WHERE family_name = $1", "Dahl").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let register = |body: Value| async move {
        s.step("register a subject request").post("/subject-requests", Some(&per.token), body).await
    };
    let access = expect(
        &register(json!({"kind": "access", "subject": {"identity_number": synthetic_id(0)},
                         "identity_verification": "BankID login by the guardian"}))
        .await,
        201,
        "register access",
    );
    assert_eq!(access["subject"]["id"], pupil);
    let id = access["id"].as_str().unwrap().to_owned();
    let list = expect(&s.step("subject requests").get("/subject-requests", &per.token).await, 200, "list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let r = s.step("start a request").post(&format!("/subject-requests/{id}/start"), Some(&per.token), json!({})).await;
    assert_eq!(expect(&r, 200, "start")["status"], "in_progress");
    let extend = || {
        let path = format!("/subject-requests/{id}/extend");
        async move {
            let body = json!({"months": 1, "reason": "Data from several publishers"});
            s.step("extend a request").post(&path, Some(&per.token), body).await
        }
    };
    expect(&extend().await, 200, "extend");
    problem(&extend().await, 409, "conflict", "extended twice");
    let r = s
        .step("fulfil an access request")
        .post(&format!("/subject-requests/{id}/fulfil"), Some(&per.token), json!({}))
        .await;
    assert_eq!(expect(&r, 200, "fulfil access")["outcome"]["exports"], json!(["json"]));
    let export = expect(
        &s.step("download the export").get(&format!("/subject-requests/{id}/export"), &per.token).await,
        200,
        "export",
    );
    assert_eq!(export["identity"]["identity_number"], synthetic_id(0));
    assert!(export["tables"]["results"]["rows"].as_array().is_some_and(|r| !r.is_empty()), "{export}");
    let shown = expect(
        &s.step("a request and its history").get(&format!("/subject-requests/{id}"), &per.token).await,
        200,
        "show",
    );
    assert_eq!(
        shown["history"].as_array().map(Vec::len),
        Some(5),
        "registered, started, extended, completed, downloaded: {shown}"
    );

    let fulfil = |id: String, body: Value| {
        let path = format!("/subject-requests/{id}/fulfil");
        async move { s.step("fulfil a request").post(&path, Some(&per.token), body).await }
    };
    let rect = expect(
        &register(json!({"kind": "rectification", "subject": {"pupil_id": pupil}, "identity_verification": "Letter",
                         "corrections": [{"field": "given_name", "value": "Åse Marie"}]}))
        .await,
        201,
        "register rectification",
    );
    let r = expect(&fulfil(rect["id"].as_str().unwrap().to_owned(), json!({})).await, 200, "rectify");
    assert_eq!(r["outcome"]["fields"], json!(["given_name"]));
    let restrict = expect(
        &register(json!({"kind": "restriction", "subject": {"pupil_id": dahl}, "identity_verification": "Letter"}))
            .await,
        201,
        "register restriction",
    );
    let r = expect(&fulfil(restrict["id"].as_str().unwrap().to_owned(), json!({})).await, 200, "restrict");
    assert_eq!(r["outcome"]["restricted"], true);
    let lift = expect(
        &register(
            json!({"kind": "restriction_lifted", "subject": {"pupil_id": dahl}, "identity_verification": "Letter"}),
        )
        .await,
        201,
        "register lifting",
    );
    expect(&fulfil(lift["id"].as_str().unwrap().to_owned(), json!({})).await, 200, "lift");
    let erase = expect(
        &register(
            json!({"kind": "erasure", "subject": {"pupil_id": dahl}, "identity_verification": "Guardian, BankID"}),
        )
        .await,
        201,
        "register erasure",
    );
    let erase_id = erase["id"].as_str().unwrap().to_owned();
    let r = expect(&fulfil(erase_id.clone(), json!({})).await, 200, "erase");
    assert_eq!(r["outcome"]["results_anonymised"], 1, "{r}");
    let again = expect(&fulfil(erase_id, json!({})).await, 200, "erase again");
    assert_eq!(again, r, "fulfilling twice answers the same, with no second effect");
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM pupils WHERE family_name = 'Dahl' OR given_name = 'Dag'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(held, 0);
    let rejected = expect(
        &register(json!({"kind": "objection", "subject": {"pupil_id": pupil}, "identity_verification": "Letter"}))
            .await,
        201,
        "register objection",
    );
    let rejected_id = rejected["id"].as_str().unwrap().to_owned();
    let r = s
        .step("reject a request")
        .post(
            &format!("/subject-requests/{rejected_id}/reject"),
            Some(&per.token),
            json!({"reason": "Not the guardian"}),
        )
        .await;
    assert_eq!(expect(&r, 200, "reject")["status"], "rejected");
    problem(&fulfil(rejected_id, json!({"decision": "upheld", "reason": "x"})).await, 409, "conflict", "rejected");

    let inventory =
        expect(&s.step("record of processing").get("/privacy/inventory", &per.token).await, 200, "inventory");
    assert!(inventory.to_string().contains("identity_enc"), "{inventory}");
    problem(
        &s.step("subject requests, not for teachers").get("/subject-requests", &kari.token).await,
        403,
        "forbidden",
        "teacher",
    );
    problem(
        &s.step("subject request, unknown id").get(&format!("/subject-requests/{unknown}"), &per.token).await,
        404,
        "not-found",
        "unknown request",
    );
    problem(
        &register(
            json!({"kind": "access", "subject": {"identity_number": "12345678901"}, "identity_verification": "x"}),
        )
        .await,
        422,
        "validation-failed",
        "invalid identity number",
    );
}

/// The access records of `tenant` in order, without generated ids: (action,
/// actor's username, pupils' family names in record order, client address).
pub async fn access_records(app: &TestApp, tenant: &str) -> Vec<(String, String, Vec<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT l.action, u.username, \
                ARRAY(SELECT p.family_name FROM unnest(l.pupil_ids) WITH ORDINALITY AS x(id, n) \
                      JOIN pupils p ON p.id = x.id ORDER BY x.n), \
                l.client_ip \
         FROM access_log l JOIN tenants t ON t.id = l.tenant_id JOIN users u ON u.id = l.actor_user_id \
         WHERE t.slug = $1 ORDER BY l.id",
    )
    .bind(tenant)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}
