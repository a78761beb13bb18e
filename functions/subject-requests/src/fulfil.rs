//! `POST /subject-requests/{id}/fulfil`: what completing each kind of
//! request does, in one transaction with its completion record and audit
//! record. Fulfilling a completed request again answers the same completion
//! record and does nothing (idempotent); a rejected one is a 409, as is a
//! request whose subject no longer exists (erased meanwhile).
//!
//! - access, portability: the export (`export`), stored encrypted for
//!   [`DEFAULT_TTL_DAYS`] days.
//! - rectification: the corrections registered with the request. A field a
//!   school administrative system supplies keeps its correction until the
//!   source sends a value other than the one it sent before (see
//!   `pupil_corrections` in infra/migrations/0011_subject_requests.sql); the
//!   roster's answer names the corrections kept, so the source is told. The
//!   before and after values are in the audit log, encrypted under the
//!   subject's own key (`subject_keys`), which erasure deletes.
//! - erasure: [`tavle_core::erasure`]. A staff account is pseudonymised.
//! - restriction / restriction_lifted: the pupil's `restricted` flag, which
//!   hides them from every ordinary read and stops ingestion for them.
//! - objection: the controller's decision, `{"decision": "upheld" |
//!   "dismissed", "reason"}`; upheld restricts processing of a pupil's data
//!   as a restriction does (Art. 21(1): processing stops).
//!
//! The completion record of a rectification, erasure, restriction or its
//! lifting lists the sources that supplied the subject's data (Art. 19), so
//! the controller can inform them.

use crate::export::{self, DEFAULT_TTL_DAYS};
use crate::requests::{self, blind_index, closed, load_for_update, Correction, Kind, Status, Stored};
use crate::{Subject, BODY_LIMIT};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tavle_core::audit::{self, Event};
use tavle_core::auth::{authenticate_as, Principal, Role};
use tavle_core::crypto::{random_key, IdentityCipher};
use tavle_core::db::{transaction, uuid, Db, Value};
use tavle_core::erasure;
use tavle_core::scores::Date;
use tavle_core::subtests::check_text;
use tavle_core::vars::Variables;
use tavle_core::web::{path_id, read_json, Body, Checks, HttpResult, RequestMeta};
use tavle_core::Problem;

type Request = http::Request<Body>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FulfilBody {
    #[serde(default)]
    decision: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// An objection's decision, checked.
struct Decision {
    upheld: bool,
    reason: String,
}

fn parse_body(req: &Request) -> Result<FulfilBody, Problem> {
    if req.body().is_empty() {
        return Ok(FulfilBody::default());
    }
    read_json(req, BODY_LIMIT)
}

fn decision(kind: Kind, body: FulfilBody) -> Result<Option<Decision>, Problem> {
    let mut checks = Checks::default();
    let out = match kind {
        Kind::Objection => {
            let upheld = match body.decision.as_deref() {
                Some("upheld") => Some(true),
                Some("dismissed") => Some(false),
                _ => {
                    checks.fail("/decision", "an objection is fulfilled with the decision: upheld or dismissed");
                    None
                }
            };
            let reason = tavle_core::names::nfc(body.reason.unwrap_or_default().trim());
            check_text(&mut checks, "/reason", &reason, 2000);
            upheld.map(|upheld| Decision { upheld, reason })
        }
        _ => {
            if body.decision.is_some() || body.reason.is_some() {
                checks.fail("", "only an objection is fulfilled with a decision");
            }
            None
        }
    };
    checks.finish()?;
    Ok(out)
}

/// `POST /subject-requests/{id}/fulfil`; `today` dates the answer's `overdue`.
pub async fn fulfil(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
    today: Date,
) -> HttpResult {
    let id = path_id(id)?;
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let body = parse_body(req)?;
    // The kind decides what the body must hold: read it first (no lock;
    // kind and subject never change), so the body is checked before the
    // transaction.
    let first = db
        .query_opt(
            "SELECT kind, subject_kind, subject_id, status FROM subject_requests \
             WHERE tenant_id = $1::uuid AND id = $2::uuid",
            &[uuid(&who.tenant_id), uuid(&id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    let kind = Kind::parse(&first.text("kind")?).ok_or_else(Problem::internal)?;
    let decision = decision(kind, body)?;
    if first.text("status")? == Status::Completed.as_str() {
        // Fulfilled already: the same answer, no second effect.
        return requests::answer(db, &who, &id, today).await;
    }
    let index = blind_index(vars)?;
    let identity = identity_cipher(vars)?;
    let export = matches!(kind, Kind::Access | Kind::Portability);
    if export {
        // Housekeeping before the export: expired exports go (audited).
        export::delete_expired(db, Some(meta), &who.tenant_id).await?;
    }
    let exported_pupil =
        (export && first.text("subject_kind")? == "pupil").then(|| first.text("subject_id")).transpose()?;
    transaction(db, async |db| {
        if export {
            // One consistent picture for the whole export. Its access
            // record is the first statement: the snapshot is then taken
            // holding the record's lane, so no later append can conflict
            // with it (which REPEATABLE READ would answer with 40001).
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", &[]).await?;
            if let Some(p) = &exported_pupil {
                tavle_core::access_log::append(db, &who, meta, "subject_export.built", vec![p.clone()]).await?;
            }
        }
        let stored = load_for_update(db, &who, &id).await?;
        match stored.status {
            // Fulfilled already: the same answer, no second effect.
            Status::Completed => return requests::answer(db, &who, &id, today).await,
            Status::Rejected => return Err(closed(stored.status)),
            Status::Received | Status::InProgress => {}
        }
        let outcome = match stored.kind {
            Kind::Access | Kind::Portability => export_for(db, vars, &who, &stored, kind == Kind::Portability).await?,
            Kind::Rectification => rectify(db, meta, &who, &identity, &stored).await?,
            Kind::Erasure => erase(db, &who, &index, &stored).await?,
            Kind::Restriction => restrict(db, &who, &stored, true).await?,
            Kind::RestrictionLifted => restrict(db, &who, &stored, false).await?,
            Kind::Objection => object(db, &who, &stored, decision.as_ref().ok_or_else(Problem::internal)?).await?,
        };
        db.execute(
            "UPDATE subject_requests SET status = 'completed', outcome = $3::jsonb, completed_at = now(), \
                 updated_at = now(), decision = $4::text, decision_reason = $5::text \
             WHERE tenant_id = $1::uuid AND id = $2::uuid",
            &[
                uuid(&who.tenant_id),
                uuid(&id),
                Value::Json(outcome.clone()),
                decision.as_ref().map(|d| if d.upheld { "upheld" } else { "dismissed" }).into(),
                decision.as_ref().map(|d| d.reason.clone()).into(),
            ],
        )
        .await?;
        // The audit record carries counts, fields and source ids, never values.
        let mut details = outcome.clone();
        details["kind"] = json!(kind.as_str());
        details["subject_kind"] = json!(stored.subject.kind());
        details["subject_id"] = json!(stored.subject.id());
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "subject_request.completed").target("subject_request", &id).details(details),
        )
        .await?;
        requests::answer(db, &who, &id, today).await
    })
    .await
}

fn identity_cipher(vars: &impl Variables) -> Result<IdentityCipher, Problem> {
    IdentityCipher::from_config(&vars.require("identity_key")?, &vars.get("identity_previous_keys").unwrap_or_default())
        .map_err(|e| {
            eprintln!("error: configuration variable `identity_key`: {e}");
            Problem::internal()
        })
}

/// 409 when the subject of a request is gone (erased by another request or
/// by retention): nothing can be done for them any more.
fn subject_gone() -> Problem {
    Problem::conflict("the subject of this request no longer exists (erased); nothing was changed")
}

async fn subject_exists(db: &mut impl Db, who: &Principal, subject: &Subject) -> Result<bool, Problem> {
    let sql = match subject {
        Subject::Pupil(_) => "SELECT 1 AS one FROM pupils WHERE tenant_id = $1::uuid AND id = $2::uuid FOR UPDATE",
        Subject::User(_) => {
            "SELECT 1 AS one FROM users WHERE tenant_id = $1::uuid AND id = $2::uuid \
             AND username NOT LIKE 'erased-%' FOR UPDATE"
        }
    };
    Ok(db.query_opt(sql, &[uuid(&who.tenant_id), uuid(subject.id())]).await?.is_some())
}

async fn export_for(
    db: &mut impl Db,
    vars: &impl Variables,
    who: &Principal,
    stored: &Stored,
    portability: bool,
) -> Result<Json, Problem> {
    if !subject_exists(db, who, &stored.subject).await? {
        return Err(subject_gone());
    }
    let built = export::build(db, vars, &who.tenant_id, &stored.subject, portability).await?;
    let expires_at =
        export::store(db, vars, &who.tenant_id, &stored.id, &who.user_id, &built, DEFAULT_TTL_DAYS).await?;
    // Its access record (building it read all of the pupil's data) was the
    // transaction's first statement (see `fulfil`).
    let mut formats = vec!["json"];
    if built.csv.is_some() {
        formats.push("csv");
    }
    Ok(json!({"exports": formats, "expires_at": expires_at}))
}

/// The subject's key for their rectified values, created on first use.
async fn subject_key(
    db: &mut impl Db,
    identity: &IdentityCipher,
    tenant_id: &str,
    subject_id: &str,
) -> Result<IdentityCipher, Problem> {
    let row = db
        .query_opt(
            "SELECT key_enc FROM subject_keys WHERE tenant_id = $1::uuid AND subject_id = $2::uuid",
            &[uuid(tenant_id), uuid(subject_id)],
        )
        .await?;
    match row {
        Some(r) => unwrap_key(identity, tenant_id, subject_id, &r.bytes("key_enc")?),
        None => {
            let aad = format!("tavle subject key v1|{tenant_id}|{subject_id}");
            let key = random_key();
            db.execute(
                "INSERT INTO subject_keys (tenant_id, subject_id, key_enc) VALUES ($1::uuid, $2::uuid, $3::bytea)",
                &[uuid(tenant_id), uuid(subject_id), Value::Bytes(identity.encrypt(&key[..], aad.as_bytes()))],
            )
            .await?;
            Ok(IdentityCipher::from_key(&key))
        }
    }
}

/// The before and after values of a rectification, as the audit log keeps
/// them: base64 of AES-256-GCM under the subject's key, bound to the request.
pub fn seal_values(key: &IdentityCipher, request_id: &str, values: &Json) -> String {
    let aad = format!("tavle rectification v1|{request_id}");
    STANDARD.encode(key.encrypt(values.to_string().as_bytes(), aad.as_bytes()))
}

/// The before and after values sealed by [`seal_values`]; `None` if they
/// cannot be opened (the key was deleted at erasure: crypto-shredded).
pub fn open_values(key: &IdentityCipher, request_id: &str, sealed: &str) -> Option<Json> {
    let aad = format!("tavle rectification v1|{request_id}");
    let blob = STANDARD.decode(sealed).ok()?;
    serde_json::from_slice(&key.decrypt(&blob, aad.as_bytes()).ok()?).ok()
}

/// The before and after values of a completed rectification, as its audit
/// record holds them, for the privacy officer: `{field: {before, after}}`,
/// or `null` once the subject was erased (the key is gone).
pub(crate) async fn rectified_values(
    db: &mut impl Db,
    vars: &impl Variables,
    who: &Principal,
    subject_id: &str,
    request_id: &str,
) -> Result<Json, Problem> {
    let Some(row) = db
        .query_opt(
            "SELECT a.details->>'values_enc' AS sealed, k.key_enc FROM audit_log a \
             LEFT JOIN subject_keys k ON k.tenant_id = a.tenant_id AND k.subject_id = $2::uuid \
             WHERE a.tenant_id = $1::uuid AND a.action IN ('pupil.rectified', 'user.rectified') \
               AND a.target_id = $2::uuid::text AND a.details->>'request_id' = $3::uuid::text",
            &[uuid(&who.tenant_id), uuid(subject_id), uuid(request_id)],
        )
        .await?
    else {
        return Ok(Json::Null);
    };
    let (Some(sealed), false) = (row.opt_text("sealed")?, row.is_null("key_enc")?) else { return Ok(Json::Null) };
    let identity = identity_cipher(vars)?;
    let key = unwrap_key(&identity, &who.tenant_id, subject_id, &row.bytes("key_enc")?)?;
    Ok(open_values(&key, request_id, &sealed).unwrap_or(Json::Null))
}

fn unwrap_key(
    identity: &IdentityCipher,
    tenant_id: &str,
    subject_id: &str,
    key_enc: &[u8],
) -> Result<IdentityCipher, Problem> {
    let aad = format!("tavle subject key v1|{tenant_id}|{subject_id}");
    let raw = identity.decrypt(key_enc, aad.as_bytes()).map_err(|_| Problem::internal())?;
    let key: [u8; 32] = raw.as_slice().try_into().map_err(|_| Problem::internal())?;
    Ok(IdentityCipher::from_key(&key))
}

async fn rectify(
    db: &mut impl Db,
    meta: &RequestMeta,
    who: &Principal,
    identity: &IdentityCipher,
    stored: &Stored,
) -> Result<Json, Problem> {
    if !subject_exists(db, who, &stored.subject).await? {
        return Err(subject_gone());
    }
    let tenant = || uuid(&who.tenant_id);
    let subject = || uuid(stored.subject.id());
    let (table, select) = match stored.subject {
        Subject::Pupil(_) => ("pupils", "given_name, family_name, year_level::text AS year_level, gender"),
        Subject::User(_) => ("users", "display_name, email"),
    };
    let before = db
        .query_one(
            &format!("SELECT {select} FROM {table} WHERE tenant_id = $1::uuid AND id = $2::uuid"),
            &[tenant(), subject()],
        )
        .await?;
    let mut changes = serde_json::Map::new();
    let fields: &[&'static str] =
        if matches!(stored.subject, Subject::Pupil(_)) { &requests::PUPIL_FIELDS } else { &requests::USER_FIELDS };
    for Correction { field, value } in &stored.corrections {
        // Checked again here: the name goes into the statement's text.
        let field: &'static str = fields.iter().copied().find(|f| f == field).ok_or_else(Problem::internal)?;
        let old = before.opt_text(field)?;
        changes.insert(field.to_owned(), json!({"before": old, "after": value}));
        // The field names are the validated, fixed list (`requests::PUPIL_FIELDS`, `USER_FIELDS`).
        let cast = if field == "year_level" { "::int" } else { "" };
        db.execute(
            &format!(
                "UPDATE {table} SET {field} = $3::text{cast}, updated_at = now() \
                 WHERE tenant_id = $1::uuid AND id = $2::uuid"
            ),
            &[tenant(), subject(), value.clone().into()],
        )
        .await?;
        if matches!(stored.subject, Subject::Pupil(_)) {
            // The value the school system sent stays the one to compare a
            // later roster with, however often the field is corrected.
            db.execute(
                "INSERT INTO pupil_corrections (tenant_id, pupil_id, field, source_value, request_id) \
                 VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::uuid) \
                 ON CONFLICT (pupil_id, field) DO UPDATE SET request_id = EXCLUDED.request_id, corrected_at = now()",
                &[tenant(), subject(), field.into(), old.into(), uuid(&stored.id)],
            )
            .await?;
        }
    }
    let key = subject_key(db, identity, &who.tenant_id, stored.subject.id()).await?;
    let fields: Vec<&str> = stored.corrections.iter().map(|c| c.field.as_str()).collect();
    let target_kind = stored.subject.kind();
    audit::record(
        db,
        Some(meta),
        Event::by(who, if target_kind == "pupil" { "pupil.rectified" } else { "user.rectified" })
            .target(target_kind, stored.subject.id())
            .details(json!({
                "request_id": stored.id,
                "fields": fields,
                "values_enc": seal_values(&key, &stored.id, &Json::Object(changes)),
            })),
    )
    .await?;
    let recipients = match &stored.subject {
        Subject::Pupil(p) => erasure::pupil_sources(db, &who.tenant_id, p).await?,
        Subject::User(_) => json!([]),
    };
    Ok(json!({"fields": fields, "recipients": recipients}))
}

async fn erase(
    db: &mut impl Db,
    who: &Principal,
    index: &tavle_core::crypto::BlindIndex,
    stored: &Stored,
) -> Result<Json, Problem> {
    match &stored.subject {
        Subject::Pupil(p) => {
            let erased = erasure::erase_pupil(db, &who.tenant_id, p, erasure::Reason::Request(index))
                .await?
                .ok_or_else(subject_gone)?;
            Ok(json!({
                "results_anonymised": erased.results_anonymised,
                "memberships_removed": erased.memberships_removed,
                "recipients": erased.sources,
            }))
        }
        Subject::User(u) => {
            let done = erasure::pseudonymise_user(db, &who.tenant_id, u).await?.ok_or_else(subject_gone)?;
            let mut out = done;
            out["pseudonymised"] = json!(true);
            out["recipients"] = json!([]);
            Ok(out)
        }
    }
}

async fn set_restricted(db: &mut impl Db, who: &Principal, pupil: &str, restricted: bool) -> Result<u64, Problem> {
    Ok(db
        .execute(
            "UPDATE pupils SET restricted = $3::bool, updated_at = now() \
             WHERE tenant_id = $1::uuid AND id = $2::uuid AND restricted <> $3::bool",
            &[uuid(&who.tenant_id), uuid(pupil), restricted.into()],
        )
        .await?)
}

async fn restrict(db: &mut impl Db, who: &Principal, stored: &Stored, restricted: bool) -> Result<Json, Problem> {
    let Subject::Pupil(p) = &stored.subject else { return Err(Problem::internal()) };
    if !subject_exists(db, who, &stored.subject).await? {
        return Err(subject_gone());
    }
    let changed = set_restricted(db, who, p, restricted).await?;
    Ok(json!({
        "restricted": restricted,
        "changed": changed == 1,
        "recipients": erasure::pupil_sources(db, &who.tenant_id, p).await?,
    }))
}

async fn object(db: &mut impl Db, who: &Principal, stored: &Stored, decision: &Decision) -> Result<Json, Problem> {
    if !subject_exists(db, who, &stored.subject).await? {
        return Err(subject_gone());
    }
    let mut out = json!({"decision": if decision.upheld { "upheld" } else { "dismissed" }});
    if let (true, Subject::Pupil(p)) = (decision.upheld, &stored.subject) {
        let changed = set_restricted(db, who, p, true).await?;
        out["restricted"] = json!(true);
        out["changed"] = json!(changed == 1);
        out["recipients"] = erasure::pupil_sources(db, &who.tenant_id, p).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rectified_values_open_only_with_their_key_and_request() {
        let key = IdentityCipher::from_key(&[7; 32]);
        let values = json!({"given_name": {"before": "Åse", "after": "Åsa"}});
        let sealed = seal_values(&key, "r-1", &values);
        assert!(!sealed.contains("Åse"));
        assert_eq!(open_values(&key, "r-1", &sealed), Some(values));
        assert_eq!(open_values(&key, "r-2", &sealed), None, "bound to its request");
        assert_eq!(open_values(&IdentityCipher::from_key(&[8; 32]), "r-1", &sealed), None, "another key");
    }
}
