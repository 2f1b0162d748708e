//! The store's queries against the machine's PostgreSQL, one fresh database per test.
#![allow(clippy::unwrap_used)]

mod fanout;
mod partitions;
mod recording;
mod recovery;
