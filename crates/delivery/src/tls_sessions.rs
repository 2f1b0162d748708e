//! A TLS session store that keeps many TLS 1.3 tickets per host, within a byte budget.
//!
//! rustls's own store keeps 8 tickets per server, and a ticket is used once. When many
//! webhooks share a host (a relay, a gateway of the customer's), a burst opens hundreds of
//! connections to it at once: with 8 tickets nearly every one pays a full handshake, whose
//! certificate verification is the largest cost of a new connection (measured: P-256
//! verification dominated the delivery process's profile in cold runs). The receiver sends
//! fresh tickets on every connection, so a deeper pool lets most of a burst resume.
//!
//! A receiver chooses how many tickets it sends and how large they are (up to 64 KiB each,
//! and every ticket keeps its own copy of the server's certificate chain), so the store is
//! bounded in bytes, not in tickets: `delivery.tls_ticket_bytes` in all, a quarter of that
//! for any one host, the oldest ticket evicted first. TLS 1.2 sessions (one per host, as
//! rustls keeps them) count against the same budget. Forgetting a ticket costs one full
//! handshake, nothing more.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls_pki_types::ServerName;

/// Hosts whose key-exchange hints rustls's own cache keeps (two bytes each).
const KX_HINT_HOSTS: usize = 20_000;
/// One host may hold at most this share of the budget, so one hostile receiver cannot flush
/// everyone else's tickets by itself.
const HOST_SHARE: usize = 4;
/// What a kept session costs beyond the bytes its `Debug` shows: fields, map entries.
const ENTRY_OVERHEAD: usize = 192;

#[derive(Debug)]
pub struct DeepTicketStore {
    /// Key-exchange hints, as rustls keeps them.
    kx_hints: ClientSessionMemoryCache,
    sessions: Mutex<Sessions>,
}

#[derive(Debug)]
enum Session {
    Tls13(Tls13ClientSessionValue),
    Tls12(Tls12ClientSessionValue),
}

#[derive(Debug)]
struct Kept {
    host: ServerName<'static>,
    bytes: usize,
    session: Session,
}

/// One host's sessions: TLS 1.3 tickets by number, oldest first, and at most one TLS 1.2
/// session (rustls keeps one too).
#[derive(Debug, Default)]
struct Pool {
    tickets: VecDeque<u64>,
    tls12: Option<u64>,
    bytes: usize,
}

impl Pool {
    fn oldest(&self) -> Option<u64> {
        match (self.tickets.front(), self.tls12) {
            (Some(&t), Some(s)) => Some(t.min(s)),
            (t, s) => t.copied().or(s),
        }
    }
}

#[derive(Debug)]
struct Sessions {
    /// Every session kept, by insertion number: the first is the oldest.
    by_age: BTreeMap<u64, Kept>,
    hosts: HashMap<ServerName<'static>, Pool>,
    next: u64,
    bytes: usize,
    budget: usize,
    host_budget: usize,
}

impl DeepTicketStore {
    /// A store of at most `budget` bytes of sessions (as [`session_bytes`] counts them).
    pub fn new(budget: usize) -> Self {
        Self {
            kx_hints: ClientSessionMemoryCache::new(KX_HINT_HOSTS),
            sessions: Mutex::new(Sessions {
                by_age: BTreeMap::new(),
                hosts: HashMap::new(),
                next: 0,
                bytes: 0,
                budget,
                host_budget: budget / HOST_SHARE,
            }),
        }
    }

    /// The bytes of sessions kept now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.sessions.lock().map(|s| s.bytes).unwrap_or_default()
    }
}

/// What a session holds, in bytes. rustls does not expose the size of a ticket, but its
/// `Debug` writes the ticket and the certificate chain it keeps in hex (two characters a
/// byte): count those characters without keeping them. A test pins the estimate.
fn session_bytes(value: &dyn fmt::Debug) -> usize {
    struct Count(usize);
    impl fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = fmt::write(&mut count, format_args!("{value:?}"));
    count.0 / 2 + ENTRY_OVERHEAD
}

impl Sessions {
    fn insert(&mut self, host: ServerName<'static>, session: Session) {
        let bytes = match &session {
            Session::Tls13(value) => session_bytes(value),
            Session::Tls12(value) => session_bytes(value),
        };
        if bytes > self.host_budget {
            return;
        }
        // Room in the host's share first, then in the whole budget; oldest first both times.
        while let Some(pool) = self.hosts.get(&host)
            && pool.bytes + bytes > self.host_budget
            && let Some(oldest) = pool.oldest()
        {
            self.remove(oldest);
        }
        while self.bytes + bytes > self.budget
            && let Some((&oldest, _)) = self.by_age.first_key_value()
        {
            self.remove(oldest);
        }
        let number = self.next;
        self.next += 1;
        let pool = self.hosts.entry(host.clone()).or_default();
        match session {
            Session::Tls13(_) => pool.tickets.push_back(number),
            Session::Tls12(_) => pool.tls12 = Some(number),
        }
        pool.bytes += bytes;
        self.bytes += bytes;
        let kept = Kept {
            host,
            bytes,
            session,
        };
        self.by_age.insert(number, kept);
    }

    fn remove(&mut self, number: u64) -> Option<Session> {
        let kept = self.by_age.remove(&number)?;
        self.bytes -= kept.bytes;
        if let Some(pool) = self.hosts.get_mut(&kept.host) {
            pool.bytes -= kept.bytes;
            if pool.tls12 == Some(number) {
                pool.tls12 = None;
            } else if pool.tickets.front() == Some(&number) {
                pool.tickets.pop_front();
            } else if pool.tickets.back() == Some(&number) {
                pool.tickets.pop_back();
            } else {
                pool.tickets.retain(|&n| n != number);
            }
            if pool.tickets.is_empty() && pool.tls12.is_none() {
                self.hosts.remove(&kept.host);
            }
        }
        Some(kept.session)
    }

    /// The host's newest ticket: it has the most lifetime left.
    fn take_ticket(&mut self, host: &ServerName<'_>) -> Option<Tls13ClientSessionValue> {
        let number = *self.hosts.get(host)?.tickets.back()?;
        match self.remove(number)? {
            Session::Tls13(value) => Some(value),
            Session::Tls12(_) => None,
        }
    }

    fn tls12(&self, host: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let number = self.hosts.get(host)?.tls12?;
        match &self.by_age.get(&number)?.session {
            Session::Tls12(value) => Some(value.clone()),
            Session::Tls13(_) => None,
        }
    }

    fn remove_tls12(&mut self, host: &ServerName<'_>) {
        if let Some(number) = self.hosts.get(host).and_then(|pool| pool.tls12) {
            self.remove(number);
        }
    }
}

impl ClientSessionStore for DeepTicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.kx_hints.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.kx_hints.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove_tls12(&server_name);
            sessions.insert(server_name, Session::Tls12(value));
        }
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.sessions.lock().ok()?.tls12(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove_tls12(server_name);
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(server_name, Session::Tls13(value));
        }
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.sessions.lock().ok()?.take_ticket(server_name)
    }
}

#[cfg(test)]
mod tests {
    //! Real rustls handshakes in memory, against a server whose tickets we choose.
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use rustls::client::Resumption;
    use rustls::server::ProducesTickets;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::*;

    const HOSTS: [&str; 3] = ["a.test", "b.test", "c.test"];
    const CERTIFIED: [&str; 5] = ["a.test", "b.test", "c.test", "d.test", "e.test"];

    /// A hostile server's ticketer: every ticket is `size` bytes of nothing.
    #[derive(Debug)]
    struct Ticketer {
        size: usize,
    }

    impl ProducesTickets for Ticketer {
        fn enabled(&self) -> bool {
            true
        }
        fn lifetime(&self) -> u32 {
            3600
        }
        fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
            Some(vec![0x55; self.size])
        }
        fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
            None
        }
    }

    struct Peers {
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    }

    fn peers(store: Arc<DeepTicketStore>, ticket_size: usize, tickets: usize) -> Peers {
        peers_speaking(store, ticket_size, tickets, rustls::DEFAULT_VERSIONS)
    }

    fn peers_speaking(
        store: Arc<DeepTicketStore>,
        ticket_size: usize,
        tickets: usize,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Peers {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert =
            rcgen::generate_simple_self_signed(CERTIFIED.map(String::from).to_vec()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = Resumption::store(store);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        // Size 0: rustls's own ticketer, whose tickets resume.
        server.ticketer = if ticket_size == 0 {
            rustls::crypto::ring::Ticketer::new().unwrap()
        } else {
            Arc::new(Ticketer { size: ticket_size })
        };
        server.send_tls13_tickets = tickets;
        Peers {
            client: Arc::new(client),
            server: Arc::new(server),
        }
    }

    /// One full handshake to `host`, in memory, until neither side has anything to say (the
    /// server's tickets follow its handshake).
    fn connect(peers: &Peers, host: &'static str) -> rustls::HandshakeKind {
        let name = ServerName::try_from(host).unwrap();
        let mut client = ClientConnection::new(peers.client.clone(), name).unwrap();
        let mut server = ServerConnection::new(peers.server.clone()).unwrap();
        loop {
            let mut moved = false;
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                moved = true;
                server.read_tls(&mut rest).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                moved = true;
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets().unwrap();
            }
            if !moved {
                return client.handshake_kind().unwrap();
            }
        }
    }

    /// Takes every ticket the store holds for `host`.
    fn drain(store: &DeepTicketStore, host: &'static str) -> usize {
        let name = ServerName::try_from(host).unwrap();
        std::iter::from_fn(|| store.take_tls13_ticket(&name)).count()
    }

    #[test]
    fn huge_tickets_cannot_grow_the_store_past_its_byte_budget() {
        const BUDGET: usize = 1024 * 1024;
        const TICKET: usize = 30_000;
        let store = Arc::new(DeepTicketStore::new(BUDGET));
        // Two tickets a connection: rustls cannot take more huge tickets than its 64 KiB
        // handshake buffer in one flight, so a hostile receiver needs many connections.
        let hostile = peers(store.clone(), TICKET, 2);
        for _ in 0..20 {
            for host in HOSTS {
                connect(&hostile, host);
            }
        }
        assert!(store.bytes() <= BUDGET, "{} bytes kept", store.bytes());
        let held: usize = HOSTS.map(|host| drain(&store, host)).iter().sum();
        assert!(held > 0, "the store keeps some tickets");
        assert!(
            held * TICKET <= BUDGET,
            "{held} tickets of {TICKET} bytes are kept, past a budget of {BUDGET} bytes"
        );
        assert_eq!(
            store.bytes(),
            0,
            "taking every ticket gives back every byte"
        );
    }

    #[test]
    fn a_tickets_size_is_counted_with_the_certificate_chain_it_keeps() {
        let store = Arc::new(DeepTicketStore::new(1024 * 1024));
        connect(&peers(store.clone(), 10_000, 1), "a.test");
        let one = store.bytes();
        connect(&peers(store.clone(), 20_000, 1), "b.test");
        let two = store.bytes() - one;
        assert!(one >= 10_000, "{one}");
        // Ten thousand more ticket bytes count as ten thousand bytes, whatever the chain.
        assert!(two.abs_diff(one + 10_000) < 100, "{one} then {two}");
    }

    /// What one ticket of `size` bytes costs in a store, measured on a store of its own, give
    /// or take [`JITTER`] (the digits of its timestamps and nonces vary).
    fn cost_of_a_ticket(size: usize) -> usize {
        let probe = Arc::new(DeepTicketStore::new(1024 * 1024));
        connect(&peers(probe.clone(), size, 1), "a.test");
        probe.bytes()
    }

    const JITTER: usize = 32;

    fn about(bytes: usize, tickets: usize, cost: usize) -> bool {
        bytes.abs_diff(tickets * cost) <= tickets * JITTER
    }

    #[test]
    fn the_oldest_tickets_are_evicted_first() {
        const TICKET: usize = 20_000;
        let cost = cost_of_a_ticket(TICKET);
        // Room for eight tickets and a half; each host may hold two (a quarter).
        let store = Arc::new(DeepTicketStore::new(17 * (cost + JITTER) / 2));
        let peers = peers(store.clone(), TICKET, 2);
        for host in ["a.test", "b.test", "c.test", "d.test"] {
            connect(&peers, host);
        }
        assert!(about(store.bytes(), 8, cost), "{}", store.bytes());
        // e.test's two tickets need room: a.test's two, the oldest, go.
        connect(&peers, "e.test");
        assert!(about(store.bytes(), 8, cost), "{}", store.bytes());
        for (host, kept) in [("a.test", 0), ("b.test", 2), ("d.test", 2), ("e.test", 2)] {
            assert_eq!(drain(&store, host), kept, "{host}");
        }
    }

    #[test]
    fn one_host_holds_at_most_a_quarter_of_the_budget() {
        const TICKET: usize = 10_000;
        let cost = cost_of_a_ticket(TICKET);
        let store = Arc::new(DeepTicketStore::new(41 * (cost + JITTER)));
        let greedy = peers(store.clone(), TICKET, 2);
        for _ in 0..40 {
            connect(&greedy, "a.test");
        }
        assert!(about(store.bytes(), 10, cost), "{}", store.bytes());
        assert_eq!(drain(&store, "a.test"), 10);
    }

    #[test]
    fn tls12_sessions_count_against_the_same_budget() {
        // Room for four of the five hosts' sessions.
        const BUDGET: usize = 130_000;
        let store = Arc::new(DeepTicketStore::new(BUDGET));
        let hostile = peers_speaking(store.clone(), 30_000, 1, &[&rustls::version::TLS12]);
        for host in CERTIFIED.iter().cycle().take(20) {
            connect(&hostile, host);
        }
        assert!(store.bytes() <= BUDGET, "{} bytes kept", store.bytes());
        let last = ServerName::try_from("e.test").unwrap();
        assert!(store.tls12_session(&last).is_some(), "the newest is kept");
        store.remove_tls12_session(&last);
        assert!(store.tls12_session(&last).is_none());
    }

    #[test]
    fn a_kept_ticket_resumes_the_next_connections_of_a_burst() {
        let store = Arc::new(DeepTicketStore::new(1024 * 1024));
        let honest = peers(store.clone(), 0, 4);
        assert_eq!(connect(&honest, "a.test"), rustls::HandshakeKind::Full);
        for _ in 0..8 {
            assert_eq!(connect(&honest, "a.test"), rustls::HandshakeKind::Resumed);
        }
    }
}
