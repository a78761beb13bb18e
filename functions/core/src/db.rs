//! One small database interface with two implementations: Spin's PostgreSQL
//! client (`pg4`) on wasm and `sqlx` natively. Both run the same SQL text.
//!
//! Conventions that keep the two implementations equivalent:
//! - every parameter is written with an explicit cast matching its [`Value`]
//!   variant (`$1::uuid`, `$2::text`, `$3::int8`, `$4::bool`, `$5::bytea`,
//!   `$6::jsonb`, `$7::text[]`), because Spin's host lets the server infer
//!   parameter types while sqlx declares them;
//! - timestamps leave the database as RFC 3339 text (`rfc3339(ts)` SQL
//!   function from the migrations) and enter it as text cast in SQL, so no
//!   driver-specific date handling is involved. The native implementation
//!   refuses column types outside this subset so tests catch drift.
//! - a connection is opened lazily on first use: requests rejected before
//!   touching the database never open one.

use std::fmt;

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Uuid(String),
    Bytes(Vec<u8>),
    Json(serde_json::Value),
    TextArray(Vec<String>),
    IntArray(Vec<i64>),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::Json(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Shorthand for a uuid parameter (ids are opaque strings to clients).
pub fn uuid(v: impl Into<String>) -> Value {
    Value::Uuid(v.into())
}

/// One result row; columns are addressed by position, as selected.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, DbError> {
        self.0.get(i).ok_or_else(|| DbError::Decode(format!("no column {i}")))
    }
    pub fn is_null(&self, i: usize) -> bool {
        matches!(self.0.get(i), Some(Value::Null) | None)
    }
    /// Text or uuid column as a string.
    pub fn text(&self, i: usize) -> Result<String, DbError> {
        match self.at(i)? {
            Value::Text(s) | Value::Uuid(s) => Ok(s.clone()),
            other => Err(DbError::Decode(format!("column {i}: expected text, got {}", kind(other)))),
        }
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        if self.is_null(i) {
            Ok(None)
        } else {
            self.text(i).map(Some)
        }
    }
    pub fn int(&self, i: usize) -> Result<i64, DbError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(DbError::Decode(format!("column {i}: expected integer, got {}", kind(other)))),
        }
    }
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        if self.is_null(i) {
            Ok(None)
        } else {
            self.int(i).map(Some)
        }
    }
    pub fn float(&self, i: usize) -> Result<f64, DbError> {
        match self.at(i)? {
            Value::Float(v) => Ok(*v),
            other => Err(DbError::Decode(format!("column {i}: expected float, got {}", kind(other)))),
        }
    }
    pub fn opt_float(&self, i: usize) -> Result<Option<f64>, DbError> {
        if self.is_null(i) {
            Ok(None)
        } else {
            self.float(i).map(Some)
        }
    }
    pub fn bool(&self, i: usize) -> Result<bool, DbError> {
        match self.at(i)? {
            Value::Bool(v) => Ok(*v),
            other => Err(DbError::Decode(format!("column {i}: expected bool, got {}", kind(other)))),
        }
    }
    pub fn bytes(&self, i: usize) -> Result<Vec<u8>, DbError> {
        match self.at(i)? {
            Value::Bytes(v) => Ok(v.clone()),
            other => Err(DbError::Decode(format!("column {i}: expected bytes, got {}", kind(other)))),
        }
    }
    pub fn json(&self, i: usize) -> Result<serde_json::Value, DbError> {
        match self.at(i)? {
            Value::Json(v) => Ok(v.clone()),
            Value::Null => Ok(serde_json::Value::Null),
            other => Err(DbError::Decode(format!("column {i}: expected json, got {}", kind(other)))),
        }
    }
    pub fn text_array(&self, i: usize) -> Result<Vec<String>, DbError> {
        match self.at(i)? {
            Value::TextArray(v) => Ok(v.clone()),
            Value::Null => Ok(Vec::new()),
            other => Err(DbError::Decode(format!("column {i}: expected text[], got {}", kind(other)))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Int(_) => "integer",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Uuid(_) => "uuid",
        Value::Bytes(_) => "bytes",
        Value::Json(_) => "json",
        Value::TextArray(_) => "text[]",
        Value::IntArray(_) => "int[]",
    }
}

/// Database errors. `Display` is for operators' logs only and never reaches a
/// client (see `Problem::from(DbError)`); SQL messages are not echoed.
#[derive(Debug)]
pub enum DbError {
    /// The database cannot be reached: clients get 503 + Retry-After.
    Unavailable(String),
    /// A constraint violation, identified by SQLSTATE and constraint name.
    Constraint { code: String, constraint: String },
    /// Serialization failure / deadlock: safe to retry the whole transaction.
    Conflict(String),
    /// Any other query failure.
    Query(String),
    /// A column could not be decoded as asked.
    Decode(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Unavailable(m) => write!(f, "database unavailable: {m}"),
            DbError::Constraint { code, constraint } => {
                write!(f, "constraint violation {code} on {constraint}")
            }
            DbError::Conflict(m) => write!(f, "transaction conflict: {m}"),
            DbError::Query(m) => write!(f, "query failed: {m}"),
            DbError::Decode(m) => write!(f, "decode failed: {m}"),
        }
    }
}

impl std::error::Error for DbError {}

impl DbError {
    /// True for a unique violation on the named constraint.
    pub fn is_unique_violation(&self, name: &str) -> bool {
        matches!(self, DbError::Constraint { code, constraint } if code == "23505" && constraint == name)
    }

    fn from_sqlstate(code: &str, constraint: Option<&str>, message: String) -> DbError {
        match code {
            "40001" | "40P01" => DbError::Conflict(message),
            c if c.starts_with("23") => {
                DbError::Constraint { code: c.to_owned(), constraint: constraint.unwrap_or_default().to_owned() }
            }
            c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => DbError::Unavailable(message),
            _ => DbError::Query(message),
        }
    }
}

/// The database interface every component uses: one connection per request.
#[allow(async_fn_in_trait)] // handlers run on one thread per request; no Send bound wanted
pub trait Db {
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;

    async fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }
    async fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, DbError> {
        self.query_opt(sql, params).await?.ok_or_else(|| DbError::Decode("expected one row, got none".into()))
    }
}

/// Runs `body` inside one explicit transaction: committed when it returns Ok,
/// rolled back when it returns Err, so a rejected request changes nothing.
pub async fn transaction<D, T, E>(db: &mut D, body: impl AsyncFnOnce(&mut D) -> Result<T, E>) -> Result<T, E>
where
    D: Db,
    E: From<DbError>,
{
    db.execute("BEGIN", &[]).await?;
    match body(db).await {
        Ok(value) => {
            db.execute("COMMIT", &[]).await?;
            Ok(value)
        }
        Err(err) => {
            // The original error matters more than a failed rollback; a
            // connection whose rollback failed is closed by the driver.
            let _ = db.execute("ROLLBACK", &[]).await;
            Err(err)
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::SqlxDb;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::{Db, DbError, Row, Value};
    use sqlx::pool::PoolConnection;
    use sqlx::postgres::{PgArguments, PgPool, PgRow};
    use sqlx::{Arguments, Column, Executor, Postgres, Row as _, TypeInfo, ValueRef};

    /// Native implementation: one pooled connection, acquired on first use.
    pub struct SqlxDb {
        pool: PgPool,
        conn: Option<PoolConnection<Postgres>>,
        in_transaction: bool,
    }

    impl SqlxDb {
        pub fn new(pool: PgPool) -> Self {
            SqlxDb { pool, conn: None, in_transaction: false }
        }

        async fn conn(&mut self) -> Result<&mut PoolConnection<Postgres>, DbError> {
            if self.conn.is_none() {
                let conn = self.pool.acquire().await.map_err(map_err)?;
                self.conn = Some(conn);
            }
            Ok(self.conn.as_mut().expect("connection just set"))
        }

        fn track_transaction(&mut self, sql: &str) {
            match sql {
                "BEGIN" => self.in_transaction = true,
                "COMMIT" | "ROLLBACK" => self.in_transaction = false,
                _ => {}
            }
        }
    }

    impl Drop for SqlxDb {
        fn drop(&mut self) {
            // A connection left inside a transaction (panic, cancelled future)
            // must never be reused by another request: close it instead.
            if self.in_transaction {
                if let Some(conn) = self.conn.take() {
                    drop(conn.detach());
                }
            }
        }
    }

    /// The cast written after each `$n` in the SQL text (`$1::uuid` → "uuid").
    /// The convention of this module requires one for every parameter.
    fn param_casts(sql: &str, count: usize) -> Result<Vec<String>, DbError> {
        let mut casts = vec![String::new(); count];
        let bytes = sql.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                if end > start {
                    let n: usize = sql[start..end].parse().unwrap_or(0);
                    if sql[end..].starts_with("::") {
                        let ty: String = sql[end + 2..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '[' || *c == ']')
                            .collect();
                        if (1..=count).contains(&n) && casts[n - 1].is_empty() {
                            casts[n - 1] = ty;
                        }
                    }
                }
                i = end.max(i + 1);
            } else {
                i += 1;
            }
        }
        if let Some(missing) = casts.iter().position(String::is_empty) {
            return Err(DbError::Query(format!("parameter ${} has no explicit cast", missing + 1)));
        }
        Ok(casts)
    }

    /// Binds parameters. NULLs are bound with the type of their cast:
    /// sqlx caches prepared statements by SQL text, so a NULL bound as text
    /// would fix that parameter's type for later, non-NULL executions.
    fn arguments(sql: &str, params: &[Value]) -> Result<PgArguments, DbError> {
        let casts = param_casts(sql, params.len())?;
        let mut args = PgArguments::default();
        for (p, cast) in params.iter().zip(&casts) {
            let r = match p {
                Value::Null => match cast.as_str() {
                    "uuid" => args.add(Option::<uuid::Uuid>::None),
                    "int8" | "int" | "int4" => args.add(Option::<i64>::None),
                    "bool" => args.add(Option::<bool>::None),
                    "bytea" => args.add(Option::<Vec<u8>>::None),
                    "jsonb" => args.add(Option::<sqlx::types::Json<serde_json::Value>>::None),
                    "float8" => args.add(Option::<f64>::None),
                    "text[]" => args.add(Option::<Vec<String>>::None),
                    "int8[]" => args.add(Option::<Vec<i64>>::None),
                    _ => args.add(Option::<String>::None),
                },
                Value::Bool(v) => args.add(*v),
                Value::Int(v) => args.add(*v),
                Value::Float(v) => args.add(*v),
                Value::Text(v) => args.add(v.clone()),
                Value::Uuid(v) => match uuid::Uuid::parse_str(v) {
                    Ok(u) => args.add(u),
                    Err(_) => return Err(DbError::Query("invalid uuid parameter".into())),
                },
                Value::Bytes(v) => args.add(v.clone()),
                Value::Json(v) => args.add(sqlx::types::Json(v.clone())),
                Value::TextArray(v) => args.add(v.clone()),
                Value::IntArray(v) => args.add(v.clone()),
            };
            r.map_err(|e| DbError::Query(format!("bind: {e}")))?;
        }
        Ok(args)
    }

    fn decode(row: &PgRow) -> Result<Row, DbError> {
        let mut out = Vec::with_capacity(row.columns().len());
        for (i, col) in row.columns().iter().enumerate() {
            let raw = row.try_get_raw(i).map_err(map_err)?;
            if raw.is_null() {
                out.push(Value::Null);
                continue;
            }
            let de = |e: sqlx::Error| DbError::Decode(format!("{}: {e}", col.name()));
            let v = match col.type_info().name() {
                "BOOL" => Value::Bool(row.try_get(i).map_err(de)?),
                "INT2" => Value::Int(row.try_get::<i16, _>(i).map_err(de)?.into()),
                "INT4" => Value::Int(row.try_get::<i32, _>(i).map_err(de)?.into()),
                "INT8" => Value::Int(row.try_get(i).map_err(de)?),
                "FLOAT8" => Value::Float(row.try_get(i).map_err(de)?),
                "TEXT" | "VARCHAR" | "NAME" => Value::Text(row.try_get(i).map_err(de)?),
                "UUID" => Value::Uuid(row.try_get::<uuid::Uuid, _>(i).map_err(de)?.to_string()),
                "BYTEA" => Value::Bytes(row.try_get(i).map_err(de)?),
                "JSONB" => Value::Json(row.try_get(i).map_err(de)?),
                "TEXT[]" => Value::TextArray(row.try_get(i).map_err(de)?),
                "INT8[]" => Value::IntArray(row.try_get(i).map_err(de)?),
                // Deliberately narrow: timestamps must be selected as rfc3339 text.
                other => return Err(DbError::Decode(format!("column {} has unsupported type {other}", col.name()))),
            };
            out.push(v);
        }
        Ok(Row(out))
    }

    pub(super) fn map_err(e: sqlx::Error) -> DbError {
        match e {
            sqlx::Error::Database(db) => {
                DbError::from_sqlstate(db.code().as_deref().unwrap_or(""), db.constraint(), db.message().to_owned())
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                DbError::Unavailable(e.to_string())
            }
            other => DbError::Query(other.to_string()),
        }
    }

    impl Db for SqlxDb {
        async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
            let args = arguments(sql, params)?;
            let conn = self.conn().await?;
            let rows = conn.fetch_all(sqlx::query_with(sql, args)).await.map_err(map_err)?;
            rows.iter().map(decode).collect()
        }

        async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
            self.track_transaction(sql);
            let conn = self.conn().await?;
            let done = if params.is_empty() && matches!(sql, "BEGIN" | "COMMIT" | "ROLLBACK") {
                conn.execute(sqlx::raw_sql(sql)).await
            } else {
                conn.execute(sqlx::query_with(sql, arguments(sql, params)?)).await
            }
            .map_err(map_err)?;
            Ok(done.rows_affected())
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn casts_are_read_from_the_sql() {
            let casts = super::param_casts("SELECT $1::uuid, $2::text[], ($3::int8 + $1::uuid)", 3).unwrap();
            assert_eq!(casts, ["uuid", "text[]", "int8"]);
            assert!(super::param_casts("SELECT $1", 1).is_err(), "every parameter needs a cast");
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use spin::SpinDb;

#[cfg(target_arch = "wasm32")]
mod spin {
    use super::{Db, DbError, Row, Value};
    use spin_sdk::pg4::{Connection, DbValue, ParameterValue, PgError, QueryError};

    /// Spin implementation: a `pg4` connection to the address from the
    /// component's `db_url` variable, opened on first use.
    pub struct SpinDb {
        address: String,
        conn: Option<Connection>,
    }

    impl SpinDb {
        pub fn new(address: String) -> Self {
            SpinDb { address, conn: None }
        }

        fn conn(&mut self) -> Result<&Connection, DbError> {
            if self.conn.is_none() {
                let conn = Connection::open(&self.address).map_err(map_err)?;
                self.conn = Some(conn);
            }
            Ok(self.conn.as_ref().expect("connection just set"))
        }
    }

    fn param(v: &Value) -> ParameterValue {
        match v {
            Value::Null => ParameterValue::DbNull,
            Value::Bool(b) => ParameterValue::Boolean(*b),
            Value::Int(i) => ParameterValue::Int64(*i),
            Value::Float(f) => ParameterValue::Floating64(*f),
            Value::Text(s) => ParameterValue::Str(s.clone()),
            Value::Uuid(s) => ParameterValue::Uuid(s.clone()),
            Value::Bytes(b) => ParameterValue::Binary(b.clone()),
            Value::Json(j) => ParameterValue::Jsonb(serde_json::to_vec(j).unwrap_or_default()),
            Value::TextArray(a) => ParameterValue::ArrayStr(a.iter().cloned().map(Some).collect()),
            Value::IntArray(a) => ParameterValue::ArrayInt64(a.iter().copied().map(Some).collect()),
        }
    }

    fn value(v: &DbValue) -> Result<Value, DbError> {
        Ok(match v {
            DbValue::DbNull => Value::Null,
            DbValue::Boolean(b) => Value::Bool(*b),
            DbValue::Int8(i) => Value::Int((*i).into()),
            DbValue::Int16(i) => Value::Int((*i).into()),
            DbValue::Int32(i) => Value::Int((*i).into()),
            DbValue::Int64(i) => Value::Int(*i),
            DbValue::Floating64(f) => Value::Float(*f),
            DbValue::Str(s) => Value::Text(s.clone()),
            DbValue::Uuid(s) => Value::Uuid(s.clone()),
            DbValue::Binary(b) => Value::Bytes(b.clone()),
            DbValue::Jsonb(b) => Value::Json(serde_json::from_slice(b).map_err(|e| DbError::Decode(e.to_string()))?),
            DbValue::ArrayStr(a) => Value::TextArray(a.iter().flatten().cloned().collect()),
            DbValue::ArrayInt64(a) => Value::IntArray(a.iter().flatten().copied().collect()),
            _ => return Err(DbError::Decode("unsupported column type".into())),
        })
    }

    fn map_err(e: PgError) -> DbError {
        match e {
            PgError::ConnectionFailed(m) => DbError::Unavailable(m),
            PgError::QueryFailed(QueryError::DbError(d)) => {
                let constraint =
                    d.extras.iter().find(|(k, _)| k == "constraint" || k == "constraint_name").map(|(_, v)| v.as_str());
                DbError::from_sqlstate(&d.code, constraint, d.message)
            }
            other => DbError::Query(format!("{other:?}")),
        }
    }

    impl Db for SpinDb {
        async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
            let params: Vec<ParameterValue> = params.iter().map(param).collect();
            let set = self.conn()?.query(sql, &params).map_err(map_err)?;
            set.rows.iter().map(|r| r.iter().map(value).collect::<Result<Vec<_>, _>>().map(Row)).collect()
        }

        async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
            let params: Vec<ParameterValue> = params.iter().map(param).collect();
            self.conn()?.execute(sql, &params).map_err(map_err)
        }
    }
}
