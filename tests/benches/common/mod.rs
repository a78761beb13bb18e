//! What the benchmarks share: knobs from the environment, the native host on
//! an ephemeral port, a minimal HTTP/1.1 client, latency statistics, CPU use
//! per phase from `/proc`, and stderr redirected to the host's log file.
//!
//! Included by each bench with `mod common;`; a bench that does not use an
//! item would warn about dead code, hence the `allow`s on the few items only
//! one bench uses.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tavle_host::host::HostConfig;
use tavle_host::manifest::Manifest;
use tavle_tests::{project_root, TestApp};

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `BENCH_SMOKE=1` (any value but empty and `0`): a smoke run, the same code
/// paths at small sizes with every answer still asserted, for CI. Its
/// figures are printed but are not results.
pub fn smoke() -> bool {
    std::env::var("BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A size setting: `name` from the environment, else `full`, or `small` in a smoke run.
pub fn size(name: &str, full: usize, small: usize) -> usize {
    env_usize(name, if smoke() { small } else { full })
}

/// The line a smoke run prints first (and last): `what` says its sizes.
pub fn smoke_banner(what: &str) -> String {
    format!("SMOKE RUN ({what}): figures are not results")
}

/// A panic while stderr is redirected must still be visible: print it to stdout too.
pub fn print_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        println!("benchmark failed: {info}");
        default_hook(info);
    }));
}

/// `SELECT current_setting('server_version')` of the test app's cluster.
pub async fn server_version(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT current_setting('server_version')").fetch_one(&app.pool).await.unwrap()
}

/// The native host on an ephemeral port, configured from spin.toml and the
/// test app's `variables`, serving on `workers` threads (for the rest of the
/// process: they never return). Its address and DB pool size per worker.
pub fn start_host(variables: &HashMap<String, String>, workers: usize) -> (SocketAddr, u32) {
    let manifest = Manifest::load(&project_root().join("spin.toml")).expect("spin.toml loads");
    let config = HostConfig::new(manifest, variables).expect("host config from spin.toml");
    let max_db = config.max_connections;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || tavle_host::server::serve(listener, config, workers).expect("host serves"))
        .unwrap();
    (addr, max_db)
}

/// A minimal blocking HTTP/1.1 keep-alive client (one request in flight).
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// An answer read by [`Client::send`].
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server sent `Connection: close`.
    #[allow(dead_code)] // checked by the login bench only
    pub close: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr, read_timeout: Duration) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to host");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(read_timeout)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Sends a request given as `parts`, each written with its own
    /// `write_all`, and reads the answer (which must have a Content-Length).
    pub fn send(&mut self, parts: &[&[u8]]) -> Response {
        for part in parts {
            self.stream.write_all(part).expect("send request");
        }
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
        let (mut length, mut close) = (None, false);
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
                close |= k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close");
            }
        }
        let mut body = vec![0; length.expect("response has content-length")];
        self.reader.read_exact(&mut body).expect("response body");
        Response { status, body, close }
    }
}

/// The `q` quantile of `v` (nearest rank).
pub fn pct(v: &[Duration], q: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

#[allow(dead_code)] // used by the ingest bench only
pub fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / v.len().max(1) as u32
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Counters read before a phase; [`Probe::since`] turns them into cores used.
pub struct Probe {
    at: Instant,
    machine_busy: u64,
    process: u64,
    postgres: u64,
    workers: Vec<(String, u64, u64)>,
}

/// CPU use during a phase, in cores (CPU seconds per wall second).
pub struct Usage {
    pub machine: f64,
    pub process: f64,
    pub postgres: f64,
    pub workers: Vec<f64>,
    /// Minor page faults of the host worker threads (a count, not cores).
    #[allow(dead_code)] // reported by the login bench only
    pub worker_faults: u64,
}

impl Probe {
    pub fn take() -> Probe {
        let (process, _) = task_stat(Path::new("/proc/self"));
        Probe {
            at: Instant::now(),
            machine_busy: machine_busy(),
            process,
            postgres: postgres_ticks(),
            workers: workers(),
        }
    }

    pub fn since(&self) -> Usage {
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

impl Usage {
    /// Cores used by processes other than this bench and its PostgreSQL cluster.
    pub fn other(&self) -> f64 {
        self.machine - self.process - self.postgres
    }
}

/// The CPU-use table: a heading, then one row per phase; `widths` are those
/// of the phase and host-workers columns.
pub fn print_cpu_table(rows: &[(impl AsRef<str>, &Usage)], widths: (usize, usize)) {
    let (phase_w, workers_w) = widths;
    println!("CPU use per phase in cores (machine = all processes; other = not this bench):");
    println!("{:<phase_w$} {:>8} {:>workers_w$} {:>9} {:>7}", "phase", "machine", "host workers", "postgres", "other");
    for (name, u) in rows {
        let workers: Vec<String> = u.workers.iter().map(|c| format!("{c:.2}")).collect();
        println!(
            "{:<phase_w$} {:>8.2} {:>workers_w$} {:>9.2} {:>7.2}",
            name.as_ref(),
            u.machine,
            workers.join(" + "),
            u.postgres,
            u.other().max(0.0)
        );
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

/// Minor page faults of the calling thread so far.
#[allow(dead_code)] // used by the login bench only
pub fn thread_minflt() -> u64 {
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
    let mut parent = HashMap::new();
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

/// Points fd 2 at a file until dropped.
pub struct StderrRedirect {
    saved: i32,
}

impl StderrRedirect {
    pub fn to(path: &Path) -> StderrRedirect {
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

/// The cluster log from a point on (auto_explain's output).
pub struct PgLog {
    path: PathBuf,
    offset: u64,
}

impl PgLog {
    /// Copies what the log gained since to `target/<name>`.
    pub fn copy_to(&self, name: &str) {
        let text = std::fs::read(&self.path).unwrap_or_default();
        let out = project_root().join("target").join(name);
        std::fs::write(&out, &text[(self.offset as usize).min(text.len())..]).unwrap();
        println!("auto_explain output: {}", out.display());
    }
}

/// Diagnosis only: `BENCH_AUTO_EXPLAIN=<ms>` logs the plans (with actual
/// times and buffers) of statements slower than that, for connections to
/// the bench database opened later; `BENCH_PG_SETTINGS="name=value;..."`
/// sets anything else for them.
pub async fn diagnosis_settings(app: &TestApp) -> Option<PgLog> {
    let pg_settings = std::env::var("BENCH_PG_SETTINGS").unwrap_or_default();
    alter_database(app, pg_settings.split(';').map(str::trim).filter(|s| !s.is_empty())).await;
    let ms = std::env::var("BENCH_AUTO_EXPLAIN").ok().and_then(|v| v.parse::<u64>().ok())?;
    let threshold = format!("auto_explain.log_min_duration = '{ms}ms'");
    let settings = ["session_preload_libraries = 'auto_explain'", &threshold, "auto_explain.log_analyze = on"];
    alter_database(app, settings.into_iter().chain(["auto_explain.log_buffers = on"])).await;
    let data: String = sqlx::query_scalar("SHOW data_directory").fetch_one(&app.pool).await.unwrap();
    let path = Path::new(&data).parent().unwrap().join("postgres.log");
    let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
    Some(PgLog { path, offset })
}

/// `ALTER DATABASE <bench db> SET <setting>`: applies to connections opened later.
async fn alter_database<'a>(app: &TestApp, settings: impl Iterator<Item = &'a str>) {
    let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&app.pool).await.unwrap();
    for setting in settings {
        sqlx::query(&format!("ALTER DATABASE {db} SET {setting}")).execute(&app.pool).await.unwrap();
        println!("bench database: SET {setting}");
    }
}
