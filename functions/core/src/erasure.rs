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
//!   id, no external ids, no items or answers) and deletes the results;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The subject asked (Art. 17): tombstones keep rosters from re-creating them.
    Request,
    /// Retention: no tombstone, so a pupil who enrols again is a pupil again.
    Retention,
}

/// Erases the tenant's pupil `pupil_id` (see the module comment) in the
/// caller's transaction. `None` when there is no such pupil (already erased).
pub async fn erase_pupil(
    db: &mut impl Db,
    index: &BlindIndex,
    tenant_id: &str,
    pupil_id: &str,
    reason: Reason,
) -> Result<Option<Erased>, Problem> {
    let tenant = || uuid(tenant_id);
    let pupil = || uuid(pupil_id);
    let Some(row) = db
        .query_opt(
            "SELECT identity_index, feide_username, given_name, family_name FROM pupils \
             WHERE tenant_id = $1::uuid AND id = $2::uuid FOR UPDATE",
            &[tenant(), pupil()],
        )
        .await?
    else {
        return Ok(None);
    };
    let sources = pupil_sources(db, tenant_id, pupil_id).await?;

    let mut tombstones = Vec::new();
    if reason == Reason::Request && !row.is_null("identity_index")? {
        tombstones.push(index.tombstone_of_index(tenant_id, &row.bytes("identity_index")?));
    }
    if let (Reason::Request, Some(feide)) = (reason, row.opt_text("feide_username")?) {
        tombstones.push(index.tombstone_of_feide(tenant_id, &feide));
    }
    for t in tombstones {
        db.execute(
            "INSERT INTO erased_pupils (tenant_id, tombstone) VALUES ($1::uuid, $2::bytea) ON CONFLICT DO NOTHING",
            &[tenant(), Value::Bytes(t)],
        )
        .await?;
    }

    // Retention (issue 13) generalises small cells of these rows.
    let results_anonymised = db
        .execute(
            "INSERT INTO anonymised_results (tenant_id, assessment_id, school_id, year_level, gender, status, score, \
                                             subtest_scores, completed_month) \
             SELECT r.tenant_id, r.assessment_id, p.school_id, p.year_level, p.gender, r.status, r.score, \
                    r.subtest_scores, date_trunc('month', r.completed_at AT TIME ZONE 'UTC')::date \
             FROM results r JOIN pupils p ON p.id = r.pupil_id \
             WHERE r.tenant_id = $1::uuid AND r.pupil_id = $2::uuid",
            &[tenant(), pupil()],
        )
        .await? as i64;
    db.execute("DELETE FROM results WHERE tenant_id = $1::uuid AND pupil_id = $2::uuid", &[tenant(), pupil()]).await?;
    let memberships_removed = db
        .execute(
            "DELETE FROM group_memberships WHERE tenant_id = $1::uuid AND pupil_id = $2::uuid",
            &[tenant(), pupil()],
        )
        .await? as i64;

    let mut words =
        vec![row.text("given_name")?, row.text("family_name")?, row.opt_text("feide_username")?.unwrap_or_default()];
    words.extend(earlier_values(db, tenant_id, pupil_id).await?);
    scrub_requests(db, tenant_id, pupil_id, &words).await?;
    forget_subject(db, tenant_id, pupil_id).await?;
    db.execute("DELETE FROM pupils WHERE tenant_id = $1::uuid AND id = $2::uuid", &[tenant(), pupil()]).await?;
    Ok(Some(Erased { results_anonymised, memberships_removed, sources }))
}

/// Deletes the subject's key (crypto-shredding the rectified values in the
/// audit log) and the exports made for them.
async fn forget_subject(db: &mut impl Db, tenant_id: &str, subject_id: &str) -> Result<(), Problem> {
    db.execute(
        "DELETE FROM subject_keys WHERE tenant_id = $1::uuid AND subject_id = $2::uuid",
        &[uuid(tenant_id), uuid(subject_id)],
    )
    .await?;
    db.execute(
        "DELETE FROM subject_exports e USING subject_requests r \
         WHERE e.request_id = r.id AND r.tenant_id = $1::uuid AND r.subject_id = $2::uuid",
        &[uuid(tenant_id), uuid(subject_id)],
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
    forget_subject(db, tenant_id, user_id).await?;
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
