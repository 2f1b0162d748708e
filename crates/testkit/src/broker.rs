//! One RabbitMQ name prefix per test.

use aioka_core::retry::RetrySchedule;
use aioka_queue::Topology;
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
}

impl TestBroker {
    /// `schedule` is the retry schedule the test's services use (its tiers are queues).
    pub fn new(schedule: &str) -> Self {
        Self {
            url: amqp_url(),
            prefix: crate::unique("t"),
            schedule: schedule.parse().expect("test retry schedule"),
        }
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

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology();
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
