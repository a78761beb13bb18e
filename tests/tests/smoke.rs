use tavle_tests::TestApp;

#[tokio::test]
async fn login_smoke() {
    let app = TestApp::spawn().await;
    let admin = app.seed_tenant("oslo").await;
    let s = app.login(&admin).await;
    let me = app.get("/auth/me", &s.token).await;
    assert_eq!(me.status, 200, "{}", me.text());
    println!("{}", me.text());
}
