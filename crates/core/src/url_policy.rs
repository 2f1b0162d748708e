//! Which URLs a webhook may point at, and which addresses we will connect to.
//!
//! A webhook URL is an instruction from a customer to make our servers send requests, so it is
//! a server-side request forgery vector: it must not reach our own network, the machine's
//! loopback, or a cloud metadata service. The gateway checks a URL when it is registered (the
//! literal address, or every address its host resolves to), and the delivery service checks the
//! addresses again inside its DNS resolver at connect time, because DNS answers change.
//! Both call [`blocked_reason`]; this module does no I/O itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

fn blocked_v6(ip: Ipv6Addr) -> Option<BlockReason> {
    if ip.is_unspecified() {
        return Some(BlockReason::Unspecified);
    }
    if ip.is_loopback() {
        return Some(BlockReason::Loopback);
    }
    // An IPv4 address written as IPv6 reaches the IPv4 host: judge the embedded address.
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible, deprecated), 64:ff9b::a.b.c.d (NAT64).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_v4(v4);
    }
    let s = ip.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if s[..6] == [0; 6] {
        // IPv4-compatible addresses are deprecated (RFC 4291 §2.5.5.1): nothing public uses them.
        return blocked_v4(embedded(s[6], s[7])).or(Some(BlockReason::Reserved));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return blocked_v4(embedded(s[6], s[7]));
    }
    // 6to4 (2002::/16) carries an IPv4 address in bits 16..48.
    if s[0] == 0x2002
        && let Some(reason) = blocked_v4(embedded(s[1], s[2]))
    {
        return Some(reason);
    }
    let reason = match s[0] {
        // AWS's IPv6 metadata endpoint fd00:ec2::254 lies inside fc00::/7; name it.
        0xfd00 if s[1] == 0x0ec2 => BlockReason::CloudMetadata,
        x if x & 0xfe00 == 0xfc00 => BlockReason::Private,
        x if x & 0xffc0 == 0xfe80 => BlockReason::LinkLocal,
        // Deprecated site-local fec0::/10 behaves like private space where it is still routed.
        x if x & 0xffc0 == 0xfec0 => BlockReason::Private,
        x if x & 0xff00 == 0xff00 => BlockReason::Multicast,
        0x2001 if s[1] == 0x0db8 => BlockReason::Documentation,
        // 2001::/23 holds IETF protocol assignments (Teredo 2001::/32, benchmarking 2001:2::/48…).
        0x2001 if s[1] < 0x0200 => BlockReason::Reserved,
        // 100::/64 discard-only.
        0x0100 if s[1..4] == [0, 0, 0] => BlockReason::Reserved,
        _ => return None,
    };
    Some(reason)
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
}

impl UrlError {
    /// A stable, machine-readable code for the API's error body.
    pub const fn code(&self) -> &'static str {
        match self {
            UrlError::Invalid(_) | UrlError::TooLong | UrlError::HasFragment => "invalid_url",
            UrlError::NotHttps => "https_required",
            UrlError::HasCredentials => "invalid_url",
            UrlError::Blocked(_) => "private_target",
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
    /// With `allow_private` the address checks are skipped (tests and local demos).
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
        if !allow_private {
            match parsed.host() {
                HostToResolve::Literal(ip) => {
                    if let Some(reason) = blocked_reason(ip) {
                        return Err(UrlError::Blocked(reason));
                    }
                }
                HostToResolve::Name(name) => {
                    if let Some(reason) = blocked_name(&name) {
                        return Err(UrlError::Blocked(reason));
                    }
                }
            }
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
/// client might pick it. An empty answer is refused too.
pub fn check_resolved(addrs: &[IpAddr]) -> Result<(), UrlError> {
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
            "https://169.254.169.254/latest/meta-data",
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
    fn the_port_defaults_to_443() {
        let url = WebhookUrl::parse("https://example.com/hook", false).unwrap();
        assert_eq!(url.port(), 443);
        assert_eq!(url.host(), HostToResolve::Name("example.com".into()));
        let url = WebhookUrl::parse("https://1.2.3.4:8443/hook", false).unwrap();
        assert_eq!(url.port(), 8443);
        assert_eq!(url.host(), HostToResolve::Literal(ip("1.2.3.4")));
    }
}
