//! Every query yields at least one row.
//!
//! Released Spin 4.0.x (spinframework/spin#3671, `../shared/tools/spin/README.md`)
//! never returns from a `pg4` `query` whose statement yields zero rows: the host
//! waits for column information that only arrives with the first row. So each
//! query is rewritten to carry one marker column and, when the statement itself
//! yields nothing, one marker row:
//!
//! ```sql
//! WITH <the statement's own CTEs,> __tavle_q AS (<statement>)
//! SELECT __tavle_d.* FROM (VALUES (0)) AS __tavle_v (__tavle_v)
//! LEFT JOIN (SELECT true AS __tavle_row, __tavle_q.* FROM __tavle_q) AS __tavle_d ON true
//! ```
//!
//! Real rows carry `__tavle_row = true`; the marker row is all NULL and is
//! dropped again by [`unwrap`], so handlers never see either. The statement's
//! own leading `WITH` list is hoisted to the top level because PostgreSQL
//! allows data-modifying CTEs only there; `INSERT … RETURNING` and
//! `UPDATE … RETURNING` work as they are. Row order is the statement's own: a
//! nested loop over one outer row emits the inner rows in their order.
//!
//! Both backends run the rewritten text, so every native test exercises it;
//! it also works unchanged on Spin releases that carry the upstream fix.

use super::{DbError, Row, Value};
use std::sync::Arc;

/// Name of the marker column: `true` on real rows, NULL on the marker row.
pub const COLUMN: &str = "__tavle_row";

/// The statement rewritten to always yield a row (see the module docs).
pub fn wrap(sql: &str) -> Result<String, DbError> {
    let (ctes, main) = split_leading_with(sql).map_err(|e| DbError::Query(format!("cannot wrap statement: {e}")))?;
    let main = main.trim_end().trim_end_matches(';');
    let head = match ctes {
        Some(list) => format!("{list},"),
        None => "WITH".to_owned(),
    };
    // The newline keeps a trailing `--` comment from swallowing the parenthesis.
    Ok(format!(
        "{head} __tavle_q AS ({main}\n) SELECT __tavle_d.* FROM (VALUES (0)) AS __tavle_v (__tavle_v) \
         LEFT JOIN (SELECT true AS {COLUMN}, __tavle_q.* FROM __tavle_q) AS __tavle_d ON true"
    ))
}

/// The statement's own rows: the marker column removed, the marker row dropped.
pub fn unwrap(columns: Vec<String>, rows: Vec<Vec<Value>>) -> Result<Vec<Row>, DbError> {
    if columns.first().map(String::as_str) != Some(COLUMN) {
        return Err(DbError::Decode("query result lacks the marker column".into()));
    }
    let columns: Arc<[String]> = columns.into_iter().skip(1).collect();
    let mut out = Vec::with_capacity(rows.len());
    for mut values in rows {
        if values.is_empty() {
            return Err(DbError::Decode("query row lacks the marker column".into()));
        }
        match values.remove(0) {
            Value::Bool(true) => out.push(Row::new(columns.clone(), values)?),
            Value::Null => {}
            _ => return Err(DbError::Decode("unexpected marker column value".into())),
        }
    }
    Ok(out)
}

/// Splits `WITH a AS (…), b AS (…) <main>` into (`WITH a AS (…), b AS (…)`,
/// `<main>`); a statement without a leading `WITH` is all main.
///
/// A small scanner, not a SQL parser: it skips whitespace, comments, string
/// literals (standard, `E'…'`, dollar-quoted) and quoted identifiers, and
/// follows parentheses, which is all it takes to find where the list of
/// common table expressions ends. It runs on Tavle's own SQL only (client
/// values are bound parameters). Not supported: the `SEARCH`/`CYCLE`
/// clauses of recursive CTEs (a statement using them fails with a syntax
/// error, it is never split into something else).
pub fn split_leading_with(sql: &str) -> Result<(Option<&str>, &str), &'static str> {
    let b = sql.as_bytes();
    let mut i = skip_space(b, 0)?;
    if !keyword_at(b, i, "with") {
        return Ok((None, sql));
    }
    i = skip_space(b, i + 4)?;
    if keyword_at(b, i, "recursive") {
        i = skip_space(b, i + 9)?;
    }
    loop {
        // name [ (columns) ] AS [ [NOT] MATERIALIZED ] ( body )
        i = skip_space(b, skip_name(b, i)?)?;
        if b.get(i) == Some(&b'(') {
            i = skip_space(b, skip_group(b, i)?)?;
        }
        if !keyword_at(b, i, "as") {
            return Err("expected AS in a WITH list");
        }
        i = skip_space(b, i + 2)?;
        if keyword_at(b, i, "not") {
            i = skip_space(b, i + 3)?;
        }
        if keyword_at(b, i, "materialized") {
            i = skip_space(b, i + 12)?;
        }
        if b.get(i) != Some(&b'(') {
            return Err("expected a parenthesised query in a WITH list");
        }
        let end = skip_group(b, i)?;
        i = skip_space(b, end)?;
        if b.get(i) == Some(&b',') {
            i = skip_space(b, i + 1)?;
            continue;
        }
        if i >= b.len() {
            return Err("a WITH list without a statement");
        }
        return Ok((Some(&sql[..end]), &sql[end..]));
    }
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// True when the keyword (lower case) stands at `i` as a whole word.
fn keyword_at(b: &[u8], i: usize, word: &str) -> bool {
    let w = word.as_bytes();
    b.len() >= i + w.len()
        && b[i..i + w.len()].eq_ignore_ascii_case(w)
        && b.get(i + w.len()).is_none_or(|c| !is_ident_byte(*c))
        && (i == 0 || !is_ident_byte(b[i - 1]))
}

/// Past whitespace and comments.
fn skip_space(b: &[u8], mut i: usize) -> Result<usize, &'static str> {
    loop {
        match (b.get(i), b.get(i + 1)) {
            (Some(c), _) if c.is_ascii_whitespace() => i += 1,
            (Some(b'-'), Some(b'-')) => {
                while b.get(i).is_some_and(|c| *c != b'\n') {
                    i += 1;
                }
            }
            (Some(b'/'), Some(b'*')) => i = skip_block_comment(b, i)?,
            _ => return Ok(i),
        }
    }
}

fn skip_block_comment(b: &[u8], mut i: usize) -> Result<usize, &'static str> {
    // Block comments nest in PostgreSQL.
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err("unterminated comment")
}

/// Past an identifier, plain or double-quoted.
fn skip_name(b: &[u8], i: usize) -> Result<usize, &'static str> {
    match b.get(i) {
        Some(b'"') => skip_quoted(b, i, b'"', false),
        Some(c) if is_ident_byte(*c) && !c.is_ascii_digit() && *c != b'$' => {
            let mut j = i;
            while b.get(j).is_some_and(|c| is_ident_byte(*c)) {
                j += 1;
            }
            Ok(j)
        }
        _ => Err("expected a name in a WITH list"),
    }
}

/// Past a quoted token starting at `i` (`'…'` or `"…"`, the quote doubled to
/// escape it; with `backslash`, `\` escapes the next byte as in `E'…'`).
fn skip_quoted(b: &[u8], i: usize, quote: u8, backslash: bool) -> Result<usize, &'static str> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if backslash => j += 2,
            c if c == quote => {
                if b.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    return Ok(j + 1);
                }
            }
            _ => j += 1,
        }
    }
    Err("unterminated quoted text")
}

/// At `$`: past a dollar-quoted string (`$$…$$`, `$tag$…$tag$`), or `None`
/// when this `$` starts a parameter (`$1`) instead.
fn skip_dollar_quoted(b: &[u8], i: usize) -> Result<Option<usize>, &'static str> {
    let mut j = i + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        return Ok(None);
    }
    while b.get(j).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80) {
        j += 1;
    }
    if b.get(j) != Some(&b'$') {
        return Ok(None);
    }
    let tag = &b[i..=j];
    let mut k = j + 1;
    while k + tag.len() <= b.len() {
        if &b[k..k + tag.len()] == tag {
            return Ok(Some(k + tag.len()));
        }
        k += 1;
    }
    Err("unterminated dollar-quoted text")
}

/// At `(`: past its matching `)`.
fn skip_group(b: &[u8], start: usize) -> Result<usize, &'static str> {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && is_ident_byte(b[i - 1]);
        match c {
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            b'\'' => {
                // E'…' (escape string): the E is a token of its own before the quote.
                let escape = i > 0 && (b[i - 1] == b'e' || b[i - 1] == b'E') && (i == 1 || !is_ident_byte(b[i - 2]));
                i = skip_quoted(b, i, b'\'', escape)?;
            }
            b'"' => i = skip_quoted(b, i, b'"', false)?,
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_space(b, i)?,
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i)?,
            b'$' if !prev_ident => match skip_dollar_quoted(b, i)? {
                Some(end) => i = end,
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    Err("unbalanced parentheses")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_without_with_are_all_main() {
        assert_eq!(split_leading_with("SELECT 1").unwrap(), (None, "SELECT 1"));
        assert_eq!(split_leading_with("  withheld").unwrap(), (None, "  withheld"));
        assert_eq!(split_leading_with("INSERT INTO t VALUES (1) RETURNING id").unwrap().0, None);
    }

    #[test]
    fn the_with_list_is_found_past_strings_comments_and_column_lists() {
        let sql = "WITH a (x, y) AS MATERIALIZED (SELECT ')', \"(\" FROM t -- )\n), \
                   b AS NOT MATERIALIZED (SELECT $q$ ) $q$, E'\\')', $1::text /* ( */) \
                   UPDATE t SET v = 1 RETURNING id";
        let (ctes, main) = split_leading_with(sql).unwrap();
        assert!(ctes.unwrap().ends_with("/* ( */)"), "{ctes:?}");
        assert_eq!(main.trim(), "UPDATE t SET v = 1 RETURNING id");
        let (ctes, main) = split_leading_with("with recursive r as (select 1) (select * from r)").unwrap();
        assert_eq!(ctes, Some("with recursive r as (select 1)"));
        assert_eq!(main, " (select * from r)");
    }

    #[test]
    fn malformed_lists_are_refused_not_guessed() {
        for sql in ["WITH", "WITH a AS (SELECT 1", "WITH a AS (SELECT 1)", "WITH a (SELECT 1) SELECT 1", "WITH 'x'"] {
            assert!(split_leading_with(sql).is_err(), "{sql}");
        }
    }

    #[test]
    fn wrapping_hoists_the_list_and_unwrapping_drops_the_marker() {
        let wrapped = wrap("WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d;").unwrap();
        assert!(wrapped.starts_with("WITH d AS (DELETE FROM t RETURNING id), __tavle_q AS ( SELECT id FROM d\n)"));
        let cols = vec![COLUMN.to_owned(), "id".to_owned()];
        let none = unwrap(cols.clone(), vec![vec![Value::Null, Value::Null]]).unwrap();
        assert!(none.is_empty());
        let two =
            unwrap(cols, vec![vec![Value::Bool(true), Value::Int(1)], vec![Value::Bool(true), Value::Int(2)]]).unwrap();
        assert_eq!(two.iter().map(|r| r.int("id").unwrap()).collect::<Vec<_>>(), [1, 2]);
        assert!(unwrap(vec!["id".into()], vec![]).is_err(), "a result without the marker is refused");
    }

    proptest::proptest! {
        #[test]
        fn the_scanner_never_panics(sql in "\\PC{0,60}", prefix in "(WITH|with recursive|WITH a AS \\(|)") {
            let sql = format!("{prefix}{sql}");
            let _ = split_leading_with(&sql);
            let _ = wrap(&sql);
        }
    }
}
