//! The store against a real PostgreSQL: one fresh database per test.
#![allow(clippy::unwrap_used)]

mod recording;
