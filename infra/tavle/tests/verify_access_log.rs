//! `tavle verify-access-log`: exit status and report for an intact and a
//! tampered chain, against a throwaway cluster.

use std::process::Command;
use tavle_host::pgcluster::PgCluster;

fn tavle(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tavle"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("TAVLE_ADMIN_PASSWORD", "Fjord-Lysne-42")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn sql(url: &str, statements: &[&str]) {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for s in statements {
            sqlx::query(s).execute(&pool).await.unwrap();
        }
        pool.close().await;
    });
}

#[test]
fn verify_access_log_reports_an_intact_chain_and_the_first_broken_link() {
    let cluster = PgCluster::start_ephemeral().unwrap();
    let url = cluster.url("postgres");
    assert!(tavle(&url, &["migrate"]).0);
    let create = ["create-tenant", "--slug", "oslo", "--name", "Oslo kommune", "--admin-username", "admin"];
    assert!(tavle(&url, &create).0);
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo", "--no-anchor"]);
    assert!(ok && out.contains("0 records after the newest cut, 0 checkpoints, chain intact"), "{out}");
    assert!(!out.contains("head "), "--no-anchor prints no head: {out}");

    let append = "SELECT access_log_append(u.tenant_id, u.id, 'pupil.viewed', ARRAY[gen_random_uuid()], \
                  '127.0.0.1', 'req-1') FROM users u, generate_series(1, 3)";
    sql(&url, &[append]);
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo"]);
    assert!(ok && out.contains("3 records after the newest cut, 0 checkpoints, chain intact"), "{out}");
    let head = out.split("head ").nth(1).and_then(|h| h.split_whitespace().next()).expect("a head").to_owned();
    assert!(head.len() == 64 && out.contains("(anchor 1)"), "{out}");
    sql(&url, &[append]);
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo", "--expect-head", &head]);
    assert!(ok && out.contains("the expected head is checkpoint 1") && out.contains("(anchor 2)"), "{out}");
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo", "--expect-head", &"ab".repeat(32)]);
    assert!(!ok && out.contains("the expected head is not in this log's checkpoint chain"), "{out}");

    // Pruning: less than six months back is refused; further back cuts.
    let (ok, out) = tavle(&url, &["prune-access-log", "--tenant", "oslo", "--before", "2099-01-01"]);
    assert!(!ok && out.contains("kept at least 6 months"), "{out}");
    let (ok, out) = tavle(&url, &["prune-access-log", "--tenant", "oslo", "--before", "2001-01-01"]);
    assert!(ok && out.contains("0 records from before 2001-01-01 deleted") && out.contains("(checkpoint 3)"), "{out}");
    let (ok, out) = tavle(&url, &["prune-access-log", "--tenant", "oslo"]);
    assert!(!ok && out.contains("--before is required"), "{out}");
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo", "--expect-head", &head, "--no-anchor"]);
    assert!(ok && out.contains("6 records after the newest cut, 3 checkpoints, chain intact"), "{out}");

    sql(
        &url,
        &[
            "ALTER TABLE access_log DISABLE TRIGGER USER",
            "UPDATE access_log SET action = 'nothing.to.see' WHERE id = (SELECT max(id) FROM access_log)",
            "ALTER TABLE access_log ENABLE TRIGGER USER",
        ],
    );
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo"]);
    assert!(!ok, "a broken chain fails: {out}");
    assert!(out.contains("BROKEN after") && out.contains("was altered: its contents do not match its hash"), "{out}");
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "nowhere"]);
    assert!(!ok && out.contains("no tenant"), "{out}");
}
