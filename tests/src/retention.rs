//! The retention component called at a clock of the test's choosing (its
//! handler takes the clock as input), and what its tests share: backdated
//! access records, and an app's end state in a form two apps can compare.

use crate::{TestApp, TestResponse};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::HashMap;
use tavle_core::access_log::{chain_hash, Record};
use tavle_core::db::SqlxDb;
use tavle_host::manifest::Manifest;
use time::OffsetDateTime;

pub use time::Duration;

/// The component as its host configures it, with its own database login.
pub struct Retention {
    pub variables: HashMap<String, String>,
    pool: PgPool,
}

impl Retention {
    /// `app`'s retention component, with `overrides` of its app variables.
    pub async fn of(app: &TestApp, overrides: &[(&str, &str)]) -> Retention {
        let mut provided = app.variables.clone();
        for (k, v) in overrides {
            provided.insert((*k).to_owned(), (*v).to_owned());
        }
        let manifest = Manifest::load(&crate::project_root().join("spin.toml")).unwrap();
        let app_vars = manifest.resolve_app_variables(&provided).unwrap();
        let variables = manifest.component_variables("retention", &app_vars).unwrap();
        let pool = PgPoolOptions::new().max_connections(2).connect(&variables["db_url"]).await.unwrap();
        Retention { variables, pool }
    }

    pub fn token(&self) -> String {
        self.variables["scheduler_token"].clone()
    }

    /// One request at clock `now`.
    pub async fn call_at(&self, req: http::Request<Vec<u8>>, now: OffsetDateTime) -> TestResponse {
        let mut db = SqlxDb::new(self.pool.clone());
        let response = tavle_retention::handle_at(req, &self.variables, &mut db, now).await;
        let (parts, body) = response.into_parts();
        TestResponse { status: parts.status.as_u16(), headers: parts.headers, body }
    }

    /// `POST /internal/retention/run` with the scheduler's token at `now`.
    pub async fn post_run(&self, now: OffsetDateTime, dry_run: bool) -> TestResponse {
        let path = if dry_run { "/internal/retention/run?dry_run=true" } else { "/internal/retention/run" };
        let req = http::Request::post(path)
            .header("authorization", format!("Bearer {}", self.token()))
            .header("content-type", "application/json")
            .body(br#"{"trigger": "manual"}"#.to_vec())
            .unwrap();
        self.call_at(req, now).await
    }

    /// A run that must succeed; its report.
    pub async fn run(&self, now: OffsetDateTime) -> Value {
        let r = self.post_run(now, false).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Calls until a run reports that nothing remains; the reports.
    pub async fn run_to_end(&self, now: OffsetDateTime) -> Vec<Value> {
        let mut reports = Vec::new();
        for _ in 0..500 {
            let report = self.run(now).await;
            let more = report["more_remaining"].as_bool().unwrap();
            reports.push(report);
            if !more {
                return reports;
            }
        }
        panic!("retention did not finish in 500 calls");
    }

    /// A GET as a user (a bearer token) at `now`.
    pub async fn get_at(&self, path: &str, token: &str, now: OffsetDateTime) -> TestResponse {
        let req = http::Request::get(path).header("authorization", format!("Bearer {token}")).body(Vec::new()).unwrap();
        self.call_at(req, now).await
    }
}

/// Now, as the tests' clock starts.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Records in `lanes` lanes of the tenant's access log, `per_lane` each,
/// written `months` ago by `actor` about `pupil` (the owner backfills a
/// valid history, as if the log had run that long). Their number.
pub async fn backfill_access_log(
    pool: &PgPool,
    tenant_id: &str,
    actor: &str,
    pupil: &str,
    lanes: i16,
    per_lane: i64,
    months: i32,
) -> i64 {
    for lane in 0..lanes {
        let (mut seq, mut prev): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM access_log_heads WHERE tenant_id = $1::uuid AND lane = $2")
                .bind(tenant_id)
                .bind(lane)
                .fetch_one(pool)
                .await
                .unwrap();
        for k in 0..per_lane {
            seq += 1;
            let at: String = sqlx::query_scalar(
                "SELECT rfc3339(date_trunc('second', now()) - make_interval(months => $1) + make_interval(secs => $2))",
            )
            .bind(months)
            .bind(k as f64)
            .fetch_one(pool)
            .await
            .unwrap();
            let mut r = Record {
                tenant_id: tenant_id.to_owned(),
                lane,
                seq,
                at: at.clone(),
                actor_user_id: actor.to_owned(),
                action: "pupil.viewed".into(),
                pupil_ids: pupil.to_owned(),
                client_ip: Some("127.0.0.1".into()),
                request_id: None,
                format: 2,
                prev_hash: prev.clone(),
                hash: Vec::new(),
            };
            r.hash = chain_hash(&prev, &r);
            sqlx::query(
                "INSERT INTO access_log (tenant_id, lane, seq, at, actor_user_id, action, pupil_ids, client_ip, \
                                         request_id, prev_hash, hash, format) \
                 VALUES ($1::uuid, $2, $3, $4::timestamptz, $5::uuid, $6, ARRAY[$7::uuid], $8, NULL, $9, $10, 2)",
            )
            .bind(&r.tenant_id)
            .bind(lane)
            .bind(seq)
            .bind(&at)
            .bind(&r.actor_user_id)
            .bind(&r.action)
            .bind(&r.pupil_ids)
            .bind(&r.client_ip)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .execute(pool)
            .await
            .unwrap();
            prev = r.hash;
        }
        sqlx::query("UPDATE access_log_heads SET seq = $1, hash = $2 WHERE tenant_id = $3::uuid AND lane = $4")
            .bind(seq)
            .bind(&prev)
            .bind(tenant_id)
            .bind(lane)
            .execute(pool)
            .await
            .unwrap();
    }
    i64::from(lanes) * per_lane
}

/// What retention decides about, without generated ids and times, so that
/// the end states of two apps seeded alike compare equal: pupils, results,
/// anonymised results, leavers' reports, users, sessions, deliveries, the
/// access and audit logs' sizes.
pub async fn end_state(pool: &PgPool) -> String {
    let queries = [
        "SELECT given_name || ' ' || family_name || ' left ' || coalesce(left_at::text, '-') FROM pupils",
        "SELECT p.given_name || ' ' || a.external_id || ' ' || coalesce(r.score::text, '-') \
         FROM results r JOIN pupils p ON p.id = r.pupil_id JOIN assessments a ON a.id = r.assessment_id",
        "SELECT a.external_id || ' ' || coalesce(s.external_id, 'tenant') || ' ' || coalesce(r.year_level::text, '-') \
             || ' ' || coalesce(r.gender, '-') || ' ' || coalesce(r.score::text, '-') || ' ' || r.pending::text \
         FROM anonymised_results r JOIN assessments a ON a.id = r.assessment_id \
         LEFT JOIN schools s ON s.id = r.school_id",
        "SELECT (report - 'results')::text || ' results ' || jsonb_array_length(report->'results') \
             || ' until ' || delete_on::text FROM leaver_reports",
        "SELECT username || ' ' || display_name || ' ' || coalesce(email, '-') FROM users",
        "SELECT count(*)::text FROM sessions",
        "SELECT count(*)::text FROM webhook_deliveries",
        "SELECT count(*)::text FROM access_log",
        "SELECT count(*)::text FROM audit_log WHERE action NOT LIKE 'retention.%'",
    ];
    let mut out = String::new();
    for q in queries {
        let mut rows: Vec<String> = sqlx::query_scalar(q).fetch_all(pool).await.unwrap();
        rows.sort();
        out.push_str(&format!("{q}\n  {rows:?}\n"));
    }
    out
}
