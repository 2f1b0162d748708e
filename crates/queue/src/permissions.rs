//! Who may do what on the broker: one RabbitMQ user per role, each with the configure, write
//! and read permissions (regular expressions over exchange and queue names) of
//! <https://www.rabbitmq.com/docs/access-control>. `scripts/up` creates the users with these
//! (through `aioka amqp-permissions`), and a test checks the broker enforces them.
//!
//! * A **producer** may only publish to the events exchange: it cannot declare, read, or
//!   publish anywhere else (so it cannot write a delivery task).
//! * The **gateway** declares the exchanges and publishes to the events and deliveries
//!   exchanges; it reads nothing.
//! * **fanout** declares the exchanges and its own queue, consumes it, and publishes tasks
//!   and parked messages; it cannot read the delivery queue or the retry tiers.
//! * **delivery** declares the exchanges, its queue, the retry tiers and the defer queue,
//!   consumes its queue, and publishes retries and parked messages; it cannot read the
//!   fanout queue or publish events.
//!
//! What keeps a leaked service credential from forging a delivery is the task tag
//! (`DeliveryTask::auth`): fanout and delivery may publish tasks.

use crate::Topology;

/// A broker user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Producer,
    Gateway,
    Fanout,
    Delivery,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Producer, Role::Gateway, Role::Fanout, Role::Delivery];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Gateway => "gateway",
            Role::Fanout => "fanout",
            Role::Delivery => "delivery",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role '{s}' (one of producer, gateway, fanout, delivery)")
            })
    }
}

/// A user's permissions in one vhost, as `rabbitmqctl set_permissions` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// Nothing at all.
const NONE: &str = "^$";

/// `^(a|b)$` over names, each escaped.
fn exactly(names: &[String]) -> String {
    let escaped: Vec<String> = names.iter().map(|n| escape(n)).collect();
    format!("^({})$", escaped.join("|"))
}

/// Escapes the characters that mean something in a regular expression.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The permissions of `role` over `topology`'s names.
pub fn permissions(topology: &Topology, role: Role) -> Permissions {
    match role {
        Role::Producer => Permissions {
            configure: NONE.into(),
            write: exactly(&[topology.events_exchange()]),
            read: NONE.into(),
        },
        Role::Gateway => Permissions {
            configure: exactly(&topology.exchanges()),
            write: exactly(&[topology.events_exchange(), topology.deliveries_exchange()]),
            read: NONE.into(),
        },
        // Declaring a queue with a dead-letter exchange asks for configure and read on the
        // queue and write on the exchange; binding a queue asks for write on the queue and
        // read on the exchange; publishing, write on the exchange; consuming, read on the
        // queue. (The parking exchange and queue share a name.)
        Role::Fanout => {
            let queues = [topology.fanout_queue(), topology.parking_queue()];
            Permissions {
                configure: exactly(&[topology.exchanges(), queues.to_vec()].concat()),
                write: exactly(&[
                    topology.fanout_queue(),
                    topology.parking_exchange(),
                    topology.deliveries_exchange(),
                ]),
                read: exactly(&[
                    topology.fanout_queue(),
                    topology.events_exchange(),
                    topology.parking_exchange(),
                ]),
            }
        }
        // Every shard's queues, whatever the shard count, so changing it needs no new
        // permissions: `aioka.delivery` and `aioka.delivery.<i>`, likewise the defer and
        // retry wait queues.
        Role::Delivery => {
            let sharded = |name: String| format!("{}(\\.[0-9]+)?", escape(&name));
            let tiers = format!("{}\\.[^.]+(\\.[0-9]+)?", escape(&topology.retry_exchange()));
            let names = |exchanges: Vec<String>| {
                let mut alternatives: Vec<String> = exchanges.iter().map(|n| escape(n)).collect();
                alternatives.push(sharded(topology.delivery_queue()));
                alternatives.push(sharded(topology.defer_queue()));
                alternatives.push(tiers.clone());
                format!("^({})$", alternatives.join("|"))
            };
            Permissions {
                configure: names([topology.exchanges(), vec![topology.parking_queue()]].concat()),
                write: names(vec![
                    topology.parking_exchange(),
                    topology.deliveries_exchange(),
                    topology.retry_exchange(),
                ]),
                read: names(vec![
                    topology.deliveries_exchange(),
                    topology.retry_exchange(),
                    topology.parking_exchange(),
                ]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_may_only_write_the_events_exchange() {
        let t = Topology::new("aioka", Vec::new(), 20);
        let p = permissions(&t, Role::Producer);
        assert_eq!(p.write, "^(aioka\\.events)$");
        assert_eq!((p.configure.as_str(), p.read.as_str()), (NONE, NONE));
    }

    #[test]
    fn names_are_escaped_so_a_prefix_cannot_widen_a_pattern() {
        assert_eq!(escape("a.b*c"), "a\\.b\\*c");
        let t = Topology::new("my.app", Vec::new(), 20);
        let read = permissions(&t, Role::Delivery).read;
        assert!(read.starts_with("^(my\\.app\\.deliveries|"), "{read}");
        assert!(read.contains("|my\\.app\\.delivery(\\.[0-9]+)?|"), "{read}");
    }

    #[test]
    fn roles_parse_from_their_names() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
