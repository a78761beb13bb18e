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
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo"]);
    assert!(ok && out.contains("0 records, chain intact"), "{out}");

    let append = "SELECT access_log_append(u.tenant_id, u.id, 'pupil.viewed', ARRAY[gen_random_uuid()], \
                  '127.0.0.1', 'req-1') FROM users u";
    sql(&url, &[append, append, append]);
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo"]);
    assert!(ok && out.contains("3 records, chain intact") && out.contains("head hash"), "{out}");

    sql(
        &url,
        &[
            "ALTER TABLE access_log DISABLE TRIGGER USER",
            "UPDATE access_log SET action = 'nothing.to.see' WHERE seq = 2",
            "ALTER TABLE access_log ENABLE TRIGGER USER",
        ],
    );
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "oslo"]);
    assert!(!ok, "a broken chain fails: {out}");
    assert!(out.contains("BROKEN after 1 good records: record 2 was altered"), "{out}");
    let (ok, out) = tavle(&url, &["verify-access-log", "--tenant", "nowhere"]);
    assert!(!ok && out.contains("no tenant"), "{out}");
}
