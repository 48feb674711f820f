//! `sqlx::migrate!` embeds the migrations at compile time; without this, adding a migration file
//! would not rebuild the crate, and a stale build would miss it (sqlx's documented fix).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
