//! Ingest benchmark (issue 3, "Measured"): results per second through the
//! native host over real TCP into real PostgreSQL, the ratio to a raw
//! `COPY ... FROM STDIN` of the same rows into the same table measured in the
//! same run, and the time per 2,000-pupil roster.
//!
//!     cargo bench -p tavle-tests --bench ingest                # full run
//!     BENCH_SMOKE=1 cargo bench -p tavle-tests --bench ingest  # smoke run (CI)
//!
//! A plain `fn main` (harness = false). Phases:
//! 1. load `BENCH_PUPILS` pupils (default 5,000) with rosters of 1,000 (timed
//!    separately);
//! 2. `BENCH_RESULTS` results (default 100,000) in signed posts of
//!    `BENCH_BATCH` (default 5,000; one assessment per post, every pupil once,
//!    `BENCH_ITEMS` per-item scores per result, default 5), first over one
//!    keep-alive connection, then (after `TRUNCATE results`) over two at once;
//! 3. the same rows, read back from the table, `TRUNCATE`d and loaded with
//!    `COPY ... FROM STDIN` (sqlx `copy_in_raw`): once as one COPY, once as
//!    COPYs of `BENCH_BATCH` rows;
//! 4. a breakdown of one extra post: host-side CPU steps replayed in this
//!    thread, the post's SQL statements (the handler's own text, the
//!    constants `tavle_ingest` exports) timed one by one, `EXPLAIN ANALYZE`
//!    of the results upsert;
//! 5. `BENCH_ROSTERS` posts (default 10) of a `BENCH_ROSTER`-pupil roster
//!    (default 2,000): the first creates the pupils, each later one renames
//!    5%, drops 2% (marked left) and adds 2%.
//!
//! `BENCH_WORKERS` host worker threads (default 2). The host's per-request
//! log goes to `target/bench-ingest-host.log`; handler times come from it.
//!
//! `BENCH_SMOKE=1` is a smoke run (CI): every phase with every answer
//! asserted, at small default sizes (600 results in posts of 100 over 300
//! pupils, rosters of 200 posted 3 times); its figures are not results.
//!
//! Diagnosis knobs (not for recorded figures): `BENCH_AUTO_EXPLAIN=<ms>`
//! logs the plans and actual times of the host's statements slower than that
//! (auto_explain) to `target/bench-ingest-auto-explain.log`;
//! `BENCH_PG_SETTINGS="name=value;..."` sets PostgreSQL settings for the
//! host's connections (e.g. `plan_cache_mode=force_custom_plan`).

mod common;

use base64::Engine;
use common::{
    diagnosis_settings, env_usize, mean, ms, pct, print_cpu_table, print_panics, server_version, size, smoke,
    smoke_banner, start_host, Client, Probe, Response, StderrRedirect,
};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, Row};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tavle_core::audit::{self, Actor, Event};
use tavle_core::crypto::BlindIndex;
use tavle_core::db::{uuid, Db, SqlxDb, Value as DbValue};
use tavle_core::identity::{IdentityNumber, SyntheticPolicy};
use tavle_core::scores::{canonical_date, canonical_datetime};
use tavle_core::web::RequestMeta;
use tavle_ingest::verify::SourceKey;
use tavle_ingest::RESULT_COLUMNS;
use tavle_tests::{project_root, synthetic_id, unix_now, Api, Source, TestApp};

/// How long a client waits for an answer (a post of 5,000 results takes a while).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

fn main() {
    let total = Instant::now();
    let n_results = size("BENCH_RESULTS", 100_000, 600);
    let batch = size("BENCH_BATCH", 5_000, 100).max(1);
    let n_pupils = size("BENCH_PUPILS", 5_000, 300);
    let n_items = env_usize("BENCH_ITEMS", 5);
    let roster_size = size("BENCH_ROSTER", 2_000, 200);
    let n_rosters = size("BENCH_ROSTERS", 10, 3).max(1);
    let workers = env_usize("BENCH_WORKERS", 2).max(1);
    let banner = smoke().then(|| {
        smoke_banner(&format!(
            "{n_results} results in posts of {batch} over {n_pupils} pupils, {n_rosters} rosters of {roster_size}"
        ))
    });
    if let Some(b) = &banner {
        println!("{b}");
    }
    assert!(batch <= n_pupils, "a post holds each pupil at most once: BENCH_BATCH <= BENCH_PUPILS");
    assert!(n_pupils + roster_size + n_rosters * roster_size / 50 < 11_000, "synthetic_id gives 11,000 numbers");
    let n_posts = n_results.div_ceil(batch);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    print_panics();
    let log_path = project_root().join("target").join("bench-ingest-host.log");
    let redirect = StderrRedirect::to(&log_path);

    // Fresh database, a tenant, a school-system and a publisher source.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (app, tenant_id, sas, publisher, pg_version) = rt.block_on(async {
        let app = TestApp::spawn().await;
        let admin = app.seed_tenant("bench").await;
        let session = app.login(&admin).await;
        let sas = app.create_source(&session, "sas").await;
        let publisher = app.create_source(&session, "publisher").await;
        let v = server_version(&app).await;
        (app, admin.tenant_id, sas, publisher, v)
    });
    // Diagnosis (common::diagnosis_settings): plans copied to
    // target/bench-ingest-auto-explain.log at the end.
    let pg_log = rt.block_on(diagnosis_settings(&app));

    // The native host on an ephemeral port, with the test app's variables.
    let (addr, _) = start_host(&app.variables, workers);
    let mut client = Client::connect(addr, READ_TIMEOUT);

    // 1. Pupils for the results: rosters of 1,000 (not part of the results figure).
    let t = Instant::now();
    let mut load_times = Vec::new();
    for (k, start) in (0..n_pupils).step_by(1_000).enumerate() {
        let ns: Vec<u32> = (start as u32..(start + 1_000).min(n_pupils) as u32).collect();
        let names: HashMap<u32, String> = HashMap::new();
        let body = roster_body(&format!("load-{k}"), &ns, &names);
        let s = Instant::now();
        let r = client.deliver(&sas, "roster", &format!("load-{k}"), &body);
        load_times.push(s.elapsed());
        assert_eq!(r["pupils"]["created"], ns.len(), "load roster: {r}");
    }
    let load_wall = t.elapsed();

    // 2. Results. Bodies are built before timing; each is signed just before it is sent.
    let bodies: Vec<Vec<u8>> = (0..n_posts)
        .map(|k| results_body(&format!("a{k}"), k, batch.min(n_results - k * batch), n_pupils, n_items))
        .collect();
    let counts: Vec<usize> = (0..n_posts).map(|k| batch.min(n_results - k * batch)).collect();
    let body_bytes: usize = bodies.iter().map(Vec::len).sum();
    checkpoint(&rt, &app);
    let probe = Probe::take();
    let t = Instant::now();
    let mut seq_lat = Vec::new();
    let mut signing = Duration::ZERO;
    for (k, body) in bodies.iter().enumerate() {
        let s = Instant::now();
        let r = client.post_signed(&publisher, "results", &format!("seq-{k}"), body, &mut signing);
        seq_lat.push(s.elapsed());
        check_results(&r, counts[k]);
    }
    let seq_wall = t.elapsed();
    let seq_use = probe.since();

    // The rows as stored, in insertion order, as COPY text.
    let (copy_text, copy_rows, lines) = rt.block_on(copy_text(&app));
    assert_eq!(copy_rows, n_results, "every result stored once");

    // 2b. The same posts over two connections at once (assessments now exist: upserted).
    truncate_results(&rt, &app);
    checkpoint(&rt, &app);
    let probe = Probe::take();
    let t = Instant::now();
    let conc_lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|c| {
                let (bodies, publisher, counts) = (&bodies, &publisher, &counts);
                s.spawn(move || {
                    let mut client = Client::connect(addr, READ_TIMEOUT);
                    let (mut lat, mut signing) = (Vec::new(), Duration::ZERO);
                    for k in (c..bodies.len()).step_by(2) {
                        let s = Instant::now();
                        let r = client.post_signed(publisher, "results", &format!("c2-{k}"), &bodies[k], &mut signing);
                        lat.push(s.elapsed());
                        check_results(&r, counts[k]);
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
    });
    let conc_wall = t.elapsed();
    let conc_use = probe.since();

    // 3. Raw COPY of the same rows into the same (truncated) table.
    truncate_results(&rt, &app);
    checkpoint(&rt, &app);
    let probe = Probe::take();
    let copy_one = rt.block_on(copy_in(&app, &[copy_text.as_bytes()]));
    let copy_use = probe.since();
    let chunks: Vec<Vec<u8>> = lines.chunks(batch).map(|c| c.concat().into_bytes()).collect();
    let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    truncate_results(&rt, &app);
    checkpoint(&rt, &app);
    let copy_chunked = rt.block_on(copy_in(&app, &chunk_refs));
    let stored: i64 =
        rt.block_on(async { sqlx::query_scalar("SELECT count(*) FROM results").fetch_one(&app.pool).await.unwrap() });
    assert_eq!(stored as usize, n_results, "COPY stored every row");

    // 4. Breakdown of one more post of the same shape (new assessment, new ids).
    let extra = results_body("x", n_posts, batch, n_pupils, n_items);
    let breakdown = rt.block_on(breakdown(&app, &tenant_id, &publisher, &extra));
    let s = Instant::now();
    let r = client.deliver(&publisher, "results", "extra", &extra);
    let extra_rt = s.elapsed();
    check_results(&r, batch);

    // 5. Rosters: one school of `roster_size` pupils, re-synced with changes.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_n = n_pupils as u32;
    let mut current: Vec<u32> = (0..roster_size as u32).map(|i| i + next_n).collect();
    next_n += roster_size as u32;
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut roster_lat = Vec::new();
    let probe = Probe::take();
    for r in 0..n_rosters {
        let (mut renamed, mut dropped, mut added) = (0, 0, 0);
        if r > 0 {
            let (n5, n2) = (roster_size / 20, roster_size / 50);
            // 2% leave, 2% join, 5% of those who stay get a new given name.
            for _ in 0..n2 {
                let i = (xorshift(&mut rng) as usize) % current.len();
                current.swap_remove(i);
                dropped += 1;
            }
            let stay = current.len();
            for _ in 0..n2 {
                current.push(next_n);
                next_n += 1;
                added += 1;
            }
            let mut picked = std::collections::HashSet::new();
            while picked.len() < n5 {
                picked.insert(current[(xorshift(&mut rng) as usize) % stay]);
            }
            for n in picked {
                names.insert(n, format!("Navn{n}-r{r}"));
                renamed += 1;
            }
        }
        let body = roster_body("roster-school", &current, &names);
        let s = Instant::now();
        let resp = client.deliver(&sas, "roster", &format!("roster-{r}"), &body);
        roster_lat.push(s.elapsed());
        let p = &resp["pupils"];
        let created = if r == 0 { roster_size } else { added };
        assert_eq!(
            (p["created"].as_u64(), p["updated"].as_u64(), p["left"].as_u64()),
            (Some(created as u64), Some(renamed as u64), Some(dropped as u64)),
            "roster {r}: {resp}"
        );
    }
    let roster_use = probe.since();

    drop(redirect);
    if let Some(log) = &pg_log {
        log.copy_to("bench-ingest-auto-explain.log");
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let handler = |id: &str| handler_ms(&log, id);

    // Report.
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let seq_rate = rate(n_results, seq_wall);
    let conc_rate = rate(n_results, conc_wall);
    let copy_rate = rate(n_results, copy_one);
    let copy_chunked_rate = rate(n_results, copy_chunked);
    println!();
    println!("Tavle ingest benchmark — {cpus} CPUs, host workers: {workers}; PostgreSQL {pg_version} (throwaway cluster, fsync=off)");
    println!("load average before: {}", load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!(
        "{n_results} results in {n_posts} posts of {batch} ({n_items} items each, identity numbers), {:.1} MB of JSON ({:.0} KB/post)",
        body_bytes as f64 / 1e6,
        body_bytes as f64 / n_posts as f64 / 1e3
    );
    println!();
    println!(
        "pupils loaded: {n_pupils} in {} rosters, {:.2} s ({:.0} ms per roster of up to 1,000)",
        load_times.len(),
        load_wall.as_secs_f64(),
        ms(mean(&load_times))
    );
    println!();
    println!("{:<44} {:>9} {:>10} {:>9} {:>9}", "phase", "wall s", "rows/s", "p50 ms", "max ms");
    let row = |name: &str, wall: Duration, rows_s: f64, lat: &[Duration]| {
        let (p50, max) = if lat.is_empty() {
            ("-".into(), "-".into())
        } else {
            (format!("{:.0}", ms(pct(lat, 0.5))), format!("{:.0}", ms(pct(lat, 1.0))))
        };
        println!("{:<44} {:>9.2} {:>10.0} {:>9} {:>9}", name, wall.as_secs_f64(), rows_s, p50, max);
    };
    row("ingest, 1 connection (sequential posts)", seq_wall, seq_rate, &seq_lat);
    row("ingest, 2 connections", conc_wall, conc_rate, &conc_lat);
    row("COPY FROM STDIN, one COPY", copy_one, copy_rate, &[]);
    row(&format!("COPY FROM STDIN, {} COPYs of {batch}", chunks.len()), copy_chunked, copy_chunked_rate, &[]);
    println!(
        "(client-side signing of all posts: {:.0} ms; host handler p50 of the sequential posts: {} ms)",
        ms(signing),
        median_of((0..n_posts).filter_map(|k| handler(&format!("seq-{k}"))).collect())
    );
    println!();
    let ratio = seq_rate / copy_rate;
    println!(
        "ratio ingest / COPY = {seq_rate:.0} / {copy_rate:.0} rows/s = {ratio:.2}  (aim >= 0.25: {}); \
         2 connections: {:.2}; vs COPYs of {batch}: {:.2}",
        if ratio >= 0.25 { "met" } else { "NOT met" },
        conc_rate / copy_rate,
        seq_rate / copy_chunked_rate,
    );
    println!();
    let cpu_rows = [
        ("ingest, 1 connection", &seq_use),
        ("ingest, 2 connections", &conc_use),
        ("one COPY", &copy_use),
        ("rosters", &roster_use),
    ];
    print_cpu_table(&cpu_rows, (26, 18));
    println!();
    println!("Breakdown of one post of {batch} results (a new assessment; table holds {n_results} rows):");
    println!(
        "  end to end over TCP {:.0} ms, host handler {} ms",
        ms(extra_rt),
        handler("extra").map_or("-".into(), |v| v.to_string())
    );
    for (name, d) in &breakdown.steps {
        println!("  {name:<58} {:>7.1} ms", ms(*d));
    }
    println!("  EXPLAIN (ANALYZE, BUFFERS) of the results upsert:");
    for line in &breakdown.explain {
        println!("    {line}");
    }
    println!();
    println!("Rosters of {roster_size} pupils, {n_rosters} posts (1st creates; later: 5% renamed, 2% left, 2% new):");
    for (r, d) in roster_lat.iter().enumerate() {
        println!(
            "  roster {r:>2}: {:>7.0} ms (host handler {} ms)",
            ms(*d),
            handler(&format!("roster-{r}")).map_or("-".into(), |v| v.to_string())
        );
    }
    let resync = &roster_lat[1.min(roster_lat.len() - 1)..];
    println!(
        "  mean {:.0} ms, median {:.0} ms (all {n_rosters}); re-syncs only: mean {:.0} ms, median {:.0} ms",
        ms(mean(&roster_lat)),
        ms(pct(&roster_lat, 0.5)),
        ms(mean(resync)),
        ms(pct(resync, 0.5))
    );
    println!();
    println!(
        "load average after: {}; host log: {}; total {:.0} s",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        log_path.display(),
        total.elapsed().as_secs_f64()
    );
    if let Some(b) = &banner {
        println!("{b}");
    }
    drop(app);
    std::process::exit(0); // the host's worker threads never return
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// A full roster of one school: pupils `ns` (synthetic identity numbers and
/// Feide usernames), each in a class of ~25 and in one of 20 subject groups.
fn roster_body(school: &str, ns: &[u32], names: &HashMap<u32, String>) -> Vec<u8> {
    // Class and year level follow the pupil, not their place in the list.
    let classes = ns.len().div_ceil(25).max(1);
    let mut groups: Vec<Value> =
        (0..classes).map(|c| json!({"external_id": format!("k{c}"), "name": format!("{}{}", 1 + c % 7, (b'A' + (c / 7 % 26) as u8) as char), "year_level": 1 + c % 7})).collect();
    groups.extend((0..20).map(|g| json!({"external_id": format!("f{g}"), "name": format!("Fag {g}")})));
    let pupils: Vec<Value> = ns
        .iter()
        .map(|&n| {
            let class = n as usize % classes;
            json!({
                "identity_number": synthetic_id(n),
                "feide_username": format!("elev{n}@skole.no"),
                "given_name": names.get(&n).cloned().unwrap_or_else(|| format!("Navn{n}")),
                "family_name": format!("Etternavn{}", n % 997),
                "year_level": 1 + class % 7,
                "gender": (["female", "male"][n as usize % 2]),
                "special_needs": n % 23 == 0,
                "groups": [format!("k{class}"), format!("f{}", n % 20)],
            })
        })
        .collect();
    let body = json!({"school": {"external_id": school, "name": format!("{school} skole")}, "groups": groups, "pupils": pupils});
    serde_json::to_vec(&body).unwrap()
}

/// One assessment and `count` results for distinct pupils.
fn results_body(prefix: &str, k: usize, count: usize, n_pupils: usize, n_items: usize) -> Vec<u8> {
    let results: Vec<Value> = (0..count)
        .map(|j| {
            let n = ((k * count + j) % n_pupils) as u32;
            let items: Vec<Value> = (0..n_items)
                .map(|q| json!({"item": format!("q{}", q + 1), "score": (j + q) % 2, "answer": (["A", "B", "C", "D"][(j + q) % 4])}))
                .collect();
            let mut r = json!({
                "external_id": format!("{prefix}-{j}"),
                "pupil": {"identity_number": synthetic_id(n)},
                "score": ((j * 7 + k) % 41) as f64,
                "status": "completed",
                "completed_at": format!("2026-03-02T{:02}:{:02}:{:02}Z", 8 + j % 6, j % 60, (j * 7) % 60),
            });
            if n_items > 0 {
                r["items"] = json!(items);
            }
            r
        })
        .collect();
    let body = json!({
        "assessment": {"external_id": format!("bench-{prefix}"), "title": format!("Kartlegging {prefix}"), "subject": "norsk",
                       "year_level": 5, "max_score": 40, "administered_on": "2026-03-02"},
        "results": results,
    });
    serde_json::to_vec(&body).unwrap()
}

fn check_results(r: &Value, expected: usize) {
    assert_eq!((r["created"].as_u64(), r["rejected"].as_u64()), (Some(expected as u64), Some(0)), "results post: {r}");
}

fn checkpoint(rt: &tokio::runtime::Runtime, app: &TestApp) {
    rt.block_on(async {
        let _ = sqlx::query("CHECKPOINT").execute(&app.pool).await;
    });
}

fn truncate_results(rt: &tokio::runtime::Runtime, app: &TestApp) {
    rt.block_on(async { sqlx::query("TRUNCATE results").execute(&app.pool).await.unwrap() });
}

/// The `results` rows in insertion order as COPY text: (all, row count, lines).
async fn copy_text(app: &TestApp) -> (String, usize, Vec<String>) {
    let columns: Vec<String> = RESULT_COLUMNS.split(", ").map(|c| format!("{c}::text")).collect();
    let rows = sqlx::query(&format!("SELECT {} FROM results ORDER BY ctid", columns.join(", ")))
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let fields: Vec<String> = (0..columns.len())
                .map(|i| match r.get::<Option<String>, _>(i) {
                    None => "\\N".to_owned(),
                    Some(v) => v.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r"),
                })
                .collect();
            fields.join("\t") + "\n"
        })
        .collect();
    (lines.concat(), lines.len(), lines)
}

/// One `COPY results (...) FROM STDIN` per chunk (each its own transaction); total time.
async fn copy_in(app: &TestApp, chunks: &[&[u8]]) -> Duration {
    let mut conn = app.pool.acquire().await.unwrap();
    let t = Instant::now();
    for chunk in chunks {
        let mut copy = conn.copy_in_raw(&format!("COPY results ({RESULT_COLUMNS}) FROM STDIN")).await.unwrap();
        copy.send(*chunk).await.unwrap();
        copy.finish().await.unwrap();
    }
    t.elapsed()
}

struct Breakdown {
    steps: Vec<(String, Duration)>,
    explain: Vec<String>,
}

// What the breakdown reads from a post (the handler's `ResultsPost` keeps its
// fields private). Parsing the handler's own type is what is timed; this
// mirror only gives the replayed statements their parameters.
#[derive(Deserialize)]
struct PostMirror {
    assessment: AssessmentMirror,
    results: Vec<ResultMirror>,
}
#[derive(Deserialize)]
struct AssessmentMirror {
    external_id: String,
    title: String,
    subject: String,
    year_level: Option<i64>,
    max_score: f64,
    administered_on: String,
}
#[derive(Deserialize)]
struct ResultMirror {
    external_id: String,
    pupil: PupilMirror,
    score: Option<f64>,
    status: String,
    completed_at: Option<String>,
    #[serde(default)]
    items: Vec<ItemMirror>,
}
#[derive(Deserialize)]
struct PupilMirror {
    identity_number: Option<String>,
}
#[derive(Deserialize, serde::Serialize)]
struct ItemMirror {
    item: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
}

/// Where the time of one results post goes: the host's CPU steps replayed
/// here with the handler's functions (signature check, `read_json` into the
/// handler's `ResultsPost`) or the same crates (identity numbers, items),
/// then the handler's SQL (`tavle_ingest`'s statement constants, through the
/// host's database layer `SqlxDb` as the application role), statement by
/// statement on one connection (second of two runs, rolled back), then
/// `EXPLAIN ANALYZE` of the upsert. Every statement's answer is checked.
async fn breakdown(app: &TestApp, tenant_id: &str, source: &Source, body: &[u8]) -> Breakdown {
    let mut steps = Vec::new();
    let mut step = |name: &str, t: Instant| steps.push((name.to_owned(), t.elapsed()));

    // CPU: signature, JSON, identity numbers.
    let ts = unix_now();
    let sig = standardwebhooks::Webhook::new(&source.secret).unwrap().sign("extra-cpu", ts, body).unwrap();
    let req = http::Request::builder()
        .header("content-type", "application/json")
        .header("webhook-id", "extra-cpu")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body.to_vec())
        .unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(source.secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .unwrap();
    let keys: Vec<SourceKey> = SourceKey::secret(raw).into_iter().collect();
    let t = Instant::now();
    let verified = tavle_ingest::verify::verify(&keys, body, req.headers(), ts);
    step("verify signature (tavle_ingest::verify, HMAC-SHA256)", t);
    assert_eq!(verified.ok().as_deref(), Some("extra-cpu"), "the signature verifies");
    let t = Instant::now();
    let v: Value = serde_json::from_slice(body).unwrap();
    step("  (for scale) serde_json::from_slice -> Value only", t);
    drop(v);
    let t = Instant::now();
    let typed: Result<tavle_ingest::ResultsPost, _> =
        tavle_core::web::read_json(&req, tavle_ingest::WEBHOOK_BODY_LIMIT);
    step("read_json straight into the typed post (ResultsPost)", t);
    assert!(typed.is_ok(), "the post parses as the handler parses it");
    drop(typed);
    let post: PostMirror = serde_json::from_slice(body).unwrap();
    let blind = BlindIndex::from_config(&app.variables["blind_index_key"]).unwrap();
    let t = Instant::now();
    let indexes: Vec<String> = post
        .results
        .iter()
        .map(|r| {
            let id =
                IdentityNumber::parse(r.pupil.identity_number.as_deref().unwrap(), SyntheticPolicy::Accept).unwrap();
            tavle_core::auth::hex(&blind.index(tenant_id, &id))
        })
        .collect();
    step("identity numbers: parse + blind index (HMAC) + hex", t);
    let t = Instant::now();
    let items: Vec<String> = post
        .results
        .iter()
        .map(|r| if r.items.is_empty() { String::new() } else { serde_json::to_string(&r.items).unwrap() })
        .collect();
    step("items re-serialised to JSON text per row", t);
    // The benchmark's assessment has no subtests: no subtest scores (`''`).
    let no_subtests: Vec<String> = vec![String::new(); items.len()];

    // SQL: the handler's statements with its parameters, as the host sends
    // them (SqlxDb: the marker row of every query, casts, row decoding), on
    // a pool of one connection of the host's role; twice, the second reported.
    let options = tavle_host::host::connect_options(&app.variables["db_url"]).unwrap();
    let pool =
        PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options);
    let a = &post.assessment;
    let n = post.results.len();
    let ext: Vec<String> = post.results.iter().map(|r| r.external_id.clone()).collect();
    let score: Vec<String> = post.results.iter().map(|r| r.score.map(|s| s.to_string()).unwrap_or_default()).collect();
    let status: Vec<String> = post.results.iter().map(|r| r.status.clone()).collect();
    let completed: Vec<String> = post
        .results
        .iter()
        .map(|r| r.completed_at.as_deref().map(|c| canonical_datetime(c).expect("a valid time")).unwrap_or_default())
        .collect();
    let administered_on = canonical_date(&a.administered_on).expect("a valid date");
    let meta = RequestMeta {
        request_id: "extra-sql".into(),
        client_ip: Some("127.0.0.1".into()),
        method: http::Method::POST,
        path: format!("/ingest/{}/results", source.id),
    };
    let (mut sql_steps, mut pupil_ids) = (Vec::new(), Vec::new());
    for run in 0..2 {
        let mut s: Vec<(String, Duration)> = Vec::new();
        // A fresh SqlxDb per run, as per request: its first statement takes the connection.
        let mut db = SqlxDb::new(pool.clone());
        let t = Instant::now();
        let rows = db.query(tavle_ingest::LOAD_SOURCE_SQL, &[uuid(&source.id)]).await.unwrap();
        s.push(("SQL load source + secrets (takes the pooled connection)".into(), t.elapsed()));
        assert_eq!(rows.len(), 1, "one live secret");
        assert_eq!(
            (rows[0].text("tenant_id").unwrap(), rows[0].text("kind").unwrap()),
            (tenant_id.into(), "publisher".into())
        );
        let t = Instant::now();
        let previous =
            db.query_opt(tavle_ingest::DELIVERY_LOOKUP_SQL, &[uuid(&source.id), "extra-sql".into()]).await.unwrap();
        s.push(("SQL idempotency lookup".into(), t.elapsed()));
        assert!(previous.is_none(), "a new webhook id");
        db.execute("BEGIN", &[]).await.unwrap();
        let t = Instant::now();
        let assessment = db
            .query_one(
                tavle_ingest::ASSESSMENT_UPSERT_SQL,
                &[
                    uuid(tenant_id),
                    uuid(&source.id),
                    a.external_id.clone().into(),
                    a.title.clone().into(),
                    a.subject.clone().into(),
                    a.year_level.into(),
                    DbValue::Float(a.max_score),
                    administered_on.clone().into(),
                    // No family, no threshold on the total.
                    DbValue::Null,
                    DbValue::Null,
                ],
            )
            .await
            .unwrap()
            .text("id")
            .unwrap();
        s.push(("SQL assessment upsert".into(), t.elapsed()));
        let t = Instant::now();
        let known = db
            .query(
                tavle_ingest::PUPILS_RESOLVE_SQL,
                &[uuid(tenant_id), DbValue::text_array(indexes.clone()), DbValue::text_array(Vec::<String>::new())],
            )
            .await
            .unwrap();
        s.push((format!("SQL resolve pupils ({} found)", known.len()), t.elapsed()));
        assert_eq!(known.len(), n, "every pupil of the post is known");
        let t = Instant::now();
        let held = db
            .query(tavle_ingest::HELD_FOR_RESTRICTED_SQL, &[uuid(&source.id), DbValue::text_array(ext.clone())])
            .await
            .unwrap();
        s.push(("SQL results held for restricted pupils".into(), t.elapsed()));
        assert!(held.is_empty(), "no restricted pupils");
        let by_index: HashMap<String, String> =
            known.iter().map(|r| (r.text("identity_index").unwrap(), r.text("id").unwrap())).collect();
        let pupil: Vec<String> = indexes.iter().map(|i| by_index[i].clone()).collect();
        let t = Instant::now();
        let out = db
            .query(
                tavle_ingest::RESULTS_UPSERT_SQL,
                &[
                    uuid(tenant_id),
                    uuid(&assessment),
                    uuid(&source.id),
                    DbValue::text_array(ext.clone()),
                    DbValue::text_array(pupil.clone()),
                    DbValue::text_array(score.clone()),
                    DbValue::text_array(status.clone()),
                    DbValue::text_array(completed.clone()),
                    DbValue::text_array(items.clone()),
                    DbValue::text_array(no_subtests.clone()),
                ],
            )
            .await
            .unwrap();
        s.push((format!("SQL results upsert via unnest ({} rows returned)", out.len()), t.elapsed()));
        let inserted = out.iter().filter(|r| r.bool("inserted").unwrap()).count();
        assert_eq!((out.len(), inserted), (n, n), "every result is new");
        let t = Instant::now();
        let counts = json!({"assessment_id": assessment, "received": n, "created": n, "updated": 0,
                            "unchanged": 0, "rejected": 0});
        audit::record(
            &mut db,
            Some(&meta),
            Event::new(tenant_id, Actor::System("webhook"), "results.ingested")
                .target("webhook_source", &source.id)
                .details(counts.clone()),
        )
        .await
        .unwrap();
        let mut summary = counts;
        summary["updated_external_ids"] = json!([]);
        summary["rejected_rows"] = json!([]);
        let recorded = db
            .execute(
                tavle_ingest::DELIVERY_RECORD_SQL,
                &[uuid(&source.id), "extra-sql".into(), uuid(tenant_id), DbValue::Json(summary), "results".into()],
            )
            .await
            .unwrap();
        s.push(("SQL audit + delivery record".into(), t.elapsed()));
        assert_eq!(recorded, 1, "one delivery record");
        db.execute("ROLLBACK", &[]).await.unwrap();
        if run == 1 {
            sql_steps = s;
            pupil_ids = pupil;
        }
    }
    let sql_total: Duration = sql_steps.iter().map(|s| s.1).sum();
    steps.extend(sql_steps);
    steps.push(("SQL total (round trips included)".into(), sql_total));

    // EXPLAIN ANALYZE of the upsert (inside a transaction that is rolled
    // back), with the parameters bound as the host binds them.
    let mut conn = pool.acquire().await.unwrap();
    conn.execute("BEGIN").await.unwrap();
    let (tenant, src) = (uuid::Uuid::parse_str(tenant_id).unwrap(), uuid::Uuid::parse_str(&source.id).unwrap());
    let assessment: uuid::Uuid = sqlx::query_scalar(tavle_ingest::ASSESSMENT_UPSERT_SQL)
        .bind(tenant)
        .bind(src)
        .bind("explain")
        .bind(&a.title)
        .bind(&a.subject)
        .bind(a.year_level)
        .bind(a.max_score)
        .bind(&administered_on)
        .bind(None::<String>)
        .bind(None::<f64>)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let explain: Vec<String> =
        sqlx::query_scalar::<_, String>(&format!("EXPLAIN (ANALYZE, BUFFERS) {}", tavle_ingest::RESULTS_UPSERT_SQL))
            .bind(tenant)
            .bind(assessment)
            .bind(src)
            .bind(&ext)
            .bind(&pupil_ids)
            .bind(&score)
            .bind(&status)
            .bind(&completed)
            .bind(&items)
            .bind(&no_subtests)
            .fetch_all(&mut *conn)
            .await
            .expect("EXPLAIN ANALYZE of the results upsert");
    conn.execute("ROLLBACK").await.unwrap();
    Breakdown { steps, explain }
}

impl Client {
    fn deliver(&mut self, source: &Source, kind: &str, webhook_id: &str, body: &[u8]) -> Value {
        self.post_signed(source, kind, webhook_id, body, &mut Duration::default())
    }

    /// Signs (Standard Webhooks v1, now) and posts; asserts 200; the JSON answer.
    fn post_signed(
        &mut self,
        source: &Source,
        kind: &str,
        webhook_id: &str,
        body: &[u8],
        signing: &mut Duration,
    ) -> Value {
        let t = Instant::now();
        let ts = unix_now();
        let signature = standardwebhooks::Webhook::new(&source.secret).unwrap().sign(webhook_id, ts, body).unwrap();
        *signing += t.elapsed();
        let head = format!(
            "POST /ingest/{}/{kind} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
             X-Request-Id: {webhook_id}\r\nwebhook-id: {webhook_id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {signature}\r\n\
             Content-Length: {}\r\n\r\n",
            source.id,
            body.len()
        );
        let Response { status, body: response, .. } = self.send(&[head.as_bytes(), body]);
        assert_eq!(status, 200, "{kind} post {webhook_id}: {}", String::from_utf8_lossy(&response));
        serde_json::from_slice(&response).expect("JSON answer")
    }
}

/// Handler time (ms) of the request with this id, from the host's log.
fn handler_ms(log: &str, id: &str) -> Option<u64> {
    let needle = format!("request id={id} ");
    log.lines()
        .find(|l| l.starts_with(&needle))
        .and_then(|l| l.rsplit_once("ms="))
        .and_then(|(_, v)| v.trim().parse().ok())
}

fn median_of(mut v: Vec<u64>) -> String {
    v.sort();
    v.get(v.len().saturating_sub(1) / 2).map_or("-".into(), |m| m.to_string())
}
