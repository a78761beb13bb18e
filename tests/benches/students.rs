//! Students benchmark (issue "class overview and pupil profile at scale"):
//! p50 and p99 latency of the pupil profile (`GET /pupils/{id}`, about 100
//! results) and of the class overview (`GET /groups/{id}/overview`, about 25
//! pupils) through the native host over real TCP, on a generated dataset of
//! 100,000 pupils in 4,000 groups with 10,000,000 results, and the ratio of
//! each to the bare SQL query behind it (`tavle_students::PROFILE_SQL`,
//! `OVERVIEW_SQL`, same parameters, sqlx, same pool settings) measured in the
//! same run.
//!
//!     cargo bench -p tavle-tests --bench students                # full run
//!     BENCH_SMOKE=1 cargo bench -p tavle-tests --bench students  # smoke run (CI)
//!
//! A plain `fn main` (harness = false). Knobs (environment):
//! `TAVLE_BENCH_SCALE` (default 1: 100,000 pupils, 4,000 groups, 10,000,000
//! results; 0.01 gives a quick run), `BENCH_ITERATIONS` (measured requests per
//! phase and series, default 2,000; smoke 50), `BENCH_WORKERS` (host worker
//! threads, default 2), `BENCH_GEN_JOBS` (connections generating results,
//! default 2).
//!
//! `BENCH_SMOKE=1` is a smoke run (CI): without `TAVLE_BENCH_SCALE`, a
//! dataset of 400 pupils in 16 groups of 4 schools with 10 results each,
//! and every phase, series and diagnostic with every answer checked; its
//! figures are not results.
//!
//! Issue 14 adds two phases and the subtests to the dataset (4 per
//! assessment, with thresholds; the overview shows every subtest score and
//! the flags): a teacher's follow-up list over a school year (`GET
//! /follow-up`, `FOLLOW_UP_SQL`) and a school leader's per-group counts for
//! one assessment (`GET /assessments/{id}/follow-up?school_id`,
//! `FOLLOW_UP_COUNTS_SQL`). At full size the dataset has one school per
//! 1,000 pupils, so a leader's school has about 1,000 pupils.
//!
//! Phases: profile as teacher, profile as school leader, overview as teacher,
//! overview as school leader, follow-up list as teacher, follow-up counts as
//! school leader. In each, four series are interleaved request by
//! request: the route over HTTP on the native host, the same route on real
//! Spin (`spin up` on the release `.wasm` files and the project's spin.toml,
//! over the same database), the bare query, and the bare query wrapped as
//! the route runs it (with the access-log record, `logged_read`). Every
//! statement is planned for its parameters on each execution (unnamed, not
//! prepared), as Spin's host runs them and, since 2026-12-03, the native
//! host too. Each series
//! walks the phase's targets (pupils or group × assessment) in its own random
//! order, so no series runs on rows another series has just cached. Every
//! answer is checked (status, result or pupil count).

mod common;

use common::{
    diagnosis_settings, env_usize, ms, pct, print_cpu_table, print_panics, server_version, size, smoke, smoke_banner,
    start_host, Client, Probe, Response, StderrRedirect, Usage,
};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tavle_host::dataset::{self, Generated, Keys, Spec};
use tavle_tests::spin::SpinApp;
use tavle_tests::{project_root, Api, TestApp};
use uuid::Uuid;

const READ_TIMEOUT: Duration = Duration::from_secs(30);
const TEACHERS: usize = 10;
const LEADERS: usize = 4;

#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Profile,
    Overview,
    FollowUp,
    Counts,
}

/// One request's worth of parameters: who asks, and about what.
#[derive(Clone)]
struct Target {
    /// Index into the sessions.
    who: usize,
    /// Pupil (profile), group (overview), assessment (counts); unused for the follow-up list.
    id: String,
    /// Overview only.
    assessment: Option<String>,
    /// Follow-up list: the school year it starts in.
    year: Option<i32>,
    /// Counts: the leader's school.
    school: Option<String>,
    /// Results (profile), pupils (overview), flags listed, or one for a list
    /// without any (follow-up; taken from the bare query before measuring),
    /// pupils counted in the groups (counts) that the answer must hold.
    expect: usize,
}

struct Caller {
    token: String,
    taught: Vec<String>,
    led: Vec<String>,
    /// For `logged_read`, which reads the tenant and user ids only.
    principal: tavle_core::auth::Principal,
}

/// One series of a phase (its latencies).
type Series = fn(&Phase) -> &Vec<Duration>;

struct Phase {
    name: &'static str,
    endpoint: Endpoint,
    route: Vec<Duration>,
    /// The route on `spin up` (release `.wasm` files, same database).
    spin: Vec<Duration>,
    bare: Vec<Duration>,
    wrapped: Vec<Duration>,
    usage: Usage,
    wall: Duration,
}

fn main() {
    let total = Instant::now();
    let scale: Option<f64> = std::env::var("TAVLE_BENCH_SCALE").ok().and_then(|v| v.parse().ok());
    // A smoke run's dataset: 25 pupils per group as at full size, one
    // school per leader, 10 results per pupil (a full run has 100).
    let small = smoke() && scale.is_none();
    let scale = scale.unwrap_or(1.0);
    let (n_pupils, n_groups, n_results) = if small {
        (400, 16, 4_000)
    } else {
        let n_pupils = ((100_000.0 * scale).round() as usize).max(100);
        let n_groups = ((4_000.0 * scale).round() as usize).clamp(LEADERS * 4, n_pupils);
        (n_pupils, n_groups, ((10_000_000.0 * scale).round() as u64).max(n_pupils as u64))
    };
    let iterations = size("BENCH_ITERATIONS", 2_000, 50).max(10);
    let banner = smoke().then(|| {
        smoke_banner(&format!(
            "{n_pupils} pupils, {n_groups} groups, {n_results} results, {iterations} requests per phase and series"
        ))
    });
    if let Some(b) = &banner {
        println!("{b}");
    }
    let workers = env_usize("BENCH_WORKERS", 2).max(1);
    let jobs = env_usize("BENCH_GEN_JOBS", 2).max(1);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    print_panics();

    // 1. Fresh database, a tenant (with its admin), the generated dataset.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (app, admin, pg_version) = rt.block_on(async {
        // A full run measures for longer than the default 15-minute access
        // token (four series per phase since the Spin one): tokens and
        // sessions live an hour here, so no request of the run meets a 401.
        let lifetimes = [("access_token_minutes", "60"), ("session_idle_minutes", "60")];
        let app = TestApp::spawn_with(lifetimes.into_iter().collect()).await;
        let admin = app.seed_tenant("bench").await;
        let v = server_version(&app).await;
        let buffers: String =
            sqlx::query_scalar("SELECT current_setting('shared_buffers')").fetch_one(&app.pool).await.unwrap();
        (app, admin, format!("{v}, shared_buffers {buffers}"))
    });
    let sizes_from = if small { "smoke run".to_owned() } else { format!("TAVLE_BENCH_SCALE={scale}") };
    println!(
        "generating {n_pupils} pupils, {n_groups} groups, {n_results} results ({sizes_from}) \
         into a throwaway PostgreSQL {pg_version}:"
    );
    let keys = Keys {
        identity_key: app.variables["identity_key"].clone(),
        blind_index_key: app.variables["blind_index_key"].clone(),
    };
    let mut spec = Spec::new("bench", n_pupils, n_groups, n_results);
    spec.jobs = jobs;
    // The counts phase wants schools of about 1,000 pupils (smoke: 100).
    spec.schools = Some(if small { LEADERS } else { (n_pupils / 1_000).max(LEADERS) });
    let gen_probe = Probe::take();
    let gen = rt.block_on(async {
        let pool = PgPoolOptions::new().max_connections(jobs as u32 + 1).connect(&app.db_url).await.unwrap();
        let no_password = || -> anyhow::Result<String> { anyhow::bail!("the bench tenant exists") };
        let gen = dataset::generate(&pool, &spec, &keys, no_password, &|l| println!("  {l}")).await.unwrap();
        pool.close().await;
        gen
    });
    let gen_usage = gen_probe.since();
    assert_eq!(gen.results, n_results);
    let sizes = rt.block_on(table_sizes(&app.pool));

    // The host's request log (and the in-process setup requests') goes to a file.
    let log_path = project_root().join("target").join("bench-students-host.log");
    let redirect = StderrRedirect::to(&log_path);

    // 2. Staff: teachers of groups spread over the dataset, and school leaders.
    let mut callers = Vec::new();
    rt.block_on(async {
        let session = app.login(&admin).await;
        for k in 0..TEACHERS {
            let g = &gen.groups[k * gen.groups.len() / TEACHERS];
            let roles = json!([{"role": "teacher", "group_id": g.id}]);
            let staff = app.create_user(&session, &admin, &format!("teacher{k}"), roles).await;
            callers.push((staff, vec![g.id.clone()], vec![]));
        }
        for k in 0..LEADERS {
            let school = &gen.school_ids[k * gen.school_ids.len() / LEADERS];
            let roles = json!([{"role": "school_leader", "school_id": school}]);
            let staff = app.create_user(&session, &admin, &format!("leader{k}"), roles).await;
            callers.push((staff, vec![], vec![school.clone()]));
        }
    });
    let (teacher_targets, leader_targets) = targets(&gen);
    let (mut follow_targets, count_targets) = follow_up_targets(&gen);

    // 3. The host, and the bare queries' pool with the host's pool settings.
    // Diagnosis (common::diagnosis_settings): plans to target/bench-students-auto-explain.log.
    let pg_log = rt.block_on(diagnosis_settings(&app));
    let (addr, max_db) = start_host(&app.variables, workers);
    // The same routes on real Spin, over the same database and variables.
    let spin_app = SpinApp::start(&project_root().join("spin.toml"), &app.variables);
    let options = PgConnectOptions::from_str(&app.db_url).unwrap();
    let bare_pool = rt.block_on(async {
        PgPoolOptions::new().max_connections(max_db).acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options)
    });

    // Log in just before measuring (access tokens live 15 minutes).
    let callers: Vec<Caller> = rt.block_on(async {
        let mut out = Vec::new();
        for (staff, taught, led) in callers {
            let s = app.login(&staff).await;
            // Access records are written in the name of a live session (0008).
            let session_id: Uuid = sqlx::query_scalar(
                "SELECT id FROM sessions WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
            )
            .bind(Uuid::parse_str(&staff.user_id).unwrap())
            .fetch_one(&app.pool)
            .await
            .expect("the login's session");
            let principal = tavle_core::auth::Principal {
                user_id: staff.user_id.clone(),
                tenant_id: staff.tenant_id.clone(),
                tenant_slug: staff.tenant.clone(),
                session_id: session_id.to_string(),
                username: staff.username.clone(),
                display_name: String::new(),
                grants: Vec::new(),
                credential: tavle_core::auth::Credential::Bearer,
                session_expires_at: String::new(),
                session_idle_expires_at: String::new(),
            };
            out.push(Caller { token: s.token, taught, led, principal });
        }
        out
    });

    // 4. Measure.
    let tenant = gen.tenant_id.clone();
    let mut client = Client::connect(addr, READ_TIMEOUT);
    let mut spin_client = Client::connect(spin_app.addr, READ_TIMEOUT);
    // What each follow-up list must hold: the bare query's flags (one row
    // for a list without any), taken once before measuring.
    rt.block_on(async {
        for t in &mut follow_targets {
            let rows = follow_up_rows(&bare_pool, &tenant, &callers[t.who], t.year.unwrap()).await;
            t.expect = rows;
        }
    });
    let flagged_lists = follow_targets.iter().filter(|t| t.expect > 1).count();
    let mut phases = Vec::new();
    let whole = Probe::take();
    for (name, endpoint, list) in [
        ("profile, teacher", Endpoint::Profile, &teacher_targets.0),
        ("profile, school leader", Endpoint::Profile, &leader_targets.0),
        ("overview, teacher", Endpoint::Overview, &teacher_targets.1),
        ("overview, school leader", Endpoint::Overview, &leader_targets.1),
        ("follow-up, teacher", Endpoint::FollowUp, &follow_targets),
        ("counts, school leader", Endpoint::Counts, &count_targets),
    ] {
        let mut bench = Bench {
            rt: &rt,
            native: &mut client,
            spin: &mut spin_client,
            pool: &bare_pool,
            tenant: &tenant,
            callers: &callers,
        };
        // Warm-up: connections, prepared statements, plan caches of every worker.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ name.len() as u64;
        for i in 0..(iterations / 10).max(20) {
            let t = &list[(xorshift(&mut seed) as usize) % list.len()];
            bench.route(On::Native, endpoint, t, &format!("warm-{i}"));
            bench.route(On::Spin, endpoint, t, &format!("warm-spin-{i}"));
            bench.bare(endpoint, t);
            bench.wrapped(endpoint, t);
        }
        let (mut s_route, mut s_bare, mut s_wrapped) = (0x1234_5678u64, 0x8765_4321u64, 0x0bad_cafeu64);
        let mut s_spin = 0x5eed_0f5du64;
        let (mut route, mut spin, mut bare, mut wrapped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let probe = Probe::take();
        let started = Instant::now();
        for i in 0..iterations {
            let pick = |s: &mut u64| &list[(xorshift(s) as usize) % list.len()];
            let id = format!("{}-{i}", name.replace([',', ' '], ""));
            route.push(bench.route(On::Native, endpoint, pick(&mut s_route), &id));
            spin.push(bench.route(On::Spin, endpoint, pick(&mut s_spin), &format!("spin-{id}")));
            bare.push(bench.bare(endpoint, pick(&mut s_bare)));
            wrapped.push(bench.wrapped(endpoint, pick(&mut s_wrapped)));
        }
        phases.push(Phase {
            name,
            endpoint,
            route,
            spin,
            bare,
            wrapped,
            usage: probe.since(),
            wall: started.elapsed(),
        });
    }
    let whole_usage = whole.since();

    // 5. Diagnostics: what a request costs without pupil data (HTTP and
    // authentication), plans, and the access-log append alone.
    let mut overhead = Vec::new();
    {
        let token = &callers[0].token;
        let head = format!(
            "GET /auth/me HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
        );
        let mut lat = Vec::new();
        for i in 0..600 {
            let s = Instant::now();
            let r = client.send(&[head.as_bytes()]);
            if i >= 100 {
                lat.push(s.elapsed());
            }
            assert_eq!(r.status, 200, "GET /auth/me");
        }
        overhead.push(("GET /auth/me over HTTP (authentication, no pupil data)", lat));
        let manifest = tavle_host::manifest::Manifest::load(&project_root().join("spin.toml")).unwrap();
        let config = tavle_host::host::HostConfig::new(manifest, &app.variables).unwrap();
        let vars = config.manifest.component_variables("students", &config.app_variables).unwrap();
        let req = http::Request::builder()
            .uri("/pupils")
            .header("authorization", format!("Bearer {token}"))
            .body(Vec::new())
            .unwrap();
        let mut lat = Vec::new();
        for i in 0..600 {
            let s = Instant::now();
            rt.block_on(async {
                let mut db = tavle_core::db::SqlxDb::new(bare_pool.clone());
                tavle_core::auth::authenticate(&req, &mut db, &vars).await.expect("authenticates");
            });
            if i >= 100 {
                lat.push(s.elapsed());
            }
        }
        overhead.push(("authenticate() in process (token + session query, pool)", lat));
    }
    // Plans, and the access-log append alone.
    let t = &teacher_targets;
    let busiest = follow_targets.iter().max_by_key(|t| t.expect).unwrap();
    let diag = rt.block_on(diagnostics(&bare_pool, &tenant, &callers, &t.0[0], &t.1[0], busiest, &count_targets[0]));
    drop(redirect);
    if let Some(log) = &pg_log {
        log.copy_to("bench-students-auto-explain.log");
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();

    // Report.
    println!();
    println!(
        "Tavle students benchmark — {cpus} CPUs, host workers: {workers}; PostgreSQL {pg_version} \
         (throwaway cluster, fsync=off)"
    );
    println!("load average before: {}", first3(&load_before));
    println!(
        "dataset: {} schools, {} groups, {n_pupils} pupils, {} assessments, {n_results} results",
        gen.school_ids.len(),
        gen.groups.len(),
        gen.assessments.len()
    );
    for (phase, d) in &gen.timings {
        println!("  generate: {phase:<50} {:>7.1} s", d.as_secs_f64());
    }
    println!(
        "  generate: {:.0} results/s; CPU {:.2} cores (postgres {:.2}, other {:.2})",
        n_results as f64 / gen.timings.iter().find(|t| t.0 == "results").map_or(1.0, |t| t.1.as_secs_f64()),
        gen_usage.machine,
        gen_usage.postgres,
        gen_usage.other().max(0.0)
    );
    println!("  sizes: {sizes}");
    println!(
        "targets: {TEACHERS} teachers (1 group each), {LEADERS} school leaders; profile over {} + {} pupils, \
         overview over {} + {} group × assessment pairs; follow-up over {} teacher × school year pairs ({} \
         naming pupils); counts over {} school × assessment pairs (about {} pupils per school)",
        t.0.len(),
        leader_targets.0.len(),
        t.1.len(),
        leader_targets.1.len(),
        follow_targets.len(),
        flagged_lists,
        count_targets.len(),
        n_pupils / gen.school_ids.len().max(1)
    );
    println!();
    println!(
        "{:<25} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "phase", "n", "route p50", "p99", "spin p50", "p99", "bare p50", "p99", "+log p50", "p99", "host p50"
    );
    for p in &phases {
        let prefix = format!("id={}-", p.name.replace([',', ' '], ""));
        println!(
            "{:<25} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            p.name,
            p.route.len(),
            ms(pct(&p.route, 0.5)),
            ms(pct(&p.route, 0.99)),
            ms(pct(&p.spin, 0.5)),
            ms(pct(&p.spin, 0.99)),
            ms(pct(&p.bare, 0.5)),
            ms(pct(&p.bare, 0.99)),
            ms(pct(&p.wrapped, 0.5)),
            ms(pct(&p.wrapped, 0.99)),
            host_p50(&log, &prefix),
        );
    }
    println!("(ms; route = native host, spin = the same request on `spin up`; bare = the exported query alone,");
    println!(" planned for its parameters each time as the routes' statements are;");
    println!(" +log = the query as the route runs it, with its access record;");
    println!(" host p50 = the native host's handler time from its request log, whole ms)");
    for p in &phases {
        let cpu: f64 = p.usage.workers.iter().sum::<f64>() * p.wall.as_secs_f64() / p.route.len() as f64;
        println!("host worker CPU per route request, {:<25} {:.2} ms", format!("{}:", p.name), cpu * 1000.0);
    }
    for (name, lat) in &overhead {
        println!("{name:<58} p50 {:.2} ms, p99 {:.2} ms", ms(pct(lat, 0.5)), ms(pct(lat, 0.99)));
    }
    println!();
    let mut all_met = true;
    let hosts: [(&str, Series); 2] = [("native", |p| &p.route), ("spin", |p| &p.spin)];
    // One series of every phase of `endpoint`, pooled.
    let pick = |endpoint: Endpoint, f: Series| -> Vec<Duration> {
        phases.iter().filter(|p| p.endpoint == endpoint).flat_map(|p| f(p).iter().copied()).collect()
    };
    for ((label, endpoint), (host, series)) in
        [("pupil profile", Endpoint::Profile), ("class overview", Endpoint::Overview)]
            .into_iter()
            .flat_map(|e| hosts.map(|h| (e, h)))
    {
        let (route, bare) = (pick(endpoint, series), pick(endpoint, |p| &p.bare));
        let label = format!("{label}, {host}");
        let (r50, r99, b50, b99) = (pct(&route, 0.5), pct(&route, 0.99), pct(&bare, 0.5), pct(&bare, 0.99));
        let (ratio50, ratio99) = (r50.as_secs_f64() / b50.as_secs_f64(), r99.as_secs_f64() / b99.as_secs_f64());
        let met = ms(r99) <= 10.0 && ratio50 <= 2.0 && ratio99 <= 2.0;
        all_met &= met;
        println!(
            "{label:<22} route p50 {:.2} ms, p99 {:.2} ms; bare SQL p50 {:.2} ms, p99 {:.2} ms; \
             ratio p50 {ratio50:.2}, p99 {ratio99:.2}  (aim p99 <= 10 ms, ratio <= 2: {})",
            ms(r50),
            ms(r99),
            ms(b50),
            ms(b99),
            if met { "met" } else { "NOT met" }
        );
    }
    for ((label, endpoint), (host, series)) in [
        ("follow-up list (teacher, school year)", Endpoint::FollowUp),
        ("counts (leader, one assessment)", Endpoint::Counts),
    ]
    .into_iter()
    .flat_map(|e| hosts.map(|h| (e, h)))
    {
        let label = format!("{label}, {host}");
        let (route, bare) = (pick(endpoint, series), pick(endpoint, |p| &p.bare));
        let met = ms(pct(&route, 0.99)) <= 20.0;
        all_met &= met;
        println!(
            "{label:<46} route p50 {:.2} ms, p99 {:.2} ms; bare SQL p50 {:.2} ms, p99 {:.2} ms  (aim p99 <= 20 ms: {})",
            ms(pct(&route, 0.5)),
            ms(pct(&route, 0.99)),
            ms(pct(&bare, 0.5)),
            ms(pct(&bare, 0.99)),
            if met { "met" } else { "NOT met" }
        );
    }
    println!();
    let cpu_rows: Vec<(String, &Usage)> = phases
        .iter()
        .map(|p| (p.name.to_owned(), &p.usage))
        .chain([("whole measurement".to_owned(), &whole_usage)])
        .collect();
    print_cpu_table(&cpu_rows, (25, 13));
    if whole_usage.other() > 0.2 {
        println!("WARNING: other processes used {:.2} cores during the measurement", whole_usage.other());
    }
    println!();
    for line in &diag {
        println!("{line}");
    }
    println!();
    println!(
        "{}; load average after: {}; host log: {}; total {:.0} s",
        if all_met { "all aims met" } else { "aims NOT all met" },
        first3(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default()),
        log_path.display(),
        total.elapsed().as_secs_f64()
    );
    if let Some(b) = &banner {
        println!("{b}");
    }
    drop(spin_app);
    drop(app);
    std::process::exit(0); // the host's worker threads never return
}

/// (profile targets, overview targets) for the teachers and for the leaders.
type Targets = (Vec<Target>, Vec<Target>);

fn targets(gen: &Generated) -> (Targets, Targets) {
    let mut by_level: std::collections::HashMap<u32, Vec<&str>> = Default::default();
    for a in &gen.assessments {
        by_level.entry(a.year_level).or_default().push(&a.id);
    }
    let group_targets = |who: usize, g: usize, out: &mut Targets| {
        let group = &gen.groups[g];
        for p in group.pupils.clone() {
            out.0.push(Target {
                who,
                id: gen.pupils[p].id.clone(),
                assessment: None,
                year: None,
                school: None,
                expect: gen.pupils[p].results as usize,
            });
        }
        for a in &by_level[&group.year_level] {
            out.1.push(Target {
                who,
                id: group.id.clone(),
                assessment: Some(a.to_string()),
                year: None,
                school: None,
                expect: group.pupils.len(),
            });
        }
    };
    let mut teachers = Targets::default();
    for k in 0..TEACHERS {
        group_targets(k, k * gen.groups.len() / TEACHERS, &mut teachers);
    }
    let mut leaders = Targets::default();
    for k in 0..LEADERS {
        let school = k * gen.school_ids.len() / LEADERS;
        for g in (0..gen.groups.len()).filter(|&g| gen.groups[g].school == school) {
            group_targets(TEACHERS + k, g, &mut leaders);
        }
    }
    (teachers, leaders)
}

/// School years the generator spreads assessments over (from August 2023).
const SCHOOL_YEARS: [i32; 3] = [2023, 2024, 2025];

/// (follow-up targets: every teacher in every school year; counts targets:
/// every leader's school with up to 12 assessments of its year levels).
fn follow_up_targets(gen: &Generated) -> (Vec<Target>, Vec<Target>) {
    let mut follow = Vec::new();
    for who in 0..TEACHERS {
        for year in SCHOOL_YEARS {
            follow.push(Target { who, id: String::new(), assessment: None, year: Some(year), school: None, expect: 0 });
        }
    }
    let mut counts = Vec::new();
    for k in 0..LEADERS {
        let school = k * gen.school_ids.len() / LEADERS;
        // Pupils of the school's groups (every pupil is in one group).
        let pupils: usize = gen.groups.iter().filter(|g| g.school == school).map(|g| g.pupils.len()).sum();
        let step = (gen.assessments.len() / 12).max(1);
        for a in gen.assessments.iter().step_by(step).take(12) {
            counts.push(Target {
                who: TEACHERS + k,
                id: a.id.clone(),
                assessment: None,
                year: None,
                school: Some(gen.school_ids[school].clone()),
                expect: pupils,
            });
        }
    }
    (follow, counts)
}

/// The rows of `FOLLOW_UP_SQL` for `caller` in `year`: one per flag, or one
/// per group without any.
async fn follow_up_rows(pool: &PgPool, tenant: &str, caller: &Caller, year: i32) -> usize {
    let (from, to) = tavle_core::scores::school_year_bounds(year);
    sqlx::query(tavle_students::FOLLOW_UP_SQL)
        .bind(Uuid::parse_str(tenant).unwrap())
        .bind(caller.taught.clone())
        .bind(caller.led.clone())
        .bind(None::<Uuid>)
        .bind(None::<Uuid>)
        .bind(from)
        .bind(to)
        .bind(None::<Uuid>)
        .bind(None::<Uuid>)
        .bind(tavle_students::FOLLOW_UP_DEFAULT_LIMIT)
        .fetch_all(pool)
        .await
        .expect("follow-up query")
        .len()
}

/// Which host serves a route request.
#[derive(Clone, Copy)]
enum On {
    Native,
    Spin,
}

struct Bench<'a> {
    rt: &'a tokio::runtime::Runtime,
    native: &'a mut Client,
    spin: &'a mut Client,
    pool: &'a PgPool,
    tenant: &'a str,
    callers: &'a [Caller],
}

impl Bench<'_> {
    /// The route over HTTP on the native host or on Spin; checks the answer after the clock stops.
    fn route(&mut self, on: On, endpoint: Endpoint, t: &Target, request_id: &str) -> Duration {
        let path = match endpoint {
            Endpoint::Profile => format!("/pupils/{}", t.id),
            Endpoint::Overview => {
                format!("/groups/{}/overview?assessment_id={}", t.id, t.assessment.as_deref().unwrap())
            }
            Endpoint::FollowUp => format!("/follow-up?school_year={}", t.year.unwrap()),
            Endpoint::Counts => format!("/assessments/{}/follow-up?school_id={}", t.id, t.school.as_deref().unwrap()),
        };
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n\
             X-Request-Id: {request_id}\r\n\r\n",
            self.callers[t.who].token
        );
        let client = match on {
            On::Native => &mut *self.native,
            On::Spin => &mut *self.spin,
        };
        let s = Instant::now();
        let Response { status, body, .. } = client.send(&[head.as_bytes()]);
        let elapsed = s.elapsed();
        assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).expect("JSON answer");
        let n = match endpoint {
            Endpoint::Profile => v["results"].as_array().map(Vec::len),
            Endpoint::Overview => {
                // Every pupil line carries its flags; every subtest its count.
                let lines = v["pupils"].as_array().expect("pupils");
                assert!(lines.iter().all(|l| l["flagged"].is_boolean()), "GET {path}: flags");
                assert_eq!(v["assessment"]["subtests"].as_array().map(Vec::len), Some(4), "GET {path}: subtests");
                Some(lines.len())
            }
            Endpoint::FollowUp => {
                let groups = v["groups"].as_array().expect("groups");
                assert_eq!(groups.len(), 1, "GET {path}: the teacher's one group");
                let flags: usize = groups[0]["pupils"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["flags"].as_array().map_or(0, Vec::len))
                    .sum();
                Some(flags.max(1))
            }
            Endpoint::Counts => {
                let groups = v["groups"].as_array().expect("groups");
                Some(groups.iter().map(|g| g["pupils"].as_u64().unwrap() as usize).sum())
            }
        };
        assert_eq!(n, Some(t.expect), "GET {path}: unexpected count");
        elapsed
    }

    /// The bare query (`PROFILE_SQL` / `OVERVIEW_SQL`), bound as the host binds it.
    fn bare(&mut self, endpoint: Endpoint, t: &Target) -> Duration {
        let sql = match endpoint {
            Endpoint::Profile => tavle_students::PROFILE_SQL,
            Endpoint::Overview => tavle_students::OVERVIEW_SQL,
            Endpoint::FollowUp => tavle_students::FOLLOW_UP_SQL,
            Endpoint::Counts => tavle_students::FOLLOW_UP_COUNTS_SQL,
        };
        self.timed(endpoint, t, sql)
    }

    /// The statement the route runs: `tavle_core::access_log::logged_read`
    /// (data and access record in one statement) over `SqlxDb`, the host's
    /// database layer, with the route's parameters.
    fn wrapped(&mut self, endpoint: Endpoint, t: &Target) -> Duration {
        use tavle_core::db::{uuid, SqlxDb, Value};
        let c = &self.callers[t.who];
        // The handlers' own action, statement and record expression.
        let (action, sql, concerned) = match endpoint {
            Endpoint::Profile => {
                (tavle_students::PROFILE_ACTION, tavle_students::PROFILE_SQL, tavle_students::PROFILE_CONCERNED)
            }
            Endpoint::Overview => {
                (tavle_students::OVERVIEW_ACTION, tavle_students::OVERVIEW_SQL, tavle_students::OVERVIEW_CONCERNED)
            }
            Endpoint::FollowUp => (tavle_students::FOLLOW_UP_ACTION, tavle_students::FOLLOW_UP_SQL, "pupil_id"),
            Endpoint::Counts => ("", tavle_students::FOLLOW_UP_COUNTS_SQL, ""),
        };
        let mut params = vec![uuid(self.tenant), Value::text_array(c.taught.clone()), Value::text_array(c.led.clone())];
        match endpoint {
            Endpoint::Profile => params.extend([uuid(&t.id), Value::Null, Value::Null, Value::Null, Value::Null]),
            Endpoint::Overview => params.extend([uuid(&t.id), uuid(t.assessment.as_deref().unwrap())]),
            Endpoint::FollowUp => {
                let (from, to) = tavle_core::scores::school_year_bounds(t.year.unwrap());
                // The first page, of the route's default size (a teacher's group is one page).
                params.extend([
                    Value::Null,
                    Value::Null,
                    from.into(),
                    to.into(),
                    Value::Null,
                    Value::Null,
                    tavle_students::FOLLOW_UP_DEFAULT_LIMIT.into(),
                ]);
            }
            Endpoint::Counts => params.extend([uuid(&t.id), Value::Null, uuid(t.school.as_deref().unwrap())]),
        }
        let meta = tavle_core::web::RequestMeta {
            request_id: "bench-sql".into(),
            client_ip: Some("127.0.0.1".into()),
            method: http::Method::GET,
            path: String::new(),
        };
        let (rows, elapsed) = self.rt.block_on(async {
            use tavle_core::access_log::{logged_read, logged_read_naming};
            use tavle_core::db::Db;
            let s = Instant::now();
            let mut db = SqlxDb::new(self.pool.clone());
            let rows = match endpoint {
                Endpoint::Profile | Endpoint::Overview => {
                    logged_read(&mut db, &c.principal, &meta, action, sql, concerned, params).await
                }
                Endpoint::FollowUp => {
                    logged_read_naming(&mut db, &c.principal, &meta, action, sql, concerned, params).await
                }
                // The counts name no pupil: the route runs the query alone.
                Endpoint::Counts => db.query(sql, &params).await.map_err(Into::into),
            }
            .expect("logged read");
            let n = match endpoint {
                Endpoint::Counts => rows
                    .iter()
                    .filter(|r| r.text("kind").unwrap() == "group" && r.is_null("subtest").unwrap())
                    .map(|r| r.int("pupils").unwrap() as usize)
                    .sum(),
                _ => rows.len(),
            };
            (n, s.elapsed())
        });
        assert_eq!(rows, t.expect.max(1), "logged read: unexpected row count");
        elapsed
    }

    fn timed(&mut self, endpoint: Endpoint, t: &Target, sql: &str) -> Duration {
        let c = &self.callers[t.who];
        let (tenant, pool) = (Uuid::parse_str(self.tenant).unwrap(), self.pool);
        let id = Uuid::parse_str(&t.id).ok();
        let (rows, elapsed) = self.rt.block_on(async {
            // Planned for its parameters on every execution, as the routes'
            // statements are on Spin and (since 2026-12-03) natively.
            let q = sqlx::query(sql).persistent(false).bind(tenant).bind(c.taught.clone()).bind(c.led.clone());
            let q = match endpoint {
                Endpoint::Profile => {
                    q.bind(id).bind(None::<String>).bind(None::<Uuid>).bind(None::<String>).bind(None::<String>)
                }
                Endpoint::Overview => q.bind(id).bind(Uuid::parse_str(t.assessment.as_deref().unwrap()).unwrap()),
                Endpoint::FollowUp => {
                    let (from, to) = tavle_core::scores::school_year_bounds(t.year.unwrap());
                    q.bind(None::<Uuid>)
                        .bind(None::<Uuid>)
                        .bind(from)
                        .bind(to)
                        .bind(None::<Uuid>)
                        .bind(None::<Uuid>)
                        .bind(tavle_students::FOLLOW_UP_DEFAULT_LIMIT)
                }
                Endpoint::Counts => {
                    q.bind(id).bind(None::<Uuid>).bind(Uuid::parse_str(t.school.as_deref().unwrap()).unwrap())
                }
            };
            let s = Instant::now();
            let rows = q.fetch_all(pool).await.expect("bare query");
            let elapsed = s.elapsed();
            let n = match endpoint {
                Endpoint::Counts => {
                    use sqlx::Row;
                    rows.iter()
                        .filter(|r| {
                            r.get::<String, _>("kind") == "group" && r.get::<Option<String>, _>("subtest").is_none()
                        })
                        .map(|r| r.get::<i64, _>("pupils") as usize)
                        .sum()
                }
                _ => rows.len(),
            };
            (n, elapsed)
        });
        assert_eq!(rows, t.expect.max(1), "bare query: unexpected row count");
        elapsed
    }
}

async fn table_sizes(pool: &PgPool) -> String {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_relation_size(c.oid) FROM pg_class c \
         WHERE c.relname IN ('results', 'results_pkey', 'results_pupil', 'results_assessment_latest', 'results_flagged', \
                             'results_source_id_external_id_key', 'pupils', 'assessments') ORDER BY 2 DESC",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter().map(|(n, b)| format!("{n} {:.0} MB", *b as f64 / 1048576.0)).collect::<Vec<_>>().join(", ")
}

/// Plans of both queries as a prepared statement gets them after ten
/// executions (PostgreSQL switches to a generic plan when it does not look
/// worse; what the host and the bare connections ran before 2026-12-03) and
/// as a fresh custom plan (what every statement gets now, on Spin and
/// natively); then the cost of one access-log append on its own.
async fn diagnostics(
    pool: &PgPool,
    tenant: &str,
    callers: &[Caller],
    profile: &Target,
    overview: &Target,
    follow_up: &Target,
    counts: &Target,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut conn = pool.acquire().await.unwrap();
    let array =
        |v: &[String]| format!("ARRAY[{}]::text[]", v.iter().map(|x| format!("'{x}'")).collect::<Vec<_>>().join(","));
    for (name, sql, types, t) in [
        ("PROFILE_SQL", tavle_students::PROFILE_SQL, "uuid, text[], text[], uuid, text, uuid, text, text", profile),
        ("OVERVIEW_SQL", tavle_students::OVERVIEW_SQL, "uuid, text[], text[], uuid, uuid", overview),
        (
            "FOLLOW_UP_SQL",
            tavle_students::FOLLOW_UP_SQL,
            "uuid, text[], text[], uuid, uuid, text, text, uuid, uuid, int8",
            follow_up,
        ),
        (
            "FOLLOW_UP_COUNTS_SQL",
            tavle_students::FOLLOW_UP_COUNTS_SQL,
            "uuid, text[], text[], uuid, uuid, uuid",
            counts,
        ),
    ] {
        let c = &callers[t.who];
        // Ids are uuids from the generator: safe to inline.
        let mut args = format!("'{tenant}', {}, {}", array(&c.taught), array(&c.led));
        match (name, &t.assessment) {
            ("FOLLOW_UP_SQL", _) => {
                let (from, to) = tavle_core::scores::school_year_bounds(t.year.unwrap());
                // The first page, of the route's default size.
                let limit = tavle_students::FOLLOW_UP_DEFAULT_LIMIT;
                args.push_str(&format!(", NULL, NULL, '{from}', '{to}', NULL, NULL, {limit}"));
            }
            ("FOLLOW_UP_COUNTS_SQL", _) => {
                args.push_str(&format!(", '{}', NULL, '{}'", t.id, t.school.as_deref().unwrap()))
            }
            (_, None) => args.push_str(&format!(", '{}', NULL, NULL, NULL, NULL", t.id)),
            (_, Some(a)) => args.push_str(&format!(", '{}', '{a}'", t.id)),
        }
        let stmt = format!("bench_{}", name.to_lowercase());
        sqlx::raw_sql(&format!("PREPARE {stmt}({types}) AS {sql}")).execute(&mut *conn).await.unwrap();
        for _ in 0..10 {
            sqlx::raw_sql(&format!("EXECUTE {stmt}({args})")).execute(&mut *conn).await.unwrap();
        }
        for (label, mode) in [("after 10 executions", "auto"), ("custom plan", "force_custom_plan")] {
            sqlx::raw_sql(&format!("SET plan_cache_mode = {mode}")).execute(&mut *conn).await.unwrap();
            let explain = format!("EXPLAIN (ANALYZE, BUFFERS) EXECUTE {stmt}({args})");
            let run = || sqlx::query_scalar::<_, String>(&explain);
            run().fetch_all(&mut *conn).await.unwrap_or_else(|e| panic!("EXPLAIN {name}: {e}"));
            out.push(format!("EXPLAIN (ANALYZE, BUFFERS) {name}, {label} (plan_cache_mode = {mode}):"));
            let lines = run().fetch_all(&mut *conn).await.unwrap_or_else(|e| panic!("EXPLAIN {name}: {e}"));
            out.extend(lines.into_iter().map(|l| format!("    {l}")));
        }
        sqlx::raw_sql(&format!("RESET plan_cache_mode; DEALLOCATE {stmt}")).execute(&mut *conn).await.unwrap();
    }

    // The access-log append alone (one record naming one pupil, or 25), as
    // the handlers that record a read on its own run it
    // (`tavle_core::access_log::append` over `SqlxDb`, one connection).
    let c = &callers[profile.who];
    let mut db = tavle_core::db::SqlxDb::new(pool.clone());
    for n in [1usize, 25] {
        let pupils: Vec<String> = (0..n).map(|_| profile.id.clone()).collect();
        let mut lat = Vec::new();
        for i in 0..300 {
            let meta = tavle_core::web::RequestMeta {
                request_id: format!("append-{n}-{i}"),
                client_ip: Some("127.0.0.1".into()),
                method: http::Method::GET,
                path: String::new(),
            };
            let s = Instant::now();
            let seq = tavle_core::access_log::append(&mut db, &c.principal, &meta, "bench.append", pupils.clone())
                .await
                .expect("access record appended");
            lat.push(s.elapsed());
            // Numbered within the lane it took (16 per tenant).
            assert!(seq > 0, "an access record's sequence number");
        }
        let written: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM access_log WHERE action = 'bench.append' AND cardinality(pupil_ids) = $1",
        )
        .bind(n as i32)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(written, 300, "every append wrote its record");
        out.push(format!(
            "access_log::append alone ({n} pupil id{}): p50 {:.3} ms, p99 {:.3} ms (one connection, round trip included)",
            if n == 1 { "" } else { "s" },
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99))
        ));
    }
    let mut lat = Vec::new();
    for _ in 0..300 {
        let s = Instant::now();
        sqlx::query("SELECT 1").fetch_one(&mut *conn).await.unwrap();
        lat.push(s.elapsed());
    }
    out.push(format!("PostgreSQL round trip (SELECT 1) p50 {:.3} ms", ms(pct(&lat, 0.5))));
    let (records, gin): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM access_log), pg_relation_size('access_log_pupils')")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    out.push(format!("access_log: {records} records; GIN index access_log_pupils {:.1} MB", gin as f64 / 1048576.0));
    out
}

/// Median handler time (ms) of the requests whose id starts with `prefix`.
fn host_p50(log: &str, prefix: &str) -> String {
    let mut v: Vec<u64> = log
        .lines()
        .filter(|l| l.starts_with("request ") && l.contains(prefix) && l.contains("status=200"))
        .filter_map(|l| l.rsplit_once("ms=").and_then(|(_, v)| v.trim().parse().ok()))
        .collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    v[(v.len() - 1) / 2].to_string()
}

fn first3(loadavg: &str) -> String {
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}
