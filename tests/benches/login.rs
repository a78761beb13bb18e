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
        let mut conns: Vec<Client> = (0..workers.max(2)).map(|_| Client::connect(addr)).collect();
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
    let mut client = Client::connect(addr);
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
    // seven: sqlx's ping on acquire, the lookup, BEGIN, UPDATE, INSERT
    // session, INSERT audit, COMMIT) and the per-request signing-key decode.
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
    println!("CPU use per phase in cores (machine = all processes; other = not this bench):");
    println!("{:<22} {:>8} {:>22} {:>9} {:>7}", "phase", "machine", "host workers", "postgres", "other");
    let cpu_row = |name: &str, u: &Usage| {
        let workers: Vec<String> = u.workers.iter().map(|c| format!("{c:.2}")).collect();
        println!(
            "{:<22} {:>8.2} {:>22} {:>9.2} {:>7.2}",
            name,
            u.machine,
            workers.join(" + "),
            u.postgres,
            (u.machine - u.process - u.postgres).max(0.0)
        );
    };
    cpu_row("login, sequential", &seq_use);
    for (conns, _, _, u) in &conc {
        cpu_row(&format!("login, {conns} conns"), u);
    }
    cpu_row("whole measurement", &whole_use);
    let other = whole_use.machine - whole_use.process - whole_use.postgres;
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

    fn login(&mut self, who: &Staff, request_id: &str) {
        let body = json!({"tenant": who.tenant, "username": who.username, "password": who.password}).to_string();
        let (status, response) = self.post("/auth/login", &body, request_id);
        assert_eq!(status, 200, "login of {} failed: {}", who.username, String::from_utf8_lossy(&response));
        assert!(response.starts_with(b"{\"access_token\""), "unexpected body: {}", String::from_utf8_lossy(&response));
    }

    fn post(&mut self, path: &str, body: &str, request_id: &str) -> (u16, Vec<u8>) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nX-Request-Id: {request_id}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).expect("send request");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
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
                assert!(
                    !k.eq_ignore_ascii_case("connection") || !v.trim().eq_ignore_ascii_case("close"),
                    "server closed keep-alive"
                );
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

/// Counters read before a phase; [`Probe::since`] turns them into cores used.
struct Probe {
    at: Instant,
    machine_busy: u64,
    process: u64,
    postgres: u64,
    workers: Vec<(String, u64, u64)>,
}

/// CPU use during a phase, in cores (CPU seconds per wall second).
struct Usage {
    machine: f64,
    process: f64,
    postgres: f64,
    workers: Vec<f64>,
    worker_faults: u64,
}

impl Probe {
    fn take() -> Probe {
        let (process, _) = task_stat(Path::new("/proc/self"));
        Probe {
            at: Instant::now(),
            machine_busy: machine_busy(),
            process,
            postgres: postgres_ticks(),
            workers: workers(),
        }
    }

    fn since(&self) -> Usage {
        let wall = self.at.elapsed().as_secs_f64() * TICKS_PER_SEC;
        let (process, _) = task_stat(Path::new("/proc/self"));
        let now = workers();
        let before = |name: &str| self.workers.iter().find(|w| w.0 == name).map_or((0, 0), |w| (w.1, w.2));
        Usage {
            machine: machine_busy().saturating_sub(self.machine_busy) as f64 / wall,
            process: process.saturating_sub(self.process) as f64 / wall,
            postgres: postgres_ticks().saturating_sub(self.postgres) as f64 / wall,
            workers: now.iter().map(|(n, t, _)| t.saturating_sub(before(n).0) as f64 / wall).collect(),
            worker_faults: now.iter().map(|(n, _, f)| f.saturating_sub(before(n).1)).sum(),
        }
    }
}

/// USER_HZ of /proc; 100 on every Linux platform Rust targets.
const TICKS_PER_SEC: f64 = 100.0;

/// (utime + stime in ticks, minor faults) of a process or thread.
fn task_stat(dir: &Path) -> (u64, u64) {
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
    // Fields after "(comm) ": state ppid ... minflt is the 8th, utime/stime the 12th/13th.
    let rest: Vec<&str> = stat.rsplit_once(") ").map_or(vec![], |(_, r)| r.split_whitespace().collect());
    let n = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (n(11) + n(12), n(7))
}

fn thread_minflt() -> u64 {
    task_stat(Path::new("/proc/thread-self")).1
}

/// (name, CPU ticks, minor faults) of each host worker thread.
fn workers() -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with("tavle-worker") {
            let (ticks, faults) = task_stat(&task.path());
            out.push((comm.trim().to_owned(), ticks, faults));
        }
    }
    out.sort();
    out
}

/// Busy ticks of the whole machine (all CPUs) from /proc/stat.
fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    v.iter().take(8).sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

/// CPU ticks of every live descendant of this process (the PostgreSQL
/// postmaster and its backends).
fn postgres_ticks() -> u64 {
    let me = std::process::id();
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
    }
    let descends = |mut pid: u32| {
        while let Some(&p) = parent.get(&pid) {
            if p == me {
                return true;
            }
            pid = p;
        }
        false
    };
    parent
        .keys()
        .filter(|&&pid| pid != me && descends(pid))
        .map(|&pid| task_stat(&PathBuf::from(format!("/proc/{pid}"))).0)
        .sum()
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
