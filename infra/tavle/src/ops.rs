//! Operator tasks: migrations, tenants with their first admin, and the demo
//! tenant. They use the same `Db` interface and SQL as the components.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use sqlx::PgPool;
use tavle_core::audit::{self, Actor, Event};
use tavle_core::crypto::{BlindIndex, IdentityCipher};
use tavle_core::db::{transaction, uuid, Db, DbError, SqlxDb, Value};
use tavle_core::identity::IdentityNumber;
use tavle_login::password::NewPassword;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")?;
    grant_retention_role(pool).await
}

/// What migration 0014 grants the retention role, again: idempotent, for a
/// role created after that migration ran.
async fn grant_retention_role(pool: &PgPool) -> Result<()> {
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = 'tavle_retention'").fetch_optional(pool).await?;
    if exists.is_some() {
        for sql in [
            "GRANT EXECUTE ON FUNCTION access_log_prune(uuid, timestamptz) TO tavle_retention",
            "GRANT EXECUTE ON FUNCTION audit_log_prune(uuid, timestamptz, int) TO tavle_retention",
            "GRANT UPDATE, DELETE ON anonymised_results TO tavle_retention",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON retention_runs, retention_run_counts, retention_lock, \
             leaver_reports TO tavle_retention",
        ] {
            sqlx::query(sql).execute(pool).await.context("granting the retention role its privileges")?;
        }
    }
    Ok(())
}

/// Creates the database in `url` if it does not exist (local clusters only).
pub async fn ensure_database(url: &str) -> Result<()> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let name = opts.get_database().unwrap_or("postgres").to_owned();
    let mut admin = opts.database("postgres").connect().await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""))).execute(&mut admin).await?;
    }
    Ok(())
}

/// The application roles, as infra/README.md (3.2) sets them up in
/// production: `tavle_app` holds the privileges, the login `tavle_app_1`
/// (with the guard rails of a runtime login) is what the components connect
/// as. For the private clusters of `tavle dev` and the tests; run as a
/// superuser, before the migrations, whose REVOKEs need the roles to exist.
pub const APP_LOGIN: &str = "tavle_app_1";
/// The retention component's login (`retention_db_url`): role
/// `tavle_retention`, the application's privileges plus what migration 0014
/// grants it alone (pruning the logs, generalising anonymised results).
pub const RETENTION_LOGIN: &str = "tavle_retention_1";
/// (role, statements that create it), in order.
const APP_ROLES: [(&str, &[&str]); 4] = [
    ("tavle_app", &["CREATE ROLE tavle_app NOLOGIN"]),
    (
        "tavle_app_1",
        &[
            "CREATE ROLE tavle_app_1 LOGIN IN ROLE tavle_app",
            "ALTER ROLE tavle_app_1 SET statement_timeout = '30s'",
            "ALTER ROLE tavle_app_1 SET idle_in_transaction_session_timeout = '60s'",
        ],
    ),
    ("tavle_retention", &["CREATE ROLE tavle_retention NOLOGIN IN ROLE tavle_app"]),
    (
        "tavle_retention_1",
        &[
            "CREATE ROLE tavle_retention_1 LOGIN IN ROLE tavle_retention",
            "ALTER ROLE tavle_retention_1 SET statement_timeout = '30s'",
            "ALTER ROLE tavle_retention_1 SET idle_in_transaction_session_timeout = '60s'",
        ],
    ),
];
/// Per database: what the owner creates is usable, not alterable, by `tavle_app`.
const APP_GRANTS: [&str; 4] = [
    "GRANT USAGE ON SCHEMA public TO tavle_app",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO tavle_app",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO tavle_app",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO tavle_app",
];

/// Creates the application roles in the cluster of `pool` that do not exist
/// yet; true if it created the application role itself (a cluster migrated
/// without it needs a fresh start; roles added later get their grants from
/// [`migrate`]).
pub async fn ensure_app_roles(pool: &PgPool) -> Result<bool> {
    let mut created = false;
    for (role, statements) in APP_ROLES {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1").bind(role).fetch_optional(pool).await?;
        if exists.is_none() {
            for sql in statements {
                sqlx::query(sql).execute(pool).await?;
            }
            created |= role == "tavle_app";
        }
    }
    Ok(created)
}

/// The application role's privileges in the database of `pool` (before its
/// migrations: default privileges cover what they create).
pub async fn grant_app_role(pool: &PgPool) -> Result<()> {
    for sql in APP_GRANTS {
        sqlx::query(sql).execute(pool).await?;
    }
    Ok(())
}

pub struct NewTenant<'a> {
    pub slug: &'a str,
    pub name: &'a str,
    pub admin_username: &'a str,
    pub admin_display_name: &'a str,
    pub admin_password: &'a str,
}

/// Creates a tenant and its first tenant admin in one transaction.
/// Returns (tenant id, admin user id).
pub async fn create_tenant(pool: &PgPool, t: NewTenant<'_>) -> Result<(String, String)> {
    let username = tavle_login::normalise_username(t.admin_username)
        .ok_or_else(|| anyhow!("admin username must be 2 to 64 characters: a-z, 0-9 and . _ @ -"))?;
    let password = NewPassword::parse(t.admin_password, &username)
        .map_err(|broken| anyhow!("admin password: {}", broken.join("; ")))?;
    let hash = password.hash();
    // Staff names are stored in NFC, like pupils' (`tavle_core::names`).
    let display_name = tavle_core::names::nfc(t.admin_display_name);
    let mut db = SqlxDb::new(pool.clone());
    let ids = transaction(&mut db, async |db| {
        let tenant = db
            .query_one(
                "INSERT INTO tenants (slug, name) VALUES ($1::text, $2::text) RETURNING id",
                &[t.slug.into(), t.name.into()],
            )
            .await?
            .text("id")?;
        let user = db
            .query_one(
                "INSERT INTO users (tenant_id, username, display_name, password_hash) \
                 VALUES ($1::uuid, $2::text, $3::text, $4::text) RETURNING id",
                &[uuid(&tenant), username.clone().into(), display_name.clone().into(), hash.clone().into()],
            )
            .await?
            .text("id")?;
        db.execute(
            "INSERT INTO role_grants (tenant_id, user_id, role) VALUES ($1::uuid, $2::uuid, 'tenant_admin')",
            &[uuid(&tenant), uuid(&user)],
        )
        .await?;
        audit::record(
            db,
            None,
            Event::new(&tenant, Actor::System("cli"), "tenant.created")
                .target("tenant", &tenant)
                .details(json!({"slug": t.slug, "admin_user_id": user})),
        )
        .await?;
        Ok::<_, DbError>((tenant, user))
    })
    .await;
    match ids {
        Ok(ids) => Ok(ids),
        Err(e) if e.is_unique_violation("tenants_slug_key") => bail!("a tenant with slug `{}` already exists", t.slug),
        Err(DbError::Constraint { constraint, .. }) if constraint == "tenants_slug_check" => {
            bail!("tenant slug must be 2 to 63 characters: a-z, 0-9 and -")
        }
        Err(e) => Err(anyhow!("creating tenant: {e}")),
    }
}

/// A demo login printed by `tavle dev --demo`.
pub struct DemoLogin {
    pub username: String,
    pub role: &'static str,
    pub password: String,
}

pub const DEMO_TENANT: &str = "demo";

const GIVEN: [&str; 12] =
    ["Emma", "Nora", "Sofie", "Ingrid", "Aksel", "Jakob", "Filip", "Noah", "Åse", "Øystein", "Sigrún", "Mikkel"];
const FAMILY: [&str; 10] =
    ["Hansen", "Johansen", "Olsen", "Larsen", "Andersen", "Pedersen", "Nilsen", "Kristiansen", "Jensen", "Bærheim"];

/// A random password that satisfies the policy.
fn random_password() -> String {
    format!("Demo-{}-{}", &tavle_core::auth::random_secret()[..12], "x7")
}

/// Loads (or refreshes) the demo tenant: one school, two groups, 48 pupils
/// with synthetic identity numbers only, and one staff user per role. Demo
/// passwords are regenerated on every run and printed by the caller.
pub async fn load_demo(pool: &PgPool, identity_key: &str, blind_index_key: &str) -> Result<Vec<DemoLogin>> {
    let cipher = IdentityCipher::from_config(identity_key, "").map_err(|e| anyhow!("identity_key: {e}"))?;
    let index = BlindIndex::from_config(blind_index_key).map_err(|e| anyhow!("blind_index_key: {e}"))?;
    let mut db = SqlxDb::new(pool.clone());
    let existing = db.query_opt("SELECT id FROM tenants WHERE slug = $1::text", &[DEMO_TENANT.into()]).await?;
    let admin_password = random_password();
    let tenant_id = match existing {
        Some(row) => row.text("id")?,
        None => {
            create_tenant(
                pool,
                NewTenant {
                    slug: DEMO_TENANT,
                    name: "Demo kommune (synthetic data)",
                    admin_username: "admin",
                    admin_display_name: "Demo Admin",
                    admin_password: &admin_password,
                },
            )
            .await?
            .0
        }
    };
    let staff: [(&str, &str, &'static str); 4] = [
        ("admin", "Demo Admin", "tenant_admin"),
        ("laerer", "Lise Lærer", "teacher"),
        ("rektor", "Rune Rektor", "school_leader"),
        ("personvern", "Petra Personvern", "privacy_officer"),
    ];
    let mut logins = Vec::new();
    transaction(&mut db, async |db| {
        let school = db
            .query_one(
                "INSERT INTO schools (tenant_id, external_id, name) VALUES ($1::uuid, 'demo-school', 'Demo skole') \
                 ON CONFLICT (tenant_id, external_id) DO UPDATE SET name = EXCLUDED.name RETURNING id",
                &[uuid(&tenant_id)],
            )
            .await?
            .text("id")?;
        let mut groups = Vec::new();
        for name in ["5A", "5B"] {
            let g = db
                .query_one(
                    "INSERT INTO groups (tenant_id, school_id, external_id, name, year_level) \
                     VALUES ($1::uuid, $2::uuid, $3::text, $3::text, 5) \
                     ON CONFLICT (tenant_id, school_id, external_id) DO UPDATE SET name = EXCLUDED.name RETURNING id",
                    &[uuid(&tenant_id), uuid(&school), name.into()],
                )
                .await?
                .text("id")?;
            groups.push(g);
        }
        let mut pupils = Vec::new();
        for i in 0..48u32 {
            let id = IdentityNumber::synthetic((2015, 1 + i % 12, 1 + i % 28), i * 7)
                .ok_or_else(|| anyhow!("could not generate a synthetic identity number"))?;
            let enc = cipher.encrypt_identity(&id, tenant_id.as_bytes());
            let idx = index.index(&tenant_id, &id);
            let pupil = db
                .query_one(
                    "INSERT INTO pupils (tenant_id, school_id, identity_enc, identity_index, given_name, family_name, \
                                         year_level, gender, special_needs) \
                     VALUES ($1::uuid, $2::uuid, $3::bytea, $4::bytea, $5::text, $6::text, 5, $7::text, $8::bool) \
                     ON CONFLICT (tenant_id, identity_index) WHERE identity_index IS NOT NULL \
                     DO UPDATE SET given_name = EXCLUDED.given_name RETURNING id",
                    &[
                        uuid(&tenant_id),
                        uuid(&school),
                        Value::Bytes(enc),
                        Value::Bytes(idx),
                        GIVEN[i as usize % GIVEN.len()].into(),
                        FAMILY[(i as usize / 3) % FAMILY.len()].into(),
                        (if i % 2 == 0 { "female" } else { "male" }).into(),
                        (i % 11 == 0).into(),
                    ],
                )
                .await?
                .text("id")?;
            db.execute(
                "INSERT INTO group_memberships (tenant_id, group_id, pupil_id) VALUES ($1::uuid, $2::uuid, $3::uuid) \
                 ON CONFLICT DO NOTHING",
                &[uuid(&tenant_id), uuid(&groups[(i % 2) as usize]), uuid(&pupil)],
            )
            .await?;
            pupils.push(pupil);
        }
        load_demo_results(db, &tenant_id, &pupils).await?;
        for (username, display, role) in staff {
            let password = random_password();
            let hash =
                NewPassword::parse(&password, username).map_err(|b| anyhow!("demo password: {}", b.join("; ")))?.hash();
            let user = db
                .query_one(
                    "INSERT INTO users (tenant_id, username, display_name, password_hash) \
                     VALUES ($1::uuid, $2::text, $3::text, $4::text) \
                     ON CONFLICT (tenant_id, username) WHERE deleted_at IS NULL \
                     DO UPDATE SET password_hash = EXCLUDED.password_hash, active = true, \
                                   failed_logins = 0, locked_until = NULL \
                     RETURNING id",
                    &[uuid(&tenant_id), username.into(), display.into(), hash.into()],
                )
                .await?
                .text("id")?;
            db.execute("DELETE FROM role_grants WHERE user_id = $1::uuid", &[uuid(&user)]).await?;
            let (school_id, group_id) = match role {
                "teacher" => (Value::Null, uuid(&groups[0])),
                "school_leader" => (uuid(&school), Value::Null),
                _ => (Value::Null, Value::Null),
            };
            db.execute(
                "INSERT INTO role_grants (tenant_id, user_id, role, school_id, group_id) \
                 VALUES ($1::uuid, $2::uuid, $3::text, $4::uuid, $5::uuid)",
                &[uuid(&tenant_id), uuid(&user), role.into(), school_id, group_id],
            )
            .await?;
            logins.push(DemoLogin { username: username.to_owned(), role, password });
        }
        audit::record(db, None, Event::new(&tenant_id, Actor::System("cli"), "demo.loaded")).await?;
        Ok::<_, anyhow::Error>(())
    })
    .await?;
    Ok(logins)
}

/// Three screenings from a (disabled, keyless) demo publisher, with a result
/// for every demo pupil, so that profiles, class overviews and follow-up
/// lists show something: reading in the spring and the autumn of 2026 (one
/// test family, so profiles show movements across thresholds) and numeracy
/// in January 2027. Each has a threshold on the total (15 of 40) and two
/// subtests (20 each, thresholds 7 and 6); every ninth pupil was absent.
async fn load_demo_results(db: &mut SqlxDb, tenant_id: &str, pupils: &[String]) -> Result<(), DbError> {
    let existing = db
        .query_opt(
            "SELECT id FROM webhook_sources WHERE tenant_id = $1::uuid AND name = 'Demo forlag (synthetic)'",
            &[uuid(tenant_id)],
        )
        .await?;
    let source = match existing {
        Some(row) => row.text("id")?,
        None => db
            .query_one(
                "INSERT INTO webhook_sources (tenant_id, kind, name, active, disabled_at) \
                 VALUES ($1::uuid, 'publisher', 'Demo forlag (synthetic)', false, now()) RETURNING id",
                &[uuid(tenant_id)],
            )
            .await?
            .text("id")?,
    };
    for (n, (external_id, title, subject, on, family, subtests)) in [
        (
            "demo-lesing-v26",
            "Kartlegging lesing 4. trinn, vår",
            "norsk",
            "2026-03-10",
            "demo-lesing",
            [("ordlesing", "Ordlesing"), ("forstaelse", "Leseforståelse")],
        ),
        (
            "demo-lesing",
            "Kartlegging lesing 5. trinn",
            "norsk",
            "2026-09-15",
            "demo-lesing",
            [("ordlesing", "Ordlesing"), ("forstaelse", "Leseforståelse")],
        ),
        (
            "demo-regning",
            "Kartlegging regning 5. trinn",
            "matematikk",
            "2027-01-20",
            "demo-regning",
            [("tallforstaelse", "Tallforståelse"), ("regneoperasjoner", "Regneoperasjoner")],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let assessment = db
            .query_one(
                "INSERT INTO assessments (tenant_id, source_id, external_id, title, subject, year_level, max_score, \
                                          administered_on, family, threshold) \
                 VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text, 5, 40, $6::text::date, $7::text, 15) \
                 ON CONFLICT (source_id, external_id) DO UPDATE SET title = EXCLUDED.title, family = EXCLUDED.family, \
                     threshold = EXCLUDED.threshold RETURNING id",
                &[
                    uuid(tenant_id),
                    uuid(&source),
                    external_id.into(),
                    title.into(),
                    subject.into(),
                    on.into(),
                    family.into(),
                ],
            )
            .await?
            .text("id")?;
        db.execute(
            "INSERT INTO assessment_subtests (tenant_id, assessment_id, key, position, title, max_score, threshold) \
             SELECT $1::uuid, $2::uuid, x.k, (x.n - 1)::int, x.t, 20, CASE WHEN x.n = 1 THEN 7 ELSE 6 END \
             FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS x(k, t, n) \
             ON CONFLICT (assessment_id, key) DO NOTHING",
            &[
                uuid(tenant_id),
                uuid(&assessment),
                Value::text_array(subtests.map(|(k, _)| k)),
                Value::text_array(subtests.map(|(_, t)| t)),
            ],
        )
        .await?;
        // Deterministic spread of scores; every ninth pupil was absent. The
        // total splits into the two subtests (each 0..=20).
        let ids: Vec<String> = pupils.iter().map(|p| format!("{external_id}-{p}")).collect();
        let totals: Vec<Option<i64>> =
            (0..pupils.len()).map(|i| (i % 9 != 4).then_some(((i * 7 + n * 5) % 41) as i64)).collect();
        let scores: Vec<String> = totals.iter().map(|t| t.map(|t| t.to_string()).unwrap_or_default()).collect();
        let subtest_scores: Vec<String> = totals
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                None => String::new(),
                Some(t) => {
                    let first = (t / 2 + (i % 5) as i64 - 2).clamp((t - 20).max(0), (*t).min(20));
                    format!(r#"{{"{}": {first}, "{}": {}}}"#, subtests[0].0, subtests[1].0, t - first)
                }
            })
            .collect();
        db.execute(
            "INSERT INTO results (tenant_id, pupil_id, assessment_id, source_id, external_id, score, status, completed_at, \
                                  subtest_scores) \
             SELECT $1::uuid, x.p::uuid, $2::uuid, $3::uuid, x.e, nullif(x.s, '')::float8, \
                    CASE WHEN x.s = '' THEN 'absent' ELSE 'completed' END, \
                    CASE WHEN x.s = '' THEN NULL ELSE $6::text::timestamptz END, nullif(x.ss, '')::jsonb \
             FROM unnest($4::text[], $5::text[], $7::text[], $8::text[]) AS x(p, e, s, ss) \
             ON CONFLICT (source_id, external_id) DO NOTHING",
            &[
                uuid(tenant_id),
                uuid(&assessment),
                uuid(&source),
                Value::text_array(pupils),
                Value::text_array(ids),
                format!("{on}T09:30:00Z").into(),
                Value::text_array(scores),
                Value::text_array(subtest_scores),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Outcome of checking one tenant's access log.
#[derive(Debug)]
pub struct ChainReport {
    /// Records verified (from the newest prune's cut on).
    pub records: i64,
    /// Checkpoints in the verified checkpoint chain (before any new anchor).
    pub checkpoints: i64,
    /// The anchor written after a good check (`verify_access_log_with` with
    /// `anchor`): its id and digest (hex), the head to keep outside the
    /// database and give back later as `--expect-head`.
    pub anchor: Option<(i64, String)>,
    /// With `expect_head`: the checkpoint (id) that has that digest.
    pub expected_head: Option<i64>,
    /// The first broken link, if any.
    pub broken: Option<tavle_core::access_log::Break>,
}

/// How to check: against a head kept outside the database, and whether to
/// leave an anchor of the checked state.
#[derive(Debug, Default, Clone)]
pub struct VerifyOptions {
    /// A checkpoint digest (hex) from an earlier check.
    pub expect_head: Option<String>,
    /// Append an anchor checkpoint of the checked state (when nothing is broken).
    pub anchor: bool,
}

/// Recomputes a tenant's access log without writing anything (see
/// [`verify_access_log_with`]).
pub async fn verify_access_log(pool: &PgPool, tenant_slug: &str) -> Result<ChainReport> {
    verify_access_log_with(pool, tenant_slug, &VerifyOptions::default()).await
}

/// Recomputes a tenant's access log in one snapshot: the checkpoint chain,
/// then every lane record by record (in batches, in sequence order) from the
/// newest prune's cut to the lane's head, checking every later anchor's
/// lane states on the way; reports the first broken link. With
/// `expect_head`, that digest must be a checkpoint of the chain (so that a
/// log rewritten with its heads and checkpoints is found); with `anchor`, a
/// good check appends an anchor of exactly the state it checked.
pub async fn verify_access_log_with(pool: &PgPool, tenant_slug: &str, opts: &VerifyOptions) -> Result<ChainReport> {
    use std::collections::HashMap;
    use tavle_core::access_log::{verify_checkpoints, Break, Checkpoint, LaneState, Verifier, LANES};
    let expect_head = match &opts.expect_head {
        None => None,
        Some(h) => Some(decode_hex(h).ok_or_else(|| anyhow!("--expect-head is the 64 hex digits of a head"))?),
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let tenant: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1").bind(tenant_slug).fetch_optional(&mut *tx).await?;
    let Some(tenant_id) = tenant else { bail!("no tenant `{tenant_slug}`") };
    let mut report = ChainReport { records: 0, checkpoints: 0, anchor: None, expected_head: None, broken: None };

    let rows = sqlx::query(
        "SELECT tenant_id::text AS tenant_id, id, kind, rfc3339(at) AS at, rfc3339(cut_before) AS cut_before, \
                lane_seqs, lane_hashes, prev_digest, digest \
         FROM access_log_checkpoints WHERE tenant_id = $1 ORDER BY id",
    )
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    let checkpoint = |row: &sqlx::postgres::PgRow| -> Result<Checkpoint> {
        use sqlx::Row as _;
        let (seqs, hashes): (Vec<i64>, Vec<Vec<u8>>) = (row.try_get("lane_seqs")?, row.try_get("lane_hashes")?);
        Ok(Checkpoint {
            tenant_id: row.try_get("tenant_id")?,
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            at: row.try_get("at")?,
            cut_before: row.try_get("cut_before")?,
            lanes: seqs.into_iter().zip(hashes).map(|(seq, hash)| LaneState { seq, hash }).collect(),
            prev_digest: row.try_get("prev_digest")?,
            digest: row.try_get("digest")?,
        })
    };
    let checkpoints = rows.iter().map(checkpoint).collect::<Result<Vec<_>>>()?;
    report.checkpoints = checkpoints.len() as i64;
    if let Err(broken) = verify_checkpoints(&checkpoints) {
        report.broken = Some(broken);
        return Ok(report);
    }
    if let Some(head) = &expect_head {
        match checkpoints.iter().find(|c| &c.digest == head) {
            Some(c) => report.expected_head = Some(c.id),
            None => {
                report.broken = Some(Break::ExpectedHead);
                return Ok(report);
            }
        }
    }
    // Verification starts at the newest prune's cut; the anchors after it
    // name lane states that the records must have.
    let newest_prune = checkpoints.iter().rposition(Checkpoint::is_prune);
    let starts: Vec<LaneState> = match newest_prune {
        Some(i) => checkpoints[i].lanes.clone(),
        None => vec![LaneState::default(); LANES],
    };
    // (lane, seq) → the anchors (id, hash) that name that lane state.
    type Anchored = HashMap<(i16, i64), Vec<(i64, Vec<u8>)>>;
    let mut anchored: Anchored = HashMap::new();
    for c in &checkpoints[newest_prune.map_or(0, |i| i + 1)..] {
        for (lane, state) in c.lanes.iter().enumerate() {
            anchored.entry((lane as i16, state.seq)).or_default().push((c.id, state.hash.clone()));
        }
    }
    let check_anchors = |lane: i16, state: &LaneState| -> Result<(), Break> {
        for (id, hash) in anchored.get(&(lane, state.seq)).into_iter().flatten() {
            if hash != &state.hash {
                return Err(Break::Anchor { id: *id, lane, seq: state.seq });
            }
        }
        Ok(())
    };

    let heads: Vec<(i16, i64, Vec<u8>)> =
        sqlx::query_as("SELECT lane, seq, hash FROM access_log_heads WHERE tenant_id = $1 ORDER BY lane")
            .bind(tenant_id)
            .fetch_all(&mut *tx)
            .await?;
    if heads.len() != LANES || heads.iter().enumerate().any(|(i, h)| h.0 as usize != i) {
        bail!("tenant `{tenant_slug}` has {} access-log heads, not one per lane 0..{LANES}", heads.len());
    }
    for (lane, head_seq, head_hash) in &heads {
        let head = LaneState { seq: *head_seq, hash: head_hash.clone() };
        let mut verifier = Verifier::from(*lane, starts[*lane as usize].clone());
        let broken = verify_lane(&mut tx, tenant_id, &mut verifier, &head, &check_anchors).await?;
        report.records += verifier.count();
        if broken.is_some() {
            report.broken = broken;
            return Ok(report);
        }
    }
    if opts.anchor {
        let (seqs, hashes): (Vec<i64>, Vec<Vec<u8>>) = heads.into_iter().map(|(_, seq, hash)| (seq, hash)).unzip();
        let (id, digest): (i64, Vec<u8>) =
            sqlx::query_as("SELECT checkpoint_id, digest FROM access_log_checkpoint($1, 'anchor', NULL, $2, $3, 0)")
                .bind(tenant_id)
                .bind(seqs)
                .bind(hashes)
                .fetch_one(&mut *tx)
                .await?;
        report.anchor = Some((id, tavle_core::auth::hex(&digest)));
    }
    tx.commit().await?;
    Ok(report)
}

/// The columns of an access record as [`access_record`] reads them (over `access_log`).
pub const RECORD_COLUMNS: &str = "tenant_id::text AS tenant_id, lane, seq, rfc3339(at) AS at, \
     actor_user_id::text AS actor_user_id, action, array_to_string(pupil_ids, ',') AS pupil_ids, client_ip, \
     request_id, format, prev_hash, hash";

/// An access record from a row of [`RECORD_COLUMNS`], by column name.
pub fn access_record(row: &sqlx::postgres::PgRow) -> Result<tavle_core::access_log::Record> {
    use sqlx::Row as _;
    Ok(tavle_core::access_log::Record {
        tenant_id: row.try_get("tenant_id")?,
        lane: row.try_get("lane")?,
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        actor_user_id: row.try_get("actor_user_id")?,
        action: row.try_get("action")?,
        pupil_ids: row.try_get("pupil_ids")?,
        client_ip: row.try_get("client_ip")?,
        request_id: row.try_get("request_id")?,
        format: row.try_get("format")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Feeds one lane's records after the verifier's start to it, checking the
/// anchors' states on the way, then its head; the first break, if any.
async fn verify_lane(
    tx: &mut sqlx::PgConnection,
    tenant_id: uuid::Uuid,
    verifier: &mut tavle_core::access_log::Verifier,
    head: &tavle_core::access_log::LaneState,
    check_anchors: &impl Fn(i16, &tavle_core::access_log::LaneState) -> Result<(), tavle_core::access_log::Break>,
) -> Result<Option<tavle_core::access_log::Break>> {
    const BATCH: i64 = 10_000;
    let lane = verifier.state_lane();
    if let Err(b) = check_anchors(lane, &verifier.state()) {
        return Ok(Some(b));
    }
    let mut after = verifier.state().seq;
    loop {
        let rows = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS} FROM access_log WHERE tenant_id = $1 AND lane = $2 AND seq > $3 ORDER BY seq LIMIT $4"
        ))
        .bind(tenant_id)
        .bind(lane)
        .bind(after)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let done = (rows.len() as i64) < BATCH;
        for row in &rows {
            let record = access_record(row)?;
            if let Err(b) = verifier.push(&record).and_then(|()| check_anchors(lane, &verifier.state())) {
                return Ok(Some(b));
            }
            after = record.seq;
        }
        if done {
            break;
        }
    }
    Ok(verifier.finish(head).err())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..32).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()).collect()
}

/// What a prune did.
#[derive(Debug)]
pub struct PruneReport {
    pub deleted: i64,
    pub checkpoint_id: i64,
    /// The prune checkpoint's digest (hex): the log's head right after the cut.
    pub digest: String,
}

/// Deletes the tenant's access records from before `before` (a date,
/// `YYYY-MM-DD`, midnight UTC) in one transaction through
/// `access_log_prune`, which refuses dates less than six months back and
/// leaves the checkpoint that verification then starts from.
pub async fn prune_access_log(pool: &PgPool, tenant_slug: &str, before: &str) -> Result<PruneReport> {
    let before = tavle_core::scores::canonical_date(before).ok_or_else(|| anyhow!("--before is a date: YYYY-MM-DD"))?;
    let recent: bool =
        sqlx::query_scalar("SELECT ($1::date::timestamp AT TIME ZONE 'UTC') > now() - interval '6 months'")
            .bind(&before)
            .fetch_one(pool)
            .await?;
    if recent {
        bail!("access records are kept at least 6 months: --before {before} is less than 6 months back");
    }
    let tenant: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1").bind(tenant_slug).fetch_optional(pool).await?;
    let Some(tenant_id) = tenant else { bail!("no tenant `{tenant_slug}`") };
    let (checkpoint_id, digest, deleted): (i64, Vec<u8>, i64) = sqlx::query_as(
        "SELECT checkpoint_id, digest, deleted FROM access_log_prune($1, $2::date::timestamp AT TIME ZONE 'UTC')",
    )
    .bind(tenant_id)
    .bind(&before)
    .fetch_one(pool)
    .await?;
    Ok(PruneReport { deleted, checkpoint_id, digest: tavle_core::auth::hex(&digest) })
}
