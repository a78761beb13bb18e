//! Page cursors as a hostile client handles them: taken from another tenant,
//! another user, another list or other filters, tampered with, or looked
//! into. Every cursor the server did not issue for exactly this caller, list
//! and filters must get the answer a malformed cursor gets, byte for byte.

use crate::{Api, TestResponse};
use base64::Engine;
use serde_json::Value;

/// A cursor that no server ever issued: what every refused cursor is compared with.
pub const MALFORMED: &str = "not-a-cursor";

/// `path` with `cursor` added to its query.
pub fn with_cursor(path: &str, cursor: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}cursor={cursor}")
}

/// What a cursor decodes to (base64url without padding).
pub fn decoded(cursor: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).expect("a cursor is base64url")
}

fn encoded(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Asserts that a cursor shows nothing: not JSON, and none of `secrets`
/// (ids, usernames, names) in what it decodes to.
pub fn assert_opaque(cursor: &str, secrets: &[&str]) {
    let bytes = decoded(cursor);
    assert!(serde_json::from_slice::<Value>(&bytes).is_err(), "a cursor is not JSON: {cursor}");
    for secret in secrets {
        let secret = secret.as_bytes();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "{cursor} shows {:?}",
            String::from_utf8_lossy(secret)
        );
    }
}

/// Variants of an issued cursor that the server did not issue: a bit
/// flipped in its first, a middle and its last byte, one byte short, one
/// byte more, and its position in the clear (the format before cursors were
/// sealed).
pub fn tampered(cursor: &str, clear_position: &Value) -> Vec<(String, String)> {
    let bytes = decoded(cursor);
    let mut out = Vec::new();
    for i in [0, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        out.push((format!("byte {i} flipped"), encoded(&bad)));
    }
    out.push(("one byte short".to_owned(), encoded(&bytes[..bytes.len() - 1])));
    let mut longer = bytes.clone();
    longer.push(0);
    out.push(("one byte more".to_owned(), encoded(&longer)));
    out.push(("in the clear".to_owned(), encoded(clear_position.to_string().as_bytes())));
    out
}

/// The `next_cursor` of `GET path`, which must have one.
pub async fn next_cursor(api: &impl Api, path: &str, token: &str) -> String {
    let r = api.get(path, token).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()["next_cursor"].as_str().unwrap_or_else(|| panic!("{path} has a next page")).to_owned()
}

/// The `next_cursor` of `POST path` with `body`, which must have one.
pub async fn next_cursor_of_post(api: &impl Api, path: &str, token: &str, body: &Value) -> String {
    let r = api.post(path, Some(token), body.clone()).await;
    assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
    r.json()["next_cursor"].as_str().unwrap_or_else(|| panic!("{path} {body} has a next page")).to_owned()
}

fn same_answer(what: &str, got: &TestResponse, malformed: &TestResponse) {
    assert_eq!(
        (got.status, got.header("content-type"), got.json()),
        (malformed.status, malformed.header("content-type"), malformed.json()),
        "{what}: answered unlike a malformed cursor"
    );
}

/// Asserts that `GET path` with `cursor` is answered exactly as with a
/// malformed cursor: the 400 at `/query/cursor`, the same body.
pub async fn assert_refused(api: &impl Api, path: &str, token: &str, cursor: &str, what: &str) {
    let malformed = api.get(&with_cursor(path, MALFORMED), token).await;
    let body = malformed.assert_problem(400, "malformed-request");
    assert_eq!(body["errors"], serde_json::json!([{"pointer": "/query/cursor", "message": "malformed cursor"}]));
    same_answer(&format!("{what} on {path}"), &api.get(&with_cursor(path, cursor), token).await, &malformed);
}

/// Asserts that `POST path` with `body` and `cursor` in it is answered
/// exactly as with a malformed cursor there: the 422 at `/cursor`, the same
/// body.
pub async fn assert_refused_in_body(api: &impl Api, path: &str, token: &str, body: &Value, cursor: &str, what: &str) {
    let with = |cursor: &str| {
        let mut body = body.clone();
        body["cursor"] = cursor.into();
        body
    };
    let malformed = api.post(path, Some(token), with(MALFORMED)).await;
    let problem = malformed.assert_problem(422, "validation-failed");
    assert_eq!(problem["errors"], serde_json::json!([{"pointer": "/cursor", "message": "malformed cursor"}]));
    same_answer(&format!("{what} on {path} {body}"), &api.post(path, Some(token), with(cursor)).await, &malformed);
}
