//! Access and portability exports, derived from the data inventory
//! (migration 0012), their encrypted storage and audited download, and the
//! record of processing (`GET /privacy/inventory`).
//!
//! The request endpoints are written alongside; until they are, requests
//! are inserted with SQL and the export is built and stored by calling the
//! component's functions directly (as `fulfil` does), then downloaded
//! through spin.toml's routes.

use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use tavle_core::db::SqlxDb;
use tavle_subject_requests::{build, store, Export, Subject};
use tavle_tests::subjects::{app_pool, id_of, world, World, TITLE};
use tavle_tests::{synthetic_id, Api, TestApp};

const NOT_DISCLOSED: &str = "held, not disclosed";
const BLIND_INDEX: &str = "keyed hash of the identity number (blind index), held for lookup";

/// A request registered as the request endpoints will: by SQL for now.
async fn request(w: &World, kind: &str, subject_kind: &str, subject_id: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO subject_requests (tenant_id, kind, subject_kind, subject_id, received_on, due_on, \
                                       identity_verification, registered_by) \
         VALUES ($1::uuid, $2, $3, $4::uuid, current_date, current_date + 30, 'ID card shown at the office', $5::uuid) \
         RETURNING id",
    )
    .bind(&w.oslo.tenant_id)
    .bind(kind)
    .bind(subject_kind)
    .bind(subject_id)
    .bind(&w.per.user_id)
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    id.to_string()
}

/// Rows in the subject-request tables that only fulfilment writes.
async fn fulfilment_rows(w: &World, request_id: &str, subject_id: &str, pupil: bool) {
    if pupil {
        sqlx::query(
            "INSERT INTO pupil_corrections (tenant_id, pupil_id, field, source_value, request_id) \
             VALUES ($1::uuid, $2::uuid, 'given_name', 'Aase', $3::uuid)",
        )
        .bind(&w.oslo.tenant_id)
        .bind(subject_id)
        .bind(request_id)
        .execute(&w.app.pool)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO subject_keys (tenant_id, subject_id, key_enc) VALUES ($1::uuid, $2::uuid, $3)")
        .bind(&w.oslo.tenant_id)
        .bind(subject_id)
        .bind(vec![7u8; 60])
        .execute(&w.app.pool)
        .await
        .unwrap();
}

async fn export_of(w: &World, subject: Subject, portability: bool) -> Export {
    let mut db = SqlxDb::new(app_pool(&w.app).await);
    build(&mut db, &w.app.variables, &w.oslo.tenant_id, &subject, portability).await.unwrap()
}

/// Every column of every base table in `public`, as the database has it.
async fn schema_columns(pool: &PgPool) -> BTreeMap<String, BTreeSet<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c \
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (t, c) in rows {
        out.entry(t).or_default().insert(c);
    }
    out
}

/// The inventory: table → (pupil filter, user filter, column → category).
type Inventory = BTreeMap<String, (Option<String>, Option<String>, BTreeMap<String, String>)>;

async fn inventory(pool: &PgPool) -> Inventory {
    let tables: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT table_name, pupil_filter, user_filter FROM data_inventory_tables")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut out: Inventory = tables.into_iter().map(|(t, p, u)| (t, (p, u, BTreeMap::new()))).collect();
    let columns: Vec<(String, String, String)> =
        sqlx::query_as("SELECT table_name, column_name, category FROM data_inventory_columns")
            .fetch_all(pool)
            .await
            .unwrap();
    for (t, c, k) in columns {
        out.entry(t).or_insert((None, None, BTreeMap::new())).2.insert(c, k);
    }
    out
}

/// What is wrong between the schema and the inventory: unclassified tables
/// and columns, and inventory rows naming what does not exist.
async fn inventory_gaps(pool: &PgPool) -> Vec<String> {
    let schema = schema_columns(pool).await;
    let inventory = inventory(pool).await;
    let mut gaps = Vec::new();
    for (table, columns) in &schema {
        let classified = inventory.get(table).map(|t| &t.2);
        for c in columns {
            if !classified.is_some_and(|k| k.contains_key(c)) {
                gaps.push(format!("{table}.{c} is not classified"));
            }
        }
    }
    for (table, (_, _, columns)) in &inventory {
        for c in columns.keys() {
            if !schema.get(table).is_some_and(|s| s.contains(c)) {
                gaps.push(format!("the inventory names {table}.{c}, which does not exist"));
            }
        }
        if !schema.contains_key(table) {
            gaps.push(format!("the inventory names table {table}, which does not exist"));
        }
    }
    gaps
}

// ------------------------------------------------------------- inventory

#[tokio::test]
async fn every_column_of_every_table_is_classified_and_every_filter_is_tenant_bound_sql_the_app_can_run() {
    let app = TestApp::spawn().await;
    let gaps = inventory_gaps(&app.pool).await;
    assert!(gaps.is_empty(), "the data inventory (migration 0012) is incomplete:\n{}", gaps.join("\n"));
    let inventory = inventory(&app.pool).await;
    assert!(inventory.contains_key("_sqlx_migrations") && inventory.contains_key("data_inventory_columns"));

    let as_app = app_pool(&app).await;
    for (table, (pupil, user, columns)) in &inventory {
        for filter in [pupil, user].into_iter().flatten() {
            assert!(filter.starts_with("t.tenant_id = $1::uuid AND "), "{table}: a filter must bind the tenant");
            // Parameters only as `$1::uuid` / `$2::uuid` (the drivers type a
            // parameter by its first cast), both present.
            let bare: Vec<&str> =
                filter.match_indices('$').map(|(i, _)| &filter[i..(i + 8).min(filter.len())]).collect();
            assert!(bare.iter().all(|p| *p == "$1::uuid" || *p == "$2::uuid"), "{table}: parameters {bare:?}");
            assert!(filter.contains("$2::uuid"), "{table}: the filter names no subject");
            // Valid SQL that the application role may run.
            let sql = format!("SELECT count(*) FROM \"{table}\" t WHERE {filter}");
            let n: i64 = sqlx::query_scalar(&sql)
                .bind(uuid::Uuid::new_v4())
                .bind(uuid::Uuid::new_v4())
                .fetch_one(&as_app)
                .await
                .unwrap_or_else(|e| panic!("{table}: {filter}: {e}"));
            assert_eq!(n, 0);
        }
        if table == "pupils" {
            assert_eq!(columns["special_needs"], "special");
            assert_eq!(columns["identity_enc"], "identifier");
        }
    }
    for credential in [("users", "password_hash"), ("sessions", "secret_hash"), ("webhook_secrets", "secret_enc")] {
        assert_eq!(inventory[credential.0].2[credential.1], "credential", "{credential:?}");
    }
    // The application role reads the inventory and changes nothing in it.
    for sql in [
        "UPDATE data_inventory_columns SET category = 'none'",
        "DELETE FROM data_inventory_tables",
        "INSERT INTO data_inventory_tables VALUES ('x', 'x', 'x', 'x', 'true', NULL)",
    ] {
        let e = sqlx::query(sql).execute(&as_app).await.expect_err(sql);
        assert_eq!(e.as_database_error().and_then(|d| d.code()).as_deref(), Some("42501"), "{sql}");
    }

    // The check fails as soon as a migration adds a column it does not classify.
    sqlx::query("ALTER TABLE pupils ADD COLUMN nickname text").execute(&app.pool).await.unwrap();
    sqlx::query("ALTER TABLE data_inventory_columns DROP CONSTRAINT data_inventory_columns_table_name_fkey")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO data_inventory_columns VALUES ('gone', 'col', 'none')").execute(&app.pool).await.unwrap();
    let gaps = inventory_gaps(&app.pool).await;
    assert!(gaps.contains(&"pupils.nickname is not classified".to_owned()), "{gaps:?}");
    assert!(gaps.iter().any(|g| g.contains("gone.col")), "{gaps:?}");
}

#[tokio::test]
async fn the_record_of_processing_lists_every_table_and_column_with_types_and_categories() {
    let w = world().await;
    let r = w.app.get("/privacy/inventory", &w.privacy.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    let tables = body["tables"].as_array().unwrap();
    let listed: BTreeMap<String, &Value> =
        tables.iter().map(|t| (t["table"].as_str().unwrap().to_owned(), t)).collect();
    let schema = schema_columns(&w.app.pool).await;
    assert_eq!(listed.keys().cloned().collect::<BTreeSet<_>>(), schema.keys().cloned().collect::<BTreeSet<_>>());
    for (table, columns) in &schema {
        let t = listed[table];
        let got: BTreeSet<String> =
            t["columns"].as_array().unwrap().iter().map(|c| c["column"].as_str().unwrap().to_owned()).collect();
        assert_eq!(&got, columns, "{table}");
        for c in t["columns"].as_array().unwrap() {
            assert_ne!(c["category"], "unclassified", "{table}.{}", c["column"]);
            assert!(c["data_type"].as_str().is_some_and(|d| !d.is_empty()));
        }
        for field in ["purpose", "legal_basis", "retention"] {
            assert!(t[field].as_str().is_some_and(|s| s.len() > 5), "{table}: {field}");
        }
    }
    // Also what the application role has no privilege on (information_schema would hide it).
    assert_eq!(listed["access_log_checkpoints"]["columns"][0]["data_type"], "uuid");
    let pupils = listed["pupils"];
    let column = |name: &str| pupils["columns"].as_array().unwrap().iter().find(|c| c["column"] == name).unwrap();
    assert_eq!(column("identity_enc")["data_type"], "bytea");
    assert_eq!(column("special_needs")["category"], "special");
    assert_eq!(pupils["exported_for"], json!(["pupil"]));
    assert_eq!(listed["audit_log"]["exported_for"], json!(["pupil", "user"]));
    assert_eq!(listed["tenants"]["exported_for"], json!([]));

    // Tenant admins may read it too; others may not.
    assert_eq!(w.app.get("/privacy/inventory", &w.kari_session.token).await.status, 200);
    let admin_only = w.app.create_user(&w.kari_session, &w.oslo, "tone", json!([{"role": "tenant_admin"}])).await;
    let teacher =
        w.app.create_user(&w.kari_session, &w.oslo, "tom", json!([{"role": "teacher", "group_id": w.group}])).await;
    assert_eq!(w.app.get("/privacy/inventory", &w.app.login(&admin_only).await.token).await.status, 200);
    w.app.get("/privacy/inventory", &w.app.login(&teacher).await.token).await.assert_problem(403, "forbidden");
    w.app.get("/privacy/inventory", "not-a-token").await.assert_problem(401, "unauthenticated");

    // An unclassified column is listed as such, never left out.
    sqlx::query("ALTER TABLE results ADD COLUMN remark text").execute(&w.app.pool).await.unwrap();
    let body = w.app.get("/privacy/inventory", &w.privacy.token).await.json();
    let results = body["tables"].as_array().unwrap().iter().find(|t| t["table"] == "results").unwrap();
    let remark = results["columns"].as_array().unwrap().iter().find(|c| c["column"] == "remark").unwrap();
    assert_eq!(remark["category"], "unclassified");
}

// ----------------------------------------------------------------- build

/// Asserts that every table with a filter for `kind` is in the export with
/// rows, each carrying every column of the table as the schema has it, and
/// credentials only as "held, not disclosed".
async fn assert_complete(w: &World, export: &Export, kind: &str) {
    let schema = schema_columns(&w.app.pool).await;
    let inventory = inventory(&w.app.pool).await;
    let tables = export.json["tables"].as_object().unwrap();
    let mut expected = BTreeSet::new();
    for (table, (pupil, user, categories)) in &inventory {
        let filter = if kind == "pupil" { pupil } else { user };
        if filter.is_none() {
            continue;
        }
        expected.insert(table.clone());
        let t = tables.get(table).unwrap_or_else(|| panic!("{kind} export lacks table {table}"));
        for field in ["purpose", "legal_basis", "retention"] {
            assert!(t[field].as_str().is_some_and(|s| !s.is_empty()), "{table}.{field}");
        }
        let rows = t["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "{kind} export: no rows in {table}; the test world must put some there");
        for column in &schema[table] {
            let category = categories[column].as_str();
            assert_eq!(t["columns"][column], category, "{table}.{column}");
            for row in rows {
                let value = row.get(column).unwrap_or_else(|| panic!("{kind} export: {table}.{column} missing"));
                if category == "credential" && !value.is_null() {
                    assert_eq!(value, NOT_DISCLOSED, "{table}.{column}");
                }
            }
        }
        for row in rows {
            assert_eq!(row.as_object().unwrap().len(), schema[table].len(), "{table}: {row}");
        }
    }
    assert_eq!(tables.keys().cloned().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test]
async fn a_pupils_export_holds_every_column_of_every_table_about_them_and_nothing_of_a_classmate() {
    let w = world().await;
    let request = request(&w, "access", "pupil", &w.pupil).await;
    fulfilment_rows(&w, &request, &w.pupil, true).await;
    let export = export_of(&w, Subject::Pupil(w.pupil.clone()), false).await;
    assert_complete(&w, &export, "pupil").await;
    let doc = &export.json;
    assert_eq!(export.csv, None, "CSV only for portability");

    assert_eq!(doc["format"], "tavle-subject-export-v1");
    assert_eq!(doc["subject"], json!({"kind": "pupil", "id": w.pupil}));
    assert_eq!(doc["controller"], "oslo kommune");
    assert!(doc["generated_at"].as_str().unwrap().ends_with('Z'));
    let identity = &doc["identity"];
    assert_eq!(identity["identity_number"], synthetic_id(0), "decrypted here");
    assert_eq!((identity["given_name"].as_str(), identity["family_name"].as_str()), (Some("Åse"), Some("Ødegård")));
    assert_eq!(identity["feide_username"], "pupil0@skole.no");
    assert_eq!(identity["school"]["name"], "sorby skole");
    assert!(identity["groups"].as_array().unwrap().iter().any(|g| g["name"] == "6A"), "{identity}");

    let tables = &doc["tables"];
    let pupil_row = &tables["pupils"]["rows"][0];
    assert_eq!(pupil_row["identity_enc"], synthetic_id(0));
    assert_eq!(pupil_row["identity_index"], BLIND_INDEX);
    assert_eq!(pupil_row["special_needs"], true);
    assert_eq!(tables["pupils"]["columns"]["special_needs"], "special");
    // Every result with its items and answers, and where each came from.
    let results = tables["results"]["rows"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let published = results.iter().find(|r| !r["source_id"].is_null()).unwrap();
    assert_eq!(published["items"][0]["answer"], "katt");
    assert_eq!(
        doc["sources"][published["source_id"].as_str().unwrap()],
        json!({"name": "publisher system", "kind": "publisher"})
    );
    let manual = results.iter().find(|r| r["source_id"].is_null()).unwrap();
    assert_eq!(manual["recorded_by"], w.kari.user_id);
    assert_eq!(doc["staff"][&w.kari.user_id], "kari display");
    assert!(doc["sources"].get(&w.sas.id).is_some(), "the school system that moved her (transfer details)");
    assert!(doc["sources"].get(&w.publisher.id).is_some());
    // Who accessed her data, when, from where; naming her alone.
    let access = tables["access_log"]["rows"].as_array().unwrap();
    let viewed: Vec<&Value> = access.iter().filter(|r| r["actor_user_id"] == w.kari.user_id.as_str()).collect();
    assert!(viewed.len() >= 3, "view, overview, manual registration: {access:?}");
    for r in access {
        assert_eq!(r["pupil_ids"], json!([w.pupil]));
        assert_eq!(r["client_ip"], "127.0.0.1");
        assert!(r["at"].as_str().is_some());
    }
    let actions: BTreeSet<&str> =
        tables["audit_log"]["rows"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    for action in ["pupil.searched", "pupil.transferred", "result.registered"] {
        assert!(actions.contains(action), "{action} in {actions:?}");
    }
    assert_eq!(tables["subject_requests"]["rows"][0]["id"], request);
    assert_eq!(tables["subject_keys"]["rows"][0]["key_enc"], NOT_DISCLOSED);
    assert_eq!(tables["pupil_corrections"]["rows"][0]["source_value"], "Aase");
    let assessments: BTreeSet<&str> =
        tables["assessments"]["rows"].as_array().unwrap().iter().map(|a| a["title"].as_str().unwrap()).collect();
    assert_eq!(assessments, BTreeSet::from([TITLE, "Leseprøve"]));

    // Nothing of her classmate, who shares her group, assessment and overview.
    let text = doc.to_string();
    for other in [w.other.as_str(), "Bjørn", "Aasen", &synthetic_id(1), "pupil1@skole.no", "hund"] {
        assert!(!text.contains(other), "the export names the classmate: {other}");
    }
    // Nor any staff secret.
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1::uuid")
        .bind(&w.kari.user_id)
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert!(!text.contains(&hash));

    // Another tenant's id names no one here.
    let mut db = SqlxDb::new(app_pool(&w.app).await);
    let bergen_tenant: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM tenants WHERE slug = 'bergen'").fetch_one(&w.app.pool).await.unwrap();
    let r = build(&mut db, &w.app.variables, &bergen_tenant.to_string(), &Subject::Pupil(w.pupil.clone()), false).await;
    assert_eq!(r.unwrap_err().status, 404);
}

#[tokio::test]
async fn a_staff_users_export_holds_account_roles_sessions_and_their_own_actions() {
    let w = world().await;
    let request = request(&w, "access", "user", &w.kari.user_id).await;
    fulfilment_rows(&w, &request, &w.kari.user_id, false).await;
    let export = export_of(&w, Subject::User(w.kari.user_id.clone()), true).await;
    assert_complete(&w, &export, "user").await;
    assert_eq!(export.csv, None, "no results CSV for a staff user");
    let doc = &export.json;
    let identity = &doc["identity"];
    assert_eq!(identity["username"], "kari");
    assert_eq!(identity["display_name"], "kari display");
    let roles: BTreeSet<&str> =
        identity["roles"].as_array().unwrap().iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles, BTreeSet::from(["teacher", "tenant_admin"]));
    let tables = &doc["tables"];
    assert_eq!(tables["users"]["rows"][0]["password_hash"], NOT_DISCLOSED);
    assert_eq!(tables["users"]["rows"][0]["username"], "kari");
    for s in tables["sessions"]["rows"].as_array().unwrap() {
        assert_eq!(s["secret_hash"], NOT_DISCLOSED);
        assert_eq!(s["user_id"], w.kari.user_id);
    }
    let actions: BTreeSet<&str> =
        tables["audit_log"]["rows"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    for action in ["user.created", "login.succeeded", "pupil.searched", "assessment.registered", "result.registered"] {
        assert!(actions.contains(action), "{action} in {actions:?}");
    }
    let reads = tables["access_log"]["rows"].as_array().unwrap();
    assert!(!reads.is_empty());
    // Her own reads, each with how many pupils it named, not whom (Art. 15(4)).
    assert!(
        reads.iter().all(|r| r["actor_user_id"] == w.kari.user_id.as_str() && r["pupil_ids"].is_u64()),
        "{reads:?}"
    );
    // The results she recorded are the pupils' data, not hers: her
    // registrations show as her own actions in the audit log.
    assert!(tables.get("results").is_none(), "no pupil's results in a staff export");
    assert_eq!(tables["assessments"]["rows"][0]["title"], "Leseprøve");
    assert_eq!(doc["staff"][&w.kari.user_id], "kari display");
    let text = doc.to_string();
    assert!(!text.contains("\"per\""), "another user's account");
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1::uuid")
        .bind(&w.kari.user_id)
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert!(!text.contains(&hash));
}

#[tokio::test]
async fn a_column_a_migration_adds_is_in_the_next_export_marked_unclassified() {
    let w = world().await;
    sqlx::query("ALTER TABLE pupils ADD COLUMN nickname text").execute(&w.app.pool).await.unwrap();
    sqlx::query("UPDATE pupils SET nickname = 'Åsa' WHERE id = $1::uuid")
        .bind(&w.pupil)
        .execute(&w.app.pool)
        .await
        .unwrap();
    let export = export_of(&w, Subject::Pupil(w.pupil.clone()), false).await;
    let pupils = &export.json["tables"]["pupils"];
    assert_eq!(pupils["rows"][0]["nickname"], "Åsa");
    assert_eq!(pupils["columns"]["nickname"], "unclassified");
}

// -------------------------------------------------------- store, download

fn download_request(path: &str, token: &str) -> http::Request<Vec<u8>> {
    http::Request::builder().uri(path).header("authorization", format!("Bearer {token}")).body(Vec::new()).unwrap()
}

async fn audit_rows(w: &World, action: &str, request: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('actor', actor_user_id, 'details', details) FROM audit_log \
         WHERE action = $1 AND target_kind = 'subject_request' AND target_id = $2 ORDER BY id",
    )
    .bind(action)
    .bind(request)
    .fetch_all(&w.app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn exports_are_stored_encrypted_and_downloaded_by_the_tenants_privacy_officer_with_audit_and_access_records() {
    let w = world().await;
    let request = request(&w, "portability", "pupil", &w.pupil).await;
    let export = export_of(&w, Subject::Pupil(w.pupil.clone()), true).await;
    let csv = export.csv.clone().expect("portability adds CSV");

    // CSV: the header, one line per result, quoting where needed.
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(
        lines[0],
        "assessment_id,assessment_title,subject,administered_on,status,score,max_score,completed_at,source"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    let lesing = id_of(&w.app, "SELECT id FROM assessments WHERE external_id = $1", "lesing").await;
    assert_eq!(
        lines[1],
        format!(
            "{lesing},\"Kartlegging \"\"lesing\"\", høst\",norsk,2026-09-15,completed,30,40,\
             2026-09-15T09:30:00.000000Z,publisher system"
        )
    );
    assert!(lines[2].ends_with(",Leseprøve,norsk,2026-10-01,completed,12,20,,manual registration"), "{}", lines[2]);

    let mut db = SqlxDb::new(app_pool(&w.app).await);
    let expires =
        store(&mut db, &w.app.variables, &w.oslo.tenant_id, &request, &w.per.user_id, &export, 7).await.unwrap();
    // A repeated fulfilment stores nothing twice and keeps the first expiry.
    let again =
        store(&mut db, &w.app.variables, &w.oslo.tenant_id, &request, &w.per.user_id, &export, 7).await.unwrap();
    assert_eq!(expires, again);
    let stored: Vec<(String, Vec<u8>, i64, bool)> = sqlx::query_as(
        "SELECT format, content_enc, bytes, expires_at BETWEEN now() + interval '7 days' - interval '1 minute' \
                AND now() + interval '7 days' FROM subject_exports WHERE request_id = $1::uuid ORDER BY format",
    )
    .bind(&request)
    .fetch_all(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(stored.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["csv", "json"]);
    for (format, blob, bytes, week) in &stored {
        assert!(week, "{format}: kept 7 days");
        for plain in ["Ødegård".as_bytes(), synthetic_id(0).as_bytes(), b"katt"] {
            assert!(!blob.windows(plain.len()).any(|win| win == plain), "{format}: stored in the clear");
        }
        assert!(*bytes > 0);
    }

    // The officer downloads both.
    let path = format!("/subject-requests/{request}/export");
    let r = w.app.call(download_request(&path, &w.privacy.token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        r.header("content-disposition"),
        Some(format!("attachment; filename=\"subject-export-{request}.json\"").as_str())
    );
    assert_eq!(r.json(), export.json);
    let r = w.app.call(download_request(&format!("{path}.csv"), &w.privacy.token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(
        r.header("content-disposition"),
        Some(format!("attachment; filename=\"subject-export-{request}.csv\"").as_str())
    );
    assert_eq!(r.text(), csv);

    // Each download: an audit record (format and size, never contents) and an access record.
    let audited = audit_rows(&w, "subject_export.downloaded", &request).await;
    assert_eq!(audited.len(), 2);
    assert_eq!(audited[0], json!({"actor": w.per.user_id, "details": {"format": "json", "bytes": stored[1].2}}));
    assert_eq!(audited[1], json!({"actor": w.per.user_id, "details": {"format": "csv", "bytes": stored[0].2}}));
    let records: Vec<(uuid::Uuid, Vec<uuid::Uuid>, Option<String>)> = sqlx::query_as(
        "SELECT actor_user_id, pupil_ids, client_ip FROM access_log WHERE action = 'subject_export.downloaded' ORDER BY id",
    )
    .fetch_all(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(records.len(), 2);
    for (actor, pupils, ip) in &records {
        assert_eq!(actor.to_string(), w.per.user_id);
        assert_eq!(pupils.iter().map(|p| p.to_string()).collect::<Vec<_>>(), vec![w.pupil.as_str()]);
        assert_eq!(ip.as_deref(), Some("127.0.0.1"));
    }

    // Refused: another tenant's officer (404, as an unknown id), a teacher and
    // tenant admin without the privacy-officer role (403), no credentials
    // (401), an id that is not one (404). None of them leaves a trace of a download.
    w.app.call(download_request(&path, &w.bergen_privacy.token)).await.assert_problem(404, "not-found");
    w.app
        .call(download_request(&format!("{path}.csv"), &w.bergen_privacy.token))
        .await
        .assert_problem(404, "not-found");
    w.app.call(download_request(&path, &w.kari_session.token)).await.assert_problem(403, "forbidden");
    w.app.call(download_request(&path, "nope")).await.assert_problem(401, "unauthenticated");
    w.app.call(download_request("/subject-requests/x/export", &w.privacy.token)).await.assert_problem(404, "not-found");
    let missing = format!("/subject-requests/{}/export", uuid::Uuid::new_v4());
    w.app.call(download_request(&missing, &w.privacy.token)).await.assert_problem(404, "not-found");
    let r = w.app.send(http::Method::POST, &path, Some(&w.privacy.token), None).await;
    r.assert_problem(405, "method-not-allowed");
    assert_eq!(audit_rows(&w, "subject_export.downloaded", &request).await.len(), 2);
    assert_eq!(w.app.count("SELECT count(*) FROM access_log WHERE action = 'subject_export.downloaded'").await, 2);

    // Expired: deleted at the next download of the tenant (audited), then 404.
    sqlx::query("UPDATE subject_exports SET expires_at = now() - interval '1 second' WHERE request_id = $1::uuid")
        .bind(&request)
        .execute(&w.app.pool)
        .await
        .unwrap();
    let other_tenant = w.app.call(download_request(&path, &w.bergen_privacy.token)).await;
    other_tenant.assert_problem(404, "not-found");
    assert_eq!(w.app.count("SELECT count(*) FROM subject_exports").await, 2, "Bergen's officer deletes only Bergen's");
    let body = w.app.call(download_request(&path, &w.privacy.token)).await.assert_problem(404, "not-found");
    assert!(body["detail"].as_str().unwrap().contains("expired"), "{body}");
    assert_eq!(w.app.count("SELECT count(*) FROM subject_exports").await, 0, "expired exports are deleted");
    let expired = audit_rows(&w, "subject_export.expired", &request).await;
    let formats: BTreeSet<&str> = expired.iter().map(|e| e["details"]["format"].as_str().unwrap()).collect();
    assert_eq!(formats, BTreeSet::from(["csv", "json"]));
    w.app.call(download_request(&format!("{path}.csv"), &w.privacy.token)).await.assert_problem(404, "not-found");
    assert_eq!(audit_rows(&w, "subject_export.downloaded", &request).await.len(), 2);
}

#[tokio::test]
async fn a_staff_users_export_downloads_without_an_access_record_and_one_under_a_key_not_held_discloses_nothing() {
    let w = world().await;
    let request = request(&w, "access", "user", &w.kari.user_id).await;
    let export = export_of(&w, Subject::User(w.kari.user_id.clone()), false).await;
    let mut db = SqlxDb::new(app_pool(&w.app).await);
    store(&mut db, &w.app.variables, &w.oslo.tenant_id, &request, &w.per.user_id, &export, 7).await.unwrap();
    let before = w.app.count("SELECT count(*) FROM access_log").await;
    let path = format!("/subject-requests/{request}/export");
    let r = w.app.call(download_request(&path, &w.privacy.token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), export.json);
    assert_eq!(w.app.count("SELECT count(*) FROM access_log").await, before, "no pupil data, no access record");
    assert_eq!(audit_rows(&w, "subject_export.downloaded", &request).await.len(), 1);
    // No CSV was made for this request.
    w.app.call(download_request(&format!("{path}.csv"), &w.privacy.token)).await.assert_problem(404, "not-found");

    // An export stored under a key this deployment does not hold (say,
    // rotated out) is a 500 that discloses nothing and records no download.
    let request2 = request_for_rotation(&w).await;
    let mut foreign = w.app.variables.clone();
    foreign.insert("identity_key".into(), tavle_tests::random_key());
    store(&mut db, &foreign, &w.oslo.tenant_id, &request2, &w.per.user_id, &export, 7).await.unwrap();
    let r = w.app.call(download_request(&format!("/subject-requests/{request2}/export"), &w.privacy.token)).await;
    r.assert_problem(500, "internal");
    assert!(!r.text().contains("kari"));
    assert_eq!(
        audit_rows(&w, "subject_export.downloaded", &request2).await.len(),
        0,
        "a failed download is not recorded"
    );
}

async fn request_for_rotation(w: &World) -> String {
    request(w, "access", "user", &w.kari.user_id).await
}
