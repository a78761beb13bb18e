//! The record of processing (GDPR Art. 30): `GET /privacy/inventory`.
//!
//! Generated from the schema: every column of every table in schema
//! `public` as the catalogue has it (with its data type), joined with the
//! data inventory (migration `0012_data_inventory.sql`): each table's
//! purpose, legal basis and retention, which subjects' exports include it,
//! and each column's data category. A table or column the inventory does
//! not classify is listed as `unclassified`, never left out (the inventory
//! tests fail on it first).
//!
//! The catalogue is read from `pg_attribute` rather than
//! `information_schema.columns`, which shows only the tables the current
//! role holds a privilege on: the application role may not read, for
//! example, the access log's chain heads and checkpoints, and they belong in
//! the record all the same. Names and types of columns are not personal
//! data, so the read writes no access record.

use serde_json::{json, Value as Json};
use tavle_core::auth::{authenticate, Role};
use tavle_core::db::Db;
use tavle_core::vars::Variables;
use tavle_core::web::{json, Body, HttpResult};
use tavle_core::Problem;

/// `GET /privacy/inventory`, for privacy officers and tenant admins.
pub async fn get(req: &http::Request<Body>, vars: &impl Variables, db: &mut impl Db) -> HttpResult {
    let who = authenticate(req, db, vars).await?;
    if !(who.has_role(Role::PrivacyOfficer) || who.has_role(Role::TenantAdmin)) {
        return Err(Problem::forbidden("requires the privacy_officer or tenant_admin role"));
    }
    let rows = db
        .query(
            "SELECT c.relname::text AS table_name, a.attname::text AS column_name, \
                    format_type(a.atttypid, a.atttypmod) AS data_type, \
                    it.purpose, it.legal_basis, it.retention, \
                    it.pupil_filter IS NOT NULL AS pupil, it.user_filter IS NOT NULL AS staff, \
                    coalesce(ic.category, 'unclassified') AS category \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public' \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN data_inventory_tables it ON it.table_name = c.relname::text \
             LEFT JOIN data_inventory_columns ic ON ic.table_name = c.relname::text AND ic.column_name = a.attname::text \
             WHERE c.relkind IN ('r', 'p') \
             ORDER BY c.relname, a.attnum",
            &[],
        )
        .await?;
    let mut tables: Vec<Json> = Vec::new();
    for r in &rows {
        let name = r.text("table_name")?;
        if tables.last().is_none_or(|t| t["table"] != name.as_str()) {
            let mut exported_for = Vec::new();
            // A table the inventory does not know is exported for no one.
            if !r.is_null("purpose")? {
                if r.bool("pupil")? {
                    exported_for.push("pupil");
                }
                if r.bool("staff")? {
                    exported_for.push("user");
                }
            }
            let unclassified = "unclassified (not in the data inventory)";
            tables.push(json!({
                "table": name,
                "purpose": r.opt_text("purpose")?.unwrap_or_else(|| unclassified.into()),
                "legal_basis": r.opt_text("legal_basis")?.unwrap_or_else(|| unclassified.into()),
                "retention": r.opt_text("retention")?.unwrap_or_else(|| unclassified.into()),
                "exported_for": exported_for,
                "columns": [],
            }));
        }
        let table = tables.last_mut().ok_or_else(Problem::internal)?;
        if let Some(columns) = table["columns"].as_array_mut() {
            columns.push(json!({
                "column": r.text("column_name")?,
                "data_type": r.text("data_type")?,
                "category": r.text("category")?,
            }));
        }
    }
    json(http::StatusCode::OK, &json!({ "tables": tables }))
}
