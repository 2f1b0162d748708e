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

impl StoreError {
    /// A write found no partition of the delivery log for a row (SQLSTATE 23514 without a
    /// constraint: a CHECK constraint's violation names its constraint).
    pub fn is_missing_partition(&self) -> bool {
        match self {
            StoreError::Db(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
                    && e.as_db_error().is_some_and(|db| db.constraint().is_none())
            }
            _ => false,
        }
    }
}
