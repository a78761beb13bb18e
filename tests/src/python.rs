//! The PyPI `standardwebhooks` package as an independent webhook signer
//! (`tests/python/sign_webhook.py`), so that the project's verification is
//! not only checked against its own signing code.
//!
//! The package is installed into a virtual environment at `target/pyenv`
//! (created on first use from `tests/python/requirements.txt`; needs
//! `python3` with `venv` and access to PyPI or a configured mirror). If that
//! fails, the tests fail: they never pass or skip without the package.

use crate::project_root;
use serde_json::json;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// How long to wait for another test process that is installing the package.
const LOCK_WAIT: Duration = Duration::from_secs(10 * 60);
/// A lock file older than this is left over from a crashed process.
const LOCK_STALE: Duration = Duration::from_secs(15 * 60);

fn requirements_file() -> PathBuf {
    project_root().join("tests/python/requirements.txt")
}

fn venv_dir() -> PathBuf {
    project_root().join("target/pyenv")
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts/python.exe")
    } else {
        venv.join("bin/python")
    }
}

/// Records which requirements the environment was installed from, so that a
/// changed pin reinstalls.
fn stamp_file(venv: &Path) -> PathBuf {
    venv.join(".tavle-requirements")
}

fn describe(output: &Output) -> String {
    format!(
        "exit status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The installed package version, if the environment is complete and was
/// installed from exactly these requirements.
fn installed_version(venv: &Path, requirements: &str) -> Option<String> {
    if fs::read_to_string(stamp_file(venv)).ok()? != requirements {
        return None;
    }
    // -I: ignore PYTHONPATH and user site-packages, so only the venv's package can be imported.
    let output = Command::new(venv_python(venv))
        .args([
            "-I",
            "-c",
            "import importlib.metadata as m, standardwebhooks.webhooks; print(m.version('standardwebhooks'))",
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// An exclusive lock between test processes: a file created with
/// `create_new`, removed on drop (also when the holder panics).
struct InstallLock {
    path: PathBuf,
}

impl InstallLock {
    fn acquire(path: PathBuf) -> InstallLock {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let _ = writeln!(file, "{}", std::process::id());
                    return InstallLock { path };
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if lock_is_stale(&path) {
                        eprintln!("removing stale lock file {}", path.display());
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "waited {LOCK_WAIT:?} for another process installing the Python test environment; \
                         if none is running, remove {}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot create lock file {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Left by a process that no longer runs (where /proc tells), or simply old.
fn lock_is_stale(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else { return false };
    let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
    if age > LOCK_STALE {
        return true;
    }
    // A lock this young may still be empty (its holder is writing the pid).
    let pid = fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if Path::new("/proc/self").exists() => !Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

fn run(what: &str, command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", command.get_program()));
    assert!(
        output.status.success(),
        "{what} failed; the independent-signer tests need python3 (with venv) and access to PyPI \
         (or PIP_INDEX_URL / PIP_FIND_LINKS pointing at a mirror)\n{}",
        describe(&output)
    );
}

/// Creates (once) the virtual environment with the PyPI package; returns its Python.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = venv_dir();
        let requirements_path = requirements_file();
        let requirements = fs::read_to_string(&requirements_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", requirements_path.display()));
        if installed_version(&venv, &requirements).is_none() {
            let parent = venv.parent().expect("target/pyenv has a parent");
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
            let _lock = InstallLock::acquire(parent.join("pyenv.lock"));
            // Another process may have finished the installation while we waited.
            if installed_version(&venv, &requirements).is_none() {
                eprintln!("installing {} into {}", requirements_path.display(), venv.display());
                let _ = fs::remove_file(stamp_file(&venv));
                run("python3 -m venv", Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv));
                run(
                    "pip install -r tests/python/requirements.txt",
                    Command::new(venv_python(&venv))
                        .args(["-I", "-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
                        .args(["--require-hashes", "-r"])
                        .arg(&requirements_path),
                );
                fs::write(stamp_file(&venv), &requirements).expect("writing the requirements stamp");
            }
        }
        let version = installed_version(&venv, &requirements).unwrap_or_else(|| {
            panic!("the Python package standardwebhooks is not importable from {} after installing it", venv.display())
        });
        eprintln!("signing with PyPI standardwebhooks {version} from {}", venv.display());
        venv_python(&venv)
    })
}

/// The `webhook-signature` header value computed by the PyPI package.
pub fn python_sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let script = project_root().join("tests/python/sign_webhook.py");
    let mut child = Command::new(python())
        .arg("-I")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let input = json!({"secret": secret, "id": id, "timestamp": timestamp, "body": body});
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).expect("writing to sign_webhook.py");
    let output = child.wait_with_output().expect("waiting for sign_webhook.py");
    assert!(output.status.success(), "sign_webhook.py failed\n{}", describe(&output));
    let signature = String::from_utf8(output.stdout).expect("sign_webhook.py prints ASCII").trim().to_owned();
    assert!(signature.starts_with("v1,") && signature.len() > 3, "unexpected signature {signature:?}");
    signature
}
