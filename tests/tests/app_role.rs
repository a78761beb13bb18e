//! The application role (`tavle_app`, login `tavle_app_1`, as production has
//! it; the hosts under test connect as it) can neither rewrite nor forge the
//! records that prove who saw what: the migrations' REVOKEs and triggers
//! hold, and access records can be written only in the name of a live
//! session, with that session's tenant and actor.

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tavle_tests::{Api, TestApp};

/// SQLSTATE of a statement run as the application role (`None`: it worked).
async fn refused(pool: &PgPool, sql: &str) -> Option<String> {
    match sqlx::query(sql).execute(pool).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => Some(e.code().unwrap_or_default().into_owned()),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test]
async fn the_application_role_cannot_rewrite_or_forge_audit_and_access_records() {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let bergen = app.seed_tenant("bergen").await;
    app.login(&oslo).await;
    // Access records name pupils by id only; any id will do here.
    let pupil = uuid::Uuid::new_v4();
    let sid: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sessions WHERE user_id = $1::uuid")
        .bind(&oslo.user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();

    let as_app = PgPoolOptions::new().max_connections(1).connect(&app.variables["db_url"]).await.unwrap();
    let role: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&as_app).await.unwrap();
    assert_eq!(role, tavle_tests::APP_LOGIN);

    // Written by the app in the name of its own live session: tenant and
    // actor come from the session.
    let own = format!(
        "SELECT access_log_append_for_session('{sid}', 'pupil.viewed', ARRAY['{pupil}']::uuid[], '127.0.0.1', 'r-1')"
    );
    assert_eq!(refused(&as_app, &own).await, None);
    let (tenant, actor): (uuid::Uuid, uuid::Uuid) =
        sqlx::query_as("SELECT tenant_id, actor_user_id FROM access_log").fetch_one(&app.pool).await.unwrap();
    assert_eq!((tenant.to_string(), actor.to_string()), (oslo.tenant_id.clone(), oslo.user_id.clone()));
    let before = app.snapshot(true).await;
    // The flag under which access_log_prune deletes (one connection: it stays
    // set for every statement below) gives the application role nothing.
    let flag = "SELECT set_config('tavle.access_log_pruning', 'on', false)";
    assert_eq!(refused(&as_app, flag).await, None);
    let flag = "SELECT set_config('tavle.audit_log_pruning', 'on', false)";
    assert_eq!(refused(&as_app, flag).await, None);

    for (what, sql, code) in [
        ("rewrite an audit record", "UPDATE audit_log SET action = 'nothing.happened'".to_owned(), "42501"),
        ("delete audit records", "DELETE FROM audit_log".to_owned(), "42501"),
        ("truncate the audit log", "TRUNCATE audit_log".to_owned(), "42501"),
        ("rewrite an access record", "UPDATE access_log SET action = 'nothing.happened'".to_owned(), "42501"),
        ("delete access records", "DELETE FROM access_log".to_owned(), "42501"),
        ("truncate the access log", "TRUNCATE access_log".to_owned(), "42501"),
        (
            "insert an access record directly",
            "INSERT INTO access_log (tenant_id, lane, seq, at, actor_user_id, action, pupil_ids, prev_hash, hash) \
             SELECT tenant_id, lane, seq + 1, at, actor_user_id, action, pupil_ids, prev_hash, hash FROM access_log"
                .to_owned(),
            "42501",
        ),
        ("read the chain heads", "SELECT * FROM access_log_heads".to_owned(), "42501"),
        ("rewrite anonymised results", "UPDATE anonymised_results SET score = 0".to_owned(), "42501"),
        ("delete anonymised results", "DELETE FROM anonymised_results".to_owned(), "42501"),
        (
            "prune the audit log",
            format!("SELECT audit_log_prune('{}', now() - interval '1 year', 10)", oslo.tenant_id),
            "42501",
        ),
        ("forge a retention report", "UPDATE retention_runs SET status = 'completed'".to_owned(), "42501"),
        ("wedge the retention lock", "UPDATE retention_lock SET held_until = 'infinity'".to_owned(), "42501"),
        ("read leavers' reports", "SELECT * FROM leaver_reports".to_owned(), "42501"),
        ("truncate the tombstones of erased pupils", "TRUNCATE erased_pupils".to_owned(), "42501"),
        ("reclassify a column", "UPDATE data_inventory_columns SET category = 'none'".to_owned(), "42501"),
        ("drop a table from the inventory", "DELETE FROM data_inventory_tables".to_owned(), "42501"),
        ("move a chain head", "UPDATE access_log_heads SET seq = 0".to_owned(), "42501"),
        ("read the checkpoints", "SELECT * FROM access_log_checkpoints".to_owned(), "42501"),
        ("delete a checkpoint", "DELETE FROM access_log_checkpoints".to_owned(), "42501"),
        (
            "prune the access log",
            format!("SELECT * FROM access_log_prune('{}', now() - interval '1 year')", oslo.tenant_id),
            "42501",
        ),
        (
            "write a checkpoint",
            format!(
                "SELECT * FROM access_log_checkpoint('{}', 'anchor', NULL, array_fill(0::int8, ARRAY[16]), \
                 array_fill('\\x00'::bytea, ARRAY[16]), 0)",
                oslo.tenant_id
            ),
            "42501",
        ),
        (
            "append for another tenant and actor",
            format!(
                "SELECT access_log_append('{}', '{}', 'pupil.viewed', ARRAY['{pupil}']::uuid[], NULL, NULL)",
                bergen.tenant_id, bergen.user_id
            ),
            "42501",
        ),
        (
            "append in the name of no live session",
            format!(
                "SELECT access_log_append_for_session('{}', 'pupil.viewed', ARRAY['{pupil}']::uuid[], NULL, NULL)",
                uuid::Uuid::new_v4()
            ),
            "42501",
        ),
    ] {
        assert_eq!(refused(&as_app, &sql).await.as_deref(), Some(code), "the application role could {what}");
    }
    assert_eq!(before, app.snapshot(true).await, "a refused statement changed something");

    // A revoked session can no longer write records either.
    sqlx::query("UPDATE sessions SET revoked_at = now()").execute(&app.pool).await.unwrap();
    assert_eq!(refused(&as_app, &own).await.as_deref(), Some("42501"), "a revoked session wrote a record");
    assert_eq!(app.count("SELECT count(*) FROM access_log").await, 1);
}
