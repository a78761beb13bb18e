//! The retention component: each policy with time moved forward through the
//! clock its handler takes as input (no sleeping), runs killed between and
//! in the middle of batches and resumed, two runs at once, the erasure scan
//! after retention, k-anonymity with small cells, the reports and their
//! tenant separation, and configuration refused at start-up.

use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use tavle_tests::retention::{backfill_access_log, end_state, now, Duration, Retention};
use tavle_tests::subjects::{self, id_of, roster};
use tavle_tests::{synthetic_id, Api, Session, Source, Staff, TestApp};

/// Oslo with Nordby skole, group 5A and `pupils` pupils (synthetic numbers
/// 0..), each with one result of assessment `lesing` (score = their number).
struct World {
    app: TestApp,
    oslo: Staff,
    admin: Session,
    sas: Source,
    publisher: Source,
}

const NAMES: [&str; 8] = ["Åse", "Bjørn", "Cecilie", "David", "Eirik", "Frida", "Guro", "Håkon"];

async fn world(pupils: u32) -> World {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let admin = app.login(&oslo).await;
    let sas = app.create_source(&admin, "sas").await;
    let publisher = app.create_source(&admin, "publisher").await;
    let list: Vec<(u32, String, String)> =
        (0..pupils).map(|n| (n, NAMES[n as usize % 8].to_owned(), format!("Etternavn{n}"))).collect();
    let refs: Vec<(u32, &str, &str)> = list.iter().map(|(n, g, f)| (*n, g.as_str(), f.as_str())).collect();
    let r = app.deliver(&sas, "roster", "r-1", &roster("nordby", "5A", &refs)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let results: Vec<Value> = (0..pupils)
        .map(|n| {
            json!({"external_id": format!("res-{n}"), "pupil": {"identity_number": synthetic_id(n)},
                   "score": n, "status": "completed", "completed_at": "2026-09-15T09:30:00Z",
                   "items": [{"item": "q1", "score": 1, "max_score": 1, "answer": "katt"}]})
        })
        .collect();
    let body = json!({
        "assessment": {"external_id": "lesing", "title": "Lesing", "subject": "norsk", "year_level": 5,
                       "max_score": 40, "administered_on": "2026-09-15"},
        "results": results,
    });
    let r = app.deliver(&publisher, "results", "res-1", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    World { app, oslo, admin, sas, publisher }
}

/// Marks pupil `n` as left `days` ago, from year level `year`.
async fn left(pool: &PgPool, n: u32, days: i32, year: i32) {
    sqlx::query("UPDATE pupils SET left_at = current_date - $2::int, year_level = $3 WHERE feide_username = $1")
        .bind(format!("pupil{n}@skole.no"))
        .bind(days)
        .bind(year)
        .execute(pool)
        .await
        .unwrap();
}

async fn pupil_names(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT given_name FROM pupils ORDER BY given_name").fetch_all(pool).await.unwrap()
}

/// Every table but the run reports, for "a dry run changes nothing".
async fn data_snapshot(app: &TestApp) -> String {
    app.snapshot(true).await.lines().filter(|l| !l.starts_with("retention_")).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn leavers_are_erased_after_the_grace_period_and_final_year_leavers_keep_a_report_for_12_months() {
    let w = world(5).await;
    let pool = &w.app.pool;
    left(pool, 0, 100, 5).await; // Åse: past the 90 days
    left(pool, 1, 30, 5).await; // Bjørn: within them
    left(pool, 2, 100, 10).await; // Cecilie: final year, past them
    left(pool, 3, 100, 5).await; // David: restricted (Art. 18), kept
    sqlx::query("UPDATE pupils SET restricted = true WHERE given_name = 'David'").execute(pool).await.unwrap();
    // Eirik: past the grace period, but a subject request about him is open.
    left(pool, 4, 100, 5).await;
    let per = w.app.create_user(&w.admin, &w.oslo, "per", json!([{"role": "privacy_officer"}])).await;
    let per = w.app.login(&per).await;
    let eirik = id_of(&w.app, "SELECT id FROM pupils WHERE given_name = $1", "Eirik").await;
    let body = json!({"kind": "access", "subject": {"pupil_id": eirik}, "identity_verification": "ID card"});
    assert_eq!(w.app.post("/subject-requests", Some(&per.token), body).await.status, 201);
    let retention = Retention::of(&w.app, &[]).await;

    // A dry run counts and changes nothing (but its report).
    let before = data_snapshot(&w.app).await;
    let r = retention.post_run(now(), true).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let dry = r.json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["status"], "completed");
    for (k, n) in
        [("pupils_erased", 2), ("results_anonymised", 2), ("leaver_reports_written", 1), ("restricted_kept", 1)]
    {
        assert_eq!(dry["counts"][k], n, "{k}: {dry}");
    }
    assert_eq!(before, data_snapshot(&w.app).await, "a dry run changed data");

    let report = retention.run(now()).await;
    assert_eq!((report["status"].as_str(), report["more_remaining"].as_bool()), (Some("completed"), Some(false)));
    for (k, n) in [("pupils_erased", 2), ("results_anonymised", 2), ("leaver_reports_written", 1)] {
        assert_eq!(report["counts"][k], n, "{k}: {report}");
    }
    assert_eq!(pupil_names(pool).await, ["Bjørn", "David", "Eirik"]);
    // Their results are anonymised: coarse values only, no external ids.
    assert_eq!(w.app.count("SELECT count(*) FROM anonymised_results").await, 0, "a cell of 2 is dropped");
    assert_eq!(w.app.count("SELECT count(*) FROM results").await, 3);
    // Cecilie's leavers' report: her results, kept 12 months after leaving.
    let (report_json, months): (Value, i32) = sqlx::query_as(
        "SELECT report, ((extract(year FROM age(delete_on, left_on)) * 12 + extract(month FROM age(delete_on, left_on))))::int \
         FROM leaver_reports",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(months, 12);
    assert_eq!(report_json["given_name"], "Cecilie");
    assert_eq!(report_json["year_level"], 10);
    assert_eq!(report_json["results"][0]["assessment"], "Lesing");
    assert_eq!(report_json["results"][0]["score"], 2.0);
    assert!(!report_json.to_string().contains(&synthetic_id(2)), "no identity number in the report");
    assert!(!report_json.to_string().contains("pupil2@skole.no"), "no Feide username in the report");

    // The school's leader reads the report (and the read is in the access
    // log, naming her old id); a teacher cannot, another school's leader
    // does not see it.
    let nordby = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "nordby").await;
    let group = id_of(&w.app, "SELECT id FROM groups WHERE external_id = $1", "5A").await;
    let lena =
        w.app.create_user(&w.admin, &w.oslo, "lena", json!([{"role": "school_leader", "school_id": nordby}])).await;
    let lena = w.app.login(&lena).await;
    let list = retention.get_at("/retention/leaver-reports", &lena.token, now()).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let items = list.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["report"]["family_name"], "Etternavn2");
    let logged = w.app.count("SELECT count(*) FROM access_log WHERE action = 'leaver_reports.listed'").await;
    assert_eq!(logged, 1);
    let tom = w.app.create_user(&w.admin, &w.oslo, "tom", json!([{"role": "teacher", "group_id": group}])).await;
    let tom = w.app.login(&tom).await;
    retention.get_at("/retention/leaver-reports", &tom.token, now()).await.assert_problem(403, "forbidden");
    let (sorby, _) = w.app.seed_school(&w.oslo.tenant_id, "Sørby skole").await;
    let path = format!("/retention/leaver-reports?school_id={sorby}");
    retention.get_at(&path, &lena.token, now()).await.assert_problem(404, "not-found");

    // Idempotent: a second run finds nothing.
    let again = retention.run(now()).await;
    assert_eq!(again["counts"]["pupils_erased"], 0, "{again}");
    assert_eq!(pupil_names(pool).await, ["Bjørn", "David", "Eirik"]);

    // Twelve months on: the report is deleted, Bjørn is past his grace period.
    let later = retention.run(now() + Duration::days(366)).await;
    assert_eq!(later["counts"]["leaver_reports_deleted"], 1, "{later}");
    assert_eq!(later["counts"]["pupils_erased"], 1, "{later}");
    assert_eq!(w.app.count("SELECT count(*) FROM leaver_reports").await, 0);
    assert_eq!(pupil_names(pool).await, ["David", "Eirik"]);
}

#[tokio::test]
async fn deleted_accounts_are_pseudonymised_after_the_configured_days_and_audit_references_stay() {
    let w = world(1).await;
    let pool = &w.app.pool;
    let kari = w.app.create_user(&w.admin, &w.oslo, "kari", json!([{"role": "tenant_admin"}])).await;
    let r =
        w.app.send(http::Method::DELETE, &format!("/admin/users/{}", kari.user_id), Some(&w.admin.token), None).await;
    assert!(r.status == 204 || r.status == 200, "{}", r.text());
    let audit_before: i64 =
        w.app.count(&format!("SELECT count(*) FROM audit_log WHERE target_id = '{}'", kari.user_id)).await;
    let retention = Retention::of(&w.app, &[]).await;

    let soon = retention.run(now() + Duration::days(29)).await;
    assert_eq!(soon["counts"]["accounts_pseudonymised"], 0, "{soon}");
    let late = retention.run(now() + Duration::days(31)).await;
    assert_eq!(late["counts"]["accounts_pseudonymised"], 1, "{late}");
    let (username, display, email): (String, String, Option<String>) =
        sqlx::query_as("SELECT username, display_name, email FROM users WHERE id = $1::uuid")
            .bind(&kari.user_id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(username.starts_with("erased-") && display.starts_with("Erased user"), "{username} {display}");
    assert_eq!(email, None);
    // The audit log still names the same (random) id.
    let audit_after: i64 =
        w.app.count(&format!("SELECT count(*) FROM audit_log WHERE target_id = '{}'", kari.user_id)).await;
    assert_eq!(audit_after, audit_before);
    let again = retention.run(now() + Duration::days(60)).await;
    assert_eq!(again["counts"]["accounts_pseudonymised"], 0, "stable: {again}");
}

#[tokio::test]
async fn logs_are_pruned_after_the_configured_months_and_the_access_log_still_verifies() {
    let w = world(2).await;
    let pool = &w.app.pool;
    let pupil = id_of(&w.app, "SELECT id FROM pupils WHERE given_name = $1", "Åse").await;
    let old = backfill_access_log(pool, &w.oslo.tenant_id, &w.oslo.user_id, &pupil, 4, 5, 13).await;
    let recent = backfill_access_log(pool, &w.oslo.tenant_id, &w.oslo.user_id, &pupil, 4, 3, 7).await;
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, at, actor, action) \
         SELECT $1::uuid, now() - interval '13 months' + n * interval '1 second', 'system:test', 'old.event' \
         FROM generate_series(1, 7) n",
    )
    .bind(&w.oslo.tenant_id)
    .execute(pool)
    .await
    .unwrap();
    let total = w.app.count("SELECT count(*) FROM access_log").await;
    assert_eq!(total, old + recent);

    // Small batches: several checkpointed cuts, one run.
    let retention = Retention::of(&w.app, &[("retention_batch_rows", "6")]).await;
    let report = retention.run(now()).await;
    assert_eq!(report["counts"]["access_records_deleted"], old, "{report}");
    assert_eq!(report["counts"]["audit_records_deleted"], 7, "{report}");
    assert!(report["batches"].as_i64().unwrap() >= 4, "bounded batches: {report}");
    assert_eq!(w.app.count("SELECT count(*) FROM access_log").await, recent);
    assert_eq!(w.app.count("SELECT count(*) FROM audit_log WHERE action = 'old.event'").await, 0);
    let verified = tavle_tests::ops::verify_access_log(pool, "oslo").await.unwrap();
    assert_eq!(verified.broken, None, "the chain verifies after pruning");

    // Six months is the floor: a deployment cannot configure less, and the
    // database refuses less whoever calls.
    let refused = HashMap::from([("retention_log_months", "5")]);
    let vars: HashMap<String, String> = refused.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert!(tavle_retention::check_config(&vars).unwrap_err().contains("retention_log_months"));
    let app_pool = subjects::app_pool(&w.app).await;
    let err = sqlx::query("SELECT audit_log_prune($1::uuid, now() - interval '1 month', 10)")
        .bind(&w.oslo.tenant_id)
        .execute(&app_pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "the application role cannot prune: {err}");
    assert!(sqlx::query("DELETE FROM audit_log").execute(&app_pool).await.is_err(), "nor delete");
    // Nor can the retention role, flag or not: only through the function.
    let retention_pool =
        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&retention.variables["db_url"]).await.unwrap();
    sqlx::query("SELECT set_config('tavle.audit_log_pruning', 'on', false)").execute(&retention_pool).await.unwrap();
    let err = sqlx::query("DELETE FROM audit_log").execute(&retention_pool).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn what_only_lives_for_a_while_is_purged() {
    let w = world(1).await;
    let pool = &w.app.pool;
    let sessions = w.app.count("SELECT count(*) FROM sessions").await;
    assert!(sessions > 0);
    let deliveries = w.app.count("SELECT count(*) FROM webhook_deliveries").await;
    assert_eq!(deliveries, 2);
    sqlx::query(
        "INSERT INTO webhook_secrets (tenant_id, source_id, secret_enc, expires_at) \
         SELECT tenant_id, id, '\\x00'::bytea, now() - interval '1 day' FROM webhook_sources",
    )
    .execute(pool)
    .await
    .unwrap();
    let secrets = w.app.count("SELECT count(*) FROM webhook_secrets").await;
    let retention = Retention::of(&w.app, &[]).await;
    let today = retention.run(now()).await;
    assert_eq!(today["counts"]["webhook_secrets_deleted"], 2, "{today}");
    assert_eq!(today["counts"]["sessions_deleted"], 0, "{today}");
    assert_eq!(today["counts"]["webhook_deliveries_deleted"], 0, "{today}");
    let later = retention.run(now() + Duration::days(31)).await;
    assert_eq!(later["counts"]["sessions_deleted"], sessions, "{later}");
    assert_eq!(later["counts"]["webhook_deliveries_deleted"], deliveries, "{later}");
    assert_eq!(w.app.count("SELECT count(*) FROM sessions").await, 0);
    assert_eq!(w.app.count("SELECT count(*) FROM webhook_secrets").await, secrets - 2);
    // The sources still verify with their current secrets.
    let r = w.app.deliver(&w.sas, "roster", "r-9", &roster("nordby", "5A", &[(0, "Åse", "Etternavn0")])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = &w.publisher;
}

/// Anonymised results of `assessment` in cells of the given sizes:
/// (school, year level, gender, rows).
async fn cells(pool: &PgPool, tenant: &str, assessment: &str, schools: &[String], spec: &[(usize, i32, &str, i32)]) {
    for (school, year, gender, rows) in spec {
        sqlx::query(
            "INSERT INTO anonymised_results (tenant_id, assessment_id, school_id, year_level, gender, status, score) \
             SELECT $1::uuid, $2::uuid, $3::uuid, $4, $5, 'completed', n FROM generate_series(1, $6) n",
        )
        .bind(tenant)
        .bind(assessment)
        .bind(&schools[*school])
        .bind(year)
        .bind(gender)
        .bind(rows)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Cells of kept anonymised results that hold fewer than 5.
async fn small_kept_cells(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM (SELECT 1 FROM anonymised_results WHERE NOT pending \
         GROUP BY assessment_id, school_id, year_level, gender HAVING count(*) < 5) s",
    )
    .await
}

async fn kept_cells(pool: &PgPool) -> Vec<(i32, bool, Option<String>, i64)> {
    sqlx::query_as(
        "SELECT year_level, school_id IS NULL, gender, count(*) FROM anonymised_results \
         WHERE NOT pending GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn small_cells_of_anonymised_results_are_generalised_or_dropped() {
    for batch_rows in ["2", "2000"] {
        let w = world(1).await;
        let pool = &w.app.pool;
        let assessment = id_of(&w.app, "SELECT id FROM assessments WHERE external_id = $1", "lesing").await;
        let a = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "nordby").await;
        let (b, _) = w.app.seed_school(&w.oslo.tenant_id, "Sørby skole").await;
        let schools = [a, b];
        cells(
            pool,
            &w.oslo.tenant_id,
            &assessment,
            &schools,
            &[
                (0, 5, "female", 6), // 6: kept as it is
                (0, 6, "male", 2),   // 2 + 3 at tenant level: 5, kept with gender
                (1, 6, "male", 3),
                (0, 7, "female", 2), // 2 and 3 at tenant level, 5 without gender
                (1, 7, "male", 3),
                (0, 8, "female", 1), // 1 and 2, 3 without gender: dropped
                (1, 8, "male", 2),
            ],
        )
        .await;
        let retention = Retention::of(&w.app, &[("retention_batch_rows", batch_rows)]).await;
        let dry = retention.post_run(now(), true).await.json();
        // A dry run counts what the batches then do.
        assert_eq!(dry["counts"]["results_generalised_to_tenant"], 13, "{dry}");
        assert_eq!(dry["counts"]["results_gender_dropped"], 8, "{dry}");
        assert_eq!(dry["counts"]["results_dropped"], 3, "{dry}");
        let report = retention.run(now()).await;
        assert_eq!(report["counts"]["results_generalised_to_tenant"], 13, "batch {batch_rows}: {report}");
        assert_eq!(report["counts"]["results_gender_dropped"], 8, "batch {batch_rows}: {report}");
        assert_eq!(report["counts"]["results_dropped"], 3, "batch {batch_rows}: {report}");
        assert_eq!(
            kept_cells(pool).await,
            [(5, false, Some("female".into()), 6), (6, true, Some("male".into()), 5), (7, true, None, 5)],
            "batch {batch_rows}"
        );
        assert_eq!(w.app.count("SELECT count(*) FROM anonymised_results WHERE pending").await, 0);
        // Every kept cell holds at least 5.
        assert_eq!(small_kept_cells(&w.app).await, 0);
    }
}

/// Two apps seeded alike: leavers with results and a final-year leaver,
/// a deleted account, old access records.
async fn busy_world() -> World {
    let w = world(8).await;
    for n in 0..6 {
        left(&w.app.pool, n, 100, if n == 5 { 10 } else { 5 }).await;
    }
    let pupil = id_of(&w.app, "SELECT id FROM pupils WHERE given_name = $1", "Håkon").await;
    backfill_access_log(&w.app.pool, &w.oslo.tenant_id, &w.oslo.user_id, &pupil, 3, 4, 13).await;
    w
}

#[tokio::test]
async fn a_run_stopped_between_batches_is_finished_by_the_next_calls_with_the_same_end_state() {
    let whole = busy_world().await;
    let whole_report = Retention::of(&whole.app, &[("retention_batch_rows", "1")]).await.run(now()).await;
    assert_eq!(whole_report["more_remaining"], false, "{whole_report}");
    assert_eq!(whole_report["counts"]["pupils_erased"], 6, "{whole_report}");

    // One batch per call: every call stops between batches and says more remains.
    let parts = busy_world().await;
    let retention = Retention::of(&parts.app, &[("retention_batch_rows", "1"), ("retention_run_seconds", "0")]).await;
    let reports = retention.run_to_end(now()).await;
    assert!(reports.len() > 6, "{} calls", reports.len());
    for r in &reports[..reports.len() - 1] {
        assert_eq!((r["status"].as_str(), r["batches"].as_i64()), (Some("more_remaining"), Some(1)), "{r}");
    }
    assert_eq!(end_state(&parts.app.pool).await, end_state(&whole.app.pool).await);
}

#[tokio::test]
async fn a_run_killed_in_the_middle_of_a_batch_leaves_nothing_half_done_and_the_next_run_finishes() {
    let whole = busy_world().await;
    Retention::of(&whole.app, &[("retention_batch_rows", "3")]).await.run(now()).await;

    let killed = busy_world().await;
    let pool = &killed.app.pool;
    // The database connection dies in the middle of the first batch: after
    // the results were anonymised, while the pupils are being deleted.
    sqlx::raw_sql(
        "CREATE SEQUENCE kill_once; \
         CREATE FUNCTION kill_mid_batch() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
         BEGIN IF nextval('kill_once') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; \
         RETURN OLD; END $$; \
         CREATE TRIGGER kill_mid_batch BEFORE DELETE ON pupils FOR EACH ROW EXECUTE FUNCTION kill_mid_batch();",
    )
    .execute(pool)
    .await
    .unwrap();
    let before = data_snapshot(&killed.app).await;
    let retention = Retention::of(&killed.app, &[("retention_batch_rows", "3")]).await;
    let r = retention.post_run(now(), false).await;
    assert!(r.status >= 500, "the killed run fails: {} {}", r.status, r.text());
    assert_eq!(data_snapshot(&killed.app).await, before, "the killed batch left nothing half done");
    // Its lock is released or expires; the next run finishes the work.
    let next = retention.run(now() + Duration::minutes(5)).await;
    assert_eq!(next["status"], "completed", "{next}");
    assert_eq!(end_state(pool).await, end_state(&whole.app.pool).await);
}

#[tokio::test]
async fn two_runs_at_once_do_not_both_work() {
    let w = busy_world().await;
    let retention = Retention::of(&w.app, &[("retention_batch_rows", "1")]).await;
    let t = now();
    let (a, b) = tokio::join!(retention.post_run(t, false), retention.post_run(t, false));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text(), b.text());
    let refused = if a.status == 409 { &a } else { &b };
    refused.assert_problem(409, "conflict");

    // A lock another run holds (it was killed a moment ago) refuses a run
    // until its lease runs out.
    sqlx::query("UPDATE retention_lock SET run_id = gen_random_uuid(), held_until = $1::timestamptz")
        .bind((t + Duration::seconds(80)).to_string())
        .execute(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(retention.post_run(t + Duration::seconds(10), false).await.status, 409);
    assert_eq!(retention.post_run(t + Duration::seconds(81), false).await.status, 200);
}

#[tokio::test]
async fn an_anonymised_leaver_is_in_no_column_of_any_table() {
    let w = subjects::world().await;
    let pool = &w.app.pool;
    // An access export that expires in 7 days.
    let r = w
        .app
        .post(
            "/subject-requests",
            Some(&w.privacy.token),
            json!({"kind": "access", "subject": {"pupil_id": w.pupil}, "identity_verification": "ID card"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let request = r.json()["id"].as_str().unwrap().to_owned();
    let r = w.app.post(&format!("/subject-requests/{request}/fulfil"), Some(&w.privacy.token), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (index, enc): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT identity_index, identity_enc FROM pupils WHERE id = $1::uuid")
            .bind(&w.pupil)
            .fetch_one(pool)
            .await
            .unwrap();
    let index_hex: String = index.iter().map(|b| format!("{b:02x}")).collect();
    let number = synthetic_id(0);
    let needles = ["Åse", "Ødegård", number.as_str(), "pupil0@skole.no", index_hex.as_str()];
    let bytes = [index, enc];
    assert!(!subjects::scan(&w.app, &needles, &bytes).await.is_empty(), "found before");
    sqlx::query("UPDATE pupils SET left_at = current_date - 91 WHERE id = $1::uuid")
        .bind(&w.pupil)
        .execute(pool)
        .await
        .unwrap();

    // Her classmate's export too: it expires and is purged; hers goes with her.
    let r = w
        .app
        .post(
            "/subject-requests",
            Some(&w.privacy.token),
            json!({"kind": "access", "subject": {"pupil_id": w.other}, "identity_verification": "ID card"}),
        )
        .await;
    let other_request = r.json()["id"].as_str().unwrap().to_owned();
    let r = w.app.post(&format!("/subject-requests/{other_request}/fulfil"), Some(&w.privacy.token), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let retention = Retention::of(&w.app, &[]).await;
    let report = retention.run(now() + Duration::days(8)).await;
    assert_eq!(report["counts"]["pupils_erased"], 1, "{report}");
    assert_eq!(report["counts"]["exports_deleted"], 1, "{report}");
    assert_eq!(w.app.count("SELECT count(*) FROM subject_exports").await, 0);
    let left = subjects::scan(&w.app, &needles, &bytes).await;
    assert!(left.is_empty(), "after retention: {left:?}");
    // No tombstone: a pupil who enrols again is a pupil again.
    assert_eq!(w.app.count("SELECT count(*) FROM erased_pupils").await, 0);
    let _ = &w.kari;
}

#[tokio::test]
async fn only_the_scheduler_starts_runs_and_officers_see_their_own_tenants_counts() {
    let w = world(2).await;
    left(&w.app.pool, 0, 100, 5).await;
    let retention = Retention::of(&w.app, &[]).await;
    let before = w.app.snapshot(true).await;
    for auth in [None, Some("Bearer wrong-token-wrong-token-wrong-token!"), Some("Basic abc")] {
        let mut req = http::Request::post("/internal/retention/run");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = retention.call_at(req.body(Vec::new()).unwrap(), now()).await;
        r.assert_problem(401, "unauthenticated");
    }
    let token = retention.token();
    let bad = |path: &str, body: &str| {
        http::Request::post(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    retention
        .call_at(bad("/internal/retention/run?dry_run=maybe", ""), now())
        .await
        .assert_problem(400, "malformed-request");
    retention
        .call_at(bad("/internal/retention/run", r#"{"trigger": "cron"}"#), now())
        .await
        .assert_problem(422, "validation-failed");
    retention.call_at(bad("/internal/retention/run", "not json"), now()).await.assert_problem(400, "malformed-request");
    assert_eq!(before, w.app.snapshot(true).await, "refused requests changed something");

    let report = retention.run(now()).await;
    let run_id = report["id"].as_str().unwrap().to_owned();

    let per = w.app.create_user(&w.admin, &w.oslo, "per", json!([{"role": "privacy_officer"}])).await;
    let privacy = w.app.login(&per).await;
    let list = retention.get_at("/retention/runs", &privacy.token, now()).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let items = list.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], run_id.as_str());
    assert_eq!(items[0]["counts"]["pupils_erased"], 1);
    let one = retention.get_at(&format!("/retention/runs/{run_id}"), &privacy.token, now()).await;
    assert_eq!(one.json()["counts"]["results_anonymised"], 1, "{}", one.text());
    // A tenant admin without the role: 403; another tenant's officer sees
    // the run with none of Oslo's counts.
    retention.get_at("/retention/runs", &w.admin.token, now()).await.assert_problem(403, "forbidden");
    let bergen = w.app.seed_tenant("bergen").await;
    let bergen_admin = w.app.login(&bergen).await;
    let berit = w.app.create_user(&bergen_admin, &bergen, "berit", json!([{"role": "privacy_officer"}])).await;
    let berit = w.app.login(&berit).await;
    let theirs = retention.get_at(&format!("/retention/runs/{run_id}"), &berit.token, now()).await.json();
    assert_eq!(theirs["counts"], json!({}), "{theirs}");
    retention
        .get_at("/retention/runs/5b7a8e4e-2c6e-4d5e-9f1a-3a3c1f0e9d01", &privacy.token, now())
        .await
        .assert_problem(404, "not-found");
    retention
        .get_at("/retention/runs?cursor=nope", &privacy.token, now())
        .await
        .assert_problem(400, "malformed-request");
}

#[tokio::test]
async fn policies_outside_their_floors_and_ceilings_are_refused_at_start_up() {
    let manifest = tavle_host::manifest::Manifest::load(&tavle_tests::project_root().join("spin.toml")).unwrap();
    let app = TestApp::spawn().await;
    for (name, value) in [
        ("retention_log_months", "5"),
        ("retention_leaver_report_months", "13"),
        ("retention_account_pseudonymise_days", "120"),
        ("scheduler_token", "too-short"),
    ] {
        let mut provided = app.variables.clone();
        provided.insert(name.to_owned(), value.to_owned());
        let config = tavle_host::host::HostConfig::new(manifest.clone(), &provided).unwrap();
        let err = tavle_host::host::Host::new(&config).err().expect("refused at start-up");
        let message = format!("{err:#}");
        assert!(message.contains("component `retention`") && message.contains(name), "{message}");
        assert!(!message.contains(value) || name != "scheduler_token", "no secret in the message: {message}");
    }
}

#[tokio::test]
async fn a_cohort_erased_together_fills_its_cell_at_once_with_the_same_end_state() {
    // Six leavers of one cohort (Nordby, year 5, female), one result each in
    // one cell: erased in one batch, the erasure itself fills the cell and
    // nothing waits for k-anonymity; two pupils a batch, the rows wait and
    // k-anonymity keeps them where they are. The same cell either way.
    for (batch_rows, checked) in [("2000", 0), ("2", 6)] {
        let w = world(6).await;
        let pool = &w.app.pool;
        for n in 0..6 {
            left(pool, n, 100, 5).await;
        }
        let retention = Retention::of(&w.app, &[("retention_batch_rows", batch_rows)]).await;
        let report = retention.run(now()).await;
        assert_eq!(report["counts"]["results_anonymised"], 6, "batch {batch_rows}: {report}");
        assert_eq!(report["counts"]["results_checked"], checked, "batch {batch_rows}: {report}");
        assert_eq!(kept_cells(pool).await, [(5, false, Some("female".into()), 6)], "batch {batch_rows}");
        assert_eq!(w.app.count("SELECT count(*) FROM anonymised_results WHERE pending").await, 0);
    }
}

#[tokio::test]
async fn anonymised_results_keep_their_assessment() {
    let w = world(1).await;
    let pool = &w.app.pool;
    let tenant = &w.oslo.tenant_id;
    let assessment = id_of(&w.app, "SELECT id FROM assessments WHERE external_id = $1", "lesing").await;
    let nordby = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "nordby").await;
    let code = |e: sqlx::Error| e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
    // An unknown assessment, or one of another tenant, is refused.
    let other = w.app.seed_tenant("bergen").await;
    for (tenant, assessment) in
        [(tenant.as_str(), uuid::Uuid::new_v4().to_string()), (other.tenant_id.as_str(), assessment.clone())]
    {
        let e = sqlx::query(
            "INSERT INTO anonymised_results (tenant_id, assessment_id, status) VALUES ($1::uuid, $2::uuid, 'completed')",
        )
        .bind(tenant)
        .bind(&assessment)
        .execute(pool)
        .await
        .unwrap_err();
        assert_eq!(code(e).as_deref(), Some("23503"));
    }
    cells(pool, tenant, &assessment, &[nordby], &[(0, 5, "female", 5)]).await;
    // The reference does not change.
    let e =
        sqlx::query("UPDATE anonymised_results SET assessment_id = gen_random_uuid()").execute(pool).await.unwrap_err();
    assert_eq!(code(e).as_deref(), Some("23503"));
    // The assessment is not deleted while anonymised results refer to it,
    // and is once they are gone (in a transaction that is rolled back).
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM results").execute(&mut *tx).await.unwrap();
    let e = sqlx::query("DELETE FROM assessments WHERE id = $1::uuid")
        .bind(&assessment)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("anonymised results still refer to the assessment"), "{e}");
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM results").execute(&mut *tx).await.unwrap();
    sqlx::query("DELETE FROM anonymised_results").execute(&mut *tx).await.unwrap();
    let deleted = sqlx::query("DELETE FROM assessments WHERE id = $1::uuid").bind(&assessment).execute(&mut *tx).await;
    assert_eq!(deleted.unwrap().rows_affected(), 1);
    tx.rollback().await.unwrap();
    assert_eq!(w.app.count("SELECT count(*) FROM anonymised_results").await, 5);
}

#[tokio::test]
async fn rows_that_arrive_between_batches_never_leave_a_kept_cell_under_5() {
    // One batch per call, 3 rows a batch: two (assessment, year level)
    // groups, and rows of the first group's cells arrive after it was
    // decided (an erasure can add them at any time). After every call,
    // every kept cell holds at least 5.
    let w = world(1).await;
    let pool = &w.app.pool;
    let tenant = &w.oslo.tenant_id;
    let assessment = id_of(&w.app, "SELECT id FROM assessments WHERE external_id = $1", "lesing").await;
    let a = id_of(&w.app, "SELECT id FROM schools WHERE external_id = $1", "nordby").await;
    let (b, _) = w.app.seed_school(tenant, "Sørby skole").await;
    let schools = [a, b];
    cells(
        pool,
        tenant,
        &assessment,
        &schools,
        &[(0, 5, "female", 3), (1, 5, "female", 3), (0, 6, "male", 2), (1, 6, "male", 4)],
    )
    .await;
    let retention = Retention::of(&w.app, &[("retention_batch_rows", "3"), ("retention_run_seconds", "0")]).await;
    let mut added = false;
    for call in 0..50 {
        let report = retention.run(now()).await;
        assert_eq!(small_kept_cells(&w.app).await, 0, "call {call}: {report}");
        if !added && report["counts"]["results_checked"].as_i64() > Some(0) {
            // Sørby's year-5 girls, now that their cell has been decided.
            cells(pool, tenant, &assessment, &schools, &[(1, 5, "female", 2)]).await;
            added = true;
        }
        if report["more_remaining"] == false {
            break;
        }
    }
    assert!(added);
    assert_eq!(w.app.count("SELECT count(*) FROM anonymised_results WHERE pending").await, 0);
    assert_eq!(kept_cells(pool).await, [(5, true, Some("female".into()), 8), (6, true, Some("male".into()), 6)]);
}
