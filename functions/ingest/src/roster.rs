//! Roster posts: a full sync of one school's groups, pupils, memberships and
//! (optionally) teachers' group assignments. New pupils are added, changed
//! ones updated, memberships replaced; pupils of the school absent from the
//! roster are marked as left (never deleted here, so retention can apply
//! its rules). A pupil of another school of the tenant whom the roster names
//! moves to this school, and the move is recorded as a transfer in the
//! audit log. A source bound to a set of schools may sync only those
//! (`sources::check_roster_school`).
//!
//! [`validate`] checks the whole roster before any transaction begins;
//! [`apply`] then only does database work, in the caller's transaction.

use crate::pupils::{self, PupilIdentifiers, PupilKey};
use crate::results::check_text;
use crate::{sources, IngestConfig};
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use tavle_core::audit::{self, Actor, Event};
use tavle_core::auth::hex;
use tavle_core::db::{uuid, Db, Value};
use tavle_core::names;
use tavle_core::web::{Checks, RequestMeta};
use tavle_core::Problem;

pub const MAX_PUPILS: usize = 20_000;
/// The audit action of a pupil's move from one school of the tenant to another.
pub const TRANSFER_ACTION: &str = "pupil.transferred";
const GENDERS: [&str; 4] = ["female", "male", "other", "unknown"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterPost {
    school: SchoolIn,
    #[serde(default)]
    groups: Vec<GroupIn>,
    pupils: Vec<PupilIn>,
    #[serde(default)]
    teachers: Option<Vec<TeacherIn>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchoolIn {
    external_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupIn {
    external_id: String,
    name: String,
    #[serde(default)]
    year_level: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PupilIn {
    #[serde(flatten)]
    ids: PupilIdentifiers,
    given_name: String,
    family_name: String,
    #[serde(default)]
    year_level: Option<i64>,
    #[serde(default)]
    gender: Option<String>,
    #[serde(default)]
    special_needs: bool,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeacherIn {
    feide_username: String,
    groups: Vec<String>,
}

/// A roster that passed every check, in the form it is stored.
pub struct ValidRoster {
    school: ValidSchool,
    groups: Vec<ValidGroup>,
    pupils: Vec<ValidPupil>,
    teachers: Option<Vec<ValidTeacher>>,
}

struct ValidSchool {
    external_id: String,
    name: String,
}

struct ValidGroup {
    /// As sent: pupils and teachers name their groups by it.
    external_id: String,
    name: String,
    year_level: Option<i64>,
}

struct ValidPupil {
    /// Blind index and Feide username; the identity number itself is not
    /// kept, only its encryption.
    key: PupilKey,
    /// Hex of the encrypted identity number, when one was given.
    identity_enc: Option<String>,
    /// Trimmed, in NFC.
    given_name: String,
    family_name: String,
    year_level: Option<i64>,
    gender: Option<&'static str>,
    special_needs: bool,
    /// External ids of groups of this roster.
    groups: Vec<String>,
    /// What an erased pupil with these identifiers left behind
    /// (`erased_pupils`): a roster skips a new pupil who matches one.
    tombstones: Vec<Vec<u8>>,
}

struct ValidTeacher {
    feide: String,
    /// External ids of groups of this roster.
    groups: Vec<String>,
}

/// Checks a whole roster; no database work. Errors come in the order of the
/// roster, every bad field at once.
pub fn validate(post: RosterPost, cfg: &IngestConfig, tenant_id: &str) -> Result<ValidRoster, Problem> {
    let mut checks = Checks::default();
    check_text(&mut checks, "/school/external_id", &post.school.external_id, 200);
    check_text(&mut checks, "/school/name", &post.school.name, 200);
    let mut group_ids = HashSet::new();
    for (i, g) in post.groups.iter().enumerate() {
        check_text(&mut checks, &format!("/groups/{i}/external_id"), &g.external_id, 200);
        check_text(&mut checks, &format!("/groups/{i}/name"), &g.name, 200);
        if g.year_level.is_some_and(|y| !(1..=13).contains(&y)) {
            checks.fail(&format!("/groups/{i}/year_level"), "must be from 1 to 13");
        }
        if !group_ids.insert(g.external_id.as_str()) {
            checks.fail(&format!("/groups/{i}/external_id"), "duplicate group in this roster");
        }
    }
    if post.pupils.len() > MAX_PUPILS {
        checks.fail("/pupils", format!("at most {MAX_PUPILS} pupils per roster"));
        return Err(Problem::validation(checks.0));
    }
    let mut pupils = Vec::with_capacity(post.pupils.len());
    let mut seen = HashSet::new();
    let mut seen_feide = HashSet::new();
    for (i, p) in post.pupils.iter().enumerate() {
        let ptr = format!("/pupils/{i}");
        // Names are stored, compared and counted in NFC (`tavle_core::names`).
        let (given_name, family_name) = (names::nfc(p.given_name.trim()), names::nfc(p.family_name.trim()));
        check_text(&mut checks, &format!("{ptr}/given_name"), &given_name, 200);
        check_text(&mut checks, &format!("{ptr}/family_name"), &family_name, 200);
        if p.year_level.is_some_and(|y| !(1..=13).contains(&y)) {
            checks.fail(&format!("{ptr}/year_level"), "must be from 1 to 13");
        }
        let gender = p.gender.as_deref().map(|g| GENDERS.iter().copied().find(|known| *known == g));
        if gender.is_some_and(|g| g.is_none()) {
            checks.fail(&format!("{ptr}/gender"), "must be female, male, other or unknown");
        }
        for (j, g) in p.groups.iter().enumerate() {
            if !group_ids.contains(g.as_str()) {
                checks.fail(&format!("{ptr}/groups/{j}"), "not a group of this roster");
            }
        }
        if let Some(mut key) = pupils::parse(&p.ids, cfg, tenant_id, &ptr, &mut checks) {
            if !seen.insert(key.dedup_key()) {
                checks.fail(&ptr, "this pupil appears twice in the roster");
            }
            if key.feide.as_ref().is_some_and(|f| !seen_feide.insert(f.clone())) {
                checks.fail(&format!("{ptr}/feide_username"), "this feide_username appears twice in the roster");
            }
            let identity_enc =
                key.identity.take().map(|id| hex(&cfg.identity.encrypt_identity(&id, tenant_id.as_bytes())));
            let mut tombstones = Vec::new();
            if let Some(index) = key.index.as_deref().and_then(unhex) {
                tombstones.push(cfg.blind_index.tombstone_of_index(tenant_id, &index));
            }
            if let Some(feide) = &key.feide {
                tombstones.push(cfg.blind_index.tombstone_of_feide(tenant_id, feide));
            }
            pupils.push(ValidPupil {
                key,
                identity_enc,
                given_name,
                family_name,
                year_level: p.year_level,
                gender: gender.flatten(),
                special_needs: p.special_needs,
                groups: p.groups.clone(),
                tombstones,
            });
        }
    }
    let mut teachers = post.teachers.as_ref().map(|list| Vec::with_capacity(list.len()));
    for (i, t) in post.teachers.iter().flatten().enumerate() {
        let feide = pupils::parse_feide(&t.feide_username);
        if feide.is_none() {
            checks.fail(&format!("/teachers/{i}/feide_username"), "must be a Feide username (user@realm)");
        }
        for (j, g) in t.groups.iter().enumerate() {
            if !group_ids.contains(g.as_str()) {
                checks.fail(&format!("/teachers/{i}/groups/{j}"), "not a group of this roster");
            }
        }
        if let (Some(list), Some(feide)) = (&mut teachers, feide) {
            list.push(ValidTeacher { feide, groups: t.groups.clone() });
        }
    }
    checks.finish()?;
    if pupils.len() != post.pupils.len() || teachers.as_ref().map(Vec::len) != post.teachers.as_ref().map(Vec::len) {
        // An entry that did not parse but failed no check: a bug here, not the sender's.
        return Err(Problem::internal());
    }
    let groups = post
        .groups
        .iter()
        .map(|g| ValidGroup {
            external_id: g.external_id.clone(),
            name: g.name.trim().to_owned(),
            year_level: g.year_level,
        })
        .collect();
    let school = ValidSchool {
        external_id: post.school.external_id.trim().to_owned(),
        name: post.school.name.trim().to_owned(),
    };
    Ok(ValidRoster { school, groups, pupils, teachers })
}

/// Applies a validated roster inside the caller's transaction. What still
/// fails here depends on the tenant's data (a school outside the source's
/// bound set: 403, before anything is written; an identifier that belongs
/// to another pupil: 409), not on the roster's form.
pub async fn apply(
    db: &mut impl Db,
    meta: &RequestMeta,
    tenant_id: &str,
    source_id: &str,
    post: ValidRoster,
) -> Result<serde_json::Value, Problem> {
    sources::check_roster_school(db, tenant_id, source_id, &post.school.external_id).await?;
    let school_id = db
        .query_one(
            "INSERT INTO schools (tenant_id, external_id, name) VALUES ($1::uuid, $2::text, $3::text) \
             ON CONFLICT (tenant_id, external_id) DO UPDATE SET name = EXCLUDED.name RETURNING id",
            &[uuid(tenant_id), post.school.external_id.clone().into(), post.school.name.clone().into()],
        )
        .await?
        .text("id")?;

    let group_rows = db
        .query(
            "INSERT INTO groups (tenant_id, school_id, external_id, name, year_level) \
             SELECT $1::uuid, $2::uuid, x.e, x.n, nullif(x.y, '')::int \
             FROM unnest($3::text[], $4::text[], $5::text[]) AS x(e, n, y) \
             ON CONFLICT (tenant_id, school_id, external_id) DO UPDATE SET name = EXCLUDED.name, year_level = EXCLUDED.year_level \
             RETURNING external_id, id",
            &[
                uuid(tenant_id),
                uuid(&school_id),
                Value::text_array(post.groups.iter().map(|g| g.external_id.clone())),
                Value::text_array(post.groups.iter().map(|g| g.name.clone())),
                Value::text_array(post.groups.iter().map(|g| g.year_level.map(|y| y.to_string()).unwrap_or_default())),
            ],
        )
        .await?;
    let group_by_ext: HashMap<String, String> =
        group_rows.iter().map(|r| Ok((r.text("external_id")?, r.text("id")?))).collect::<Result<_, Problem>>()?;
    // Every group named was validated to be in the roster, so it was just
    // written; a miss is a bug, answered as one rather than with a panic.
    let group_id = |external_id: &str| group_by_ext.get(external_id).cloned().ok_or_else(Problem::internal);

    let key_refs: Vec<&PupilKey> = post.pupils.iter().map(|p| &p.key).collect();
    // Locked until commit: the school a transfer records is the one the pupil leaves.
    let known = pupils::resolve_for_update(db, tenant_id, &key_refs).await?;

    let erased = erased_among(db, tenant_id, &post.pupils).await?;
    let corrections = corrections_of(db, tenant_id, &known).await?;
    let mut erased_skipped = Vec::new();
    let mut corrections_kept = Vec::new();
    let mut superseded: Vec<(String, String)> = Vec::new();

    // Split into updates of known pupils and inserts of new ones.
    let mut upd: [Vec<String>; 9] = Default::default();
    let mut ins: [Vec<String>; 9] = Default::default();
    let mut new_keys = Vec::new();
    let mut present = Vec::new();
    let mut restricted_skipped = 0;
    let mut pupil_id_at: HashMap<usize, String> = HashMap::new();
    // Pupils who move here from another school of the tenant: id -> that school.
    let mut transfers: BTreeMap<String, String> = BTreeMap::new();
    for (i, p) in post.pupils.iter().enumerate() {
        let key = &p.key;
        let known_pupil = pupils::lookup(&known, key);
        if let Some(k) = known_pupil {
            present.push(k.id.clone());
            if k.restricted {
                // Restricted processing: keep the pupil and their memberships
                // exactly as they are, and do not mark them as left.
                restricted_skipped += 1;
                continue;
            }
            pupil_id_at.insert(i, k.id.clone());
            if k.school_id != school_id {
                transfers.insert(k.id.clone(), k.school_id.clone());
            }
        }
        if known_pupil.is_none() && p.tombstones.iter().any(|t| erased.contains(t)) {
            // Erased on the pupil's (or guardian's) request: not re-created.
            // The answer names the roster position, so the source can act.
            erased_skipped.push(i);
            continue;
        }
        let mut cols = [
            known_pupil.map(|k| k.id.clone()).unwrap_or_default(),
            p.identity_enc.clone().unwrap_or_default(),
            key.index.clone().unwrap_or_default(),
            key.feide.clone().unwrap_or_default(),
            p.given_name.clone(),
            p.family_name.clone(),
            p.year_level.map(|y| y.to_string()).unwrap_or_default(),
            p.gender.unwrap_or_default().to_owned(),
            p.special_needs.to_string(),
        ];
        if let Some(k) = known_pupil {
            // A rectified field keeps its correction while the source sends
            // the value it sent before; any other value supersedes it.
            for c in corrections.iter().filter(|c| c.pupil_id == k.id) {
                let at = match c.field.as_str() {
                    "given_name" => 4,
                    "family_name" => 5,
                    "year_level" => 6,
                    "gender" => 7,
                    _ => continue,
                };
                if cols[at] == c.source_value {
                    cols[at] = c.current.clone();
                    corrections_kept.push(json!({"position": i, "field": c.field}));
                } else {
                    superseded.push((k.id.clone(), c.field.clone()));
                }
            }
        }
        let target = if known_pupil.is_some() { &mut upd } else { &mut ins };
        for (col, v) in target.iter_mut().zip(cols) {
            col.push(v);
        }
        if known_pupil.is_none() {
            new_keys.push(i);
        }
    }
    let arrays = |cols: &[Vec<String>; 9]| cols.iter().map(|c| Value::text_array(c.clone())).collect::<Vec<_>>();
    let updated = if upd[0].is_empty() {
        0
    } else {
        let mut params = vec![uuid(tenant_id), uuid(&school_id)];
        params.extend(arrays(&upd));
        db.execute(
            "UPDATE pupils p SET school_id = $2::uuid, \
                 identity_enc = coalesce(decode(nullif(x.enc, ''), 'hex'), p.identity_enc), \
                 identity_index = coalesce(decode(nullif(x.idx, ''), 'hex'), p.identity_index), \
                 feide_username = coalesce(nullif(x.feide, ''), p.feide_username), \
                 given_name = x.given, family_name = x.family, year_level = nullif(x.year, '')::int, \
                 gender = nullif(x.gender, ''), special_needs = x.sn::bool, left_at = NULL, updated_at = now() \
             FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) \
                  AS x(id, enc, idx, feide, given, family, year, gender, sn) \
             WHERE p.id = x.id::uuid AND p.tenant_id = $1::uuid AND NOT p.restricted \
               AND (p.school_id, p.identity_index, p.feide_username, p.given_name, p.family_name, p.year_level, p.gender, \
                    p.special_needs, p.left_at) IS DISTINCT FROM \
                   ($2::uuid, coalesce(decode(nullif(x.idx, ''), 'hex'), p.identity_index), coalesce(nullif(x.feide, ''), p.feide_username), \
                    x.given, x.family, nullif(x.year, '')::int, nullif(x.gender, ''), x.sn::bool, NULL::date)",
            &params,
        )
        .await
        .map_err(pupil_conflict)?
    };
    let created = if ins[0].is_empty() {
        Vec::new()
    } else {
        let mut params = vec![uuid(tenant_id), uuid(&school_id)];
        params.extend(arrays(&ins));
        db.query(
            "INSERT INTO pupils (tenant_id, school_id, identity_enc, identity_index, feide_username, given_name, family_name, \
                                 year_level, gender, special_needs) \
             SELECT $1::uuid, $2::uuid, decode(nullif(x.enc, ''), 'hex'), decode(nullif(x.idx, ''), 'hex'), nullif(x.feide, ''), \
                    x.given, x.family, nullif(x.year, '')::int, nullif(x.gender, ''), x.sn::bool \
             FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) \
                  WITH ORDINALITY AS x(id, enc, idx, feide, given, family, year, gender, sn, n) \
             RETURNING id, coalesce(encode(identity_index, 'hex'), '') AS idx, coalesce(feide_username, '') AS feide",
            &params,
        )
        .await
        .map_err(pupil_conflict)?
    };
    // Each new pupil's id by the identifiers it was inserted with (RETURNING
    // promises no order), so no pupil can land in another's groups.
    let new_at: HashMap<(&str, &str), usize> =
        new_keys.iter().enumerate().map(|(j, i)| ((ins[2][j].as_str(), ins[3][j].as_str()), *i)).collect();
    if created.len() != new_keys.len() || new_at.len() != new_keys.len() {
        return Err(Problem::internal());
    }
    for row in &created {
        let (idx, feide) = (row.text("idx")?, row.text("feide")?);
        let i = *new_at.get(&(idx.as_str(), feide.as_str())).ok_or_else(Problem::internal)?;
        let id = row.text("id")?;
        present.push(id.clone());
        pupil_id_at.insert(i, id);
    }

    record_transfers(db, meta, tenant_id, source_id, &school_id, &transfers).await?;
    if !superseded.is_empty() {
        let (ids, fields): (Vec<String>, Vec<String>) = superseded.iter().cloned().unzip();
        db.execute(
            "DELETE FROM pupil_corrections c USING unnest($2::text[], $3::text[]) AS x(p, f) \
             WHERE c.tenant_id = $1::uuid AND c.pupil_id = x.p::uuid AND c.field = x.f",
            &[uuid(tenant_id), Value::text_array(ids), Value::text_array(fields)],
        )
        .await?;
    }

    let left = db
        .execute(
            "UPDATE pupils SET left_at = current_date, updated_at = now() \
             WHERE tenant_id = $1::uuid AND school_id = $2::uuid AND left_at IS NULL AND NOT restricted \
               AND id NOT IN (SELECT x::uuid FROM unnest($3::text[]) AS x)",
            &[uuid(tenant_id), uuid(&school_id), Value::text_array(present)],
        )
        .await?;

    // Memberships: replaced for every group of this school.
    let (mut m_group, mut m_pupil) = (Vec::new(), Vec::new());
    for (i, p) in post.pupils.iter().enumerate() {
        let Some(pid) = pupil_id_at.get(&i) else { continue };
        for g in &p.groups {
            m_group.push(group_id(g)?);
            m_pupil.push(pid.clone());
        }
    }
    db.execute(
        "DELETE FROM group_memberships m USING groups g, pupils p \
         WHERE m.group_id = g.id AND g.tenant_id = $1::uuid AND g.school_id = $2::uuid \
           AND p.id = m.pupil_id AND NOT p.restricted",
        &[uuid(tenant_id), uuid(&school_id)],
    )
    .await?;
    // A pupil who moved here is no longer in the groups of the school they
    // left (nor seen there through them).
    if !transfers.is_empty() {
        db.execute(
            "DELETE FROM group_memberships m USING groups g \
             WHERE m.group_id = g.id AND g.tenant_id = $1::uuid AND g.school_id <> $2::uuid \
               AND m.tenant_id = $1::uuid AND m.pupil_id IN (SELECT x::uuid FROM unnest($3::text[]) AS x)",
            &[uuid(tenant_id), uuid(&school_id), Value::text_array(transfers.keys().cloned())],
        )
        .await?;
    }
    let memberships = db
        .execute(
            "INSERT INTO group_memberships (tenant_id, group_id, pupil_id) \
             SELECT DISTINCT $1::uuid, x.g::uuid, x.p::uuid FROM unnest($2::text[], $3::text[]) AS x(g, p)",
            &[uuid(tenant_id), Value::text_array(m_group), Value::text_array(m_pupil)],
        )
        .await?;

    let mut teachers = json!(null);
    if let Some(list) = &post.teachers {
        let feides: Vec<String> = list.iter().map(|t| t.feide.clone()).collect();
        let users = db
            .query(
                "SELECT feide_username, id FROM users WHERE tenant_id = $1::uuid AND deleted_at IS NULL \
                 AND feide_username = ANY($2::text[])",
                &[uuid(tenant_id), Value::text_array(feides)],
            )
            .await?;
        let user_by_feide: HashMap<String, String> =
            users.iter().map(|r| Ok((r.text("feide_username")?, r.text("id")?))).collect::<Result<_, Problem>>()?;
        let (mut g_user, mut g_group, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        for (i, t) in list.iter().enumerate() {
            match user_by_feide.get(&t.feide) {
                Some(user) => {
                    for g in &t.groups {
                        g_user.push(user.clone());
                        g_group.push(group_id(g)?);
                    }
                }
                None => unknown.push(i),
            }
        }
        db.execute(
            "DELETE FROM role_grants r USING groups g \
             WHERE r.group_id = g.id AND r.role = 'teacher' AND g.tenant_id = $1::uuid AND g.school_id = $2::uuid",
            &[uuid(tenant_id), uuid(&school_id)],
        )
        .await?;
        let assigned = db
            .execute(
                "INSERT INTO role_grants (tenant_id, user_id, role, group_id) \
                 SELECT DISTINCT $1::uuid, x.u::uuid, 'teacher', x.g::uuid FROM unnest($2::text[], $3::text[]) AS x(u, g)",
                &[uuid(tenant_id), Value::text_array(g_user), Value::text_array(g_group)],
            )
            .await?;
        teachers = json!({"assignments": assigned, "unknown_teachers": unknown});
    }

    let summary = json!({
        "school_id": school_id,
        "groups": group_by_ext.len(),
        "pupils": {
            "received": post.pupils.len(),
            "created": created.len(),
            "updated": updated,
            "unchanged": post
                .pupils
                .len()
                .saturating_sub(created.len() + updated as usize + restricted_skipped + erased_skipped.len()),
            "left": left,
            "restricted_unchanged": restricted_skipped,
            "erased_skipped": erased_skipped.len(),
        },
        // Positions in this roster: pupils erased on request (not
        // re-created), and fields whose correction by the controller was
        // kept over the value sent (the source should correct its record).
        "erased_skipped": erased_skipped,
        "corrections_kept": corrections_kept,
        "corrections_superseded": superseded.len(),
        "memberships": memberships,
        "teachers": teachers,
    });
    audit::record(
        db,
        Some(meta),
        Event::new(tenant_id, Actor::System("webhook"), "roster.applied").target("webhook_source", source_id).details(
            json!({"school_id": summary["school_id"], "pupils": summary["pupils"], "groups": summary["groups"]}),
        ),
    )
    .await?;
    Ok(summary)
}

/// Bytes of a hex string (the blind index as `PupilKey` carries it).
fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

/// The tombstones among the roster's pupils' that erased pupils left.
async fn erased_among(db: &mut impl Db, tenant_id: &str, pupils: &[ValidPupil]) -> Result<HashSet<Vec<u8>>, Problem> {
    let all: Vec<String> = pupils.iter().flat_map(|p| p.tombstones.iter().map(|t| hex(t))).collect();
    if all.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = db
        .query(
            "SELECT tombstone FROM erased_pupils \
             WHERE tenant_id = $1::uuid AND tombstone IN (SELECT decode(x, 'hex') FROM unnest($2::text[]) AS x)",
            &[uuid(tenant_id), Value::text_array(all)],
        )
        .await?;
    rows.iter().map(|r| Ok(r.bytes("tombstone")?)).collect()
}

/// A correction that the controller made to a field a roster supplies
/// (`pupil_corrections`), with the value the source sent before it and the
/// corrected value now held (text as the roster's columns carry it, "" for NULL).
struct HeldCorrection {
    pupil_id: String,
    field: String,
    source_value: String,
    current: String,
}

async fn corrections_of(
    db: &mut impl Db,
    tenant_id: &str,
    known: &HashMap<String, pupils::Known>,
) -> Result<Vec<HeldCorrection>, Problem> {
    if known.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .query(
            "SELECT c.pupil_id, c.field, coalesce(c.source_value, '') AS source_value, \
                    coalesce(CASE c.field WHEN 'given_name' THEN p.given_name WHEN 'family_name' THEN p.family_name \
                         WHEN 'year_level' THEN p.year_level::text WHEN 'gender' THEN p.gender END, '') AS current \
             FROM pupil_corrections c JOIN pupils p ON p.id = c.pupil_id AND p.tenant_id = c.tenant_id \
             WHERE c.tenant_id = $1::uuid AND c.pupil_id IN (SELECT x::uuid FROM unnest($2::text[]) AS x)",
            &[uuid(tenant_id), Value::text_array(known.values().map(|k| k.id.clone()).collect::<HashSet<_>>())],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(HeldCorrection {
                pupil_id: r.text("pupil_id")?,
                field: r.text("field")?,
                source_value: r.text("source_value")?,
                current: r.text("current")?,
            })
        })
        .collect()
}

/// One `pupil.transferred` audit record per pupil who moved here (in the
/// roster's transaction, in pupil id order): which school they left, which
/// they joined, and the source whose roster moved them. Never names or
/// identity numbers.
async fn record_transfers(
    db: &mut impl Db,
    meta: &RequestMeta,
    tenant_id: &str,
    source_id: &str,
    school_id: &str,
    transfers: &BTreeMap<String, String>,
) -> Result<(), Problem> {
    if transfers.is_empty() {
        return Ok(());
    }
    // As `audit::record` writes an event of `Actor::System("webhook")`, for many at once.
    db.execute(
        "INSERT INTO audit_log (tenant_id, actor, action, target_kind, target_id, client_ip, request_id, details) \
         SELECT $1::uuid, 'system:webhook', $2::text, 'pupil', x.pupil, $3::text, $4::text, \
                jsonb_build_object('from_school_id', x.from_school, 'to_school_id', $5::text, 'source_id', $6::text) \
         FROM unnest($7::text[], $8::text[]) WITH ORDINALITY AS x(pupil, from_school, n) ORDER BY x.n",
        &[
            uuid(tenant_id),
            TRANSFER_ACTION.into(),
            meta.client_ip.clone().into(),
            meta.request_id.clone().into(),
            school_id.into(),
            source_id.into(),
            Value::text_array(transfers.keys().cloned()),
            Value::text_array(transfers.values().cloned()),
        ],
    )
    .await?;
    Ok(())
}

/// A Feide username or identity number that the roster gives to one pupil
/// but the tenant already has on another: the roster contradicts stored data.
fn pupil_conflict(e: tavle_core::db::DbError) -> Problem {
    if e.is_unique_violation("pupils_feide") || e.is_unique_violation("pupils_identity_index") {
        Problem::conflict("a feide_username or identity number in this roster belongs to another pupil of the tenant")
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config, identity_number};

    fn post(body: serde_json::Value) -> RosterPost {
        serde_json::from_value(body).unwrap()
    }

    fn good() -> serde_json::Value {
        json!({
            "school": {"external_id": " nordby ", "name": "Nordby skole "},
            "groups": [{"external_id": "5A", "name": " 5A", "year_level": 5}, {"external_id": "5B", "name": "5B"}],
            "pupils": [
                {"identity_number": identity_number(0), "given_name": " Ola", "family_name": "Nordmann",
                 "year_level": 5, "gender": "male", "groups": ["5A"]},
                {"feide_username": "Kari@Nordby.no", "given_name": "Kari", "family_name": "Nordmann", "groups": ["5B"]},
            ],
            "teachers": [{"feide_username": "Lise@Nordby.no", "groups": ["5A", "5B"]}],
        })
    }

    fn pointers(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.pointer.as_str()).collect()
    }

    #[test]
    fn a_good_roster_is_validated_into_its_stored_form() {
        let cfg = config();
        let valid = validate(post(good()), &cfg, "tenant").unwrap();
        assert_eq!((valid.school.external_id.as_str(), valid.school.name.as_str()), ("nordby", "Nordby skole"));
        let groups: Vec<_> =
            valid.groups.iter().map(|g| (g.external_id.as_str(), g.name.as_str(), g.year_level)).collect();
        assert_eq!(groups, [("5A", "5A", Some(5)), ("5B", "5B", None)]);
        let [ola, kari] = &valid.pupils[..] else { panic!("two pupils") };
        assert_eq!(
            (ola.given_name.as_str(), ola.gender, ola.groups.as_slice()),
            ("Ola", Some("male"), &["5A".to_owned()][..])
        );
        // Only the encrypted number is kept, and it decrypts to the one sent.
        assert!(ola.key.identity.is_none() && ola.key.index.is_some());
        let hex = ola.identity_enc.as_deref().unwrap();
        let enc: Vec<u8> = hex
            .as_bytes()
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect();
        assert_eq!(cfg.identity.decrypt_identity(&enc, b"tenant").unwrap().expose(), identity_number(0));
        assert_eq!(
            (kari.identity_enc.as_deref(), kari.key.feide.as_deref(), kari.gender),
            (None, Some("kari@nordby.no"), None)
        );
        let teachers = valid.teachers.as_deref().unwrap();
        assert_eq!((teachers[0].feide.as_str(), teachers[0].groups.len()), ("lise@nordby.no", 2));
    }

    #[test]
    fn names_are_validated_and_kept_in_nfc() {
        let mut body = good();
        body["pupils"][0]["given_name"] = json!(" A\u{30A}se ");
        body["pupils"][0]["family_name"] = json!("e\u{301}".repeat(200));
        let valid = validate(post(body), &config(), "tenant").unwrap();
        assert_eq!(valid.pupils[0].given_name, "\u{c5}se");
        assert_eq!(valid.pupils[0].family_name, "\u{e9}".repeat(200), "200 letters, however typed");

        let mut body = good();
        body["pupils"][0]["family_name"] = json!("e\u{301}".repeat(201));
        body["pupils"][1]["given_name"] = json!("\u{301}".repeat(201));
        let p = validate(post(body), &config(), "tenant").err().unwrap();
        assert_eq!(pointers(&p), ["/pupils/0/family_name", "/pupils/1/given_name"]);
    }

    #[test]
    fn a_bad_roster_is_rejected_with_a_pointer_per_error_in_order() {
        let mut body = good();
        body["groups"][1]["external_id"] = json!("5A");
        body["pupils"][0]["gender"] = json!("boy");
        body["pupils"][0]["groups"] = json!(["6C"]);
        body["pupils"][1]["feide_username"] = json!("kari");
        body["pupils"][1]["year_level"] = json!(14);
        body["teachers"][0]["groups"] = json!(["5A", "7D"]);
        let p = validate(post(body), &config(), "tenant").err().unwrap();
        assert_eq!(p.status, 422);
        assert_eq!(
            pointers(&p),
            [
                "/groups/1/external_id",
                "/pupils/0/gender",
                "/pupils/0/groups/0",
                "/pupils/1/year_level",
                "/pupils/1/groups/0", // 5B is no group now
                "/pupils/1/feide_username",
                "/teachers/0/groups/1",
            ]
        );

        // The same pupil twice, and a bad identity number whose digits no message repeats.
        let mut body = good();
        body["pupils"][1]["identity_number"] = json!(identity_number(0));
        body["pupils"].as_array_mut().unwrap().push(json!({"identity_number": "12345678901", "given_name": "X",
                                                          "family_name": "Y"}));
        let p = validate(post(body), &config(), "tenant").err().unwrap();
        assert_eq!(pointers(&p), ["/pupils/1", "/pupils/2/identity_number"]);
        assert!(p.errors.iter().all(|e| !e.message.contains("12345678901")));
    }
}
