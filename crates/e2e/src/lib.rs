//! End-to-end tests live in `tests/it`: the three services run in one process, each through
//! its real `run`, against the machine's RabbitMQ and PostgreSQL and real HTTPS receivers.
#![forbid(unsafe_code)]
