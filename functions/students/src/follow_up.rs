//! The lists teachers and school leaders act on: who is at or below a
//! concern threshold (bekymringsgrense) in the assessments of a school year,
//! and, per assessment, how many pupils that is per group and year level.
//!
//! A result is flagged when it is completed and its total, or any subtest
//! score, is at or below the threshold the publisher set (stored with the
//! result, migration 0016). Absent, exempt and incomplete results are never
//! flagged, and a pupil without a result is not a low score.
//!
//! A teacher sees the groups they teach; a school leader every group of
//! their schools (the pupils of it who belong to those schools). The school
//! year (1 August to 31 July) is the `school_year` parameter, or the one the
//! handler's clock says is current.

use crate::pupils::uuid_param;
use crate::scope::Scope;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use tavle_core::access_log::logged_read_naming;
use tavle_core::db::{uuid, Db, Row, Value};
use tavle_core::problem::field;
use tavle_core::scores::{school_year_bounds, school_year_containing, Date};
use tavle_core::vars::Variables;
use tavle_core::web::{cursor_param, json, limit_param, malformed_cursor, open_cursor, path_id, query_param};
use tavle_core::web::{Body, HttpResult, RequestMeta};
use tavle_core::Problem;

type Request = http::Request<Body>;

/// The groups in scope (`$1..$3`), narrowed to the group and the school
/// of the two parameters named when given.
macro_rules! groups_in_scope {
    ($group:literal, $school:literal) => {
        concat!(
            "SELECT g.id, g.name, g.school_id, g.year_level FROM groups g \
             WHERE g.tenant_id = $1::uuid AND (g.id = ANY($2::text[]::uuid[]) OR g.school_id = ANY($3::text[]::uuid[])) \
               AND (", $group, "::uuid IS NULL OR g.id = ", $group, "::uuid) \
               AND (", $school, "::uuid IS NULL OR g.school_id = ", $school, "::uuid)"
        )
    };
}

/// The CTEs `led` and `mem`: `mem` holds the current members of the groups
/// `grp`, visible as in the class overview (every member of a taught group;
/// in the other groups, the pupils of the schools led). The taught
/// groups' members are probed one by one in `pupils_current`; the led
/// schools' current pupils (`led`) are read once, by school, and joined to
/// the memberships by hash: a school leader's 1,000 members cost some 150
/// buffers, not 3,000 probes. The two halves are disjoint (a group is
/// taught or not).
macro_rules! members_ctes {
    () => {
        "led AS MATERIALIZED ( \
             SELECT p.id, p.year_level FROM pupils p \
             WHERE p.tenant_id = $1::uuid AND p.school_id = ANY($3::text[]::uuid[]) \
               AND NOT p.restricted AND p.left_at IS NULL), \
         mem AS MATERIALIZED ( \
             SELECT grp.id AS group_id, p.id AS pupil_id, p.year_level FROM grp \
             JOIN group_memberships m ON m.group_id = grp.id \
             JOIN pupils p ON p.id = m.pupil_id AND p.tenant_id = $1::uuid AND NOT p.restricted AND p.left_at IS NULL \
             WHERE grp.id = ANY($2::text[]::uuid[]) \
             UNION ALL \
             SELECT grp.id, led.id, led.year_level FROM grp \
             JOIN group_memberships m ON m.group_id = grp.id \
             JOIN led ON led.id = m.pupil_id \
             WHERE NOT grp.id = ANY($2::text[]::uuid[]))"
    };
}

/// The subtests of the page row's assessment (`page.assessment_id`) with
/// titles and thresholds (publisher's order), on the first row of each
/// assessment only: an assessment's definitions are read once per page, not
/// once per flagged result (35 lookups instead of 251 for the busiest class
/// of the benchmark's private copy).
macro_rules! page_assessment_subtests {
    () => {
        "CASE WHEN row_number() OVER (PARTITION BY page.assessment_id \
                                      ORDER BY entry, administered_on, title, result_id) = 1 \
              THEN (SELECT jsonb_agg(jsonb_build_object('id', st.key, 'title', st.title, 'threshold', st.threshold) \
                                     ORDER BY st.position) \
                    FROM assessment_subtests st WHERE st.assessment_id = page.assessment_id) END AS subtests"
    };
}

/// One page of the follow-up list for a school year: one row per (group,
/// flagged pupil, assessment), and one row naming no pupil for a group in
/// scope without any. `$4` group, `$5` school, `$6`/`$7` the year's first
/// and last day; the page: `$8`/`$9` the group and pupil it continues after
/// (both NULL on the first page; the pupil NULL after a group without any),
/// `$10` its size in entries (a group's flagged pupil, or a group without
/// any), numbered in `entry`; `more` says whether an entry follows. Rows
/// come for the page's entries only, so the access record names exactly
/// the pupils shown. Each pupil's latest result per assessment counts, as in the
/// overview; an assessment without thresholds flags nobody. Per pupil, only
/// the flagged results are read, through the partial index `results_flagged`
/// (migration 0016: the flags are stored with the result), each probed for
/// the school year by its assessment and for a later result of the same
/// assessment (index-only, in `results_assessment_latest`, migration 0019):
/// a pupil's unflagged results and other years cost nothing. Names are
/// read once per member (`named`), not once per flagged result; each
/// result brings its scores and flagged keys, and each assessment's
/// subtests (titles, thresholds) come once per page, on its first row
/// (`subtests`), from `assessment_subtests_listed` alone: the handler joins
/// them (`flagged_subtest_details`). Public so the benchmark can time the
/// bare query behind the route.
pub const FOLLOW_UP_SQL: &str = concat!(
    "WITH grp AS MATERIALIZED (",
    groups_in_scope!("$4", "$5"),
    "), ",
    members_ctes!(),
    ", \
     named AS MATERIALIZED ( \
         SELECT mem.group_id, mem.pupil_id, p.given_name, p.family_name, p.year_level, p.special_needs \
         FROM mem JOIN pupils p ON p.id = mem.pupil_id), \
     flagged AS MATERIALIZED ( \
         SELECT r.pupil_id, r.id AS result_id, r.score, r.assessment_id, a.title, a.subject, a.administered_on, \
                a.max_score, a.threshold, r.total_flagged, r.flagged_subtests, r.subtest_scores \
         FROM (SELECT DISTINCT pupil_id FROM mem) mp \
         JOIN results r ON r.pupil_id = mp.pupil_id AND (r.total_flagged OR r.flagged_subtests <> '{}'::text[]) \
         JOIN assessments a ON a.id = r.assessment_id AND a.tenant_id = $1::uuid \
                           AND a.administered_on BETWEEN $6::text::date AND $7::text::date \
         WHERE NOT EXISTS (SELECT 1 FROM results n WHERE n.pupil_id = r.pupil_id AND n.assessment_id = r.assessment_id \
                           AND (n.updated_at, n.id) > (r.updated_at, r.id))), \
     listed AS ( \
         SELECT grp.id AS group_id, grp.name AS group_name, grp.school_id, grp.year_level AS group_year_level, \
                f.pupil_id, p.given_name, p.family_name, p.year_level, p.special_needs, \
                f.result_id, f.score, f.assessment_id, f.title, f.subject, f.administered_on::text AS administered_on, \
                f.max_score, f.threshold, f.total_flagged, f.flagged_subtests, f.subtest_scores \
         FROM grp \
         LEFT JOIN (named p JOIN flagged f ON f.pupil_id = p.pupil_id) ON p.group_id = grp.id), \
     page AS MATERIALIZED ( \
         SELECT l.*, dense_rank() OVER (ORDER BY l.group_name, l.group_id, l.family_name, l.given_name, l.pupil_id) \
                AS entry \
         FROM listed l \
         WHERE $8::uuid IS NULL \
            OR (l.group_name, l.group_id) > (SELECT ag.name, ag.id FROM groups ag \
                                             WHERE ag.id = $8::uuid AND ag.tenant_id = $1::uuid) \
            OR (l.group_id = $8::uuid AND $9::uuid IS NOT NULL \
                AND (l.family_name, l.given_name, l.pupil_id) > (SELECT ap.family_name, ap.given_name, ap.id FROM pupils ap \
                                                                 WHERE ap.id = $9::uuid AND ap.tenant_id = $1::uuid))) \
     SELECT page.*, (SELECT max(entry) FROM page) > $10::int8 AS more, ",
    page_assessment_subtests!(),
    " FROM page WHERE entry <= $10::int8 \
     ORDER BY entry, administered_on, title, result_id"
);

/// The access-log action of a follow-up list.
pub const FOLLOW_UP_ACTION: &str = "pupils.follow_up_viewed";

/// Per-group and per-year-level counts of one assessment (`$4`) over the
/// groups in scope (`$5` group, `$6` school): pupils, results, completed
/// ones, flagged pupils, flagged totals, and per subtest the flagged ones
/// (rows with `subtest`). No pupil is named, so no access record. A pupil
/// in two groups counts in each group, once in their year level (the
/// `DISTINCT` counts: every row of a pupil carries the same result). Each
/// membership's latest result is probed by (`$4`, pupil) in the index
/// `results_assessment_latest` (migration 0019), which gives it without a
/// sort (the table is visited for the members who have one, about a tenth:
/// the flagged subtests are too wide for the index); never through the assessment's results
/// across the tenant, and the counts come from that one CTE: joining two
/// CTEs, which PostgreSQL estimates at one row each, made a nested loop of
/// 1,000 × 1,000 rows (150 ms). Both tallies are one grouping-sets
/// aggregate each, not a union of copies of the CTE (half the cost). The
/// flags are the result's stored ones (migration 0016); each member's year
/// level comes from the index `pupils_current` alone (migration 0013),
/// without a heap visit per pupil, or, for a leader's school, from one
/// read of its current pupils (`members_ctes`). Measured in tests/benches/README.md
/// ("Issue 14d").
pub const FOLLOW_UP_COUNTS_SQL: &str = concat!(
    "WITH a AS MATERIALIZED (SELECT a.id FROM assessments a WHERE a.id = $4::uuid AND a.tenant_id = $1::uuid), \
     grp AS MATERIALIZED (SELECT g.* FROM (",
    groups_in_scope!("$5", "$6"),
    ") g WHERE EXISTS (SELECT 1 FROM a)), ",
    members_ctes!(),
    ", \
     res AS MATERIALIZED ( \
         SELECT m.group_id, m.pupil_id, m.year_level, lr.id AS result_id, lr.status, \
                coalesce(lr.total_flagged, false) AS total_flagged, coalesce(lr.flagged_subtests, '{}'::text[]) AS flagged_subtests \
         FROM mem m \
         LEFT JOIN LATERAL (SELECT r.id, r.status, r.total_flagged, r.flagged_subtests FROM results r \
                            WHERE r.assessment_id = $4::uuid AND r.pupil_id = m.pupil_id \
                            ORDER BY r.updated_at DESC, r.id DESC LIMIT 1) lr ON true) \
     SELECT CASE WHEN grouping(r.group_id) = 0 THEN 'group' ELSE 'year_level' END AS kind, \
            CASE WHEN grouping(r.group_id) = 0 THEN r.group_id::text ELSE coalesce(r.year_level::text, '') END AS key, \
            NULL::text AS subtest, count(DISTINCT r.pupil_id) AS pupils, count(DISTINCT r.result_id) AS results, \
            count(DISTINCT r.pupil_id) FILTER (WHERE r.status = 'completed') AS completed, \
            count(DISTINCT r.pupil_id) FILTER (WHERE r.total_flagged OR cardinality(r.flagged_subtests) > 0) AS flagged, \
            count(DISTINCT r.pupil_id) FILTER (WHERE r.total_flagged) AS total_flagged \
     FROM res r GROUP BY GROUPING SETS ((r.group_id), (r.year_level)) \
     UNION ALL \
     SELECT CASE WHEN grouping(r.group_id) = 0 THEN 'group' ELSE 'year_level' END, \
            CASE WHEN grouping(r.group_id) = 0 THEN r.group_id::text ELSE coalesce(r.year_level::text, '') END, \
            s.key, 0, 0, 0, count(DISTINCT r.pupil_id), 0 \
     FROM res r CROSS JOIN LATERAL unnest(r.flagged_subtests) AS s(key) \
     GROUP BY GROUPING SETS ((r.group_id, s.key), (r.year_level, s.key))"
);

/// `school_year`: the calendar year the school year starts in (1900–2198),
/// else the one `today` falls in.
fn school_year(req: &Request, today: Date) -> Result<i32, Problem> {
    match query_param(req, "school_year")? {
        None => Ok(school_year_containing(today)),
        Some(v) => v.parse::<i32>().ok().filter(|y| (1900..=2198).contains(y)).ok_or_else(|| {
            Problem::bad_query(vec![field(
                "/query/school_year",
                "must be the year the school year starts in (e.g. 2026)",
            )])
        }),
    }
}

/// The list name of the follow-up list's cursors.
const FOLLOW_UP_LIST: &str = "pupils.follow_up";

/// The position in a follow-up list's cursor: the last entry shown, a
/// group's pupil or a group without any (ids only, never a name).
#[derive(Deserialize)]
struct FollowUpCursor {
    group: String,
    pupil: Option<String>,
}

/// `limit`: entries per page, 1 to 500 (default 100).
pub const FOLLOW_UP_DEFAULT_LIMIT: i64 = 100;
pub const FOLLOW_UP_MAX_LIMIT: i64 = 500;

/// `GET /follow-up?school_year&group_id&school_id&limit&cursor`: per group
/// in scope, every pupil flagged in an assessment of the school year, with
/// the assessments and the subtests they are flagged in; paged by entries
/// (a group's flagged pupil, or a group without any), with a sealed cursor
/// bound to the caller, the list and its filters (the school year as
/// resolved). A group or school outside the caller's scope is unknown (404).
/// Each page's access record names exactly the pupils it shows.
pub async fn list(
    req: &Request,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    today: Date,
) -> HttpResult {
    let start = school_year(req, today)?;
    let group = uuid_param(req, "group_id")?;
    let school = uuid_param(req, "school_id")?;
    let limit = limit_param(req, FOLLOW_UP_DEFAULT_LIMIT, FOLLOW_UP_MAX_LIMIT)?;
    let cursor = cursor_param(req)?;
    let scope = Scope::of(req, vars, db).await?;
    scope.require_pupil_scope()?;
    let cursors = crate::cursor_key(vars)?
        .bind(FOLLOW_UP_LIST, &scope.who)
        .filter("school_year", Some(&start.to_string()))
        .filter("group_id", group.as_deref())
        .filter("school_id", school.as_deref());
    let after = match open_cursor::<FollowUpCursor>(&cursors, cursor.as_ref())? {
        None => None,
        Some(c) => {
            let id = |s: &str| uuid::Uuid::parse_str(s).map(|u| u.to_string()).map_err(|_| malformed_cursor());
            Some((id(&c.group)?, c.pupil.as_deref().map(id).transpose()?))
        }
    };
    let (from, to) = school_year_bounds(start);
    let filtered = group.is_some() || school.is_some();
    let first_page = after.is_none();
    let (after_group, after_pupil) = match after {
        None => (Value::Null, Value::Null),
        Some((g, p)) => (uuid(&g), p.map(|p| uuid(&p)).unwrap_or(Value::Null)),
    };
    let mut params = scope.params();
    params.extend([
        group.map(uuid).unwrap_or(Value::Null),
        school.map(uuid).unwrap_or(Value::Null),
        from.clone().into(),
        to.clone().into(),
        after_group,
        after_pupil,
        limit.into(),
    ]);
    let rows = logged_read_naming(db, &scope.who, meta, FOLLOW_UP_ACTION, FOLLOW_UP_SQL, "pupil_id", params).await?;
    if rows.is_empty() && filtered && first_page {
        return Err(Problem::not_found());
    }
    let next_cursor = match rows.last() {
        Some(last) if last.bool("more")? => Some(cursors.seal(&json!({
            "group": last.text("group_id")?,
            "pupil": last.opt_text("pupil_id")?,
        }))),
        _ => None,
    };
    // Each assessment's subtests come on one of its rows (the first).
    let mut subtests: BTreeMap<String, Json> = BTreeMap::new();
    for row in &rows {
        if !row.is_null("subtests")? {
            subtests.insert(row.text("assessment_id")?, row.json("subtests")?);
        }
    }
    let mut groups: Vec<Json> = Vec::new();
    for row in &rows {
        let group_id = row.text("group_id")?;
        if groups.last().is_none_or(|g| g["id"] != group_id.as_str()) {
            groups.push(json!({
                "id": group_id,
                "name": row.text("group_name")?,
                "school_id": row.text("school_id")?,
                "year_level": row.opt_int("group_year_level")?,
                "pupils": [],
            }));
        }
        let Some(pupil_id) = row.opt_text("pupil_id")? else { continue };
        let Some(pupils) = groups.last_mut().and_then(|g| g["pupils"].as_array_mut()) else {
            return Err(Problem::internal());
        };
        if pupils.last().is_none_or(|p| p["id"] != pupil_id.as_str()) {
            pupils.push(json!({
                "id": pupil_id,
                "given_name": row.text("given_name")?,
                "family_name": row.text("family_name")?,
                "year_level": row.opt_int("year_level")?,
                "special_needs": row.bool("special_needs")?,
                "flags": [],
            }));
        }
        let definitions = subtests.get(&row.text("assessment_id")?).unwrap_or(&Json::Null);
        let flagged_subtests = flagged_subtest_details(row, definitions)?;
        let flag = json!({
            "assessment": {
                "id": row.text("assessment_id")?,
                "title": row.text("title")?,
                "subject": row.text("subject")?,
                "administered_on": row.text("administered_on")?,
                "max_score": row.float("max_score")?,
                "threshold": row.opt_float("threshold")?,
            },
            "result_id": row.text("result_id")?,
            "score": row.opt_float("score")?,
            "flagged": row.bool("total_flagged")?,
            "flagged_subtests": flagged_subtests,
        });
        match pupils.last_mut().and_then(|p| p["flags"].as_array_mut()) {
            Some(flags) => flags.push(flag),
            None => return Err(Problem::internal()),
        }
    }
    json(
        StatusCode::OK,
        &json!({"school_year": {"start": start, "from": from, "to": to}, "groups": groups, "next_cursor": next_cursor}),
    )
}

/// The flagged subtests of a listed result, in the assessment's order
/// (`definitions`: its subtests as the statement's JSON), each with title,
/// score and threshold.
fn flagged_subtest_details(row: &Row, definitions: &Json) -> Result<Vec<Json>, Problem> {
    let flagged = row.text_array("flagged_subtests")?;
    let scores = row.json("subtest_scores")?;
    Ok(definitions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|st| Some((st, st["id"].as_str()?)))
        .filter(|(_, id)| flagged.iter().any(|f| f == id))
        .map(|(st, id)| {
            json!({
                "id": id,
                "title": st["title"],
                // As the class overview gives it.
                "score": scores.get(id).and_then(Json::as_f64),
                "threshold": st["threshold"],
            })
        })
        .collect())
}

/// Counts of one line (a group or a year level).
#[derive(Default)]
struct Counts {
    pupils: i64,
    results: i64,
    completed: i64,
    flagged: i64,
    total_flagged: i64,
    subtests: BTreeMap<String, i64>,
}

impl Counts {
    /// Shares are of the pupils who completed the assessment.
    fn view(&self, subtests: &Json) -> Json {
        let share = |n: i64| (self.completed > 0).then(|| n as f64 / self.completed as f64);
        let per_subtest: Vec<Json> = subtests
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|st| st["id"].as_str())
            .map(|id| {
                let n = self.subtests.get(id).copied().unwrap_or(0);
                json!({"id": id, "flagged": n, "share": share(n)})
            })
            .collect();
        json!({
            "pupils": self.pupils,
            "results": self.results,
            "completed": self.completed,
            "flagged": self.flagged,
            "flagged_share": share(self.flagged),
            "total_flagged": self.total_flagged,
            "total_flagged_share": share(self.total_flagged),
            "subtests": per_subtest,
        })
    }

    fn add(&mut self, row: &Row) -> Result<(), Problem> {
        match row.opt_text("subtest")? {
            Some(key) => {
                self.subtests.insert(key, row.int("flagged")?);
            }
            None => {
                self.pupils = row.int("pupils")?;
                self.results = row.int("results")?;
                self.completed = row.int("completed")?;
                self.flagged = row.int("flagged")?;
                self.total_flagged = row.int("total_flagged")?;
            }
        }
        Ok(())
    }
}

/// `GET /assessments/{id}/follow-up?group_id&school_id`: for one assessment,
/// per group in scope and per year level, how many pupils there are, how
/// many completed it, and how many (and what share of those) are flagged, in
/// all, on the total and per subtest. No pupil is named.
pub async fn counts(req: &Request, vars: &impl Variables, db: &mut impl Db, assessment: &str) -> HttpResult {
    let assessment = path_id(assessment)?;
    let group = uuid_param(req, "group_id")?;
    let school = uuid_param(req, "school_id")?;
    let scope = Scope::of(req, vars, db).await?;
    scope.require_pupil_scope()?;
    let a = db
        .query_opt(
            "SELECT a.id, a.title, a.subject, a.max_score, a.administered_on::text AS administered_on, a.family, \
                    a.threshold, \
                    (SELECT coalesce(jsonb_agg(jsonb_build_object('id', st.key, 'title', st.title, 'max_score', \
                                     st.max_score, 'threshold', st.threshold) ORDER BY st.position), '[]'::jsonb) \
                     FROM assessment_subtests st WHERE st.assessment_id = a.id) AS subtests \
             FROM assessments a WHERE a.id = $1::uuid AND a.tenant_id = $2::uuid",
            &[uuid(&assessment), uuid(&scope.who.tenant_id)],
        )
        .await?
        .ok_or_else(Problem::not_found)?;
    let subtests = a.json("subtests")?;
    let filtered = group.is_some() || school.is_some();
    let (group, school) = (group.map(uuid).unwrap_or(Value::Null), school.map(uuid).unwrap_or(Value::Null));
    let mut params = scope.params();
    params.extend([group.clone(), school.clone()]);
    let groups = db.query(concat!(groups_in_scope!("$4", "$5"), " ORDER BY g.name, g.id"), &params).await?;
    if groups.is_empty() && filtered {
        return Err(Problem::not_found());
    }
    let mut params = scope.params();
    params.extend([uuid(&assessment), group, school]);
    let rows = db.query(FOLLOW_UP_COUNTS_SQL, &params).await?;
    let (mut by_group, mut by_year): (BTreeMap<String, Counts>, BTreeMap<String, Counts>) = Default::default();
    for row in &rows {
        let target = if row.text("kind")? == "group" { &mut by_group } else { &mut by_year };
        target.entry(row.text("key")?).or_default().add(row)?;
    }
    let empty = Counts::default();
    let group_lines = groups
        .iter()
        .map(|g| {
            let id = g.text("id")?;
            let mut line = by_group.get(&id).unwrap_or(&empty).view(&subtests);
            line["group"] = json!({"id": id, "name": g.text("name")?, "school_id": g.text("school_id")?,
                                   "year_level": g.opt_int("year_level")?});
            Ok(line)
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    let mut years: Vec<(Option<i64>, &Counts)> = by_year.iter().map(|(k, c)| (k.parse::<i64>().ok(), c)).collect();
    years.sort_by_key(|(y, _)| y.unwrap_or(i64::MAX));
    let year_lines: Vec<Json> = years
        .into_iter()
        .map(|(y, c)| {
            let mut line = c.view(&subtests);
            line["year_level"] = json!(y);
            line
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "assessment": {
                "id": a.text("id")?, "title": a.text("title")?, "subject": a.text("subject")?,
                "max_score": a.float("max_score")?, "administered_on": a.text("administered_on")?,
                "family": a.opt_text("family")?, "threshold": a.opt_float("threshold")?, "subtests": subtests,
            },
            "groups": group_lines,
            "year_levels": year_lines,
        }),
    )
}
