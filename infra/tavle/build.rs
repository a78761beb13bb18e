// `sqlx::migrate!` embeds infra/migrations at compile time; without this a
// new migration file would not rebuild the operator binary.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
