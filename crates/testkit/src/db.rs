//! One database per test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aioka_store::{DatabaseSettings, PartitionPolicy, Store};
use tokio_postgres::NoTls;

/// The server tests create their databases on (`AIOKA_TEST_DATABASE_URL`, default the local
/// PostgreSQL as user postgres).
pub fn admin_url() -> String {
    std::env::var("AIOKA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A migrated database of its own, dropped when the value is dropped (even on panic). Its
/// partitions are made as `aioka migrate` makes them: the migrations, then one maintenance
/// run.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub store: Store,
}

const NAME_PREFIX: &str = "aioka_t_";
/// Databases of crashed test runs older than this are dropped by the next run.
const STALE_AFTER: Duration = Duration::from_secs(2 * 3600);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TestDb {
    pub async fn new() -> Self {
        Self::with_partitions(PartitionPolicy::default()).await
    }

    /// A database whose partitions follow `policy` (the services under test must be given
    /// the same `[database]` settings), its store included.
    pub async fn with_partitions(policy: PartitionPolicy) -> Self {
        let mut db = Self::create(None).await;
        db.store = db.store.with_partition_policy(policy);
        db.store
            .maintain_partitions()
            .await
            .expect("maintain the test database's partitions");
        db
    }

    /// A database migrated up to `version` only, to test the migrations after it.
    pub async fn at_version(version: u32) -> Self {
        Self::create(Some(version)).await
    }

    async fn create(version: Option<u32>) -> Self {
        let admin = admin_url();
        let (client, connection) =
            tokio_postgres::connect(&admin, NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "tests need PostgreSQL at {admin}: {e} (run scripts/test, which starts it)"
                    )
                });
        tokio::spawn(connection);
        sweep_stale(&client).await;
        let name = format!("{NAME_PREFIX}{}_{}", now_secs(), crate::unique(""));
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = url_with_db(&admin, &name);
        let store = Store::connect(&DatabaseSettings::new(
            url.clone(),
            4,
            Duration::from_secs(5),
        ))
        .expect("test pool");
        match version {
            Some(version) => store.migrate_to(version).await,
            None => store.migrate().await,
        }
        .expect("migrate test database");
        Self { name, url, store }
    }
}

fn url_with_db(admin: &str, db: &str) -> String {
    // postgres://user@host:port/dbname?params → replace dbname.
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn sweep_stale(client: &tokio_postgres::Client) {
    let Ok(rows) = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'aioka\\_t\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    let cutoff = now_secs().saturating_sub(STALE_AFTER.as_secs());
    for row in rows {
        let name: String = row.get(0);
        let created: u64 = name
            .trim_start_matches(NAME_PREFIX)
            .split('_')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(u64::MAX);
        if created < cutoff {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot be async, and the test's runtime may be shutting down: use a thread
        // with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url(), NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::url_with_db;

    #[test]
    fn the_database_name_is_replaced_in_the_url() {
        assert_eq!(
            url_with_db("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_with_db("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
