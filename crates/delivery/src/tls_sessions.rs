//! A TLS session store that keeps many TLS 1.3 tickets per host.
//!
//! rustls's own store keeps 8 tickets per server, and a ticket is used once. When many
//! webhooks share a host (a relay, a gateway of the customer's), a burst opens hundreds of
//! connections to it at once: with 8 tickets nearly every one pays a full handshake, whose
//! certificate verification is the largest cost of a new connection (measured: P-256
//! verification dominated the delivery process's profile in cold runs). The receiver sends
//! fresh tickets on every connection, so a deeper pool lets most of a burst resume.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls_pki_types::ServerName;

#[derive(Debug)]
pub struct DeepTicketStore {
    /// Key-exchange hints and TLS 1.2 sessions, as rustls keeps them.
    inner: ClientSessionMemoryCache,
    tickets: Mutex<HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>>,
    max_hosts: usize,
    per_host: usize,
}

impl DeepTicketStore {
    pub fn new(max_hosts: usize, per_host: usize) -> Self {
        Self {
            inner: ClientSessionMemoryCache::new(max_hosts),
            tickets: Mutex::new(HashMap::new()),
            max_hosts: max_hosts.max(1),
            per_host: per_host.max(1),
        }
    }
}

impl ClientSessionStore for DeepTicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let Ok(mut tickets) = self.tickets.lock() else {
            return;
        };
        if !tickets.contains_key(&server_name) && tickets.len() >= self.max_hosts {
            // Full: forget some host to make room (which one matters little: a full
            // handshake is the cost of forgetting).
            if let Some(victim) = tickets.keys().next().cloned() {
                tickets.remove(&victim);
            }
        }
        let pool = tickets.entry(server_name).or_default();
        if pool.len() >= self.per_host {
            pool.pop_front();
        }
        pool.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut tickets = self.tickets.lock().ok()?;
        let pool = tickets.get_mut(server_name)?;
        // Newest first: it has the most lifetime left.
        let ticket = pool.pop_back();
        if pool.is_empty() {
            tickets.remove(server_name);
        }
        ticket
    }
}
