//! Who may see which pupils, as SQL over the caller's live grants.
//!
//! - teacher: pupils who are members of a group they teach;
//! - school leader: pupils of the schools they lead;
//! - tenant admin: the tenant's structure (schools, groups, assessments), but
//!   pupil data only through a school-leader or teacher grant of their own;
//! - privacy officer: the structure, and a pupil's access log; pupil data
//!   itself through the subject-request flow.
//!
//! Pupils whose processing is restricted are outside every scope here (the
//! privacy officer still reaches their access log). Everything outside the
//! scope answers 404, like ids that do not exist.

use tavle_core::access_log::{caller_params, grants_in_statement, logged_read, logged_read_as, with_caller};
use tavle_core::auth::{authenticate, bearer_caller, BearerCaller, Principal, Role};
use tavle_core::db::{uuid, Db, Row, Value};
use tavle_core::vars::Variables;
use tavle_core::web::Body;
use tavle_core::web::RequestMeta;
use tavle_core::Problem;

/// The caller and the three parameters every scoped query starts with:
/// `$1` tenant, `$2` taught group ids, `$3` led school ids.
pub struct Scope {
    pub who: Principal,
    taught: Vec<String>,
    led: Vec<String>,
}

/// The pupil `p` is visible to the caller (a macro, so that the
/// benchmarked queries can be whole string literals).
macro_rules! pupil_visible {
    () => {
        "p.tenant_id = $1::uuid AND NOT p.restricted \
         AND (p.school_id = ANY($3::text[]::uuid[]) \
              OR EXISTS (SELECT 1 FROM group_memberships vm \
                         WHERE vm.pupil_id = p.id AND vm.group_id = ANY($2::text[]::uuid[])))"
    };
}
pub const PUPIL_VISIBLE: &str = pupil_visible!();

/// Ids of every pupil the caller may see, for lists: the union lets each
/// half use its index instead of testing every pupil of the tenant.
pub const VISIBLE_PUPIL_IDS: &str = "SELECT vm.pupil_id FROM group_memberships vm \
     WHERE vm.tenant_id = $1::uuid AND vm.group_id = ANY($2::text[]::uuid[]) \
     UNION SELECT vp.id FROM pupils vp WHERE vp.tenant_id = $1::uuid AND vp.school_id = ANY($3::text[]::uuid[])";

/// The group `g`'s pupils are visible to the caller (teacher of it, or leader of its school).
macro_rules! group_pupils_visible {
    () => {
        "g.tenant_id = $1::uuid AND (g.id = ANY($2::text[]::uuid[]) OR g.school_id = ANY($3::text[]::uuid[]))"
    };
}
pub const GROUP_PUPILS_VISIBLE: &str = group_pupils_visible!();

impl Scope {
    pub async fn of(req: &http::Request<Body>, vars: &impl Variables, db: &mut impl Db) -> Result<Scope, Problem> {
        let who = authenticate(req, db, vars).await?;
        let (taught, led) = (who.taught_groups(), who.led_schools());
        Ok(Scope { who, taught, led })
    }

    /// `$1..$3` for the scoped queries.
    pub fn params(&self) -> Vec<Value> {
        vec![uuid(&self.who.tenant_id), Value::text_array(self.taught.clone()), Value::text_array(self.led.clone())]
    }

    /// Whether any pupil can be in scope at all (teacher or school leader).
    pub fn reaches_pupils(&self) -> bool {
        !self.taught.is_empty() || !self.led.is_empty()
    }

    /// Pupil lists are for teachers and school leaders; others get a clear
    /// 403 rather than an always-empty list.
    pub fn require_pupil_scope(&self) -> Result<(), Problem> {
        if self.reaches_pupils() {
            Ok(())
        } else {
            Err(Problem::forbidden("pupil data requires a teacher or school leader grant"))
        }
    }

    /// Tenant admins and privacy officers see the whole structure.
    pub fn whole_structure(&self) -> bool {
        self.who.has_role(Role::TenantAdmin) || self.who.has_role(Role::PrivacyOfficer)
    }
}

/// The caller of a read of pupil data, as the request names them: with a
/// bearer access token (every client's API calls) the read checks the
/// session and reads the grants inside its own statement, so that the
/// request is one round trip; with the session cookie only, it authenticates
/// first ([`Scope::of`]) and then reads.
pub enum Reader {
    Bearer(BearerCaller),
    Session(Scope),
}

impl Reader {
    /// No database work for a bearer token (its session is checked by the read).
    pub async fn of(req: &http::Request<Body>, vars: &impl Variables, db: &mut impl Db) -> Result<Reader, Problem> {
        match bearer_caller(req, vars)? {
            Some(caller) => Ok(Reader::Bearer(caller)),
            None => Ok(Reader::Session(Scope::of(req, vars, db).await?)),
        }
    }

    /// `logged_read` of a scoped query (`$1..$3` as [`Scope::params`],
    /// `params` from `$4`): 401 if the session is not live.
    #[allow(clippy::too_many_arguments)]
    pub async fn logged_read(
        &self,
        db: &mut impl Db,
        meta: &RequestMeta,
        action: &str,
        sql: &str,
        concerned: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Row>, Problem> {
        match self {
            Reader::Bearer(caller) => {
                let sql = in_statement(sql)?;
                logged_read_as(db, caller, meta, action, &sql, concerned, params)
                    .await?
                    .ok_or_else(Problem::unauthenticated)
            }
            Reader::Session(scope) => {
                let mut all = scope.params();
                all.extend(params);
                logged_read(db, &scope.who, meta, action, sql, concerned, all).await
            }
        }
    }

    /// A scoped query that reads no pupil data (no access record).
    pub async fn query_opt(&self, db: &mut impl Db, sql: &str, params: Vec<Value>) -> Result<Option<Row>, Problem> {
        let (sql, mut all) = match self {
            Reader::Bearer(caller) => (with_caller(&in_statement(sql)?), caller_params(caller)),
            Reader::Session(scope) => (sql.to_owned(), scope.params()),
        };
        all.extend(params);
        Ok(db.query_opt(&sql, &all).await?)
    }
}

/// A scoped query in the form that reads the grants itself.
fn in_statement(sql: &str) -> Result<String, Problem> {
    grants_in_statement(sql).ok_or_else(|| {
        eprintln!("error: a scoped query uses $2 or $3 other than as the caller's grants");
        Problem::internal()
    })
}
