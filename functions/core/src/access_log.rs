//! The access log: one record per response that carries pupil data, written
//! in the same SQL statement as the read, so the data is returned only if its
//! record committed with it.
//!
//! Records are chained per tenant and lane (16 lanes, so that concurrent
//! appends do not wait for each other): `hash = SHA-256(prev_hash ‖
//! canonical)`, starting from 32 zero bytes, and checkpoints chain the
//! lanes' states (design and threat model: `functions/core/ACCESS_LOG.md`). The database computes the chain
//! (`access_log_append` in `infra/migrations/0004_students.sql`, which the
//! application reaches only through `access_log_append_for_session`, 0008:
//! tenant and actor from the live session); this module
//! holds the same encoding in Rust so that the operator binary can recompute
//! it independently and report the first broken link.

use crate::auth::{BearerCaller, Principal};
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
    ctes_after("", data_sql, pupil_ids, n)
}

/// As [`read_ctes`], after the CTEs `first` (each followed by a comma).
fn ctes_after(first: &str, data_sql: &str, pupil_ids: &str, n: usize) -> String {
    format!(
        "WITH {first}data AS MATERIALIZED ({data_sql}), \
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

/// A scoped read (`$1` tenant, `$2` taught group ids, `$3` led school ids,
/// each as `$n::text[]::uuid[]`: see the students component's `scope`) made
/// to check the session and read the caller's grants itself: both arrays
/// become columns of the CTE `who` (the caller's live session and grants),
/// and `$2` and `$3` carry the session and user ids instead. For
/// [`logged_read_as`]; `None` if `sql` refers to `$2` or `$3` otherwise.
pub fn grants_in_statement(sql: &str) -> Option<String> {
    let out = sql
        .replace("$2::text[]::uuid[]", "(SELECT taught FROM who)::uuid[]")
        .replace("$3::text[]::uuid[]", "(SELECT led FROM who)::uuid[]");
    let stray =
        |p: &str| out.match_indices(p).any(|(i, _)| !out[i + p.len()..].starts_with(|c: char| c.is_ascii_digit()));
    (!stray("$2") && !stray("$3")).then_some(out)
}

/// The CTE `who`: one row while the session (`$2`, of user `$3` in tenant
/// `$1`) is live, with the caller's taught groups and led schools; none
/// otherwise, so that a scoped read finds nothing.
fn who_cte() -> String {
    format!(
        "who AS MATERIALIZED ( \
             SELECT true AS {CALLER_COLUMN}, \
                    coalesce(array_agg(g.group_id) FILTER (WHERE g.role = 'teacher' AND g.group_id IS NOT NULL), \
                             '{{}}') AS taught, \
                    coalesce(array_agg(g.school_id) FILTER (WHERE g.role = 'school_leader' AND g.school_id IS NOT NULL), \
                             '{{}}') AS led \
             FROM sessions s JOIN users u ON u.id = s.user_id AND u.tenant_id = s.tenant_id \
             LEFT JOIN role_grants g ON g.user_id = u.id AND g.tenant_id = u.tenant_id \
             WHERE s.id = $2::uuid AND s.tenant_id = $1::uuid AND s.user_id = $3::uuid AND {live} \
             GROUP BY s.id)",
        live = crate::auth::LIVE_SESSION
    )
}

/// The column marking the row of the caller's live session.
const CALLER_COLUMN: &str = "__tavle_caller";

/// `sql` ([`grants_in_statement`]'s form, no WITH of its own) after the CTE
/// `who`: a plain scoped query in one statement, such as a fallback read of
/// names that are not pupil data.
pub fn with_caller(sql: &str) -> String {
    format!("WITH {} {sql}", who_cte())
}

/// `$1..$3` of a read in one statement: tenant, session and user.
pub fn caller_params(caller: &BearerCaller) -> Vec<Value> {
    vec![uuid(&caller.tenant_id), uuid(&caller.session_id), uuid(&caller.user_id)]
}

/// As [`logged_read`], in one round trip for a bearer-token caller: the
/// statement checks the session, reads the caller's grants (`data_sql` in
/// [`grants_in_statement`]'s form), reads the data and appends the access
/// record. `params` are `$4..`. `None`: the session is not live (401).
pub async fn logged_read_as(
    db: &mut impl Db,
    caller: &BearerCaller,
    meta: &RequestMeta,
    action: &str,
    data_sql: &str,
    pupil_ids: &str,
    params: Vec<Value>,
) -> Result<Option<Vec<Row>>, Problem> {
    let mut all = caller_params(caller);
    all.extend(params);
    let n = all.len();
    let found = format!("SELECT true AS {FOUND_COLUMN}, found.* FROM ({data_sql}) AS found");
    let sql = format!(
        "{} SELECT who.{CALLER_COLUMN}, data.*, (SELECT seq FROM logged) AS {SEQ_COLUMN} \
         FROM who LEFT JOIN data ON true",
        ctes_after(&format!("{}, ", who_cte()), &found, pupil_ids, n)
    );
    all.extend([
        uuid(&caller.session_id),
        action.into(),
        meta.client_ip.clone().into(),
        meta.request_id.clone().into(),
    ]);
    let rows = db.query(&sql, &all).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut read = Vec::with_capacity(rows.len());
    for row in rows {
        if !row.is_null(FOUND_COLUMN)? {
            require_record(&row)?;
            read.push(row);
        }
    }
    Ok(Some(read))
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
    /// The chain the record belongs to (0..[`LANES`]).
    pub lane: i16,
    /// Position within its lane, from 1.
    pub seq: i64,
    pub at: String,
    pub actor_user_id: String,
    pub action: String,
    pub pupil_ids: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    /// Canonical encoding: 1 for records written before the lanes (lane 0,
    /// no lane in the hash), 2 since (`infra/migrations/0010_access_log_lanes.sql`).
    pub format: i16,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Chains ("lanes") per tenant: concurrent appends take different ones.
pub const LANES: usize = 16;

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

/// The bytes hashed after the previous hash; mirrors `access_log_canonical`
/// (format 1) and `access_log_canonical_v2` (format 2).
pub fn canonical(r: &Record) -> Vec<u8> {
    let mut out = match r.format {
        1 => b"tavle-access-v1".to_vec(),
        _ => b"tavle-access-v2".to_vec(),
    };
    field(&mut out, Some(&r.tenant_id));
    if r.format != 1 {
        field(&mut out, Some(&r.lane.to_string()));
    }
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
    hash_after(prev, &canonical(r))
}

/// SHA-256(prev ‖ canonical): one link of a chain (records or checkpoints).
fn hash_after(prev: &[u8], canonical: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().to_vec()
}

/// A lane's state: its last record's sequence number and hash (0 and
/// [`GENESIS`] for an empty lane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneState {
    pub seq: i64,
    pub hash: Vec<u8>,
}

impl Default for LaneState {
    fn default() -> Self {
        LaneState { seq: 0, hash: GENESIS.to_vec() }
    }
}

/// One stored checkpoint: every lane's state at a moment, chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub tenant_id: String,
    pub id: i64,
    /// `prune` (records before `cut_before` were deleted) or `anchor`.
    pub kind: String,
    pub at: String,
    pub cut_before: Option<String>,
    pub lanes: Vec<LaneState>,
    pub prev_digest: Vec<u8>,
    pub digest: Vec<u8>,
}

impl Checkpoint {
    pub fn is_prune(&self) -> bool {
        self.kind == "prune"
    }
}

/// The bytes hashed after the previous checkpoint's digest; mirrors
/// `access_log_checkpoint_canonical`.
pub fn checkpoint_canonical(c: &Checkpoint) -> Vec<u8> {
    let mut out = b"tavle-access-checkpoint-v1".to_vec();
    field(&mut out, Some(&c.tenant_id));
    field(&mut out, Some(&c.id.to_string()));
    field(&mut out, Some(&c.kind));
    field(&mut out, Some(&c.at));
    field(&mut out, c.cut_before.as_deref());
    let seqs: Vec<String> = c.lanes.iter().map(|l| l.seq.to_string()).collect();
    field(&mut out, Some(&seqs.join(",")));
    let hashes: Vec<String> = c.lanes.iter().map(|l| crate::auth::hex(&l.hash)).collect();
    field(&mut out, Some(&hashes.join(",")));
    out
}

pub fn checkpoint_digest(prev: &[u8], c: &Checkpoint) -> Vec<u8> {
    hash_after(prev, &checkpoint_canonical(c))
}

/// Why a log is broken, at the first record (by lane, then sequence) or
/// checkpoint that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// A sequence number is missing (a record was removed).
    Missing { lane: i16, expected_seq: i64, found_seq: i64 },
    /// The record does not link to the hash of the one before it (or to the cut).
    Unlinked { lane: i16, seq: i64 },
    /// The record's contents do not match its hash (it was altered).
    Altered { lane: i16, seq: i64 },
    /// The lane ends before (or beyond) the head the database keeps.
    Head { lane: i16, head_seq: i64, last_seq: i64 },
    /// A checkpoint does not link to the one before it, or was altered.
    Checkpoint { id: i64 },
    /// An anchor names a lane state that the records do not have.
    Anchor { id: i64, lane: i16, seq: i64 },
    /// The head kept outside the database is not in its checkpoint chain:
    /// the log was rewritten (or the head is another log's).
    ExpectedHead,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Missing { lane, expected_seq, found_seq } => {
                write!(f, "lane {lane}: record {expected_seq} is missing (next record found is {found_seq})")
            }
            Break::Unlinked { lane, seq } => {
                write!(f, "lane {lane}: record {seq} does not link to the hash of record {}", seq - 1)
            }
            Break::Altered { lane, seq } => {
                write!(f, "lane {lane}: record {seq} was altered: its contents do not match its hash")
            }
            Break::Head { lane, head_seq, last_seq } => {
                write!(f, "lane {lane}: the chain ends at record {last_seq} but its head says {head_seq}")
            }
            Break::Checkpoint { id } => {
                write!(f, "checkpoint {id} was altered or does not link to the checkpoint before it")
            }
            Break::Anchor { id, lane, seq } => {
                write!(f, "checkpoint {id} names record {seq} of lane {lane} with another hash than it has")
            }
            Break::ExpectedHead => write!(
                f,
                "the expected head is not in this log's checkpoint chain: the log was rewritten, or the head is another log's"
            ),
        }
    }
}

/// Incremental verifier of one lane: feed its records in sequence order
/// from `start` (genesis, or the newest prune's cut), then `finish` with
/// the lane's head. Stops at the first break.
pub struct Verifier {
    lane: i16,
    start: i64,
    expected_seq: i64,
    prev: Vec<u8>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::from(0, LaneState::default())
    }
}

impl Verifier {
    pub fn from(lane: i16, start: LaneState) -> Self {
        Verifier { lane, start: start.seq, expected_seq: start.seq + 1, prev: start.hash }
    }

    pub fn push(&mut self, r: &Record) -> Result<(), Break> {
        let lane = self.lane;
        if r.lane != lane || r.seq != self.expected_seq {
            return Err(Break::Missing { lane, expected_seq: self.expected_seq, found_seq: r.seq });
        }
        if r.prev_hash != self.prev {
            return Err(Break::Unlinked { lane, seq: r.seq });
        }
        if chain_hash(&self.prev, r) != r.hash {
            return Err(Break::Altered { lane, seq: r.seq });
        }
        self.prev = r.hash.clone();
        self.expected_seq += 1;
        Ok(())
    }

    /// Records verified so far.
    pub fn count(&self) -> i64 {
        self.expected_seq - 1 - self.start
    }

    /// The lane this verifier checks.
    pub fn state_lane(&self) -> i16 {
        self.lane
    }

    /// The state after the records verified so far.
    pub fn state(&self) -> LaneState {
        LaneState { seq: self.expected_seq - 1, hash: self.prev.clone() }
    }

    /// The head must name the last record and its hash.
    pub fn finish(&self, head: &LaneState) -> Result<(), Break> {
        let last_seq = self.expected_seq - 1;
        if head.seq != last_seq {
            return Err(Break::Head { lane: self.lane, head_seq: head.seq, last_seq });
        }
        if head.hash != self.prev {
            return Err(Break::Unlinked { lane: self.lane, seq: last_seq });
        }
        Ok(())
    }
}

/// Verifies a tenant's checkpoint chain (in id order): each links to the
/// one before and matches its digest, and names one state per lane.
pub fn verify_checkpoints(checkpoints: &[Checkpoint]) -> Result<(), Break> {
    let mut prev = GENESIS.to_vec();
    for (n, c) in checkpoints.iter().enumerate() {
        let expected_id = n as i64 + 1;
        if c.id != expected_id
            || c.prev_digest != prev
            || c.lanes.len() != LANES
            || checkpoint_digest(&prev, c) != c.digest
        {
            return Err(Break::Checkpoint { id: c.id.min(expected_id) });
        }
        prev = c.digest.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lane: i16, seq: i64, prev: &[u8]) -> Record {
        let mut r = Record {
            tenant_id: "7d1f0b7e-1c52-4c39-9d57-1f3c1c1b8a11".into(),
            lane,
            seq,
            at: "2026-11-30T08:15:00.123456Z".into(),
            actor_user_id: "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e11".into(),
            action: "pupil.viewed".into(),
            pupil_ids: "5e0f8f5e-3d5a-4b8e-9c1e-0a1b2c3d4e5f".into(),
            client_ip: Some("127.0.0.1".into()),
            request_id: None,
            format: 2,
            prev_hash: prev.to_vec(),
            hash: Vec::new(),
        };
        r.hash = chain_hash(prev, &r);
        r
    }

    #[test]
    fn grants_move_into_the_statement_and_other_uses_of_their_parameters_are_refused() {
        let sql = "SELECT 1 FROM g WHERE g.t = $1::uuid AND (g.id = ANY($2::text[]::uuid[]) \
                   OR g.s = ANY($3::text[]::uuid[])) AND g.x = $4::uuid AND g.y = $21::text";
        let out = grants_in_statement(sql).unwrap();
        assert!(
            out.contains("ANY((SELECT taught FROM who)::uuid[])") && out.contains("ANY((SELECT led FROM who)::uuid[])"),
            "{out}"
        );
        assert!(out.contains("$1::uuid") && out.contains("$4::uuid") && out.contains("$21::text"), "{out}");
        for bad in ["SELECT $2::text", "SELECT $3", "SELECT 1 WHERE x = ANY($2::text[]::uuid[]) AND y = $2"] {
            assert_eq!(grants_in_statement(bad), None, "{bad}");
        }
        assert!(with_caller("SELECT 1").starts_with("WITH who AS MATERIALIZED ("));
    }

    #[test]
    fn fields_are_length_prefixed_and_null_is_distinct_from_empty() {
        let mut r = record(0, 1, &GENESIS);
        let with_null = canonical(&r);
        r.request_id = Some(String::new());
        assert_ne!(with_null, canonical(&r));
        assert!(String::from_utf8(with_null).unwrap().contains("12:pupil.viewed"));
    }

    #[test]
    fn the_lane_is_in_the_hash_of_format_2_only() {
        let a = record(3, 1, &GENESIS);
        let mut moved = a.clone();
        moved.lane = 4;
        assert_ne!(chain_hash(&GENESIS, &a), chain_hash(&GENESIS, &moved));
        let mut old = a.clone();
        old.format = 1;
        let mut old_moved = old.clone();
        old_moved.lane = 4;
        assert_eq!(chain_hash(&GENESIS, &old), chain_hash(&GENESIS, &old_moved));
        assert!(canonical(&old).starts_with(b"tavle-access-v1"));
    }

    #[test]
    fn a_good_lane_verifies_and_each_kind_of_tampering_is_found() {
        let a = record(2, 1, &GENESIS);
        let b = record(2, 2, &a.hash);
        let c = record(2, 3, &b.hash);
        let mut v = Verifier::from(2, LaneState::default());
        for r in [&a, &b, &c] {
            v.push(r).unwrap();
        }
        v.finish(&LaneState { seq: 3, hash: c.hash.clone() }).unwrap();
        assert_eq!(v.count(), 3);

        let mut altered = b.clone();
        altered.action = "pupil.listed".into();
        let mut v = Verifier::from(2, LaneState::default());
        v.push(&a).unwrap();
        assert_eq!(v.push(&altered), Err(Break::Altered { lane: 2, seq: 2 }));

        let mut v = Verifier::from(2, LaneState::default());
        v.push(&a).unwrap();
        assert_eq!(v.push(&c), Err(Break::Missing { lane: 2, expected_seq: 2, found_seq: 3 }));

        let mut v = Verifier::from(2, LaneState::default());
        v.push(&a).unwrap();
        v.push(&b).unwrap();
        assert_eq!(
            v.finish(&LaneState { seq: 3, hash: c.hash.clone() }),
            Err(Break::Head { lane: 2, head_seq: 3, last_seq: 2 })
        );

        // A record of another lane in this lane's place is missing here.
        let mut v = Verifier::from(2, LaneState::default());
        assert_eq!(v.push(&record(5, 1, &GENESIS)), Err(Break::Missing { lane: 2, expected_seq: 1, found_seq: 1 }));
    }

    #[test]
    fn a_lane_verifies_from_a_cut() {
        let a = record(1, 1, &GENESIS);
        let b = record(1, 2, &a.hash);
        let c = record(1, 3, &b.hash);
        let mut v = Verifier::from(1, LaneState { seq: 2, hash: b.hash.clone() });
        v.push(&c).unwrap();
        assert_eq!(v.count(), 1);
        let mut v = Verifier::from(1, LaneState { seq: 2, hash: a.hash.clone() });
        assert_eq!(v.push(&c), Err(Break::Unlinked { lane: 1, seq: 3 }));
    }

    fn checkpoint(id: i64, prev: &[u8], kind: &str) -> Checkpoint {
        let mut c = Checkpoint {
            tenant_id: "7d1f0b7e-1c52-4c39-9d57-1f3c1c1b8a11".into(),
            id,
            kind: kind.into(),
            at: "2026-11-30T08:15:00.123456Z".into(),
            cut_before: (kind == "prune").then(|| "2026-05-01T00:00:00.000000Z".into()),
            lanes: vec![LaneState::default(); LANES],
            prev_digest: prev.to_vec(),
            digest: Vec::new(),
        };
        c.digest = checkpoint_digest(prev, &c);
        c
    }

    #[test]
    fn checkpoints_chain_and_each_change_is_found() {
        let a = checkpoint(1, &GENESIS, "prune");
        let b = checkpoint(2, &a.digest, "anchor");
        verify_checkpoints(&[a.clone(), b.clone()]).unwrap();
        let mut altered = b.clone();
        altered.lanes[7].seq = 9;
        assert_eq!(verify_checkpoints(&[a.clone(), altered]), Err(Break::Checkpoint { id: 2 }));
        assert_eq!(verify_checkpoints(std::slice::from_ref(&b)), Err(Break::Checkpoint { id: 1 }));
        let c = checkpoint(3, &b.digest, "anchor");
        assert_eq!(verify_checkpoints(&[a, c]), Err(Break::Checkpoint { id: 2 }));
    }
}
