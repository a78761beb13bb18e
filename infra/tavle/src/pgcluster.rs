//! A private PostgreSQL 15 cluster for tests and local development.
//!
//! The server is started directly as a child process (`postgres -D ...`, no
//! `pg_ctl` daemonising) so that it can be tied to our lifetime: it is stopped
//! on `Drop`, by an `atexit` hook (covers `static` clusters in test binaries,
//! where libtest calls `process::exit`), and by `PR_SET_PDEATHSIG` (covers
//! SIGKILL/abort of our process).
//!
//! Layout of a cluster directory:
//! `data/` (PGDATA), `sock/` (unix socket), `postgres.log` (initdb + server
//! output), `.lock` (flock held while a `PgCluster` owns the directory) and,
//! for persistent clusters, `port` (last port used, preferred on restart).
//!
//! When running as root the server runs as the `postgres` OS user, because
//! PostgreSQL refuses to run as root.

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_BIN_ENV: &str = "TAVLE_PG_BIN";
const PG_OS_USER: &str = "postgres";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 5;
const TEMP_PREFIX: &str = "tavle-pg-";
/// Abandoned temp clusters younger than this are left alone, so a directory
/// that is still being set up (not yet locked) is never swept.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(120);
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A running private PostgreSQL server. Stopped on `Drop` and at process exit.
pub struct PgCluster {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    port: u16,
    ephemeral: bool,
    state: Mutex<State>,
}

struct State {
    child: Option<Child>,
    /// Held (flock) while we own the directory; released last on stop.
    lock: Option<File>,
}

impl PgCluster {
    /// Throwaway cluster in a fresh temp dir (under `std::env::temp_dir()`),
    /// removed when stopped.
    pub fn start_ephemeral() -> Result<PgCluster> {
        PgCluster::start_ephemeral_with(&[])
    }

    /// A throwaway cluster as [`PgCluster::start_ephemeral`], with extra server
    /// settings (each passed as `postgres -c SETTING`, after ours, so they win),
    /// e.g. `ssl=on` and `ssl_cert_file=/path/server.crt`. Files they name must
    /// be readable by the server's OS user (see [`PgCluster::give_to_server_user`]).
    pub fn start_ephemeral_with(settings: &[String]) -> Result<PgCluster> {
        let tmp = std::env::temp_dir();
        sweep_abandoned_temp_dirs(&tmp);
        let (root, lock) = create_temp_root(&tmp)?;
        let started = (|| {
            let env = Env::detect()?;
            let layout = Layout::new(&root);
            env.prepare_dir(&root)?;
            env.initdb(&layout, &layout.data, true)?;
            env.prepare_dir(&layout.sock)?;
            let (child, port) = env.start_server(&layout, true, None, settings)?;
            Ok::<_, anyhow::Error>((child, port))
        })();
        match started {
            Ok((child, port)) => Ok(PgCluster::register(root, port, true, child, lock)),
            Err(e) => {
                remove_dir_all_retry(&root);
                Err(e)
            }
        }
    }

    /// Persistent cluster under `dir` (e.g. `.tavle/pg`): initdb on first
    /// use, reuse existing data afterwards. Stopped on Drop / at exit.
    pub fn start_persistent(dir: &Path) -> Result<PgCluster> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        let lock = lock_dir(&root)?.ok_or_else(|| {
            anyhow!("persistent PostgreSQL cluster at {} is in use by another process", root.display())
        })?;
        let env = Env::detect()?;
        let layout = Layout::new(&root);
        env.prepare_dir(&root)?;
        if !layout.data.exists() {
            // initdb into a scratch dir and rename, so an interrupted initdb
            // never leaves a half-initialised data dir that we would "reuse".
            let scratch = root.join("data.initdb");
            if scratch.exists() {
                fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
            }
            env.initdb(&layout, &scratch, false)?;
            fs::rename(&scratch, &layout.data).with_context(|| format!("renaming {} to data", scratch.display()))?;
        }
        env.prepare_dir(&layout.sock)?;
        clear_stale_pid_file(&layout.data)?;
        let port_file = root.join("port");
        let preferred = fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse().ok());
        let (child, port) = env.start_server(&layout, false, preferred, &[])?;
        let _ = fs::write(&port_file, format!("{port}\n"));
        Ok(PgCluster::register(root, port, false, child, lock))
    }

    /// Connection URL for a database, e.g. `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.inner.port, percent_encode(database))
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Hands `path` to the OS user the server runs as (`postgres` when we are
    /// root; otherwise that is us already and nothing changes), e.g. a TLS key
    /// file, which PostgreSQL wants owned by its user with mode 0600.
    pub fn give_to_server_user(path: &Path) -> Result<()> {
        if let Some(r) = Env::detect()?.run_as {
            std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid))
                .with_context(|| format!("chown {} to {PG_OS_USER}", path.display()))?;
        }
        Ok(())
    }

    /// Fast shutdown (SIGINT, SIGKILL after 10 s); removes the directory of an
    /// ephemeral cluster. Idempotent.
    pub fn stop(&self) {
        self.inner.stop();
        lock(registry()).retain(|c| !Arc::ptr_eq(c, &self.inner));
    }

    fn register(root: PathBuf, port: u16, ephemeral: bool, child: Child, dir_lock: File) -> Self {
        let inner = Arc::new(Inner {
            root,
            port,
            ephemeral,
            state: Mutex::new(State { child: Some(child), lock: Some(dir_lock) }),
        });
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            // SAFETY: registering a plain extern "C" fn without captured state.
            unsafe { libc::atexit(stop_all_at_exit) };
        });
        lock(registry()).push(inner.clone());
        PgCluster { inner }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster")
            .field("root", &self.inner.root)
            .field("port", &self.inner.port)
            .field("ephemeral", &self.inner.ephemeral)
            .finish()
    }
}

impl Inner {
    fn stop(&self) {
        let mut state = lock(&self.state);
        let Some(mut child) = state.child.take() else {
            return;
        };
        terminate(&mut child);
        if self.ephemeral {
            remove_dir_all_retry(&self.root);
        }
        state.lock = None;
    }
}

fn registry() -> &'static Mutex<Vec<Arc<Inner>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Arc<Inner>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

extern "C" fn stop_all_at_exit() {
    // Unwinding out of an extern "C" fn aborts; never let a panic escape.
    let _ = std::panic::catch_unwind(|| {
        let clusters = std::mem::take(&mut *lock(registry()));
        for cluster in clusters {
            cluster.stop();
        }
    });
}

/// Poison-tolerant lock: a panicking test must not wedge cleanup.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Layout {
    root: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
            data: root.join("data"),
            sock: root.join("sock"),
            log: root.join("postgres.log"),
        }
    }
}

/// OS user the server processes run as (only set when we are root).
#[derive(Clone)]
struct RunAs {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

struct Env {
    bin: PathBuf,
    run_as: Option<RunAs>,
}

impl Env {
    fn detect() -> Result<Self> {
        let bin = std::env::var_os(PG_BIN_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
        if !bin.join("postgres").is_file() {
            bail!(
                "PostgreSQL binaries not found in {} (set {PG_BIN_ENV} to the directory containing initdb/postgres)",
                bin.display()
            );
        }
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 { Some(lookup_user(PG_OS_USER)?) } else { None };
        Ok(Env { bin, run_as })
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Create `dir` (0700) and hand it to the server's OS user.
    fn prepare_dir(&self, dir: &Path) -> Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        if let Some(r) = &self.run_as {
            std::os::unix::fs::chown(dir, Some(r.uid), Some(r.gid))
                .with_context(|| format!("chown {} to {PG_OS_USER}", dir.display()))?;
        }
        Ok(())
    }

    fn log_file(&self, layout: &Layout) -> Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&layout.log)
            .with_context(|| format!("opening {}", layout.log.display()))?;
        if let Some(r) = &self.run_as {
            let _ = std::os::unix::fs::chown(&layout.log, Some(r.uid), Some(r.gid));
        }
        Ok(file)
    }

    /// Command with our standard setup: runs in the cluster root (the caller's
    /// cwd may not be readable by the `postgres` user), output to the log.
    fn command(&self, program: PathBuf, layout: &Layout) -> Result<Command> {
        let log = self.log_file(layout)?;
        let mut cmd = Command::new(program);
        cmd.current_dir(&layout.root).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        Ok(cmd)
    }

    fn initdb(&self, layout: &Layout, data: &Path, ephemeral: bool) -> Result<()> {
        let locale = if locale_available(c"C.UTF-8") { "C.UTF-8" } else { "C" };
        let mut cmd = self.command(self.tool("initdb"), layout)?;
        cmd.arg("-D")
            .arg(data)
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .arg(format!("--locale={locale}"))
            .arg("--no-instructions");
        if ephemeral {
            cmd.arg("--no-sync");
        }
        set_credentials(&mut cmd, self.run_as.clone(), None);
        let offset = file_len(&layout.log);
        let status = cmd.status().with_context(|| format!("running {}", self.tool("initdb").display()))?;
        if !status.success() {
            bail!(
                "initdb failed ({status}) for {}{}\n--- {} ---\n{}",
                data.display(),
                self.access_hint(&layout.root),
                layout.log.display(),
                log_tail(&layout.log, offset)
            );
        }
        Ok(())
    }

    /// Start the server and wait until it accepts connections; retries on a
    /// different port if ours was taken between probing and binding.
    fn start_server(
        &self,
        layout: &Layout,
        ephemeral: bool,
        mut preferred_port: Option<u16>,
        extra: &[String],
    ) -> Result<(Child, u16)> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = pick_port(preferred_port.take())?;
            let offset = file_len(&layout.log);
            let mut child = self.spawn_server(layout, port, ephemeral, extra)?;
            match wait_ready(&self.bin, &mut child, &layout.data, port) {
                Ok(()) => return Ok((child, port)),
                Err(e) => {
                    terminate(&mut child);
                    let tail = log_tail(&layout.log, offset);
                    let err =
                        anyhow!("{e}{}\n--- {} ---\n{tail}", self.access_hint(&layout.root), layout.log.display());
                    let port_conflict = tail.contains("could not bind")
                        || tail.contains("Address already in use")
                        || tail.contains("could not create any TCP/IP sockets");
                    if !port_conflict {
                        return Err(err);
                    }
                    last_err = Some(err);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("could not start PostgreSQL")))
    }

    fn spawn_server(&self, layout: &Layout, port: u16, ephemeral: bool, extra: &[String]) -> Result<Child> {
        let mut cmd = self.command(self.tool("postgres"), layout)?;
        cmd.arg("-D").arg(&layout.data);
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_string(),
            format!("port={port}"),
            "max_connections=200".to_string(),
            "shared_buffers=128MB".to_string(),
        ];
        // sun_path is 108 bytes; postgres refuses to start if the socket path
        // does not fit, and we only need TCP, so drop the socket instead.
        let sock = layout.sock.to_string_lossy();
        if sock.len() + "/.s.PGSQL.65535.lock".len() < 108 {
            settings.push(format!("unix_socket_directories=\"{}\"", sock.replace('"', "\"\"")));
        } else {
            settings.push("unix_socket_directories=".to_string());
        }
        if ephemeral {
            settings.extend(["fsync=off", "synchronous_commit=off", "full_page_writes=off"].map(String::from));
        }
        settings.extend(extra.iter().cloned());
        for s in settings {
            cmd.arg("-c").arg(s);
        }
        // Ephemeral data is worthless: die immediately (SIGQUIT). Persistent
        // data gets a fast shutdown (SIGINT) to avoid crash recovery next time.
        let death_signal = if ephemeral { libc::SIGQUIT } else { libc::SIGINT };
        set_credentials(&mut cmd, self.run_as.clone(), Some(death_signal));
        spawn_on_keeper_thread(cmd).with_context(|| format!("spawning {}", self.tool("postgres").display()))
    }

    /// On failure as root, explain the most likely cause: the `postgres` user
    /// cannot reach the cluster directory.
    fn access_hint(&self, root: &Path) -> String {
        match self.run_as.as_ref().and_then(|r| untraversable_ancestor(root, r)) {
            Some(dir) => format!(
                "\n(note: running as root, so the server runs as OS user '{PG_OS_USER}', \
                 which cannot traverse {}; use a directory it can reach)",
                dir.display()
            ),
            None => String::new(),
        }
    }
}

/// The first existing ancestor of `path` that `user` may not traverse (no
/// search permission for it), if any.
fn untraversable_ancestor(path: &Path, user: &RunAs) -> Option<PathBuf> {
    for dir in path.ancestors().skip(1) {
        let Ok(md) = fs::metadata(dir) else { continue };
        let mode = md.mode();
        let ok = if md.uid() == user.uid {
            mode & 0o100 != 0
        } else if md.gid() == user.gid || user.groups.contains(&md.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Some(dir.to_path_buf());
        }
    }
    None
}

/// Where the persistent cluster meant for `preferred` can live: there,
/// unless the server's OS user (`postgres`, when we run as root) cannot
/// reach it, as under root's home directory (mode 0700 on Debian); then in
/// a directory of its own under `/var/tmp`, named after `preferred`, so
/// the same checkout always finds its data again.
pub fn persistent_dir_for(preferred: &Path) -> Result<PathBuf> {
    let env = Env::detect()?;
    Ok(reachable_dir(preferred, env.run_as.as_ref(), Path::new(FALLBACK_PARENT)))
}

const FALLBACK_PARENT: &str = "/var/tmp";

fn reachable_dir(preferred: &Path, run_as: Option<&RunAs>, fallback_parent: &Path) -> PathBuf {
    let absolute = std::path::absolute(preferred).unwrap_or_else(|_| preferred.to_path_buf());
    match run_as {
        Some(user) if untraversable_ancestor(&absolute, user).is_some() => {
            use std::hash::{DefaultHasher, Hash, Hasher};
            // A stable name: DefaultHasher::new() has fixed keys.
            let mut h = DefaultHasher::new();
            absolute.hash(&mut h);
            fallback_parent.join(format!("tavle-pg-{:016x}", h.finish()))
        }
        _ => preferred.to_path_buf(),
    }
}

/// Drop privileges (root only) and set the parent-death signal in the child.
fn set_credentials(cmd: &mut Command, run_as: Option<RunAs>, death_signal: Option<libc::c_int>) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let pre_exec = move || -> io::Result<()> {
        // Only async-signal-safe syscalls here (we are between fork and exec);
        // the group list was resolved in the parent for that reason.
        // SAFETY: plain syscalls on valid pointers/values.
        unsafe {
            if let Some(r) = &run_as {
                // Order matters: supplementary groups and gid need privileges
                // that setuid gives up.
                if libc::setgroups(r.groups.len(), r.groups.as_ptr()) != 0
                    || libc::setgid(r.gid) != 0
                    || libc::setuid(r.uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(sig) = death_signal {
                // Must come after setuid: credential changes clear PDEATHSIG.
                if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl; then no signal comes.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only performs async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(pre_exec);
    }
}

/// Spawns a helper process (e.g. `spin up` for tests) that receives SIGTERM
/// when this process ends, however it ends.
pub fn spawn_tied_to_this_process(mut cmd: Command) -> io::Result<Child> {
    set_credentials(&mut cmd, None, Some(libc::SIGTERM));
    spawn_on_keeper_thread(cmd)
}

/// PDEATHSIG fires when the *thread* that forked exits, not the process, so
/// servers are forked from one thread that lives as long as the process
/// (test threads come and go).
fn spawn_on_keeper_thread(mut cmd: Command) -> io::Result<Child> {
    type Job = Box<dyn FnOnce() + Send>;
    static KEEPER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let jobs = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tavle-pg-keeper".into())
            .spawn(move || rx.into_iter().for_each(|job| job()))
            .expect("failed to spawn PostgreSQL keeper thread");
        tx
    });
    let (tx, rx) = mpsc::sync_channel(1);
    let gone = || io::Error::other("PostgreSQL keeper thread is gone");
    jobs.send(Box::new(move || {
        let _ = tx.send(cmd.spawn());
    }))
    .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

fn wait_ready(bin: &Path, child: &mut Child, data: &Path, port: u16) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let addr = SocketAddr::from((LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("PostgreSQL exited during startup ({status})");
        }
        // postmaster.pid naming our child as "ready" proves that the server on
        // this port is ours and not someone who grabbed the port meanwhile.
        if pid_file_ready(data, child.id(), port)
            && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            && pg_isready(bin, port)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("PostgreSQL did not become ready on 127.0.0.1:{port} within {}s", READY_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// postmaster.pid: line 1 pid, line 4 port, line 8 status ("ready" once
/// accepting connections); this is what `pg_ctl start -w` checks too.
fn pid_file_ready(data: &Path, pid: u32, port: u16) -> bool {
    let Ok(text) = fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.len() >= 8 && lines[0] == pid.to_string() && lines[3] == port.to_string() && lines[7] == "ready"
}

fn pg_isready(bin: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-t", "2"])
        .arg("-p")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// SIGINT (fast shutdown), then SIGKILL after STOP_TIMEOUT; always reaps.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: the child is unreaped, so its pid cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn pick_port(preferred: Option<u16>) -> Result<u16> {
    if let Some(port) = preferred {
        if TcpListener::bind((LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    let listener = TcpListener::bind((LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Remove `postmaster.pid` left by a crashed run. A live postmaster on this
/// data dir is an error; a reused pid (common in containers) is not.
fn clear_stale_pid_file(data: &Path) -> Result<()> {
    let path = data.join("postmaster.pid");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let pid: libc::pid_t = text.lines().next().unwrap_or("").trim().parse().unwrap_or(0);
    // A previous owner that just died may have left a postmaster that is
    // still shutting down (PDEATHSIG); give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && is_postmaster_for(pid, data) {
        if Instant::now() >= deadline {
            bail!("a PostgreSQL server (pid {pid}) is still running on {}; stop it first", data.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing stale {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Alive and not a zombie (an orphaned postmaster may never be reaped when
/// PID 1 of a container does not reap).
fn pid_alive(pid: libc::pid_t) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence/permission.
    if unsafe { libc::kill(pid, 0) } != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// The postmaster chdirs into its data directory, so compare cwd; fall back
/// to the command name if /proc/PID/cwd is not readable (other user).
fn is_postmaster_for(pid: libc::pid_t, data: &Path) -> bool {
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => data.canonicalize().is_ok_and(|d| d == cwd),
        Err(_) => fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == "postgres").unwrap_or(true),
    }
}

/// flock `root/.lock`; `Ok(None)` if another process holds it. The fd is
/// CLOEXEC (std default), so server children do not inherit the lock.
fn lock_dir(root: &Path) -> Result<Option<File>> {
    let path = root.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: valid fd owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(err).with_context(|| format!("locking {}", path.display()))
    }
}

fn create_temp_root(tmp: &Path) -> Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name =
            format!("{TEMP_PREFIX}{}-{}-{nanos:08x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let root = tmp.join(name);
        match fs::DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
        }
        return match lock_dir(&root) {
            Ok(Some(lock)) => Ok((root, lock)),
            Ok(None) => Err(anyhow!("fresh temp dir {} is locked", root.display())),
            Err(e) => {
                let _ = fs::remove_dir_all(&root);
                Err(e)
            }
        };
    }
}

/// Remove ephemeral clusters whose owner died without cleaning up (SIGKILL,
/// abort): their `.lock` is no longer held. Best effort.
fn sweep_abandoned_temp_dirs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        let old_enough = md.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= SWEEP_MIN_AGE);
        if !md.is_dir() || !old_enough {
            continue;
        }
        // Only lock files that exist: a dir without one is not ours to judge.
        let Ok(file) = File::open(path.join(".lock")) else {
            continue;
        };
        // SAFETY: valid fd owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let data = path.join("data");
        let pid = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0);
        if pid_alive(pid) && is_postmaster_for(pid, &data) {
            continue;
        }
        let _ = fs::remove_dir_all(&path);
    }
}

/// After a SIGKILL, orphaned backends may still be writing for a moment.
fn remove_dir_all_retry(path: &Path) {
    for _ in 0..5 {
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => std::thread::sleep(Duration::from_millis(100)),
            _ => return,
        }
    }
}

fn lookup_user(name: &str) -> Result<RunAs> {
    let cname = CString::new(name)?;
    // getpwnam_r rather than getpwnam: the latter uses a static buffer.
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the given buffer length.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        bail!(
            "running as root requires an OS user '{name}' for the PostgreSQL server \
             (PostgreSQL refuses to run as root), but it was not found"
        );
    }
    let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
    // Resolved here, not in pre_exec: initgroups reads /etc/group and
    // allocates, which is not safe between fork and exec.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            break;
        }
        let wanted = (n as usize).max(groups.len() * 2);
        groups.resize(wanted, 0);
    }
    Ok(RunAs { uid, gid, groups })
}

fn locale_available(name: &CStr) -> bool {
    // SAFETY: newlocale with a null base creates a fresh locale or fails.
    let loc = unsafe { libc::newlocale(libc::LC_ALL_MASK, name.as_ptr(), std::ptr::null_mut()) };
    if loc.is_null() {
        return false;
    }
    // SAFETY: `loc` was returned by newlocale.
    unsafe { libc::freelocale(loc) };
    true
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Last lines of the log written since `offset` (i.e. by this attempt).
fn log_tail(path: &Path, offset: u64) -> String {
    const MAX_LINES: usize = 40;
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let start = offset.max(file_len(path).saturating_sub(64 * 1024));
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(start)).is_ok() && f.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(MAX_LINES)..].join("\n");
    if tail.is_empty() {
        "(log is empty)".to_string()
    } else {
        tail
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_dir_the_server_user_cannot_reach_moves_under_var_tmp() {
        use std::os::unix::fs::PermissionsExt;
        let base = unique_temp("reach");
        let closed = base.join("home");
        fs::create_dir_all(closed.join("checkout")).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        // A user that is neither the owner nor in the group: "other" bits count.
        let stranger = RunAs { uid: 54321, gid: 54321, groups: Vec::new() };
        let preferred = closed.join("checkout/.tavle/pg");
        let moved = reachable_dir(&preferred, Some(&stranger), Path::new("/var/tmp"));
        assert!(moved.starts_with("/var/tmp") && moved != preferred, "{}", moved.display());
        assert_eq!(moved, reachable_dir(&preferred, Some(&stranger), Path::new("/var/tmp")), "stable");
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(reachable_dir(&preferred, Some(&stranger), Path::new("/var/tmp")), preferred);
        assert_eq!(reachable_dir(&preferred, None, Path::new("/var/tmp")), preferred, "not root: as it is");
        let _ = fs::remove_dir_all(&base);
    }

    const PSQL: &str = "/usr/bin/psql";
    const CHILD_ENV: &str = "TAVLE_PGCLUSTER_TEST_CHILD";

    fn bin() -> PathBuf {
        std::env::var_os(PG_BIN_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN))
    }

    fn accepts_tcp(port: u16) -> bool {
        TcpStream::connect_timeout(&(LOCALHOST, port).into(), Duration::from_secs(1)).is_ok()
    }

    fn unique_temp(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        std::env::temp_dir().join(format!(
            "tavle-pgtest-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn psql(port: u16, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(PSQL)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U"])
            .args(["postgres", "-d", db, "-c", sql, "-p"])
            .arg(port.to_string())
            .output()?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        f()
    }

    #[test]
    fn ephemeral_starts_serves_and_stops() {
        let pg = PgCluster::start_ephemeral().expect("start ephemeral cluster");
        let port = pg.port();
        let root = pg.inner.root.clone();
        assert!(root.starts_with(std::env::temp_dir()));
        assert!(accepts_tcp(port));
        assert!(pg_isready(&bin(), port));
        assert_eq!(pg.url("app db"), format!("postgres://postgres@127.0.0.1:{port}/app%20db"));
        assert_eq!(psql(port, "postgres", "show fsync").unwrap(), "off");
        assert_eq!(psql(port, "postgres", "show listen_addresses").unwrap(), "127.0.0.1");
        assert_eq!(psql(port, "postgres", "show server_encoding").unwrap(), "UTF8");

        pg.stop();
        assert!(!root.exists(), "ephemeral dir should be removed on stop");
        assert!(!pg_isready(&bin(), port));
        pg.stop(); // idempotent
        drop(pg); // Drop after stop is a no-op
    }

    #[test]
    fn ephemeral_takes_extra_settings() {
        let pg = PgCluster::start_ephemeral_with(&["work_mem=7MB".to_string(), "fsync=on".to_string()]).unwrap();
        assert_eq!(psql(pg.port(), "postgres", "show work_mem").unwrap(), "7MB");
        assert_eq!(psql(pg.port(), "postgres", "show fsync").unwrap(), "on", "extra settings come last and win");
        assert_eq!(psql(pg.port(), "postgres", "show listen_addresses").unwrap(), "127.0.0.1");
    }

    #[test]
    fn ephemeral_clusters_run_in_parallel() {
        let a = PgCluster::start_ephemeral().unwrap();
        let b = PgCluster::start_ephemeral().unwrap();
        assert_ne!(a.port(), b.port());
        assert_eq!(psql(a.port(), "postgres", "select 1").unwrap(), "1");
        assert_eq!(psql(b.port(), "postgres", "select 2").unwrap(), "2");
        let (ra, rb) = (a.inner.root.clone(), b.inner.root.clone());
        drop(a);
        drop(b);
        assert!(!ra.exists() && !rb.exists());
    }

    #[test]
    fn persistent_reuses_data_and_clears_stale_pid_file() {
        let dir = unique_temp("persistent");
        let pg = PgCluster::start_persistent(&dir).expect("first start");
        assert_eq!(psql(pg.port(), "postgres", "show fsync").unwrap(), "on");
        let status = Command::new(bin().join("createdb"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(pg.port().to_string())
            .arg("marker")
            .status()
            .unwrap();
        assert!(status.success());
        // A second owner of the same directory is refused while the first runs.
        let err = PgCluster::start_persistent(&dir).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err:#}");
        let first_port = pg.port();
        drop(pg);
        assert!(dir.join("data/PG_VERSION").exists(), "persistent data kept");

        // Simulate a crash: postmaster.pid pointing at a dead process.
        let mut dead = Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        fs::write(dir.join("data/postmaster.pid"), format!("{dead_pid}\n{}\n", dir.join("data").display())).unwrap();

        let pg = PgCluster::start_persistent(&dir).expect("second start");
        assert_eq!(pg.port(), first_port, "previous port is preferred");
        assert_eq!(psql(pg.port(), "marker", "select 42").unwrap(), "42");
        pg.stop();
        assert!(dir.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sweep_removes_only_abandoned_old_dirs() {
        let tmp = unique_temp("sweep");
        fs::create_dir_all(&tmp).unwrap();
        let make = |name: &str, age: Duration| {
            let dir = tmp.join(format!("{TEMP_PREFIX}{name}"));
            fs::create_dir(&dir).unwrap();
            File::create(dir.join(".lock")).unwrap();
            File::open(&dir).unwrap().set_modified(SystemTime::now() - age).unwrap();
            dir
        };
        let abandoned = make("abandoned", SWEEP_MIN_AGE * 2);
        let young = make("young", Duration::ZERO);
        let owned = make("owned", SWEEP_MIN_AGE * 2);
        let _held = lock_dir(&owned).unwrap().unwrap();
        sweep_abandoned_temp_dirs(&tmp);
        assert!(!abandoned.exists());
        assert!(young.exists() && owned.exists());
        fs::remove_dir_all(&tmp).unwrap();
    }

    /// Re-run this test binary with only `helper` selected, in a child process.
    fn run_helper(mode: &str) -> (String, std::process::ExitStatus) {
        let path = module_path!().split_once("::").map_or("", |(_, p)| p);
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
            .arg(format!("{path}::helper"))
            .env(CHILD_ENV, mode)
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), out.status)
    }

    fn parse_helper(stdout: &str) -> (u16, PathBuf, libc::pid_t) {
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("CLUSTER ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no CLUSTER line in helper output:\n{stdout}"));
        let mut parts = line.split(' ');
        let port = parts.next().unwrap().parse().unwrap();
        let pid = parts.next().unwrap().parse().unwrap();
        let root = PathBuf::from(parts.next().unwrap());
        (port, root, pid)
    }

    #[test]
    fn static_cluster_is_stopped_at_exit() {
        let (stdout, status) = run_helper("static");
        assert!(status.success(), "{stdout}");
        let (port, root, pid) = parse_helper(&stdout);
        assert!(!pid_alive(pid), "postmaster must be gone after exit");
        assert!(!root.exists(), "atexit hook removes the ephemeral dir");
        assert!(!pg_isready(&bin(), port));
    }

    #[test]
    fn killed_owner_takes_server_down() {
        let (stdout, status) = run_helper("sigkill");
        assert!(!status.success());
        let (port, root, pid) = parse_helper(&stdout);
        assert!(wait_until(Duration::from_secs(10), || !pid_alive(pid)), "PDEATHSIG should stop postmaster {pid}");
        assert!(!pg_isready(&bin(), port));
        let _ = fs::remove_dir_all(root);
    }

    /// Child side of the two tests above; a no-op unless run by them.
    #[test]
    #[ignore]
    fn helper() {
        let Ok(mode) = std::env::var(CHILD_ENV) else {
            return;
        };
        static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
        // Start from a short-lived thread to prove that the keeper thread,
        // not the caller's thread, is the server's parent.
        let pg = std::thread::spawn(|| CLUSTER.get_or_init(|| PgCluster::start_ephemeral().unwrap())).join().unwrap();
        let pid = pg.inner.state.lock().unwrap().child.as_ref().unwrap().id();
        println!("CLUSTER {} {pid} {}", pg.port(), pg.inner.root.display());
        std::thread::sleep(Duration::from_millis(300));
        assert!(pg_isready(&bin(), pg.port()), "server outlives the starting thread");
        if mode == "sigkill" {
            // SAFETY: killing ourselves; nothing to clean up.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        // "static": return; libtest then calls process::exit without Drop.
    }
}
