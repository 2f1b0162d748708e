//! One RabbitMQ name prefix per test.

use std::process::Command;
use std::sync::Mutex;

use aioka_core::retry::RetrySchedule;
use aioka_queue::Topology;
use aioka_queue::permissions::{Role, permissions};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

/// The broker tests use (`AIOKA_TEST_AMQP_URL`, default the local RabbitMQ as guest).
pub fn amqp_url() -> String {
    std::env::var("AIOKA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A prefix of its own; its queues and exchanges are deleted when the value is dropped.
#[derive(Debug)]
pub struct TestBroker {
    pub url: String,
    pub prefix: String,
    pub schedule: RetrySchedule,
    /// Broker users made by [`TestBroker::user`], deleted on drop.
    users: Mutex<Vec<String>>,
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("this test needs rabbitmqctl (the machine's RabbitMQ)");
    assert!(
        output.status.success(),
        "rabbitmqctl {}: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestBroker {
    /// `schedule` is the retry schedule the test's services use (its tiers are queues).
    pub fn new(schedule: &str) -> Self {
        Self {
            url: amqp_url(),
            prefix: crate::unique("t"),
            schedule: schedule.parse().expect("test retry schedule"),
            users: Mutex::new(Vec::new()),
        }
    }

    /// A broker user of its own with the permissions of `role` over this prefix (as
    /// `scripts/up` makes them); returns its AMQP URL.
    pub fn user(&self, role: Role) -> String {
        self.user_named(role, "")
    }

    /// As [`TestBroker::user`], a second user of the same role (`suffix` tells them apart).
    pub fn user_named(&self, role: Role, suffix: &str) -> String {
        let name = format!("{}-{}{suffix}", self.prefix, role.as_str());
        let password = crate::unique("pw");
        rabbitmqctl(&["-q", "add_user", &name, &password]);
        self.users
            .lock()
            .expect("the users list")
            .push(name.clone());
        let p = permissions(&self.topology(), role);
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            "/",
            &name,
            &p.configure,
            &p.write,
            &p.read,
        ]);
        let (scheme, rest) = self.url.split_once("://").expect("an AMQP URL");
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{name}:{password}@{host}")
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.prefix, self.schedule.tiers(), 20)
    }

    /// A connection for the test itself (publishing directly, inspecting queues).
    pub async fn connect(&self) -> lapin::Connection {
        aioka_queue::connect(&self.url, "aioka-test")
            .await
            .unwrap_or_else(|e| panic!("tests need RabbitMQ at {}: {e}", self.url))
    }
}

/// Shards a test may use; their queues are deleted with the prefix.
pub const CLEANED_SHARDS: u16 = 8;

impl Drop for TestBroker {
    fn drop(&mut self) {
        for user in self.users.lock().map(|u| u.clone()).unwrap_or_default() {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_user", &user])
                .output();
        }
        // Every shard a test may have made (deleting a queue that is not there is fine).
        let topology = self.topology().with_shards(CLEANED_SHARDS);
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(conn) = aioka_queue::connect(&url, "aioka-test-cleanup").await else {
                    return;
                };
                let Ok(channel) = conn.create_channel().await else {
                    return;
                };
                for queue in topology.queues() {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in topology.exchanges() {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = conn.close(200, "done".into()).await;
            });
        })
        .join();
    }
}
