//! Login benchmark (issue 2, "Measured"): logins per second and p50/p99
//! latency through the native host over real TCP keep-alive connections
//! against real PostgreSQL, the ratio of login p50 to a bare argon2id verify
//! with the production parameters measured in the same run, and the size of
//! every release `.wasm` component in spin.toml.
//!
//!     cargo bench -p tavle-tests --bench login
//!
//! A plain `fn main` (harness = false). Knobs (environment): `BENCH_SEQ`
//! (sequential logins, default 300), `BENCH_CONC` (logins per concurrent
//! phase, default 200), `BENCH_ARGON2` (bare argon2 verifies, default 100),
//! `BENCH_WORKERS` (host worker threads, default 2).
//!
//! The host logs one line per request to stderr; while measuring, stderr is
//! redirected to `target/bench-login-host.log` so the table stays readable
//! (the write still happens, as it would in production).

use serde_json::json;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tavle_host::host::HostConfig;
use tavle_host::manifest::Manifest;
use tavle_login::password::{self, NewPassword};
use tavle_tests::{project_root, Staff, TestApp, ORIGIN};

const EXTRA_USERS: usize = 20;
const WARM_UP: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let total = Instant::now();
    let seq_n = env_usize("BENCH_SEQ", 300);
    let conc_n = env_usize("BENCH_CONC", 200);
    let argon_n = env_usize("BENCH_ARGON2", 100).max(2);
    let workers = env_usize("BENCH_WORKERS", 2).max(1);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);

    // A panic while stderr is redirected must still be visible.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        println!("benchmark failed: {info}");
        default_hook(info);
    }));
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
        let pg_version: String =
            sqlx::query_scalar("SELECT current_setting('server_version')").fetch_one(&app.pool).await.unwrap();
        (app, users, pg_version)
    });

    // 2. The native host on an ephemeral port, with the test app's variables.
    let manifest = Manifest::load(&project_root().join("spin.toml")).expect("spin.toml loads");
    let config = HostConfig::new(manifest, &app.variables).expect("host config from spin.toml");
    let max_db = config.max_connections;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || tavle_host::server::serve(listener, config, workers).expect("host serves"))
        .unwrap();

    // Bare argon2id: verifying a correct password against a stored hash is
    // exactly the argon2 work of a successful login. Half before, half after
    // the sequential phase, so slow drift (CPU clock, neighbours) hits both.
    let bare_pw = "Bench-argon2-Pw9!";
    let bare_phc = NewPassword::parse(bare_pw, "bench").unwrap().hash();
    assert!(bare_phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "production parameters: {bare_phc}");
    let mut argon = Vec::with_capacity(argon_n);
    let bare = |out: &mut Vec<Duration>, n: usize| {
        for _ in 0..n {
            let t = Instant::now();
            assert!(password::verify(bare_pw, &bare_phc));
            out.push(t.elapsed());
        }
    };

    // Warm-up: DB connections of both workers, prepared statements, the
    // lazily computed dummy hash.
    {
        let mut conns: Vec<Client> = (0..workers.max(2)).map(|_| Client::connect(addr)).collect();
        for i in 0..WARM_UP {
            let c = i % conns.len();
            conns[c].login(&users[i % users.len()]);
        }
    }
    bare(&mut argon, 5); // warm-up, discarded
    argon.clear();

    // 3a. Sequential latency over one keep-alive connection.
    bare(&mut argon, argon_n / 2);
    let cpu0 = worker_cpu();
    let mut client = Client::connect(addr);
    let t = Instant::now();
    let mut seq = Vec::with_capacity(seq_n);
    for i in 0..seq_n {
        let s = Instant::now();
        client.login(&users[i % users.len()]);
        seq.push(s.elapsed());
    }
    let seq_wall = t.elapsed();
    let seq_cpu = cpu_delta(&cpu0, &worker_cpu());
    drop(client);
    bare(&mut argon, argon_n - argon_n / 2);

    // 3b. Throughput with 2 and 4 concurrent keep-alive connections.
    let mut conc = Vec::new();
    for conns in [2usize, 4] {
        let cpu0 = worker_cpu();
        let (lat, wall) = concurrent(addr, &users, conns, conc_n);
        conc.push((conns, lat, wall, cpu_delta(&cpu0, &worker_cpu())));
    }
    drop(redirect);
    let log = host_log(&log_path);

    // Report.
    let argon_p50 = pct(&argon, 0.50);
    let seq_p50 = pct(&seq, 0.50);
    println!();
    println!(
        "Tavle login benchmark — {cpus} CPUs, host workers: {workers} (DB pool {max_db}/worker), \
         PostgreSQL {pg_version} (throwaway cluster: fsync=off, synchronous_commit=off)"
    );
    println!("argon2id m=19456 KiB, t=2, p=1 (password::argon2); {} users, all logins 200", users.len());
    println!();
    println!("{:<32} {:>5} {:>6} {:>9} {:>9} {:>9}", "phase", "n", "conns", "per sec", "p50 ms", "p99 ms");
    let row = |name: &str, lat: &[Duration], conns: &str, per_sec: f64| {
        println!(
            "{:<32} {:>5} {:>6} {:>9.1} {:>9.2} {:>9.2}",
            name,
            lat.len(),
            conns,
            per_sec,
            ms(pct(lat, 0.50)),
            ms(pct(lat, 0.99))
        );
    };
    let argon_total: Duration = argon.iter().sum();
    row("bare argon2id verify (1 thread)", &argon, "-", argon.len() as f64 / argon_total.as_secs_f64());
    row("login, sequential", &seq, "1", seq.len() as f64 / seq_wall.as_secs_f64());
    for (conns, lat, wall, _) in &conc {
        row("login, concurrent", lat, &conns.to_string(), lat.len() as f64 / wall.as_secs_f64());
    }
    println!();
    let ratio = seq_p50.as_secs_f64() / argon_p50.as_secs_f64();
    println!(
        "ratio login p50 / argon2id p50 = {:.2} / {:.2} ms = {ratio:.3}  (aim <= 1.3: {})",
        ms(seq_p50),
        ms(argon_p50),
        if ratio <= 1.3 { "met" } else { "NOT met" }
    );
    println!(
        "login p50 overhead over argon2: {:.2} ms (HTTP, routing, 6 SQL round trips, token signing, logging)",
        ms(seq_p50) - ms(argon_p50)
    );
    if let Some((n, p50)) = log {
        println!("host-side handler time (request log, whole-ms resolution): p50 {p50} ms over {n} logins");
    }
    let split = |cpu: &[(String, Duration)]| {
        cpu.iter().map(|(n, d)| format!("{n} {:.2}s", d.as_secs_f64())).collect::<Vec<_>>().join(", ")
    };
    println!("worker CPU, sequential: {}", split(&seq_cpu));
    for (conns, _, _, cpu) in &conc {
        println!("worker CPU, {conns} conns:    {}", split(cpu));
    }
    println!();

    // 5. Release component sizes (after measuring: a build would compete for CPU).
    println!("{:<12} {:<52} {:>10} {:>10}", "component", "source", "bytes", "KiB");
    for (name, source, krate) in components() {
        let path = project_root().join(&source);
        let mut note = "";
        if !path.exists() {
            note = " (built now)";
            if let Err(e) = build_component(krate.as_deref()) {
                println!("{name:<12} {source:<52} {:>10} {:>10}  ({e})", "not built", "-");
                continue;
            }
        }
        match std::fs::metadata(&path) {
            Ok(m) => println!("{name:<12} {source:<52} {:>10} {:>10.1}{note}", m.len(), m.len() as f64 / 1024.0),
            Err(e) => println!("{name:<12} {source:<52} {:>10} {:>10}  ({e})", "not built", "-"),
        }
    }
    println!();
    println!("host log: {}; total {:.0} s", log_path.display(), total.elapsed().as_secs_f64());
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
                let mut client = Client::connect(addr);
                barrier.wait();
                let mut lat = Vec::new();
                for i in (c..total).step_by(conns) {
                    let s = Instant::now();
                    client.login(&users[i % users.len()]);
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let lat = handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect();
    (lat, t.elapsed())
}

/// A minimal blocking HTTP/1.1 keep-alive client (one request in flight).
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to host");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    fn login(&mut self, who: &Staff) {
        let body = json!({"tenant": who.tenant, "username": who.username, "password": who.password}).to_string();
        let (status, response) = self.post("/auth/login", &body);
        assert_eq!(status, 200, "login of {} failed: {}", who.username, String::from_utf8_lossy(&response));
        assert!(response.starts_with(b"{\"access_token\""), "unexpected body: {}", String::from_utf8_lossy(&response));
    }

    fn post(&mut self, path: &str, body: &str) -> (u16, Vec<u8>) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).expect("send request");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut length = None;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header line");
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                }
                assert!(!k.eq_ignore_ascii_case("connection") || !v.trim().eq_ignore_ascii_case("close"), "server closed keep-alive");
            }
        }
        let mut response = vec![0; length.expect("response has content-length")];
        self.reader.read_exact(&mut response).expect("response body");
        (status, response)
    }
}

fn pct(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time consumed so far by each host worker thread (from /proc).
fn worker_cpu() -> Vec<(String, Duration)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("tavle-worker") {
            continue;
        }
        // schedstat: on-CPU time in nanoseconds first.
        let ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0);
        out.push((comm.to_owned(), Duration::from_nanos(ns)));
    }
    out.sort();
    out
}

fn cpu_delta(before: &[(String, Duration)], after: &[(String, Duration)]) -> Vec<(String, Duration)> {
    after
        .iter()
        .map(|(n, a)| {
            let b = before.iter().find(|(m, _)| m == n).map_or(Duration::ZERO, |(_, d)| *d);
            (n.clone(), a.saturating_sub(b))
        })
        .collect()
}

/// Logins in the host's request log and their p50 handler time (ms).
fn host_log(path: &Path) -> Option<(usize, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut ms: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("path=/auth/login ") && l.contains("status=200"))
        .filter_map(|l| l.rsplit_once("ms=").and_then(|(_, v)| v.trim().parse().ok()))
        .collect();
    if ms.is_empty() {
        return None;
    }
    ms.sort();
    Some((ms.len(), ms[(ms.len() - 1) / 2]))
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
            let krate = words
                .windows(2)
                .find(|w| w[0] == "-p" || w[0] == "--package")
                .map(|w| w[1].to_owned());
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

/// Points fd 2 at a file until dropped.
struct StderrRedirect {
    saved: i32,
}

impl StderrRedirect {
    fn to(path: &PathBuf) -> StderrRedirect {
        let _ = std::fs::create_dir_all(path.parent().unwrap());
        let file = File::create(path).expect("host log file");
        // SAFETY: plain fd duplication; `file` stays open until dup2 has copied it.
        unsafe {
            let saved = libc::dup(2);
            assert!(saved >= 0 && libc::dup2(file.as_raw_fd(), 2) >= 0, "redirecting stderr");
            StderrRedirect { saved }
        }
    }
}

impl Drop for StderrRedirect {
    fn drop(&mut self) {
        // SAFETY: restores the descriptor saved in `to`.
        unsafe {
            libc::dup2(self.saved, 2);
            libc::close(self.saved);
        }
    }
}
