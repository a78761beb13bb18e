//! Pupils in scope: the list with filters (ids, year level and cursors only),
//! the search by identity number or by name (in a POST body only, never a
//! URL), and a pupil's profile with results over time.

use crate::scope::{Reader, Scope, PUPIL_VISIBLE, VISIBLE_PUPIL_IDS};
use crate::BODY_LIMIT;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tavle_core::access_log::{logged_read, logged_read_audited, ReadEvent};
use tavle_core::crypto::BlindIndex;
use tavle_core::cursor::{CursorKey, Cursors, SealedCursor};
use tavle_core::db::{uuid, Db, Row, Value};
use tavle_core::identity::{IdentityNumber, SyntheticPolicy};
use tavle_core::names;
use tavle_core::problem::field;
use tavle_core::scores::canonical_date;
use tavle_core::vars::Variables;
use tavle_core::web::{cursor_param, json, page_limit, path_id, query_param, read_json};
use tavle_core::web::{malformed_cursor, Body, Checks, HttpResult, RequestMeta};
use tavle_core::Problem;

type Request = http::Request<Body>;

/// Columns of a pupil summary; `pupil_id` names the pupil for the access log.
macro_rules! pupil_columns {
    () => {
        "p.id AS pupil_id, p.given_name, p.family_name, p.year_level, p.school_id, s.name AS school_name, \
         p.special_needs, p.left_at::text AS left_at, \
         (SELECT coalesce(jsonb_agg(jsonb_build_object('id', g.id, 'name', g.name) ORDER BY g.name, g.id), '[]'::jsonb) \
          FROM group_memberships m JOIN groups g ON g.id = m.group_id WHERE m.pupil_id = p.id) AS groups"
    };
}
const PUPIL_COLUMNS: &str = pupil_columns!();

fn pupil_view(row: &Row) -> Result<Json, Problem> {
    Ok(json!({
        "id": row.text("pupil_id")?,
        "given_name": row.text("given_name")?,
        "family_name": row.text("family_name")?,
        "year_level": row.opt_int("year_level")?,
        "school": {"id": row.text("school_id")?, "name": row.text("school_name")?},
        "special_needs": row.bool("special_needs")?,
        "left_at": row.opt_text("left_at")?,
        "groups": row.json("groups")?,
    }))
}

/// A uuid query parameter; anything else is a 400 pointing at it.
pub fn uuid_param(req: &Request, name: &str) -> Result<Option<String>, Problem> {
    match query_param(req, name)? {
        None => Ok(None),
        Some(v) => uuid::Uuid::parse_str(&v)
            .map(|u| Some(u.to_string()))
            .map_err(|_| Problem::bad_query(vec![field(format!("/query/{name}"), "must be an id")])),
    }
}

/// A date parameter as `YYYY-MM-DD` formatted from the parsed date: what
/// PostgreSQL gets (it fails on some text the parser takes, such as
/// `+2026-09-15`), and text that compares in date order.
fn date_param(req: &Request, name: &str) -> Result<Option<String>, Problem> {
    let Some(v) = query_param(req, name)? else { return Ok(None) };
    match canonical_date(&v) {
        Some(d) => Ok(Some(d)),
        None => Err(Problem::bad_query(vec![field(format!("/query/{name}"), "must be a date (YYYY-MM-DD)")])),
    }
}

/// A trimmed text parameter of 1 to `max_chars` characters.
pub fn text_param(req: &Request, name: &str, max_chars: usize) -> Result<Option<String>, Problem> {
    match query_param(req, name)?.map(|v| v.trim().to_owned()) {
        Some(v) if v.is_empty() || v.chars().count() > max_chars => Err(Problem::bad_query(vec![field(
            format!("/query/{name}"),
            format!("must be 1 to {max_chars} characters"),
        )])),
        other => Ok(other),
    }
}

/// Longest name search, in characters counted in NFC.
const NAME_MAX_CHARS: usize = 100;

/// A name search as typed, trimmed and in NFC (as names are stored), of 1 to
/// 100 characters counted in NFC: "é" is one character however it was typed.
/// Eleven digits in a row are refused: an identity number is not a name, and
/// is searched for through the blind index (`identity_number`).
fn name_search(raw: &str) -> Result<Vec<String>, String> {
    let name = names::nfc(raw.trim());
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS {
        return Err(format!("must be 1 to {NAME_MAX_CHARS} characters"));
    }
    if looks_like_identity_number(&name) {
        return Err("an identity number is not a name: search for it with `identity_number`".to_owned());
    }
    Ok(names::search_terms(&name))
}

/// Eleven digits in a row (spaces, dots and hyphens allowed between them)
/// look like an identity number.
pub fn looks_like_identity_number(s: &str) -> bool {
    let mut run = 0;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= 11 {
                return true;
            }
        } else if !matches!(c, ' ' | '.' | '-') {
            run = 0;
        }
    }
    false
}

/// The position in a cursor: the last pupil shown (never a name); the page
/// continues after that pupil's sort key. Sealed and bound to the caller, the
/// list and its filters (`tavle_core::cursor`), so it can name only a pupil
/// this list showed this caller, never one of the caller's choosing.
#[derive(Deserialize)]
struct ListCursor {
    after: String,
}

/// The error of a name search's cursor (in the body) that is not one this
/// list handed out to this caller: the same whatever is wrong with it.
const MALFORMED_CURSOR: &str = "malformed cursor";

/// Whether the query string has the parameter `name` at all (with any
/// value, or none), without decoding what it carries.
fn has_query_param(req: &Request, name: &str) -> bool {
    req.uri().query().is_some_and(|q| q.split('&').any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == name))
}

/// What a page of pupils is narrowed to: the list's query parameters, or
/// the body of a name search (`terms`, all of which must match).
struct PupilFilter {
    list: PupilList,
    after: Option<SealedCursor>,
    school: Option<String>,
    group: Option<String>,
    year: Option<i64>,
    terms: Vec<String>,
    limit: i64,
}

/// The two lists of pupils: their cursors are not interchangeable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PupilList {
    /// `GET /pupils`: the cursor in the query.
    List,
    /// `POST /pupils/search` with a name: the cursor in the body.
    NameSearch,
}

impl PupilFilter {
    /// The cursors of this list for `who`: bound to every filter that shapes
    /// it, for a name search also to its terms (NFC, as searched).
    fn cursors(&self, key: CursorKey, tenant_id: &str, user_id: &str) -> Cursors {
        let name = match self.list {
            PupilList::List => "pupils.list",
            PupilList::NameSearch => "pupils.search_by_name",
        };
        let year = self.year.map(|y| y.to_string());
        let cursors = key
            .bind_to(name, tenant_id, user_id)
            .filter("school_id", self.school.as_deref())
            .filter("group_id", self.group.as_deref())
            .filter("year_level", year.as_deref());
        match self.list {
            PupilList::List => cursors,
            PupilList::NameSearch => cursors.filter("name", Some(&Json::from(self.terms.clone()).to_string())),
        }
    }

    /// The pupil this page continues after, if the cursor is one this list
    /// handed out to this caller (else the list's malformed-cursor problem).
    fn after(&self, cursors: &Cursors) -> Result<Option<String>, Problem> {
        let Some(cursor) = &self.after else { return Ok(None) };
        let after = cursors.open::<ListCursor>(cursor).and_then(|c| uuid::Uuid::parse_str(&c.after).ok());
        match (after, self.list) {
            (Some(id), _) => Ok(Some(id.to_string())),
            (None, PupilList::List) => Err(malformed_cursor()),
            (None, PupilList::NameSearch) => Err(Problem::validation(vec![field("/cursor", MALFORMED_CURSOR)])),
        }
    }
}

/// The access-log action of a page of pupils (the list and name searches).
pub const LIST_ACTION: &str = "pupils.listed";

/// `GET /pupils`: ids, year level and cursors only. Names are never sent in
/// a URL, where every proxy's and ingress's access log would keep them: a
/// `q` is refused (without looking at it) and points to `POST /pupils/search`.
pub async fn list(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    if has_query_param(req, "q") {
        return Err(Problem::bad_query(vec![field(
            "/query/q",
            "names are never sent in a URL: search with POST /pupils/search and `name` in the body",
        )]));
    }
    let limit = page_limit(req)?;
    let after = cursor_param(req)?;
    let school = uuid_param(req, "school_id")?;
    let group = uuid_param(req, "group_id")?;
    let year = match query_param(req, "year_level")? {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|y| (1..=13).contains(y)).ok_or_else(|| {
            Problem::bad_query(vec![field("/query/year_level", "must be a whole number from 1 to 13")])
        })?),
    };
    let filter = PupilFilter { list: PupilList::List, after, school, group, year, terms: Vec::new(), limit };
    pupil_page(req, meta, vars, db, filter).await
}

/// One page of the pupils in scope that pass `f`, by family name, given
/// name and id, with the access record naming exactly the pupils shown.
async fn pupil_page(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    f: PupilFilter,
) -> HttpResult {
    let scope = Scope::of(req, vars, db).await?;
    scope.require_pupil_scope()?;
    let cursors = f.cursors(crate::cursor_key(vars)?, &scope.who.tenant_id, &scope.who.user_id);
    let after = f.after(&cursors)?;

    let limit = f.limit;
    let mut params = scope.params();
    params.extend([
        after.map(uuid).unwrap_or(Value::Null),
        f.school.map(uuid).unwrap_or(Value::Null),
        f.group.map(uuid).unwrap_or(Value::Null),
        f.year.into(),
        Value::text_array(f.terms),
        (limit + 1).into(),
    ]);
    // Every term must occur in "given family": both sides NFC (stored names
    // are kept in NFC, so the columns are compared as they are, unwrapped, and
    // `pupils_school_name` keeps serving the order and the cursor), case folded
    // by the same `lower()`. The scope, not the name, narrows the rows.
    let sql = format!(
        "SELECT {PUPIL_COLUMNS}, row_number() OVER (ORDER BY p.family_name, p.given_name, p.id) AS rn \
         FROM pupils p JOIN schools s ON s.id = p.school_id \
         WHERE p.id IN ({VISIBLE_PUPIL_IDS}) AND p.tenant_id = $1::uuid AND NOT p.restricted AND p.left_at IS NULL \
           AND ($4::uuid IS NULL OR (p.family_name, p.given_name, p.id) > \
                (SELECT c.family_name, c.given_name, c.id FROM pupils c WHERE c.id = $4::uuid AND c.tenant_id = $1::uuid)) \
           AND ($5::uuid IS NULL OR p.school_id = $5::uuid) \
           AND ($6::uuid IS NULL OR EXISTS (SELECT 1 FROM group_memberships fm \
                                            WHERE fm.pupil_id = p.id AND fm.group_id = $6::uuid)) \
           AND ($7::int8 IS NULL OR p.year_level = $7::int8) \
           AND NOT EXISTS (SELECT 1 FROM unnest($8::text[]) AS t(term) \
                           WHERE strpos(lower(p.given_name || ' ' || p.family_name), lower(t.term)) = 0) \
         ORDER BY p.family_name, p.given_name, p.id LIMIT $9::int8"
    );
    // Only the pupils shown are logged, not the look-ahead row.
    let concerned = format!("(SELECT array_agg(pupil_id) FROM data WHERE rn <= {limit})");
    let mut rows = logged_read(db, &scope.who, meta, LIST_ACTION, &sql, &concerned, params).await?;
    // Shown are exactly the rows the access record names (rn <= limit), in
    // their order, whatever order the statement returned them in.
    let rank = |r: &Row| r.int("rn").unwrap_or(i64::MAX);
    rows.sort_by_key(rank);
    let more = rows.iter().any(|r| rank(r) > limit);
    let shown: Vec<&Row> = rows.iter().filter(|r| rank(r) <= limit).collect();
    let items = shown.iter().map(|r| pupil_view(r)).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match (more, shown.last()) {
        (true, Some(last)) => Some(cursors.seal(&json!({"after": last.text("pupil_id")?}))),
        _ => None,
    };
    json(StatusCode::OK, &json!({"items": items, "next_cursor": next_cursor}))
}

/// A member that is there, even as `null` (which its type then refuses or
/// takes): so that "absent" and "present" can be told apart.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The body of `POST /pupils/search`: exactly one of `identity_number` and
/// `name`; the filters and paging of the list go with `name` only (`null`
/// there means absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    #[serde(default, deserialize_with = "present")]
    identity_number: Option<String>,
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    school_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    group_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    year_level: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    cursor: Option<Option<String>>,
}

/// A search, validated as a whole before any database work.
enum Search {
    IdentityNumber(IdentityNumber),
    Name(PupilFilter),
}

fn validate_search(body: SearchBody, vars: &impl Variables) -> Result<Search, Problem> {
    let mut checks = Checks::default();
    let SearchBody { identity_number, name, school_id, group_id, year_level, limit, cursor } = body;
    match (identity_number, name) {
        (Some(_), Some(_)) => {
            Err(Problem::validation(vec![field("", "search by identity_number or by name, not both")]))
        }
        (None, None) => Err(Problem::validation(vec![field("", "needs identity_number or name")])),
        (Some(number), None) => {
            for (pointer, given) in [
                ("/school_id", school_id.is_some()),
                ("/group_id", group_id.is_some()),
                ("/year_level", year_level.is_some()),
                ("/limit", limit.is_some()),
                ("/cursor", cursor.is_some()),
            ] {
                if given {
                    checks.fail(pointer, "only with name: an identity-number search finds one pupil");
                }
            }
            checks.finish()?;
            let policy = SyntheticPolicy::from_vars(vars)?;
            let id = IdentityNumber::parse(&number, policy)
                .map_err(|e| Problem::validation(vec![field("/identity_number", e.to_string())]))?;
            Ok(Search::IdentityNumber(id))
        }
        (None, Some(name)) => {
            let terms = name_search(&name).unwrap_or_else(|message| {
                checks.fail("/name", message);
                Vec::new()
            });
            let mut id = |pointer: &str, v: Option<Option<String>>| match v.flatten() {
                None => None,
                Some(v) => match uuid::Uuid::parse_str(&v) {
                    Ok(u) => Some(u.to_string()),
                    Err(_) => {
                        checks.fail(pointer, "must be an id");
                        None
                    }
                },
            };
            let school = id("/school_id", school_id);
            let group = id("/group_id", group_id);
            let year = year_level.flatten();
            if year.is_some_and(|y| !(1..=13).contains(&y)) {
                checks.fail("/year_level", "must be a whole number from 1 to 13");
            }
            let limit = limit.flatten().unwrap_or(50);
            if !(1..=200).contains(&limit) {
                checks.fail("/limit", "must be an integer from 1 to 200");
            }
            // Its form now, with the rest of the body; whether it opens once
            // the caller is known (`PupilFilter::after`).
            let after = match cursor.flatten() {
                None => None,
                Some(raw) => {
                    let after = SealedCursor::parse(&raw);
                    if after.is_none() {
                        checks.fail("/cursor", MALFORMED_CURSOR);
                    }
                    after
                }
            };
            checks.finish()?;
            Ok(Search::Name(PupilFilter { list: PupilList::NameSearch, after, school, group, year, terms, limit }))
        }
    }
}

/// The audit action of an identity-number search, recorded hit or miss.
pub const SEARCH_ACTION: &str = "pupil.searched";

/// `POST /pupils/search`: by identity number or by name, in the body only
/// (never in a URL, where proxies and logs would keep them). The body is
/// validated as a whole before any database work.
///
/// A name search is a page of the list narrowed to the pupils whose "given
/// family" name contains every term (NFC, case-insensitive), with the list's
/// filters, paging and access record (`pupils.listed`).
pub async fn search(req: &Request, meta: &RequestMeta, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let body: SearchBody = read_json(req, BODY_LIMIT)?;
    match validate_search(body, vars)? {
        Search::IdentityNumber(id) => search_identity_number(req, meta, vars, db, id).await,
        Search::Name(filter) => pupil_page(req, meta, vars, db, filter).await,
    }
}

/// Finds the pupil in scope with this identity number (through the keyed
/// blind index; the number itself is never stored in clear or logged).
///
/// Every search that gets as far as the lookup is recorded in the audit log
/// (`pupil.searched`, details `{hit, pupil_id}`: never the number nor its
/// blind index), in the same statement as the lookup, so that probing for
/// whether a child is in the municipality shows in the privacy officer's view
/// (`GET /pupils/searches`). Out of scope, restricted, another tenant's and
/// unknown numbers are all misses. A hit also writes the access record for
/// the pupil found, as every read of pupil data does.
async fn search_identity_number(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: IdentityNumber,
) -> HttpResult {
    let index = BlindIndex::from_config(&vars.require("blind_index_key")?).map_err(|e| {
        eprintln!("error: configuration variable `blind_index_key`: {e}");
        Problem::internal()
    })?;
    let scope = Scope::of(req, vars, db).await?;
    scope.require_pupil_scope()?;
    let mut params = scope.params();
    params.push(Value::Bytes(index.index(&scope.who.tenant_id, &id)));
    let sql = format!(
        "SELECT {PUPIL_COLUMNS} FROM pupils p JOIN schools s ON s.id = p.school_id \
         WHERE p.identity_index = $4::bytea AND {PUPIL_VISIBLE}"
    );
    // At most one pupil: the blind index is unique per tenant.
    let event = ReadEvent {
        action: SEARCH_ACTION,
        target_kind: "pupil",
        target_id: "(SELECT pupil_id::text FROM data LIMIT 1)",
        details:
            "jsonb_build_object('hit', EXISTS (SELECT 1 FROM data), 'pupil_id', (SELECT pupil_id FROM data LIMIT 1))",
    };
    let (rows, _) = logged_read_audited(
        db,
        &scope.who,
        meta,
        "pupils.searched",
        &sql,
        "(SELECT array_agg(pupil_id) FROM data)",
        event,
        params,
    )
    .await?;
    let items = rows.iter().map(pupil_view).collect::<Result<Vec<_>, _>>()?;
    json(StatusCode::OK, &json!({"items": items, "next_cursor": null}))
}

/// The profile query: one row per result (or one row without a result),
/// pupil columns first; the pupil's groups only on the first row. `$4` pupil,
/// `$5` subject, `$6` assessment, `$7`/`$8` period. The pupil is resolved
/// once (materialized), and assessments are probed per result of this pupil
/// (never scanned across the tenant, whatever plan the optional filters get).
/// Public so the benchmark can time the bare query behind the route.
pub const PROFILE_SQL: &str = concat!(
    "WITH pupil AS MATERIALIZED ( \
         SELECT p.id, p.tenant_id, p.given_name, p.family_name, p.year_level, p.school_id, s.name AS school_name, \
                p.special_needs, p.left_at \
         FROM pupils p JOIN schools s ON s.id = p.school_id \
         WHERE p.id = $4::uuid AND ",
    pupil_visible!(),
    ") \
     SELECT p.id AS pupil_id, p.given_name, p.family_name, p.year_level, p.school_id, p.school_name, p.special_needs, \
            p.left_at::text AS left_at, \
            CASE WHEN row_number() OVER (ORDER BY a.administered_on, a.title, r.id) = 1 THEN \
                (SELECT coalesce(jsonb_agg(jsonb_build_object('id', g.id, 'name', g.name) ORDER BY g.name, g.id), \
                                 '[]'::jsonb) \
                 FROM group_memberships m JOIN groups g ON g.id = m.group_id WHERE m.pupil_id = p.id) END AS groups, \
            r.id AS result_id, r.score, r.status, rfc3339(r.completed_at) AS completed_at, r.source_id IS NULL AS manual, \
            r.recorded_by, ru.display_name AS recorded_by_name, rfc3339(r.updated_at) AS updated_at, \
            a.id AS assessment_id, a.title, a.subject, a.max_score, a.administered_on::text AS administered_on, \
            a.family, a.threshold, a.source_id AS assessment_source_id, r.subtest_scores, ",
    result_flags!("r"),
    ", (SELECT coalesce(jsonb_agg(jsonb_build_object('id', st.key, 'title', st.title, 'max_score', st.max_score, \
                                                    'threshold', st.threshold) ORDER BY st.position), '[]'::jsonb) \
        FROM assessment_subtests st WHERE st.assessment_id = a.id) AS subtests \
     FROM pupil p \
     LEFT JOIN (results r \
                CROSS JOIN LATERAL (SELECT a.id, a.title, a.subject, a.max_score, a.administered_on, a.family, \
                                           a.threshold, a.source_id \
                                    FROM assessments a \
                                    WHERE a.id = r.assessment_id AND a.tenant_id = r.tenant_id \
                                      AND ($5::text IS NULL OR a.subject = $5::text) \
                                      AND ($6::uuid IS NULL OR a.id = $6::uuid) \
                                      AND ($7::text IS NULL OR a.administered_on >= $7::text::date) \
                                      AND ($8::text IS NULL OR a.administered_on <= $8::text::date) \
                                    OFFSET 0) a \
                LEFT JOIN users ru ON ru.id = r.recorded_by) \
           ON r.pupil_id = p.id AND r.tenant_id = p.tenant_id \
     ORDER BY a.administered_on, a.title, r.id"
);

/// The access-log action of a profile read.
pub const PROFILE_ACTION: &str = "pupil.viewed";
/// The pupil a profile read's access record names (over `logged_read`'s `data`).
pub const PROFILE_CONCERNED: &str = "ARRAY(SELECT pupil_id FROM data LIMIT 1)";

/// One result of a `PROFILE_SQL` row that has one, with its flags: the
/// total's (`flagged`) and each subtest score's, next to the subtest's
/// title, maximum and threshold.
pub fn result_view(row: &Row) -> Result<Json, Problem> {
    let manual = row.bool("manual")?;
    let definitions = row.json("subtests")?;
    let mut scores = crate::overview::subtest_scores(row, &definitions)?;
    for s in &mut scores {
        if let Some(d) = definitions.as_array().into_iter().flatten().find(|d| d["id"] == s["id"]) {
            s["title"] = d["title"].clone();
            s["max_score"] = d["max_score"].clone();
            s["threshold"] = d["threshold"].clone();
        }
    }
    Ok(json!({
        "id": row.text("result_id")?,
        "score": row.opt_float("score")?,
        "status": row.text("status")?,
        "completed_at": row.opt_text("completed_at")?,
        "source": if manual { "manual" } else { "publisher" },
        "recorded_by": match row.opt_text("recorded_by")? {
            Some(id) => json!({"id": id, "display_name": row.opt_text("recorded_by_name")?}),
            None => Json::Null,
        },
        "updated_at": row.text("updated_at")?,
        "flagged": row.bool("total_flagged")?,
        "subtests": scores,
        "since_last": Json::Null,
        "assessment": {
            "id": row.text("assessment_id")?,
            "title": row.text("title")?,
            "subject": row.text("subject")?,
            "max_score": row.float("max_score")?,
            "administered_on": row.text("administered_on")?,
            "family": row.opt_text("family")?,
            "threshold": row.opt_float("threshold")?,
        },
    }))
}

/// Where a score stands against a threshold, before and now.
fn movement(before: Option<bool>, now: Option<bool>) -> Json {
    match (before, now) {
        (Some(false), Some(true)) => json!("moved_below"),
        (Some(true), Some(false)) => json!("moved_above"),
        (Some(true), Some(true)) => json!("still_below"),
        (Some(false), Some(false)) => json!("still_above"),
        _ => Json::Null,
    }
}

/// A completed result's standing in a test family: whether its total and
/// each subtest with a threshold is at or below it (`None`: no threshold).
struct Standing {
    result_id: Json,
    administered_on: Json,
    total: Option<bool>,
    subtests: Vec<(String, bool)>,
}

impl Standing {
    fn of(view: &Json) -> Standing {
        let a = &view["assessment"];
        let subtests = view["subtests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| !s["threshold"].is_null())
            .filter_map(|s| Some((s["id"].as_str()?.to_owned(), s["flagged"].as_bool()?)))
            .collect();
        Standing {
            result_id: view["id"].clone(),
            administered_on: a["administered_on"].clone(),
            total: (!a["threshold"].is_null()).then(|| view["flagged"] == true),
            subtests,
        }
    }
}

/// For every completed result of a test family (the publisher's `family`
/// key, within that publisher), whether the pupil moved above or below each
/// threshold since the family's previous completed result (oldest first).
/// `results` are the views in the profile's order, `families` each one's
/// (source, family) key.
fn mark_movements(results: &mut [Json], families: &[Option<(String, String)>]) {
    let mut last: std::collections::HashMap<&(String, String), Standing> = std::collections::HashMap::new();
    for (view, family) in results.iter_mut().zip(families) {
        let Some(family) = family else { continue };
        if view["status"] != "completed" {
            continue;
        }
        let now = Standing::of(view);
        if let Some(before) = last.get(family) {
            let subtests: Vec<Json> = now
                .subtests
                .iter()
                .filter_map(|(id, flagged)| {
                    let was = before.subtests.iter().find(|(k, _)| k == id)?.1;
                    Some(json!({"id": id, "change": movement(Some(was), Some(*flagged))}))
                })
                .collect();
            view["since_last"] = json!({
                "previous_result_id": before.result_id,
                "previous_administered_on": before.administered_on,
                "total": movement(before.total, now.total),
                "subtests": subtests,
            });
        }
        last.insert(family, now);
    }
}

pub async fn profile(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    id: &str,
) -> HttpResult {
    let id = path_id(id)?;
    let subject = text_param(req, "subject", 100)?;
    let assessment = uuid_param(req, "assessment_id")?;
    let (from, to) = (date_param(req, "from")?, date_param(req, "to")?);
    if let (Some(f), Some(t)) = (&from, &to) {
        if f > t {
            return Err(Problem::bad_query(vec![field("/query/to", "must not be before from")]));
        }
    }
    let reader = Reader::of(req, vars, db).await?;
    let params = vec![uuid(id), subject.into(), assessment.map(uuid).unwrap_or(Value::Null), from.into(), to.into()];
    let rows = reader.logged_read(db, meta, PROFILE_ACTION, PROFILE_SQL, PROFILE_CONCERNED, params).await?;
    let Some(first) = rows.first() else { return Err(Problem::not_found()) };
    let mut view = pupil_view(first)?;
    // The groups column is filled on one row only (the first, by the query's order).
    for row in &rows {
        if !row.is_null("groups")? {
            view["groups"] = row.json("groups")?;
            break;
        }
    }
    let mut results = Vec::with_capacity(rows.len());
    let mut families = Vec::with_capacity(rows.len());
    for row in &rows {
        if !row.is_null("result_id")? {
            results.push(result_view(row)?);
            // A family is the publisher's, or the tenant's own for manual assessments.
            let source = row.opt_text("assessment_source_id")?.unwrap_or_else(|| "manual".to_owned());
            families.push(row.opt_text("family")?.map(|f| (source, f)));
        }
    }
    mark_movements(&mut results, &families);
    // Per subject, the results over time (ids, oldest first).
    let mut subjects: std::collections::BTreeMap<String, Vec<Json>> = std::collections::BTreeMap::new();
    for r in &results {
        let subject = r["assessment"]["subject"].as_str().unwrap_or_default().to_owned();
        subjects.entry(subject).or_default().push(r["id"].clone());
    }
    view["subjects"] = subjects
        .into_iter()
        .map(|(subject, ids)| {
            let flagged = results
                .iter()
                .filter(|r| ids.contains(&r["id"]))
                .filter(|r| {
                    r["flagged"] == true
                        || r["subtests"].as_array().is_some_and(|s| s.iter().any(|x| x["flagged"] == true))
                })
                .count();
            json!({"subject": subject, "result_ids": ids, "flagged_results": flagged})
        })
        .collect();
    view["results"] = Json::Array(results);
    json(StatusCode::OK, &view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars() -> HashMap<String, String> {
        HashMap::from([("accept_synthetic_identity_numbers".to_owned(), "true".to_owned())])
    }

    fn validated(body: Json) -> Result<Search, Problem> {
        let body: SearchBody = tavle_core::web::from_value(body)?;
        validate_search(body, &vars())
    }

    /// The pointers of a refused body, and that no message repeats `secret`.
    fn refused(body: Json, secret: &str) -> Vec<String> {
        let p = validated(body.clone()).err().unwrap_or_else(|| panic!("{body} was accepted"));
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        for e in &p.errors {
            assert!(secret.is_empty() || !e.message.contains(secret), "{body}: {}", e.message);
        }
        p.errors.iter().map(|e| e.pointer.clone()).collect()
    }

    fn name_filter(body: Json) -> PupilFilter {
        match validated(body.clone()) {
            Ok(Search::Name(f)) => f,
            Ok(Search::IdentityNumber(_)) => panic!("{body}: an identity-number search"),
            Err(p) => panic!("{body}: {:?}", p.errors),
        }
    }

    #[test]
    fn a_search_is_by_identity_number_or_by_name_never_both_or_neither() {
        assert!(matches!(validated(json!({"identity_number": "15891550089"})), Ok(Search::IdentityNumber(_))));
        assert!(matches!(validated(json!({"name": "berg"})), Ok(Search::Name(_))));
        assert_eq!(refused(json!({"identity_number": "15891550089", "name": "berg"}), "15891550089"), [""]);
        assert_eq!(refused(json!({}), ""), [""]);
        assert_eq!(refused(json!({"limit": 5}), ""), [""]);
        // Unknown members, `q` among them, are refused without echoing them.
        assert_eq!(refused(json!({"name": "berg", "q": "berg"}), "berg"), [""]);
        assert_eq!(refused(json!({"identity_number": "15891550089", "fnr": 1}), "15891550089"), [""]);
        // The list's filters and paging go with a name only.
        assert_eq!(
            refused(json!({"identity_number": "15891550089", "limit": 5, "cursor": null}), "15891550089"),
            ["/limit", "/cursor"]
        );
        // `null` is not a name or a number.
        assert_eq!(refused(json!({"name": null}), ""), ["/name"]);
        assert_eq!(refused(json!({"identity_number": null}), ""), ["/identity_number"]);
        assert_eq!(refused(json!({"identity_number": "12345678901"}), "12345678901"), ["/identity_number"]);
        assert_eq!(refused(json!({"name": 7}), ""), ["/name"]);
    }

    #[test]
    fn a_name_search_is_checked_like_the_list_was() {
        let f = name_filter(json!({"name": "  Ame\u{301}lie \t berg "}));
        assert_eq!(f.terms, ["Am\u{e9}lie", "berg"]);
        assert_eq!((f.limit, f.after, f.school, f.group, f.year), (50, None, None, None, None));
        // `null` filters are absent.
        let f = name_filter(
            json!({"name": "x", "school_id": null, "group_id": null, "year_level": null, "limit": null, "cursor": null}),
        );
        assert_eq!((f.limit, f.after, f.school, f.group, f.year), (50, None, None, None, None));
        let school = "0B8F7A52-3C1E-4F0E-9D53-2F6D1C0A9E11";
        let after = "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e12";
        let (tenant, user) = (TENANT, USER);
        let body = json!({"name": "x", "school_id": school, "group_id": after, "year_level": 13, "limit": 200});
        let cursor = name_filter(body.clone()).cursors(key(), tenant, user).seal(&json!({"after": after}));
        let mut with_cursor = body.clone();
        with_cursor["cursor"] = json!(cursor);
        let f = name_filter(with_cursor);
        assert_eq!(f.school.as_deref(), Some(school.to_lowercase().as_str()));
        assert_eq!((f.group.as_deref(), f.year, f.limit), (Some(after), Some(13), 200));
        assert_eq!(f.after, SealedCursor::parse(&cursor), "carried as it came, opened once the caller is known");
        assert_eq!(f.after(&f.cursors(key(), tenant, user)).unwrap().as_deref(), Some(after));

        // Length in NFC: 100 decomposed letters (200 code points) are 100.
        assert_eq!(name_filter(json!({"name": "e\u{301}".repeat(100)})).terms.len(), 1);
        for bad in [json!(""), json!("   "), json!("x".repeat(101)), json!("e\u{301}".repeat(101))] {
            assert_eq!(refused(json!({"name": bad}), ""), ["/name"], "{bad}");
        }
        // Eleven digits in a row are an identity number, however spaced.
        for number in ["15891550089", "158915 50089", "158.915.500.89", "Ola 15891-550089"] {
            let pointers = refused(json!({"name": number}), "50089");
            assert_eq!(pointers, ["/name"], "{number}");
        }
        let p = validated(json!({"name": "15891550089"})).err().unwrap();
        assert!(p.errors[0].message.contains("identity_number"), "{}", p.errors[0].message);
        // Ten digits are not (a phone number, say).
        name_filter(json!({"name": "1589155008"}));

        // Every rule broken at once: every pointer, in body order.
        let pointers = refused(
            json!({"name": "", "school_id": "nordby", "group_id": 5, "year_level": 14, "limit": 0, "cursor": "x"}),
            "nordby",
        );
        assert_eq!(pointers, ["/group_id"], "a type error comes first, alone");
        let pointers = refused(
            json!({"name": "", "school_id": "nordby", "group_id": "5A", "year_level": 14, "limit": 0, "cursor": "x"}),
            "nordby",
        );
        assert_eq!(pointers, ["/name", "/school_id", "/group_id", "/year_level", "/limit", "/cursor"]);
        for (limit, ok) in [(1, true), (200, true), (201, false), (-1, false)] {
            assert_eq!(validated(json!({"name": "x", "limit": limit})).is_ok(), ok, "{limit}");
        }
        assert_eq!(refused(json!({"name": "x", "limit": 2.5}), ""), ["/limit"]);
        assert_eq!(refused(json!({"name": "x", "year_level": 0}), ""), ["/year_level"]);
        // Cursors: only of the form of one, before the caller is known.
        // (The old format: `{"after":"Aasen"}`, `{"before":3}` as bare base64url.)
        for bad in [
            "not-a-cursor".to_owned(),
            "eyJhZnRlciI6IkFhc2VuIn0".to_owned(),
            "eyJiZWZvcmUiOjN9".to_owned(),
            "A".repeat(600),
        ] {
            assert_eq!(refused(json!({"name": "x", "cursor": bad}), "Aasen"), ["/cursor"]);
        }
    }

    const TENANT: &str = "6c1f3b2a-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    const USER: &str = "7d2a4c3b-1e5f-4a6b-9c7d-8e9f0a1b2c3d";

    fn key() -> CursorKey {
        CursorKey::derive(&[3u8; 32])
    }

    #[test]
    fn a_pupil_cursor_opens_only_for_its_list_caller_and_filters() {
        let pupil = "0b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e12";
        let search = |body: Json| {
            let mut f = name_filter(body);
            f.after = None;
            f
        };
        let list = |school: Option<&str>, year: Option<i64>| PupilFilter {
            list: PupilList::List,
            after: None,
            school: school.map(str::to_owned),
            group: None,
            year,
            terms: Vec::new(),
            limit: 50,
        };
        let issued = search(json!({"name": " Ame\u{301}lie  berg ", "year_level": 5}));
        let cursor = issued.cursors(key(), TENANT, USER).seal(&json!({"after": pupil}));
        // The same search however typed (NFC, spaces): the cursor opens.
        let mut same = search(json!({"name": "Am\u{e9}lie berg", "year_level": 5, "cursor": cursor}));
        same.after = SealedCursor::parse(&cursor);
        assert_eq!(same.after(&same.cursors(key(), TENANT, USER)).unwrap().as_deref(), Some(pupil));
        let other = "1b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e12";
        for (what, mut f, tenant, user) in [
            ("another tenant", search(json!({"name": "Amélie berg", "year_level": 5})), other, USER),
            ("another user", search(json!({"name": "Amélie berg", "year_level": 5})), TENANT, other),
            ("another name", search(json!({"name": "Amélie", "year_level": 5})), TENANT, USER),
            ("another year", search(json!({"name": "Amélie berg", "year_level": 6})), TENANT, USER),
            ("no year", search(json!({"name": "Amélie berg"})), TENANT, USER),
            ("a school", search(json!({"name": "Amélie berg", "year_level": 5, "school_id": other})), TENANT, USER),
            ("a group", search(json!({"name": "Amélie berg", "year_level": 5, "group_id": other})), TENANT, USER),
            ("the list", list(None, Some(5)), TENANT, USER),
        ] {
            f.after = SealedCursor::parse(&cursor);
            let p = f.after(&f.cursors(key(), tenant, user)).unwrap_err();
            let (status, pointer) = match f.list {
                PupilList::NameSearch => (StatusCode::UNPROCESSABLE_ENTITY, "/cursor"),
                PupilList::List => (StatusCode::BAD_REQUEST, "/query/cursor"),
            };
            assert_eq!((p.status, p.errors), (status, vec![field(pointer, "malformed cursor")]), "{what}");
        }
        // The list's cursor opens for the list with the same filters only.
        let school = Some("2b8f7a52-3c1e-4f0e-9d53-2f6d1c0a9e12");
        let cursor = list(school, None).cursors(key(), TENANT, USER).seal(&json!({"after": pupil}));
        for (f, opens) in [(list(school, None), true), (list(None, None), false), (list(school, Some(1)), false)] {
            let f = PupilFilter { after: SealedCursor::parse(&cursor), ..f };
            assert_eq!(f.after(&f.cursors(key(), TENANT, USER)).is_ok(), opens);
        }
        // A position that is not a pupil id, even sealed right, is refused too.
        let f = PupilFilter { after: None, ..list(None, None) };
        let not_an_id = f.cursors(key(), TENANT, USER).seal(&json!({"after": "Aasen"}));
        let f = PupilFilter { after: SealedCursor::parse(&not_an_id), ..f };
        assert_eq!(f.after(&f.cursors(key(), TENANT, USER)).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_profile_and_the_overview_read_their_grants_in_their_own_statement() {
        use tavle_core::access_log::grants_in_statement;
        for sql in [PROFILE_SQL, crate::OVERVIEW_SQL] {
            let one = grants_in_statement(sql).expect("only the grants use $2 and $3");
            assert!(one.contains("(SELECT taught FROM who)") && one.contains("(SELECT led FROM who)"));
        }
    }

    #[test]
    fn identity_numbers_are_told_from_names() {
        for s in ["15891550089", "158915 50089", "1589.1550.089", "x15891550089y", "1-5-8-9-1-5-5-0-0-8-9"] {
            assert!(looks_like_identity_number(s), "{s}");
        }
        for s in ["1589155008", "15891 a 550089", "Ødegård", "", "12345/67890/1"] {
            assert!(!looks_like_identity_number(s), "{s}");
        }
    }

    #[test]
    fn a_query_parameter_is_found_by_its_name_alone() {
        let req = |uri: &str| http::Request::builder().uri(uri).body(Body::default()).unwrap();
        for uri in ["/pupils?q=berg", "/pupils?limit=2&q", "/pupils?q=", "/pupils?q=%ZZ", "/pupils?a=1&q=x&b=2"] {
            assert!(has_query_param(&req(uri), "q"), "{uri}");
        }
        for uri in ["/pupils", "/pupils?", "/pupils?qq=berg", "/pupils?x=q", "/pupils?limit=q=1"] {
            assert!(!has_query_param(&req(uri), "q"), "{uri}");
        }
    }
}
