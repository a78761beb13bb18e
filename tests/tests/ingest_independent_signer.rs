//! Webhooks signed by an independent Standard Webhooks implementation — the
//! PyPI `standardwebhooks` package, through `tests/python/sign_webhook.py` —
//! verify in the ingest component, so the project's verification is not only
//! checked against its own signing code.
//!
//! The package is installed into a virtual environment at `target/pyenv`
//! (created on first use from `tests/python/requirements.txt`; needs
//! `python3` with `venv` and access to PyPI or a configured mirror). If that
//! fails, the tests fail: they never pass or skip without the package.

use http::{header, Method, Request};
use serde_json::json;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};
use tavle_tests::{project_root, synthetic_id, unix_now, TestApp, TestResponse};

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
fn python_sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
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

async fn post(app: &TestApp, path: &str, id: &str, timestamp: i64, signature: &str, body: &[u8]) -> TestResponse {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .unwrap();
    app.call(req).await
}

#[tokio::test]
async fn rosters_signed_by_the_pypi_package_verify_and_tampering_or_staleness_is_rejected() {
    let app = TestApp::spawn().await;
    let staff = app.seed_tenant("bergen").await;
    let session = app.login(&staff).await;
    let source = app.create_source(&session, "sas").await;
    let path = format!("/ingest/{}/roster", source.id);
    let body = json!({
        "school": {"external_id": "s1", "name": "Skole"},
        "groups": [{"external_id": "5A", "name": "5A", "year_level": 5}],
        "pupils": [{
            "identity_number": synthetic_id(1),
            "given_name": "Åse",
            "family_name": "Ødegård",
            "year_level": 5,
            "groups": ["5A"],
        }],
    })
    .to_string();

    // Signed by the PyPI package: accepted and applied.
    let now = unix_now();
    let signature = python_sign(&source.secret, "msg_py_1", now, &body);
    let r = post(&app, &path, "msg_py_1", now, &signature, body.as_bytes()).await;
    assert_eq!(r.status, 200, "a roster signed by the PyPI package was not accepted: {}", r.text());
    assert_eq!(app.count("SELECT count(*) FROM pupils").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM webhook_deliveries").await, 1);
    let before = app.snapshot(true).await;

    // The same signature over a body with one byte changed ("Skole" -> "Skola").
    let at = body.find("Skole").expect("the body names the school") + "Skol".len();
    let mut tampered = body.clone().into_bytes();
    tampered[at] = b'a';
    let now = unix_now();
    let signature = python_sign(&source.secret, "msg_py_2", now, &body);
    let r = post(&app, &path, "msg_py_2", now, &signature, &tampered).await;
    r.assert_problem(401, "invalid-signature");

    // Correctly signed by the PyPI package, but 6 minutes old.
    let stale = unix_now() - 6 * 60;
    let signature = python_sign(&source.secret, "msg_py_3", stale, &body);
    let r = post(&app, &path, "msg_py_3", stale, &signature, body.as_bytes()).await;
    let problem = r.assert_problem(401, "invalid-signature");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("old")), "not rejected as stale: {problem}");

    assert_eq!(app.snapshot(true).await, before, "a rejected delivery changed the database");
    assert_eq!(app.count("SELECT count(*) FROM pupils").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM webhook_deliveries").await, 1);
}

#[test]
fn the_pypi_package_and_the_rust_crate_sign_identically() {
    // The example of the Standard Webhooks specification, then an own secret
    // with a body of non-ASCII text (signed as UTF-8 by both).
    let spec_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let spec_body = r#"{"test": 2432232314}"#;
    let spec_signature = python_sign(spec_secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, spec_body);
    assert_eq!(spec_signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");

    let cases = [
        (spec_secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, spec_body),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            1_700_000_000,
            r#"{"school":{"external_id":"s1","name":"Skole"},"pupils":[{"given_name":"Åse","family_name":"Ødegård"}]}"#,
        ),
    ];
    for (secret, id, timestamp, body) in cases {
        let rust = standardwebhooks::Webhook::new(secret).unwrap().sign(id, timestamp, body.as_bytes()).unwrap();
        assert_eq!(python_sign(secret, id, timestamp, body), rust, "signatures differ for {id}");
    }
}
