//! The world of the subject-request tests (tests/tests/subject_requests*.rs)
//! and of the scenario's subject-request steps: a tenant whose pupil has
//! data in every table a pupil's data can be in.

use crate::{synthetic_id, Api, Session, Source, Staff, TestApp};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// A title that needs CSV quoting.
pub const TITLE: &str = "Kartlegging \"lesing\", høst";

/// Oslo: Nordby skole, group 5A with Åse Ødegård (pupil 0, the subject) and
/// Bjørn Aasen (pupil 1, her classmate). Kari teaches 5A and is a tenant
/// admin (the staff subject); Per is the privacy officer. Bergen has a
/// privacy officer of its own.
pub struct World {
    pub app: TestApp,
    pub oslo: Staff,
    pub publisher: Source,
    pub sas: Source,
    pub kari: Staff,
    pub kari_session: Session,
    pub per: Staff,
    pub privacy: Session,
    pub bergen_privacy: Session,
    pub group: String,
    pub pupil: String,
    pub other: String,
}

pub fn roster(school: &str, group: &str, pupils: &[(u32, &str, &str)]) -> Value {
    let pupils: Vec<Value> = pupils
        .iter()
        .map(|(n, given, family)| {
            json!({"identity_number": synthetic_id(*n), "feide_username": format!("pupil{n}@skole.no"),
                   "given_name": given, "family_name": family, "year_level": 5, "gender": "female",
                   "special_needs": *n == 0, "groups": [group]})
        })
        .collect();
    json!({"school": {"external_id": school, "name": format!("{school} skole")},
           "groups": [{"external_id": group, "name": group, "year_level": 5}], "pupils": pupils})
}

pub async fn id_of(app: &TestApp, sql: &str, arg: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(sql).bind(arg).fetch_one(&app.pool).await.unwrap();
    id.to_string()
}

pub async fn app_pool(app: &TestApp) -> PgPool {
    PgPoolOptions::new().max_connections(1).connect(&app.variables["db_url"]).await.unwrap()
}

pub async fn world() -> World {
    let app = TestApp::spawn().await;
    let oslo = app.seed_tenant("oslo").await;
    let admin = app.login(&oslo).await;
    let sas = app.create_source(&admin, "sas").await;
    let publisher = app.create_source(&admin, "publisher").await;
    let r = app
        .deliver(&sas, "roster", "r-1", &roster("nordby", "5A", &[(0, "Åse", "Ødegård"), (1, "Bjørn", "Aasen")]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let results = json!({
        "assessment": {"external_id": "lesing", "title": TITLE, "subject": "norsk", "year_level": 5,
                       "max_score": 40, "administered_on": "2026-09-15"},
        "results": [
            {"external_id": "res-0", "pupil": {"identity_number": synthetic_id(0)}, "score": 30, "status": "completed",
             "completed_at": "2026-09-15T09:30:00Z",
             "items": [{"item": "q1", "score": 1, "max_score": 1, "answer": "katt"}]},
            {"external_id": "res-1", "pupil": {"identity_number": synthetic_id(1)}, "score": 12.5, "status": "completed",
             "completed_at": "2026-09-15T09:31:00Z",
             "items": [{"item": "q1", "score": 0, "max_score": 1, "answer": "hund"}]},
        ],
    });
    let r = app.deliver(&publisher, "results", "res-1", &results).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let group = id_of(&app, "SELECT id FROM groups WHERE external_id = $1", "5A").await;
    let pupil = id_of(&app, "SELECT id FROM pupils WHERE given_name = $1", "Åse").await;
    let other = id_of(&app, "SELECT id FROM pupils WHERE given_name = $1", "Bjørn").await;
    let assessment = id_of(&app, "SELECT id FROM assessments WHERE external_id = $1", "lesing").await;

    let kari = app
        .create_user(&admin, &oslo, "kari", json!([{"role": "teacher", "group_id": group}, {"role": "tenant_admin"}]))
        .await;
    let kari_session = app.login(&kari).await;
    let per = app.create_user(&admin, &oslo, "per", json!([{"role": "privacy_officer"}])).await;
    let privacy = app.login(&per).await;

    // Kari reads Åse's data (access records, one naming the whole class),
    // searches for her by identity number (audit), registers an assessment
    // and a manual result for her.
    assert_eq!(app.get(&format!("/pupils/{pupil}"), &kari_session.token).await.status, 200);
    let overview = format!("/groups/{group}/overview?assessment_id={assessment}");
    assert_eq!(app.get(&overview, &kari_session.token).await.status, 200);
    let r = app.post("/pupils/search", Some(&kari_session.token), json!({"identity_number": synthetic_id(0)})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = app
        .post(
            "/assessments",
            Some(&kari_session.token),
            json!({"title": "Leseprøve", "subject": "norsk", "max_score": 20, "administered_on": "2026-10-01"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let manual = r.json()["id"].as_str().unwrap().to_owned();
    let r = app
        .post(
            &format!("/pupils/{pupil}/results"),
            Some(&kari_session.token),
            json!({"assessment_id": manual, "score": 12, "status": "completed"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Åse moves to Sørby skole (a transfer in the audit log).
    let r = app.deliver(&sas, "roster", "r-2", &roster("sorby", "6A", &[(0, "Åse", "Ødegård")])).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let bergen = app.seed_tenant("bergen").await;
    let bergen_admin = app.login(&bergen).await;
    let bp = app.create_user(&bergen_admin, &bergen, "berit", json!([{"role": "privacy_officer"}])).await;
    let bergen_privacy = app.login(&bp).await;

    World { app, oslo, publisher, sas, kari, kari_session, per, privacy, bergen_privacy, group, pupil, other }
}

/// Text of every text, jsonb and bytea column of every table that holds
/// one of `needles` (text, case-insensitively) or `bytes`.
pub async fn scan(app: &TestApp, needles: &[&str], bytes: &[Vec<u8>]) -> Vec<String> {
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text FROM information_schema.columns c \
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' \
           AND c.data_type IN ('text', 'jsonb', 'json', 'bytea', 'character varying', 'ARRAY') ORDER BY 1, 2",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(columns.len() > 40, "the scan covers the schema: {}", columns.len());
    let mut found = Vec::new();
    for (table, column, kind) in columns {
        if kind == "bytea" {
            for b in bytes {
                let sql = format!("SELECT count(*) FROM \"{table}\" WHERE position($1::bytea IN \"{column}\") > 0");
                let n: i64 = sqlx::query_scalar(&sql).bind(b).fetch_one(&app.pool).await.unwrap();
                if n > 0 {
                    found.push(format!("{table}.{column}: bytes"));
                }
            }
            continue;
        }
        for needle in needles {
            let sql =
                format!("SELECT count(*) FROM \"{table}\" WHERE strpos(lower(\"{column}\"::text), lower($1)) > 0");
            let n: i64 = sqlx::query_scalar(&sql).bind(needle).fetch_one(&app.pool).await.unwrap();
            if n > 0 {
                found.push(format!("{table}.{column}: {needle}"));
            }
        }
    }
    found
}
