//! Erasure and anonymisation of a pupil, and pseudonymisation of a staff
//! account: one implementation for the subject-requests component (Art. 17
//! on request) and the retention component (on schedule).
//!
//! Erasing a pupil, inside the caller's transaction:
//! - records the pupil's tombstones (`erased_pupils`, see
//!   [`crate::crypto::BlindIndex::tombstone_of_index`]), so that a roster
//!   that still lists them skips them instead of re-creating them;
//! - moves their results into `anonymised_results` (assessment, school,
//!   year level, gender, status, scores, month completed; no result or pupil
//!   id, no external ids, no items or answers), pending k-anonymity unless
//!   the erasure alone fills their cell, and deletes the results;
//! - deletes the pupil row and with it the encrypted identity number, its
//!   blind index, the Feide username, names, group memberships and pending
//!   corrections; deletes the key of their rectified values (which makes
//!   those values in the audit log unreadable) and the exports made for them;
//! - scrubs the pupil's names from the free text of their own requests.
//!
//! What stays: the pupil's random id in append-only records (access log,
//! audit log) and in the requests that prove the erasure was done. Nothing
//! links that id to a person afterwards.

use crate::crypto::BlindIndex;
use crate::db::{uuid, Db, Value};
use crate::Problem;
use serde_json::{json, Value as Json};

/// The username prefix of pseudonymised staff accounts (`username LIKE
/// 'erased-%'` in SQL): reserved, no account can be given such a name.
pub const PSEUDONYM_PREFIX: &str = "erased-";

/// What an erasure did, for the completion record and the retention report.
#[derive(Debug, Clone, PartialEq)]
pub struct Erased {
    pub results_anonymised: i64,
    pub memberships_removed: i64,
    /// The sources that supplied the pupil's data (Art. 19 recipients).
    pub sources: Json,
}

/// The sources that supplied a pupil's data: the publishers of their
/// results, and the school administrative systems whose rosters list the
/// pupil's school (`roster.applied` in the audit log). `[{id, name, kind}]`.
pub async fn pupil_sources(db: &mut impl Db, tenant_id: &str, pupil_id: &str) -> Result<Json, Problem> {
    let row = db
        .query_one(
            "SELECT coalesce(jsonb_agg(jsonb_build_object('id', ws.id, 'name', ws.name, 'kind', ws.kind) \
                     ORDER BY ws.kind, ws.name, ws.id), '[]'::jsonb) AS sources \
             FROM webhook_sources ws WHERE ws.tenant_id = $1::uuid AND ws.id IN ( \
                 SELECT r.source_id FROM results r WHERE r.tenant_id = $1::uuid AND r.pupil_id = $2::uuid \
                 UNION SELECT a.source_id FROM results r JOIN assessments a ON a.id = r.assessment_id \
                       WHERE r.tenant_id = $1::uuid AND r.pupil_id = $2::uuid \
                 UNION SELECT a.target_id::uuid FROM audit_log a JOIN pupils p ON p.id = $2::uuid \
                       WHERE a.tenant_id = $1::uuid AND a.action = 'roster.applied' \
                         AND a.target_kind = 'webhook_source' AND a.details->>'school_id' = p.school_id::text)",
            &[uuid(tenant_id), uuid(pupil_id)],
        )
        .await?;
    Ok(row.json("sources")?)
}

/// Why a pupil is erased.
#[derive(Debug, Clone, Copy)]
pub enum Reason<'a> {
    /// The subject asked (Art. 17): tombstones (under the blind-index key)
    /// keep rosters from re-creating them.
    Request(&'a BlindIndex),
    /// Retention: no tombstone, so a pupil who enrols again is a pupil again
    /// (and the retention component holds no blind-index key).
    Retention,
}

/// What erasing a batch of pupils did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErasedBatch {
    pub pupils: i64,
    pub results_anonymised: i64,
    pub memberships_removed: i64,
}

/// Erases the tenant's pupil `pupil_id` (see the module comment) in the
/// caller's transaction. `None` when there is no such pupil (already erased).
pub async fn erase_pupil(
    db: &mut impl Db,
    tenant_id: &str,
    pupil_id: &str,
    reason: Reason<'_>,
) -> Result<Option<Erased>, Problem> {
    let exists = db
        .query_opt(
            "SELECT 1 AS one FROM pupils WHERE tenant_id = $1::uuid AND id = $2::uuid FOR UPDATE",
            &[uuid(tenant_id), uuid(pupil_id)],
        )
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let sources = pupil_sources(db, tenant_id, pupil_id).await?;
    let done = erase_pupils(db, tenant_id, &[pupil_id.to_owned()], reason).await?;
    if done.pupils == 0 {
        return Ok(None);
    }
    Ok(Some(Erased {
        results_anonymised: done.results_anonymised,
        memberships_removed: done.memberships_removed,
        sources,
    }))
}

/// Erases the tenant's pupils `pupil_ids` in the caller's transaction, with
/// set-based statements (retention erases leavers in batches); ids that are
/// no longer there are skipped. The one implementation behind
/// [`erase_pupil`].
pub async fn erase_pupils(
    db: &mut impl Db,
    tenant_id: &str,
    pupil_ids: &[String],
    reason: Reason<'_>,
) -> Result<ErasedBatch, Problem> {
    let tenant = || uuid(tenant_id);
    let ids = || Value::text_array(pupil_ids.iter().cloned());
    let rows = db
        .query(
            "SELECT id::text AS id, identity_index, feide_username, given_name, family_name, \
                    EXISTS (SELECT 1 FROM subject_requests r WHERE r.tenant_id = p.tenant_id AND r.subject_id = p.id) \
                        AS has_requests \
             FROM pupils p WHERE tenant_id = $1::uuid AND id = ANY($2::text[]::uuid[]) ORDER BY id FOR UPDATE",
            &[tenant(), ids()],
        )
        .await?;
    if rows.is_empty() {
        return Ok(ErasedBatch::default());
    }
    let present = || Value::text_array(rows.iter().map(|r| r.text("id").unwrap_or_default()));

    if let Reason::Request(index) = reason {
        for row in &rows {
            let mut tombstones = Vec::new();
            if !row.is_null("identity_index")? {
                tombstones.push(index.tombstone_of_index(tenant_id, &row.bytes("identity_index")?));
            }
            if let Some(feide) = row.opt_text("feide_username")? {
                tombstones.push(index.tombstone_of_feide(tenant_id, &feide));
            }
            for t in tombstones {
                db.execute(
                    "INSERT INTO erased_pupils (tenant_id, tombstone) VALUES ($1::uuid, $2::bytea) \
                     ON CONFLICT DO NOTHING",
                    &[tenant(), Value::Bytes(t)],
                )
                .await?;
            }
        }
    }

    // New rows are `pending` until retention has checked their cell's size
    // (k-anonymity, functions/retention), unless this erasure alone puts 5
    // or more into their school-level cell (assessment, school, year level,
    // gender): a cell of 5 or more keeps its rows whatever arrives later
    // (retention erases leavers by cohort).
    let results_anonymised = db
        .execute(
            "INSERT INTO anonymised_results (tenant_id, assessment_id, school_id, year_level, gender, status, score, \
                                             subtest_scores, completed_month, pending) \
             SELECT r.tenant_id, r.assessment_id, p.school_id, p.year_level, p.gender, r.status, r.score, \
                    r.subtest_scores, date_trunc('month', r.completed_at AT TIME ZONE 'UTC')::date, \
                    count(*) OVER (PARTITION BY r.assessment_id, p.school_id, p.year_level, p.gender) < 5 \
             FROM results r JOIN pupils p ON p.id = r.pupil_id \
             WHERE r.tenant_id = $1::uuid AND r.pupil_id = ANY($2::text[]::uuid[]) \
               AND p.id = ANY($2::text[]::uuid[])",
            &[tenant(), present()],
        )
        .await? as i64;
    db.execute(
        "DELETE FROM results WHERE tenant_id = $1::uuid AND pupil_id = ANY($2::text[]::uuid[])",
        &[tenant(), present()],
    )
    .await?;
    let memberships_removed = db
        .execute(
            "DELETE FROM group_memberships WHERE tenant_id = $1::uuid AND pupil_id = ANY($2::text[]::uuid[])",
            &[tenant(), present()],
        )
        .await? as i64;

    // Free text can name a pupil only in their own requests (rare): scrubbed
    // one by one.
    for row in rows.iter().filter(|r| r.bool("has_requests").unwrap_or(true)) {
        let id = row.text("id")?;
        let mut words = vec![
            row.text("given_name")?,
            row.text("family_name")?,
            row.opt_text("feide_username")?.unwrap_or_default(),
        ];
        words.extend(earlier_values(db, tenant_id, &id).await?);
        scrub_requests(db, tenant_id, &id, &words).await?;
    }
    forget_subjects(db, tenant_id, present()).await?;
    let pupils = db
        .execute(
            "DELETE FROM pupils WHERE tenant_id = $1::uuid AND id = ANY($2::text[]::uuid[])",
            &[tenant(), present()],
        )
        .await? as i64;
    Ok(ErasedBatch { pupils, results_anonymised, memberships_removed })
}

/// Deletes the subjects' keys (crypto-shredding their rectified values in
/// the audit log) and the exports made for them. `ids`: a `text[]` of ids.
async fn forget_subjects(db: &mut impl Db, tenant_id: &str, ids: Value) -> Result<(), Problem> {
    db.execute(
        "DELETE FROM subject_keys WHERE tenant_id = $1::uuid AND subject_id = ANY($2::text[]::uuid[])",
        &[uuid(tenant_id), ids.clone()],
    )
    .await?;
    db.execute(
        "DELETE FROM subject_exports e USING subject_requests r \
         WHERE e.request_id = r.id AND r.tenant_id = $1::uuid AND r.subject_id = ANY($2::text[]::uuid[])",
        &[uuid(tenant_id), ids],
    )
    .await?;
    Ok(())
}

/// The values a subject's data held before rectifications (what the school
/// system had sent) and the values asked for: free text may name them too.
async fn earlier_values(db: &mut impl Db, tenant_id: &str, subject_id: &str) -> Result<Vec<String>, Problem> {
    let rows = db
        .query(
            "SELECT source_value AS v FROM pupil_corrections \
              WHERE tenant_id = $1::uuid AND pupil_id = $2::uuid AND source_value IS NOT NULL \
             UNION SELECT c->>'value' FROM subject_requests r, jsonb_array_elements(r.corrections) c \
              WHERE r.tenant_id = $1::uuid AND r.subject_id = $2::uuid AND c->>'value' IS NOT NULL",
            &[uuid(tenant_id), uuid(subject_id)],
        )
        .await?;
    rows.iter().map(|r| Ok(r.text("v")?)).collect()
}

/// Replaces, in the free text of the subject's own requests, every one of
/// `words` (names, usernames) and each of their parts by `[erased]`,
/// case-insensitively (`***=`: matched as a literal string, never as a
/// pattern), and every run of eleven digits (an identity number, however
/// spaced); drops the corrected values (the fields stay).
async fn scrub_requests(db: &mut impl Db, tenant_id: &str, subject_id: &str, words: &[String]) -> Result<(), Problem> {
    let mut all: Vec<String> = Vec::new();
    for word in words.iter().map(|w| crate::names::nfc(w.trim())).filter(|w| !w.is_empty()) {
        all.extend(
            word.split(|c: char| c.is_whitespace() || c == '-').filter(|p| p.chars().count() > 1).map(str::to_owned),
        );
        all.push(word);
    }
    // Longest first, so that a whole name goes before its parts.
    all.sort_by_key(|w| std::cmp::Reverse(w.len()));
    all.dedup();
    db.execute(
        "UPDATE subject_requests SET \
             identity_verification = regexp_replace(identity_verification, '[0-9]{6}[ .-]?[0-9]{5}', '[erased]', 'g'), \
             extension_reason = regexp_replace(extension_reason, '[0-9]{6}[ .-]?[0-9]{5}', '[erased]', 'g'), \
             rejection_reason = regexp_replace(rejection_reason, '[0-9]{6}[ .-]?[0-9]{5}', '[erased]', 'g'), \
             decision_reason = regexp_replace(decision_reason, '[0-9]{6}[ .-]?[0-9]{5}', '[erased]', 'g') \
         WHERE tenant_id = $1::uuid AND subject_id = $2::uuid",
        &[uuid(tenant_id), uuid(subject_id)],
    )
    .await?;
    for word in &all {
        db.execute(
            "UPDATE subject_requests SET \
                 identity_verification = regexp_replace(identity_verification, '***=' || $3::text, '[erased]', 'gi'), \
                 extension_reason = regexp_replace(extension_reason, '***=' || $3::text, '[erased]', 'gi'), \
                 rejection_reason = regexp_replace(rejection_reason, '***=' || $3::text, '[erased]', 'gi'), \
                 decision_reason = regexp_replace(decision_reason, '***=' || $3::text, '[erased]', 'gi') \
             WHERE tenant_id = $1::uuid AND subject_id = $2::uuid",
            &[uuid(tenant_id), uuid(subject_id), word.as_str().into()],
        )
        .await?;
    }
    db.execute(
        "UPDATE subject_requests SET corrections = (SELECT jsonb_agg(jsonb_build_object('field', c->>'field', \
             'value', NULL)) FROM jsonb_array_elements(corrections) c), updated_at = now() \
         WHERE tenant_id = $1::uuid AND subject_id = $2::uuid AND corrections IS NOT NULL",
        &[uuid(tenant_id), uuid(subject_id)],
    )
    .await?;
    Ok(())
}

/// Pseudonymises the tenant's staff user `user_id` in the caller's
/// transaction: names, e-mail, username and Feide username are replaced by
/// a stable pseudonym derived from the (random) user id, so that audit
/// references stay consistent; the password can no longer be used; sessions
/// and role grants are removed (their history stays in the audit log, which
/// names users by id only). `None` if there is no such user or they were
/// already pseudonymised.
pub async fn pseudonymise_user(db: &mut impl Db, tenant_id: &str, user_id: &str) -> Result<Option<Json>, Problem> {
    let Some(row) = db
        .query_opt(
            "SELECT username, display_name, email, feide_username FROM users \
             WHERE tenant_id = $1::uuid AND id = $2::uuid AND username NOT LIKE 'erased-%' FOR UPDATE",
            &[uuid(tenant_id), uuid(user_id)],
        )
        .await?
    else {
        return Ok(None);
    };
    let words = [
        row.text("username")?,
        row.text("display_name")?,
        row.opt_text("email")?.unwrap_or_default(),
        row.opt_text("feide_username")?.unwrap_or_default(),
    ];
    scrub_requests(db, tenant_id, user_id, &words).await?;
    forget_subjects(db, tenant_id, Value::text_array([user_id])).await?;
    let sessions = db
        .execute(
            "DELETE FROM sessions WHERE tenant_id = $1::uuid AND user_id = $2::uuid",
            &[uuid(tenant_id), uuid(user_id)],
        )
        .await?;
    let grants = db
        .execute(
            "DELETE FROM role_grants WHERE tenant_id = $1::uuid AND user_id = $2::uuid",
            &[uuid(tenant_id), uuid(user_id)],
        )
        .await?;
    // The pseudonym: the first 12 hex digits of SHA-256 of the id (random,
    // so the pseudonym reveals nothing), the same whichever run makes it.
    db.execute(
        "UPDATE users SET username = 'erased-' || left(encode(sha256(id::text::bytea), 'hex'), 12), \
             display_name = 'Erased user ' || left(encode(sha256(id::text::bytea), 'hex'), 6), \
             email = NULL, feide_username = NULL, password_hash = '!erased', active = false, \
             locked_until = NULL, last_login_at = NULL, failed_logins = 0, \
             deleted_at = coalesce(deleted_at, now()), updated_at = now() \
         WHERE tenant_id = $1::uuid AND id = $2::uuid",
        &[uuid(tenant_id), uuid(user_id)],
    )
    .await?;
    Ok(Some(json!({"sessions_removed": sessions, "role_grants_removed": grants})))
}
