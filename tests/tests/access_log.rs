//! The access log at municipality scale (`functions/core/ACCESS_LOG.md`):
//! each tenant's log is 16 hash chains ("lanes"), so that concurrent reads of
//! one tenant do not wait for each other; the operator's verification finds
//! the first broken record of any lane; records older than six months are
//! pruned at a checkpoint that verification starts from; and a head kept
//! outside the database (an anchor) finds a log rewritten with its heads.

use serde_json::json;
use sqlx::{PgPool, Row as _};
use std::time::Duration;
use tavle_core::access_log::{chain_hash, Break, Record};
use tavle_tests::{ops, synthetic_id, Api, Session, Staff, TestApp};

struct World {
    app: TestApp,
    oslo: Staff,
    teacher: Session,
    teacher_id: String,
    pupils: Vec<String>,
}

async fn world() -> World {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let admin = app.login(&oslo).await;
    let sas = app.create_source(&admin, "sas").await;
    let pupils: Vec<_> = (0..3)
        .map(|n| {
            json!({"identity_number": synthetic_id(n), "given_name": format!("Elev{n}"), "family_name": "Ås",
                   "year_level": 5, "groups": ["5A"]})
        })
        .collect();
    let roster = json!({"school": {"external_id": "nordby", "name": "Nordby skole"},
                        "groups": [{"external_id": "5A", "name": "5A", "year_level": 5}], "pupils": pupils});
    assert_eq!(app.deliver(&sas, "roster", "r-1", &roster).await.status, 200);
    let group: uuid::Uuid = sqlx::query_scalar("SELECT id FROM groups").fetch_one(&app.pool).await.unwrap();
    let pupils: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM pupils ORDER BY given_name").fetch_all(&app.pool).await.unwrap();
    let teacher =
        app.create_user(&admin, &oslo, "kari", json!([{"role": "teacher", "group_id": group.to_string()}])).await;
    let teacher_id = teacher.user_id.clone();
    let teacher = app.login(&teacher).await;
    World { app, oslo, teacher, teacher_id, pupils: pupils.iter().map(ToString::to_string).collect() }
}

async fn read_profile(w: &World, n: usize) -> u16 {
    w.app.get(&format!("/pupils/{}", w.pupils[n]), &w.teacher.token).await.status
}

/// `n` records appended by the owner in one statement (each at a random
/// lane: the statement's own locks are not skipped).
async fn append(pool: &PgPool, w: &World, n: i64, action: &str) {
    sqlx::query(
        "SELECT access_log_append($1::uuid, $2::uuid, $3, ARRAY[$4::uuid], '127.0.0.1', NULL) \
         FROM generate_series(1, $5::int8)",
    )
    .bind(&w.oslo.tenant_id)
    .bind(&w.teacher_id)
    .bind(action)
    .bind(&w.pupils[0])
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// Runs `sql` as an owner who bypasses the append-only triggers.
async fn tamper(pool: &PgPool, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    for t in ["access_log", "access_log_checkpoints"] {
        sqlx::query(&format!("ALTER TABLE {t} DISABLE TRIGGER USER")).execute(&mut *tx).await.unwrap();
    }
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    for t in ["access_log", "access_log_checkpoints"] {
        sqlx::query(&format!("ALTER TABLE {t} ENABLE TRIGGER USER")).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// What an attacker with the owner's rights does after changing records:
/// recomputes the lane's chain from its first record and moves its head, so
/// that the lane verifies again.
async fn rechain(pool: &PgPool, tenant: &str, lane: i16) {
    let sql =
        format!("SELECT {} FROM access_log WHERE tenant_id = $1::uuid AND lane = $2 ORDER BY seq", ops::RECORD_COLUMNS);
    let rows = sqlx::query(&sql).bind(tenant).bind(lane).fetch_all(pool).await.unwrap();
    let mut prev = tavle_core::access_log::GENESIS.to_vec();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE access_log DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    let mut last = 0;
    for row in &rows {
        let r = Record { prev_hash: prev.clone(), ..ops::access_record(row).unwrap() };
        let hash = chain_hash(&prev, &r);
        sqlx::query(
            "UPDATE access_log SET prev_hash = $1, hash = $2 WHERE tenant_id = $3::uuid AND lane = $4 AND seq = $5",
        )
        .bind(&prev)
        .bind(&hash)
        .bind(tenant)
        .bind(lane)
        .bind(r.seq)
        .execute(&mut *tx)
        .await
        .unwrap();
        prev = hash;
        last = r.seq;
    }
    sqlx::query("UPDATE access_log_heads SET seq = $1, hash = $2 WHERE tenant_id = $3::uuid AND lane = $4")
        .bind(last)
        .bind(&prev)
        .bind(tenant)
        .bind(lane)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE access_log ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// The lane with the most records of the tenant, and how many it has.
async fn fullest_lane(pool: &PgPool, tenant: &str) -> (i16, i64) {
    let row = sqlx::query(
        "SELECT lane, count(*) AS n FROM access_log WHERE tenant_id = $1::uuid GROUP BY lane ORDER BY n DESC, lane LIMIT 1",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap();
    (row.get("lane"), row.get("n"))
}

#[tokio::test]
async fn open_transactions_holding_lanes_hold_up_no_read_of_their_tenant_until_every_lane_is_held() {
    let w = world().await;
    // Fifteen transactions that appended and stay open, like manual results
    // before their commit: each holds a lane of its own.
    let owner = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(&w.app.db_url).await.unwrap();
    let mut held = Vec::new();
    let mut lanes = std::collections::BTreeSet::new();
    for _ in 0..15 {
        let mut tx = owner.begin().await.unwrap();
        sqlx::query("SELECT access_log_append($1::uuid, $2::uuid, 'test.held', ARRAY[$3::uuid], NULL, NULL)")
            .bind(&w.oslo.tenant_id)
            .bind(&w.teacher_id)
            .bind(&w.pupils[0])
            .execute(&mut *tx)
            .await
            .unwrap();
        let lane: i16 =
            sqlx::query_scalar("SELECT lane FROM access_log WHERE action = 'test.held' ORDER BY id DESC LIMIT 1")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        lanes.insert(lane);
        held.push(tx);
    }
    assert_eq!(lanes.len(), 15, "each open transaction holds a lane of its own: {lanes:?}");
    // A teacher's read of the same tenant takes the one lane left, at once.
    let read = tokio::time::timeout(Duration::from_secs(3), read_profile(&w, 0)).await;
    assert_eq!(read.expect("a read waited for another transaction's lane"), 200);
    let free: i16 =
        sqlx::query_scalar("SELECT lane FROM access_log WHERE action = 'pupil.viewed' ORDER BY id DESC LIMIT 1")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert!(!lanes.contains(&free), "lane {free} was held");

    // With every lane held, a read waits (as every read did behind one
    // open manual result before the lanes), and goes on once they commit.
    let mut last = owner.begin().await.unwrap();
    sqlx::query("SELECT access_log_append($1::uuid, $2::uuid, 'test.held', ARRAY[$3::uuid], NULL, NULL)")
        .bind(&w.oslo.tenant_id)
        .bind(&w.teacher_id)
        .bind(&w.pupils[0])
        .execute(&mut *last)
        .await
        .unwrap();
    held.push(last);
    let waiting = read_profile(&w, 1);
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting).await.is_err(),
        "with all 16 lanes held a read must wait"
    );
    for tx in held {
        tx.commit().await.unwrap();
    }
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the read went on"), 200);
    let report = ops::verify_access_log(&w.app.pool, "oslo").await.unwrap();
    assert_eq!((report.broken, report.records), (None, 18));
}

#[tokio::test]
async fn concurrent_reads_of_one_tenant_spread_over_lanes_and_every_lane_verifies() {
    let w = world().await;
    let reads: Vec<_> = (0..24).map(|i| read_profile(&w, i % 3)).collect();
    for status in futures::future::join_all(reads).await {
        assert_eq!(status, 200);
    }
    let lanes: i64 = w.app.count("SELECT count(DISTINCT lane) FROM access_log").await;
    assert!(lanes > 1, "24 reads used {lanes} lane(s)");
    let report = ops::verify_access_log(&w.app.pool, "oslo").await.unwrap();
    assert_eq!((report.broken, report.records), (None, 24));
}

#[tokio::test]
async fn the_operator_verifies_every_lane_and_finds_the_first_broken_record() {
    let w = world().await;
    let bergen = w.app.seed_tenant("bergen").await;
    let pool = &w.app.pool;
    append(pool, &w, 80, "pupil.viewed").await;
    assert_eq!(read_profile(&w, 1).await, 200);
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    assert_eq!((report.records, report.broken.as_ref()), (81, None));
    assert_eq!(ops::verify_access_log(pool, "bergen").await.unwrap().records, 0, "logs are per tenant");
    assert_eq!(w.app.count("SELECT count(*) FROM access_log_heads").await, 32, "16 lanes per tenant");
    let _ = bergen;

    // Not even the owner changes or removes records by accident.
    for sql in ["UPDATE access_log SET action = 'x'", "DELETE FROM access_log", "TRUNCATE access_log"] {
        let err = sqlx::query(sql).execute(pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let (lane, n) = fullest_lane(pool, &w.oslo.tenant_id).await;
    assert!(n >= 3, "81 records over 16 lanes: the fullest has {n}");
    let at = |cond: &str| format!("tenant_id = '{}' AND lane = {lane} AND {cond}", w.oslo.tenant_id);
    // Someone with more rights than the application alters record 2 of a lane.
    tamper(pool, &format!("UPDATE access_log SET client_ip = '10.0.0.9' WHERE {}", at("seq = 2"))).await;
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    assert_eq!(report.broken, Some(Break::Altered { lane, seq: 2 }));
    // Removing a record (even with its hash moved along) leaves a gap.
    tamper(pool, &format!("DELETE FROM access_log WHERE {}", at("seq = 2"))).await;
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    assert_eq!(report.broken, Some(Break::Missing { lane, expected_seq: 2, found_seq: 3 }));
    // Cutting off a lane's newest records is caught by its head.
    tamper(pool, &format!("DELETE FROM access_log WHERE {}", at("seq >= 2"))).await;
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    assert_eq!(report.broken, Some(Break::Head { lane, head_seq: n, last_seq: 1 }));
    assert!(ops::verify_access_log(pool, "nowhere").await.is_err());
}

/// Records of `lanes` lanes written `months` ago: `per_lane` each.
async fn backfill(pool: &PgPool, w: &World, lanes: i16, per_lane: i64, months: i32) -> i64 {
    tavle_tests::retention::backfill_access_log(
        pool,
        &w.oslo.tenant_id,
        &w.teacher_id,
        &w.pupils[1],
        lanes,
        per_lane,
        months,
    )
    .await
}

/// The date (UTC) `months` months back, as the database's clock has it.
async fn months_ago(pool: &PgPool, months: i32) -> String {
    sqlx::query_scalar("SELECT to_char((now() AT TIME ZONE 'UTC') - make_interval(months => $1), 'YYYY-MM-DD')")
        .bind(months)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn records_older_than_six_months_are_pruned_at_a_checkpoint_and_the_log_still_verifies() {
    let w = world().await;
    let pool = &w.app.pool;
    let old = backfill(pool, &w, 5, 4, 8).await;
    for n in 0..12 {
        assert_eq!(read_profile(&w, n % 3).await, 200);
    }
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    assert_eq!((report.broken.as_ref(), report.records), (None, old + 12));

    // Less than six months back is refused, by the operator binary and by
    // the database function whoever calls it, and changes nothing.
    let before = w.app.snapshot(true).await;
    let err = ops::prune_access_log(pool, "oslo", &months_ago(pool, 5).await).await.unwrap_err();
    assert!(err.to_string().contains("at least 6 months"), "{err}");
    let err = sqlx::query("SELECT * FROM access_log_prune($1::uuid, now() - interval '5 months')")
        .bind(&w.oslo.tenant_id)
        .execute(pool)
        .await
        .unwrap_err();
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("22023"), "{err}");
    for bad in ["2026-13-01", "yesterday", ""] {
        assert!(ops::prune_access_log(pool, "oslo", bad).await.is_err(), "{bad}");
    }
    assert!(ops::prune_access_log(pool, "nowhere", &months_ago(pool, 7).await).await.is_err());
    assert_eq!(before, w.app.snapshot(true).await, "a refused prune changed something");

    // Seven months back: every backfilled record goes, the recent ones stay.
    let pruned = ops::prune_access_log(pool, "oslo", &months_ago(pool, 7).await).await.unwrap();
    assert_eq!((pruned.deleted, pruned.checkpoint_id), (old, 1));
    assert_eq!(w.app.count("SELECT count(*) FROM access_log WHERE at < now() - interval '6 months'").await, 0);
    assert_eq!(w.app.count("SELECT count(*) FROM access_log").await, 12);
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    assert_eq!((report.broken.as_ref(), report.records, report.checkpoints), (None, 12, 1));
    // The prune's digest is the head to keep: the log verifies against it.
    let opts = ops::VerifyOptions { expect_head: Some(pruned.digest.clone()), anchor: false };
    assert_eq!(ops::verify_access_log_with(pool, "oslo", &opts).await.unwrap().expected_head, Some(1));

    // Again: nothing older is left; lanes keep their cut.
    let again = ops::prune_access_log(pool, "oslo", &months_ago(pool, 7).await).await.unwrap();
    assert_eq!((again.deleted, again.checkpoint_id), (0, 2));
    assert!(ops::verify_access_log(pool, "oslo").await.unwrap().broken.is_none());
    // The application still cannot delete; a record removed after the cut
    // shows as missing, and a cut moved to hide it shows in the checkpoints.
    let (lane, _) = fullest_lane(pool, &w.oslo.tenant_id).await;
    let first: i64 = sqlx::query_scalar("SELECT min(seq) FROM access_log WHERE tenant_id = $1::uuid AND lane = $2")
        .bind(&w.oslo.tenant_id)
        .bind(lane)
        .fetch_one(pool)
        .await
        .unwrap();
    tamper(
        pool,
        &format!("DELETE FROM access_log WHERE tenant_id = '{}' AND lane = {lane} AND seq = {first}", w.oslo.tenant_id),
    )
    .await;
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    // A gap before the lane's next record, or (if it was the lane's only
    // one) a lane that ends before its head.
    assert!(
        matches!(report.broken, Some(Break::Missing { lane: l, expected_seq, .. }) if l == lane && expected_seq == first)
            || matches!(report.broken, Some(Break::Head { lane: l, last_seq, .. }) if l == lane && last_seq == first - 1),
        "{:?}",
        report.broken
    );
    tamper(pool, &format!("UPDATE access_log_checkpoints SET lane_seqs[{}] = {first} WHERE id = 2", lane + 1)).await;
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    assert_eq!(report.broken, Some(Break::Checkpoint { id: 2 }));
}

#[tokio::test]
async fn a_head_kept_outside_the_database_finds_a_log_rewritten_with_its_heads() {
    let w = world().await;
    let pool = &w.app.pool;
    append(pool, &w, 40, "pupil.viewed").await;
    let anchor = ops::VerifyOptions { expect_head: None, anchor: true };
    let first = ops::verify_access_log_with(pool, "oslo", &anchor).await.unwrap();
    let (id, head) = first.anchor.clone().expect("a good check leaves an anchor");
    assert_eq!((first.broken, id, head.len()), (None, 1, 64));
    append(pool, &w, 10, "pupil.viewed").await;
    let expect = ops::VerifyOptions { expect_head: Some(head.clone()), anchor: false };
    let later = ops::verify_access_log_with(pool, "oslo", &expect).await.unwrap();
    assert_eq!((later.broken, later.expected_head, later.records), (None, Some(1), 50));
    for bad in ["", "xyz", &"0".repeat(63)] {
        let opts = ops::VerifyOptions { expect_head: Some(bad.to_owned()), anchor: false };
        assert!(ops::verify_access_log_with(pool, "oslo", &opts).await.is_err(), "{bad:?}");
    }

    // An owner alters a record from before the anchor and recomputes its
    // lane and head: the lane verifies, the anchor does not.
    let (lane, _) = fullest_lane(pool, &w.oslo.tenant_id).await;
    let t = &w.oslo.tenant_id;
    tamper(
        pool,
        &format!("UPDATE access_log SET client_ip = '10.6.6.6' WHERE tenant_id = '{t}' AND lane = {lane} AND seq = 1"),
    )
    .await;
    rechain(pool, t, lane).await;
    let report = ops::verify_access_log(pool, "oslo").await.unwrap();
    assert!(matches!(report.broken, Some(Break::Anchor { id: 1, lane: l, .. }) if l == lane), "{:?}", report.broken);

    // And removes the anchors too: the log alone looks intact (what an
    // attacker with the owner's rights can do), the head kept outside does not.
    tamper(pool, &format!("DELETE FROM access_log_checkpoints WHERE tenant_id = '{t}'")).await;
    assert_eq!(ops::verify_access_log(pool, "oslo").await.unwrap().broken, None);
    let report = ops::verify_access_log_with(pool, "oslo", &expect).await.unwrap();
    assert_eq!(report.broken, Some(Break::ExpectedHead));
}
