//! Receiving a webhook delivery: size limit, source lookup, signature,
//! idempotency, validation of the whole post, and only then one transaction
//! with the roster or results changes and the delivery record. Nothing in
//! that transaction can reject the post's form, so no client input can make
//! it fail (or panic) halfway.

use crate::verify::{self, SourceKey};
use crate::{results, roster, IngestConfig, WEBHOOK_BODY_LIMIT};
use http::{HeaderValue, StatusCode};
use tavle_core::db::{transaction, uuid, Db, Value};
use tavle_core::vars::Variables;
use tavle_core::web::{read_json, Body, HttpResult, RequestMeta};
use tavle_core::Problem;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Roster,
    Results,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Roster => "roster",
            Kind::Results => "results",
        }
    }
}

/// A post that passed validation, ready for the transaction.
enum Post {
    Roster(roster::ValidRoster),
    Results(results::ValidResultsPost),
}

struct Source {
    tenant_id: String,
    kind: String,
    active: bool,
    keys: Vec<SourceKey>,
}

/// A source and its live verification keys, one row per key (or one row
/// with NULL keys). `$1` source id.
pub const LOAD_SOURCE_SQL: &str =
    "SELECT s.tenant_id, s.kind, s.active, k.secret_enc, k.public_key FROM webhook_sources s \
     LEFT JOIN webhook_secrets k ON k.source_id = s.id AND (k.expires_at IS NULL OR k.expires_at > now()) \
     WHERE s.id = $1::uuid";

/// The recorded outcome of an earlier delivery with this webhook id. `$1`
/// source id, `$2` webhook id.
pub const DELIVERY_LOOKUP_SQL: &str =
    "SELECT status, response, kind FROM webhook_deliveries WHERE source_id = $1::uuid AND webhook_id = $2::text";

/// The idempotency record of an applied delivery, in its transaction. `$1`
/// source id, `$2` webhook id, `$3` tenant id, `$4` the answer, `$5` kind.
pub const DELIVERY_RECORD_SQL: &str =
    "INSERT INTO webhook_deliveries (source_id, webhook_id, tenant_id, status, response, kind) \
     VALUES ($1::uuid, $2::text, $3::uuid, 200, $4::jsonb, $5::text)";

async fn load_source(db: &mut impl Db, cfg: &IngestConfig, id: &str) -> Result<Option<Source>, Problem> {
    let rows = db.query(LOAD_SOURCE_SQL, &[uuid(id)]).await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let mut source = Source {
        tenant_id: first.text("tenant_id")?,
        kind: first.text("kind")?,
        active: first.bool("active")?,
        keys: Vec::new(),
    };
    for row in &rows {
        if !row.is_null("secret_enc")? {
            // A secret that no configured key decrypts is skipped: it cannot verify anything.
            match cfg.secrets.decrypt(&row.bytes("secret_enc")?, id.as_bytes()) {
                Ok(raw) => source.keys.extend(SourceKey::secret(raw)),
                Err(_) => {
                    eprintln!("warning: a webhook secret of a source cannot be decrypted with the configured keys")
                }
            }
        } else if !row.is_null("public_key")? {
            source.keys.extend(SourceKey::public_key(&row.bytes("public_key")?));
        }
    }
    Ok(Some(source))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn outcome(status: StatusCode, body: &serde_json::Value, replayed: bool) -> HttpResult {
    let mut r = tavle_core::web::json(status, body)?;
    if replayed {
        r.headers_mut().insert("webhook-replayed", HeaderValue::from_static("true"));
    }
    Ok(r)
}

async fn stored_outcome(
    db: &mut impl Db,
    source_id: &str,
    webhook_id: &str,
    kind: Kind,
) -> Result<Option<HttpResult>, Problem> {
    let row = db.query_opt(DELIVERY_LOOKUP_SQL, &[uuid(source_id), webhook_id.into()]).await?;
    Ok(match row {
        Some(r) if r.text("kind")? != kind.as_str() => {
            return Err(Problem::conflict("this webhook id was already used for another kind of post"));
        }
        Some(r) => {
            let status = StatusCode::from_u16(r.int("status")? as u16).map_err(|_| Problem::internal())?;
            Some(outcome(status, &r.json("response")?, true))
        }
        None => None,
    })
}

pub async fn receive(
    req: &http::Request<Body>,
    meta: &RequestMeta,
    vars: &impl Variables,
    db: &mut impl Db,
    source_id: &str,
    kind: Kind,
) -> HttpResult {
    // Size before anything else: no parsing, no database work for huge bodies.
    if req.body().len() > WEBHOOK_BODY_LIMIT {
        return Err(Problem::too_large(WEBHOOK_BODY_LIMIT));
    }
    let source_id = uuid::Uuid::parse_str(source_id).map_err(|_| Problem::not_found())?.to_string();
    let cfg = IngestConfig::from_vars(vars)?;
    let source = load_source(db, &cfg, &source_id).await?.ok_or_else(Problem::not_found)?;
    // A bad `webhook-id` is an `invalid-signature` 401 like every other bad
    // Standard Webhooks header: senders handle one problem type for all.
    let webhook_id = verify::verify(&source.keys, req.body(), req.headers(), unix_now())
        .map_err(|r| {
            Problem::new(StatusCode::UNAUTHORIZED, "invalid-signature", "The webhook signature could not be verified")
                .with_detail(r.message())
        })?
        .into_string();
    if !source.active {
        return Err(Problem::new(StatusCode::FORBIDDEN, "source-disabled", "This webhook source is disabled"));
    }
    if kind == Kind::Roster && source.kind != "sas" {
        return Err(Problem::forbidden("only school administrative system (sas) sources may post rosters"));
    }
    if let Some(previous) = stored_outcome(db, &source_id, &webhook_id, kind).await? {
        return previous;
    }
    let post = match kind {
        Kind::Roster => Post::Roster(roster::validate(read_json(req, WEBHOOK_BODY_LIMIT)?, &cfg, &source.tenant_id)?),
        Kind::Results => {
            Post::Results(results::validate(read_json(req, WEBHOOK_BODY_LIMIT)?, &cfg, &source.tenant_id)?)
        }
    };

    let applied = transaction(db, async |db| {
        let summary = match post {
            Post::Roster(p) => roster::apply(db, meta, &source.tenant_id, &source_id, p).await?,
            Post::Results(p) => results::apply(db, meta, &source.tenant_id, &source_id, p).await?,
        };
        let recorded = db
            .execute(
                DELIVERY_RECORD_SQL,
                &[
                    uuid(&source_id),
                    webhook_id.clone().into(),
                    uuid(&source.tenant_id),
                    Value::Json(summary.clone()),
                    kind.as_str().into(),
                ],
            )
            .await;
        match recorded {
            Ok(_) => Ok(summary),
            // The same delivery was applied concurrently: undo ours, answer as it did.
            Err(e) if e.is_unique_violation("webhook_deliveries_pkey") => Err(Problem::conflict("replayed")),
            Err(e) => Err(Problem::from(e)),
        }
    })
    .await;
    match applied {
        Ok(summary) => outcome(StatusCode::OK, &summary, false),
        Err(p) if p.slug == "conflict" && p.detail.as_deref() == Some("replayed") => {
            stored_outcome(db, &source_id, &webhook_id, kind).await?.unwrap_or_else(|| Err(Problem::internal()))
        }
        Err(p) => Err(p),
    }
}
