//! The access log: one record per response that carries pupil data, written
//! in the same SQL statement as the read, so the data is returned only if its
//! record committed with it.
//!
//! Records are chained per tenant: `hash = SHA-256(prev_hash ‖ canonical)`,
//! starting from 32 zero bytes. The database computes the chain
//! (`access_log_append` in `infra/migrations/0004_students.sql`, which the
//! application reaches only through `access_log_append_for_session`, 0008:
//! tenant and actor from the live session); this module
//! holds the same encoding in Rust so that the operator binary can recompute
//! it independently and report the first broken link.

use crate::auth::Principal;
use crate::db::{uuid, Db, Row, Value};
use crate::web::RequestMeta;
use crate::Problem;
use sha2::{Digest, Sha256};

pub const GENESIS: [u8; 32] = [0; 32];

/// The column `logged_read` adds to every data row: its record's sequence number.
pub const SEQ_COLUMN: &str = "__tavle_access_seq";

/// Runs `data_sql` (a SELECT over `$1..$n` = `params`, every row of which
/// carries pupil data) and, in the same statement, appends an access record
/// naming the pupils that `pupil_ids` picks out: a scalar `uuid[]` expression
/// over the CTE `data`, e.g. `(SELECT array_agg(pupil_id) FROM data)`. No
/// record is written when it is empty or NULL (no row returned).
///
/// Returns the data rows (with the record's sequence number as an extra
/// column, [`SEQ_COLUMN`]). Rows that arrive without it are refused: data
/// leaves only with proof that its record was written.
pub async fn logged_read(
    db: &mut impl Db,
    who: &Principal,
    meta: &RequestMeta,
    action: &str,
    data_sql: &str,
    pupil_ids: &str,
    params: Vec<Value>,
) -> Result<Vec<Row>, Problem> {
    let rows = read_with_record(db, who, meta, action, data_sql, pupil_ids, params).await?;
    for row in &rows {
        require_record(row)?;
    }
    Ok(rows)
}

/// The read and its access record in one statement; the caller checks that
/// the rows that need it arrived with the record's sequence number.
async fn read_with_record(
    db: &mut impl Db,
    who: &Principal,
    meta: &RequestMeta,
    action: &str,
    data_sql: &str,
    pupil_ids: &str,
    mut params: Vec<Value>,
) -> Result<Vec<Row>, Problem> {
    let sql = format!(
        "{} SELECT data.*, (SELECT seq FROM logged) AS {SEQ_COLUMN} FROM data",
        read_ctes(data_sql, pupil_ids, params.len())
    );
    params.extend(record_params(who, meta, action));
    Ok(db.query(&sql, &params).await?)
}

/// As [`logged_read`], for reads whose rows do not all carry pupil data:
/// the text or uuid column `pupil_column` of a row names the one pupil it
/// concerns, or is NULL when it concerns none (the privacy officer's list of
/// searches, where misses name nobody). The record names the distinct pupils
/// of all rows; only rows naming a pupil must arrive with it.
pub async fn logged_read_naming(
    db: &mut impl Db,
    who: &Principal,
    meta: &RequestMeta,
    action: &str,
    data_sql: &str,
    pupil_column: &str,
    params: Vec<Value>,
) -> Result<Vec<Row>, Problem> {
    let c = pupil_column;
    let pupil_ids =
        format!("(SELECT array_agg(DISTINCT {c}::uuid ORDER BY {c}::uuid) FROM data WHERE {c} IS NOT NULL)");
    let rows = read_with_record(db, who, meta, action, data_sql, &pupil_ids, params).await?;
    for row in &rows {
        if !row.is_null(pupil_column)? {
            require_record(row)?;
        }
    }
    Ok(rows)
}

/// An audit event that [`logged_read_audited`] appends in the same statement
/// as its read, whatever the read found. `target_id` (text) and `details`
/// (jsonb) are SQL expressions over the CTE `data`; the target kind is set
/// only when `target_id` is not NULL.
pub struct ReadEvent<'a> {
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: &'a str,
    pub details: &'a str,
}

/// The column carrying the audit record's id on the rows [`logged_read_audited`] runs.
const AUDIT_COLUMN: &str = "__tavle_audit_id";
/// The column marking a row of the read (the one row of a read that found nothing lacks it).
const FOUND_COLUMN: &str = "__tavle_found";

/// As [`logged_read`], and in the same statement an audit record of the read
/// itself (`event`, in `audit_log`) that is written whether or not the read
/// found anything: for reads whose misses matter too, such as a search by
/// identity number, where probing for a child must leave a trace. Nothing is
/// returned unless both records were written: the statement yields the audit
/// record's id on every row, and one row even when the read found nothing.
///
/// Returns the rows of the read (in no particular order) and the audit
/// record's id.
#[allow(clippy::too_many_arguments)]
pub async fn logged_read_audited(
    db: &mut impl Db,
    who: &Principal,
    meta: &RequestMeta,
    action: &str,
    data_sql: &str,
    pupil_ids: &str,
    event: ReadEvent<'_>,
    mut params: Vec<Value>,
) -> Result<(Vec<Row>, i64), Problem> {
    let n = params.len();
    let found = format!("SELECT true AS {FOUND_COLUMN}, found.* FROM ({data_sql}) AS found");
    // After the record's parameters (`$n+1..$n+4`, [`record_params`]): the
    // audit record's tenant, actor, action and target kind.
    let (ip, rid, t, a) = (n + 3, n + 4, n + 5, n + 6);
    let sql = format!(
        "{}, \
         audited AS ( \
             INSERT INTO audit_log (tenant_id, actor_user_id, actor, action, target_kind, target_id, \
                                    client_ip, request_id, details) \
             SELECT ${t}::uuid, ${a}::uuid, 'user', ${ev}::text, \
                    CASE WHEN ({target}) IS NOT NULL THEN ${kind}::text END, ({target}), \
                    ${ip}::text, ${rid}::text, ({details}) \
             RETURNING id) \
         SELECT data.*, (SELECT seq FROM logged) AS {SEQ_COLUMN}, audited.id AS {AUDIT_COLUMN} \
         FROM audited LEFT JOIN data ON true",
        read_ctes(&found, pupil_ids, n),
        ev = n + 7,
        kind = n + 8,
        target = event.target_id,
        details = event.details,
    );
    params.extend(record_params(who, meta, action));
    params.extend([uuid(&who.tenant_id), uuid(&who.user_id), event.action.into(), event.target_kind.into()]);
    let rows = db.query(&sql, &params).await?;
    let mut audit_id = None;
    let mut read = Vec::with_capacity(rows.len());
    for row in rows {
        match row.get(AUDIT_COLUMN)? {
            Value::Int(id) => audit_id = Some(*id),
            _ => return Err(Problem::internal()),
        }
        if !row.is_null(FOUND_COLUMN)? {
            require_record(&row)?;
            read.push(row);
        }
    }
    // No row at all would mean no proof that the audit record was written.
    let audit_id = audit_id.ok_or_else(Problem::internal)?;
    Ok((read, audit_id))
}

/// The CTEs `data` (the read over `$1..$n`), `concerned` and `logged` (the
/// access record, appended when `pupil_ids` is not empty), taking the
/// record's parameters as `$n+1..$n+4` ([`record_params`]).
fn read_ctes(data_sql: &str, pupil_ids: &str, n: usize) -> String {
    format!(
        "WITH data AS MATERIALIZED ({data_sql}), \
         concerned AS MATERIALIZED (SELECT {pupil_ids} AS ids), \
         logged AS MATERIALIZED ( \
             SELECT access_log_append_for_session(${s}::uuid, ${act}::text, ids, ${ip}::text, ${rid}::text) AS seq \
             FROM concerned WHERE cardinality(ids) > 0)",
        s = n + 1,
        act = n + 2,
        ip = n + 3,
        rid = n + 4,
    )
}

/// Data leaves only with proof that its access record was written.
fn require_record(row: &Row) -> Result<(), Problem> {
    match row.get(SEQ_COLUMN)? {
        Value::Int(_) => Ok(()),
        _ => Err(Problem::internal()),
    }
}

/// Records a read that did not come from `logged_read` (the rows were
/// already fetched in the same transaction by the caller).
pub async fn append(
    db: &mut impl Db,
    who: &Principal,
    meta: &RequestMeta,
    action: &str,
    pupil_ids: Vec<String>,
) -> Result<i64, Problem> {
    let mut params = record_params(who, meta, action).to_vec();
    params.push(Value::text_array(pupil_ids));
    let row = db
        .query_one(
            "SELECT access_log_append_for_session($1::uuid, $2::text, $5::text[]::uuid[], $3::text, $4::text) AS seq",
            &params,
        )
        .await?;
    Ok(row.int("seq")?)
}

/// Session, action, client IP and request id of a record, in the order
/// `access_log_append_for_session` takes them around the pupil ids: the
/// database takes tenant and actor from the live session
/// (`infra/migrations/0008_access_log_by_session.sql`).
fn record_params(who: &Principal, meta: &RequestMeta, action: &str) -> [Value; 4] {
    [uuid(&who.session_id), action.into(), meta.client_ip.clone().into(), meta.request_id.clone().into()]
}

/// One stored record, with every field as the database renders it as text
/// (uuid text, RFC 3339 time, pupil ids joined by commas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub tenant_id: String,
    pub seq: i64,
    pub at: String,
    pub actor_user_id: String,
    pub action: String,
    pub pupil_ids: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

fn field(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.push(b'-'),
        Some(v) => {
            out.extend_from_slice(v.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        }
    }
}

/// The bytes hashed after the previous hash; mirrors `access_log_canonical`.
pub fn canonical(r: &Record) -> Vec<u8> {
    let mut out = b"tavle-access-v1".to_vec();
    field(&mut out, Some(&r.tenant_id));
    field(&mut out, Some(&r.seq.to_string()));
    field(&mut out, Some(&r.at));
    field(&mut out, Some(&r.actor_user_id));
    field(&mut out, Some(&r.action));
    field(&mut out, Some(&r.pupil_ids));
    field(&mut out, r.client_ip.as_deref());
    field(&mut out, r.request_id.as_deref());
    out
}

pub fn chain_hash(prev: &[u8], r: &Record) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical(r));
    h.finalize().to_vec()
}

/// Why a chain is broken, at the first record (by sequence) that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// A sequence number is missing (a record was removed).
    Missing { expected_seq: i64, found_seq: i64 },
    /// The record does not link to the hash of the one before it.
    Unlinked { seq: i64 },
    /// The record's contents do not match its hash (it was altered).
    Altered { seq: i64 },
    /// The chain ends before (or beyond) the head the database keeps.
    Head { head_seq: i64, last_seq: i64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Missing { expected_seq, found_seq } => {
                write!(f, "record {expected_seq} is missing (next record found is {found_seq})")
            }
            Break::Unlinked { seq } => write!(f, "record {seq} does not link to the hash of record {}", seq - 1),
            Break::Altered { seq } => write!(f, "record {seq} was altered: its contents do not match its hash"),
            Break::Head { head_seq, last_seq } => {
                write!(f, "the chain ends at record {last_seq} but its head says {head_seq}")
            }
        }
    }
}

/// Incremental verifier: feed records in sequence order, then `finish` with
/// the tenant's head. Stops at the first break.
pub struct Verifier {
    expected_seq: i64,
    prev: Vec<u8>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier { expected_seq: 1, prev: GENESIS.to_vec() }
    }
}

impl Verifier {
    pub fn push(&mut self, r: &Record) -> Result<(), Break> {
        if r.seq != self.expected_seq {
            return Err(Break::Missing { expected_seq: self.expected_seq, found_seq: r.seq });
        }
        if r.prev_hash != self.prev {
            return Err(Break::Unlinked { seq: r.seq });
        }
        if chain_hash(&self.prev, r) != r.hash {
            return Err(Break::Altered { seq: r.seq });
        }
        self.prev = r.hash.clone();
        self.expected_seq += 1;
        Ok(())
    }

    /// Records verified so far.
    pub fn count(&self) -> i64 {
        self.expected_seq - 1
    }

    /// The head must name the last record and its hash.
    pub fn finish(&self, head_seq: i64, head_hash: &[u8]) -> Result<(), Break> {
        let last_seq = self.count();
        if head_seq != last_seq {
            return Err(Break::Head { head_seq, last_seq });
        }
        if head_hash != self.prev {
            return Err(Break::Unlinked { seq: last_seq });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, prev: &[u8]) -> Record {
        let mut r = Record {
            tenant_id: "7d1f0b7e-1c52-4c39-9d57-1f3c1c1b8a11".into(),
            seq,
            at: "2026-11-30T08:15:00.123456Z".into(),
            actor_user_id: "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e11".into(),
            action: "pupil.viewed".into(),
            pupil_ids: "5e0f8f5e-3d5a-4b8e-9c1e-0a1b2c3d4e5f".into(),
            client_ip: Some("127.0.0.1".into()),
            request_id: None,
            prev_hash: prev.to_vec(),
            hash: Vec::new(),
        };
        r.hash = chain_hash(prev, &r);
        r
    }

    #[test]
    fn fields_are_length_prefixed_and_null_is_distinct_from_empty() {
        let mut r = record(1, &GENESIS);
        let with_null = canonical(&r);
        r.request_id = Some(String::new());
        assert_ne!(with_null, canonical(&r));
        assert!(String::from_utf8(with_null).unwrap().contains("12:pupil.viewed"));
    }

    #[test]
    fn a_good_chain_verifies_and_each_kind_of_tampering_is_found() {
        let a = record(1, &GENESIS);
        let b = record(2, &a.hash);
        let c = record(3, &b.hash);
        let mut v = Verifier::default();
        for r in [&a, &b, &c] {
            v.push(r).unwrap();
        }
        v.finish(3, &c.hash).unwrap();

        let mut altered = b.clone();
        altered.action = "pupil.listed".into();
        let mut v = Verifier::default();
        v.push(&a).unwrap();
        assert_eq!(v.push(&altered), Err(Break::Altered { seq: 2 }));

        let mut v = Verifier::default();
        v.push(&a).unwrap();
        assert_eq!(v.push(&c), Err(Break::Missing { expected_seq: 2, found_seq: 3 }));

        let mut v = Verifier::default();
        v.push(&a).unwrap();
        v.push(&b).unwrap();
        assert_eq!(v.finish(3, &c.hash), Err(Break::Head { head_seq: 3, last_seq: 2 }));
    }
}
