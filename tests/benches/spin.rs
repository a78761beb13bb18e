//! Spin against the native host, in the same run: the main requests of the
//! end-to-end scenario, timed on `spin up` (release `.wasm` files, the
//! project's spin.toml) and on the native host's HTTP server, interleaved
//! request by request so that drift affects both alike. Prints p50 and p99
//! per route and host, the ratio Spin / native, each component's size, and
//! Spin's start-up and first-request latency.
//!
//! ```sh
//! cargo bench -p tavle-tests --bench spin                # full run
//! BENCH_SMOKE=1 cargo bench -p tavle-tests --bench spin  # smoke run (CI): same paths, few requests
//! ```
//!
//! Settings: `BENCH_N` (requests per route and host, default 300; smoke 12),
//! `BENCH_CLASS` (pupils in the class of the overview and the results post,
//! default 100; smoke 20), `BENCH_WORKERS` (native host workers, default 2).
//! Every answer is asserted; a smoke run's figures are printed but are not
//! results. Method and figures: tests/benches/README.md.

#[allow(dead_code)] // shared by the benches; this one uses only a few of its helpers
mod common;

use common::{env_usize, ms, pct};
use http::{header, Method, Request};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tavle_tests::http::{start_native_on, HttpClient};
use tavle_tests::scenario::{self, World};
use tavle_tests::spin::{manifest_with_probe, SpinApp};
use tavle_tests::{project_root, synthetic_id, unix_now, Api, Source, TestApp, TestResponse};

struct Host {
    name: &'static str,
    app: TestApp,
    client: HttpClient,
    world: World,
    class: String,
    assessment: String,
}

/// A class of `n` pupils (numbers 100..100+n) with a results post each.
fn class_roster(n: usize) -> Value {
    let pupils: Vec<Value> = (0..n as u32)
        .map(|i| {
            json!({"identity_number": synthetic_id(100 + i), "given_name": format!("Elev {i}"),
                   "family_name": format!("Klasse {i:03}"), "year_level": 6, "groups": ["6A"]})
        })
        .collect();
    json!({"school": {"external_id": "sorby", "name": "Sørby skole"},
           "groups": [{"external_id": "6A", "name": "6A", "year_level": 6}], "pupils": pupils})
}

/// A screening with a threshold on the total and 4 subtests (10 each,
/// thresholds 3) for the class; `round` changes every score.
fn class_results(n: usize, round: usize) -> Value {
    let rows: Vec<Value> = (0..n as u32)
        .map(|i| {
            let score = (i as usize + round) % 41;
            let subtests: Vec<Value> =
                (0..4).map(|k| json!({"id": format!("d{k}"), "score": ((score + k) / 4).min(10)})).collect();
            json!({"external_id": format!("regning-{i}"), "pupil": {"identity_number": synthetic_id(100 + i)},
                   "score": score as f64, "status": "completed",
                   "completed_at": "2026-10-01T09:00:00Z", "subtests": subtests,
                   "items": [{"item": "q1", "score": 1, "answer": "A", "subtest": "d0"},
                             {"item": "q2", "score": 0, "answer": "C", "subtest": "d1"}]})
        })
        .collect();
    let subtests: Vec<Value> = (0..4)
        .map(
            |k| json!({"id": format!("d{k}"), "title": format!("Delprøve {}", k + 1), "max_score": 10, "threshold": 3}),
        )
        .collect();
    json!({"assessment": {"external_id": "regning-h26", "title": "Kartlegging regning", "subject": "matematikk",
                          "year_level": 6, "max_score": 40, "administered_on": "2026-10-01",
                          "family": "regning", "threshold": 12, "subtests": subtests},
           "results": rows})
}

async fn signed(client: &HttpClient, source: &Source, id: &str, body: &Value) -> TestResponse {
    let body = serde_json::to_vec(body).unwrap();
    let now = unix_now();
    let signature = standardwebhooks::Webhook::new(&source.secret).unwrap().sign(id, now, &body).unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/ingest/{}/results", source.id))
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .unwrap();
    client.call(req).await
}

async fn prepare(name: &'static str, app: TestApp, client: HttpClient, class: usize) -> Host {
    let world = scenario::run(&client, &app).await;
    let sas = client.create_source(&world.admin, "sas").await;
    let r = client.deliver(&sas, "roster", "bench-class", &class_roster(class)).await;
    assert_eq!(r.status, 200, "{name}: class roster: {}", r.text());
    let r = signed(&client, &world.publisher, "bench-results-0", &class_results(class, 0)).await;
    assert_eq!(r.status, 200, "{name}: class results: {}", r.text());
    let id = |sql: &'static str| {
        let pool = app.pool.clone();
        async move { sqlx::query_scalar::<_, uuid::Uuid>(sql).fetch_one(&pool).await.unwrap().to_string() }
    };
    let class_id = id("SELECT id FROM groups WHERE external_id = '6A'").await;
    let assessment = id("SELECT id FROM assessments WHERE external_id = 'regning-h26'").await;
    // The teacher of the scenario also teaches the benchmark's class.
    let roles =
        json!({"roles": [{"role": "teacher", "group_id": world.group_5a}, {"role": "teacher", "group_id": class_id}]});
    let r = client
        .send(
            Method::PUT,
            &format!("/admin/users/{}/roles", world.teacher.user_id),
            Some(&world.admin.token),
            Some(roles),
        )
        .await;
    assert_eq!(r.status, 200, "{name}: roles: {}", r.text());
    Host { name, app, client, world, class: class_id, assessment }
}

fn token_of(h: &Host) -> &str {
    &h.world.teacher_session.token
}

type Route = &'static str;
const ROUTES: [Route; 6] =
    ["login", "pupil profile", "class overview", "results post", "follow-up list", "follow-up counts"];

/// One request of `route`, asserted; `i` makes each results post new.
async fn request(h: &Host, route: Route, i: usize, class: usize) -> Duration {
    let token = &h.world.teacher_session.token;
    let started = Instant::now();
    let r = match route {
        "login" => h.client.login_response("oslo", &h.world.teacher.username, &h.world.teacher.password).await,
        "pupil profile" => h.client.get(&format!("/pupils/{}", h.world.pupil), token).await,
        "class overview" => {
            h.client.get(&format!("/groups/{}/overview?assessment_id={}", h.class, h.assessment), token).await
        }
        "results post" => {
            signed(&h.client, &h.world.publisher, &format!("bench-results-{}", i + 1), &class_results(class, i + 1))
                .await
        }
        "follow-up list" => h.client.get("/follow-up?school_year=2026", token).await,
        "follow-up counts" => h.client.get(&format!("/assessments/{}/follow-up", h.assessment), token).await,
        _ => unreachable!(),
    };
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{} {route}: {}", h.name, r.text());
    let body = r.json();
    match route {
        "login" => assert!(body["access_token"].is_string()),
        "pupil profile" => assert_eq!(body["family_name"], "Ødegård"),
        "class overview" => {
            assert_eq!(body["pupils"].as_array().map(Vec::len), Some(class), "{}", h.name);
            assert_eq!(body["assessment"]["subtests"].as_array().map(Vec::len), Some(4), "{}", h.name);
        }
        "follow-up list" => {
            // 5A (the scenario's) and the class, whose low scorers are flagged.
            let groups = body["groups"].as_array().unwrap();
            assert_eq!(groups.len(), 2, "{}: {body}", h.name);
            assert!(groups.iter().any(|g| !g["pupils"].as_array().unwrap().is_empty()), "{}", h.name);
        }
        "follow-up counts" => {
            let pupils: u64 = body["groups"].as_array().unwrap().iter().map(|g| g["pupils"].as_u64().unwrap()).sum();
            // 5A's four, less Fjell, whom the scenario's retention run erased.
            assert_eq!(pupils as usize, class + 3, "{}: the class and 5A's three: {body}", h.name);
        }
        _ => assert_eq!(body["received"], class, "{}", h.name),
    }
    took
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    common::print_panics();
    let smoke = std::env::var("BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
    let n = env_usize("BENCH_N", if smoke { 12 } else { 300 });
    let class = env_usize("BENCH_CLASS", if smoke { 20 } else { 100 });
    let workers = env_usize("BENCH_WORKERS", 2);
    if smoke {
        println!("SMOKE RUN ({n} requests per route and host, a class of {class}): figures are not results");
    }

    let native_app = TestApp::spawn().await;
    // Both hosts serve spin.toml's components plus the test fixture `probe`
    // (for the diagnostics at the end).
    let native_addr = start_native_on(&manifest_with_probe(), &native_app.variables, workers);
    let native = prepare("native", native_app, HttpClient::new(native_addr), class).await;

    let spin_app = TestApp::spawn().await;
    let spin_process = SpinApp::start(&manifest_with_probe(), &spin_app.variables);
    let (startup, first) = (spin_process.startup, spin_process.first_request);
    let spin = prepare("spin", spin_app, spin_process.client(), class).await;

    // Warm-up, then interleaved: each iteration times one request on each
    // host, the order alternating.
    let hosts = [&native, &spin];
    for route in ROUTES {
        for (i, h) in hosts.iter().enumerate() {
            request(h, route, 1000 + i, class).await;
        }
    }
    let mut samples: Vec<[Vec<Duration>; 2]> = ROUTES.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for (r, route) in ROUTES.iter().enumerate() {
        for i in 0..n {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for h in order {
                let took = request(hosts[h], route, 2 * (i + 2000) + h, class).await;
                samples[r][h].push(took);
            }
        }
    }

    println!(
        "\nrequests on one keep-alive connection per host, {n} per route and host, interleaved; class of {class} pupils"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "route", "native p50", "native p99", "spin p50", "spin p99", "ratio p50", "ratio p99"
    );
    for (r, route) in ROUTES.iter().enumerate() {
        let [nat, sp] = &samples[r];
        let (n50, n99, s50, s99) = (pct(nat, 0.5), pct(nat, 0.99), pct(sp, 0.5), pct(sp, 0.99));
        println!(
            "{:<16} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>9.2} {:>9.2}",
            route,
            ms(n50),
            ms(n99),
            ms(s50),
            ms(s99),
            ms(s50) / ms(n50),
            ms(s99) / ms(n99)
        );
    }
    println!("(ms; ratio = Spin / native; aim: p50 ratio <= 1.5 for each of these routes)");
    println!("\nSpin: ready {:.0} ms after `spin up` started; its first request took {:.1} ms", ms(startup), ms(first));

    // Where a request's time goes: one without the database (an
    // unauthenticated `GET /auth/me`: HTTP, a fresh instance on Spin), and
    // one with a single trivial statement (taking a pooled connection, its
    // ROLLBACK, one statement).
    let mut overhead: Vec<[Vec<Duration>; 2]> = vec![[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for (k, path) in ["/auth/me", "/probe/ping"].into_iter().enumerate() {
        for i in 0..n {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for h in order {
                let started = Instant::now();
                let r = hosts[h].client.call(Request::builder().uri(path).body(Vec::new()).unwrap()).await;
                overhead[k][h].push(started.elapsed());
                assert_eq!(r.status, if k == 0 { 401 } else { 200 }, "{}", r.text());
            }
        }
    }
    println!("\n{:<34} {:>10} {:>10} {:>11}", "where the time goes (p50, ms)", "native", "spin", "difference");
    for (what, s) in
        [("no database (GET /auth/me, 401)", &overhead[0]), ("one trivial statement (probe)", &overhead[1])]
    {
        let (a, b) = (ms(pct(&s[0], 0.5)), ms(pct(&s[1], 0.5)));
        println!("{what:<34} {a:>10.2} {b:>10.2} {:>11.2}", b - a);
    }

    // Where a login's time goes: one argon2id verification (production
    // parameters, the login component's code), natively in this process and
    // inside a Spin component, whose first verification in a fresh instance
    // also grows the instance's memory by the 19 MiB it needs.
    let rounds = if smoke { 3 } else { 20 };
    let (mut native_v, mut first_v, mut later_v) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        native_v.extend(tavle_db_probe::argon2_micros(3).into_iter().map(Duration::from_micros));
        let r = spin.client.get("/probe/argon2?n=3", token_of(&spin)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let micros: Vec<u64> = serde_json::from_value(r.json()["micros"].clone()).unwrap();
        first_v.push(Duration::from_micros(micros[0]));
        later_v.extend(micros[1..].iter().map(|m| Duration::from_micros(*m)));
    }
    println!(
        "argon2id verify p50: native {:.2} ms; in wasm on Spin {:.2} ms (first in an instance {:.2} ms); ratio {:.2}",
        ms(pct(&native_v, 0.5)),
        ms(pct(&later_v, 0.5)),
        ms(pct(&first_v, 0.5)),
        ms(pct(&later_v, 0.5)) / ms(pct(&native_v, 0.5))
    );

    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(project_root().join("spin.toml")).unwrap()).unwrap();
    println!("\n{:<10} {:>10} {:>8}", "component", "bytes", "KiB");
    for (name, c) in manifest["component"].as_table().unwrap() {
        let path = project_root().join(c["source"].as_str().unwrap());
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{name:<10} {bytes:>10} {:>8.1}", bytes as f64 / 1024.0);
    }
    let _ = (&native.app, &spin.app);
    drop(spin_process);
}
