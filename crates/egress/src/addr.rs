//! Which addresses the proxy never dials, whatever name led to them.
//!
//! The allowlist is checked by *name*; this module is the second, independent check on the
//! *addresses* a name resolved to. It exists because a name is only as trustworthy as the
//! DNS server answering for it: `metadata.attacker.example` can resolve to
//! `169.254.169.254`, and an allowed name can be re-pointed at `127.0.0.1` between two
//! lookups (DNS rebinding). The proxy resolves once, checks every address here, and dials
//! only an address it checked.
//!
//! The rule is "globally routable unicast only", written as a deny list of the special
//! ranges (the standard library's `is_global` is not stable). Documentation ranges
//! (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are deliberately allowed:
//! nothing routes them, so they cannot reach anything, and tests use them as stand-ins for
//! public addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` may never be dialed, or `None` when it is an ordinary public address.
///
/// Forbidden, with the reason returned:
/// - IPv4: `0.0.0.0` ("unspecified"), the rest of 0.0.0.0/8 ("this network"), 127/8
///   ("loopback"), 10/8, 172.16/12 and 192.168/16 ("private"), 169.254/16 ("link-local"; the
///   metadata address 169.254.169.254 is named "cloud metadata"), 100.64/10 ("shared address
///   space (CGNAT)"), 192.0.0/24 ("IETF protocol assignments"; 192.0.0.192 is Oracle
///   Cloud's metadata address), 198.18/15 ("benchmarking"), 224/4 ("multicast"),
///   255.255.255.255 ("broadcast"), the rest of 240/4 ("reserved"), and Azure's wire server
///   168.63.129.16 ("cloud metadata"), a public-looking address that only means something
///   from inside a cloud VM.
/// - IPv6: `::` ("unspecified"), `::1` ("loopback"), fc00::/7 ("private (unique local)";
///   AWS's metadata address fd00:ec2::254 is "cloud metadata"), fe80::/10 ("link-local"),
///   fec0::/10 ("site-local"), ff00::/8 ("multicast"), 100::/64 ("discard-only"),
///   2001::/32 ("Teredo tunnel"), 64:ff9b:1::/48 ("local-use NAT64").
/// - IPv6 forms that embed an IPv4 address are judged by the embedded address: IPv4-mapped
///   `::ffff:a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`
///   (deprecated: forbidden even with a public address inside), NAT64 `64:ff9b::a.b.c.d`
///   and 6to4 `2002:AABB:CCDD::`. So `::ffff:127.0.0.1` is "loopback".
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, d] = ip.octets();
    let reason = match (a, b, c, d) {
        (0, 0, 0, 0) => "unspecified",
        (0, ..) => "this network (0.0.0.0/8)",
        (127, ..) => "loopback",
        (10, ..) => "private",
        (172, 16..=31, ..) => "private",
        (192, 168, ..) => "private",
        (169, 254, 169, 254) => "cloud metadata",
        (169, 254, ..) => "link-local",
        (100, 64..=127, ..) => "shared address space (CGNAT)",
        (192, 0, 0, 192) => "cloud metadata",
        (192, 0, 0, _) => "IETF protocol assignments",
        (198, 18..=19, ..) => "benchmarking",
        (168, 63, 129, 16) => "cloud metadata",
        (224..=239, ..) => "multicast",
        (255, 255, 255, 255) => "broadcast",
        (240..=255, ..) => "reserved",
        _ => return None,
    };
    Some(reason)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let last32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d (IPv4-mapped): a dual-stack socket dials the IPv4 address inside.
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return forbidden_v4(last32);
    }
    // ::ffff:0:a.b.c.d (IPv4-translated, SIIT).
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return forbidden_v4(last32);
    }
    // ::a.b.c.d (IPv4-compatible, deprecated since 2006): nothing legitimate uses it.
    if s[..6] == [0; 6] {
        return Some(forbidden_v4(last32).unwrap_or("IPv4-compatible IPv6 (deprecated)"));
    }
    // 64:ff9b::/96, the well-known NAT64 prefix: a NAT64 gateway would dial the v4 inside.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(last32);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some("local-use NAT64");
    }
    // 2002:AABB:CCDD::/48, 6to4: the v4 address is in the second and third segments.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return forbidden_v4(v4);
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some("Teredo tunnel");
    }
    if s[..4] == [0x100, 0, 0, 0] {
        return Some("discard-only");
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("cloud metadata");
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("private (unique local)"),
        x if x & 0xffc0 == 0xfe80 => Some("link-local"),
        x if x & 0xffc0 == 0xfec0 => Some("site-local"),
        x if x & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn f(s: &str) -> Option<&'static str> {
        forbidden(s.parse().unwrap())
    }

    #[test]
    fn ipv4_special_ranges_are_forbidden_with_a_reason() {
        for (ip, reason) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("100.127.255.255", "shared address space (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network (0.0.0.0/8)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("168.63.129.16", "cloud metadata"),
            ("192.0.0.192", "cloud metadata"),
        ] {
            assert_eq!(f(ip), Some(reason), "{ip}");
        }
    }

    #[test]
    fn ipv4_public_and_documentation_ranges_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "203.0.113.7",
            "198.51.100.1",
            "192.0.2.1",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.0.1",
            "11.0.0.1",
            "126.255.255.255",
            "128.0.0.1",
        ] {
            assert_eq!(f(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_special_ranges_are_forbidden() {
        for (ip, reason) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "private (unique local)"),
            ("fdab::1", "private (unique local)"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("100::1", "discard-only"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo tunnel"),
            ("64:ff9b:1::1", "local-use NAT64"),
        ] {
            assert_eq!(f(ip), Some(reason), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_inside() {
        for (ip, reason) in [
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:0:127.0.0.1", Some("loopback")),
            ("::127.0.0.1", Some("loopback")),
            ("::8.8.8.8", Some("IPv4-compatible IPv6 (deprecated)")),
            ("64:ff9b::127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
            ("2002:7f00:1::1", Some("loopback")),
            ("2002:c0a8:101::1", Some("private")),
            ("::ffff:203.0.113.9", None),
            ("64:ff9b::8.8.8.8", None),
            ("2002:808:808::1", None),
        ] {
            assert_eq!(f(ip), reason, "{ip}");
        }
    }

    #[test]
    fn ipv6_public_and_documentation_are_allowed() {
        for ip in [
            "2001:db8::1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "2001:4860::1",
        ] {
            assert_eq!(f(ip), None, "{ip}");
        }
    }
}
