//! Login benchmark (issue 2, "Measured"): logins per second and p50/p99
//! latency through the native host over real TCP keep-alive connections
//! against real PostgreSQL, the ratio of login p50 to a bare argon2id verify
//! with the production parameters measured in the same run, and the size of
//! every release `.wasm` component in spin.toml.
//!
//!     cargo bench -p tavle-tests --bench login                # full run
//!     BENCH_SMOKE=1 cargo bench -p tavle-tests --bench login  # smoke run (CI)
//!
//! A plain `fn main` (harness = false). Knobs (environment): `BENCH_SEQ`
//! (sequential logins, default 300; smoke 20), `BENCH_CONC` (logins per
//! concurrent phase, default 200; smoke 20), `BENCH_ARGON2` (bare argon2
//! verifies, default 100; smoke 10), `BENCH_WORKERS` (host worker threads,
//! default 2). A smoke run takes the same paths with every answer asserted
//! and does not build missing components; its figures are not results.
//!
//! The host logs one line per request to stderr; while measuring, stderr is
//! redirected to `target/bench-login-host.log` so the table stays readable
//! (the write still happens, as it would in production).

#[allow(dead_code)] // shared by the benches; this one uses only a few of its helpers
mod common;

use common::{
    env_usize, ms, pct, print_cpu_table, print_panics, server_version, size, smoke, smoke_banner, start_host,
    thread_minflt, Client, Probe, Response, StderrRedirect,
};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tavle_login::password::{self, NewPassword};
use tavle_tests::{project_root, Api, Staff, TestApp, ORIGIN};

const EXTRA_USERS: usize = 20;
const WARM_UP: usize = 20;
/// How long a client waits for an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let total = Instant::now();
    let seq_n = size("BENCH_SEQ", 300, 20);
    let conc_n = size("BENCH_CONC", 200, 20);
    let argon_n = size("BENCH_ARGON2", 100, 10).max(2);
    let workers = env_usize("BENCH_WORKERS", 2).max(1);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let banner = smoke().then(|| {
        smoke_banner(&format!("{seq_n} sequential logins, {conc_n} per concurrent phase, {argon_n} bare verifies"))
    });
    if let Some(b) = &banner {
        println!("{b}");
    }

    print_panics();
    let log_path = project_root().join("target").join("bench-login-host.log");
    let redirect = StderrRedirect::to(&log_path);

    // 1. Fresh database, a tenant, and extra users so logins spread out.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (app, users, pg_version) = rt.block_on(async {
        let app = TestApp::spawn().await;
        let admin = app.seed_tenant("bench").await;
        let session = app.login(&admin).await;
        let mut users = vec![admin.clone()];
        for i in 0..EXTRA_USERS {
            users.push(app.create_user(&session, &admin, &format!("bench{i:02}"), json!([])).await);
        }
        let pg_version = server_version(&app).await;
        (app, users, pg_version)
    });

    // 2. The native host on an ephemeral port, with the test app's variables.
    let (addr, max_db) = start_host(&app.variables, workers);

    // Bare argon2id: verifying a correct password against a stored hash is
    // exactly the argon2 work of a successful login. Half before, half after
    // the sequential phase, so slow drift (CPU clock, neighbours) hits both.
    let bare_pw = "Baseline-argon2-Pw9!";
    let bare_phc = NewPassword::parse(bare_pw, "baseline-user").unwrap().hash();
    assert!(bare_phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "production parameters: {bare_phc}");
    let bare = |out: &mut Vec<Duration>, n: usize| {
        for _ in 0..n {
            let t = Instant::now();
            assert!(password::verify(bare_pw, &bare_phc));
            out.push(t.elapsed());
        }
    };

    // Warm-up: DB connections of every worker, prepared statements.
    let whole = Probe::take();
    {
        let mut conns: Vec<Client> = (0..workers.max(2)).map(|_| Client::connect(addr, READ_TIMEOUT)).collect();
        for i in 0..WARM_UP {
            let c = i % conns.len();
            conns[c].login(&users[i % users.len()], &format!("warm-{i}"));
        }
    }
    bare(&mut Vec::new(), 5);

    // 3a. Sequential latency over one keep-alive connection, between two
    // halves of the bare argon2 baseline.
    let mut argon = Vec::with_capacity(argon_n);
    let faults0 = thread_minflt();
    bare(&mut argon, argon_n / 2);
    let mut argon_faults = thread_minflt() - faults0;
    let seq_probe = Probe::take();
    let mut client = Client::connect(addr, READ_TIMEOUT);
    let t = Instant::now();
    let mut seq = Vec::with_capacity(seq_n);
    for i in 0..seq_n {
        let s = Instant::now();
        client.login(&users[i % users.len()], &format!("seq-{i}"));
        seq.push(s.elapsed());
    }
    let seq_wall = t.elapsed();
    let seq_use = seq_probe.since();
    drop(client);
    let faults0 = thread_minflt();
    bare(&mut argon, argon_n - argon_n / 2);
    argon_faults += thread_minflt() - faults0;

    // The CPU ceiling for login throughput: bare argon2 on `workers` threads at once.
    let par_n = (argon_n / 2).max(workers * 4);
    let t = Instant::now();
    let par: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let bare = &bare;
                s.spawn(move || {
                    let mut v = Vec::new();
                    bare(&mut v, (w..par_n).step_by(workers).count());
                    v
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let par_wall = t.elapsed();

    // 3b. Throughput with 2 and 4 concurrent keep-alive connections.
    let mut conc = Vec::new();
    for conns in [2usize, 4] {
        let probe = Probe::take();
        let (lat, wall) = concurrent(addr, &users, conns, conc_n);
        conc.push((conns, lat, wall, probe.since()));
    }
    let whole_use = whole.since();

    // Where the rest of a login goes: PostgreSQL round trips (a login makes
    // eight: sqlx's ping on acquire, the ROLLBACK that starts every request's
    // connection, the lookup, BEGIN, UPDATE, INSERT session, INSERT audit,
    // COMMIT) and the per-request signing-key decode.
    let (rtt, acquire_rtt) = rt.block_on(async {
        let (mut rtt, mut acquire_rtt) = (Vec::new(), Vec::new());
        let mut conn = app.pool.acquire().await.unwrap();
        for _ in 0..200 {
            let t = Instant::now();
            sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
            rtt.push(t.elapsed());
        }
        drop(conn);
        for _ in 0..200 {
            let t = Instant::now();
            let mut conn = app.pool.acquire().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
            acquire_rtt.push(t.elapsed());
        }
        (rtt, acquire_rtt)
    });
    let signing_key = app.variables["token_signing_key"].clone();
    let t = Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(tavle_login::signing_key(std::hint::black_box(&signing_key)).unwrap());
    }
    let key_decode = t.elapsed() / 1000;
    drop(redirect);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();

    // Report.
    let argon_p50 = pct(&argon, 0.50);
    let seq_p50 = pct(&seq, 0.50);
    println!();
    println!("Tavle login benchmark — {cpus} CPUs, host workers: {workers} (DB pool {max_db} per worker)");
    println!("PostgreSQL {pg_version}, throwaway cluster (fsync=off, synchronous_commit=off), same machine");
    println!("argon2id m=19456 KiB, t=2, p=1 (password::argon2); {} users, every login answered 200", users.len());
    println!();
    println!(
        "{:<34} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8}",
        "phase", "n", "conns", "per sec", "p50 ms", "p99 ms", "host p50"
    );
    let row = |name: &str, lat: &[Duration], conns: &str, per_sec: f64, host: String| {
        println!(
            "{:<34} {:>5} {:>5} {:>8.1} {:>8.2} {:>8.2} {:>8}",
            name,
            lat.len(),
            conns,
            per_sec,
            ms(pct(lat, 0.50)),
            ms(pct(lat, 0.99)),
            host
        );
    };
    let argon_total: Duration = argon.iter().sum();
    row("bare argon2id verify, 1 thread", &argon, "-", argon.len() as f64 / argon_total.as_secs_f64(), "-".into());
    row(
        &format!("bare argon2id verify, {workers} threads"),
        &par,
        "-",
        par.len() as f64 / par_wall.as_secs_f64(),
        "-".into(),
    );
    row("login, sequential", &seq, "1", seq.len() as f64 / seq_wall.as_secs_f64(), host_p50(&log, "seq-"));
    for (conns, lat, wall, _) in &conc {
        let host = host_p50(&log, &format!("c{conns}-"));
        row("login, concurrent", lat, &conns.to_string(), lat.len() as f64 / wall.as_secs_f64(), host);
    }
    println!("(host p50: handler time from the host's request log, whole ms)");
    println!();
    let ratio = seq_p50.as_secs_f64() / argon_p50.as_secs_f64();
    println!(
        "ratio login p50 / argon2id p50 = {:.2} / {:.2} ms = {ratio:.2}  (aim <= 1.3: {})",
        ms(seq_p50),
        ms(argon_p50),
        if ratio <= 1.3 { "met" } else { "NOT met" }
    );
    println!(
        "PostgreSQL round trip p50 {:.3} ms (pool acquire + query {:.3} ms); signing-key decode per request {:.3} ms",
        ms(pct(&rtt, 0.5)),
        ms(pct(&acquire_rtt, 0.5)),
        ms(key_decode)
    );
    println!(
        "page faults: {:.0} per bare verify (bench thread), {:.0} per sequential login (host worker)",
        argon_faults as f64 / argon.len() as f64,
        seq_use.worker_faults as f64 / seq.len() as f64
    );
    println!();
    let mut cpu_rows = vec![("login, sequential".to_owned(), &seq_use)];
    cpu_rows.extend(conc.iter().map(|(conns, _, _, u)| (format!("login, {conns} conns"), u)));
    cpu_rows.push(("whole measurement".to_owned(), &whole_use));
    print_cpu_table(&cpu_rows, (22, 22));
    let other = whole_use.other();
    if other > 0.2 {
        println!(
            "WARNING: other processes used {other:.2} cores while measuring; these figures are not representative"
        );
    }
    println!();

    // 5. Release component sizes (after measuring: a build would compete for CPU).
    println!("{:<10} {:<50} {:>9} {:>8}", "component", "source", "bytes", "KiB");
    for (name, source, krate) in components() {
        let path = project_root().join(&source);
        let mut note = "";
        if !path.exists() && smoke() {
            println!("{name:<10} {source:<50} {:>9} {:>8}  (a smoke run does not build it)", "not built", "-");
            continue;
        }
        if !path.exists() {
            note = "  (built now)";
            if let Err(e) = build_component(krate.as_deref()) {
                println!("{name:<10} {source:<50} {:>9} {:>8}  ({e})", "not built", "-");
                continue;
            }
        }
        match std::fs::metadata(&path) {
            Ok(m) => println!("{name:<10} {source:<50} {:>9} {:>8.1}{note}", m.len(), m.len() as f64 / 1024.0),
            Err(e) => println!("{name:<10} {source:<50} {:>9} {:>8}  ({e})", "not built", "-"),
        }
    }
    println!();
    println!("host log: {}; total {:.0} s", log_path.display(), total.elapsed().as_secs_f64());
    if let Some(b) = &banner {
        println!("{b}");
    }
    drop(app);
    std::process::exit(0); // the host's worker threads never return
}

/// `conns` client threads, each on its own keep-alive connection, share
/// `total` logins; returns every latency and the wall time.
fn concurrent(addr: SocketAddr, users: &[Staff], conns: usize, total: usize) -> (Vec<Duration>, Duration) {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(conns));
    let t = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let users = users.to_vec();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr, READ_TIMEOUT);
                barrier.wait();
                let mut lat = Vec::new();
                for i in (c..total).step_by(conns) {
                    let s = Instant::now();
                    client.login(&users[i % users.len()], &format!("c{conns}-{i}"));
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let lat = handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect();
    (lat, t.elapsed())
}

impl Client {
    /// One `POST /auth/login` as `who`; asserts 200 with an access token.
    fn login(&mut self, who: &Staff, request_id: &str) {
        let body = json!({"tenant": who.tenant, "username": who.username, "password": who.password}).to_string();
        let request = format!(
            "POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nX-Request-Id: {request_id}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let Response { status, body: response, close } = self.send(&[request.as_bytes()]);
        assert!(!close, "server closed keep-alive");
        assert_eq!(status, 200, "login of {} failed: {}", who.username, String::from_utf8_lossy(&response));
        assert!(response.starts_with(b"{\"access_token\""), "unexpected body: {}", String::from_utf8_lossy(&response));
    }
}

/// Median handler time (ms) of successful logins whose request id starts with `prefix`.
fn host_p50(log: &str, prefix: &str) -> String {
    let needle = format!("id={prefix}");
    let mut ms: Vec<u64> = log
        .lines()
        .filter(|l| {
            l.starts_with("request ")
                && l.contains(&needle)
                && l.contains("path=/auth/login ")
                && l.contains("status=200")
        })
        .filter_map(|l| l.rsplit_once("ms=").and_then(|(_, v)| v.trim().parse().ok()))
        .collect();
    if ms.is_empty() {
        return "-".into();
    }
    ms.sort();
    ms[(ms.len() - 1) / 2].to_string()
}

/// (component id, source, crate from the build command's `-p`).
fn components() -> Vec<(String, String, Option<String>)> {
    let text = std::fs::read_to_string(project_root().join("spin.toml")).expect("spin.toml");
    let doc: toml::Table = toml::from_str(&text).expect("spin.toml parses");
    let mut out = Vec::new();
    if let Some(components) = doc.get("component").and_then(|c| c.as_table()) {
        for (name, c) in components {
            let source = c.get("source").and_then(|s| s.as_str()).unwrap_or_default().to_owned();
            let command = c.get("build").and_then(|b| b.get("command")).and_then(|s| s.as_str()).unwrap_or_default();
            let words: Vec<&str> = command.split_whitespace().collect();
            let krate = words.windows(2).find(|w| w[0] == "-p" || w[0] == "--package").map(|w| w[1].to_owned());
            out.push((name.clone(), source, krate));
        }
    }
    out
}

fn build_component(krate: Option<&str>) -> Result<(), String> {
    let krate = krate.ok_or("no `-p <crate>` in its build command")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("building {krate} for wasm32-wasip2 (release)...");
    let out = std::process::Command::new(cargo)
        .args(["build", "--target", "wasm32-wasip2", "--release", "-p", krate])
        .current_dir(project_root())
        .output()
        .map_err(|e| format!("cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| l.starts_with("error")).unwrap_or("build failed");
        Err(last.to_owned())
    }
}
