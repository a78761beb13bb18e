//! Roster posts: a full sync of one school's groups, pupils, memberships and
//! (optionally) teachers' group assignments. New pupils are added, changed
//! ones updated, memberships replaced; pupils of the school absent from the
//! roster are marked as left (never deleted here, so retention can apply
//! its rules). Everything applies in the caller's transaction.

use crate::pupils::{self, PupilIdentifiers};
use crate::results::check_text;
use crate::IngestConfig;
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use tavle_core::audit::{self, Actor, Event};
use tavle_core::db::{uuid, Db, Value};
use tavle_core::web::Checks;
use tavle_core::Problem;

pub const MAX_PUPILS: usize = 20_000;
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

pub async fn apply(
    db: &mut impl Db,
    meta: &tavle_core::web::RequestMeta,
    cfg: &IngestConfig,
    tenant_id: &str,
    source_id: &str,
    post: RosterPost,
) -> Result<serde_json::Value, Problem> {
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
    let mut keys = Vec::with_capacity(post.pupils.len());
    let mut seen = HashSet::new();
    let mut seen_feide = HashSet::new();
    for (i, p) in post.pupils.iter().enumerate() {
        let ptr = format!("/pupils/{i}");
        check_text(&mut checks, &format!("{ptr}/given_name"), &p.given_name, 200);
        check_text(&mut checks, &format!("{ptr}/family_name"), &p.family_name, 200);
        if p.year_level.is_some_and(|y| !(1..=13).contains(&y)) {
            checks.fail(&format!("{ptr}/year_level"), "must be from 1 to 13");
        }
        if p.gender.as_deref().is_some_and(|g| !GENDERS.contains(&g)) {
            checks.fail(&format!("{ptr}/gender"), "must be female, male, other or unknown");
        }
        for (j, g) in p.groups.iter().enumerate() {
            if !group_ids.contains(g.as_str()) {
                checks.fail(&format!("{ptr}/groups/{j}"), "not a group of this roster");
            }
        }
        if let Some(key) = pupils::parse(&p.ids, cfg, tenant_id, &ptr, &mut checks) {
            if !seen.insert(key.dedup_key()) {
                checks.fail(&ptr, "this pupil appears twice in the roster");
            }
            if key.feide.as_ref().is_some_and(|f| !seen_feide.insert(f.clone())) {
                checks.fail(&format!("{ptr}/feide_username"), "this feide_username appears twice in the roster");
            }
            keys.push((i, key));
        }
    }
    for (i, t) in post.teachers.iter().flatten().enumerate() {
        if pupils::parse_feide(&t.feide_username).is_none() {
            checks.fail(&format!("/teachers/{i}/feide_username"), "must be a Feide username (user@realm)");
        }
        for (j, g) in t.groups.iter().enumerate() {
            if !group_ids.contains(g.as_str()) {
                checks.fail(&format!("/teachers/{i}/groups/{j}"), "not a group of this roster");
            }
        }
    }
    checks.finish()?;

    let school_id = db
        .query_one(
            "INSERT INTO schools (tenant_id, external_id, name) VALUES ($1::uuid, $2::text, $3::text) \
             ON CONFLICT (tenant_id, external_id) DO UPDATE SET name = EXCLUDED.name RETURNING id",
            &[uuid(tenant_id), post.school.external_id.trim().into(), post.school.name.trim().into()],
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
                Value::text_array(post.groups.iter().map(|g| g.name.trim().to_owned())),
                Value::text_array(post.groups.iter().map(|g| g.year_level.map(|y| y.to_string()).unwrap_or_default())),
            ],
        )
        .await?;
    let group_by_ext: HashMap<String, String> =
        group_rows.iter().map(|r| Ok((r.text("external_id")?, r.text("id")?))).collect::<Result<_, Problem>>()?;

    let key_refs: Vec<_> = keys.iter().map(|(_, k)| k).collect();
    let known = pupils::resolve(db, tenant_id, &key_refs).await?;

    // Split into updates of known pupils and inserts of new ones.
    let mut upd: [Vec<String>; 9] = Default::default();
    let mut ins: [Vec<String>; 9] = Default::default();
    let mut new_keys = Vec::new();
    let mut present = Vec::new();
    let mut restricted_skipped = 0;
    let mut pupil_id_at: HashMap<usize, String> = HashMap::new();
    for (i, key) in &keys {
        let p = &post.pupils[*i];
        let known_pupil = pupils::lookup(&known, key);
        if let Some(k) = known_pupil {
            present.push(k.id.clone());
            if k.restricted {
                // Restricted processing: keep the pupil and their memberships
                // exactly as they are, and do not mark them as left.
                restricted_skipped += 1;
                continue;
            }
            pupil_id_at.insert(*i, k.id.clone());
        }
        let enc = key
            .identity
            .as_ref()
            .map(|id| tavle_core::auth::hex(&cfg.identity.encrypt_identity(id, tenant_id.as_bytes())))
            .unwrap_or_default();
        let cols = [
            known_pupil.map(|k| k.id.clone()).unwrap_or_default(),
            enc,
            key.index.clone().unwrap_or_default(),
            key.feide.clone().unwrap_or_default(),
            p.given_name.trim().to_owned(),
            p.family_name.trim().to_owned(),
            p.year_level.map(|y| y.to_string()).unwrap_or_default(),
            p.gender.clone().unwrap_or_default(),
            p.special_needs.to_string(),
        ];
        let target = if known_pupil.is_some() { &mut upd } else { &mut ins };
        for (col, v) in target.iter_mut().zip(cols) {
            col.push(v);
        }
        if known_pupil.is_none() {
            new_keys.push(*i);
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
             ORDER BY x.n RETURNING id",
            &params,
        )
        .await
        .map_err(pupil_conflict)?
    };
    for (row, i) in created.iter().zip(&new_keys) {
        let id = row.text("id")?;
        present.push(id.clone());
        pupil_id_at.insert(*i, id);
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
            m_group.push(group_by_ext[g].clone());
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
    let memberships = db
        .execute(
            "INSERT INTO group_memberships (tenant_id, group_id, pupil_id) \
             SELECT DISTINCT $1::uuid, x.g::uuid, x.p::uuid FROM unnest($2::text[], $3::text[]) AS x(g, p)",
            &[uuid(tenant_id), Value::text_array(m_group), Value::text_array(m_pupil)],
        )
        .await?;

    let mut teachers = json!(null);
    if let Some(list) = &post.teachers {
        let feides: Vec<String> = list.iter().filter_map(|t| pupils::parse_feide(&t.feide_username)).collect();
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
            match pupils::parse_feide(&t.feide_username).and_then(|f| user_by_feide.get(&f)) {
                Some(user) => {
                    for g in &t.groups {
                        g_user.push(user.clone());
                        g_group.push(group_by_ext[g].clone());
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
            "unchanged": keys.len() - created.len() - updated as usize - restricted_skipped,
            "left": left,
            "restricted_unchanged": restricted_skipped,
        },
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

/// A Feide username or identity number that the roster gives to one pupil
/// but the tenant already has on another: the roster contradicts stored data.
fn pupil_conflict(e: tavle_core::db::DbError) -> Problem {
    if e.is_unique_violation("pupils_feide") || e.is_unique_violation("pupils_identity_index") {
        Problem::conflict("a feide_username or identity number in this roster belongs to another pupil of the tenant")
    } else {
        e.into()
    }
}
