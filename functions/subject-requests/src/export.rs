//! Access (Art. 15) and portability (Art. 20) exports.
//!
//! **Derived from the schema, not hand-listed.** [`build`] reads the data
//! inventory (`data_inventory_tables`, `data_inventory_columns`, migration
//! `0012_data_inventory.sql`): for every table with a filter for the
//! subject's kind it selects the subject's rows with every column the
//! catalogue lists (`pg_attribute`, read at each export; each row's JSON as
//! `to_jsonb` writes it, see [`row_json`]), so a column that a later
//! migration adds is in the next export without any change here (and the
//! inventory tests fail until the migration classifies it). Per column, by
//! category:
//! - `credential` values are replaced by "held, not disclosed";
//! - `pupils.identity_enc` by the decrypted identity number (only here),
//!   `pupils.identity_index` by a description of the blind index;
//! - in a pupil's export, access records name only that pupil (`pupil_ids`
//!   of a class overview also names the rest of the class); in a staff
//!   user's, they carry only how many pupils a read named (Art. 15(4): the
//!   pupils' data is not the user's);
//! - everything else as stored.
//!
//! The document also carries the controller, the purposes, legal bases and
//! retention of each table, the subject's identity (names, school, groups),
//! and the names of the sources and staff its rows refer to by id, so that
//! "which source supplied it" and "who accessed it, when, from where" read
//! without another lookup.
//!
//! **Storage.** [`store`] encrypts each document with AES-256-GCM under a key
//! derived by HKDF-SHA256 from the component's `identity_key` (info
//! `tavle export v1`, used for nothing else), bound to tenant, request and
//! format (the associated data), and keeps it for [`DEFAULT_TTL_DAYS`].
//! Blob: `nonce(12) || ciphertext || tag(16)`; keys derived from
//! `identity_previous_keys` still open blobs made before a rotation.
//!
//! **Download.** `GET /subject-requests/{id}/export` (and `/export.csv`):
//! privacy officers of the request's tenant only. Expired exports of the
//! tenant are deleted first (and audited, `subject_export.expired`). A
//! request with no export, or whose export expired, is a 404: once deleted,
//! an expired export is indistinguishable from one never made, and the
//! request's history (`GET /subject-requests/{id}`) tells which. Each
//! download writes an audit record (`subject_export.downloaded`, details
//! `{format, bytes}`, never contents) and, for a pupil, an access record, in
//! the transaction that reads the export.

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::Aes256Gcm;
use base64::Engine;
use hkdf::Hkdf;
use http::{header, Response, StatusCode};
use serde_json::{json, Map, Value as Json};
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use tavle_core::audit::{self, Actor, Event};
use tavle_core::auth::{authenticate_as, Role};
use tavle_core::crypto::IdentityCipher;
use tavle_core::db::{transaction, uuid, Db, Value};
use tavle_core::vars::Variables;
use tavle_core::web::{path_id, Body, HttpResult, RequestMeta};
use tavle_core::{access_log, Problem};
use zeroize::Zeroizing;

use crate::Subject;

/// `format` of every export document.
pub const FORMAT: &str = "tavle-subject-export-v1";
/// How long an export stays downloadable.
pub const DEFAULT_TTL_DAYS: i64 = 7;
/// Audit and access-log action of a download.
pub const DOWNLOAD_ACTION: &str = "subject_export.downloaded";
/// Audit action of the deletion of an expired export.
pub const EXPIRED_ACTION: &str = "subject_export.expired";
/// What an export shows for an authentication secret.
pub const NOT_DISCLOSED: &str = "held, not disclosed";
/// What an export shows for the blind index.
pub const BLIND_INDEX: &str = "keyed hash of the identity number (blind index), held for lookup";
/// Header of the portability CSV.
pub const CSV_HEADER: [&str; 9] = [
    "assessment_id",
    "assessment_title",
    "subject",
    "administered_on",
    "status",
    "score",
    "max_score",
    "completed_at",
    "source",
];

/// The HKDF `info` of the export key.
const KEY_INFO: &[u8] = b"tavle export v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// An export: the JSON document, and for portability of a pupil the results as CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub json: Json,
    pub csv: Option<String>,
}

/// One table of the inventory with a filter for the subject's kind.
struct Table {
    name: String,
    purpose: String,
    legal_basis: String,
    retention: String,
    filter: String,
    /// Column name → category.
    columns: BTreeMap<String, String>,
    /// The table's columns as the catalogue has them, in order, each with
    /// whether its JSON text is the same whether written by `to_jsonb` or
    /// by `row_to_json` (see [`row_json`]).
    attributes: Vec<(String, bool)>,
}

/// What an export does with one column of a table's rows (see [`plan`]).
struct ColumnRule {
    column: String,
    /// The disclosure rule for its non-null values.
    disclose: Disclose,
    /// Whose ids its values (after disclosure) are.
    ids: Ids,
    /// `details`: its `source_id` names a source.
    details: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Disclose {
    AsStored,
    Credential,
    IdentityNumber,
    BlindIndex,
    /// A pupil's export: the access record names that pupil only.
    ThisPupil,
    /// A staff user's export: how many pupils, not whom (Art. 15(4)).
    PupilCount,
}

#[derive(Clone, Copy, PartialEq)]
enum Ids {
    None,
    Staff,
    Source,
}

/// Builds the export of everything held about `subject` in tenant
/// `tenant_id` (see the module docs). Reads only; for one consistent
/// picture, call it inside a transaction (REPEATABLE READ). 404 when the
/// subject is not in the tenant.
pub async fn build(
    db: &mut impl Db,
    vars: &impl Variables,
    tenant_id: &str,
    subject: &Subject,
    portability: bool,
) -> Result<Export, Problem> {
    let tenant_id = canonical(tenant_id)?;
    let subject_id = canonical(subject.id())?;
    let params = || vec![uuid(&tenant_id), uuid(&subject_id)];
    let controller = db
        .query_opt("SELECT name, rfc3339(now()) AS now FROM tenants WHERE id = $1::uuid", &[uuid(&tenant_id)])
        .await?
        .ok_or_else(Problem::not_found)?;
    let (identity, identity_number) = match subject {
        Subject::Pupil(_) => pupil_identity(db, vars, &tenant_id, &subject_id).await?,
        Subject::User(_) => (user_identity(db, &tenant_id, &subject_id).await?, None),
    };

    let inventory = inventory(db, subject.kind()).await?;
    // Every table's rows in one statement, each table's as one JSON array
    // (text, parsed once here): one round trip and one value per table,
    // not a JSON value per row.
    let mut rows_of = Vec::with_capacity(inventory.len());
    if !inventory.is_empty() {
        let selects = inventory
            .iter()
            .enumerate()
            .map(|(i, table)| {
                format!(
                    "(SELECT coalesce(json_agg(r), '[]'::json)::text FROM {} t, LATERAL ({}) r WHERE {}) AS t{i}",
                    quote_ident(&table.name),
                    row_json(&table.attributes),
                    table.filter
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let row = db.query_one(&format!("SELECT {selects}"), &params()).await?;
        for (i, table) in inventory.iter().enumerate() {
            let rows: Vec<Map<String, Json>> = match row.get(&format!("t{i}"))? {
                Value::Text(text) => serde_json::from_str(text).map_err(|e| {
                    eprintln!("error: export: the rows of {} do not parse: {e}", table.name);
                    Problem::internal()
                })?,
                _ => return Err(Problem::internal()),
            };
            rows_of.push(rows);
        }
    }

    let mut tables = Map::new();
    let mut staff_ids = BTreeSet::new();
    let mut source_ids = BTreeSet::new();
    for (table, mut rows) in inventory.into_iter().zip(rows_of) {
        // Every row of a table has the same columns (all of the table's);
        // a row with other ones (none can) gets a plan of its own.
        let mut rules = rows.first().map(|r| plan(&table, r.keys(), subject)).unwrap_or_default();
        let mut planned_for = rows.first().map(|r| r.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        for data in &mut rows {
            if data.len() != planned_for.len() || !data.keys().eq(planned_for.iter()) {
                rules = plan(&table, data.keys(), subject);
                planned_for = data.keys().cloned().collect();
            }
            for rule in &rules {
                let Some(value) = data.get_mut(&rule.column) else { continue };
                disclose(rule.disclose, value, subject, identity_number.as_deref());
                match rule.ids {
                    Ids::Staff => collect_ids(value, &mut staff_ids),
                    Ids::Source => collect_ids(value, &mut source_ids),
                    Ids::None => {}
                }
                if rule.details {
                    collect_ids(&value["source_id"], &mut source_ids);
                }
            }
        }
        let mut columns: Map<String, Json> =
            table.columns.iter().map(|(c, k)| (c.clone(), Json::String(k.clone()))).collect();
        // A column the inventory does not know yet (its tests fail until a
        // migration classifies it) is still exported, and says so.
        for column in &planned_for {
            columns.entry(column.clone()).or_insert_with(|| "unclassified".into());
        }
        let rows: Vec<Json> = rows.into_iter().map(Json::Object).collect();
        let mut entry = Map::new();
        entry.insert("purpose".into(), table.purpose.into());
        entry.insert("legal_basis".into(), table.legal_basis.into());
        entry.insert("retention".into(), table.retention.into());
        entry.insert("columns".into(), Json::Object(columns));
        entry.insert("rows".into(), Json::Array(rows));
        tables.insert(table.name, Json::Object(entry));
    }

    // Built by moving the parts in: `json!` would serialise each of them
    // into a copy (`to_value(&tables)`: the whole document again).
    let mut document = Map::new();
    document.insert("format".into(), FORMAT.into());
    document.insert("generated_at".into(), controller.text("now")?.into());
    document.insert("subject".into(), json!({"kind": subject.kind(), "id": subject_id}));
    document.insert("controller".into(), controller.text("name")?.into());
    document.insert("identity".into(), identity);
    document.insert("sources".into(), sources(db, &tenant_id, &source_ids).await?);
    document.insert("staff".into(), staff(db, &tenant_id, &staff_ids).await?);
    document.insert("tables".into(), Json::Object(tables));
    let document = Json::Object(document);
    let csv = match (portability, subject) {
        (true, Subject::Pupil(_)) => Some(results_csv(db, &tenant_id, &subject_id).await?),
        _ => None,
    };
    Ok(Export { json: document, csv })
}

/// The inventory's tables with a filter for subjects of `kind`, with their columns.
async fn inventory(db: &mut impl Db, kind: &str) -> Result<Vec<Table>, Problem> {
    let rows = db
        .query(
            "SELECT t.table_name, t.purpose, t.legal_basis, t.retention, \
                    CASE WHEN $1::text = 'pupil' THEN t.pupil_filter ELSE t.user_filter END AS filter, \
                    coalesce((SELECT jsonb_object_agg(c.column_name, c.category) FROM data_inventory_columns c \
                              WHERE c.table_name = t.table_name), '{}'::jsonb) AS columns, \
                    coalesce((SELECT jsonb_agg(jsonb_build_array(a.attname::text, \
                                         a.atttypid = ANY (ARRAY['bool', 'int2', 'int4', 'int8', 'text', 'varchar', \
                                             'uuid', 'bytea', 'date', 'timestamp', 'timestamptz', 'jsonb', 'uuid[]', \
                                             'text[]', 'int2[]', 'int4[]', 'int8[]']::regtype[]::oid[])) \
                                     ORDER BY a.attnum) \
                              FROM pg_attribute a WHERE a.attrelid = to_regclass(quote_ident(t.table_name)) \
                                AND a.attnum > 0 AND NOT a.attisdropped), '[]'::jsonb) AS attributes \
             FROM data_inventory_tables t \
             WHERE CASE WHEN $1::text = 'pupil' THEN t.pupil_filter ELSE t.user_filter END IS NOT NULL \
             ORDER BY t.table_name",
            &[kind.into()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let columns = match r.get("columns")? {
                Value::Json(Json::Object(m)) => {
                    m.iter().map(|(c, k)| (c.clone(), k.as_str().unwrap_or_default().to_owned())).collect()
                }
                _ => BTreeMap::new(),
            };
            let attributes = match r.get("attributes")? {
                Value::Json(Json::Array(a)) => a
                    .iter()
                    .map(|a| match (a[0].as_str(), a[1].as_bool()) {
                        (Some(name), Some(plain)) => Ok((name.to_owned(), plain)),
                        _ => Err(Problem::internal()),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(Problem::internal()),
            };
            Ok(Table {
                name: r.text("table_name")?,
                purpose: r.text("purpose")?,
                legal_basis: r.text("legal_basis")?,
                retention: r.text("retention")?,
                filter: r.text("filter")?,
                columns,
                attributes,
            })
        })
        .collect()
}

/// The select list of one row of a table (its alias `t`) for `json_agg`:
/// every column of the catalogue under its own name, so the row's JSON is
/// what `to_jsonb(t)` gives, written directly as JSON text. `to_jsonb` turns
/// each value into jsonb first, which for a row with a jsonb column (a
/// result's items) costs more than the rest of the query; `row_to_json`
/// writes most types exactly as `to_jsonb` does, and those it writes
/// otherwise (floats: `1e+16` and `-0` where `to_jsonb` writes
/// `10000000000000000` and `0`; `json`, composites, domains and any type not
/// known here) go through `to_jsonb` one column at a time.
fn row_json(attributes: &[(String, bool)]) -> String {
    let columns = attributes
        .iter()
        .map(|(name, plain)| {
            let name = quote_ident(name);
            match plain {
                true => format!("t.{name} AS {name}"),
                false => format!("to_jsonb(t.{name}) AS {name}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {columns}")
}

/// The rules of the module docs for the columns of `table` that its rows
/// carry (`columns`): how each is disclosed, and which ids it holds. Columns
/// exported as stored and naming no one are left out.
fn plan<'a>(table: &Table, columns: impl Iterator<Item = &'a String>, subject: &Subject) -> Vec<ColumnRule> {
    columns
        .filter_map(|column| {
            let category = table.columns.get(column).map(String::as_str);
            let disclose = match (table.name.as_str(), column.as_str(), category) {
                (_, _, Some("credential")) => Disclose::Credential,
                ("pupils", "identity_enc", _) => Disclose::IdentityNumber,
                ("pupils", "identity_index", _) => Disclose::BlindIndex,
                (_, "pupil_ids", _) if matches!(subject, Subject::Pupil(_)) => Disclose::ThisPupil,
                // A staff user's own reads name pupils: their data, not the
                // user's (Art. 15(4)). The user learns how many, not whom.
                (_, "pupil_ids", _) => Disclose::PupilCount,
                _ => Disclose::AsStored,
            };
            let ids = match category {
                Some("pseudonymous") => Ids::Staff,
                _ if column == "source_id" => Ids::Source,
                _ => Ids::None,
            };
            let details = column == "details";
            (disclose != Disclose::AsStored || ids != Ids::None || details).then(|| ColumnRule {
                column: column.clone(),
                disclose,
                ids,
                details,
            })
        })
        .collect()
}

/// Applies one disclosure rule of the module docs to a value of a row.
fn disclose(rule: Disclose, value: &mut Json, subject: &Subject, identity_number: Option<&str>) {
    if value.is_null() {
        return;
    }
    match rule {
        Disclose::AsStored => {}
        Disclose::Credential => *value = NOT_DISCLOSED.into(),
        Disclose::IdentityNumber => *value = identity_number.map_or(Json::Null, Json::from),
        Disclose::BlindIndex => *value = BLIND_INDEX.into(),
        Disclose::ThisPupil => *value = json!([subject.id()]),
        Disclose::PupilCount => *value = json!(value.as_array().map_or(0, Vec::len)),
    }
}

/// Adds the uuids in `value` (a string or an array of strings) to `ids`.
fn collect_ids(value: &Json, ids: &mut BTreeSet<String>) {
    match value {
        // Most values repeat (the subject's own id in every row): a
        // canonical id already held needs no parsing.
        Json::String(s) if ids.contains(s) => {}
        Json::String(s) => {
            if let Ok(id) = uuid::Uuid::parse_str(s) {
                ids.insert(id.to_string());
            }
        }
        Json::Array(items) => items.iter().for_each(|v| collect_ids(v, ids)),
        _ => {}
    }
}

/// A pupil's identity, and the decrypted identity number (None without one).
async fn pupil_identity(
    db: &mut impl Db,
    vars: &impl Variables,
    tenant_id: &str,
    pupil_id: &str,
) -> Result<(Json, Option<String>), Problem> {
    let row = db
        .query_opt(
            "SELECT p.identity_enc, p.given_name, p.family_name, p.feide_username, p.school_id, s.name AS school_name, \
                    (SELECT coalesce(jsonb_agg(jsonb_build_object('id', g.id, 'name', g.name) ORDER BY g.name, g.id), \
                                     '[]'::jsonb) \
                     FROM group_memberships m JOIN groups g ON g.tenant_id = m.tenant_id AND g.id = m.group_id \
                     WHERE m.tenant_id = p.tenant_id AND m.pupil_id = p.id) AS groups \
             FROM pupils p JOIN schools s ON s.tenant_id = p.tenant_id AND s.id = p.school_id \
             WHERE p.tenant_id = $1::uuid AND p.id = $2::uuid",
            &[uuid(tenant_id), uuid(pupil_id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    let identity_number = match row.is_null("identity_enc")? {
        true => None,
        false => Some(decrypt_identity(vars, tenant_id, &row.bytes("identity_enc")?)?),
    };
    let identity = json!({
        "identity_number": identity_number,
        "given_name": row.text("given_name")?,
        "family_name": row.text("family_name")?,
        "feide_username": row.opt_text("feide_username")?,
        "school": {"id": row.text("school_id")?, "name": row.text("school_name")?},
        "groups": row.json("groups")?,
    });
    Ok((identity, identity_number))
}

/// The identity number, decrypted with the key ring and the tenant-bound
/// associated data that ingest encrypts it with (the tenant id's text).
fn decrypt_identity(vars: &impl Variables, tenant_id: &str, blob: &[u8]) -> Result<String, Problem> {
    let cipher = IdentityCipher::from_config(
        &vars.require("identity_key")?,
        &vars.get("identity_previous_keys").unwrap_or_default(),
    )
    .map_err(|e| {
        eprintln!("error: configuration variable `identity_key`: {e}");
        Problem::internal()
    })?;
    let number = cipher.decrypt_identity(blob, tenant_id.as_bytes()).map_err(|e| {
        // The error names the kind of failure only, never the plaintext.
        eprintln!("error: export: an identity number does not decrypt: {e}");
        Problem::internal()
    })?;
    Ok(number.expose().to_owned())
}

async fn user_identity(db: &mut impl Db, tenant_id: &str, user_id: &str) -> Result<Json, Problem> {
    let row = db
        .query_opt(
            "SELECT u.username, u.display_name, u.email, u.feide_username, \
                    (SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object('role', g.role, \
                                'school_id', g.school_id, 'group_id', g.group_id)) \
                            ORDER BY g.role, g.school_id, g.group_id), '[]'::jsonb) \
                     FROM role_grants g WHERE g.tenant_id = u.tenant_id AND g.user_id = u.id) AS roles \
             FROM users u WHERE u.tenant_id = $1::uuid AND u.id = $2::uuid",
            &[uuid(tenant_id), uuid(user_id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    Ok(json!({
        "username": row.text("username")?,
        "display_name": row.text("display_name")?,
        "email": row.opt_text("email")?,
        "feide_username": row.opt_text("feide_username")?,
        "roles": row.json("roles")?,
    }))
}

/// `{source_id: {name, kind}}` for the sources among `ids`.
async fn sources(db: &mut impl Db, tenant_id: &str, ids: &BTreeSet<String>) -> Result<Json, Problem> {
    let rows = db
        .query(
            "SELECT id, name, kind FROM webhook_sources WHERE tenant_id = $1::uuid AND id = ANY ($2::text[]::uuid[])",
            &[uuid(tenant_id), Value::text_array(ids.iter().cloned())],
        )
        .await?;
    let map = rows
        .iter()
        .map(|r| Ok((r.text("id")?, json!({"name": r.text("name")?, "kind": r.text("kind")?}))))
        .collect::<Result<Map<_, _>, Problem>>()?;
    Ok(Json::Object(map))
}

/// `{user_id: display_name}` for the staff users among `ids`.
async fn staff(db: &mut impl Db, tenant_id: &str, ids: &BTreeSet<String>) -> Result<Json, Problem> {
    let rows = db
        .query(
            "SELECT id, display_name FROM users WHERE tenant_id = $1::uuid AND id = ANY ($2::text[]::uuid[])",
            &[uuid(tenant_id), Value::text_array(ids.iter().cloned())],
        )
        .await?;
    let map = rows
        .iter()
        .map(|r| Ok((r.text("id")?, Json::String(r.text("display_name")?))))
        .collect::<Result<Map<_, _>, Problem>>()?;
    Ok(Json::Object(map))
}

/// The pupil's results as CSV ([`CSV_HEADER`]), oldest assessment first.
async fn results_csv(db: &mut impl Db, tenant_id: &str, pupil_id: &str) -> Result<String, Problem> {
    let rows = db
        .query(
            "SELECT r.assessment_id, a.title, a.subject, a.administered_on::text AS administered_on, r.status, \
                    r.score, a.max_score, rfc3339(r.completed_at) AS completed_at, \
                    coalesce(ws.name, 'manual registration') AS source \
             FROM results r \
             JOIN assessments a ON a.tenant_id = r.tenant_id AND a.id = r.assessment_id \
             LEFT JOIN webhook_sources ws ON ws.tenant_id = r.tenant_id AND ws.id = r.source_id \
             WHERE r.tenant_id = $1::uuid AND r.pupil_id = $2::uuid \
             ORDER BY a.administered_on, a.title, r.id",
            &[uuid(tenant_id), uuid(pupil_id)],
        )
        .await?;
    let mut out = csv_line(CSV_HEADER.iter().copied());
    for r in &rows {
        let number = |v: Option<f64>| v.map(|f| f.to_string()).unwrap_or_default();
        let fields = [
            r.text("assessment_id")?,
            r.text("title")?,
            r.text("subject")?,
            r.text("administered_on")?,
            r.text("status")?,
            number(r.opt_float("score")?),
            number(r.opt_float("max_score")?),
            r.opt_text("completed_at")?.unwrap_or_default(),
            r.text("source")?,
        ];
        out.push_str(&csv_line(fields.iter().map(String::as_str)));
    }
    Ok(out)
}

/// One CSV record (RFC 4180): fields joined by commas, ended by CRLF.
pub fn csv_line<'a>(fields: impl IntoIterator<Item = &'a str>) -> String {
    let mut line = fields.into_iter().map(csv_field).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a double quote,
/// a line break or leading or trailing white space, with quotes doubled.
pub fn csv_field(value: &str) -> String {
    let needs_quotes = value.contains([',', '"', '\r', '\n'])
        || value.starts_with(char::is_whitespace)
        || value.ends_with(char::is_whitespace);
    if needs_quotes {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// A PostgreSQL identifier, quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A uuid in its canonical text form (the form the associated data binds).
fn canonical(id: &str) -> Result<String, Problem> {
    uuid::Uuid::parse_str(id).map(|u| u.to_string()).map_err(|_| Problem::not_found())
}

/// Stores `export` for request `request_id` (its JSON document, and its CSV
/// if any), encrypted, downloadable for `ttl_days` ([`DEFAULT_TTL_DAYS`]).
/// A format already stored for the request is left as it is (a repeated
/// fulfilment stores nothing twice). Returns when the export expires (RFC
/// 3339). Call it in the fulfilment's transaction.
pub async fn store(
    db: &mut impl Db,
    vars: &impl Variables,
    tenant_id: &str,
    request_id: &str,
    created_by_user_id: &str,
    export: &Export,
    ttl_days: i64,
) -> Result<String, Problem> {
    if !(1..=366).contains(&ttl_days) {
        eprintln!("error: export: a time to live of {ttl_days} days is out of range");
        return Err(Problem::internal());
    }
    let (tenant_id, request_id) = (canonical(tenant_id)?, canonical(request_id)?);
    let keys = ExportKeys::from_vars(vars)?;
    let json = serde_json::to_vec(&export.json).map_err(|_| Problem::internal())?;
    let mut documents = vec![(Format::Json, json)];
    if let Some(csv) = &export.csv {
        documents.push((Format::Csv, csv.as_bytes().to_vec()));
    }
    let mut expires_at = None;
    for (format, plaintext) in documents {
        let blob = keys.seal(&tenant_id, &request_id, format, &plaintext);
        let row = db
            .query_one(
                "WITH inserted AS ( \
                     INSERT INTO subject_exports (tenant_id, request_id, format, content_enc, bytes, created_by, expires_at) \
                     VALUES ($1::uuid, $2::uuid, $3::text, $4::bytea, $5::int8, $6::uuid, now() + $7::int8 * interval '1 day') \
                     ON CONFLICT (request_id, format) DO NOTHING \
                     RETURNING expires_at) \
                 SELECT rfc3339(expires_at) AS expires_at FROM inserted \
                 UNION ALL \
                 SELECT rfc3339(expires_at) FROM subject_exports \
                 WHERE tenant_id = $1::uuid AND request_id = $2::uuid AND format = $3::text \
                 LIMIT 1",
                &[
                    uuid(&tenant_id),
                    uuid(&request_id),
                    format.as_str().into(),
                    Value::Bytes(blob),
                    (plaintext.len() as i64).into(),
                    uuid(created_by_user_id),
                    ttl_days.into(),
                ],
            )
            .await?;
        expires_at.get_or_insert(row.text("expires_at")?);
    }
    expires_at.ok_or_else(Problem::internal)
}

/// Deletes the tenant's expired exports, each with an audit record
/// (`subject_export.expired`); returns how many. Commits on its own.
pub async fn delete_expired(db: &mut impl Db, meta: Option<&RequestMeta>, tenant_id: &str) -> Result<usize, Problem> {
    transaction(db, async |db| {
        let rows = db
            .query(
                "DELETE FROM subject_exports WHERE tenant_id = $1::uuid AND expires_at <= now() \
                 RETURNING request_id, format",
                &[uuid(tenant_id)],
            )
            .await?;
        for r in &rows {
            let request_id = r.text("request_id")?;
            audit::record(
                db,
                meta,
                Event::new(tenant_id, Actor::System("subject-requests"), EXPIRED_ACTION)
                    .target("subject_request", &request_id)
                    .details(json!({"format": r.text("format")?})),
            )
            .await?;
        }
        Ok::<_, Problem>(rows.len())
    })
    .await
}

/// `GET /subject-requests/{id}/export` and `/export.csv`: the decrypted
/// export, for a privacy officer of the request's tenant (see the module docs).
pub async fn download(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    request_id: &str,
    format: Format,
) -> HttpResult {
    let request_id = path_id(request_id)?;
    let who = authenticate_as(req, db, vars, Role::PrivacyOfficer).await?;
    let keys = ExportKeys::from_vars(vars)?;
    delete_expired(db, Some(meta), &who.tenant_id).await?;
    transaction(db, async |db| {
        let row = db
            .query_opt(
                "SELECT e.content_enc, r.subject_kind, r.subject_id FROM subject_exports e \
                 JOIN subject_requests r ON r.tenant_id = e.tenant_id AND r.id = e.request_id \
                 WHERE e.tenant_id = $1::uuid AND e.request_id = $2::uuid AND e.format = $3::text \
                   AND e.expires_at > now() \
                 FOR SHARE OF e",
                &[uuid(&who.tenant_id), uuid(&request_id), format.as_str().into()],
            )
            .await?
            .ok_or_else(no_export)?;
        let content = keys.open(&who.tenant_id, &request_id, format, &row.bytes("content_enc")?)?;
        audit::record(
            db,
            Some(meta),
            Event::by(&who, DOWNLOAD_ACTION)
                .target("subject_request", &request_id)
                .details(json!({"format": format.as_str(), "bytes": content.len()})),
        )
        .await?;
        if row.text("subject_kind")? == "pupil" {
            access_log::append(db, &who, meta, DOWNLOAD_ACTION, vec![row.text("subject_id")?]).await?;
        }
        // The request's random id only: no personal data in the file name.
        let filename = format!("subject-export-{request_id}.{}", format.as_str());
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, format.content_type())
            .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\""))
            .header(header::CACHE_CONTROL, "no-store")
            .body(content.to_vec())
            .expect("static response parts are valid"))
    })
    .await
}

fn no_export() -> Problem {
    Problem::not_found().with_detail(
        "no export is available for this request: none was made, or it expired and was deleted \
         (the request's history shows which)",
    )
}

/// The export keys: the current one, and those of previous identity keys.
struct ExportKeys {
    current: Aes256Gcm,
    previous: Vec<Aes256Gcm>,
}

impl ExportKeys {
    fn from_vars(vars: &impl Variables) -> Result<Self, Problem> {
        let bad = |name: &str| {
            eprintln!("error: configuration variable `{name}` is not a 32-byte base64 key");
            Problem::internal()
        };
        let current = derive_key(&vars.require("identity_key")?).ok_or_else(|| bad("identity_key"))?;
        let previous = vars
            .get("identity_previous_keys")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| derive_key(k).ok_or_else(|| bad("identity_previous_keys")))
            .collect::<Result<_, _>>()?;
        Ok(ExportKeys { current, previous })
    }

    fn seal(&self, tenant_id: &str, request_id: &str, format: Format, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).expect("the system random number generator failed");
        let mut blob = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(plaintext);
        let tag = self
            .current
            .encrypt_inout_detached(
                &Nonce::<Aes256Gcm>::from(nonce),
                &aad(tenant_id, request_id, format),
                (&mut blob[NONCE_LEN..]).into(),
            )
            .expect("exports are far below AES-GCM's length limit");
        blob.extend_from_slice(&tag);
        blob
    }

    fn open(
        &self,
        tenant_id: &str,
        request_id: &str,
        format: Format,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Problem> {
        let fail = || {
            eprintln!("error: export: a stored export does not decrypt (key rotated out, or altered)");
            Problem::internal()
        };
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(fail());
        }
        let (nonce, body) = blob.split_at(NONCE_LEN);
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| fail())?;
        let tag = Tag::<Aes256Gcm>::try_from(tag).map_err(|_| fail())?;
        let aad = aad(tenant_id, request_id, format);
        for key in std::iter::once(&self.current).chain(&self.previous) {
            let mut plaintext = Zeroizing::new(ciphertext.to_vec());
            if key.decrypt_inout_detached(&nonce, &aad, (&mut plaintext[..]).into(), &tag).is_ok() {
                return Ok(plaintext);
            }
        }
        Err(fail())
    }
}

/// tenant id || request id || format (canonical uuid texts: fixed length).
fn aad(tenant_id: &str, request_id: &str, format: Format) -> Vec<u8> {
    [tenant_id.as_bytes(), request_id.as_bytes(), format.as_str().as_bytes()].concat()
}

/// HKDF-SHA256 (no salt, info `tavle export v1`) of a 32-byte base64 key.
fn derive_key(b64: &str) -> Option<Aes256Gcm> {
    let secret = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?);
    if secret.len() != 32 {
        return None;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, &secret).expand(KEY_INFO, &mut key[..]).ok()?;
    Aes256Gcm::new_from_slice(&key[..]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("lesing"), "lesing");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hei\""), "\"say \"\"hei\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\rhere"), "\"cr\rhere\"");
        assert_eq!(csv_field(" padded"), "\" padded\"");
        assert_eq!(csv_field("padded "), "\"padded \"");
        assert_eq!(csv_field("Åse Ødegård"), "Åse Ødegård");
        assert_eq!(csv_field("\""), "\"\"\"\"");
    }

    #[test]
    fn csv_lines_end_with_crlf_and_round_trip() {
        let fields = ["x", "a,b", "q\"q", "", "l\r\nm"];
        let line = csv_line(fields);
        assert_eq!(line, "x,\"a,b\",\"q\"\"q\",,\"l\r\nm\"\r\n");
        assert_eq!(parse_csv_line(&line), fields);
    }

    /// A minimal RFC 4180 reader of one record, independent of the writer.
    fn parse_csv_line(line: &str) -> Vec<String> {
        let line = line.strip_suffix("\r\n").unwrap();
        let (mut fields, mut field, mut quoted, mut chars) =
            (Vec::new(), String::new(), false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', false) if field.is_empty() => quoted = true,
                ('"', true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                ('"', true) => quoted = false,
                (',', false) => fields.push(std::mem::take(&mut field)),
                (c, _) => field.push(c),
            }
        }
        fields.push(field);
        fields
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("results"), "\"results\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    fn vars(current: u8, previous: Option<u8>) -> HashMap<String, String> {
        let key = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
        let mut v = HashMap::from([("identity_key".to_owned(), key(current))]);
        if let Some(p) = previous {
            v.insert("identity_previous_keys".into(), key(p));
        }
        v
    }

    #[test]
    fn sealed_exports_open_only_for_their_tenant_request_and_format_and_after_rotation() {
        let (t, r) = ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002");
        let keys = ExportKeys::from_vars(&vars(1, None)).unwrap();
        let blob = keys.seal(t, r, Format::Json, b"{\"a\":1}");
        assert_eq!(&keys.open(t, r, Format::Json, &blob).unwrap()[..], b"{\"a\":1}");
        assert!(keys.open(t, r, Format::Csv, &blob).is_err(), "another format");
        assert!(keys.open(r, t, Format::Json, &blob).is_err(), "another tenant and request");
        let mut altered = blob.clone();
        altered[NONCE_LEN] ^= 1;
        assert!(keys.open(t, r, Format::Json, &altered).is_err(), "altered");
        let rotated = ExportKeys::from_vars(&vars(9, Some(1))).unwrap();
        assert_eq!(&rotated.open(t, r, Format::Json, &blob).unwrap()[..], b"{\"a\":1}");
        assert!(ExportKeys::from_vars(&vars(9, None)).unwrap().open(t, r, Format::Json, &blob).is_err());
        assert!(!blob.windows(7).any(|w| w == b"{\"a\":1}"), "the plaintext is not in the blob");
    }
}
