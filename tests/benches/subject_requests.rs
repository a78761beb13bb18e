//! Subject-requests benchmark (issue "subject-requests component"): how long
//! a privacy officer waits for an access export of a pupil with 1,000
//! results (10 items each) and 500 access records, and for the erasure of
//! such a pupil, through the native host and on real Spin (aim: both under
//! 100 ms natively). Each sample is one `POST /subject-requests/{id}/fulfil`
//! over HTTP: for access, the export is built from the data inventory,
//! encrypted and stored, with its audit and access records; for erasure, the
//! tombstones, the anonymised results, the deletions and the scrub, with
//! the completion record. Every answer is checked.
//!
//!     cargo bench -p tavle-tests --bench subject_requests                # full run
//!     BENCH_SMOKE=1 cargo bench -p tavle-tests --bench subject_requests  # smoke run (CI)
//!
//! Knobs (environment): `BENCH_SAMPLES` (exports and erasures per host,
//! default 15; smoke 2), `BENCH_RESULTS` (per pupil, in whole hundreds, default 1,000;
//! smoke 100), `BENCH_RECORDS` (access records per pupil, default 500; smoke 20).

#[allow(dead_code)] // shared by the benches; this one uses only a few of its helpers
mod common;

use common::{ms, pct, print_panics, server_version, size, smoke, smoke_banner, start_host};
use serde_json::json;
use std::time::{Duration, Instant};
use tavle_tests::http::HttpClient;
use tavle_tests::spin::SpinApp;
use tavle_tests::{synthetic_id, Api, Session, Source, Staff, TestApp};

/// A pupil with `results` results and `records` access records; returns the pupil's id.
async fn loaded_pupil(
    app: &TestApp,
    sas: &Source,
    publisher: &Source,
    n: u32,
    results: usize,
    records: usize,
) -> String {
    let roster = json!({
        "school": {"external_id": format!("s{n}"), "name": format!("Skole {n}")},
        "groups": [{"external_id": "5A", "name": "5A", "year_level": 5}],
        "pupils": [{"identity_number": synthetic_id(n), "feide_username": format!("p{n}@skole.no"),
                    "given_name": format!("Given{n}"), "family_name": format!("Family{n}"), "year_level": 5,
                    "gender": "female", "groups": ["5A"]}],
    });
    let r = app.deliver(sas, "roster", &format!("r-{n}"), &roster).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // One result per assessment through the webhook (a post holds one result
    // per pupil), then the rest alike by SQL: 100 results per assessment.
    let assessments = results.div_ceil(100);
    for c in 0..assessments {
        let items: Vec<serde_json::Value> = (0..10)
            .map(|q| json!({"item": format!("q{q}"), "score": q % 2, "max_score": 1, "answer": format!("svar {q}")}))
            .collect();
        let post = json!({
            "assessment": {"external_id": format!("a{c}"), "title": format!("Prøve {c}"), "subject": "norsk",
                           "year_level": 5, "max_score": 40, "administered_on": "2026-09-15"},
            "results": [{"external_id": format!("p{n}-a{c}-0"), "pupil": {"identity_number": synthetic_id(n)},
                         "score": 20, "status": "completed", "completed_at": "2026-09-15T09:30:00Z", "items": items}],
        });
        let r = app.deliver(publisher, "results", &format!("p{n}-post{c}"), &post).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    sqlx::query(
        "INSERT INTO results (tenant_id, pupil_id, assessment_id, source_id, external_id, score, status, completed_at, items) \
         SELECT r.tenant_id, r.pupil_id, r.assessment_id, r.source_id, r.external_id || '-' || i, (i % 40)::float8, \
                r.status, r.completed_at, r.items \
         FROM results r JOIN pupils p ON p.id = r.pupil_id, generate_series(1, 99) AS i \
         WHERE p.family_name = $1",
    )
    .bind(format!("Family{n}"))
    .execute(&app.pool)
    .await
    .unwrap();
    let pupil: uuid::Uuid = sqlx::query_scalar("SELECT id FROM pupils WHERE family_name = $1")
        .bind(format!("Family{n}"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // Access records as the owner writes them (operator tools, tests of the chain).
    sqlx::query(
        "SELECT access_log_append(p.tenant_id, u.id, 'pupil.viewed', ARRAY[p.id], '127.0.0.1', 'bench') \
         FROM pupils p JOIN users u ON u.tenant_id = p.tenant_id AND u.username = 'admin', generate_series(1, $2) \
         WHERE p.id = $1",
    )
    .bind(pupil)
    .bind(records as i32)
    .execute(&app.pool)
    .await
    .unwrap();
    pupil.to_string()
}

async fn fulfil(api: &impl Api, officer: &Session, kind: &str, pupil: &str) -> Duration {
    let r = api
        .post(
            "/subject-requests",
            Some(&officer.token),
            json!({"kind": kind, "subject": {"pupil_id": pupil}, "identity_verification": "bench"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let r = api.post(&format!("/subject-requests/{id}/fulfil"), Some(&officer.token), json!({})).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "completed");
    took
}

fn line(host: &str, what: &str, samples: &[Duration]) {
    let mut v = samples.to_vec();
    v.sort();
    println!(
        "{host:<8} {what:<8} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        v.len(),
        ms(v[0]),
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(*v.last().unwrap())
    );
}

fn main() {
    print_panics();
    let samples = size("BENCH_SAMPLES", 15, 2);
    // Whole assessments of 100 results each.
    let results = size("BENCH_RESULTS", 1_000, 100).div_ceil(100) * 100;
    let records = size("BENCH_RECORDS", 500, 20);
    if smoke() {
        println!("{}", smoke_banner(&format!("{samples} samples, {results} results, {records} records")));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Pools dropped at the end need the runtime.
    let _runtime = rt.enter();
    let app = rt.block_on(TestApp::spawn());
    println!("PostgreSQL {}", rt.block_on(server_version(&app)));
    let oslo: Staff = rt.block_on(app.seed_tenant("oslo"));
    let (officer, per, sas, publisher) = rt.block_on(async {
        let admin = app.login(&oslo).await;
        let per = app.create_user(&admin, &oslo, "per", json!([{"role": "privacy_officer"}])).await;
        let officer = app.login(&per).await;
        (officer, per, app.create_source(&admin, "sas").await, app.create_source(&admin, "publisher").await)
    });
    // One pupil to export per host, and one pupil per erasure sample.
    let started = Instant::now();
    let hosts = ["native", "spin"];
    let mut next = 0u32;
    let mut pupils = || {
        next += 1;
        rt.block_on(loaded_pupil(&app, &sas, &publisher, next, results, records))
    };
    let exported: Vec<String> = hosts.iter().map(|_| pupils()).collect();
    let erased: Vec<Vec<String>> = hosts.iter().map(|_| (0..samples).map(|_| pupils()).collect()).collect();
    println!(
        "dataset: {} pupils with {results} results (10 items each) and {records} access records each ({:.0} s)",
        next,
        started.elapsed().as_secs_f64()
    );

    let (native_addr, _) = start_host(&app.variables, 2);
    let spin = SpinApp::start_project(&app.variables);
    let addrs = [native_addr, spin.addr];
    println!(
        "\n{:<8} {:<8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "host", "what", "samples", "min ms", "p50 ms", "p99 ms", "max ms"
    );
    for (h, host) in hosts.iter().enumerate() {
        let api = HttpClient::new(addrs[h]);
        // A warm-up of each kind (instance caches, prepared statements).
        rt.block_on(fulfil(&api, &officer, "access", &exported[h]));
        let export: Vec<Duration> =
            (0..samples).map(|_| rt.block_on(fulfil(&api, &officer, "access", &exported[h]))).collect();
        line(host, "export", &export);
        let erase: Vec<Duration> =
            erased[h].iter().map(|p| rt.block_on(fulfil(&api, &officer, "erasure", p))).collect();
        line(host, "erase", &erase);
    }
    // Where an export's time goes: building the document (the inventory's
    // queries and the JSON), and storing it (serialising, AES-256-GCM, the
    // INSERT of the ciphertext), called in process on the app role.
    let pool =
        rt.block_on(sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&app.variables["db_url"])).unwrap();
    let mut db = tavle_core::db::SqlxDb::new(pool);
    let subject = tavle_subject_requests::Subject::Pupil(exported[0].clone());
    let (mut builds, mut stores, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..samples {
        let started = Instant::now();
        let export = rt
            .block_on(tavle_subject_requests::build(&mut db, &app.variables, &oslo.tenant_id, &subject, false))
            .unwrap();
        builds.push(started.elapsed());
        bytes = serde_json::to_vec(&export.json).unwrap().len();
        let request = rt.block_on(async {
            let api = HttpClient::new(native_addr);
            let body =
                json!({"kind": "access", "subject": {"pupil_id": exported[0]}, "identity_verification": "bench"});
            api.post("/subject-requests", Some(&officer.token), body).await.json()["id"].as_str().unwrap().to_owned()
        });
        let started = Instant::now();
        rt.block_on(tavle_subject_requests::store(
            &mut db,
            &app.variables,
            &oslo.tenant_id,
            &request,
            &per.user_id,
            &export,
            7,
        ))
        .unwrap();
        stores.push(started.elapsed());
    }
    println!("in process: the document is {} kB", bytes / 1024);
    // Each inventory query of a pupil's export alone, fetched as text.
    let filters: Vec<(String, String)> = rt
        .block_on(
            sqlx::query_as(
                "SELECT table_name, pupil_filter FROM data_inventory_tables WHERE pupil_filter IS NOT NULL ORDER BY 1",
            )
            .fetch_all(&app.pool),
        )
        .unwrap();
    let (tenant, pupil) =
        (uuid::Uuid::parse_str(&oslo.tenant_id).unwrap(), uuid::Uuid::parse_str(&exported[0]).unwrap());
    for (table, filter) in filters {
        let sql = format!("SELECT to_jsonb(t)::text FROM \"{table}\" t WHERE {filter}");
        let started = Instant::now();
        let rows: Vec<String> =
            rt.block_on(sqlx::query_scalar(&sql).bind(tenant).bind(pupil).fetch_all(&app.pool)).unwrap();
        println!("  {table:<20} {:>5} rows {:>7.1} ms", rows.len(), ms(started.elapsed()));
    }
    line("native", "build", &builds);
    line("native", "store", &stores);

    // The erased pupils are gone, their results kept only anonymised.
    let left: i64 = rt.block_on(sqlx::query_scalar("SELECT count(*) FROM results").fetch_one(&app.pool)).unwrap();
    assert_eq!(left as usize, hosts.len() * results, "only the exported pupils' results remain");
    if smoke() {
        println!("{}", smoke_banner("see above"));
    }
}
