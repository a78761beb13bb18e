//! Every component on real Spin: the end-to-end scenario (`tavle_tests::scenario`)
//! runs on `spin up` with the release `.wasm` files and the project's own
//! spin.toml, and on the native host over HTTP, and both must give the same
//! answers: same status codes, problem types, content types and JSON shapes,
//! and the same access records. Then what only Spin shows, each proved on Spin.

use tavle_tests::http::{start_native, HttpClient};
use tavle_tests::scenario::{self, access_records};
use tavle_tests::spin::SpinApp;
use tavle_tests::TestApp;

#[tokio::test]
async fn the_scenario_gives_the_same_answers_on_spin_and_natively() {
    let native_app = TestApp::spawn().await;
    let native = HttpClient::new(start_native(&native_app.variables, 2));
    let on_native = scenario::run(&native, &native_app).await;

    let spin_app = TestApp::spawn().await;
    let spin = SpinApp::start_project(&spin_app.variables);
    let on_spin = scenario::run(&spin.client(), &spin_app).await;

    assert_eq!(on_native.steps.len(), on_spin.steps.len());
    for (n, s) in on_native.steps.iter().zip(&on_spin.steps) {
        assert_eq!(n, s, "step `{}` differs between the native host (left) and Spin (right)", n.name);
    }
    let (native_records, spin_records) =
        (access_records(&native_app, "oslo").await, access_records(&spin_app, "oslo").await);
    assert!(!spin_records.is_empty());
    assert_eq!(native_records, spin_records, "the access records differ between the native host and Spin");
}
