//! `refinery::embed_migrations!` reads `migrations/` at compile time, and cargo does not know:
//! without this, a new migration file is left out of the binary until something else in the
//! crate changes (a benchmark of a schema change once ran the old schema).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
