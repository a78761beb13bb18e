//! RFC 9457 problem details: the only error shape a client ever sees.
//! A problem carries a stable `type`, a human `title`, and for validation
//! errors a list of `{pointer, message}` items. Never a stack trace, a SQL
//! message or a secret: internal causes are logged by kind only.

use crate::db::DbError;
use http::StatusCode;
use serde::Serialize;

/// Prefix of every problem `type`; the suffix is a stable slug.
pub const TYPE_PREFIX: &str = "urn:tavle:problem:";

/// `Retry-After` of a 503 `dependency-unavailable`, in seconds. The native
/// host answers every request that needs the database with it, at once,
/// for this long after a failure to reach the database (`db::BACKOFF`).
pub const UNAVAILABLE_RETRY_AFTER: u32 = 2;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldError {
    /// RFC 6901 JSON pointer into the request body (or `/query/<name>`).
    pub pointer: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: Option<String>,
    pub errors: Vec<FieldError>,
    pub retry_after: Option<u32>,
    /// Methods the resource supports (the `Allow` header of a 405).
    pub allow: Option<&'static str>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str) -> Self {
        Problem { status, slug, title, detail: None, errors: Vec::new(), retry_after: None, allow: None }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "malformed-request", "The request is malformed").with_detail(detail)
    }

    /// 400 for bad query parameters or cursors, with pointers.
    pub fn bad_query(errors: Vec<FieldError>) -> Self {
        Problem { errors, ..Problem::malformed("invalid query parameters") }
    }

    /// 422: well-formed JSON that breaks a rule.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        Problem {
            errors,
            ..Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "The request breaks one or more rules",
            )
        }
    }

    pub fn unauthenticated() -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication is required")
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "You may not do this").with_detail(detail)
    }

    /// 404, also for ids that exist but are not visible to the caller.
    pub fn not_found() -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, "conflict", "The request conflicts with the current state")
            .with_detail(detail)
    }

    pub fn too_large(limit: usize) -> Self {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "The request body is too large")
            .with_detail(format!("the limit is {limit} bytes"))
    }

    pub fn unsupported_media_type() -> Self {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "The request body must be application/json",
        )
    }

    /// 405 with the `Allow` header listing `allow` (e.g. "GET, POST").
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Problem {
            allow: Some(allow),
            ..Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
        }
    }

    /// 503 with `Retry-After: UNAVAILABLE_RETRY_AFTER`: the database cannot
    /// be reached (or, on the native host, could not be a moment ago).
    pub fn unavailable() -> Self {
        Problem {
            retry_after: Some(UNAVAILABLE_RETRY_AFTER),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                "A dependency is unavailable; try again shortly",
            )
        }
    }

    pub fn internal() -> Self {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
    }

    pub fn type_uri(&self) -> String {
        format!("{TYPE_PREFIX}{}", self.slug)
    }

    pub fn to_json(&self, instance: Option<&str>) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status.as_u16(),
        });
        if let Some(d) = &self.detail {
            body["detail"] = d.clone().into();
        }
        if !self.errors.is_empty() {
            body["errors"] = serde_json::to_value(&self.errors).unwrap_or_default();
        }
        if let Some(i) = instance {
            body["instance"] = i.into();
        }
        body
    }
}

/// Convenience constructor for one field error.
pub fn field(pointer: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { pointer: pointer.into(), message: message.into() }
}

impl From<DbError> for Problem {
    fn from(e: DbError) -> Self {
        match &e {
            DbError::Unavailable(_) => {
                log_internal("database unavailable", &e);
                Problem::unavailable()
            }
            DbError::Conflict(_) => {
                Problem { retry_after: Some(1), ..Problem::conflict("concurrent update; retry the request") }
            }
            _ => {
                log_internal("database error", &e);
                Problem::internal()
            }
        }
    }
}

/// Internal causes go to the operator log by kind. DB messages may quote
/// values, so only the error category and SQLSTATE-level facts are printed.
fn log_internal(what: &str, e: &DbError) {
    let category = match e {
        DbError::Unavailable(_) => "unavailable".to_owned(),
        DbError::Constraint { code, constraint } => format!("constraint {code} {constraint}"),
        DbError::Conflict(_) => "conflict".to_owned(),
        // Query messages can quote values; only debug builds (tests) show them.
        DbError::Query(m) if cfg!(debug_assertions) => format!("query {m}"),
        DbError::Query(_) => "query".to_owned(),
        DbError::Decode(m) => format!("decode {m}"),
    };
    eprintln!("error: {what}: {category}");
}
