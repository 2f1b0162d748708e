//! End-to-end tests; the harness is the crate's library.
#![allow(clippy::unwrap_used)]

mod batches;
mod chains;
mod delivery;
mod faults;
mod forgery;
mod hostile;
mod ingest;
mod manage;
mod ordering;
mod reach;
mod retention;
mod shards;

pub use aioka_e2e::{Options, PATIENCE, System, sample, verdict};
