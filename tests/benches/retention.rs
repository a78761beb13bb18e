//! Retention benchmark (issue "retention component"): a run over 1,000,000
//! results that belong to pupils past their grace period, through the
//! native host over HTTP, while a school leader reads the profiles of other
//! pupils. Prints the run's total time, its longest batch, and the p99 of
//! the profile reads during the run divided by their p99 with no run (aim:
//! run under 60 s, longest batch under 250 ms, ratio at most 2).
//!
//!     cargo bench -p tavle-tests --bench retention                # full run
//!     BENCH_SMOKE=1 cargo bench -p tavle-tests --bench retention  # smoke run (CI)
//!
//! Knobs (environment): `BENCH_LEFT_RESULTS` (results of the leavers,
//! default 1,000,000; smoke 4,000), `BENCH_READS` (baseline profile reads,
//! default 2,000; smoke 50), `BENCH_GEN_JOBS` (dataset inserts at once, 2).
//! The dataset: 100 results per pupil, schools of 1,000 pupils (smoke 20);
//! every school but the last two has left (left_at 100 days ago).

#[allow(dead_code)] // shared by the benches; this one uses only a few of its helpers
mod common;

use common::{
    diagnosis_settings, env_usize, ms, pct, print_panics, server_version, size, smoke, smoke_banner, start_host,
    Client, StderrRedirect,
};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tavle_host::dataset::{self, Keys, Spec};
use tavle_tests::{Api, TestApp};

const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn profile_reads(
    addr: std::net::SocketAddr,
    token: &str,
    pupils: &[String],
    n: Option<usize>,
    stop: &AtomicBool,
) -> Vec<Duration> {
    let mut client = Client::connect(addr, READ_TIMEOUT);
    let mut lat = Vec::new();
    let mut i = 0;
    while n.is_none_or(|n| i < n) && !stop.load(Ordering::Relaxed) {
        let pupil = &pupils[(i * 7919) % pupils.len()];
        let head = format!(
            "GET /pupils/{pupil} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
        );
        let s = Instant::now();
        let r = client.send(&[head.as_bytes()]);
        lat.push(s.elapsed());
        assert_eq!(r.status, 200, "GET /pupils/{pupil}: {}", String::from_utf8_lossy(&r.body));
        i += 1;
    }
    lat
}

fn main() {
    let total = Instant::now();
    let left_results = size("BENCH_LEFT_RESULTS", 1_000_000, 4_000) as u64;
    let reads = size("BENCH_READS", 2_000, 50);
    let school_size = if smoke() { 20 } else { 1_000 };
    // 100 results per pupil; the leavers' schools plus two that stay.
    let left_pupils = (left_results / 100) as usize;
    let schools = left_pupils.div_ceil(school_size) + 2;
    let n_pupils = schools * school_size;
    let n_results = n_pupils as u64 * 100;
    let n_groups = n_pupils / 25;
    if smoke() {
        println!("{}", smoke_banner(&format!("{n_pupils} pupils, {n_results} results, {reads} reads")));
    }
    print_panics();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (app, admin, pg) = rt.block_on(async {
        let app = TestApp::spawn().await;
        let admin = app.seed_tenant("bench").await;
        let v = server_version(&app).await;
        (app, admin, v)
    });
    println!(
        "generating {n_pupils} pupils in {schools} schools, {n_results} results into a throwaway PostgreSQL {pg}:"
    );
    let keys = Keys {
        identity_key: app.variables["identity_key"].clone(),
        blind_index_key: app.variables["blind_index_key"].clone(),
    };
    let mut spec = Spec::new("bench", n_pupils, n_groups, n_results);
    spec.jobs = env_usize("BENCH_GEN_JOBS", 2).max(1);
    spec.schools = Some(schools);
    let gen = rt.block_on(async {
        let pool = PgPoolOptions::new().max_connections(spec.jobs as u32 + 1).connect(&app.db_url).await.unwrap();
        let no_password = || -> anyhow::Result<String> { anyhow::bail!("the bench tenant exists") };
        let gen = dataset::generate(&pool, &spec, &keys, no_password, &|l| println!("  {l}")).await.unwrap();
        pool.close().await;
        gen
    });
    let staying = &gen.school_ids[schools - 2..];
    let (leavers, leaver_results): (i64, i64) = rt.block_on(async {
        sqlx::query("UPDATE pupils SET left_at = current_date - 100 WHERE NOT (school_id::text = ANY($1))")
            .bind(staying)
            .execute(&app.pool)
            .await
            .unwrap();
        sqlx::query("VACUUM ANALYZE").execute(&app.pool).await.unwrap();
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM pupils WHERE left_at IS NOT NULL), \
                    (SELECT count(*) FROM results r JOIN pupils p ON p.id = r.pupil_id WHERE p.left_at IS NOT NULL)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    });
    println!("{leavers} pupils past their grace period hold {leaver_results} results");
    let readable: Vec<String> = gen
        .pupils
        .iter()
        .filter(|p| staying.contains(&gen.school_ids[gen.groups[p.group].school]))
        .map(|p| p.id.clone())
        .collect();

    // A school leader of a school that stays reads its pupils' profiles.
    let leader = rt.block_on(async {
        let session = app.login(&admin).await;
        let roles = json!([{"role": "school_leader", "school_id": staying[0]}]);
        let staff = app.create_user(&session, &admin, "leader", roles).await;
        app.login(&staff).await.token
    });
    let readable: Vec<String> = {
        let school = &staying[0];
        let ids: Vec<String> = gen
            .pupils
            .iter()
            .filter(|p| &gen.school_ids[gen.groups[p.group].school] == school)
            .map(|p| p.id.clone())
            .collect();
        assert!(!ids.is_empty() && ids.len() <= readable.len());
        ids
    };
    // The host's request log goes to a file.
    let log_path = tavle_tests::project_root().join("target").join("bench-retention-host.log");
    let redirect = StderrRedirect::to(&log_path);
    // Diagnosis (common::diagnosis_settings): plans copied to
    // target/bench-retention-auto-explain.log at the end.
    let pg_log = rt.block_on(diagnosis_settings(&app));
    let (addr, _) = start_host(&app.variables, 2);
    let token = app.variables["scheduler_token"].clone();

    // 1. Baseline: profile reads with no run.
    let never = AtomicBool::new(false);
    profile_reads(addr, &leader, &readable, Some(reads / 10 + 1), &never); // warm-up
    let baseline = profile_reads(addr, &leader, &readable, Some(reads), &never);

    // 2. The run (calls until nothing remains), reads alongside.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, leader, readable) = (stop.clone(), leader.clone(), readable.clone());
        std::thread::spawn(move || profile_reads(addr, &leader, &readable, None, &stop))
    };
    let mut client = Client::connect(addr, READ_TIMEOUT);
    let run_start = Instant::now();
    let mut reports: Vec<Value> = Vec::new();
    loop {
        let body = r#"{"trigger": "manual"}"#;
        let head = format!(
            "POST /internal/retention/run HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let r = client.send(&[head.as_bytes(), body.as_bytes()]);
        assert_eq!(r.status, 200, "retention run: {}", String::from_utf8_lossy(&r.body));
        let report: Value = serde_json::from_slice(&r.body).unwrap();
        let more = report["more_remaining"].as_bool().unwrap();
        reports.push(report);
        if !more {
            break;
        }
        assert!(reports.len() < 200, "retention did not finish in 200 calls");
    }
    let run_time = run_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = reader.join().unwrap();

    // 3. Checked: every leaver erased, every result anonymised or dropped by k-anonymity.
    let sum = |k: &str| reports.iter().map(|r| r["counts"][k].as_i64().unwrap_or(0)).sum::<i64>();
    let longest = reports.iter().map(|r| r["longest_batch_ms"].as_i64().unwrap()).max().unwrap();
    let batches = reports.iter().map(|r| r["batches"].as_i64().unwrap()).sum::<i64>();
    assert_eq!(sum("pupils_erased"), leavers);
    assert_eq!(sum("results_anonymised"), leaver_results);
    let (left_now, anonymised): (i64, i64) = rt.block_on(async {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM pupils WHERE left_at IS NOT NULL), \
                    (SELECT count(*) FROM anonymised_results WHERE NOT pending)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    });
    assert_eq!(left_now, 0);
    assert_eq!(anonymised + sum("results_dropped"), leaver_results);

    drop(redirect);
    if let Some(log) = &pg_log {
        log.copy_to("bench-retention-auto-explain.log");
    }
    let base_p99 = pct(&baseline, 0.99);
    let during_p99 = pct(&during, 0.99);
    println!("\nretention run over {leaver_results} results of {leavers} leavers (native host, 2 workers):");
    println!("| what | value |\n|---|---:|");
    println!("| calls (each at most retention_run_seconds) | {} |", reports.len());
    println!("| batches | {batches} |");
    println!("| total run time | {:.1} s |", run_time.as_secs_f64());
    println!("| longest batch | {longest} ms |");
    println!("| results anonymised (kept after k-anonymity) | {} ({anonymised}) |", sum("results_anonymised"));
    println!("| leavers' reports written | {} |", sum("leaver_reports_written"));
    println!(
        "| profile reads, no run: n, p50, p99 | {}, {:.1} ms, {:.1} ms |",
        baseline.len(),
        ms(pct(&baseline, 0.5)),
        ms(base_p99)
    );
    println!(
        "| profile reads during the run: n, p50, p99 | {}, {:.1} ms, {:.1} ms |",
        during.len(),
        ms(pct(&during, 0.5)),
        ms(during_p99)
    );
    println!("| p99 during / p99 without | {:.2} |", ms(during_p99) / ms(base_p99));
    println!("\naims: run < 60 s, longest batch < 250 ms, read ratio <= 2");
    println!("load average before: {}", load_before.trim());
    println!("total bench time {:.0} s", total.elapsed().as_secs_f64());
}
