//! Requests: registration, lifecycle (received → in progress → completed or
//! rejected), due dates, lists and history. Privacy officers only.
//!
//! A request is due one calendar month after receipt (Art. 12(3)); it may be
//! extended once, by one or two further months, with a reason. Every step is
//! an audit record targeting the request (`subject_request`); its details
//! carry kinds, statuses and dates, never free text, names or numbers.
//!
//! A response naming a pupil as a subject discloses that the pupil (or their
//! guardian) exercised a right: lists and views write an access record for
//! the pupils they name, as every read of pupil data does.

use crate::{Subject, BODY_LIMIT};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tavle_core::access_log::logged_read_naming;
use tavle_core::audit::{self, Event};
use tavle_core::auth::{authenticate_as, Principal, Role};
use tavle_core::crypto::BlindIndex;
use tavle_core::cursor::CursorKey;
use tavle_core::db::{transaction, uuid, Db, Row, Value};
use tavle_core::identity::{IdentityNumber, SyntheticPolicy};
use tavle_core::names;
use tavle_core::scores::{parse_date, Date};
use tavle_core::subtests::check_text;
use tavle_core::vars::Variables;
use tavle_core::web::{
    self, json, open_cursor, page_limit, path_id, query_param, read_json, Body, Checks, HttpResult, RequestMeta,
};
use tavle_core::Problem;

type Request = http::Request<Body>;

/// The rights a request exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Access,
    Rectification,
    Erasure,
    Restriction,
    RestrictionLifted,
    Portability,
    Objection,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Access,
        Kind::Rectification,
        Kind::Erasure,
        Kind::Restriction,
        Kind::RestrictionLifted,
        Kind::Portability,
        Kind::Objection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Rectification => "rectification",
            Kind::Erasure => "erasure",
            Kind::Restriction => "restriction",
            Kind::RestrictionLifted => "restriction_lifted",
            Kind::Portability => "portability",
            Kind::Objection => "objection",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Restriction hides a pupil from reads and ingestion; a staff account
    /// has no such state (the tenant admin deactivates it).
    fn applies_to(self, subject_kind: &str) -> bool {
        subject_kind == "pupil" || !matches!(self, Kind::Restriction | Kind::RestrictionLifted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Received,
    InProgress,
    Completed,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [Status::Received, Status::InProgress, Status::Completed, Status::Rejected]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        matches!(self, Status::Received | Status::InProgress)
    }
}

/// Fields a rectification may correct, per subject kind.
pub const PUPIL_FIELDS: [&str; 4] = ["given_name", "family_name", "year_level", "gender"];
pub const USER_FIELDS: [&str; 2] = ["display_name", "email"];
const GENDERS: [&str; 4] = ["female", "male", "other", "unknown"];

/// A correction in its stored form: a known field and a valid value (text;
/// `year_level` as digits).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Correction {
    pub field: String,
    pub value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRequest {
    kind: String,
    subject: SubjectRef,
    #[serde(default)]
    received_on: Option<String>,
    identity_verification: String,
    #[serde(default)]
    corrections: Option<Vec<CorrectionIn>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectRef {
    #[serde(default)]
    pupil_id: Option<String>,
    #[serde(default)]
    identity_number: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorrectionIn {
    field: String,
    value: Json,
}

/// Who the request names, as the body gave it, checked for form.
#[derive(Debug)]
enum Named {
    Pupil(String),
    PupilByNumber(IdentityNumber),
    User(String),
}

/// A registration checked in full, before any database work.
#[derive(Debug)]
struct ValidRequest {
    kind: Kind,
    named: Named,
    received_on: Date,
    identity_verification: String,
    corrections: Option<Vec<Correction>>,
}

fn validate(body: NewRequest, today: Date, synthetic: SyntheticPolicy) -> Result<ValidRequest, Problem> {
    let mut checks = Checks::default();
    let kind = Kind::parse(&body.kind);
    if kind.is_none() {
        checks.fail(
            "/kind",
            "must be access, rectification, erasure, restriction, restriction_lifted, portability or objection",
        );
    }
    let id_of = |checks: &mut Checks, ptr: &str, v: &str| match uuid::Uuid::parse_str(v) {
        Ok(u) => Some(u.to_string()),
        Err(_) => {
            checks.fail(ptr, "must be a uuid");
            None
        }
    };
    let s = &body.subject;
    let named = match (&s.pupil_id, &s.identity_number, &s.user_id) {
        (Some(p), None, None) => id_of(&mut checks, "/subject/pupil_id", p).map(Named::Pupil),
        (None, Some(n), None) => match IdentityNumber::parse(n, synthetic) {
            Ok(n) => Some(Named::PupilByNumber(n)),
            Err(e) => {
                checks.fail("/subject/identity_number", e.to_string());
                None
            }
        },
        (None, None, Some(u)) => id_of(&mut checks, "/subject/user_id", u).map(Named::User),
        _ => {
            checks.fail("/subject", "give exactly one of pupil_id, identity_number, user_id");
            None
        }
    };
    let subject_kind = match &named {
        Some(Named::User(_)) => "user",
        _ => "pupil",
    };
    if let (Some(k), Some(_)) = (kind, &named) {
        if !k.applies_to(subject_kind) {
            checks.fail("/kind", "restriction applies to pupils; a staff account is deactivated by a tenant admin");
        }
    }
    let received_on = match body.received_on.as_deref() {
        None => Some(today),
        Some(d) => match parse_date(d) {
            Some(d) if d <= today && (today - d).whole_days() <= 366 => Some(d),
            _ => {
                checks.fail("/received_on", "must be a date (YYYY-MM-DD), not in the future, within the last year");
                None
            }
        },
    };
    // Free text in NFC, as names are: erasure finds the subject's names in it.
    let verification = names::nfc(body.identity_verification.trim());
    check_text(&mut checks, "/identity_verification", &verification, 2000);
    let corrections = match (kind, body.corrections) {
        (Some(Kind::Rectification), Some(list)) => Some(validate_corrections(&mut checks, subject_kind, list)),
        (Some(Kind::Rectification), None) => {
            checks.fail("/corrections", "a rectification names the corrections: [{field, value}]");
            None
        }
        (_, Some(_)) => {
            checks.fail("/corrections", "only a rectification carries corrections");
            None
        }
        (_, None) => None,
    };
    checks.finish()?;
    match (kind, named, received_on) {
        (Some(kind), Some(named), Some(received_on)) => {
            Ok(ValidRequest { kind, named, received_on, identity_verification: verification, corrections })
        }
        // Every None above failed a check.
        _ => Err(Problem::internal()),
    }
}

fn validate_corrections(checks: &mut Checks, subject_kind: &str, list: Vec<CorrectionIn>) -> Vec<Correction> {
    let fields: &[&str] = if subject_kind == "pupil" { &PUPIL_FIELDS } else { &USER_FIELDS };
    if list.is_empty() || list.len() > fields.len() {
        checks.fail("/corrections", format!("one to {} corrections", fields.len()));
    }
    let mut out: Vec<Correction> = Vec::new();
    for (i, c) in list.into_iter().enumerate() {
        let ptr = format!("/corrections/{i}");
        if !fields.contains(&c.field.as_str()) {
            checks.fail(&format!("{ptr}/field"), format!("must be one of {}", fields.join(", ")));
            continue;
        }
        if out.iter().any(|o| o.field == c.field) {
            checks.fail(&format!("{ptr}/field"), "corrected twice");
            continue;
        }
        let vptr = format!("{ptr}/value");
        let value = match (c.field.as_str(), &c.value) {
            ("given_name" | "family_name" | "display_name", Json::String(s)) => {
                let v = names::nfc(s.trim());
                check_text(checks, &vptr, &v, 200);
                Some(v)
            }
            ("year_level", Json::Number(n)) if n.as_i64().is_some_and(|y| (1..=13).contains(&y)) => Some(n.to_string()),
            ("year_level", Json::Null) | ("gender", Json::Null) | ("email", Json::Null) => None,
            ("gender", Json::String(g)) if GENDERS.contains(&g.as_str()) => Some(g.clone()),
            ("email", Json::String(e)) if valid_email(e.trim()) => Some(e.trim().to_owned()),
            (f, _) => {
                let what = match f {
                    "year_level" => "must be from 1 to 13, or null",
                    "gender" => "must be female, male, other, unknown, or null",
                    "email" => "must be an e-mail address, or null",
                    _ => "must be a name (text)",
                };
                checks.fail(&vptr, what);
                continue;
            }
        };
        out.push(Correction { field: c.field, value });
    }
    out
}

fn valid_email(e: &str) -> bool {
    let parts: Vec<&str> = e.split('@').collect();
    e.len() <= 254
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `date` plus `months` calendar months; the day is clipped to the month's
/// last (31 January + 1 month = 28 or 29 February).
pub fn add_months(date: Date, months: u8) -> Date {
    let zero_based = date.month() as i32 - 1 + i32::from(months);
    let year = date.year() + zero_based.div_euclid(12);
    let month = time::Month::try_from((zero_based.rem_euclid(12) + 1) as u8).expect("1..=12");
    let day = date.day().min(time::util::days_in_month(month, year));
    Date::from_calendar_date(year, month, day).expect("a clipped day exists")
}

fn iso(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// This component's cursor key, derived from `blind_index_key`.
fn cursor_key(vars: &impl Variables) -> Result<CursorKey, Problem> {
    CursorKey::from_var(vars, "blind_index_key")
}

pub(crate) fn blind_index(vars: &impl Variables) -> Result<BlindIndex, Problem> {
    BlindIndex::from_config(&vars.require("blind_index_key")?).map_err(|e| {
        eprintln!("error: configuration variable `blind_index_key`: {e}");
        Problem::internal()
    })
}

/// The columns of a request as answered (see [`view`]). `pupil_ref` names
/// the pupil for the access record (NULL for a staff subject).
pub(crate) const REQUEST_COLUMNS: &str = "r.id, r.kind, r.subject_kind, r.subject_id, r.status, \
     r.received_on::text AS received_on, r.due_on::text AS due_on, r.extended_months, r.extension_reason, \
     r.identity_verification, r.corrections, r.registered_by, r.rejection_reason, r.decision, r.decision_reason, \
     r.outcome, rfc3339(r.created_at) AS created_at, rfc3339(r.updated_at) AS updated_at, \
     rfc3339(r.completed_at) AS completed_at, \
     CASE WHEN r.subject_kind = 'pupil' THEN r.subject_id END AS pupil_ref";

fn view(r: &Row, today: Date) -> Result<Json, Problem> {
    let status = r.text("status")?;
    let due_on = r.text("due_on")?;
    let overdue = Status::parse(&status).is_some_and(Status::is_open) && due_on < iso(today);
    Ok(json!({
        "id": r.text("id")?,
        "kind": r.text("kind")?,
        "subject": {"kind": r.text("subject_kind")?, "id": r.text("subject_id")?},
        "status": status,
        "received_on": r.text("received_on")?,
        "due_on": due_on,
        "overdue": overdue,
        "extension": match r.opt_int("extended_months")? {
            Some(m) => json!({"months": m, "reason": r.opt_text("extension_reason")?}),
            None => Json::Null,
        },
        "identity_verification": r.text("identity_verification")?,
        "corrections": if r.is_null("corrections")? { Json::Null } else { r.json("corrections")? },
        "registered_by": r.text("registered_by")?,
        "rejection_reason": r.opt_text("rejection_reason")?,
        "decision": match r.opt_text("decision")? {
            Some(d) => json!({"decision": d, "reason": r.opt_text("decision_reason")?}),
            None => Json::Null,
        },
        "outcome": if r.is_null("outcome")? { Json::Null } else { r.json("outcome")? },
        "created_at": r.text("created_at")?,
        "updated_at": r.text("updated_at")?,
        "completed_at": r.opt_text("completed_at")?,
    }))
}

/// `POST /subject-requests`.
pub async fn register(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    today: Date,
) -> HttpResult {
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let body: NewRequest = read_json(req, BODY_LIMIT)?;
    let valid = validate(body, today, SyntheticPolicy::from_vars(vars)?)?;
    let index = match &valid.named {
        Named::PupilByNumber(n) => Some(blind_index(vars)?.index(&who.tenant_id, n)),
        _ => None,
    };
    let due_on = add_months(valid.received_on, 1);
    let row = transaction(db, async |db| {
        let (subject, searched) = resolve(db, &who, &valid.named, index.as_deref()).await?;
        if let Some(hit) = searched {
            // A lookup by identity number is a search like any other: the
            // privacy officer's list of searches shows it (never the number).
            audit::record(
                db,
                Some(meta),
                Event::by(&who, "pupil.searched")
                    .target("pupil", subject.id())
                    .details(json!({"hit": hit, "pupil_id": subject.id(), "via": "subject_request"})),
            )
            .await?;
        }
        let corrections = valid.corrections.as_ref().map(|c| serde_json::to_value(c).unwrap_or_default());
        let sql = format!(
            "WITH r AS (INSERT INTO subject_requests (tenant_id, kind, subject_kind, subject_id, received_on, due_on, \
                 identity_verification, corrections, registered_by) \
             VALUES ($1::uuid, $2::text, $3::text, $4::uuid, $5::text::date, $6::text::date, $7::text, $8::jsonb, $9::uuid) \
             RETURNING *) SELECT {REQUEST_COLUMNS} FROM r"
        );
        let row = db
            .query_one(
                &sql,
                &[
                    uuid(&who.tenant_id),
                    valid.kind.as_str().into(),
                    subject.kind().into(),
                    uuid(subject.id()),
                    iso(valid.received_on).into(),
                    iso(due_on).into(),
                    valid.identity_verification.clone().into(),
                    corrections.map(Value::Json).unwrap_or(Value::Null),
                    uuid(&who.user_id),
                ],
            )
            .await?;
        let id = row.text("id")?;
        audit::record(
            db,
            Some(meta),
            Event::by(&who, "subject_request.registered").target("subject_request", &id).details(json!({
                "kind": valid.kind.as_str(),
                "subject_kind": subject.kind(),
                "subject_id": subject.id(),
                "received_on": iso(valid.received_on),
                "due_on": iso(due_on),
                "fields": valid.corrections.as_ref().map(|c| c.iter().map(|c| c.field.clone()).collect::<Vec<_>>()),
            })),
        )
        .await?;
        if let Subject::Pupil(p) = &subject {
            tavle_core::access_log::append(db, &who, meta, "subject_request.registered", vec![p.clone()]).await?;
        }
        Ok::<_, Problem>(row)
    })
    .await;
    let row = match row {
        Ok(row) => row,
        Err(p) if p.status == StatusCode::NOT_FOUND && index.is_some() => {
            // The miss is recorded too (probing for a child must leave a
            // trace), after the rolled-back registration.
            audit::record(
                db,
                Some(meta),
                Event::by(&who, "pupil.searched")
                    .details(json!({"hit": false, "pupil_id": null, "via": "subject_request"})),
            )
            .await?;
            return Err(p);
        }
        Err(p) => return Err(p),
    };
    json(StatusCode::CREATED, &view(&row, today)?)
}

/// The subject the body names, in the caller's tenant (404 otherwise), and
/// whether it was looked up by identity number.
async fn resolve(
    db: &mut impl Db,
    who: &Principal,
    named: &Named,
    index: Option<&[u8]>,
) -> Result<(Subject, Option<bool>), Problem> {
    let tenant = uuid(&who.tenant_id);
    let (sql, key, by_number) = match named {
        Named::Pupil(id) => ("SELECT id FROM pupils WHERE tenant_id = $1::uuid AND id = $2::uuid", uuid(id), false),
        Named::PupilByNumber(_) => (
            "SELECT id FROM pupils WHERE tenant_id = $1::uuid AND identity_index = $2::bytea",
            Value::Bytes(index.ok_or_else(Problem::internal)?.to_vec()),
            true,
        ),
        Named::User(id) => (
            "SELECT id FROM users WHERE tenant_id = $1::uuid AND id = $2::uuid AND username NOT LIKE 'erased-%'",
            uuid(id),
            false,
        ),
    };
    let row = db.query_opt(&format!("{sql} FOR SHARE"), &[tenant, key]).await?.ok_or_else(Problem::not_found)?;
    let id = row.text("id")?;
    let subject = if matches!(named, Named::User(_)) { Subject::User(id) } else { Subject::Pupil(id) };
    Ok((subject, by_number.then_some(true)))
}

#[derive(Deserialize)]
struct ListPosition {
    r: String,
    id: String,
}

/// `GET /subject-requests?status&kind&subject_id&overdue&limit&cursor`,
/// newest received first.
pub async fn list(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    today: Date,
) -> HttpResult {
    let limit = page_limit(req)?;
    let mut checks = Checks::default();
    let status = query_param(req, "status")?;
    if status.as_deref().is_some_and(|s| Status::parse(s).is_none()) {
        checks.fail("/query/status", "must be received, in_progress, completed or rejected");
    }
    let kind = query_param(req, "kind")?;
    if kind.as_deref().is_some_and(|k| Kind::parse(k).is_none()) {
        checks.fail("/query/kind", "not a kind of request");
    }
    let subject = query_param(req, "subject_id")?;
    let subject = match subject.as_deref().map(uuid::Uuid::parse_str) {
        None => None,
        Some(Ok(u)) => Some(u.to_string()),
        Some(Err(_)) => {
            checks.fail("/query/subject_id", "must be a uuid");
            None
        }
    };
    let overdue = match query_param(req, "overdue")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            checks.fail("/query/overdue", "must be true or false");
            false
        }
    };
    let cursor = web::cursor_param(req)?;
    if !checks.0.is_empty() {
        return Err(Problem::bad_query(checks.0));
    }
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let overdue_text = overdue.to_string();
    let cursors = cursor_key(vars)?
        .bind("subject_requests.list", &who)
        .filter("status", status.as_deref())
        .filter("kind", kind.as_deref())
        .filter("subject_id", subject.as_deref())
        .filter("overdue", Some(&overdue_text));
    let after: Option<ListPosition> = open_cursor(&cursors, cursor.as_ref())?;
    if after.as_ref().is_some_and(|a| parse_date(&a.r).is_none() || uuid::Uuid::parse_str(&a.id).is_err()) {
        return Err(web::malformed_cursor());
    }
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM subject_requests r \
         WHERE r.tenant_id = $1::uuid AND ($2::text IS NULL OR r.status = $2::text) \
           AND ($3::text IS NULL OR r.kind = $3::text) AND ($4::uuid IS NULL OR r.subject_id = $4::uuid) \
           AND (NOT $5::bool OR (r.status IN ('received', 'in_progress') AND r.due_on < $6::text::date)) \
           AND ($7::text IS NULL OR (r.received_on, r.id) < ($7::text::date, $8::uuid)) \
         ORDER BY r.received_on DESC, r.id DESC LIMIT $9::int8"
    );
    let params = vec![
        uuid(&who.tenant_id),
        status.clone().into(),
        kind.clone().into(),
        subject.clone().map(uuid).unwrap_or(Value::Null),
        overdue.into(),
        iso(today).into(),
        after.as_ref().map(|a| Value::from(a.r.clone())).unwrap_or(Value::Null),
        after.as_ref().map(|a| uuid(&a.id)).unwrap_or(Value::Null),
        (limit + 1).into(),
    ];
    let mut rows = logged_read_naming(db, &who, meta, "subject_requests.listed", &sql, "pupil_ref", params).await?;
    rows.sort_by(|a, b| {
        let key = |r: &Row| (r.text("received_on").unwrap_or_default(), r.text("id").unwrap_or_default());
        key(b).cmp(&key(a))
    });
    web::page(
        &rows,
        limit,
        &cursors,
        |r| view(r, today),
        |r| Ok(json!({"r": r.text("received_on")?, "id": r.text("id")?})),
    )
}

/// `GET /subject-requests/{id}`: the request, its subject as held now, its
/// exports and its history (the audit records that target it).
pub async fn show(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
    today: Date,
) -> HttpResult {
    let id = path_id(id)?;
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let sql = format!(
        "SELECT {REQUEST_COLUMNS}, p.given_name, p.family_name, p.school_id, u.display_name AS user_name, \
                (r.subject_kind = 'pupil' AND p.id IS NULL) \
                    OR (r.subject_kind = 'user' AND (u.id IS NULL OR u.username LIKE 'erased-%')) AS gone, \
                (SELECT coalesce(jsonb_agg(jsonb_build_object('format', e.format, 'bytes', e.bytes, \
                     'expires_at', rfc3339(e.expires_at)) ORDER BY e.format), '[]'::jsonb) \
                   FROM subject_exports e WHERE e.request_id = r.id AND e.expires_at > now()) AS exports, \
                (SELECT coalesce(jsonb_agg(jsonb_build_object('at', rfc3339(a.at), 'action', a.action, \
                     'actor_user_id', a.actor_user_id, 'actor', coalesce(au.display_name, a.actor), \
                     'details', a.details) ORDER BY a.id), '[]'::jsonb) \
                   FROM audit_log a LEFT JOIN users au ON au.id = a.actor_user_id \
                  WHERE a.tenant_id = r.tenant_id AND a.target_kind = 'subject_request' \
                    AND a.target_id = r.id::text) AS history \
         FROM subject_requests r \
         LEFT JOIN pupils p ON r.subject_kind = 'pupil' AND p.tenant_id = r.tenant_id AND p.id = r.subject_id \
         LEFT JOIN users u ON r.subject_kind = 'user' AND u.tenant_id = r.tenant_id AND u.id = r.subject_id \
         WHERE r.tenant_id = $1::uuid AND r.id = $2::uuid"
    );
    let rows = logged_read_naming(
        db,
        &who,
        meta,
        "subject_request.viewed",
        &sql,
        "pupil_ref",
        vec![uuid(&who.tenant_id), uuid(&id)],
    )
    .await?;
    let row = rows.first().ok_or_else(Problem::not_found)?;
    let mut answer = view(row, today)?;
    answer["subject"]["erased"] = json!(row.bool("gone")?);
    if row.text("subject_kind")? == "pupil" {
        answer["subject"]["given_name"] = json!(row.opt_text("given_name")?);
        answer["subject"]["family_name"] = json!(row.opt_text("family_name")?);
        answer["subject"]["school_id"] = json!(row.opt_text("school_id")?);
    } else {
        answer["subject"]["display_name"] = json!(row.opt_text("user_name")?);
    }
    answer["exports"] = row.json("exports")?;
    answer["history"] = row.json("history")?;
    if row.text("kind")? == Kind::Rectification.as_str() && row.text("status")? == Status::Completed.as_str() {
        // Null once the subject is erased: their key is gone.
        answer["rectified_values"] =
            crate::fulfil::rectified_values(db, vars, &who, &row.text("subject_id")?, &id).await?;
    }
    json(StatusCode::OK, &answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extension {
    months: i64,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rejection {
    reason: String,
}

/// What a lifecycle step asks for, checked before the transaction.
enum Step {
    Start,
    Extend { months: u8, reason: String },
    Reject { reason: String },
}

fn parse_step(req: &Request, step: &str) -> Result<Step, Problem> {
    let mut checks = Checks::default();
    let parsed = match step {
        "start" => Step::Start,
        "extend" => {
            let e: Extension = read_json(req, BODY_LIMIT)?;
            if !(1..=2).contains(&e.months) {
                checks.fail("/months", "an extension is one or two further months (Art. 12(3))");
            }
            let reason = names::nfc(e.reason.trim());
            check_text(&mut checks, "/reason", &reason, 2000);
            Step::Extend { months: e.months.clamp(1, 2) as u8, reason }
        }
        "reject" => {
            let r: Rejection = read_json(req, BODY_LIMIT)?;
            let reason = names::nfc(r.reason.trim());
            check_text(&mut checks, "/reason", &reason, 2000);
            Step::Reject { reason }
        }
        _ => return Err(Problem::not_found()),
    };
    checks.finish()?;
    Ok(parsed)
}

/// A request as fulfilment and the lifecycle steps need it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub id: String,
    pub kind: Kind,
    pub subject: Subject,
    pub status: Status,
    pub received_on: Date,
    pub due_on: Date,
    pub extended: bool,
    pub corrections: Vec<Correction>,
}

/// The caller's tenant's request `id`, locked for the step (404 otherwise).
pub(crate) async fn load_for_update(db: &mut impl Db, who: &Principal, id: &str) -> Result<Stored, Problem> {
    let row = db
        .query_opt(
            "SELECT id, kind, subject_kind, subject_id, status, received_on::text AS received_on, \
                    due_on::text AS due_on, extended_months, corrections FROM subject_requests \
             WHERE tenant_id = $1::uuid AND id = $2::uuid FOR UPDATE",
            &[uuid(&who.tenant_id), uuid(id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    let subject_id = row.text("subject_id")?;
    let corrections = if row.is_null("corrections")? {
        Vec::new()
    } else {
        serde_json::from_value(row.json("corrections")?).map_err(|_| Problem::internal())?
    };
    Ok(Stored {
        id: row.text("id")?,
        kind: Kind::parse(&row.text("kind")?).ok_or_else(Problem::internal)?,
        subject: match row.text("subject_kind")?.as_str() {
            "pupil" => Subject::Pupil(subject_id),
            _ => Subject::User(subject_id),
        },
        status: Status::parse(&row.text("status")?).ok_or_else(Problem::internal)?,
        received_on: parse_date(&row.text("received_on")?).ok_or_else(Problem::internal)?,
        due_on: parse_date(&row.text("due_on")?).ok_or_else(Problem::internal)?,
        extended: !row.is_null("extended_months")?,
        corrections,
    })
}

/// The request as answered after a change (no access record: the caller
/// already wrote the step's).
pub(crate) async fn answer(db: &mut impl Db, who: &Principal, id: &str, today: Date) -> HttpResult {
    let sql =
        format!("SELECT {REQUEST_COLUMNS} FROM subject_requests r WHERE r.tenant_id = $1::uuid AND r.id = $2::uuid");
    let row = db.query_one(&sql, &[uuid(&who.tenant_id), uuid(id)]).await?;
    json(StatusCode::OK, &view(&row, today)?)
}

/// `POST /subject-requests/{id}/start|extend|reject`.
pub async fn step(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
    step: &str,
    today: Date,
) -> HttpResult {
    let id = path_id(id)?;
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let step = parse_step(req, step)?;
    transaction(db, async |db| {
        let stored = load_for_update(db, &who, &id).await?;
        let tenant = uuid(&who.tenant_id);
        let (action, details) = match &step {
            Step::Start => match stored.status {
                // Starting twice changes nothing.
                Status::InProgress => return answer(db, &who, &id, today).await,
                Status::Received => {
                    db.execute(
                        "UPDATE subject_requests SET status = 'in_progress', updated_at = now() \
                         WHERE tenant_id = $1::uuid AND id = $2::uuid",
                        &[tenant, uuid(&id)],
                    )
                    .await?;
                    ("subject_request.started", json!({"status": "in_progress"}))
                }
                _ => return Err(closed(stored.status)),
            },
            Step::Extend { months, reason } => {
                if !stored.status.is_open() {
                    return Err(closed(stored.status));
                }
                if stored.extended {
                    return Err(Problem::conflict("this request was already extended; it can be extended only once"));
                }
                if today > stored.due_on {
                    // Art. 12(3): the subject is told of an extension within
                    // the month; an overdue request cannot be extended after the fact.
                    return Err(Problem::conflict("the request is overdue; an extension is decided within its month"));
                }
                let due = add_months(stored.received_on, 1 + months);
                db.execute(
                    "UPDATE subject_requests SET extended_months = $3::int8::int, extension_reason = $4::text, \
                         due_on = $5::text::date, updated_at = now() WHERE tenant_id = $1::uuid AND id = $2::uuid",
                    &[tenant, uuid(&id), i64::from(*months).into(), reason.clone().into(), iso(due).into()],
                )
                .await?;
                ("subject_request.extended", json!({"months": months, "due_on": iso(due)}))
            }
            Step::Reject { reason } => {
                if !stored.status.is_open() {
                    return Err(closed(stored.status));
                }
                db.execute(
                    "UPDATE subject_requests SET status = 'rejected', rejection_reason = $3::text, \
                         completed_at = now(), updated_at = now() WHERE tenant_id = $1::uuid AND id = $2::uuid",
                    &[tenant, uuid(&id), reason.clone().into()],
                )
                .await?;
                ("subject_request.rejected", json!({"status": "rejected"}))
            }
        };
        audit::record(db, Some(meta), Event::by(&who, action).target("subject_request", &id).details(details)).await?;
        answer(db, &who, &id, today).await
    })
    .await
}

/// 409 for a step on a request that is no longer open.
pub(crate) fn closed(status: Status) -> Problem {
    Problem::conflict(format!("the request is {}; it can no longer change", status.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn due_dates_are_calendar_months_clipped_to_the_month_end() {
        assert_eq!(add_months(date!(2026 - 01 - 31), 1), date!(2026 - 02 - 28));
        assert_eq!(add_months(date!(2028 - 01 - 31), 1), date!(2028 - 02 - 29));
        assert_eq!(add_months(date!(2026 - 11 - 15), 1), date!(2026 - 12 - 15));
        assert_eq!(add_months(date!(2026 - 12 - 15), 1), date!(2027 - 01 - 15));
        assert_eq!(add_months(date!(2026 - 11 - 30), 3), date!(2027 - 02 - 28));
        assert_eq!(add_months(date!(2026 - 03 - 31), 1), date!(2026 - 04 - 30));
    }

    fn body(v: Json) -> NewRequest {
        serde_json::from_value(v).unwrap()
    }

    fn pointers(p: &Problem) -> Vec<String> {
        p.to_json(None)["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn registrations_are_checked_in_full() {
        let today = date!(2026 - 12 - 01);
        let pupil = "9f0c6c1e-5a8e-4a49-8c59-3cb9f2b1a001";
        let ok = validate(
            body(json!({"kind": "erasure", "subject": {"pupil_id": pupil}, "identity_verification": " ID card "})),
            today,
            SyntheticPolicy::Accept,
        )
        .unwrap();
        assert_eq!((ok.kind, ok.received_on, ok.identity_verification.as_str()), (Kind::Erasure, today, "ID card"));
        let bad = validate(
            body(json!({"kind": "forget", "subject": {"pupil_id": pupil, "user_id": pupil},
                        "received_on": "2026-12-02", "identity_verification": " "})),
            today,
            SyntheticPolicy::Accept,
        )
        .unwrap_err();
        assert_eq!(pointers(&bad), ["/kind", "/subject", "/received_on", "/identity_verification"]);
        let bad = validate(
            body(json!({"kind": "restriction", "subject": {"user_id": pupil}, "identity_verification": "x",
                        "corrections": []})),
            today,
            SyntheticPolicy::Accept,
        )
        .unwrap_err();
        assert_eq!(pointers(&bad), ["/kind", "/corrections"]);
        let bad = validate(
            body(json!({"kind": "rectification", "subject": {"pupil_id": pupil}, "identity_verification": "x",
                        "corrections": [{"field": "year_level", "value": 14}, {"field": "gender", "value": "f"},
                                        {"field": "email", "value": "a@b.no"}, {"field": "given_name", "value": ""}]})),
            today,
            SyntheticPolicy::Accept,
        )
        .unwrap_err();
        assert_eq!(
            pointers(&bad),
            ["/corrections/0/value", "/corrections/1/value", "/corrections/2/field", "/corrections/3/value"]
        );
        let bad = validate(
            body(
                json!({"kind": "access", "subject": {"identity_number": "12345678901"}, "identity_verification": "x"}),
            ),
            today,
            SyntheticPolicy::Accept,
        )
        .unwrap_err();
        assert_eq!(pointers(&bad), ["/subject/identity_number"]);
    }
}
