//! The operator binary: migrations and tenant creation against a throwaway
//! cluster, with the admin password from stdin or the environment only.

use std::io::Write;
use std::process::{Command, Stdio};
use tavle_host::pgcluster::PgCluster;

fn tavle(url: &str, args: &[&str], stdin: Option<&str>, env_password: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tavle"));
    cmd.args(args).env("DATABASE_URL", url).env_remove("TAVLE_ADMIN_PASSWORD");
    if let Some(p) = env_password {
        cmd.env("TAVLE_ADMIN_PASSWORD", p);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn migrate_and_create_tenants_from_the_command_line() {
    let cluster = PgCluster::start_ephemeral().unwrap();
    let url = cluster.url("postgres");
    let (ok, out) = tavle(&url, &["migrate"], None, None);
    assert!(ok, "{out}");
    let (ok, out) = tavle(&url, &["migrate"], None, None);
    assert!(ok, "migrations are idempotent: {out}");

    let create = ["create-tenant", "--slug", "oslo", "--name", "Oslo kommune", "--admin-username", "admin"];
    let (ok, out) = tavle(&url, &create, Some("Fjord-Lysne-42\n"), None);
    assert!(ok, "{out}");
    assert!(out.contains("tenant oslo created"), "{out}");
    assert!(!out.contains("Fjord-Lysne-42"), "the password is never printed");

    let (ok, out) = tavle(&url, &create, None, Some("Fjord-Lysne-42"));
    assert!(!ok && out.contains("already exists"), "{out}");
    let bergen = ["create-tenant", "--slug", "bergen", "--name", "Bergen", "--admin-username", "admin"];
    let (ok, out) = tavle(&url, &bergen, None, Some("password"));
    assert!(!ok && out.contains("admin password"), "weak passwords are refused: {out}");
    let (ok, out) = tavle(&url, &bergen, Some(""), None);
    assert!(!ok && out.contains("no password"), "{out}");
    let bad_slug = ["create-tenant", "--slug", "Bad Slug!", "--name", "X", "--admin-username", "admin"];
    let (ok, out) = tavle(&url, &bad_slug, None, Some("Fjord-Lysne-42"));
    assert!(!ok && out.contains("slug"), "{out}");
    let with_password_flag = [&bergen[..], &["--password", "Fjord-Lysne-42"]].concat();
    let (ok, out) = tavle(&url, &with_password_flag, None, Some("Fjord-Lysne-42"));
    assert!(!ok && out.contains("unexpected argument `--password`"), "there is no --password option: {out}");
}

#[test]
fn keygen_prints_every_secret_variable() {
    let (ok, out) = tavle("postgres://unused", &["keygen"], None, None);
    assert!(ok, "{out}");
    for name in ["TOKEN_SIGNING_KEY", "TOKEN_PUBLIC_KEYS", "IDENTITY_KEY", "BLIND_INDEX_KEY", "WEBHOOK_SECRET_KEY"] {
        assert!(out.contains(&format!("SPIN_VARIABLE_{name}=")), "{name}: {out}");
    }
    let (_, again) = tavle("postgres://unused", &["keygen"], None, None);
    assert_ne!(out, again, "fresh keys every time");
}
