//! A synthetic dataset for load tests and benchmarks (`tavle generate-dataset`).
//!
//! Shape, for `pupils` P, `groups` G and `results` R:
//! - schools: G / 16 (rounded up) unless given; group `g` belongs to school
//!   `g * S / G` and has year level `1 + g % L` (L = 10 year levels by
//!   default, grades 1–10), so every school has classes of several years;
//! - pupils: pupil `i` is in group `i * G / P` (so groups of about P / G) and
//!   has that group's school and year level, a Feide username, a *synthetic*
//!   identity number (Skatteetaten Tenor, month + 80: never a real person's;
//!   born in the year that fits the year level), stored exactly as ingest
//!   stores it: AES-256-GCM encrypted with the tenant id as associated data,
//!   plus the tenant-salted HMAC blind index;
//! - one group membership per pupil;
//! - one `publisher` webhook source, and A = ceil(R / P) assessments per year
//!   level (subjects in turn, spread over three school years), each with a
//!   concern threshold on the total (30 % of its maximum), its subject as
//!   test family, and 4 subtests (`d1`..`d4`, a quarter of the maximum each,
//!   thresholds at 30 % of theirs);
//! - results: pupil `i` gets one for each of the first `k` assessments of its
//!   year level, `k` = R / P (plus one for the first R mod P pupils), so R in
//!   all. They are webhook results (source + external id, as the
//!   `results_origin` check demands): 95 % completed, 2 % incomplete, 3 %
//!   absent, scores around a per-pupil ability, with a score per subtest
//!   unless absent (around the same ability). They are inserted one
//!   assessment after another, as publishers deliver them, so a pupil's
//!   results are spread over the table as they would be in production.
//!
//! Everything goes in with bulk statements (`INSERT ... SELECT` over `unnest`
//! of bound arrays); results in statements of about 100,000 rows on `jobs`
//! connections at once. Indexes, constraints and foreign keys stay as the
//! migrations define them and are checked for every row. At the end the
//! tables are vacuumed and analysed, so plans and visibility are those of a
//! settled database. A tenant that already has pupils keeps them: identity
//! numbers already present are skipped, and every external id carries a tag
//! unique to the run.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tavle_core::audit::{self, Actor, Event};
use tavle_core::crypto::{BlindIndex, IdentityCipher};
use tavle_core::db::SqlxDb;
use tavle_core::identity::IdentityNumber;
use uuid::Uuid;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Tenant slug; created (with an admin) if it does not exist.
    pub tenant: String,
    pub pupils: usize,
    pub groups: usize,
    pub results: u64,
    /// Default: one school per 16 groups.
    pub schools: Option<usize>,
    /// Year levels 1..=year_levels (default 10).
    pub year_levels: u32,
    /// Connections inserting results at once (default 2).
    pub jobs: usize,
    /// Admin username when the tenant is created.
    pub admin_username: String,
}

impl Spec {
    pub fn new(tenant: &str, pupils: usize, groups: usize, results: u64) -> Spec {
        Spec {
            tenant: tenant.to_owned(),
            pupils,
            groups,
            results,
            schools: None,
            year_levels: 10,
            jobs: 2,
            admin_username: "admin".to_owned(),
        }
    }

    fn school_count(&self) -> usize {
        self.schools.unwrap_or_else(|| self.groups.div_ceil(16)).clamp(1, self.groups.max(1))
    }

    fn levels(&self) -> u32 {
        self.year_levels.min(self.groups as u32).max(1)
    }

    fn validate(&self) -> Result<()> {
        if self.pupils == 0 || self.groups == 0 {
            bail!("--pupils and --groups must be at least 1");
        }
        if self.groups > self.pupils {
            bail!("--groups ({}) must not exceed --pupils ({})", self.groups, self.pupils);
        }
        if !(1..=13).contains(&self.year_levels) {
            bail!("--year-levels must be 1 to 13");
        }
        if self.pupils > 2_000_000 || self.results > 1_000_000_000 {
            bail!("at most 2,000,000 pupils and 1,000,000,000 results");
        }
        if self.results / self.pupils as u64 > 5_000 {
            bail!("at most 5,000 results per pupil");
        }
        Ok(())
    }
}

/// A count from the command line; `_` and `,` may group digits (`10_000_000`).
pub fn parse_count(name: &str, value: Option<String>, default: u64) -> Result<u64> {
    match value {
        None => Ok(default),
        Some(v) => v.replace(['_', ','], "").parse().map_err(|_| anyhow!("{name} must be a whole number, not `{v}`")),
    }
}

/// The keys pupils' identity numbers are stored under.
pub struct Keys {
    pub identity_key: String,
    pub blind_index_key: String,
}

impl Keys {
    /// As the other operator commands find them: `SPIN_VARIABLE_IDENTITY_KEY`
    /// and `SPIN_VARIABLE_BLIND_INDEX_KEY`, else the development secrets that
    /// `tavle dev` keeps in `dev_secrets` (`.tavle/dev-secrets.env`).
    pub fn from_env_or_dev_secrets(dev_secrets: &Path) -> Result<Keys> {
        let env = crate::manifest::variables_from_env();
        let file: HashMap<String, String> = std::fs::read_to_string(dev_secrets)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let get = |name: &str| {
            env.get(name).or_else(|| file.get(name)).cloned().ok_or_else(|| {
                anyhow!(
                    "no `{name}`: set SPIN_VARIABLE_{} (or run `tavle dev` once for {})",
                    name.to_uppercase(),
                    dev_secrets.display()
                )
            })
        };
        Ok(Keys { identity_key: get("identity_key")?, blind_index_key: get("blind_index_key")? })
    }
}

/// A generated group: its id, school (index into `school_ids`), year level
/// and pupils (a range of indexes into `pupils`).
#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub school: usize,
    pub year_level: u32,
    pub pupils: std::ops::Range<usize>,
}

#[derive(Debug, Clone)]
pub struct Pupil {
    pub id: String,
    pub group: usize,
    /// Results generated for this pupil.
    pub results: u32,
}

#[derive(Debug, Clone)]
pub struct Assessment {
    pub id: String,
    pub year_level: u32,
}

/// What was generated, for callers that go on to use it (the benchmark).
#[derive(Debug)]
pub struct Generated {
    pub tenant_id: String,
    pub source_id: String,
    pub school_ids: Vec<String>,
    pub groups: Vec<Group>,
    pub pupils: Vec<Pupil>,
    pub assessments: Vec<Assessment>,
    pub results: u64,
    /// Wall time of each phase.
    pub timings: Vec<(&'static str, Duration)>,
}

const GIVEN: [&str; 40] = [
    "Emma", "Nora", "Sofie", "Ingrid", "Olivia", "Ella", "Leah", "Sara", "Maja", "Frida", "Aurora", "Selma", "Astrid",
    "Hedda", "Tiril", "Åse", "Sigrún", "Mathilde", "Amalie", "Vilde", "Aksel", "Jakob", "Filip", "Noah", "Emil",
    "Oskar", "Lukas", "Henrik", "Sander", "Magnus", "Isak", "Johannes", "Øystein", "Mikkel", "Elias", "Tobias",
    "Kasper", "Ludvig", "Håkon", "Ole",
];
const FAMILY: [&str; 40] = [
    "Hansen",
    "Johansen",
    "Olsen",
    "Larsen",
    "Andersen",
    "Pedersen",
    "Nilsen",
    "Kristiansen",
    "Jensen",
    "Karlsen",
    "Johnsen",
    "Pettersen",
    "Eriksen",
    "Berg",
    "Haugen",
    "Hagen",
    "Johannessen",
    "Andreassen",
    "Jacobsen",
    "Dahl",
    "Jørgensen",
    "Halvorsen",
    "Henriksen",
    "Lund",
    "Sørensen",
    "Jakobsen",
    "Moen",
    "Gundersen",
    "Iversen",
    "Strand",
    "Solberg",
    "Svendsen",
    "Eide",
    "Knutsen",
    "Martinsen",
    "Paulsen",
    "Bakken",
    "Kristoffersen",
    "Mathisen",
    "Bærheim",
];
const PLACES: [&str; 12] = [
    "Nordby",
    "Sørli",
    "Haugen",
    "Bakke",
    "Lia",
    "Eikeli",
    "Furuset",
    "Vestre",
    "Østre",
    "Fjellstad",
    "Strand",
    "Dalen",
];
const SUBJECTS: [(&str, &str); 4] =
    [("norsk", "Lesing"), ("matematikk", "Regning"), ("engelsk", "Engelsk"), ("naturfag", "Naturfag")];
const MAX_SCORES: [f64; 5] = [20.0, 30.0, 40.0, 50.0, 60.0];
/// Rows per results statement (about).
const RESULTS_PER_STATEMENT: usize = 100_000;
/// Rows per pupil / membership statement.
const PUPILS_PER_STATEMENT: usize = 10_000;

/// A small deterministic mixer (splitmix64) for names, abilities and the like.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Every distinct Tenor synthetic number for births in `year`, individual
/// numbers first spread over all birthdays, then the next individual number.
fn synthetic_numbers(year: i32) -> impl Iterator<Item = IdentityNumber> {
    let dates: Vec<(u32, u32)> = (1..=12).flat_map(|m| (1..=days_in_month(year, m)).map(move |d| (m, d))).collect();
    // `synthetic` gives the first valid number at or after the serial; keep
    // only serials that land on themselves, so each number comes once.
    let first = if year >= 2000 { 500 } else { 0 };
    (0..500u32).flat_map(move |serial| {
        dates.clone().into_iter().filter_map(move |(m, d)| {
            let id = IdentityNumber::synthetic((year, m, d), serial)?;
            let individual: u32 = id.expose()[6..9].parse().ok()?;
            (individual == first + serial).then_some(id)
        })
    })
}

/// Generates the dataset into `pool`'s database. `admin_password` is asked
/// for only when the tenant has to be created; `progress` gets one line per
/// step and about every two seconds while results go in.
pub async fn generate(
    pool: &PgPool,
    spec: &Spec,
    keys: &Keys,
    admin_password: impl FnOnce() -> Result<String>,
    progress: &dyn Fn(&str),
) -> Result<Generated> {
    spec.validate()?;
    let cipher = IdentityCipher::from_config(&keys.identity_key, "").map_err(|e| anyhow!("identity_key: {e}"))?;
    let index = BlindIndex::from_config(&keys.blind_index_key).map_err(|e| anyhow!("blind_index_key: {e}"))?;
    let mut timings = Vec::new();
    let started = Instant::now();

    // Tenant.
    let existing: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
        .bind(&spec.tenant)
        .fetch_optional(pool)
        .await
        .context("looking up the tenant (are the migrations applied?)")?;
    let tenant_id = match existing {
        Some(id) => {
            progress(&format!("tenant {} exists (id {id}); adding to it", spec.tenant));
            id.to_string()
        }
        None => {
            let password = admin_password()?;
            let name = format!("{} (synthetic dataset)", spec.tenant);
            let (id, _) = crate::ops::create_tenant(
                pool,
                crate::ops::NewTenant {
                    slug: &spec.tenant,
                    name: &name,
                    admin_username: &spec.admin_username,
                    admin_display_name: "Dataset Admin",
                    admin_password: &password,
                },
            )
            .await?;
            progress(&format!("tenant {} created (id {id}), admin user `{}`", spec.tenant, spec.admin_username));
            id
        }
    };
    let tenant = Uuid::parse_str(&tenant_id)?;
    let tag = Uuid::new_v4().simple().to_string()[..8].to_owned();

    // Structure, computed here; identity numbers encrypted and indexed as ingest does.
    let t = Instant::now();
    let (n_pupils, n_groups, n_schools, levels) = (spec.pupils, spec.groups, spec.school_count(), spec.levels());
    let school_ids: Vec<Uuid> = (0..n_schools).map(|_| Uuid::new_v4()).collect();
    let mut group_rows = Vec::with_capacity(n_groups);
    let mut per_school_level: HashMap<(usize, u32), u32> = HashMap::new();
    for g in 0..n_groups {
        let school = g * n_schools / n_groups;
        let year_level = 1 + (g as u32) % levels;
        let nth = per_school_level.entry((school, year_level)).or_default();
        let name = format!("{year_level}{}", letter(*nth));
        *nth += 1;
        let first = (g * n_pupils).div_ceil(n_groups);
        let end = ((g + 1) * n_pupils).div_ceil(n_groups);
        group_rows.push((Uuid::new_v4(), school, year_level, name, first..end));
    }
    let taken: HashSet<Vec<u8>> = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT identity_index FROM pupils WHERE tenant_id = $1 AND identity_index IS NOT NULL",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let base = spec.results / n_pupils as u64;
    let extra = (spec.results % n_pupils as u64) as usize;
    let per_level_assessments = spec.results.div_ceil(n_pupils as u64) as usize;
    let mut numbers: HashMap<u32, Box<dyn Iterator<Item = IdentityNumber>>> = HashMap::new();
    let mut pupils = PupilColumns::default();
    let mut pupil_out = Vec::with_capacity(n_pupils);
    for (g, (_, school, year_level, _, range)) in group_rows.iter().enumerate() {
        for i in range.clone() {
            // Born in the year that starts school in 2026 at year level 1, then
            // earlier years if that one runs out (about 150,000 numbers a year).
            let iter = numbers.entry(*year_level).or_insert_with(|| {
                let year = 2020 - *year_level as i32;
                Box::new((0..10).flat_map(move |back| synthetic_numbers(year - back)))
            });
            let (enc, idx) = loop {
                let id = iter.next().ok_or_else(|| anyhow!("ran out of synthetic identity numbers"))?;
                let idx = index.index(&tenant_id, &id);
                if !taken.contains(&idx) {
                    break (cipher.encrypt_identity(&id, tenant_id.as_bytes()), idx);
                }
            };
            let h = mix(i as u64 ^ 0x0074_6176_6c65);
            let id = Uuid::new_v4();
            let results = base as u32 + u32::from(i < extra);
            pupils.id.push(id);
            pupils.school.push(school_ids[*school]);
            pupils.enc.push(enc);
            pupils.idx.push(idx);
            pupils.feide.push(format!("elev{i}.{tag}@gen.tavle.test"));
            pupils.given.push(GIVEN[(h % 40) as usize].to_owned());
            pupils.family.push(FAMILY[(h >> 8) as usize % 40].to_owned());
            pupils.year.push(*year_level as i32);
            pupils.gender.push(if h >> 16 & 1 == 0 { "female" } else { "male" }.to_owned());
            pupils.special_needs.push((h >> 20).is_multiple_of(20));
            pupils.group.push(group_rows[g].0);
            // Ability 0.35..0.95: scores cluster around it.
            pupils.ability.push(0.35 + ((h >> 32) % 600) as f64 / 1000.0);
            pupils.results.push(results as i32);
            pupil_out.push(Pupil { id: id.to_string(), group: g, results });
        }
    }
    drop(numbers);
    timings.push(("identity numbers and structure (in memory)", t.elapsed()));
    progress(&format!(
        "{n_pupils} pupils with synthetic identity numbers encrypted and indexed in {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    // Schools, groups, pupils, memberships, the source and the assessments: one transaction.
    let t = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO schools (id, tenant_id, external_id, name) \
         SELECT x.id, $1, x.e, x.n FROM unnest($2::uuid[], $3::text[], $4::text[]) AS x(id, e, n)",
    )
    .bind(tenant)
    .bind(&school_ids)
    .bind((0..n_schools).map(|s| format!("gen-{tag}-s{s}")).collect::<Vec<_>>())
    .bind(
        (0..n_schools)
            .map(|s| format!("{} skole {}", PLACES[s % PLACES.len()], s / PLACES.len() + 1))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await
    .context("inserting schools")?;
    sqlx::query(
        "INSERT INTO groups (id, tenant_id, school_id, external_id, name, year_level) \
         SELECT x.id, $1, x.s, x.e, x.n, x.y FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int4[]) \
         AS x(id, s, e, n, y)",
    )
    .bind(tenant)
    .bind(group_rows.iter().map(|g| g.0).collect::<Vec<_>>())
    .bind(group_rows.iter().map(|g| school_ids[g.1]).collect::<Vec<_>>())
    .bind((0..n_groups).map(|g| format!("gen-{tag}-g{g}")).collect::<Vec<_>>())
    .bind(group_rows.iter().map(|g| g.3.clone()).collect::<Vec<_>>())
    .bind(group_rows.iter().map(|g| g.2 as i32).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .context("inserting groups")?;
    for start in (0..n_pupils).step_by(PUPILS_PER_STATEMENT) {
        let r = start..(start + PUPILS_PER_STATEMENT).min(n_pupils);
        sqlx::query(
            "INSERT INTO pupils (id, tenant_id, school_id, identity_enc, identity_index, feide_username, given_name, \
                                 family_name, year_level, gender, special_needs) \
             SELECT x.id, $1, x.s, x.enc, x.idx, x.f, x.g, x.fam, x.y, x.gen, x.sn \
             FROM unnest($2::uuid[], $3::uuid[], $4::bytea[], $5::bytea[], $6::text[], $7::text[], $8::text[], \
                         $9::int4[], $10::text[], $11::bool[]) AS x(id, s, enc, idx, f, g, fam, y, gen, sn)",
        )
        .bind(tenant)
        .bind(&pupils.id[r.clone()])
        .bind(&pupils.school[r.clone()])
        .bind(&pupils.enc[r.clone()])
        .bind(&pupils.idx[r.clone()])
        .bind(&pupils.feide[r.clone()])
        .bind(&pupils.given[r.clone()])
        .bind(&pupils.family[r.clone()])
        .bind(&pupils.year[r.clone()])
        .bind(&pupils.gender[r.clone()])
        .bind(&pupils.special_needs[r.clone()])
        .execute(&mut *tx)
        .await
        .context("inserting pupils")?;
        sqlx::query(
            "INSERT INTO group_memberships (tenant_id, group_id, pupil_id) \
             SELECT $1, x.g, x.p FROM unnest($2::uuid[], $3::uuid[]) AS x(g, p)",
        )
        .bind(tenant)
        .bind(&pupils.group[r.clone()])
        .bind(&pupils.id[r.clone()])
        .execute(&mut *tx)
        .await
        .context("inserting group memberships")?;
    }
    let source: Uuid = sqlx::query_scalar(
        "INSERT INTO webhook_sources (tenant_id, kind, name) VALUES ($1, 'publisher', $2) RETURNING id",
    )
    .bind(tenant)
    .bind(format!("Synthetic publisher (dataset {tag})"))
    .fetch_one(&mut *tx)
    .await
    .context("inserting the webhook source")?;
    let mut assessments = AssessmentColumns::default();
    let mut assessment_out = Vec::new();
    // Spread over three school years from August 2023, one every few days.
    let spacing = (3 * 365 / per_level_assessments.max(1)).max(1) as i64;
    for year_level in 1..=levels {
        for a in 0..per_level_assessments {
            let (subject, title) = SUBJECTS[a % SUBJECTS.len()];
            let id = Uuid::new_v4();
            assessments.id.push(id);
            assessments.ext.push(format!("gen-{tag}-a{year_level}-{a}"));
            assessments.title.push(format!("{title} {year_level}. trinn, nr. {}", a / SUBJECTS.len() + 1));
            assessments.subject.push(subject.to_owned());
            assessments.year.push(year_level as i32);
            assessments.max_score.push(MAX_SCORES[(a + year_level as usize) % MAX_SCORES.len()]);
            assessments.day_offset.push(a as i64 * spacing + i64::from(year_level % 3));
            assessment_out.push(Assessment { id: id.to_string(), year_level });
        }
    }
    let days: Vec<String> = sqlx::query_scalar(
        "SELECT (date '2023-08-21' + d::int)::text FROM unnest($1::int8[]) WITH ORDINALITY AS x(d, n) ORDER BY n",
    )
    .bind(&assessments.day_offset)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO assessments (id, tenant_id, source_id, external_id, title, subject, year_level, max_score, \
                                  administered_on, family, threshold) \
         SELECT x.id, $1, $2, x.e, x.t, x.s, x.y, x.m, x.d::date, x.s, round(x.m * 0.3) \
         FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::float8[], $9::text[]) \
         AS x(id, e, t, s, y, m, d)",
    )
    .bind(tenant)
    .bind(source)
    .bind(&assessments.id)
    .bind(&assessments.ext)
    .bind(&assessments.title)
    .bind(&assessments.subject)
    .bind(&assessments.year)
    .bind(&assessments.max_score)
    .bind(&days)
    .execute(&mut *tx)
    .await
    .context("inserting assessments")?;
    sqlx::query(
        "INSERT INTO assessment_subtests (tenant_id, assessment_id, key, position, title, max_score, threshold) \
         SELECT a.tenant_id, a.id, 'd' || k, k - 1, 'Delprøve ' || k, a.max_score / 4, round(a.max_score / 4 * 0.3) \
         FROM assessments a CROSS JOIN generate_series(1, 4) AS k WHERE a.source_id = $1",
    )
    .bind(source)
    .execute(&mut *tx)
    .await
    .context("inserting subtests")?;
    tx.commit().await?;
    timings.push(("schools, groups, pupils, memberships, assessments", t.elapsed()));
    progress(&format!(
        "{n_schools} schools, {n_groups} groups, {n_pupils} pupils and memberships, 1 publisher source, {} \
         assessments stored in {:.1} s",
        assessment_out.len(),
        t.elapsed().as_secs_f64()
    ));

    // Results: one statement per year level and run of assessments, in the
    // order publishers would deliver them, on `jobs` connections.
    let t = Instant::now();
    let mut by_level: HashMap<i32, Vec<usize>> = HashMap::new();
    for i in 0..n_pupils {
        by_level.entry(pupils.year[i]).or_default().push(i);
    }
    let mut batches = VecDeque::new();
    let widest = by_level.values().map(Vec::len).max().unwrap_or(1).max(1);
    let run = (RESULTS_PER_STATEMENT / widest).max(1);
    for a0 in (0..per_level_assessments).step_by(run) {
        let a1 = (a0 + run).min(per_level_assessments);
        for year_level in 1..=levels {
            let Some(members) = by_level.get(&(year_level as i32)) else { continue };
            let members: Vec<usize> = members.iter().copied().filter(|&i| pupils.results[i] as usize > a0).collect();
            if members.is_empty() {
                continue;
            }
            let first = (year_level as usize - 1) * per_level_assessments;
            let rows = members.iter().map(|&i| (pupils.results[i] as usize).min(a1) - a0).sum::<usize>();
            batches.push_back(ResultsBatch {
                rows: rows as u64,
                assessment: assessments.id[first + a0..first + a1].to_vec(),
                // The source is new, so (source, external id) needs no run tag.
                ext: (a0..a1).map(|a| format!("{year_level}-{a}")).collect(),
                max_score: assessments.max_score[first + a0..first + a1].to_vec(),
                day: days[first + a0..first + a1].to_vec(),
                number: (a0..a1).map(|a| a as i32).collect(),
                pupil: members.iter().map(|&i| pupils.id[i]).collect(),
                count: members.iter().map(|&i| pupils.results[i]).collect(),
                ability: members.iter().map(|&i| pupils.ability[i]).collect(),
                pupil_number: members.iter().map(|&i| i as i32).collect(),
            });
        }
    }
    let total_rows: u64 = batches.iter().map(|b| b.rows).sum();
    debug_assert_eq!(total_rows, spec.results);
    let queue = Arc::new(Mutex::new(batches));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..spec.jobs.max(1) {
        let (queue, done_tx, pool) = (queue.clone(), done_tx.clone(), pool.clone());
        workers.spawn(async move {
            let mut conn = pool.acquire().await?;
            // The ORDER BY of 100,000 rows stays in memory.
            sqlx::query("SET work_mem = '64MB'").execute(&mut *conn).await?;
            loop {
                let Some(batch) = queue.lock().expect("queue lock").pop_front() else { break };
                let done = insert_results(&mut conn, tenant, source, &batch).await?;
                if done != batch.rows {
                    bail!("a results statement stored {done} rows, expected {}", batch.rows);
                }
                let _ = done_tx.send(done);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    drop(done_tx);
    let (mut stored, mut last_report) = (0u64, Instant::now());
    while let Some(n) = done_rx.recv().await {
        stored += n;
        if last_report.elapsed() >= Duration::from_secs(2) || stored == total_rows {
            last_report = Instant::now();
            let secs = t.elapsed().as_secs_f64();
            progress(&format!(
                "results {stored} / {total_rows} ({:.0} %), {:.0} rows/s, {secs:.0} s",
                stored as f64 * 100.0 / total_rows.max(1) as f64,
                stored as f64 / secs.max(1e-9),
            ));
        }
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| anyhow!("results worker: {e}"))??;
    }
    if stored != total_rows {
        bail!("stored {stored} results, expected {total_rows}");
    }
    timings.push(("results", t.elapsed()));
    progress(&format!(
        "{stored} results in {:.1} s ({:.0} rows/s, {} connections)",
        t.elapsed().as_secs_f64(),
        stored as f64 / t.elapsed().as_secs_f64().max(1e-9),
        spec.jobs.max(1)
    ));

    // Settle: hint bits, visibility map and planner statistics, as a database
    // that has been running a while would have them.
    let t = Instant::now();
    for table in ["schools", "groups", "pupils", "group_memberships", "assessments", "assessment_subtests", "results"] {
        if let Err(e) = sqlx::raw_sql(&format!("VACUUM (ANALYZE) {table}")).execute(pool).await {
            progress(&format!("VACUUM {table} failed ({e}); analysing only"));
            sqlx::raw_sql(&format!("ANALYZE {table}")).execute(pool).await?;
        }
    }
    timings.push(("vacuum and analyse", t.elapsed()));
    progress(&format!("tables vacuumed and analysed in {:.1} s", t.elapsed().as_secs_f64()));

    let mut db = SqlxDb::new(pool.clone());
    audit::record(
        &mut db,
        None,
        Event::new(&tenant_id, Actor::System("cli"), "dataset.generated")
            .target("webhook_source", &source.to_string())
            .details(json!({"tag": tag, "schools": n_schools, "groups": n_groups, "pupils": n_pupils,
                   "assessments": assessment_out.len(), "results": stored, "synthetic_identity_numbers": true})),
    )
    .await
    .map_err(|e| anyhow!("audit record: {e}"))?;
    timings.push(("total", started.elapsed()));

    let groups = group_rows
        .into_iter()
        .map(|(id, school, year_level, _, pupils)| Group { id: id.to_string(), school, year_level, pupils })
        .collect();
    Ok(Generated {
        tenant_id,
        source_id: source.to_string(),
        school_ids: school_ids.iter().map(Uuid::to_string).collect(),
        groups,
        pupils: pupil_out,
        assessments: assessment_out,
        results: stored,
        timings,
    })
}

/// A, B, ..., Z, AA, AB, ...
fn letter(n: u32) -> String {
    let c = |i: u32| char::from(b'A' + (i % 26) as u8);
    if n < 26 {
        c(n).to_string()
    } else {
        format!("{}{}", c(n / 26 - 1), c(n))
    }
}

#[derive(Default)]
struct PupilColumns {
    id: Vec<Uuid>,
    school: Vec<Uuid>,
    enc: Vec<Vec<u8>>,
    idx: Vec<Vec<u8>>,
    feide: Vec<String>,
    given: Vec<String>,
    family: Vec<String>,
    year: Vec<i32>,
    gender: Vec<String>,
    special_needs: Vec<bool>,
    group: Vec<Uuid>,
    ability: Vec<f64>,
    results: Vec<i32>,
}

#[derive(Default)]
struct AssessmentColumns {
    id: Vec<Uuid>,
    ext: Vec<String>,
    title: Vec<String>,
    subject: Vec<String>,
    year: Vec<i32>,
    max_score: Vec<f64>,
    day_offset: Vec<i64>,
}

/// One results statement: a run of one year level's assessments times that
/// level's pupils (each pupil up to its own count).
struct ResultsBatch {
    rows: u64,
    assessment: Vec<Uuid>,
    ext: Vec<String>,
    max_score: Vec<f64>,
    day: Vec<String>,
    /// Index of the assessment within its year level.
    number: Vec<i32>,
    pupil: Vec<Uuid>,
    count: Vec<i32>,
    ability: Vec<f64>,
    pupil_number: Vec<i32>,
}

/// Status and score come from a hash of (pupil, assessment), so a rerun of a
/// statement gives the same values; `u` < 0.03 absent, < 0.05 incomplete.
const RESULTS_SQL: &str = "\
INSERT INTO results (tenant_id, pupil_id, assessment_id, source_id, external_id, score, status, completed_at,
                     subtest_scores)
SELECT $1::uuid, x.pid, x.aid, $2::uuid, x.ext || '-' || x.pn,
       CASE WHEN x.u < 0.03 THEN NULL
            WHEN x.u < 0.05 THEN round(x.max_score * x.ability * x.v * 0.6)
            ELSE least(x.max_score, greatest(0, round(x.max_score * (x.ability + (x.v - 0.5) * 0.3)))) END,
       CASE WHEN x.u < 0.03 THEN 'absent' WHEN x.u < 0.05 THEN 'incomplete' ELSE 'completed' END,
       CASE WHEN x.u < 0.03 THEN NULL
            ELSE ((x.day::date + time '08:15') AT TIME ZONE 'Europe/Oslo') + x.v * interval '5 hours' END,
       CASE WHEN x.u < 0.03 THEN NULL ELSE jsonb_build_object(
            'd1', least(x.max_score / 4, greatest(0, round(x.max_score / 4 * (x.ability + (x.w1 - 0.5) * 0.4)))),
            'd2', least(x.max_score / 4, greatest(0, round(x.max_score / 4 * (x.ability + (x.w2 - 0.5) * 0.4)))),
            'd3', least(x.max_score / 4, greatest(0, round(x.max_score / 4 * (x.ability + (x.w3 - 0.5) * 0.4)))),
            'd4', least(x.max_score / 4, greatest(0, round(x.max_score / 4 * (x.ability + (x.w4 - 0.5) * 0.4))))) END
FROM (SELECT y.*, y.v * 7.0 - floor(y.v * 7.0) AS w1, y.v * 31.0 - floor(y.v * 31.0) AS w2,
             y.v * 127.0 - floor(y.v * 127.0) AS w3, y.u * 61.0 - floor(y.u * 61.0) AS w4
FROM (SELECT a.aid, a.ext, a.max_score, a.day, a.an, p.pid, p.pn, p.ability,
             (hashint8(p.pn::int8 * 1000003 + a.an)::int8 + 2147483648) / 4294967296.0::float8 AS u,
             (hashint8(p.pn::int8 * 1000033 + a.an + 7777777)::int8 + 2147483648) / 4294967296.0::float8 AS v
      FROM unnest($3::uuid[], $4::text[], $5::float8[], $6::text[], $7::int4[]) AS a(aid, ext, max_score, day, an)
      JOIN unnest($8::uuid[], $9::int4[], $10::float8[], $11::int4[]) AS p(pid, k, ability, pn) ON a.an < p.k) y) x
ORDER BY x.an, x.pn";

async fn insert_results(conn: &mut sqlx::PgConnection, tenant: Uuid, source: Uuid, b: &ResultsBatch) -> Result<u64> {
    let done = sqlx::query(RESULTS_SQL)
        .bind(tenant)
        .bind(source)
        .bind(&b.assessment)
        .bind(&b.ext)
        .bind(&b.max_score)
        .bind(&b.day)
        .bind(&b.number)
        .bind(&b.pupil)
        .bind(&b.count)
        .bind(&b.ability)
        .bind(&b.pupil_number)
        .execute(conn)
        .await
        .context("inserting results")?;
    Ok(done.rows_affected())
}

/// `tavle generate-dataset`: connects, finds the keys, generates, prints a summary.
pub async fn run_cli(database_url: &str, spec: Spec, admin_password: impl FnOnce() -> Result<String>) -> Result<()> {
    let keys = Keys::from_env_or_dev_secrets(Path::new(".tavle/dev-secrets.env"))?;
    let pool = PgPoolOptions::new()
        .max_connections(spec.jobs.max(1) as u32 + 1)
        .connect(database_url)
        .await
        .context("connecting to the database")?;
    println!(
        "generating into tenant `{}`: {} pupils, {} groups, {} results (synthetic identity numbers only)",
        spec.tenant, spec.pupils, spec.groups, spec.results
    );
    let generated = generate(&pool, &spec, &keys, admin_password, &|line| println!("  {line}")).await?;
    println!("done. tenant id {}, publisher source {}", generated.tenant_id, generated.source_id);
    for (phase, d) in &generated.timings {
        println!("  {phase:<52} {:>8.1} s", d.as_secs_f64());
    }
    if let (Some(g), Some(a)) = (generated.groups.first(), generated.assessments.first()) {
        println!(
            "example: group {} (school {}), its pupil {}, assessment {}",
            g.id, generated.school_ids[g.school], generated.pupils[g.pupils.start].id, a.id
        );
    }
    pool.close().await;
    Ok(())
}
