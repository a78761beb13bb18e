//! Real Spin in the test loop: `spin up` on the release `.wasm` files and the
//! project's own `spin.toml`, its variables as `SPIN_VARIABLE_*`, listening on
//! 127.0.0.1 and pointed at the harness's throwaway PostgreSQL.
//!
//! The Spin CLI is `$SPIN_BIN`, else `spin` on `PATH`, else the Spin 4.0.2
//! build of this machine type at `../shared/tools/spin/spin` beside the
//! project. Without one the tests fail: they never pass or skip without Spin.

use crate::http::HttpClient;
use crate::project_root;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The Spin CLI to use (see the module docs).
pub fn spin_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SPIN_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("spin");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let bundled = project_root().join("../shared/tools/spin/spin");
    assert!(
        bundled.is_file(),
        "no Spin CLI: set SPIN_BIN, put `spin` (Spin 4) on PATH, or provide {}",
        bundled.display()
    );
    bundled
}

/// The components' release builds, made fresh once per test process with
/// the build commands of spin.toml (cargo makes this a no-op when nothing
/// changed), so Spin never runs stale `.wasm` files.
pub fn ensure_components_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(project_root().join("spin.toml")).unwrap()).unwrap();
        for (name, component) in manifest["component"].as_table().expect("components") {
            let command = component["build"]["command"].as_str().expect("every component has a build command");
            let mut words = command.split_whitespace();
            let status = Command::new(words.next().unwrap())
                .args(words)
                .arg("--locked")
                .current_dir(project_root())
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("running `{command}`: {e}"));
            assert!(status.success(), "building component {name} with `{command}` failed");
            let source = project_root().join(component["source"].as_str().unwrap());
            assert!(source.is_file(), "component {name}: {} is missing after its build", source.display());
        }
    });
}

/// A manifest for tests: the project's spin.toml (component sources made
/// absolute, build sections dropped) plus the `probe` fixture component
/// (`tests/fixtures/db-probe`) on `/probe/...`, which shares `db_url` and so
/// Spin's connection pool with the real components. Written once per process.
pub fn manifest_with_probe() -> PathBuf {
    static MANIFEST: OnceLock<PathBuf> = OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            ensure_components_built();
            let command = "cargo build --target wasm32-wasip2 --release -p tavle-db-probe --locked";
            let mut words = command.split_whitespace();
            let status = Command::new(words.next().unwrap())
                .args(words)
                .current_dir(project_root())
                .stdin(Stdio::null())
                .status()
                .expect("running cargo");
            assert!(status.success(), "`{command}` failed");
            let probe = project_root().join("target/wasm32-wasip2/release/tavle_db_probe.wasm");
            let mut manifest: toml::Table =
                toml::from_str(&std::fs::read_to_string(project_root().join("spin.toml")).unwrap()).unwrap();
            let components = manifest["component"].as_table_mut().unwrap();
            for (_, component) in components.iter_mut() {
                let c = component.as_table_mut().unwrap();
                let source = project_root().join(c["source"].as_str().unwrap());
                c.insert("source".into(), source.to_string_lossy().into_owned().into());
                c.remove("build");
            }
            let probe_component: toml::Table = toml::from_str(&format!(
                "source = {:?}\nallowed_outbound_hosts = [\"postgres://{{{{ db_host }}}}\"]\n\
                 [variables]\ndb_url = \"{{{{ db_url }}}}\"\n",
                probe.to_string_lossy()
            ))
            .unwrap();
            components.insert("probe".into(), probe_component.into());
            let triggers = manifest["trigger"]["http"].as_array_mut().unwrap();
            let route: toml::Table = toml::from_str("route = \"/probe/...\"\ncomponent = \"probe\"").unwrap();
            triggers.push(route.into());
            let dir = std::env::temp_dir().join(format!("tavle-probe-app-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("spin.toml");
            std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
            path
        })
        .clone()
}

/// Peak resident memory (`VmHWM`) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// A running `spin up`, stopped on drop (and when the test process ends).
pub struct SpinApp {
    child: Child,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
    /// Time from spawning `spin up` to its first answered request.
    pub startup: Duration,
    /// Latency of that first request.
    pub first_request: Duration,
}

impl SpinApp {
    /// Starts Spin on `manifest` with these application variables.
    pub fn start(manifest: &Path, variables: &HashMap<String, String>) -> SpinApp {
        SpinApp::start_with_env(manifest, variables, &[])
    }

    /// As [`SpinApp::start`], with extra environment variables for `spin up`
    /// itself (e.g. `SSL_CERT_FILE`, the trust store of Spin's TLS clients).
    pub fn start_with_env(manifest: &Path, variables: &HashMap<String, String>, env: &[(&str, &str)]) -> SpinApp {
        ensure_components_built();
        for attempt in 0.. {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let state_dir = std::env::temp_dir().join(format!("tavle-spin-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&state_dir).unwrap();
            let mut cmd = Command::new(spin_binary());
            cmd.arg("up")
                .arg("--from")
                .arg(manifest)
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--state-dir")
                .arg(&state_dir)
                .current_dir(manifest.parent().unwrap())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(state_dir.join("spin.out")).unwrap())
                .stderr(std::fs::File::create(state_dir.join("spin.err")).unwrap());
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                    cmd.env_remove(k);
                }
            }
            for (k, v) in variables {
                cmd.env(format!("SPIN_VARIABLE_{}", k.to_uppercase()), v);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let started = Instant::now();
            let child = tavle_host::pgcluster::spawn_tied_to_this_process(cmd).expect("spawning spin up");
            let mut app = SpinApp { child, addr, state_dir, startup: Duration::ZERO, first_request: Duration::ZERO };
            match app.wait_ready(started) {
                Ok(()) => return app,
                Err(e) if attempt < 3 && e.contains("address") => {
                    eprintln!("spin up on {addr} failed ({e}); retrying on another port");
                }
                Err(e) => panic!("spin up did not start: {e}\n{}", app.logs()),
            }
        }
        unreachable!()
    }

    /// Spin on the project's own spin.toml.
    pub fn start_project(variables: &HashMap<String, String>) -> SpinApp {
        SpinApp::start(&project_root().join("spin.toml"), variables)
    }

    fn wait_ready(&mut self, started: Instant) -> Result<(), String> {
        let deadline = started + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("spin up exited with {status}: {}", self.spin_output()));
            }
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                let asked = Instant::now();
                // Any answer will do: /auth/me without credentials is a 401.
                if probe(self.addr, Duration::from_secs(60)).is_ok() {
                    self.first_request = asked.elapsed();
                    self.startup = started.elapsed();
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("not listening after 120 s".into())
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.addr)
    }

    /// The process id of `spin up` (for memory measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spin_output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.state_dir.join(f)).unwrap_or_default();
        format!("--- spin stdout ---\n{}\n--- spin stderr ---\n{}", read("spin.out"), read("spin.err"))
    }

    /// Spin's own output and every component's stderr, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = self.spin_output();
        if let Ok(entries) = std::fs::read_dir(self.state_dir.join("logs")) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!("\n--- {} (last lines) ---\n", entry.file_name().to_string_lossy()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// One component's stderr so far (its request log lines).
    pub fn component_stderr(&self, component: &str) -> String {
        std::fs::read_to_string(self.state_dir.join("logs").join(format!("{component}_stderr.txt"))).unwrap_or_default()
    }
}

/// A blocking `GET /auth/me`: Spin is ready once anything answers it.
fn probe(addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /auth/me HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf)?;
    if buf.starts_with(b"HTTP/1.1 ") {
        Ok(())
    } else {
        Err(std::io::Error::other("not HTTP"))
    }
}

impl Drop for SpinApp {
    fn drop(&mut self) {
        // A failing test shows what Spin and the components said.
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // SIGTERM first so Spin can close its database connections.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.state_dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
