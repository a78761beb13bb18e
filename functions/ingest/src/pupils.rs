//! Pupil identifiers in webhook bodies: a national identity number (found
//! through the tenant's blind index, never stored or compared in clear) or a
//! Feide username.

use crate::IngestConfig;
use serde::Deserialize;
use std::collections::HashMap;
use tavle_core::auth::hex;
use tavle_core::db::{uuid, Db, Value};
use tavle_core::identity::IdentityNumber;
use tavle_core::web::Checks;
use tavle_core::Problem;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PupilIdentifiers {
    #[serde(default)]
    pub identity_number: Option<String>,
    #[serde(default)]
    pub feide_username: Option<String>,
}

/// A parsed identifier. The identity number itself is kept only as long as
/// a roster needs it for encryption.
pub struct PupilKey {
    /// Hex of the blind index, when an identity number was given.
    pub index: Option<String>,
    pub identity: Option<IdentityNumber>,
    pub feide: Option<String>,
}

impl PupilKey {
    /// The string that identifies this pupil within one post.
    pub fn dedup_key(&self) -> String {
        match (&self.index, &self.feide) {
            (Some(i), _) => format!("i:{i}"),
            (None, Some(f)) => format!("f:{f}"),
            (None, None) => String::new(),
        }
    }
}

/// Feide usernames: `user@realm`, compared case-insensitively.
pub fn parse_feide(raw: &str) -> Option<String> {
    let f = raw.trim().to_lowercase();
    let (user, realm) = f.split_once('@')?;
    let ok = f.len() <= 254
        && !user.is_empty()
        && realm.contains('.')
        && !realm.contains('@')
        && f.chars().all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c));
    ok.then_some(f)
}

/// Parses the identifiers at `pointer`; problems go to `checks` (messages
/// never contain the number).
pub fn parse(
    ids: &PupilIdentifiers,
    cfg: &IngestConfig,
    tenant_id: &str,
    pointer: &str,
    checks: &mut Checks,
) -> Option<PupilKey> {
    let mut key = PupilKey { index: None, identity: None, feide: None };
    if let Some(raw) = &ids.identity_number {
        match IdentityNumber::parse(raw, cfg.synthetic) {
            Ok(id) => {
                key.index = Some(hex(&cfg.blind_index.index(tenant_id, &id)));
                key.identity = Some(id);
            }
            Err(e) => checks.fail(&format!("{pointer}/identity_number"), e.to_string()),
        }
    }
    if let Some(raw) = &ids.feide_username {
        match parse_feide(raw) {
            Some(f) => key.feide = Some(f),
            None => checks.fail(&format!("{pointer}/feide_username"), "must be a Feide username (user@realm)"),
        }
    }
    if ids.identity_number.is_none() && ids.feide_username.is_none() {
        checks.fail(pointer, "needs identity_number or feide_username");
    }
    (key.index.is_some() || key.feide.is_some()).then_some(key)
}

/// A pupil already known in the tenant.
pub struct Known {
    pub id: String,
    pub restricted: bool,
    /// The school the pupil belongs to now (also after leaving it).
    pub school_id: String,
}

macro_rules! resolve_sql {
    () => {
        "SELECT id, encode(identity_index, 'hex') AS identity_index, feide_username, restricted, school_id FROM pupils \
         WHERE tenant_id = $1::uuid AND (identity_index IN (SELECT decode(h, 'hex') FROM unnest($2::text[]) AS h) \
               OR feide_username IN (SELECT unnest($3::text[])))"
    };
}

/// The tenant's pupils with any of these identifiers (`$1` tenant, `$2` hex
/// blind indexes, `$3` Feide usernames), locking the pupils found until the transaction ends
/// (in id order, so concurrent rosters cannot deadlock here): a roster
/// moves and records what it read, and no other writer can move a pupil
/// between the two (the `from_school_id` of a transfer is the school the
/// pupil really left).
const RESOLVE_FOR_UPDATE_SQL: &str = concat!(resolve_sql!(), " ORDER BY id FOR NO KEY UPDATE");

/// The same pupils as [`RESOLVE_FOR_UPDATE_SQL`], key-share locking them (in id order)
/// until the transaction ends: they cannot be deleted (erased) meanwhile,
/// and a pupil whose erasure is under way is waited for, then not found.
/// Rosters' `FOR NO KEY UPDATE` does not conflict with it.
pub const RESOLVE_KEY_SHARE_SQL: &str = concat!(resolve_sql!(), " ORDER BY id FOR KEY SHARE");

/// Finds the tenant's pupils for these keys (the map is keyed both by
/// `i:<index>` and `f:<feide>`); they cannot be deleted until the caller's
/// transaction ends ([`RESOLVE_KEY_SHARE_SQL`]).
pub async fn resolve_key_share(
    db: &mut impl Db,
    tenant_id: &str,
    keys: &[&PupilKey],
) -> Result<HashMap<String, Known>, Problem> {
    resolve_with(db, RESOLVE_KEY_SHARE_SQL, tenant_id, keys).await
}

/// As [`resolve_key_share`], and the pupils found stay locked against
/// other writers until the caller's transaction ends.
pub async fn resolve_for_update(
    db: &mut impl Db,
    tenant_id: &str,
    keys: &[&PupilKey],
) -> Result<HashMap<String, Known>, Problem> {
    resolve_with(db, RESOLVE_FOR_UPDATE_SQL, tenant_id, keys).await
}

async fn resolve_with(
    db: &mut impl Db,
    sql: &str,
    tenant_id: &str,
    keys: &[&PupilKey],
) -> Result<HashMap<String, Known>, Problem> {
    let indexes: Vec<String> = keys.iter().filter_map(|k| k.index.clone()).collect();
    let feides: Vec<String> = keys.iter().filter_map(|k| k.feide.clone()).collect();
    let rows = db.query(sql, &[uuid(tenant_id), Value::text_array(indexes), Value::text_array(feides)]).await?;
    let mut out = HashMap::with_capacity(rows.len() * 2);
    for row in rows {
        let known = || -> Result<Known, Problem> {
            Ok(Known { id: row.text("id")?, restricted: row.bool("restricted")?, school_id: row.text("school_id")? })
        };
        if let Some(i) = row.opt_text("identity_index")? {
            out.insert(format!("i:{i}"), known()?);
        }
        if let Some(f) = row.opt_text("feide_username")? {
            out.insert(format!("f:{f}"), known()?);
        }
    }
    Ok(out)
}

/// The known pupil for a key: by identity number first, then Feide.
pub fn lookup<'a>(known: &'a HashMap<String, Known>, key: &PupilKey) -> Option<&'a Known> {
    key.index
        .as_ref()
        .and_then(|i| known.get(&format!("i:{i}")))
        .or_else(|| key.feide.as_ref().and_then(|f| known.get(&format!("f:{f}"))))
}
