//! Access-log benchmark (issue "the access log at municipality scale"): is
//! there a tenant-wide serial point? Concurrent clients read pupil profiles
//! (`GET /pupils/{id}`), all in one tenant of 100,000 pupils, against the
//! same number of clients spread over 16 tenants of 6,250 pupils each, with
//! and without manual-result writes mixed in (1 request in 20, each a
//! transaction that appends its access record and then writes), through the
//! native host and on real Spin. It prints reads/s, p50 and p99 for both
//! layouts and the ratio of their throughputs (one tenant / many tenants;
//! aim: at least 0.9). Then it prunes 1,000,000 old access records of the
//! big tenant while 16 clients keep reading it, and prints the prune's time
//! and the longest any read waited meanwhile, next to the same clients'
//! figures without a prune.
//!
//!     cargo bench -p tavle-tests --bench access_log                # full run
//!     BENCH_SMOKE=1 cargo bench -p tavle-tests --bench access_log  # smoke run (CI)
//!
//! Knobs (environment): `BENCH_SECONDS` (per measurement, default 4; smoke
//! 1), `BENCH_ROUNDS` (measurements per layout, alternating, default 3;
//! smoke 1), `BENCH_WORKERS` (native host worker threads, default 2). A smoke run
//! uses 16 clients, 1,600 + 16 × 100 pupils and 20,000 records to prune;
//! every answer is still checked; its figures are not results.

#[allow(dead_code)] // shared by the benches; this one uses only a few of its helpers
mod common;

use common::{env_usize, ms, pct, print_panics, server_version, smoke, smoke_banner, start_host};
use http::Method;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::time::{Duration, Instant};
use tavle_host::dataset::{self, Generated, Keys, Spec};
use tavle_tests::http::HttpClient;
use tavle_tests::spin::SpinApp;
use tavle_tests::{Api, TestApp};

const TENANTS: usize = 16;

/// A school leader: a session, the pupils it reads, and the pupils only it
/// writes manual results for.
struct Caller {
    token: String,
    reads: Vec<String>,
    writes: Vec<String>,
    assessment: String,
    /// Its manual results so far (pupil → result id), across runs.
    written: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// One run's figures (or several runs' together).
#[derive(Default)]
struct Run {
    reads: usize,
    writes: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn add(&mut self, other: Run) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.wall += other.wall;
        self.latencies.extend(other.latencies);
    }

    fn reads_per_s(&self) -> f64 {
        self.reads as f64 / self.wall.as_secs_f64()
    }
}

fn main() {
    let total = Instant::now();
    print_panics();
    let small = smoke();
    let (big, per_tenant, results_per_pupil) = if small { (1_600, 100, 2) } else { (100_000, 6_250, 10) };
    let client_counts: Vec<usize> = if small { vec![16] } else { vec![16, 64] };
    let seconds = Duration::from_secs_f64(env_usize("BENCH_SECONDS", if small { 1 } else { 4 }) as f64);
    let rounds = env_usize("BENCH_ROUNDS", if small { 1 } else { 3 }).max(1);
    let prune_records: i64 = if small { 20_000 } else { 1_000_000 };
    let workers = env_usize("BENCH_WORKERS", 2).max(1);
    if small {
        println!("{}", smoke_banner(&format!("{big} + {TENANTS} × {per_tenant} pupils, {seconds:?} per measurement")));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // 1. One big tenant and 16 small ones, each with its school leaders.
    let app = rt.block_on(TestApp::spawn());
    println!("PostgreSQL: {}", rt.block_on(server_version(&app)));
    let keys = Keys {
        identity_key: app.variables["identity_key"].clone(),
        blind_index_key: app.variables["blind_index_key"].clone(),
    };
    let max_clients = *client_counts.iter().max().unwrap();
    let started = Instant::now();
    let one = rt.block_on(tenant(&app, &keys, "one", big, results_per_pupil, max_clients));
    // Old records to prune later, before any of today's: today's chain on.
    let backfilled = rt.block_on(backfill_old_records(&app, "one", prune_records));
    let many: Vec<Vec<Caller>> = (0..TENANTS)
        .map(|t| {
            let slug = format!("many{t:02}");
            rt.block_on(tenant(&app, &keys, &slug, per_tenant, results_per_pupil, max_clients / TENANTS))
        })
        .collect();
    println!(
        "dataset: {big} pupils in tenant `one`, {TENANTS} × {per_tenant} in `many00`..; {results_per_pupil} results \
         per pupil; school leaders logged in ({:.0} s)",
        started.elapsed().as_secs_f64()
    );

    // 2. Both hosts on the same database.
    let (native_addr, _) = start_host(&app.variables, workers);
    let spin = SpinApp::start_project(&app.variables);
    let hosts = [("native", native_addr), ("spin", spin.addr)];

    println!(
        "\n{:<8} {:>7} {:<12} {:<13} {:>9} {:>8} {:>8} {:>7}",
        "host", "clients", "mix", "layout", "reads/s", "p50 ms", "p99 ms", "ratio"
    );
    let many: Vec<Caller> = many.into_iter().flatten().collect();
    let mut ratios = Vec::new();
    for (host, addr) in hosts {
        for &clients in &client_counts {
            for write_every in [0usize, 20] {
                let mix = if write_every == 0 { "reads" } else { "1 in 20 w" };
                // Rounds alternate the layouts (many first: warm caches for
                // both), so that a neighbour's load falls on both alike.
                let (mut m, mut o) = (Run::default(), Run::default());
                for _ in 0..rounds {
                    m.add(rt.block_on(run(addr, &many, clients, write_every, seconds)));
                    o.add(rt.block_on(run(addr, &one, clients, write_every, seconds)));
                }
                m.latencies.sort();
                o.latencies.sort();
                let ratio = o.reads_per_s() / m.reads_per_s();
                for (layout, r, ratio) in [("16 tenants", &m, None), ("one tenant", &o, Some(ratio))] {
                    println!(
                        "{host:<8} {clients:>7} {mix:<12} {layout:<13} {:>9.0} {:>8.2} {:>8.2} {:>7}",
                        r.reads_per_s(),
                        ms(pct(&r.latencies, 0.50)),
                        ms(pct(&r.latencies, 0.99)),
                        ratio.map_or(String::new(), |x| format!("{x:.2}"))
                    );
                    assert!(r.reads > 0 && (write_every == 0 || r.writes > 0), "nothing measured");
                }
                ratios.push((host, clients, mix, ratio));
            }
        }
    }
    let worst = ratios.iter().map(|r| r.3).fold(f64::INFINITY, f64::min);
    println!(
        "one tenant / 16 tenants throughput: worst {worst:.2} (aim ≥ 0.9: {})",
        if worst >= 0.9 { "met" } else { "NOT met" }
    );

    // 3. Pruning a million old records while 16 clients read the big tenant.
    let readers = 16.min(one.len());
    let baseline = rt.block_on(run(native_addr, &one, readers, 0, seconds));
    let (during, (prune_took, deleted)) = rt.block_on(async {
        let prune = async {
            tokio::time::sleep(seconds / 4).await;
            let before = app_date_months_ago(&app, 7).await;
            let t = Instant::now();
            let report = tavle_host::ops::prune_access_log(&app.pool, "one", &before).await.unwrap();
            (t.elapsed(), report.deleted)
        };
        tokio::join!(run(native_addr, &one, readers, 0, seconds.max(Duration::from_secs(1)) * 3), prune)
    });
    assert_eq!(deleted, backfilled, "the prune deletes exactly the old records");
    let report = rt.block_on(tavle_host::ops::verify_access_log(&app.pool, "one")).unwrap();
    assert!(report.broken.is_none(), "after the prune the log verifies: {:?}", report.broken);
    let max = |r: &Run| r.latencies.iter().max().copied().unwrap_or_default();
    println!(
        "\nprune of {deleted} records: {:.2} s; {readers} readers meanwhile: p99 {:.2} ms, longest {:.2} ms \
         (without a prune: p99 {:.2} ms, longest {:.2} ms); the log verifies after it",
        prune_took.as_secs_f64(),
        ms(pct(&during.latencies, 0.99)),
        ms(max(&during)),
        ms(pct(&baseline.latencies, 0.99)),
        ms(max(&baseline))
    );
    drop(spin);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!("{cpus} CPUs; load average after: {}; total {:.0} s", load.trim(), total.elapsed().as_secs_f64());
    if small {
        println!("{}", smoke_banner("(see above)"));
    }
}

/// A tenant with `pupils` pupils (dataset generator), one assessment for
/// manual results, and `leaders` logged-in school leaders, spread over its
/// schools, each writing to pupils no other leader writes to.
async fn tenant(app: &TestApp, keys: &Keys, slug: &str, pupils: usize, per_pupil: u64, leaders: usize) -> Vec<Caller> {
    let admin = app.seed_tenant(slug).await;
    let groups = (pupils / 25).max(1);
    let mut spec = Spec::new(slug, pupils, groups, pupils as u64 * per_pupil);
    spec.schools = Some(leaders.clamp(1, groups));
    let pool = PgPoolOptions::new().max_connections(3).connect(&app.db_url).await.unwrap();
    let no_password = || -> anyhow::Result<String> { anyhow::bail!("the tenant exists") };
    let gen: Generated = dataset::generate(&pool, &spec, keys, no_password, &|_| {}).await.unwrap();
    pool.close().await;
    let assessment = gen.assessments[0].id.clone();
    let session = app.login(&admin).await;
    let mut out = Vec::new();
    for k in 0..leaders {
        let school = k % gen.school_ids.len();
        let roles = json!([{"role": "school_leader", "school_id": gen.school_ids[school]}]);
        let staff = app.create_user(&session, &admin, &format!("leader{k}"), roles).await;
        let reads: Vec<String> = gen
            .groups
            .iter()
            .filter(|g| g.school == school)
            .flat_map(|g| g.pupils.clone())
            .map(|i| gen.pupils[i].id.clone())
            .collect();
        // Leaders of one school take turns over its pupils for writes.
        let sharing = leaders.div_ceil(gen.school_ids.len());
        let writes = reads.iter().skip(k / gen.school_ids.len()).step_by(sharing).cloned().collect();
        let token = app.login(&staff).await.token;
        out.push(Caller { token, reads, writes, assessment: assessment.clone(), written: Default::default() });
    }
    out
}

/// `clients` clients (callers taken in turn from `callers`), each on its own
/// connection, reading (and every `write_every`-th request writing) for
/// `seconds`; every answer is checked.
async fn run(
    addr: std::net::SocketAddr,
    callers: &[Caller],
    clients: usize,
    write_every: usize,
    seconds: Duration,
) -> Run {
    let started = Instant::now();
    let deadline = started + seconds;
    let one_client = |c: usize| async move {
        let caller = &callers[c % callers.len()];
        let client = HttpClient::new(addr);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
        let (mut reads, mut writes, mut latencies) = (0usize, 0usize, Vec::new());
        let mut n = 0usize;
        while Instant::now() < deadline {
            n += 1;
            // Staggered by client, so that even a short (smoke) run writes:
            // client c writes first at request `write_every - c`.
            if write_every > 0 && (n + c).is_multiple_of(write_every) && !caller.writes.is_empty() {
                let pupil = &caller.writes[(next(&mut seed) as usize) % caller.writes.len()];
                let score = (next(&mut seed) % 20) as f64;
                let result = caller.written.lock().unwrap().get(pupil).cloned();
                match result {
                    None => {
                        let body = json!({"assessment_id": caller.assessment, "score": score, "status": "completed"});
                        let r = client.post(&format!("/pupils/{pupil}/results"), Some(&caller.token), body).await;
                        assert_eq!(r.status, 201, "register: {}", r.text());
                        let id = r.json()["id"].as_str().unwrap().to_owned();
                        caller.written.lock().unwrap().insert(pupil.clone(), id);
                    }
                    Some(id) => {
                        let body = json!({"score": score, "status": "completed"});
                        let path = format!("/pupils/{pupil}/results/{id}");
                        let r = client.send(Method::PUT, &path, Some(&caller.token), Some(body)).await;
                        assert_eq!(r.status, 200, "correct: {}", r.text());
                    }
                }
                writes += 1;
                continue;
            }
            let pupil = &caller.reads[(next(&mut seed) as usize) % caller.reads.len()];
            let t = Instant::now();
            let r = client.get(&format!("/pupils/{pupil}"), &caller.token).await;
            latencies.push(t.elapsed());
            assert_eq!(r.status, 200, "profile: {}", r.text());
            assert_eq!(r.json()["id"].as_str(), Some(pupil.as_str()));
            reads += 1;
        }
        (reads, writes, latencies)
    };
    let done = futures::future::join_all((0..clients).map(one_client)).await;
    let mut out = Run { reads: 0, writes: 0, wall: started.elapsed(), latencies: Vec::new() };
    for (reads, writes, latencies) in done {
        out.reads += reads;
        out.writes += writes;
        out.latencies.extend(latencies);
    }
    out.latencies.sort();
    out
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// `n` access records of the tenant dated eight months back, chained as
/// `access_log_append` would have chained them (hashes computed here) and
/// inserted by the owner in batches, the lanes' heads moved to their ends:
/// a valid history for the prune to cut. Call it before the tenant has any
/// record. Returns `n`.
async fn backfill_old_records(app: &TestApp, slug: &str, n: i64) -> i64 {
    use tavle_core::access_log::{chain_hash, Record, GENESIS, LANES};
    const BATCH: i64 = 20_000;
    let pool = &app.pool;
    let (tenant, actor, pupil): (uuid::Uuid, uuid::Uuid, uuid::Uuid) = sqlx::query_as(
        "SELECT t.id, (SELECT id FROM users WHERE tenant_id = t.id LIMIT 1), \
                (SELECT id FROM pupils WHERE tenant_id = t.id LIMIT 1) FROM tenants t WHERE t.slug = $1",
    )
    .bind(slug)
    .fetch_one(pool)
    .await
    .unwrap();
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM access_log WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(existing, 0, "backfill before the tenant's first record");
    let mut heads: Vec<(i64, Vec<u8>)> = vec![(0, GENESIS.to_vec()); LANES];
    let mut g = 0i64;
    while g < n {
        let to = (g + BATCH).min(n);
        let times: Vec<String> = sqlx::query_scalar(
            "SELECT rfc3339(date_trunc('second', now()) - interval '8 months' + k * interval '1 millisecond') \
             FROM generate_series($1::int8, $2::int8 - 1) AS k ORDER BY k",
        )
        .bind(g)
        .bind(to)
        .fetch_all(pool)
        .await
        .unwrap();
        let (mut lanes, mut seqs, mut ats, mut prevs, mut hashes) = (vec![], vec![], vec![], vec![], vec![]);
        for (k, at) in (g..to).zip(times) {
            let lane = (k % LANES as i64) as usize;
            let (seq, prev) = &heads[lane];
            let r = Record {
                tenant_id: tenant.to_string(),
                lane: lane as i16,
                seq: seq + 1,
                at: at.clone(),
                actor_user_id: actor.to_string(),
                action: "pupil.viewed".into(),
                pupil_ids: pupil.to_string(),
                client_ip: Some("127.0.0.1".into()),
                request_id: None,
                format: 2,
                prev_hash: prev.clone(),
                hash: Vec::new(),
            };
            let hash = chain_hash(prev, &r);
            lanes.push(lane as i16);
            seqs.push(r.seq);
            ats.push(at);
            prevs.push(r.prev_hash);
            hashes.push(hash.clone());
            heads[lane] = (r.seq, hash);
        }
        sqlx::query(
            "INSERT INTO access_log (tenant_id, lane, seq, at, actor_user_id, action, pupil_ids, client_ip, \
                                     request_id, prev_hash, hash, format) \
             SELECT $1, l, s, a::timestamptz, $2, 'pupil.viewed', ARRAY[$3::uuid], '127.0.0.1', NULL, p, h, 2 \
             FROM unnest($4::int2[], $5::int8[], $6::text[], $7::bytea[], $8::bytea[]) AS u (l, s, a, p, h)",
        )
        .bind(tenant)
        .bind(actor)
        .bind(pupil)
        .bind(&lanes)
        .bind(&seqs)
        .bind(&ats)
        .bind(&prevs)
        .bind(&hashes)
        .execute(pool)
        .await
        .unwrap();
        g = to;
    }
    for (lane, (seq, hash)) in heads.iter().enumerate() {
        sqlx::query("UPDATE access_log_heads SET seq = $1, hash = $2 WHERE tenant_id = $3 AND lane = $4")
            .bind(seq)
            .bind(hash)
            .bind(tenant)
            .bind(lane as i16)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE access_log").execute(pool).await.unwrap();
    n
}

async fn app_date_months_ago(app: &TestApp, months: i32) -> String {
    sqlx::query_scalar("SELECT to_char((now() AT TIME ZONE 'UTC') - make_interval(months => $1), 'YYYY-MM-DD')")
        .bind(months)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}
