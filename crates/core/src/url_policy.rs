//! Which URLs a webhook may point at, and which addresses we will connect to.
//!
//! A webhook URL is an instruction from a customer to make our servers send requests, so it is
//! a server-side request forgery vector: it must not reach our own network, the machine's
//! loopback, or a cloud metadata service. The gateway checks a URL when it is registered (the
//! literal address, or every address its host resolves to), and the delivery service checks the
//! addresses again inside its DNS resolver at connect time, because DNS answers change.
//! Both call [`blocked_reason`]; this module does no I/O itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use url::{Host, Url};

/// The longest webhook URL we accept.
pub const MAX_URL_LEN: usize = 2048;

/// Why an address may not be a webhook target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    SharedAddressSpace,
    Multicast,
    Broadcast,
    Reserved,
    Documentation,
    CloudMetadata,
}

impl BlockReason {
    pub const fn describe(self) -> &'static str {
        match self {
            BlockReason::Unspecified => "an unspecified address",
            BlockReason::Loopback => "a loopback address",
            BlockReason::Private => "a private-network address",
            BlockReason::LinkLocal => "a link-local address",
            BlockReason::SharedAddressSpace => "a carrier-grade NAT (100.64.0.0/10) address",
            BlockReason::Multicast => "a multicast address",
            BlockReason::Broadcast => "a broadcast address",
            BlockReason::Reserved => "a reserved address",
            BlockReason::Documentation => "a documentation-only address",
            BlockReason::CloudMetadata => "a cloud metadata service address",
        }
    }
}

impl BlockReason {
    /// Whether `security.allow_private_targets` (tests and local demos) lifts this block:
    /// loopback, private networks, link-local and carrier-grade NAT, where a demo's receiver
    /// runs. A cloud metadata service stays refused whatever the setting says (a demo on a
    /// cloud machine must not hand a customer the instance's credentials), and so do
    /// addresses no delivery can use (unspecified, multicast, broadcast, reserved,
    /// documentation).
    pub const fn lifted_by_allow_private(self) -> bool {
        matches!(
            self,
            BlockReason::Loopback
                | BlockReason::Private
                | BlockReason::LinkLocal
                | BlockReason::SharedAddressSpace
        )
    }
}

/// Why `ip` may not be connected to under the setting `allow_private`, or `None`.
pub fn refused(ip: IpAddr, allow_private: bool) -> Option<BlockReason> {
    blocked_reason(ip).filter(|r| !(allow_private && r.lifted_by_allow_private()))
}

/// Why `ip` may not be connected to, or `None` if it is a public unicast address.
pub fn blocked_reason(ip: IpAddr) -> Option<BlockReason> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<BlockReason> {
    let o = ip.octets();
    let reason = match o {
        // 169.254.169.254 (AWS, GCP, Azure, …) and 100.100.100.200 (Alibaba) serve instance
        // credentials; name them so the error is unmistakable.
        [169, 254, 169, 254] | [100, 100, 100, 200] | [169, 254, 170, 2] => {
            BlockReason::CloudMetadata
        }
        [0, ..] => BlockReason::Unspecified,
        [127, ..] => BlockReason::Loopback,
        [10, ..] | [192, 168, ..] => BlockReason::Private,
        [172, b, ..] if (16..=31).contains(&b) => BlockReason::Private,
        [169, 254, ..] => BlockReason::LinkLocal,
        [100, b, ..] if (64..=127).contains(&b) => BlockReason::SharedAddressSpace,
        [255, 255, 255, 255] => BlockReason::Broadcast,
        [a, ..] if (224..=239).contains(&a) => BlockReason::Multicast,
        [a, ..] if a >= 240 => BlockReason::Reserved,
        // IETF protocol assignments, benchmarking (RFC 2544), 6to4 relay anycast.
        [192, 0, 0, _] | [198, 18..=19, ..] | [192, 88, 99, _] => BlockReason::Reserved,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => BlockReason::Documentation,
        _ => return None,
    };
    Some(reason)
}

/// Where an IPv6 prefix carries an IPv4 address that some translator, tunnel or host turns
/// back into IPv4: such an address reaches the IPv4 host, so it is judged as that host.
#[derive(Debug, Clone, Copy)]
enum Carries {
    /// The last 32 bits.
    Last32,
    /// Bits 16..48 (6to4, RFC 3056 §2).
    SixToFour,
    /// A local-use NAT64 prefix (RFC 8215) whose RFC 6052 layout is the operator's choice:
    /// every position a translator might read is judged.
    AnyRfc6052Layout,
}

/// IPv6 prefixes that embed an IPv4 address (RFC 6890's special-purpose registry and the
/// transition mechanisms it lists). Teredo (2001::/32) is refused whole below.
const EMBEDDING_PREFIXES: [(Ipv6Net, Carries); 6] = [
    // IPv4-mapped ::ffff:a.b.c.d (RFC 4291 §2.5.5.2).
    (v6net(&[0, 0, 0, 0, 0, 0xffff], 96), Carries::Last32),
    // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765 §2.1, SIIT).
    (v6net(&[0, 0, 0, 0, 0xffff], 96), Carries::Last32),
    // IPv4-compatible ::a.b.c.d (RFC 4291 §2.5.5.1, deprecated).
    (v6net(&[], 96), Carries::Last32),
    // The NAT64 well-known prefix, always /96 (RFC 6052 §2.1).
    (v6net(&[0x64, 0xff9b], 96), Carries::Last32),
    // The NAT64 local-use prefix (RFC 8215).
    (v6net(&[0x64, 0xff9b, 1], 48), Carries::AnyRfc6052Layout),
    (v6net(&[0x2002], 16), Carries::SixToFour),
];

/// IPv6 ranges refused for themselves, first match wins.
const BLOCKED_V6: [(Ipv6Net, BlockReason); 8] = [
    // AWS's IPv6 metadata endpoint fd00:ec2::254 lies inside fc00::/7; name it.
    (v6net(&[0xfd00, 0x0ec2], 32), BlockReason::CloudMetadata),
    (v6net(&[0xfc00], 7), BlockReason::Private),
    (v6net(&[0xfe80], 10), BlockReason::LinkLocal),
    // Deprecated site-local fec0::/10 behaves like private space where it is still routed.
    (v6net(&[0xfec0], 10), BlockReason::Private),
    (v6net(&[0xff00], 8), BlockReason::Multicast),
    (v6net(&[0x2001, 0x0db8], 32), BlockReason::Documentation),
    // 2001::/23 holds IETF protocol assignments (Teredo 2001::/32, benchmarking 2001:2::/48…).
    (v6net(&[0x2001], 23), BlockReason::Reserved),
    // 100::/64 discard-only (RFC 6666).
    (v6net(&[0x0100], 64), BlockReason::Reserved),
];

/// The prefix whose first segments are `head` (the rest zero), as a compile-time constant.
const fn v6net(head: &[u16], len: u8) -> Ipv6Net {
    let mut s = [0u16; 8];
    let mut i = 0;
    while i < head.len() {
        s[i] = head[i];
        i += 1;
    }
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// The IPv4 address inside `ip` if it was made from a NAT64 prefix of `prefix_len` bits, as
/// RFC 6052 §2.2 lays it out: right after the prefix, skipping bits 64..72 (the "u" octet).
fn rfc6052_ipv4(ip: Ipv6Addr, prefix_len: u32) -> Ipv4Addr {
    let bits = u128::from(ip);
    if prefix_len == 96 {
        return Ipv4Addr::from(bits as u32);
    }
    let without_u = ((bits >> 64) << 56) | (bits & ((1 << 56) - 1));
    Ipv4Addr::from((without_u >> (88 - prefix_len)) as u32)
}

/// Whether `ip` has the zero "u" octet and zero suffix of an RFC 6052 address made from a
/// prefix of `prefix_len` bits (every /96 address qualifies).
fn rfc6052_well_formed(ip: Ipv6Addr, prefix_len: u32) -> bool {
    let bits = u128::from(ip);
    if prefix_len == 96 {
        return true;
    }
    let u_octet = (bits >> 56) & 0xff;
    let without_u = ((bits >> 64) << 56) | (bits & ((1 << 56) - 1));
    u_octet == 0 && without_u & ((1 << (88 - prefix_len)) - 1) == 0
}

/// The IPv4 addresses `ip` may stand for, judged in turn; `None` if it embeds none.
fn blocked_embedded(ip: Ipv6Addr) -> Option<Option<BlockReason>> {
    let bits = u128::from(ip);
    let &(net, carries) = EMBEDDING_PREFIXES
        .iter()
        .find(|(net, _)| net.contains(&ip))?;
    let verdict = match carries {
        Carries::Last32 => blocked_v4(Ipv4Addr::from(bits as u32)),
        Carries::SixToFour => blocked_v4(Ipv4Addr::from((bits >> 80) as u32)),
        Carries::AnyRfc6052Layout => {
            let layouts = [48, 56, 64, 96].map(|len| (len, blocked_v4(rfc6052_ipv4(ip, len))));
            // Refuse if any layout reads a blocked address; name the reason of the layout
            // the address looks written for, if one does.
            layouts
                .iter()
                .find(|&&(len, _)| rfc6052_well_formed(ip, len))
                .and_then(|&(_, reason)| reason)
                .or_else(|| layouts.iter().find_map(|&(_, reason)| reason))
        }
    };
    // Nothing public uses IPv4-compatible addresses (deprecated): refuse them whatever they carry.
    if net.addr().is_unspecified() {
        return Some(verdict.or(Some(BlockReason::Reserved)));
    }
    Some(verdict)
}

fn blocked_v6(ip: Ipv6Addr) -> Option<BlockReason> {
    if ip.is_unspecified() {
        return Some(BlockReason::Unspecified);
    }
    if ip.is_loopback() {
        return Some(BlockReason::Loopback);
    }
    // An IPv4 address written as IPv6 reaches the IPv4 host: judge the embedded address.
    match blocked_embedded(ip) {
        // Once the IPv4 address passes, the address is as good as that host.
        Some(Some(reason)) => return Some(reason),
        Some(None) => return None,
        None => {}
    }
    // An ISATAP interface id (RFC 5214 §6.1: 0:5efe or 200:5efe, the group bit aside) names
    // an IPv4 host behind the prefix's ISATAP router.
    let s = ip.segments();
    if s[4] & 0xfcff == 0
        && s[5] == 0x5efe
        && let Some(reason) = blocked_v4(Ipv4Addr::from(u128::from(ip) as u32))
    {
        return Some(reason);
    }
    BLOCKED_V6
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|&(_, reason)| reason)
}

/// Host names that always mean "this machine" or "the metadata service", whatever DNS says.
fn blocked_name(host: &str) -> Option<BlockReason> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Some(BlockReason::Loopback);
    }
    if matches!(
        host.as_str(),
        "metadata" | "metadata.google.internal" | "metadata.goog" | "instance-data"
    ) || host.ends_with(".metadata.google.internal")
    {
        return Some(BlockReason::CloudMetadata);
    }
    None
}

/// Why a webhook URL was refused. The message is shown to the customer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url is not a valid absolute URL: {0}")]
    Invalid(String),
    #[error("url must be at most {MAX_URL_LEN} characters")]
    TooLong,
    #[error("url must use https://")]
    NotHttps,
    #[error("url must not contain a user name or password")]
    HasCredentials,
    #[error("url must not contain a #fragment: it is never sent to the server")]
    HasFragment,
    #[error("url points at {}, which webhooks may not target", .0.describe())]
    Blocked(BlockReason),
    #[error("url's host does not resolve to any address")]
    Unresolvable,
}

impl UrlError {
    /// A stable, machine-readable code for the API's error body.
    pub const fn code(&self) -> &'static str {
        match self {
            UrlError::Invalid(_) | UrlError::TooLong | UrlError::HasFragment => "invalid_url",
            UrlError::NotHttps => "https_required",
            UrlError::HasCredentials => "invalid_url",
            UrlError::Blocked(_) => "private_target",
            UrlError::Unresolvable => "unresolvable_host",
        }
    }
}

/// A URL that passed every check that needs no DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: Url,
}

/// What the caller must still check: a literal address is already judged, a name must be
/// resolved and every address it resolves to passed through [`blocked_reason`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostToResolve {
    Literal(IpAddr),
    Name(String),
}

impl WebhookUrl {
    /// Checks form, scheme and, for a literal address or a well-known local name, the target.
    /// With `allow_private` (tests and local demos) loopback and private targets pass; a
    /// metadata service never does ([`BlockReason::lifted_by_allow_private`]).
    pub fn parse(text: &str, allow_private: bool) -> Result<Self, UrlError> {
        if text.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let url = Url::parse(text).map_err(|e| UrlError::Invalid(e.to_string()))?;
        if url.scheme() != "https" {
            return Err(UrlError::NotHttps);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::HasCredentials);
        }
        if url.fragment().is_some() {
            return Err(UrlError::HasFragment);
        }
        let parsed = Self { url };
        let reason = match parsed.host() {
            HostToResolve::Literal(ip) => blocked_reason(ip),
            HostToResolve::Name(name) => blocked_name(&name),
        };
        if let Some(reason) = reason.filter(|r| !(allow_private && r.lifted_by_allow_private())) {
            return Err(UrlError::Blocked(reason));
        }
        Ok(parsed)
    }

    pub fn host(&self) -> HostToResolve {
        match self.url.host() {
            Some(Host::Ipv4(ip)) => HostToResolve::Literal(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => HostToResolve::Literal(IpAddr::V6(ip)),
            Some(Host::Domain(name)) => HostToResolve::Name(name.to_owned()),
            // An https URL always has a host; the url crate refuses one without.
            None => HostToResolve::Name(String::new()),
        }
    }

    /// The port to connect to (443 unless the URL names one).
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn into_string(self) -> String {
        self.url.into()
    }
}

/// Judges every address a name resolved to: one blocked address blocks the URL, since the
/// client might pick it. An empty answer is refused too: there is nothing to judge, and
/// nothing to deliver to.
pub fn check_resolved(addrs: &[IpAddr]) -> Result<(), UrlError> {
    if addrs.is_empty() {
        return Err(UrlError::Unresolvable);
    }
    for ip in addrs {
        if let Some(reason) = blocked_reason(*ip) {
            return Err(UrlError::Blocked(reason));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn public_addresses_are_allowed() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(blocked_reason(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn allowing_private_targets_opens_loopback_and_private_networks_never_a_metadata_service() {
        for open in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "192.168.1.10",
            "172.16.0.1",
            "169.254.1.1",
            "100.64.0.1",
        ] {
            assert_eq!(refused(ip(open), true), None, "{open}");
            assert!(refused(ip(open), false).is_some(), "{open}");
        }
        for metadata in [
            "169.254.169.254",
            "100.100.100.200",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert_eq!(
                refused(ip(metadata), true),
                Some(BlockReason::CloudMetadata),
                "{metadata}"
            );
        }
        for never in ["0.0.0.0", "224.0.0.1", "255.255.255.255"] {
            assert!(refused(ip(never), true).is_some(), "{never}");
        }
        for url in [
            "https://169.254.169.254/latest/meta-data/",
            "https://[fd00:ec2::254]/latest/meta-data/",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://metadata/",
        ] {
            assert_eq!(
                WebhookUrl::parse(url, true),
                Err(UrlError::Blocked(BlockReason::CloudMetadata)),
                "{url}"
            );
        }
        assert!(WebhookUrl::parse("https://localhost:8443/hook", true).is_ok());
        assert!(WebhookUrl::parse("https://127.0.0.1:8443/hook", true).is_ok());
    }

    #[test]
    fn ipv4_private_and_special_ranges_are_blocked() {
        let cases = [
            ("0.0.0.0", BlockReason::Unspecified),
            ("127.0.0.1", BlockReason::Loopback),
            ("127.255.0.9", BlockReason::Loopback),
            ("10.0.0.1", BlockReason::Private),
            ("172.16.0.1", BlockReason::Private),
            ("172.31.255.255", BlockReason::Private),
            ("192.168.1.1", BlockReason::Private),
            ("169.254.1.1", BlockReason::LinkLocal),
            ("169.254.169.254", BlockReason::CloudMetadata),
            ("100.100.100.200", BlockReason::CloudMetadata),
            ("100.64.0.1", BlockReason::SharedAddressSpace),
            ("100.127.255.255", BlockReason::SharedAddressSpace),
            ("224.0.0.1", BlockReason::Multicast),
            ("239.255.255.250", BlockReason::Multicast),
            ("255.255.255.255", BlockReason::Broadcast),
            ("240.0.0.1", BlockReason::Reserved),
            ("198.18.0.1", BlockReason::Reserved),
            ("192.0.2.10", BlockReason::Documentation),
        ];
        for (a, reason) in cases {
            assert_eq!(blocked_reason(ip(a)), Some(reason), "{a}");
        }
    }

    #[test]
    fn ipv6_private_and_special_ranges_are_blocked() {
        let cases = [
            ("::", BlockReason::Unspecified),
            ("::1", BlockReason::Loopback),
            ("fc00::1", BlockReason::Private),
            ("fd12:3456::1", BlockReason::Private),
            ("fd00:ec2::254", BlockReason::CloudMetadata),
            ("fe80::1", BlockReason::LinkLocal),
            ("ff02::1", BlockReason::Multicast),
            ("2001:db8::1", BlockReason::Documentation),
            ("100::1", BlockReason::Reserved),
        ];
        for (a, reason) in cases {
            assert_eq!(blocked_reason(ip(a)), Some(reason), "{a}");
        }
    }

    #[test]
    fn ipv4_hidden_inside_ipv6_is_judged_as_ipv4() {
        let cases = [
            ("::ffff:127.0.0.1", BlockReason::Loopback),
            ("::ffff:10.1.2.3", BlockReason::Private),
            ("::ffff:169.254.169.254", BlockReason::CloudMetadata),
            ("::127.0.0.1", BlockReason::Loopback),
            ("64:ff9b::10.0.0.1", BlockReason::Private),
            ("64:ff9b::169.254.169.254", BlockReason::CloudMetadata),
            ("2002:7f00:1::", BlockReason::Loopback),
            ("2002:c0a8:101::1", BlockReason::Private),
        ];
        for (a, reason) in cases {
            assert_eq!(blocked_reason(ip(a)), Some(reason), "{a}");
        }
        assert_eq!(blocked_reason(ip("64:ff9b::8.8.8.8")), None);
    }

    #[test]
    fn ipv4_translated_addresses_are_judged_by_their_ipv4_address() {
        // ::ffff:0:a.b.c.d (RFC 2765 §2.1) is a different prefix from mapped ::ffff:a.b.c.d.
        assert_eq!(
            blocked_reason(ip("::ffff:0:127.0.0.1")),
            Some(BlockReason::Loopback)
        );
        assert_eq!(
            blocked_reason(ip("::ffff:0:169.254.169.254")),
            Some(BlockReason::CloudMetadata)
        );
        assert_eq!(blocked_reason(ip("::ffff:0:8.8.8.8")), None);
    }

    #[test]
    fn the_local_use_nat64_prefix_is_judged_by_every_ipv4_address_it_may_carry() {
        // 64:ff9b:1::/48 (RFC 8215) may be cut into any RFC 6052 layout: /96 puts the IPv4
        // address last, /48 puts it in bits 48..64 and 72..88 around the zero "u" octet.
        let cases = [
            ("64:ff9b:1::10.0.0.1", BlockReason::Private),
            (
                "64:ff9b:1:ffff::169.254.169.254",
                BlockReason::CloudMetadata,
            ),
            ("64:ff9b:1:a00:0:100::", BlockReason::Private),
            ("64:ff9b:1:7f:0:1::", BlockReason::Loopback),
        ];
        for (a, reason) in cases {
            assert_eq!(blocked_reason(ip(a)), Some(reason), "{a}");
        }
        // 8.8.8.8 wherever a translator might look.
        assert_eq!(blocked_reason(ip("64:ff9b:1:808:8:808:808:808")), None);
    }

    #[test]
    fn an_isatap_interface_id_is_judged_by_its_ipv4_address() {
        // RFC 5214 §6.1: the interface id 0:5efe:a.b.c.d (or 200:5efe:…) names an IPv4 host
        // behind the prefix's ISATAP router.
        assert_eq!(
            blocked_reason(ip("2001:4860:0:1::5efe:10.0.0.1")),
            Some(BlockReason::Private)
        );
        assert_eq!(
            blocked_reason(ip("2001:4860:0:1:200:5efe:127.0.0.1")),
            Some(BlockReason::Loopback)
        );
        assert_eq!(blocked_reason(ip("2001:4860:0:1:200:5efe:8.8.8.8")), None);
    }

    /// Every way of writing `v4` inside an IPv6 address that some translator, tunnel or
    /// stack turns back into `v4`.
    fn ipv6_forms_of(v4: Ipv4Addr) -> Vec<(&'static str, Ipv6Addr)> {
        let v = u128::from(u32::from(v4));
        let at = |prefix: u128, bits: u32| Ipv6Addr::from(prefix | (v << bits));
        // RFC 6052 §2.2: below /96 the address skips the "u" octet, bits 64..72.
        let around_u = |prefix: u128, len: u32| {
            let squeezed = v << (88 - len);
            let high = squeezed >> 56 << 64;
            let low = squeezed & ((1 << 56) - 1);
            Ipv6Addr::from(prefix | high | low)
        };
        let local = 0x0064_ff9b_0001_u128 << 80;
        vec![
            ("mapped", v4.to_ipv6_mapped()),
            ("translated", at(0xffff_0000_u128 << 32, 0)),
            ("compatible", at(0, 0)),
            ("nat64 well-known", at(0x0064_ff9b_u128 << 96, 0)),
            ("nat64 local /96", at(local, 0)),
            ("nat64 local /48", around_u(local, 48)),
            ("nat64 local /56", around_u(local, 56)),
            ("nat64 local /64", around_u(local, 64)),
            ("6to4", at(0x2002_u128 << 112, 80)),
            (
                "isatap",
                at((0x2001_4860_u128 << 96) | (0x5efe_u128 << 32), 0),
            ),
        ]
    }

    fn interesting_ipv4() -> impl Strategy<Value = Ipv4Addr> {
        // Mostly addresses inside blocked ranges, since random ones are mostly public.
        let blocked = prop::sample::select(vec![
            ([0, 0, 0, 0], 8),
            ([10, 0, 0, 0], 8),
            ([100, 64, 0, 0], 10),
            ([127, 0, 0, 0], 8),
            ([169, 254, 0, 0], 16),
            ([172, 16, 0, 0], 12),
            ([192, 168, 0, 0], 16),
            ([224, 0, 0, 0], 3),
        ]);
        prop_oneof![
            any::<u32>().prop_map(Ipv4Addr::from),
            (blocked, any::<u32>()).prop_map(|((net, len), host)| {
                Ipv4Addr::from(u32::from(Ipv4Addr::from(net)) | (host >> len))
            }),
            Just(Ipv4Addr::new(169, 254, 169, 254)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn an_ipv4_address_written_as_ipv6_is_blocked_whenever_the_ipv4_address_is(
            v4 in interesting_ipv4()
        ) {
            let expected = blocked_reason(IpAddr::V4(v4));
            for (form, v6) in ipv6_forms_of(v4) {
                let got = blocked_reason(IpAddr::V6(v6));
                if expected.is_some() {
                    prop_assert!(got.is_some(), "{form} {v6} of {v4} passed");
                }
                // Where the layout is unambiguous the verdict is the IPv4 address's own.
                if matches!(form, "mapped" | "translated" | "nat64 well-known" | "6to4" | "isatap") {
                    prop_assert_eq!(got, expected, "{} {} of {}", form, v6, v4);
                }
            }
        }
    }

    #[test]
    fn a_url_must_be_https() {
        assert_eq!(
            WebhookUrl::parse("http://example.com/hook", false),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            WebhookUrl::parse("ftp://example.com/hook", true),
            Err(UrlError::NotHttps)
        );
        assert!(WebhookUrl::parse("https://example.com/hook", false).is_ok());
    }

    #[test]
    fn malformed_or_odd_urls_are_refused_with_a_reason() {
        assert!(matches!(
            WebhookUrl::parse("not a url", false),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            WebhookUrl::parse("https://", false),
            Err(UrlError::Invalid(_))
        ));
        assert_eq!(
            WebhookUrl::parse("https://user:pw@example.com/", false),
            Err(UrlError::HasCredentials)
        );
        assert_eq!(
            WebhookUrl::parse("https://example.com/#x", false),
            Err(UrlError::HasFragment)
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(WebhookUrl::parse(&long, false), Err(UrlError::TooLong));
    }

    #[test]
    fn literal_private_addresses_in_urls_are_refused_unless_allowed() {
        for u in [
            "https://127.0.0.1/hook",
            "https://10.0.0.5:8443/hook",
            "https://[::1]/hook",
            "https://[::ffff:192.168.0.1]/hook",
            "https://0x7f000001/hook",
            "https://2130706433/hook",
        ] {
            let err = WebhookUrl::parse(u, false).unwrap_err();
            assert!(matches!(err, UrlError::Blocked(_)), "{u}: {err:?}");
            assert_eq!(err.code(), "private_target");
            assert!(WebhookUrl::parse(u, true).is_ok(), "{u}");
        }
    }

    #[test]
    fn a_literal_metadata_address_is_refused_allowed_or_not() {
        let u = "https://169.254.169.254/latest/meta-data";
        for allow in [false, true] {
            assert_eq!(
                WebhookUrl::parse(u, allow),
                Err(UrlError::Blocked(BlockReason::CloudMetadata))
            );
        }
    }

    #[test]
    fn local_and_metadata_names_are_refused_before_any_lookup() {
        for u in [
            "https://localhost/hook",
            "https://LOCALHOST./hook",
            "https://api.localhost/hook",
            "https://metadata.google.internal/computeMetadata/v1/",
        ] {
            assert!(
                matches!(WebhookUrl::parse(u, false), Err(UrlError::Blocked(_))),
                "{u}"
            );
        }
    }

    #[test]
    fn a_name_resolving_to_any_private_address_is_refused() {
        assert_eq!(check_resolved(&[ip("93.184.215.14")]), Ok(()));
        assert_eq!(
            check_resolved(&[ip("93.184.215.14"), ip("10.0.0.1")]),
            Err(UrlError::Blocked(BlockReason::Private))
        );
    }

    #[test]
    fn an_empty_dns_answer_is_refused() {
        let refused = check_resolved(&[]);
        assert!(
            matches!(&refused, Err(e) if e.code() == "unresolvable_host"),
            "{refused:?}"
        );
    }

    #[test]
    fn the_port_defaults_to_443() {
        let url = WebhookUrl::parse("https://example.com/hook", false).unwrap();
        assert_eq!(url.port(), 443);
        assert_eq!(url.host(), HostToResolve::Name("example.com".into()));
        let url = WebhookUrl::parse("https://1.2.3.4:8443/hook", false).unwrap();
        assert_eq!(url.port(), 8443);
        assert_eq!(url.host(), HostToResolve::Literal(ip("1.2.3.4")));
    }
}
