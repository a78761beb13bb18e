//! Webhooks signed by an independent Standard Webhooks implementation — the
//! PyPI `standardwebhooks` package, through `tests/python/sign_webhook.py` —
//! verify in the ingest component, so the project's verification is not only
//! checked against its own signing code.
//!
//! The package and its virtual environment: `tavle_tests::python`.

use serde_json::json;
use tavle_tests::python::python_sign;
use tavle_tests::{synthetic_id, unix_now, Api, TestApp};

#[tokio::test]
async fn rosters_signed_by_the_pypi_package_verify_and_tampering_or_staleness_is_rejected() {
    let app = TestApp::spawn().await;
    let staff = app.seed_tenant("bergen").await;
    let session = app.login(&staff).await;
    let source = app.create_source(&session, "sas").await;
    let path = format!("/ingest/{}/roster", source.id);
    let body = json!({
        "school": {"external_id": "s1", "name": "Skole"},
        "groups": [{"external_id": "5A", "name": "5A", "year_level": 5}],
        "pupils": [{
            "identity_number": synthetic_id(1),
            "given_name": "Åse",
            "family_name": "Ødegård",
            "year_level": 5,
            "groups": ["5A"],
        }],
    })
    .to_string();

    // Signed by the PyPI package: accepted and applied.
    let now = unix_now();
    let signature = python_sign(&source.secret, "msg_py_1", now, &body);
    let r = app.post_signed(&path, "msg_py_1", now, &signature, body.as_bytes()).await;
    assert_eq!(r.status, 200, "a roster signed by the PyPI package was not accepted: {}", r.text());
    assert_eq!(app.count("SELECT count(*) FROM pupils").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM webhook_deliveries").await, 1);
    let before = app.snapshot(true).await;

    // The same signature over a body with one byte changed ("Skole" -> "Skola").
    let at = body.find("Skole").expect("the body names the school") + "Skol".len();
    let mut tampered = body.clone().into_bytes();
    tampered[at] = b'a';
    let now = unix_now();
    let signature = python_sign(&source.secret, "msg_py_2", now, &body);
    let r = app.post_signed(&path, "msg_py_2", now, &signature, &tampered).await;
    r.assert_problem(401, "invalid-signature");

    // Correctly signed by the PyPI package, but 6 minutes old.
    let stale = unix_now() - 6 * 60;
    let signature = python_sign(&source.secret, "msg_py_3", stale, &body);
    let r = app.post_signed(&path, "msg_py_3", stale, &signature, body.as_bytes()).await;
    let problem = r.assert_problem(401, "invalid-signature");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("old")), "not rejected as stale: {problem}");

    assert_eq!(app.snapshot(true).await, before, "a rejected delivery changed the database");
    assert_eq!(app.count("SELECT count(*) FROM pupils").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM webhook_deliveries").await, 1);
}

#[test]
fn the_pypi_package_and_the_rust_crate_sign_identically() {
    // The example of the Standard Webhooks specification, then an own secret
    // with a body of non-ASCII text (signed as UTF-8 by both).
    let spec_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let spec_body = r#"{"test": 2432232314}"#;
    let spec_signature = python_sign(spec_secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, spec_body);
    assert_eq!(spec_signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");

    let cases = [
        (spec_secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, spec_body),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            1_700_000_000,
            r#"{"school":{"external_id":"s1","name":"Skole"},"pupils":[{"given_name":"Åse","family_name":"Ødegård"}]}"#,
        ),
    ];
    for (secret, id, timestamp, body) in cases {
        let rust = standardwebhooks::Webhook::new(secret).unwrap().sign(id, timestamp, body.as_bytes()).unwrap();
        assert_eq!(python_sign(secret, id, timestamp, body), rust, "signatures differ for {id}");
    }
}
