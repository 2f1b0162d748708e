//! The store's error type.

/// A database operation failed. Callers treat every case as "try again later" (5xx or
/// redelivery); rule violations that a caller must explain have their own error types.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("a stored row is not valid: {0}")]
    Corrupt(String),
    #[error("database settings: {0}")]
    Config(String),
}
