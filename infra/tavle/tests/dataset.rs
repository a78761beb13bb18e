//! `tavle generate-dataset` at a tiny size against a throwaway cluster: the
//! counts, the shape (groups, year levels, results per pupil), and identity
//! numbers that are synthetic, decryptable with the tenant-bound key, found by
//! their blind index, and never printed.

use base64::Engine;
use sqlx::Row;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use tavle_core::crypto::{BlindIndex, IdentityCipher};
use tavle_core::identity::IdentityKind;
use tavle_host::pgcluster::PgCluster;

fn key() -> String {
    let bytes: Vec<u8> =
        uuid::Uuid::new_v4().as_bytes().iter().chain(uuid::Uuid::new_v4().as_bytes()).copied().collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs `tavle` in an empty directory (so no `.tavle/dev-secrets.env` is found).
fn tavle(url: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("tavle-dataset-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tavle"));
    cmd.args(args).current_dir(&dir).env("DATABASE_URL", url);
    for name in ["TAVLE_ADMIN_PASSWORD", "SPIN_VARIABLE_IDENTITY_KEY", "SPIN_VARIABLE_BLIND_INDEX_KEY"] {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn generates_a_small_synthetic_dataset() {
    let cluster = PgCluster::start_ephemeral().unwrap();
    let url = cluster.url("postgres");
    let (ok, out) = tavle(&url, &["migrate"], &[]);
    assert!(ok, "{out}");
    let (identity_key, blind_key) = (key(), key());
    let keys =
        [("SPIN_VARIABLE_IDENTITY_KEY", identity_key.as_str()), ("SPIN_VARIABLE_BLIND_INDEX_KEY", blind_key.as_str())];
    let small = ["generate-dataset", "--tenant", "gen", "--pupils", "60", "--groups", "4", "--results", "610"];

    // Without keys it refuses, naming the variable.
    let (ok, out) = tavle(&url, &small, &[("TAVLE_ADMIN_PASSWORD", "Fjord-Lysne-42")]);
    assert!(!ok && out.contains("SPIN_VARIABLE_IDENTITY_KEY"), "{out}");

    // 60 pupils in 4 groups (year levels 1-4), 610 results: 11 for the first 10 pupils, 10 for the others.
    let env = [keys[0], keys[1], ("TAVLE_ADMIN_PASSWORD", "Fjord-Lysne-42")];
    let (ok, out) = tavle(&url, &small, &env);
    assert!(ok, "{out}");
    assert!(out.contains("tenant gen created") && out.contains("610 results in"), "{out}");
    assert!(!out.contains("Fjord-Lysne-42"));

    // A second run into the existing tenant: no password asked, no identity number reused.
    let (ok, out2) = tavle(
        &url,
        &["generate-dataset", "--tenant", "gen", "--pupils", "20", "--groups", "2", "--results", "40"],
        &keys,
    );
    assert!(ok, "{out2}");
    assert!(out2.contains("tenant gen exists"), "{out2}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
        };
        assert_eq!(count("SELECT count(*) FROM schools").await, 2);
        assert_eq!(count("SELECT count(*) FROM groups").await, 6);
        assert_eq!(count("SELECT count(*) FROM pupils").await, 80);
        assert_eq!(count("SELECT count(*) FROM group_memberships").await, 80);
        assert_eq!(count("SELECT count(*) FROM webhook_sources WHERE kind = 'publisher'").await, 2);
        // First run: 4 year levels × ceil(610 / 60) = 11; second: 2 × 2.
        assert_eq!(count("SELECT count(*) FROM assessments").await, 44 + 4);
        assert_eq!(count("SELECT count(*) FROM results").await, 650);
        assert_eq!(count("SELECT count(*) FROM results WHERE source_id IS NULL OR external_id IS NULL").await, 0);
        assert_eq!(count("SELECT count(*) FROM audit_log WHERE action = 'dataset.generated'").await, 2);

        // Shape of the first run: groups of 15, results per pupil, year levels that match.
        let sizes: Vec<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM group_memberships m JOIN groups g ON g.id = m.group_id \
             WHERE g.external_id LIKE 'gen-%' GROUP BY g.id HAVING count(*) > 10 ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(sizes, [15, 15, 15, 15]);
        let per_pupil: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT n, count(*) FROM (SELECT p.id, count(r.id) AS n FROM pupils p LEFT JOIN results r ON r.pupil_id = p.id \
             GROUP BY p.id) x GROUP BY n ORDER BY n",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(per_pupil, [(2, 20), (10, 50), (11, 10)], "results per pupil");
        assert_eq!(
            count(
                "SELECT count(*) FROM results r JOIN pupils p ON p.id = r.pupil_id JOIN assessments a ON a.id = r.assessment_id \
                 JOIN group_memberships m ON m.pupil_id = p.id JOIN groups g ON g.id = m.group_id \
                 WHERE a.year_level <> p.year_level OR g.year_level <> p.year_level OR g.school_id <> p.school_id \
                    OR a.source_id <> r.source_id"
            )
            .await,
            0
        );
        assert_eq!(count("SELECT count(DISTINCT (pupil_id, assessment_id)) FROM results").await, 650);

        // Identity numbers: encrypted under the tenant, synthetic (Tenor, month + 80), indexed, never printed.
        let cipher = IdentityCipher::from_config(&identity_key, "").unwrap();
        let index = BlindIndex::from_config(&blind_key).unwrap();
        let rows = sqlx::query("SELECT tenant_id::text, identity_enc, identity_index FROM pupils").fetch_all(&pool).await.unwrap();
        let mut seen = HashSet::new();
        for row in rows {
            let tenant: String = row.get(0);
            let id = cipher.decrypt_identity(&row.get::<Vec<u8>, _>(1), tenant.as_bytes()).expect("decrypts");
            assert_eq!(id.kind(), IdentityKind::SyntheticTenor);
            let month: u32 = id.expose()[2..4].parse().unwrap();
            assert!((81..=92).contains(&month), "month + 80");
            assert_eq!(index.index(&tenant, &id), row.get::<Vec<u8>, _>(2), "blind index as ingest computes it");
            assert!(!out.contains(id.expose()) && !out2.contains(id.expose()), "identity numbers are never printed");
            assert!(seen.insert(id.expose().to_owned()));
            // Another tenant's id as associated data does not decrypt it.
            assert!(cipher.decrypt_identity(&row.get::<Vec<u8>, _>(1), b"another-tenant").is_err());
        }
        assert_eq!(seen.len(), 80);
        pool.close().await;
    });
}
