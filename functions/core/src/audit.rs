//! Append-only audit log. Every component records security events and
//! administrative changes here, in the same transaction as the change itself,
//! so an action and its record commit or vanish together. The table rejects
//! UPDATE and DELETE (trigger in the migrations).
//!
//! Details must never contain passwords, tokens, secrets or identity numbers.

use crate::db::{uuid, Db, DbError, Value};
use crate::web::RequestMeta;

/// Who did it.
#[derive(Debug, Clone)]
pub enum Actor {
    User(String),
    /// Unauthenticated caller (e.g. a failed login).
    Anonymous,
    /// The operator CLI or a scheduled job.
    System(&'static str),
}

#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub tenant_id: Option<&'a str>,
    pub actor: Actor,
    pub action: &'a str,
    pub target_kind: Option<&'a str>,
    pub target_id: Option<&'a str>,
    pub details: serde_json::Value,
}

impl<'a> Event<'a> {
    pub fn new(tenant_id: &'a str, actor: Actor, action: &'a str) -> Self {
        Event {
            tenant_id: Some(tenant_id),
            actor,
            action,
            target_kind: None,
            target_id: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// An event done by an authenticated staff user in their own tenant.
    pub fn by(who: &'a crate::auth::Principal, action: &'a str) -> Self {
        Event::new(&who.tenant_id, Actor::User(who.user_id.clone()), action)
    }

    pub fn target(mut self, kind: &'a str, id: &'a str) -> Self {
        self.target_kind = Some(kind);
        self.target_id = Some(id);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

pub async fn record(db: &mut impl Db, meta: Option<&RequestMeta>, event: Event<'_>) -> Result<(), DbError> {
    let (actor_user, actor_label) = match &event.actor {
        Actor::User(id) => (Value::Uuid(id.clone()), "user".to_owned()),
        Actor::Anonymous => (Value::Null, "anonymous".to_owned()),
        Actor::System(name) => (Value::Null, format!("system:{name}")),
    };
    db.execute(
        "INSERT INTO audit_log (tenant_id, actor_user_id, actor, action, target_kind, target_id, \
         client_ip, request_id, details) \
         VALUES ($1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::jsonb)",
        &[
            event.tenant_id.map(uuid).unwrap_or(Value::Null),
            actor_user,
            actor_label.into(),
            event.action.into(),
            event.target_kind.into(),
            event.target_id.into(),
            meta.and_then(|m| m.client_ip.clone()).into(),
            meta.map(|m| m.request_id.clone()).into(),
            Value::Json(event.details),
        ],
    )
    .await?;
    Ok(())
}
